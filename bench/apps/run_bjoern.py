"""Runs a WSGI app under bjoern (single process): run_bjoern.py MODULE:CALLABLE HOST PORT."""

import importlib
import os
import signal
import sys

import bjoern

target, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, os.getcwd())
module, _, name = target.partition(":")
app = getattr(importlib.import_module(module), name or "application")
# Exit cleanly on TERM (so tools such as callgrind can write their output).
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
bjoern.run(app, host, port)
