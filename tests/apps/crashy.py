"""An app whose workers die right after booting: the crash-loop tests.

CRASH_MODE=request (default): the worker exits on its first request.
CRASH_MODE=timer: a timer kills the worker CRASH_AFTER seconds (0.2) after
the import, whether or not it serves anything.
"""
import os
import threading

MODE = os.environ.get("CRASH_MODE", "request")

if MODE == "timer":
    t = threading.Timer(float(os.environ.get("CRASH_AFTER", "0.2")), os._exit, (1,))
    t.daemon = True
    t.start()


def app(environ, start_response):
    if MODE == "request":
        os._exit(1)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"still alive"]
