"""A WSGI app with one route per behaviour the tests need.

Every call appends "METHOD PATH" to the file named by CALLS_FILE (if set),
so a test can prove the app was *not* called for a rejected request.
"""
import json
import logging
import os
import sys
import time

CALLS_FILE = os.environ.get("CALLS_FILE")
VERSION_FILE = os.environ.get("VERSION_FILE")


def record(environ):
    if CALLS_FILE:
        with open(CALLS_FILE, "a") as f:
            f.write(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}\n")


def app(environ, start_response):
    record(environ)
    path = environ["PATH_INFO"]
    method = environ["REQUEST_METHOD"]

    if path == "/":
        body = b"Hello, World!"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    if method == "CONNECT":
        # An app that says yes to a tunnel (with a length and a body of its own).
        start_response("200 Connection Established", [("Content-Length", "7")])
        return [b"tunnel?"]

    if path == "/environ":
        safe = {k: v for k, v in environ.items() if isinstance(v, (str, bool, int, tuple))}
        body = json.dumps(safe).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    if path == "/echo":
        data = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("X-Content-Length", environ.get("CONTENT_LENGTH", ""))])
        return [data]

    if path == "/echo-lines":
        lines = list(environ["wsgi.input"])
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps([l.decode("latin-1") for l in lines]).encode()]

    if path == "/upload-size":
        # Reads in pieces: the worker must never need the whole body in memory.
        inp = environ["wsgi.input"]
        total = 0
        while True:
            chunk = inp.read(65536)
            if not chunk:
                break
            total += len(chunk)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(total).encode()]

    if path == "/stream":
        n = int(environ.get("QUERY_STRING") or "3")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (f"chunk {i}\n".encode() for i in range(n))

    if path == "/big":
        # A generated body of N MiB, streamed in 64 KiB pieces, no length.
        mib = int(environ.get("QUERY_STRING") or "1")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        block = b"x" * 65536
        return (block for _ in range(mib * 16))

    if path == "/file":
        f = open(os.environ.get("FILE_TO_SEND", __file__), "rb")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f, 32768)

    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"returned"]

    if path == "/error":
        raise RuntimeError("boom: secret traceback detail")

    if path == "/bad-header":
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: pwned=1")])
        return [b"should not be sent"]

    if path == "/bad-status":
        start_response("2000 OK", [])
        return [b"nope"]

    if path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or "1"))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slept"]

    if path == "/stubborn":
        # Ignores the SIGABRT a timeout sends: the master must follow up
        # with SIGKILL.
        import signal
        signal.signal(signal.SIGABRT, signal.SIG_IGN)
        time.sleep(float(environ.get("QUERY_STRING") or "30"))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"survived"]

    if path == "/env":
        # One variable of the worker's process environment.
        name = environ.get("QUERY_STRING", "")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [os.environ.get(name, "<unset>").encode()]

    if path == "/pid":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]

    if path == "/version":
        v = open(VERSION_FILE).read().strip() if VERSION_FILE else "none"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [v.encode()]

    if path == "/log":
        logging.getLogger("testapp").warning(
            "a warning from the app",
            # -> REQUEST_ID, CART_SIZE; MESSAGE/priority may not be replaced
            extra={"request.id": "r-42", "cart_size": 3, "priority": "0"})
        print("to wsgi.errors", file=environ["wsgi.errors"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"logged"]

    if path == "/print":
        print("printed by the app", flush=True)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"printed"]

    if path == "/biglog":
        logging.getLogger("biglog").warning("y" * 400_000)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"logged"]

    if path == "/status":
        code = environ.get("QUERY_STRING") or "204"
        start_response(f"{code} Whatever", [])
        return [b""]

    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


application = app


# Closing: a response iterable whose close() must always be called.
class Closing:
    def __init__(self, path):
        self.path = path

    def __iter__(self):
        yield b"part1 "
        yield b"part2"

    def close(self):
        with open(self.path, "a") as f:
            f.write("closed\n")


def closing_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Closing(os.environ["CLOSE_FILE"])


def create_app(greeting="factory"):
    def f(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [greeting.encode()]
    return f
