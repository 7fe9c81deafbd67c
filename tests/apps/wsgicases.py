"""PEP 3333 corner cases, one route each, for tests/test_wsgi.py.

Routes that must prove `close()` was called append a line to the file named
by env CLOSE_FILE.
"""
import hashlib
import json
import os
import sys
import time

CLOSE_FILE = os.environ.get("CLOSE_FILE")
TEXT = [("Content-Type", "text/plain")]


SAME_STATUS = "203 Same"
SAME_TUPLES = [
    ("X-A", "1"),
    ("Content-Length", "5"),
    ("Connection", "close"),
    ("Content-Length", "6"),
]
SAME_LIST = []


def note(line):
    if CLOSE_FILE:
        with open(CLOSE_FILE, "a") as f:
            f.write(line + "\n")


class Tracked:
    """A response iterable that yields `blocks` pieces of `size` bytes,
    raises after `raise_after` pieces (if set), and records close()."""

    def __init__(self, tag, blocks, size=65536, raise_after=None):
        self.tag = tag
        self.blocks = blocks
        self.size = size
        self.raise_after = raise_after
        self.yielded = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.raise_after is not None and self.yielded >= self.raise_after:
            raise RuntimeError(f"iteration failed on purpose ({self.tag})")
        if self.yielded >= self.blocks:
            raise StopIteration
        self.yielded += 1
        return b"%08d" % self.yielded + b"." * (self.size - 8)

    def close(self):
        note(f"closed {self.tag} after {self.yielded}")


class TrackedFile:
    """A file-like object that records close() (and exposes fileno() only
    when the wrapped object has a real one)."""

    def __init__(self, f, tag):
        self.f = f
        self.tag = tag
        if hasattr(f, "fileno"):
            try:
                f.fileno()
                self.fileno = f.fileno
            except Exception:  # noqa: BLE001  (BytesIO: no descriptor)
                pass

    def read(self, n=-1):
        return self.f.read(n)

    def seek(self, *a):
        return self.f.seek(*a)

    def tell(self):
        return self.f.tell()

    def close(self):
        note(f"closed file-{self.tag} after 0")
        self.f.close()


def describe(v):
    if isinstance(v, (str, bool, int, float)) or v is None:
        return v
    if isinstance(v, tuple):
        return list(v)
    return None


def app(environ, start_response):
    path = environ["PATH_INFO"]
    q = environ.get("QUERY_STRING", "")
    inp = environ["wsgi.input"]

    if path == "/types":
        out = {k: [type(v).__name__, describe(v)] for k, v in environ.items()}
        out["_input_api"] = [a for a in ("read", "readline", "readlines", "__iter__") if hasattr(inp, a)]
        err = environ["wsgi.errors"]
        out["_errors_api"] = [a for a in ("write", "writelines", "flush") if hasattr(err, a)]
        out["_file_wrapper_callable"] = callable(environ.get("wsgi.file_wrapper"))
        marker = object()
        fw = environ["wsgi.file_wrapper"](marker, 4)
        # wsgiref's and Gunicorn's attributes, which middleware unwraps
        out["_file_wrapper_attrs"] = [fw.filelike is marker, fw.blksize]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(out).encode()]

    if path == "/env":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({k: v for k, v in environ.items() if isinstance(v, str)}).encode()]

    if path.startswith("/path-bytes"):
        # PATH_INFO as the bytes the client sent (latin-1 round trip).
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({
            "PATH_INFO": environ["PATH_INFO"],
            "bytes_hex": environ["PATH_INFO"].encode("latin-1").hex(),
            "SCRIPT_NAME": environ["SCRIPT_NAME"],
            "RAW_URI": environ["RAW_URI"],
        }).encode()]

    # ---- wsgi.input ------------------------------------------------------
    if path == "/read":
        n = int(q) if q else None
        chunks = []
        while True:
            c = inp.read(n) if n is not None else inp.read()
            if not c:
                break
            chunks.append(c.decode("latin-1"))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(chunks).encode()]

    if path == "/readline":
        n = int(q) if q else None
        lines = []
        while True:
            line = inp.readline(n) if n is not None else inp.readline()
            if not line:
                break
            lines.append(line.decode("latin-1"))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(lines).encode()]

    if path == "/readlines":
        hint = int(q) if q else None
        first = inp.readlines(hint) if hint is not None else inp.readlines()
        rest = inp.read()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps([[l.decode("latin-1") for l in first], rest.decode("latin-1")]).encode()]

    if path == "/iter":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps([l.decode("latin-1") for l in inp]).encode()]

    if path == "/mixed":
        parts = [inp.read(3), inp.readline(), inp.readline(4), inp.read(0)]
        parts.append(b"".join(inp.readlines()))
        parts += [inp.read(), inp.read(10), inp.readline()]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps([p.decode("latin-1") for p in parts]).encode()]

    if path == "/sha256":
        h = hashlib.sha256()
        total = 0
        while True:
            c = inp.read(65536)
            if not c:
                break
            total += len(c)
            h.update(c)
        start_response("200 OK", TEXT)
        return [f"{total} {h.hexdigest()}".encode()]

    # ---- start_response rules -------------------------------------------
    if path == "/twice":
        start_response("200 OK", TEXT)
        start_response("201 Created", TEXT)  # no exc_info: an error
        return [b"should not be sent"]

    if path == "/twice-caught":
        start_response("200 OK", TEXT)
        try:
            start_response("201 Created", TEXT)
        except Exception as e:  # noqa: BLE001
            return [f"second call raised {type(e).__name__}".encode()]
        return [b"second call accepted"]

    if path == "/exc-info":
        start_response("200 OK", TEXT + [("X-First", "1")])
        try:
            raise ValueError("handled by the app")
        except ValueError:
            start_response("503 Service Unavailable", TEXT + [("X-Second", "1")], sys.exc_info())
        return [b"recovered"]

    if path == "/exc-info-after-headers":
        write = start_response("200 OK", TEXT)
        write(b"y" * (1 << 20))  # forces the head (and this) onto the wire
        try:
            raise ValueError("too late to change the status")
        except ValueError:
            start_response("500 Internal Server Error", TEXT, sys.exc_info())
        return [b"never"]

    if path == "/exc-info-after-yield":
        # PEP 3333: the first non-empty block counts as the headers sent,
        # so the second start_response must re-raise, even though the
        # head may still sit in the server's buffer.
        def gen():
            start_response("200 OK", TEXT)
            yield b"partial-"
            try:
                raise ValueError("error after the body started")
            except ValueError:
                start_response("500 Internal Server Error", TEXT, sys.exc_info())
            yield b"<error page>"
        return gen()

    if path == "/yield-before-start":
        def gen():
            yield b"early"
            start_response("200 OK", TEXT)
            yield b"late"
        return gen()

    if path == "/drip":
        # ?n,delay: n blocks, `delay` seconds apart (server-sent events).
        n, delay = q.split(",")
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        def gen():
            for i in range(int(n)):
                if i:
                    time.sleep(float(delay))
                yield b"data: %d\n\n" % i
        return gen()

    if path == "/write-drip":
        write = start_response("200 OK", TEXT)
        write(b"first ")
        time.sleep(float(q or "1"))
        return [b"last"]

    if path == "/status-length":
        # ?code: the app declares and sends 11 bytes.
        start_response(q + " X", [("Content-Length", "11")] + TEXT)
        return [b"hello world"]

    if path == "/empty-for-head":
        # Special-cases HEAD with an empty body and sets no length.
        start_response("200 OK", TEXT)
        if environ["REQUEST_METHOD"] == "HEAD":
            return []
        return [b"z" * 1000]

    if path == "/no-start-response":
        return [b"nobody called start_response"]

    # ---- write() ----------------------------------------------------------
    if path == "/write-big":
        write = start_response("200 OK", TEXT)
        for i in range(10):
            write(b"%d" % i * 100_000)
        return [b"end"]

    if path == "/write-then-list":
        write = start_response("200 OK", TEXT)
        write(b"w1 ")
        write(b"w2 ")
        return [b"l1"]

    if path == "/keep-input":
        # Keeps wsgi.input alive in a cycle (as framework request objects
        # do) with the collector off: only the server can free the body.
        import gc
        gc.disable()
        environ["self"] = environ
        n = len(environ["wsgi.input"].read())
        start_response("200 OK", TEXT)
        return [b"%d" % n]

    if path == "/write-then-iter":
        write = start_response("200 OK", TEXT)
        write(b"w1 ")
        write(b"w2 ")
        return iter([b"i1 ", b"i2"])

    # ---- result.close() --------------------------------------------------
    if path == "/tracked":
        # ?tag,blocks[,raise_after]
        parts = q.split(",")
        tag, blocks = parts[0], int(parts[1])
        raise_after = int(parts[2]) if len(parts) > 2 else None
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Tracked(tag, blocks, raise_after=raise_after)

    if path == "/tracked-raise-in-app":
        # close() of an iterable is irrelevant when the app itself raises;
        # this route raises after start_response.
        start_response("200 OK", TEXT)
        raise RuntimeError("app raised after start_response")

    # ---- invalid responses -------------------------------------------------
    if path == "/same-headers":
        # The same status and header objects every time, as constant-header
        # apps pass them; the list itself changes between calls.
        n = int(q or "0")
        SAME_LIST[:] = SAME_TUPLES[:n]
        start_response(SAME_STATUS, SAME_LIST)
        return [b"x" * 5]

    if path == "/hints":
        # Gunicorn's wsgi.early_hints: 103 responses before the final one.
        hints = environ["wsgi.early_hints"]
        if q == "late":
            write = start_response("200 OK", TEXT)
            write(b"started ")
            hints([("Link", "</late.css>; rel=preload")])  # ignored: the response began
            return [b"hinted"]
        if q == "bad":
            hints([("Link", "</x.css>\r\nX-Injected: 1")])
        hints([("Link", "</style.css>; rel=preload; as=style"),
               (b"Link", b"</app.js>; rel=preload; as=script")])
        hints([("Link", " </font.woff2>; rel=preload; as=font\t")])
        start_response("200 OK", TEXT)
        return [b"hinted"]

    if path == "/lenient":
        # Not what PEP 3333 asks of an app, but what Gunicorn sends.
        kind = q
        if kind == "header-value-tab":
            start_response("200 OK", [("X-Lenient", "a\tb")])
        elif kind == "headers-tuple":
            start_response("200 OK", (("X-Lenient", "a\tb"),))
        elif kind == "header-list-pairs":
            start_response("200 OK", [["X-Lenient", "a\tb"], ("Content-Type", "text/plain")])
        elif kind == "headers-items":
            start_response("200 OK", {"X-Lenient": "a\tb"}.items())
        elif kind == "header-value-spaces":
            # Django's Set-Cookie values start with a space (Morsel.output(header="")).
            start_response("200 OK", [("X-Lenient", " \ta\tb \t"), ("Set-Cookie", " k=v; Path=/")])
        elif kind == "status-tab":
            start_response("200 OK\tfine", [("X-Lenient", "a\tb")])
        else:
            raise ValueError(kind)
        return [b"sent"]

    if path == "/bad":
        kind = q
        if kind == "header-name-space":
            start_response("200 OK", [("X Bad", "v")])
        elif kind == "header-name-colon":
            start_response("200 OK", [("X-Bad:", "v")])
        elif kind == "header-value-lf":
            start_response("200 OK", [("X-Bad", "a\nb")])
        elif kind == "header-value-cr":
            start_response("200 OK", [("X-Bad", "a\rb")])
        elif kind == "header-value-nul":
            start_response("200 OK", [("X-Bad", "a\x00b")])
        elif kind == "header-non-latin1":
            start_response("200 OK", [("X-Bad", "\u20ac")])
        elif kind == "header-bytes":
            start_response("200 OK", [(b"X-Bad", b"v")])
        elif kind == "status-bytes":
            start_response(b"200 OK", [])
        elif kind == "status-short":
            start_response("20 OK", [])
        elif kind == "status-letters":
            start_response("2xx OK", [])
        elif kind == "status-crlf":
            start_response("200 OK\r\nX-Injected: 1", [])
        elif kind == "status-no-space":
            start_response("200OK", [])
        elif kind == "body-str":
            start_response("200 OK", TEXT)
            return ["a str"]
        elif kind == "body-str-gen":
            start_response("200 OK", TEXT)
            return (s for s in ["a str"])
        elif kind == "content-length-bad":
            start_response("200 OK", [("Content-Length", "ten")])
        else:
            raise ValueError(kind)
        return [b"should not be sent"]

    if path == "/fw":
        # wsgi.file_wrapper variants; FILE_TO_SEND names a regular file.
        import io
        mode = q
        fname = os.environ.get("FILE_TO_SEND", __file__)
        headers = [("Content-Type", "application/octet-stream")]
        if mode == "bytesio":
            f = TrackedFile(io.BytesIO(open(fname, "rb").read()), "bytesio")
        elif mode == "offset":
            f = TrackedFile(open(fname, "rb"), "offset")
            f.seek(1000)
        elif mode == "offset-buffered":
            f = TrackedFile(open(fname, "rb"), "offset-buffered")
            f.read(10)  # Python's buffered reader reads ahead past this
        elif mode == "short-cl":
            f = TrackedFile(open(fname, "rb"), "short-cl")
            headers.append(("Content-Length", "5000"))
        elif mode == "long-cl":
            f = TrackedFile(open(fname, "rb"), "long-cl")
            headers.append(("Content-Length", str(os.path.getsize(fname) + 100)))
        elif mode == "204":
            f = TrackedFile(open(fname, "rb"), "204")
            start_response("204 No Content", [])
            return environ["wsgi.file_wrapper"](f, 65536)
        else:
            f = TrackedFile(open(fname, "rb"), "plain")
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](f, 65536)

    if path == "/write-in-iter":
        # write() called from inside the iterable, after the app returned.
        # ?small: while the server still gathers the body; ?bigwrite: a
        # write() too big to hold, while gathering.
        write = start_response("200 OK", TEXT)
        first = b"a" if q in ("small", "bigwrite") else b"a" * 300_000
        late = b"W" * 1_000_000 if q == "bigwrite" else b"LATE-WRITE"

        def gen():
            yield first
            write(late)
            yield b"end"
        return gen()

    if path == "/status":
        from urllib.parse import unquote
        start_response(unquote(q, encoding="latin-1"), TEXT)
        return [b"status body"]

    if path == "/short-body":
        # Declares 10 bytes, gives 5: the response cannot be completed.
        start_response("200 OK", TEXT + [("Content-Length", "10")])
        return [b"12345"]

    if path == "/long-body":
        # Declares 3 bytes, gives 10: only 3 may go out.
        start_response("200 OK", TEXT + [("Content-Length", "3")])
        return [b"abc", b"defghij"]

    if path == "/hop-by-hop":
        start_response("200 OK", TEXT + [("Connection", "keep-alive"), ("Keep-Alive", "timeout=99"),
                                         ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c")])
        return [b"framed by the server"]

    if path == "/twice-after-failed":
        # PEP 3333: a second call without exc_info is an error "even if the first call
        # raised".
        try:
            start_response("200 OK", [("X-U", "\u20ac")])
        except ValueError:
            pass
        try:
            start_response("200 OK", TEXT)
        except AssertionError:
            note("twice-after-failed: refused")
            raise
        return [b"second call accepted"]

    if path == "/list-subclass":
        class Items(list):
            def __iter__(self):
                return iter([b"from-iter"])
        start_response("200 OK", TEXT)
        return Items([b"from-list-items"])

    if path == "/slow-close":
        # close() takes a while: the client must have the whole response first.
        kind = q or "empty"

        class SlowClose:
            def __iter__(self):
                if kind == "body":
                    yield b"streamed body"

            def close(self):
                time.sleep(1.5)
                note(f"slow-close {kind}")
        start_response("302 Found" if kind == "empty" else "200 OK",
                       TEXT + ([("Location", "/x")] if kind == "empty" else []))
        return SlowClose()

    if path == "/endless-after-length":
        # Declares 10 bytes, then yields forever: iteration must stop once they are out.
        start_response("200 OK", TEXT + [("Content-Length", "10")])

        class Endless:
            def __init__(self):
                self.n = 0

            def __iter__(self):
                return self

            def __next__(self):
                self.n += 1
                return b"0123456789"

            def close(self):
                note(f"endless pulled {self.n}")
        return Endless()

    if path == "/app-close":
        start_response("200 OK", TEXT + [("Connection", "close")])
        return [b"bye"]

    start_response("404 Not Found", TEXT)
    return [b"not found"]


application = app
