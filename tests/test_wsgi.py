"""The WSGI contract (PEP 3333) as an application sees it, against the real
binary: the environ, wsgi.input, start_response and exc_info, write(),
close(), url_scheme trust, and what happens when the app misbehaves."""
import hashlib
import http.client
import json
import re
import socket
import subprocess
import time

import pytest

from conftest import APPS, BIN, Server
from wire import (connect, dechunk, exchange, parse_responses, read_until_close, recv_response, recv_until,
                  request_bytes)


def assert_cut_off(ex):
    """A 200 whose chunked body was cut off (no terminator) and whose
    connection was closed, so no client can take it as complete; returns
    the body bytes that did arrive."""
    assert ex.closed, ex
    head, _, body = ex.data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), ex
    with pytest.raises(Exception):
        dechunk(body)
    return body


def wait_for(pred, timeout=5, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    close_file = tmp_path_factory.mktemp("close") / "closed.txt"
    close_file.write_text("")
    s = Server(["-b", "127.0.0.1:0", "wsgicases:app"], APPS, {"CLOSE_FILE": str(close_file)})
    s.close_file = close_file
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def srv(cases):
    assert cases.proc.poll() is None, cases.log()
    return cases


def get_json(s, path, method="GET", body=None, headers=None):
    st, h, data = s.request(method, path, body=body, headers=headers)
    assert st == 200, (st, data)
    return json.loads(data)


def test_same_header_objects_again(srv):
    """Status and header tuples the app passes again (same objects) mean
    the same each time, alone or combined with others."""
    c = srv.conn()
    for n in (1, 2, 1, 2, 0, 2):
        c.request("GET", f"/same-headers?{n}")
        r = c.getresponse()
        assert (r.status, r.reason, r.read()) == (203, "Same", b"xxxxx")
        assert r.getheader("X-A") == ("1" if n else None)
        assert r.getheader("Content-Length") == "5"
    c.close()
    # Connection: close (a hop-by-hop header) closes after the response.
    ex = exchange(srv.port, request_bytes("GET", "/same-headers?3") * 2)
    rs, _ = parse_responses(ex.data, ["GET"])
    assert rs[0].status == 203 and rs[0].header("connection") == "close"
    assert rs[0].header("x-a") == "1" and ex.closed
    # Two different Content-Lengths: a 500, every time.
    for _ in range(2):
        st, _, _ = srv.request("GET", "/same-headers?4")
        assert st == 500


# ---- wsgiref.validate --------------------------------------------------------

def test_validator_finds_nothing(start_server):
    s = start_server("validated:application", "--threads", "2")
    results = []
    results.append(s.request("GET", "/"))
    results.append(s.request("HEAD", "/"))
    results.append(s.request("POST", "/echo", body=b"some body bytes"))
    results.append(s.request("POST", "/echo", body=b"", headers={"Content-Type": "text/plain"}))
    results.append(s.request("POST", "/lines", body=b"line one\nline two\nthree\nfour"))
    results.append(s.request("POST", "/iter", body=b"a\nb\n\nc"))
    results.append(s.request("GET", "/stream"))
    results.append(s.request("HEAD", "/stream"))
    results.append(s.request("GET", "/write"))
    results.append(s.request("GET", "/file"))
    results.append(s.request("HEAD", "/file"))
    results.append(s.request("GET", "/errors"))
    results.append(s.request("GET", "/empty"))
    results.append(s.request("GET", "/?a=b&c", headers={"Cookie": "x=1", "X-Custom": "v"}))
    # A chunked upload (no Content-Length from the client).
    c = s.conn()
    c.request("POST", "/echo", body=iter([b"chunk-one ", b"chunk-two"]), encode_chunked=True)
    r = c.getresponse()
    results.append((r.status, {}, r.read()))
    c.close()
    # Keep-alive: several validated requests on one connection.
    c = s.conn()
    for _ in range(3):
        c.request("POST", "/echo", body=b"ka")
        r = c.getresponse()
        results.append((r.status, {}, r.read()))
    c.close()

    statuses = [r[0] for r in results]
    assert statuses == [200] * len(results), statuses
    bodies = [r[2] for r in results]
    assert bodies[0] == b"hello" and bodies[1] == b""
    assert bodies[2] == b"some body bytes" and bodies[3] == b""
    assert bodies[4] == b"line one\n|lin|e two\n|three\n|four"
    assert bodies[5] == b"a\n|b\n|\n|c"
    assert bodies[6] == b"".join((b"%04d" % i) * 4096 for i in range(50))
    assert bodies[7] == b""
    assert bodies[8] == b"written " + b"w" * 32768 * 20 + b" returned"
    assert bodies[9] == (APPS / "basic.py").read_bytes() and bodies[10] == b""
    assert bodies[14] == b"chunk-one chunk-two"
    assert bodies[15:] == [b"ka"] * 3
    log = s.wait_log(r"validated: three")
    assert "validated: one line" in log and "validated: two" in log
    # Let garbage collection of any unclosed iterator show up in the log.
    assert s.request("GET", "/")[0] == 200
    time.sleep(0.2)
    log = s.log()
    for bad in ("AssertionError", "WSGIWarning", "garbage collected", "Traceback", "Exception ignored"):
        assert bad not in log, log


def test_validator_is_really_active(start_server):
    # The negative control for the test above: a real violation is caught.
    s = start_server("validated:application")
    st, _, body = s.request("GET", "/violate")
    assert st == 500 and b"a str" not in body
    s.wait_log(r"AssertionError: Iterator yielded non-bytestring")


# ---- the environ ---------------------------------------------------------------

REQUIRED = ["REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME",
            "SERVER_PORT", "SERVER_PROTOCOL", "wsgi.version", "wsgi.url_scheme", "wsgi.input",
            "wsgi.errors", "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once",
            "RAW_URI", "REMOTE_ADDR", "REMOTE_PORT", "wsgi.input_terminated", "wsgi.file_wrapper"]


def test_environ_required_keys_and_types(srv):
    env = get_json(srv, "/types?x=1", method="POST", body=b"hello",
                   headers={"Content-Type": "text/plain; charset=utf-8", "X-Thing": "v",
                            "Host": "example.org:8080"})
    for k in REQUIRED + ["CONTENT_TYPE", "CONTENT_LENGTH", "HTTP_X_THING", "HTTP_HOST"]:
        assert k in env, k
    # CGI keys are native strings.
    for k, tv in env.items():
        if "." not in k and not k.startswith("_"):
            assert tv[0] == "str", (k, tv)
    assert env["REQUEST_METHOD"][1] == "POST"
    assert env["SCRIPT_NAME"][1] == ""
    assert env["PATH_INFO"][1] == "/types"
    assert env["QUERY_STRING"][1] == "x=1"
    assert env["CONTENT_TYPE"][1] == "text/plain; charset=utf-8"
    assert env["CONTENT_LENGTH"][1] == "5"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    # Gunicorn's: the listening socket's address on TCP, not the Host header
    assert env["SERVER_NAME"][1] == "127.0.0.1" and env["SERVER_PORT"][1] == str(srv.port)
    assert env["SERVER_PROTOCOL"][1] == "HTTP/1.1"
    assert env["HTTP_HOST"][1] == "example.org:8080"
    assert env["wsgi.version"] == ["tuple", [1, 0]]
    assert env["wsgi.url_scheme"] == ["str", "http"]
    assert env["wsgi.multithread"] == ["bool", False]
    assert env["wsgi.multiprocess"] == ["bool", False]
    assert env["wsgi.run_once"] == ["bool", False]
    assert env["wsgi.input_terminated"] == ["bool", True]
    assert env["RAW_URI"][1] == "/types?x=1"
    assert env["REMOTE_ADDR"][1] == "127.0.0.1"
    assert env["REMOTE_PORT"][1].isdigit()
    assert env["_input_api"] == ["read", "readline", "readlines", "__iter__"]
    assert env["_errors_api"] == ["write", "writelines", "flush"]
    assert env["_file_wrapper_callable"] is True
    assert env["_file_wrapper_attrs"] == [True, 4]


def test_environ_get_without_body(srv):
    env = get_json(srv, "/types")
    for k in REQUIRED:
        assert k in env, k
    # PEP 3333: CONTENT_TYPE / CONTENT_LENGTH "may be empty or absent".
    assert env.get("CONTENT_LENGTH", ["str", ""])[1] in ("", "0")
    assert env.get("CONTENT_TYPE", ["str", ""])[1] == ""
    assert env["QUERY_STRING"][1] == ""
    # Without a Host header (HTTP/1.0), SERVER_NAME/PORT come from the socket.
    ex = exchange(srv.port, b"GET /types HTTP/1.0\r\n\r\n")
    (r,), _ = parse_responses(ex.data, ["GET"])
    env = json.loads(r.body)
    assert env["SERVER_PROTOCOL"][1] == "HTTP/1.0"
    assert env["SERVER_NAME"][1] == "127.0.0.1"
    assert env["SERVER_PORT"][1] == str(srv.port)


def test_multithread_multiprocess_flags(start_server):
    s = start_server("wsgicases:app", "-w", "2", "--threads", "2")
    env = get_json(s, "/types")
    assert env["wsgi.multithread"] == ["bool", True]
    assert env["wsgi.multiprocess"] == ["bool", True]


def test_path_info_is_percent_decoded_latin1(srv):
    env = get_json(srv, "/path-bytes/caf%C3%A9/a%20b/%2F/x%zz")
    assert env["PATH_INFO"] == "/path-bytes/caf\u00c3\u00a9/a b///x%zz"
    assert bytes.fromhex(env["bytes_hex"]) == "/path-bytes/café/a b///x%zz".encode("utf-8")
    assert env["RAW_URI"] == "/path-bytes/caf%C3%A9/a%20b/%2F/x%zz"
    # Raw (unescaped) UTF-8 is not a URI (RFC 3986): 400, as in Gunicorn,
    # in the path and in the query.
    for target in ("/path-bytes/café", "/path-bytes/x?q=é"):
        ex = exchange(srv.port, ("GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % target).encode())
        assert ex.data.startswith(b"HTTP/1.1 400 "), ex.data[:80]
        assert ex.closed


def test_query_string_is_not_decoded(srv):
    env = get_json(srv, "/types?a=%20b&c=%C3%A9+d")
    assert env["QUERY_STRING"][1] == "a=%20b&c=%C3%A9+d"


def test_absolute_form_target(srv):
    ex = exchange(srv.port, b"GET http://example.com/path-bytes/x?q=1 HTTP/1.1\r\nHost: example.com\r\n"
                            b"Connection: close\r\n\r\n")
    (r,), _ = parse_responses(ex.data, ["GET"])
    env = json.loads(r.body)
    assert env["PATH_INFO"] == "/path-bytes/x"
    assert env["RAW_URI"] == "http://example.com/path-bytes/x?q=1"


@pytest.mark.parametrize("how", ["option", "env"])
def test_script_name_from_root_path(start_server, how):
    if how == "option":
        s = start_server("wsgicases:app", "--root-path", "/app")
    else:
        s = start_server("wsgicases:app", env={"SCRIPT_NAME": "/app"})
    env = get_json(s, "/app/path-bytes/x")
    assert env["SCRIPT_NAME"] == "/app" and env["PATH_INFO"] == "/path-bytes/x"
    assert env["RAW_URI"] == "/app/path-bytes/x"
    # The mount point itself: PATH_INFO empty.
    st, _, _ = s.request("GET", "/app")
    assert st == 404  # routed by PATH_INFO '' -> not found, but served
    env = get_json(s, "/app/types")
    assert env["PATH_INFO"][1] == "/types" and env["SCRIPT_NAME"][1] == "/app"
    # Only a whole path segment is stripped.
    st, _, _ = s.request("GET", "/application/path-bytes")
    assert st == 404
    env = get_json(s, "/path-bytes/outside")
    assert env["PATH_INFO"] == "/path-bytes/outside" and env["SCRIPT_NAME"] == "/app"


# ---- wsgi.input ------------------------------------------------------------------

BODY = b"first line\nsecond\n\nfourth line is longer\nno newline at end"


def test_input_read_n(srv):
    chunks = get_json(srv, "/read?7", method="POST", body=BODY)
    assert "".join(chunks).encode() == BODY
    assert all(len(c) == 7 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 7
    assert get_json(srv, "/read", method="POST", body=BODY) == [BODY.decode()]
    assert get_json(srv, "/read?-1", method="POST", body=BODY) == [BODY.decode()]
    assert get_json(srv, "/read", method="POST", body=b"") == []


def test_input_readline(srv):
    assert get_json(srv, "/readline", method="POST", body=BODY) == [
        "first line\n", "second\n", "\n", "fourth line is longer\n", "no newline at end"]
    assert get_json(srv, "/readline?5", method="POST", body=BODY) == [
        "first", " line", "\n", "secon", "d\n", "\n", "fourt", "h lin", "e is ", "longe", "r\n",
        "no ne", "wline", " at e", "nd"]


def test_input_readlines_and_iteration(srv):
    lines = ["first line\n", "second\n", "\n", "fourth line is longer\n", "no newline at end"]
    assert get_json(srv, "/readlines", method="POST", body=BODY) == [lines, ""]
    # A size hint stops after the line that reaches it.
    first, rest = get_json(srv, "/readlines?12", method="POST", body=BODY)
    assert first == lines[:2] and rest == "".join(lines[2:])
    assert get_json(srv, "/iter", method="POST", body=BODY) == lines
    # io's rule (Gunicorn ignores the hint): 0 or less is no hint at all
    for hint in (0, -5):
        assert get_json(srv, f"/readlines?{hint}", method="POST", body=BODY) == [lines, ""]


def test_input_mixed_calls(srv):
    parts = get_json(srv, "/mixed", method="POST", body=b"abcdef\nghijkl\nmn\nop")
    assert parts == ["abc", "def\n", "ghij", "", "kl\nmn\nop", "", "", ""]


def test_input_large_body_spooled_reads(start_server):
    # Beyond --body-buffer-size the body lives in a temp file: same API.
    s = start_server("wsgicases:app", "--body-buffer-size", "1000")
    body = b"".join(b"line %05d\n" % i for i in range(2000))
    assert get_json(s, "/readline", method="POST", body=body) == [
        l + "\n" for l in body.decode().split("\n")[:-1]]
    chunks = get_json(s, "/read?333", method="POST", body=body)
    assert "".join(chunks).encode() == body and len(chunks[0]) == 333
    first, rest = get_json(s, "/readlines?100", method="POST", body=body)
    assert "".join(first) + rest == body.decode() and len(first) == 10
    assert get_json(s, "/mixed", method="POST", body=b"abcdef\nghijkl\nmn\nop" + b"z" * 2000) == [
        "abc", "def\n", "ghij", "", "kl\nmn\nop" + "z" * 2000, "", "", ""]
    st, _, data = s.request("POST", "/sha256", body=body)
    assert data.decode() == f"{len(body)} {hashlib.sha256(body).hexdigest()}"


def test_input_chunked_upload(srv):
    c = srv.conn()
    payload = [b"%d," % i * 50 for i in range(200)]
    c.request("POST", "/sha256", body=iter(payload), encode_chunked=True)
    r = c.getresponse()
    data = b"".join(payload)
    assert r.read().decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"
    # The app gets the body de-chunked, framed by CONTENT_LENGTH alone.
    c.request("POST", "/types", body=iter(payload), encode_chunked=True)
    env = json.loads(c.getresponse().read())
    assert env["CONTENT_LENGTH"][1] == str(len(data)) and "HTTP_TRANSFER_ENCODING" not in env
    assert env["wsgi.input_terminated"] == ["bool", True]
    c.close()


# ---- start_response rules ------------------------------------------------------------

def test_second_start_response_without_exc_info_is_500(srv):
    st, _, body = srv.request("GET", "/twice")
    assert st == 500 and b"should not be sent" not in body
    st, _, body = srv.request("GET", "/twice-caught")
    assert st == 200 and body.startswith(b"second call raised")


def test_second_start_response_after_a_failed_first_is_refused(srv):
    """PEP 3333: "it is a fatal error to call start_response without the exc_info argument
    if start_response has already been called ... This includes the case where the first
    call to start_response raised an error." """
    st, _, body = srv.request("GET", "/twice-after-failed")
    assert st == 500 and b"accepted" not in body
    assert "twice-after-failed: refused" in srv.close_file.read_text()


def test_list_subclass_is_iterated_as_the_app_defines(srv):
    """A list subclass is an iterable like any other: its own __iter__ gives the body."""
    st, _, body = srv.request("GET", "/list-subclass")
    assert (st, body) == (200, b"from-iter")


@pytest.mark.parametrize("kind", ["empty", "body"])
def test_close_runs_after_the_response_is_out(srv, kind):
    """close() is called upon completion of the request: the client has the whole
    response (the empty-body redirect, or the last chunk) before close() returns."""
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    t0 = time.monotonic()
    c.request("GET", f"/slow-close?{kind}")
    r = c.getresponse()
    body = r.read()
    took = time.monotonic() - t0
    c.close()
    assert r.status == (302 if kind == "empty" else 200)
    assert body == (b"" if kind == "empty" else b"streamed body")
    assert took < 1.2, f"the client waited {took:.2f}s on close()"
    wait_for(lambda: f"slow-close {kind}" in srv.close_file.read_text(), what="close()")
    # the connection is kept and serves the next request once close() is done
    st, _, _ = srv.request("GET", "/types")
    assert st == 200


def test_iteration_stops_once_content_length_is_sent(srv):
    """PEP 3333: the server "should stop iterating over the response when enough data has
    been sent": an endless iterable after its declared 10 bytes is closed, not drained."""
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    c.request("GET", "/endless-after-length")
    r = c.getresponse()
    assert (r.status, r.read()) == (200, b"0123456789")
    c.close()
    line = wait_for(lambda: [l for l in srv.close_file.read_text().splitlines()
                             if l.startswith("endless pulled")], what="close()")
    assert int(line[-1].split()[-1]) <= 2, line


def test_start_response_with_exc_info_before_headers_replaces_status(srv):
    st, h, body = srv.request("GET", "/exc-info")
    assert st == 503 and body == b"recovered"
    assert h.get("x-second") == "1" and "x-first" not in h


def test_start_response_with_exc_info_after_headers_reraises(srv):
    mark = srv.log().count("too late to change the status")
    s = connect(srv.port)
    try:
        s.sendall(request_bytes("GET", "/exc-info-after-headers"))
        ex = read_until_close(s, timeout=10)
    finally:
        s.close()
    # The head went out as 200; the body is cut off (no chunk terminator),
    # and the connection is closed so the client cannot take it as complete.
    body = assert_cut_off(ex)
    assert b"never" not in body
    srv.wait_log(r"too late to change the status", count=mark + 1)


def test_app_returning_without_start_response_is_500(srv):
    st, _, body = srv.request("GET", "/no-start-response")
    assert st == 500 and b"nobody" not in body


# ---- write() ---------------------------------------------------------------------------

def test_write_callable(srv):
    st, _, body = srv.request("GET", "/write-big")
    assert st == 200
    assert body == b"".join(b"%d" % i * 100_000 for i in range(10)) + b"end"
    st, h, body = srv.request("GET", "/write-then-iter")
    assert (st, body) == (200, b"w1 w2 i1 i2")


def test_write_callable_http10(srv):
    ex = exchange(srv.port, b"GET /write-big HTTP/1.0\r\n\r\n", timeout=10)
    assert ex.closed
    (r,), _ = parse_responses(ex.data, ["GET"])
    assert r.body == b"".join(b"%d" % i * 100_000 for i in range(10)) + b"end"


ERRORS_CLOSE_APP = """\
import sys
def app(environ, start_response):
    err = environ["wsgi.errors"]
    if environ["PATH_INFO"] == "/close":
        err.close()
    else:
        err.write("errors line %s\\n" % environ["QUERY_STRING"])
        err.writelines(["more %s\\n" % environ["QUERY_STRING"]])
        err.flush()
        print("stderr line", environ["QUERY_STRING"], file=sys.stderr, flush=True)
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
"""


def test_closing_wsgi_errors_does_not_break_later_requests(start_server, tmp_path):
    # wsgi.errors belongs to the worker, not the request: an app that
    # closes it must not turn the next requests' writes (to it and to
    # sys.stderr) into 500s. Gunicorn gives each request its own wrapper.
    (tmp_path / "errclose.py").write_text(ERRORS_CLOSE_APP)
    s = start_server("errclose:app", "-w", "1", cwd=tmp_path)
    assert s.request("GET", "/write?a")[0] == 200
    assert s.request("GET", "/close")[0] == 200
    assert s.request("GET", "/write?b")[0] == 200
    for line in ("errors line b", "more b", "stderr line b"):
        s.wait_log(re.escape(line))


STALE_WRITE_APP = """\
SAVED = []
def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path in ("/keep-list", "/keep-iter"):
        SAVED.append(start_response("200 OK", [("Content-Type", "text/plain")]))
        if path == "/keep-list":
            return [b"first"]
        return iter([b"fir", b"st"])
    outcome = "nothing kept"
    if SAVED:
        try:
            SAVED.pop()(b"LEAKED")
            outcome = "written"
        except OSError as e:
            outcome = "OSError %s" % e.errno
    body = outcome.encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


@pytest.mark.parametrize("kind", ["list", "iter"])
def test_write_kept_past_its_request_reaches_no_socket(start_server, tmp_path, kind):
    # An app keeps the write() of a finished request and calls it during a
    # later one. Gunicorn's fails with EBADF; it must never put bytes on a
    # connection: not on the first client's (still open, keep-alive: its
    # next response would be garbled), not on another client's (the first
    # closed, and the fd number is reused).
    (tmp_path / "stale.py").write_text(STALE_WRITE_APP)
    s = start_server("stale:app", "-w", "1", cwd=tmp_path)
    # the first connection stays open
    a = connect(s.port)
    a.sendall(b"GET /keep-%s HTTP/1.1\r\nHost: x\r\n\r\n" % kind.encode())
    assert recv_response(a).body == b"first"
    a.sendall(b"GET /use HTTP/1.1\r\nHost: x\r\n\r\n")
    r = recv_response(a)
    assert (r.status, r.body) == (200, b"OSError 9")
    a.sendall(b"GET /use HTTP/1.1\r\nHost: x\r\n\r\n")
    r = recv_response(a)
    assert (r.status, r.body) == (200, b"nothing kept")
    a.close()
    # the first connection closed, then another client
    ex = exchange(s.port, b"GET /keep-%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % kind.encode())
    assert ex.closed and ex.data.startswith(b"HTTP/1.1 200 ")
    ex = exchange(s.port, b"GET /use HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ex.data.startswith(b"HTTP/1.1 200 "), ex.data[:100]
    (r,), rest = parse_responses(ex.data, ["GET"])
    assert (r.body, rest) == (b"OSError 9", b"")


# ---- result.close() --------------------------------------------------------------------

def closes(srv, tag):
    return [l for l in srv.close_file.read_text().splitlines() if l.startswith(f"closed {tag} ")]


def test_close_called_after_normal_response(srv):
    st, _, body = srv.request("GET", "/tracked?normal,3")
    assert st == 200 and len(body) == 3 * 65536
    wait_for(lambda: closes(srv, "normal"), what="close()")
    assert closes(srv, "normal") == ["closed normal after 3"]


def test_close_called_after_long_streamed_response(srv):
    st, _, body = srv.request("GET", "/tracked?long,40")
    assert st == 200 and len(body) == 40 * 65536
    assert body[:8] == b"00000001" and body[-65536:-65528] == b"00000040"
    wait_for(lambda: closes(srv, "long"), what="close()")
    assert closes(srv, "long") == ["closed long after 40"]


def test_close_called_for_head(srv):
    st, _, body = srv.request("HEAD", "/tracked?head,40")
    assert st == 200 and body == b""
    wait_for(lambda: closes(srv, "head"), what="close()")


def test_close_called_when_client_disconnects_mid_stream(srv):
    s = connect(srv.port)
    # A small receive buffer so the server blocks on a full socket.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        s.sendall(request_bytes("GET", "/tracked?gone,100000"))  # 6.5 GB if read
        recv_until(s, b"00000002")
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # RST
    got = wait_for(lambda: closes(srv, "gone"), timeout=10, what="close() after disconnect")
    n = int(got[0].split()[-1])
    assert n < 100000
    # The worker is fine afterwards.
    assert srv.request("GET", "/tracked?after,1")[0] == 200


def test_close_called_when_client_disconnects_politely(srv):
    s = connect(srv.port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        s.sendall(request_bytes("GET", "/tracked?fin,100000"))
        recv_until(s, b"00000002")
        s.shutdown(socket.SHUT_RDWR)
    finally:
        s.close()
    wait_for(lambda: closes(srv, "fin"), timeout=10, what="close() after FIN")


def test_close_called_when_iteration_raises_before_headers(srv):
    st, _, body = srv.request("GET", "/tracked?early,5,0")
    assert st == 500 and b"failed on purpose" not in body
    wait_for(lambda: closes(srv, "early"), what="close()")
    srv.wait_log(r"iteration failed on purpose \(early\)")


def test_close_called_when_iteration_raises_mid_stream(srv):
    # 10 blocks (640 KiB) go out as a chunked body, then the iterable raises:
    # the response is cut off and the connection closed.
    ex = exchange(srv.port, request_bytes("GET", "/tracked?mid,50,10"), timeout=10)
    assert ex.closed
    head, _, body = ex.data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
    with pytest.raises(Exception):
        dechunk(body)
    wait_for(lambda: closes(srv, "mid"), what="close()")
    assert closes(srv, "mid") == ["closed mid after 10"]
    srv.wait_log(r"iteration failed on purpose \(mid\)")


# ---- PEP 3333 "Buffering and Streaming": no block is held back --------------------------

def first_bytes_at(port, path, want):
    """Seconds from sending the request until `want` has arrived."""
    c = connect(port, timeout=10)
    try:
        t0 = time.monotonic()
        c.sendall(request_bytes("GET", path, [("Connection", "close")]))
        recv_until(c, want, timeout=10)
        return time.monotonic() - t0
    finally:
        c.close()


def test_generator_blocks_are_sent_as_yielded(srv):
    # 3 events, 1.5 s apart: the first must not wait for the second.
    assert first_bytes_at(srv.port, "/drip?3,1.5", b"data: 0\n\n") < 1.0
    ex = exchange(srv.port, request_bytes("GET", "/drip?3,0.1", [("Connection", "close")]))
    (r,), _ = parse_responses(ex.data, ["GET"])
    assert r.body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n" and r.chunked


def test_write_sends_before_returning(srv):
    assert first_bytes_at(srv.port, "/write-drip?1.5", b"first ") < 1.0


def test_exc_info_after_first_block_reraises(srv):
    # The head and "partial-" are committed; the app's second start_response
    # raises, the generator dies with it: the body is cut off, never relabelled.
    mark = srv.log().count("error after the body started")
    ex = exchange(srv.port, request_bytes("GET", "/exc-info-after-yield"))
    body = assert_cut_off(ex)
    assert b"partial-" in body and b"<error page>" not in body
    srv.wait_log(r"ValueError: error after the body started", count=mark + 1)


def test_head_error_answer_has_no_body(srv):
    # RFC 9110 §9.3.2: no content in a response to HEAD, errors included.
    ex = exchange(srv.port, request_bytes("HEAD", "/no-start-response") + request_bytes("GET", "/types"))
    head, sep, rest = ex.data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500") and sep and rest == b"", ex
    assert ex.closed


@pytest.mark.parametrize("host", ["", ":8080", "example.org:", "example.org:8080"])
def test_server_name_and_port_never_empty(srv, host):
    # PEP 3333: SERVER_NAME and SERVER_PORT are never empty strings; on TCP
    # they are the listener's whatever Host says (as Gunicorn).
    c = connect(srv.port)
    try:
        c.sendall(f"GET /env HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        r = recv_response(c)
    finally:
        c.close()
    assert r.status == 200, r.body
    env = json.loads(r.body)
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(srv.port)


@pytest.mark.parametrize("close", [False, True])
def test_write_then_list_chunked_body_is_terminated(srv, close):
    # write() committed a chunked head; the returned list's items follow
    # and the last-chunk ends the body, also when the connection closes.
    headers = [("Connection", "close")] if close else []
    reqs = request_bytes("GET", "/write-then-list", headers)
    if not close:
        reqs += request_bytes("GET", "/types", [("Connection", "close")])
    ex = exchange(srv.port, reqs)
    rs, rest = parse_responses(ex.data, ["GET"] if close else ["GET", "GET"])
    assert rs[0].chunked and rs[0].body == b"w1 w2 l1" and rest == b"", ex
    if close:
        assert ex.data.endswith(b"0\r\n\r\n"), ex


def test_spooled_bodies_are_freed_after_each_request(start_server):
    import os
    s = start_server("wsgicases:app", "-w", "1", "--body-buffer-size", "65536")
    body = b"x" * 300_000
    for _ in range(5):
        st, _, got = s.request("POST", "/keep-input", body=body)
        assert st == 200 and got == b"300000"
    (pid,) = s.worker_pids()
    spools = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        # O_TMPFILE spools show as "/tmp/#<inode> (deleted)"
        if target.startswith("/tmp/#") or "ferricorn-body" in target:
            spools.append(target)
    assert spools == [], spools


def test_yield_before_start_response_is_500(srv):
    st, _, body = srv.request("GET", "/yield-before-start")
    assert st == 500 and b"early" not in body


@pytest.mark.parametrize("code,length,body", [(204, None, b""), (205, "0", b""), (200, "11", b"hello world")])
def test_no_content_statuses_drop_length_and_body(srv, code, length, body):
    # RFC 9110 §8.6: no Content-Length in a 204; §15.3.6: no content in a 205.
    ex = exchange(srv.port, request_bytes("GET", f"/status-length?{code}") + request_bytes("GET", "/types"))
    rs, _ = parse_responses(ex.data, ["GET", "GET"], eof=ex.closed)
    assert rs[0].status == code and rs[0].header("content-length") == length and rs[0].body == body
    assert rs[1].status == 200  # the connection stayed in step


@pytest.mark.parametrize("status", ["600 Custom", "999 X", "099 Low"])
def test_status_outside_100_599_is_500(srv, status):
    ex = exchange(srv.port, request_bytes("GET", "/status?" + status.replace(" ", "%20"),
                                          [("Connection", "close")]))
    assert ex.status == 500, ex


def test_head_with_empty_body_gets_no_made_up_length(srv):
    # RFC 9110 §8.6: Content-Length on HEAD only if it is what GET would send.
    ex = exchange(srv.port, request_bytes("HEAD", "/empty-for-head", [("Connection", "close")]))
    (r,), _ = parse_responses(ex.data, ["HEAD"])
    assert r.status == 200 and r.header("content-length") is None
    ex = exchange(srv.port, request_bytes("GET", "/empty-for-head", [("Connection", "close")]))
    (r,), _ = parse_responses(ex.data, ["GET"])
    assert r.header("content-length") == "1000"


def test_non_ascii_header_is_latin1_in_environ(srv):
    # PEP 3333: environ strings are the bytes read as ISO-8859-1.
    # A raw non-ASCII target is refused (test_path_info_is_percent_decoded_latin1);
    # a header value may carry such bytes (obs-text, RFC 9110 §5.5).
    c = connect(srv.port)
    try:
        c.sendall("GET /env HTTP/1.1\r\nHost: h\r\nX-Name: caf\u00e9\r\nConnection: close\r\n\r\n"
                  .encode())
        r = recv_response(c)
    finally:
        c.close()
    env = json.loads(r.body)
    assert env["HTTP_X_NAME"] == "caf\u00e9".encode().decode("latin-1")
    assert all(ord(ch) < 256 for ch in env["HTTP_X_NAME"])


def test_closing_app_from_basic(start_server, tmp_path):
    f = tmp_path / "closed"
    s = start_server("basic:closing_app", env={"CLOSE_FILE": str(f)})
    assert s.request()[2] == b"part1 part2"
    assert s.request("HEAD", "/")[0] == 200
    wait_for(lambda: f.exists() and f.read_text().count("closed") == 2, what="two closes")


# ---- wsgi.url_scheme and X-Forwarded-Proto --------------------------------------------

def scheme(s, headers):
    st, _, body = s.request("GET", "/environ", headers=headers)
    env = json.loads(body)
    return env["wsgi.url_scheme"], env.get("SERVER_PORT")


def test_forwarded_proto_from_trusted_peer(start_server):
    s = start_server("basic:app")  # default: 127.0.0.1,::1 trusted
    assert scheme(s, {})[0] == "http"
    # SERVER_PORT stays the socket's, as in Gunicorn
    assert scheme(s, {"X-Forwarded-Proto": "https", "Host": "example.org"}) == ("https", str(s.port))
    assert scheme(s, {"X-Forwarded-Proto": "http"})[0] == "http"
    assert scheme(s, {"X-Forwarded-Proto": "https", "Host": "example.org:8443"}) == ("https", str(s.port))


def test_forwarded_proto_from_untrusted_peer(start_server):
    s = start_server("basic:app", "--forwarded-allow-ips", "10.9.9.9")
    assert scheme(s, {"X-Forwarded-Proto": "https", "Host": "example.org"}) == ("http", str(s.port))
    # The header still reaches the app as data; it just does not count.
    st, _, body = s.request("GET", "/environ", headers={"X-Forwarded-Proto": "https"})
    assert json.loads(body)["HTTP_X_FORWARDED_PROTO"] == "https"


def test_script_name_header_from_trusted_proxy(start_server):
    # Gunicorn's forwarder_headers (SCRIPT_NAME, PATH_INFO): a trusted proxy
    # may mount the app under a prefix per request; from anyone else these
    # names (with "_") are dropped like every other underscore header.
    s = start_server("basic:app")
    st, _, body = s.request("GET", "/app/environ", headers={"SCRIPT_NAME": "/app", "X_Other": "1"})
    env = json.loads(body)
    assert st == 200 and (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/environ")
    assert env["HTTP_SCRIPT_NAME"] == "/app" and "HTTP_X_OTHER" not in env
    # the next request on a fresh environ is back to the default
    env = json.loads(s.request("GET", "/environ")[2])
    assert env["SCRIPT_NAME"] == "" and "HTTP_SCRIPT_NAME" not in env
    t = start_server("basic:app", "--forwarded-allow-ips", "10.9.9.9")
    st, _, body = t.request("GET", "/environ", headers={"SCRIPT_NAME": "/app", "PATH_INFO": "/x"})
    env = json.loads(body)
    assert st == 200 and (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("", "/environ")
    assert "HTTP_SCRIPT_NAME" not in env and "HTTP_PATH_INFO" not in env


def test_access_log_atoms_env_escaping_unknown(start_server, tmp_path):
    # Gunicorn's access_log_format: %({key}e)s is the environ (after the app
    # ran, keys matched case-insensitively), a '"' in a value is escaped,
    # an undefined atom prints '-', %(U)s is the decoded PATH_INFO.
    (tmp_path / "envapp.py").write_text(
        "def app(environ, start_response):\n"
        "    environ['x.user'] = 'alice'\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'ok']\n")
    log = tmp_path / "access.log"
    fmt = '%(h)s "%(a)s" %({REMOTE_ADDR}e)s %({wsgi.url_scheme}e)s %({X.USER}e)s %({none}e)s %(U)s %(zz)s %(x)s'
    s = start_server("envapp:app", "--chdir", str(tmp_path), "--access-logfile", str(log),
                     "--access-logformat", fmt)
    st, _, _ = s.request("GET", "/caf%C3%A9/x", headers={"User-Agent": 'evil" 200 0 "forged'})
    assert st == 200
    wait_for(lambda: log.exists() and log.read_text().strip(), what="access line")
    line = log.read_text().strip()
    assert line == '127.0.0.1 "evil\\" 200 0 \\"forged" 127.0.0.1 http alice - /caf\u00e9/x - -', line


def test_conflicting_scheme_headers_are_400(start_server):
    # Gunicorn's InvalidSchemeHeaders: a trusted proxy must not say both.
    s = start_server("basic:app")
    for headers in ([("X-Forwarded-Proto", "https"), ("X-Forwarded-Ssl", "off")],
                    [("X-Forwarded-Proto", "http"), ("X-Forwarded-Proto", "https")]):
        ex = exchange(s.port, request_bytes("GET", "/environ", headers))
        assert ex.status == 400 and ex.closed, (headers, ex)
    # logged as every refused request, in Gunicorn's words
    s.wait_log(r"WARNING\] Invalid request from ip=127.0.0.1: Contradictory scheme headers", count=2)
    # agreeing ones are fine
    st, _, body = s.request("GET", "/environ", headers={"X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "on"})
    assert st == 200 and json.loads(body)["wsgi.url_scheme"] == "https"
    # from an untrusted peer they mean nothing, so they cannot conflict
    t = start_server("basic:app", "--forwarded-allow-ips", "10.9.9.9")
    ex = exchange(t.port, request_bytes("GET", "/environ", [("X-Forwarded-Proto", "https"),
                                                             ("X-Forwarded-Ssl", "off"), ("Connection", "close")]))
    assert ex.status == 200


def test_secure_scheme_headers_setting(start_server, tmp_path):
    """Gunicorn's secure_scheme_headers (a config file setting): the headers, and the value
    meaning https, that a trusted proxy's request may carry; they replace the default
    X-Forwarded-Proto/-Ssl/-Protocol, and an empty one trusts none."""
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("secure_scheme_headers = {'X-SCHEME': 'https'}\n")
    s = start_server("basic:app", "-c", str(conf))
    assert scheme(s, {"X-Scheme": "https"})[0] == "https"
    assert scheme(s, {"X-Scheme": "http"})[0] == "http"
    assert scheme(s, {"X-Forwarded-Proto": "https"})[0] == "http", "not one of the configured"
    toml = tmp_path / "none.toml"
    toml.write_text("secure_scheme_headers = {}\n")
    t = start_server("basic:app", "-c", str(toml))
    for h in ({"X-Forwarded-Proto": "https"}, {"X-Forwarded-Ssl": "on"},
              {"X-Forwarded-Protocol": "ssl"}):
        assert scheme(t, h)[0] == "http", h
    bad = tmp_path / "bad.toml"
    bad.write_text("secure_scheme_headers = {'X Bad' = 'https'}\n")
    r = subprocess.run([BIN, "--check-config", "-c", str(bad), "basic:app"], cwd=APPS,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "secure_scheme_headers" in r.stderr, r.stderr


def test_forwarded_allow_ips_network(start_server):
    s = start_server("basic:app", "--forwarded-allow-ips", "10.0.0.0/8,127.0.0.0/8")
    assert scheme(s, {"X-Forwarded-Proto": "https"})[0] == "https"
    t = start_server("basic:app", "--forwarded-allow-ips", "127.0.1.0/24")
    assert scheme(t, {"X-Forwarded-Proto": "https"})[0] == "http"


def test_forwarded_allow_ips_star(start_server):
    s = start_server("basic:app", "--forwarded-allow-ips", "*")
    assert scheme(s, {"X-Forwarded-Proto": "https"})[0] == "https"


# ---- PROXY protocol (--proxy-protocol, --proxy-allow-from) --------------------------------

PROXY_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2(cmd, fam, body):
    return PROXY_V2_SIG + bytes([0x20 | cmd, fam]) + len(body).to_bytes(2, "big") + body


def environ_over(s, first_bytes, pieces=1):
    """Send `first_bytes` then two keep-alive /environ requests on one
    connection; returns both environs."""
    c = connect(s.port)
    try:
        data = first_bytes + request_bytes("GET", "/environ")
        step = max(1, len(data) // pieces)
        for i in range(0, len(data), step):
            c.sendall(data[i:i + step])
            if pieces > 1:
                time.sleep(0.01)
        r1 = recv_response(c)
        c.sendall(request_bytes("GET", "/environ"))
        r2 = recv_response(c)
        assert (r1.status, r2.status) == (200, 200), (r1.body, r2.body)
        return json.loads(r1.body), json.loads(r2.body)
    finally:
        c.close()


def test_proxy_protocol_v1_and_v2_set_client_address(start_server, tmp_path):
    log = tmp_path / "access.log"
    s = start_server("basic:app", "--proxy-protocol", "--access-logfile", str(log))
    v1 = b"PROXY TCP4 203.0.113.7 192.0.2.10 51000 443\r\n"
    for env in environ_over(s, v1):  # the header holds for the whole connection
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.7", "51000")
        assert (env["PROXY_PROTOCOL"], env["PROXY_ADDR"], env["PROXY_PORT"]) == ("TCP4", "192.0.2.10", "443")
    # arriving a few bytes at a time changes nothing
    env, _ = environ_over(s, b"PROXY TCP6 2001:db8::5 2001:db8::1 40000 8443\r\n", pieces=12)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["PROXY_PROTOCOL"]) == ("2001:db8::5", "40000", "TCP6")
    body = bytes([198, 51, 100, 9, 10, 0, 0, 1]) + (61000).to_bytes(2, "big") + (80).to_bytes(2, "big")
    body += bytes([0x04, 0, 2, 0xAB, 0xCD])  # a TLV (PP2_TYPE_NOOP): skipped
    env, _ = environ_over(s, proxy_v2(1, 0x11, body), pieces=5)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("198.51.100.9", "61000")
    assert (env["PROXY_ADDR"], env["PROXY_PORT"]) == ("10.0.0.1", "80")
    # v2 LOCAL (a balancer's health check) and v1 UNKNOWN: the real peer stands
    for first in (proxy_v2(0, 0x00, b""), b"PROXY UNKNOWN\r\n", b""):
        env, _ = environ_over(s, first)
        assert env["REMOTE_ADDR"] == "127.0.0.1", first
        assert "PROXY_PROTOCOL" not in env and "PROXY_ADDR" not in env, first
    # the template environ of a proxied connection does not leak into the next one
    environ_over(s, v1)
    env, _ = environ_over(s, b"")
    assert env["REMOTE_ADDR"] == "127.0.0.1" and "PROXY_ADDR" not in env
    # the access log names the client, as %(h)s is REMOTE_ADDR
    wait_for(lambda: log.exists() and "203.0.113.7" in log.read_text(), what="access log line")
    assert re.search(r"^203\.0\.113\.7 .*GET /environ", log.read_text(), re.M)


def test_proxy_protocol_refusals(start_server):
    s = start_server("basic:app", "--proxy-protocol")
    for bad in (b"PROXY TCP4 203.0.113.7 192.0.2.10 51000\r\n",       # a field missing
                b"PROXY TCP4 203.0.113.999 192.0.2.10 1 2\r\n",        # not an address
                b"PROXY TCP4 203.0.113.7 192.0.2.10 70000 2\r\n",      # port out of range
                b"PROXY " + b"1" * 200,                                 # no CRLF within 107 bytes
                proxy_v2(1, 0x12, bytes(12))):                         # UDP
        ex = exchange(s.port, bad + request_bytes("GET", "/environ"))
        assert ex.status == 400 and ex.closed, (bad, ex)
    # Only the first bytes of a connection may be a PROXY header.
    c = connect(s.port)
    try:
        c.sendall(request_bytes("GET", "/"))
        assert recv_response(c).status == 200
        c.sendall(b"PROXY TCP4 203.0.113.7 192.0.2.10 51000 443\r\n" + request_bytes("GET", "/environ"))
        assert recv_response(c).status == 400
    finally:
        c.close()
    # From a sender not in --proxy-allow-from: 403, and the connection closes.
    t = start_server("basic:app", "--proxy-protocol", "--proxy-allow-from", "10.9.9.9")
    ex = exchange(t.port, b"PROXY TCP4 203.0.113.7 192.0.2.10 51000 443\r\n" + request_bytes("GET", "/environ"))
    assert ex.status == 403 and ex.closed, ex
    assert ex.data.startswith(b"HTTP/1.1 403 Forbidden\r\n"), ex.data[:60]
    assert b"203.0.113.7" not in ex.data
    assert exchange(t.port, request_bytes("GET", "/", headers=[("Connection", "close")])).status == 200
    # Without --proxy-protocol a PROXY line is just a bad request line.
    u = start_server("basic:app")
    ex = exchange(u.port, b"PROXY TCP4 203.0.113.7 192.0.2.10 51000 443\r\n" + request_bytes("GET", "/"))
    assert ex.status == 400


def test_proxy_protocol_version_modes(start_server, tmp_path):
    # Gunicorn 24.1's values: v1 or v2 accepts that version only (the other is not looked
    # for, so its bytes are a bad request), auto (the flag alone) either, off neither.
    v1 = b"PROXY TCP4 203.0.113.7 192.0.2.10 51000 443\r\n"
    v2 = proxy_v2(1, 0x11, bytes([198, 51, 100, 9, 10, 0, 0, 1]) + bytes([0xEE, 0x48, 0, 80]))
    conf = tmp_path / "pp.toml"
    conf.write_text('proxy_protocol = "v2"\n')
    for args, good, bad in ((["--proxy-protocol", "v1"], v1, v2),
                            (["--proxy-protocol=v2"], v2, v1),
                            (["-c", str(conf)], v2, v1)):
        s = start_server("basic:app", *args)
        env, _ = environ_over(s, good)
        assert env["REMOTE_ADDR"] in ("203.0.113.7", "198.51.100.9"), args
        ex = exchange(s.port, bad + request_bytes("GET", "/environ"))
        assert ex.status == 400 and ex.closed, (args, ex)
    # on the command line, off wins over the file's mode
    s = start_server("basic:app", "-c", str(conf), "--proxy-protocol", "off")
    assert exchange(s.port, v2 + request_bytes("GET", "/environ")).status == 400
    t = start_server("basic:app", "--proxy-protocol=v3", ready=False)
    assert t.proc.wait(10) == 2
    assert re.search(r"proxy_protocol.*v3", t.log())


def test_proxy_allow_from_bad_address_names_the_key(start_server):
    s = start_server("basic:app", "--proxy-protocol", "--proxy-allow-from", "10.0.0.1,nonsense", ready=False)
    assert s.proc.wait(10) == 2
    assert re.search(r"proxy_allow_ips.*nonsense", s.log())


# ---- errors --------------------------------------------------------------------------------

def test_app_exception_is_generic_500(srv):
    mark = srv.log().count("app raised after start_response")
    st, h, body = srv.request("GET", "/tracked-raise-in-app")
    assert st == 500
    assert len(body) < 100 and b"Traceback" not in body and b"RuntimeError" not in body
    assert h["content-length"] == str(len(body))
    log = srv.wait_log(r"RuntimeError: app raised after start_response", count=mark + 1)
    assert "Traceback" in log


@pytest.mark.parametrize(
    "kind",
    ["header-name-space", "header-name-colon", "header-value-lf", "header-value-cr", "header-value-nul",
     "header-non-latin1", "header-bytes", "status-bytes", "status-short",
     "status-letters", "status-crlf", "status-no-space", "body-str", "body-str-gen",
     "content-length-bad"],
)
def test_invalid_response_is_500(srv, kind):
    ex = exchange(srv.port, request_bytes("GET", f"/bad?{kind}"))
    assert ex.closed
    (r,), rest = parse_responses(ex.data, ["GET"])
    assert r.status == 500 and rest == b""
    assert b"should not be sent" not in ex.data and b"a str" not in ex.data
    assert b"X-Injected" not in ex.data and b"X-Bad" not in ex.data


@pytest.mark.parametrize("kind", ["header-value-tab", "headers-tuple", "header-list-pairs",
                                  "headers-items", "header-value-spaces", "status-tab"])
def test_what_gunicorn_sends_is_sent(srv, kind):
    # A HTAB inside a value or a reason phrase is valid HTTP (RFC 9110 §5.5,
    # RFC 9112 §4), and Gunicorn takes any iterable of pairs for the headers:
    # an app moving over from it gets the same response, not a 500. Space
    # around a value is not part of it (RFC 9110 §5.5) and is not sent
    # (§5.6.3), as Gunicorn strips it.
    ex = exchange(srv.port, request_bytes("GET", f"/lenient?{kind}", [("Connection", "close")]))
    (r,), rest = parse_responses(ex.data, ["GET"])
    assert (r.status, r.body, rest) == (200, b"sent", b"")
    assert b"\r\nX-Lenient: a\tb\r\n" in ex.data
    if kind == "status-tab":
        assert ex.data.startswith(b"HTTP/1.1 200 OK\tfine\r\n")
    if kind == "header-value-spaces":
        assert b"\r\nSet-Cookie: k=v; Path=/\r\n" in ex.data


def test_early_hints(srv):
    # Gunicorn's environ['wsgi.early_hints'] (RFC 8297): each call sends a 103 at once.
    ex = exchange(srv.port, request_bytes("GET", "/hints")
                  + request_bytes("GET", "/hints?late", [("Connection", "close")]))
    rs, rest = parse_responses(ex.data, ["GET", "GET"], eof=ex.closed)
    assert [r.status for r in rs] == [103, 103, 200, 200] and rest == b"", ex
    assert rs[0].reason == "Early Hints"
    assert [v for k, v in rs[0].headers] == ["</style.css>; rel=preload; as=style",
                                            "</app.js>; rel=preload; as=script"]
    assert rs[1].headers == [("link", "</font.woff2>; rel=preload; as=font")]
    assert b"\r\nLink: </font.woff2>; rel=preload; as=font\r\n\r\n" in ex.data
    assert rs[2].body == b"hinted"
    # Once the response has begun, a hint is ignored (as Gunicorn's).
    assert rs[3].body == b"started hinted" and b"late.css" not in ex.data
    # HTTP/1.0 knows no 1xx: nothing but the response.
    ex = exchange(srv.port, request_bytes("GET", "/hints", version="HTTP/1.0"))
    (r,), rest = parse_responses(ex.data, ["GET"])
    assert (r.status, r.body, rest) == (200, b"hinted", b"")
    # A CR/LF in a hint is an error in the app: a 500, nothing injected.
    ex = exchange(srv.port, request_bytes("GET", "/hints?bad"))
    (r,), rest = parse_responses(ex.data, ["GET"])
    assert r.status == 500 and b"X-Injected" not in ex.data and b"103" not in ex.data


@pytest.mark.parametrize("status", ["100 Continue", "101 Switching Protocols", "103 Early Hints"])
def test_informational_status_from_app_is_500(srv, status):
    # A WSGI app answers with a final response; a 1xx sent as the only
    # answer would leave the client waiting for the real one and take the
    # next response on the connection for it (a response desync).
    ex = exchange(srv.port, request_bytes("GET", "/status?" + status.replace(" ", "%20"))
                  + request_bytes("GET", "/types"))
    assert ex.closed
    (r,), rest = parse_responses(ex.data, ["GET"])
    assert r.status == 500 and rest == b"", ex


@pytest.mark.parametrize("status,line", [
    ("200 OK", b"HTTP/1.1 200 OK\r\n"),
    ("299 Custom reason with spaces", b"HTTP/1.1 299 Custom reason with spaces\r\n"),
    ("200", b"HTTP/1.1 200 \r\n"),  # RFC 9112: the SP before an empty reason is required
    ("404 Nicht%20gefunden%20%E4", b"HTTP/1.1 404 Nicht gefunden \xe4\r\n"),  # latin-1 reason
])
def test_status_line_on_the_wire(srv, status, line):
    ex = exchange(srv.port, request_bytes("GET", "/status?" + status.replace(" ", "%20"),
                                          [("Connection", "close")]))
    assert ex.data.startswith(line), ex
    (r,), _ = parse_responses(ex.data, ["GET"])
    assert r.body == b"status body"


def test_short_body_closes_connection(srv):
    ex = exchange(srv.port, request_bytes("GET", "/short-body") + request_bytes("GET", "/types"))
    assert ex.closed
    head, _, body = ex.data.partition(b"\r\n\r\n")
    assert b"Content-Length: 10" in head and body == b"12345"


def test_long_body_is_cut_to_content_length(srv):
    ex = exchange(srv.port, request_bytes("GET", "/long-body") + request_bytes("GET", "/app-close"))
    rs, rest = parse_responses(ex.data, ["GET", "GET"])
    assert rs[0].body == b"abc" and rs[1].body == b"bye" and rest == b""


def test_hop_by_hop_headers_from_app_are_dropped(srv):
    ex = exchange(srv.port, request_bytes("GET", "/hop-by-hop") + request_bytes("GET", "/app-close"))
    rs, rest = parse_responses(ex.data, ["GET", "GET"])
    assert rs[0].body == b"framed by the server" and rest == b""
    assert rs[0].header("keep-alive") is None and rs[0].header("upgrade") is None
    assert rs[0].header("transfer-encoding") is None
    # The app's Connection: close is honoured.
    assert rs[1].header("connection").lower() == "close" and ex.closed


def test_dropped_hop_by_hop_headers_are_logged_at_debug(start_server):
    # PEP 3333 forbids them to the app; the server says which it dropped.
    s = start_server("wsgicases:app", "--log-level", "debug")
    assert s.request("GET", "/hop-by-hop")[0] == 200
    s.wait_log(r"\[DEBUG\] dropped the app's hop-by-hop response header \"Upgrade: h2c\"")


def test_worker_survives_errors(srv):
    pids = srv.worker_pids()
    for path in ["/twice", "/bad?status-bytes", "/tracked?x,2,0", "/tracked-raise-in-app"]:
        srv.request("GET", path)
    assert srv.worker_pids() == pids
    assert srv.request("GET", "/types")[0] == 200


# ---- wsgi.file_wrapper ------------------------------------------------------------

@pytest.fixture(scope="module")
def fw(tmp_path_factory):
    import os
    d = tmp_path_factory.mktemp("fw")
    data = os.urandom(3 << 20)
    (d / "blob").write_bytes(data)
    close_file = d / "closed.txt"
    close_file.write_text("")
    s = Server(["-b", "127.0.0.1:0", "wsgicases:app"], APPS,
               {"CLOSE_FILE": str(close_file), "FILE_TO_SEND": str(d / "blob")})
    s.close_file = close_file
    s.data = data
    try:
        yield s
    finally:
        s.close()


@pytest.mark.parametrize("mode,expect", [
    ("plain", lambda d: d),
    ("bytesio", lambda d: d),  # no descriptor: iterated instead of sendfile
    ("offset", lambda d: d[1000:]),  # sent from where the file stands
    ("offset-buffered", lambda d: d[10:]),  # despite Python's read-ahead
])
def test_file_wrapper_variants(fw, mode, expect):
    want = expect(fw.data)
    # Twice on one connection, then a normal request: framing stays right.
    reqs = request_bytes("GET", f"/fw?{mode}") * 2 + request_bytes("GET", "/types", [("Connection", "close")])
    ex = exchange(fw.port, reqs, timeout=20)
    rs, rest = parse_responses(ex.data, ["GET"] * 3)
    assert rest == b""
    for r in rs[:2]:
        assert r.status == 200 and len(r.body) == len(want) and r.body == want
    assert rs[2].status == 200
    wait_for(lambda: closes(fw, f"file-{mode}") and len(closes(fw, f"file-{mode}")) == 2,
             what="file close()")


def test_file_wrapper_with_shorter_content_length(fw):
    reqs = request_bytes("GET", "/fw?short-cl") + request_bytes("GET", "/types", [("Connection", "close")])
    ex = exchange(fw.port, reqs, timeout=20)
    rs, rest = parse_responses(ex.data, ["GET", "GET"])
    assert rs[0].body == fw.data[:5000] and rs[1].status == 200 and rest == b""


def test_file_wrapper_with_longer_content_length_closes(fw):
    reqs = request_bytes("GET", "/fw?long-cl") + request_bytes("GET", "/types")
    ex = exchange(fw.port, reqs, timeout=20)
    assert ex.closed
    head, _, body = ex.data.partition(b"\r\n\r\n")
    assert b"Content-Length: %d" % (len(fw.data) + 100) in head
    assert body == fw.data  # all there is, then the connection ends


def test_file_wrapper_head(fw):
    st, h, body = fw.request("HEAD", "/fw?plain")
    assert st == 200 and body == b""
    wait_for(lambda: closes(fw, "file-plain"), what="file close()")


def test_file_wrapper_client_disconnect_closes_file(fw):
    s = connect(fw.port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    before = len(closes(fw, "file-plain"))
    try:
        s.sendall(request_bytes("GET", "/fw?plain"))
        recv_until(s, b"\r\n\r\n")
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    wait_for(lambda: len(closes(fw, "file-plain")) > before, timeout=10, what="file close() after disconnect")


def test_write_called_from_inside_the_iterable(srv):
    # Not encouraged by PEP 3333, but legal: the bytes go out in order.
    st, _, body = srv.request("GET", "/write-in-iter")
    assert st == 200
    assert body == b"a" * 300_000 + b"LATE-WRITE" + b"end"
    st, _, body = srv.request("GET", "/write-in-iter?small")
    assert (st, body) == (200, b"aLATE-WRITEend")
    st, _, body = srv.request("GET", "/write-in-iter?bigwrite")
    assert st == 200 and body == b"a" + b"W" * 1_000_000 + b"end"


def test_file_wrapper_head_has_content_length(fw):
    # HEAD answers what GET would, without reading the file.
    reqs = request_bytes("HEAD", "/fw?plain") + request_bytes("GET", "/fw?plain", [("Connection", "close")])
    ex = exchange(fw.port, reqs, timeout=20)
    (head, get), rest = parse_responses(ex.data, ["HEAD", "GET"])
    assert rest == b"" and get.body == fw.data
    assert head.header("content-length") == get.header("content-length") == str(len(fw.data))


def test_file_wrapper_with_204_sends_no_body(fw):
    reqs = request_bytes("GET", "/fw?204") + request_bytes("GET", "/types", [("Connection", "close")])
    ex = exchange(fw.port, reqs, timeout=20)
    head, _, rest = ex.data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 204 ")
    assert rest.startswith(b"HTTP/1.1 200 "), rest[:100]
    wait_for(lambda: closes(fw, "file-204"), what="file close()")


def test_unix_socket_peer(start_server, tmp_path):
    path = tmp_path / "s.sock"
    s = start_server("basic:app", f"-b", f"unix:{path}", bind=False)

    class UnixConn(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(5)
            self.sock.connect(str(path))

    c = UnixConn("localhost")
    c.request("GET", "/environ", headers={"X-Forwarded-Proto": "https"})
    r = c.getresponse()
    env = json.loads(r.read())
    c.close()
    assert r.status == 200
    # A unix-socket peer is the local proxy: trusted, and has no address.
    assert env["wsgi.url_scheme"] == "https"
    assert env["REMOTE_ADDR"] == "" and "REMOTE_PORT" not in env  # as Gunicorn
    # with no address of its own, the socket takes SERVER_NAME from Host
    assert env["SERVER_NAME"] == "localhost"
    # No Host (HTTP/1.0), an empty Host, or one with only a port: SERVER_NAME is the
    # socket's path and SERVER_PORT HTTP's default, as Gunicorn; never empty (PEP 3333).
    for head in (b"GET /environ HTTP/1.0\r\n\r\n",
                 b"GET /environ HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
                 b"GET /environ HTTP/1.1\r\nHost: :8080\r\nConnection: close\r\n\r\n"):
        u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        u.settimeout(5)
        u.connect(str(path))
        u.sendall(head)
        data = read_until_close(u).data
        u.close()
        env = json.loads(data.split(b"\r\n\r\n", 1)[1])
        assert (env["SERVER_NAME"], env["SERVER_PORT"]) == (str(path), "80"), (head, env)


def test_per_request_values_on_one_connection(srv):
    # Nothing from one request leaks into the next on the same connection.
    here = {"SERVER_NAME": "127.0.0.1", "SERVER_PORT": str(srv.port)}  # the socket's, as Gunicorn
    reqs = [
        ("/types?1", [("Host", "a.example:81")], {"HTTP_HOST": "a.example:81", **here,
                                                  "wsgi.url_scheme": "http", "HTTP_X_ONE": "1"}),
        ("/types?2", [("Host", "b.example"), ("X-Forwarded-Proto", "https")],
         {"HTTP_HOST": "b.example", **here, "wsgi.url_scheme": "https"}),
        ("/types?3", [("Host", "b.example")], {"HTTP_HOST": "b.example", **here, "wsgi.url_scheme": "http"}),
        ("/types?4", [("Host", "a.example:81")], {"HTTP_HOST": "a.example:81", **here}),
    ]
    s = connect(srv.port)
    try:
        port = str(s.getsockname()[1])
        for i, (path, headers, want) in enumerate(reqs):
            hdrs = [(k, v) for k, v in headers]
            if i == 0:
                hdrs.append(("X-One", "1"))
            raw = f"GET {path} HTTP/1.1\r\n".encode() + b"".join(
                f"{k}: {v}\r\n".encode() for k, v in hdrs) + b"\r\n"
            s.sendall(raw)
            r = recv_response(s)
            env = {k: v[1] for k, v in json.loads(r.body).items() if isinstance(v, list) and len(v) == 2}
            for k, v in want.items():
                assert env.get(k) == v, (i, k, env.get(k))
            assert env["QUERY_STRING"] == str(i + 1)
            assert env["REMOTE_PORT"] == port
            if i:
                assert "HTTP_X_ONE" not in env
                assert "HTTP_X_FORWARDED_PROTO" not in env or i == 1
    finally:
        s.close()


def test_absolute_form_authority_wins_over_host(start_server):
    # RFC 9112 §3.2.2: the target's authority replaces the Host header.
    s = start_server("basic:app")
    raw = s.raw(b"GET http://real.example:8081/environ HTTP/1.1\r\nHost: other.example\r\n"
                b"Connection: close\r\n\r\n")
    env = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert env["HTTP_HOST"] == "real.example:8081"
    assert env["PATH_INFO"] == "/environ"
