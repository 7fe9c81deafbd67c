"""Raw-socket helpers for the HTTP/WSGI integration tests: send exact bytes,
read until the server closes, and parse what came back (Content-Length,
chunked, close-delimited and body-less responses) without trusting a client
library to paper over framing mistakes."""
import socket
import time


class Exchange:
    """What one raw connection produced: the bytes the server sent and
    whether it closed the connection (EOF or RST) before the deadline."""

    def __init__(self, data, closed, reset=False):
        self.data = data
        self.closed = closed
        self.reset = reset

    @property
    def status(self):
        if not self.data.startswith(b"HTTP/1."):
            return None
        return int(self.data.split(b" ", 2)[1])

    def __repr__(self):
        return f"Exchange(closed={self.closed}, reset={self.reset}, data={self.data[:300]!r})"


def connect(port, timeout=5):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_until_close(s, timeout=5):
    """Read until EOF; returns Exchange. A timeout means 'not closed'."""
    out = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return Exchange(out, closed=False)
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return Exchange(out, closed=False)
        except ConnectionResetError:
            return Exchange(out, closed=True, reset=True)
        if not chunk:
            return Exchange(out, closed=True)
        out += chunk


def exchange(port, data, timeout=5, pieces=None, delay=0.0, shut=False):
    """Send `data` (or the list `pieces`, one send each with `delay` between)
    and read until the server closes or `timeout` passes. `shut` half-closes
    our side after sending (the server then sees EOF)."""
    s = connect(port, timeout)
    try:
        if pieces is None:
            pieces = [data]
        for i, p in enumerate(pieces):
            if i and delay:
                time.sleep(delay)
            try:
                s.sendall(p)
            except (BrokenPipeError, ConnectionResetError):
                break
        if shut:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        return read_until_close(s, timeout)
    finally:
        s.close()


def recv_until(s, marker, timeout=5):
    """Read until `marker` is in the received bytes; return them all."""
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {marker!r}; got {out[:500]!r}")
        s.settimeout(left)
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before {marker!r}; got {out[:500]!r}")
        out += chunk
    return out


class Response:
    def __init__(self, version, status, reason, headers, body, chunked):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (lower-case name, value)
        self.body = body
        self.chunked = chunked

    def header(self, name, default=None):
        for k, v in self.headers:
            if k == name.lower():
                return v
        return default

    def all(self, name):
        return [v for k, v in self.headers if k == name.lower()]

    def __repr__(self):
        return f"Response({self.status}, {self.headers}, {self.body[:100]!r})"


class Incomplete(Exception):
    pass


def dechunk(data):
    """Decode a complete chunked body; returns (payload, bytes consumed).
    Strict: raises on any framing error, Incomplete if it is cut short."""
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise Incomplete("chunk size line")
        line = data[pos:eol]
        size_txt = line.split(b";", 1)[0]
        if not size_txt or any(c not in b"0123456789abcdefABCDEF" for c in size_txt):
            raise ValueError(f"bad chunk size line {line!r}")
        size = int(size_txt, 16)
        pos = eol + 2
        if size == 0:
            # trailers (we expect none) then CRLF
            end = data.find(b"\r\n", pos)
            if end < 0:
                raise Incomplete("last chunk")
            if end != pos:
                raise ValueError(f"unexpected trailer {data[pos:end]!r}")
            return bytes(out), end + 2
        if len(data) < pos + size + 2:
            raise Incomplete("chunk data")
        out += data[pos:pos + size]
        if data[pos + size:pos + size + 2] != b"\r\n":
            raise ValueError("chunk data not followed by CRLF")
        pos += size + 2


def parse_responses(data, methods, eof=True):
    """Parse consecutive responses from `data`, one per request method in
    `methods` (HEAD answers carry no body). Returns (responses, rest).
    A close-delimited body takes everything up to EOF (`eof` says the
    server closed)."""
    out = []
    for method in methods:
        # 1xx interim responses are returned as their own entries.
        while True:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if data:
                    raise Incomplete(f"response head: {data[:200]!r}")
                return out, data
            head = data[:end].decode("latin-1")
            data = data[end + 4:]
            lines = head.split("\r\n")
            version, status, *reason = lines[0].split(" ", 2)
            status = int(status)
            headers = []
            for line in lines[1:]:
                k, sep, v = line.partition(":")
                if not sep or k != k.strip():
                    raise ValueError(f"malformed header line {line!r}")
                headers.append((k.lower(), v.strip()))
            r = Response(version, status, reason[0] if reason else "", headers, b"", False)
            if 100 <= status < 200:
                out.append(r)
                continue
            break
        te = r.header("transfer-encoding")
        cl = r.header("content-length")
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif te is not None:
            assert te.lower() == "chunked", te
            assert cl is None, "both Content-Length and Transfer-Encoding"
            body, n = dechunk(data)
            data = data[n:]
            r.chunked = True
        elif cl is not None:
            n = int(cl)
            if len(data) < n:
                raise Incomplete(f"body: {len(data)} of {n}")
            body, data = data[:n], data[n:]
        else:
            if not eof:
                raise Incomplete("close-delimited body")
            body, data = data, b""
        r.body = body
        out.append(r)
    return out, data


def request_bytes(method="GET", path="/", headers=(), body=b"", version="HTTP/1.1", host=True):
    lines = [f"{method} {path} {version}"]
    if host:
        lines.append("Host: localhost")
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def recv_response(s, method="GET", timeout=5):
    """Read exactly one complete response (keep-alive safe); returns it."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        if data:
            try:
                (r,), rest = parse_responses(data, [method], eof=False)
                assert rest == b"", f"bytes after the response: {rest[:200]!r}"
                return r
            except Incomplete:
                pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out reading a response; got {data[:500]!r}")
        s.settimeout(left)
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed mid-response; got {data[:500]!r}")
        data += chunk
