import this_module_does_not_exist  # noqa: the import-error test

app = None
