"""Runs a WSGI app under bjoern (single process): run_bjoern.py MODULE:CALLABLE HOST PORT."""

import importlib
import os
import sys

import bjoern

target, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, os.getcwd())
module, _, name = target.partition(":")
app = getattr(importlib.import_module(module), name or "application")
# The harness stops bjoern with SIGINT: its libev loop watches SIGINT and returns, so
# the process exits normally (and callgrind writes its output). SIGTERM would not.
bjoern.run(app, host, port)
