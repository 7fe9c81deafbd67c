"""An app wrapped in wsgiref.validate.validator: every PEP 3333 rule the
validator knows is asserted on the server's environ, wsgi.input,
wsgi.errors, start_response, write() and on how the server consumes and
closes the result. A violation raises AssertionError (the server logs it and
answers 500) or, for a result garbage-collected without close(), prints
"Iterator garbage collected without being closed" to stderr."""
import os
from wsgiref.validate import validator


def inner(environ, start_response):
    path = environ["PATH_INFO"]
    inp = environ["wsgi.input"]
    text = [("Content-Type", "text/plain")]

    if path == "/":
        start_response("200 OK", text + [("Content-Length", "5")])
        return [b"hello"]

    if path == "/echo":
        n = int(environ.get("CONTENT_LENGTH") or 0)
        data = inp.read(n)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [data]

    if path == "/lines":
        first = inp.readline()
        short = inp.readline(3)
        rest = inp.readlines()
        body = b"|".join([first, short] + rest)
        start_response("200 OK", text)
        return [body]

    if path == "/iter":
        start_response("200 OK", text)
        return [b"|".join(list(inp))]

    if path == "/stream":
        start_response("200 OK", text)

        def gen():
            for i in range(50):
                yield (b"%04d" % i) * 4096  # 16 KiB each, 800 KiB total
        return gen()

    if path == "/write":
        write = start_response("200 OK", text)
        write(b"written ")
        for _ in range(20):
            write(b"w" * 32768)  # past the server's buffering threshold
        return [b" returned"]

    if path == "/file":
        f = open(os.path.join(os.path.dirname(__file__), "basic.py"), "rb")
        start_response("200 OK", [("Content-Type", "text/x-python")])
        return environ["wsgi.file_wrapper"](f, 4096)

    if path == "/errors":
        err = environ["wsgi.errors"]
        err.write("validated: one line\n")
        err.writelines(["validated: two\n", "validated: three\n"])
        err.flush()
        start_response("200 OK", text)
        return [b"ok"]

    if path == "/empty":
        start_response("200 OK", text)
        return []

    if path == "/violate":
        # Not WSGI: the validator must catch this (proves it is active).
        start_response("200 OK", text)
        return ["a str, not bytes"]

    start_response("404 Not Found", text)
    return [b"not found"]


application = validator(inner)
