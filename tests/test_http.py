"""HTTP/1.1 on the wire (RFC 9112 / 9110), checked with raw sockets against
the real binary.

Framing rules: every malformed or ambiguous request must be answered with
the right status, must never reach the application, and must end the
connection (a server that keeps reading after a framing error is a
request-smuggling target). Then the ordinary HTTP/1.1 behaviour: keep-alive,
pipelining, HEAD, chunked in both directions, 100-continue, limits.
"""
import http.client
import json
import re
import socket
import time

import pytest

from conftest import APPS, Server
from wire import (
    connect,
    dechunk,
    exchange,
    parse_responses,
    read_until_close,
    recv_until,
    request_bytes,
)


# --------------------------------------------------------------------------
# One server (basic:app, recording its calls) shared by the framing tests of
# this module; each test starts from an empty calls file.


class Recorder:
    def __init__(self, server, calls):
        self.server = server
        self.calls = calls
        self.port = server.port

    def reset(self):
        self.calls.write_text("")

    def app_calls(self):
        """The calls the app saw, proven complete by a marker request: the
        marker goes through the same worker after the request under test,
        so anything that request triggered is already in the file."""
        st, _, body = self.server.request("GET", "/__marker__")
        assert st == 404
        lines = self.calls.read_text().splitlines()
        assert lines and lines[-1] == "GET /__marker__", lines
        return lines[:-1]

    def rejected(self, data, status, pieces=None, delay=0.0):
        """Send `data`; assert `status`, a single complete error response,
        connection closed, and the app never called."""
        self.reset()
        ex = exchange(self.port, data, pieces=pieces, delay=delay)
        assert ex.closed, f"connection left open after a {ex.status}: {ex!r}"
        assert ex.status == status, ex
        responses, rest = parse_responses(ex.data, ["GET"], eof=True)
        assert len(responses) == 1 and rest == b"", ex
        r = responses[0]
        assert r.header("connection", "").lower() == "close"
        assert r.body.startswith(str(status).encode())
        assert len(r.body) < 100
        assert self.app_calls() == [], f"the app was called for a {status}"
        return r

    def accepted(self, data, expect_status=200):
        self.reset()
        ex = exchange(self.port, data)
        assert ex.status == expect_status, ex
        return ex


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    calls = tmp_path_factory.mktemp("calls") / "calls.txt"
    calls.write_text("")
    s = Server(["-b", "127.0.0.1:0", "basic:app"], APPS, {"CALLS_FILE": str(calls)})
    try:
        yield Recorder(s, calls)
    finally:
        s.close()


@pytest.fixture
def srv(shared):
    assert shared.server.proc.poll() is None, shared.server.log()
    shared.reset()
    return shared


def post(headers, body=b"", path="/echo", version="HTTP/1.1"):
    head = f"POST {path} {version}\r\nHost: localhost\r\n" + "".join(f"{h}\r\n" for h in headers)
    return head.encode("latin-1") + b"\r\n" + body


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"


# ---- Content-Length --------------------------------------------------------

@pytest.mark.parametrize(
    "values",
    [
        ["3", "3"],  # even equal duplicates: a proxy may have used either one
        ["3", "30"],
        ["+3"],
        ["0x3"],
        ["3, 30"],
        ["3,3"],
        ["-1"],
        [""],
        [" 3 3"],
        ["3a"],
        ["18446744073709551616"],  # u64 overflow
    ],
    ids=lambda v: repr(v),
)
def test_bad_content_length_is_400(srv, values):
    headers = [f"Content-Length: {v}" for v in values]
    srv.rejected(post(headers, b"abc" + SMUGGLED), 400)


def test_duplicate_content_length_in_other_case_is_400(srv):
    srv.rejected(post(["Content-Length: 3", "content-length: 3"], b"abc"), 400)


def test_content_length_and_transfer_encoding_is_400(srv):
    # The classic CL.TE smuggling shape, in both orders.
    body = b"0\r\n\r\n" + SMUGGLED
    srv.rejected(post([f"Content-Length: {len(body)}", "Transfer-Encoding: chunked"], body), 400)
    srv.rejected(post(["Transfer-Encoding: chunked", "Content-Length: 5"], body), 400)


def test_valid_content_length_with_ows_is_served(srv):
    srv.reset()
    st, h, body = srv.server.request("POST", "/echo", body=b"abc")
    assert (st, body) == (200, b"abc")
    ex = srv.accepted(post(["Content-Length: \t3 \t", "Connection: close"], b"abc"))
    assert ex.data.endswith(b"\r\n\r\nabc")


# ---- Transfer-Encoding -----------------------------------------------------

@pytest.mark.parametrize("te", ["chunked, gzip", "gzip", "chunked, chunked", "chunked;q=1", "",
                                "identity", "foo", "chunked, foo", "foo, chunked, chunked"])
def test_te_not_ending_in_single_chunked_is_400(srv, te):
    # RFC 9112 §6.3: chunked not the final coding is a 400 (MUST), known coding or not
    srv.rejected(post([f"Transfer-Encoding: {te}"], b"3\r\nabc\r\n0\r\n\r\n" + SMUGGLED), 400)


@pytest.mark.parametrize("te", ["gzip, chunked", "identity, chunked", "deflate, chunked",
                                "foo, chunked"])
def test_unknown_or_unsupported_te_is_501(srv, te):
    # RFC 9112 §6.1: framed by a final chunked, but a coding we do not decode
    srv.rejected(post([f"Transfer-Encoding: {te}"], b"3\r\nabc\r\n0\r\n\r\n"), 501)


@pytest.mark.parametrize("te", ["chunked,", ", chunked", " , chunked ,, "])
def test_te_empty_list_elements_are_ignored(srv, te):
    # RFC 9110 5.6.1: a recipient MUST ignore empty list elements.
    ex = srv.accepted(post([f"Transfer-Encoding: {te}", "Connection: close"], b"3\r\nabc\r\n0\r\n\r\n"))
    (r,), rest = parse_responses(ex.data, ["POST"])
    assert r.body == b"abc" and rest == b""
    assert srv.app_calls() == ["POST /echo"]


@pytest.mark.parametrize("te", [",", "chunked,,chunked", "chunked, , gzip"])
def test_te_with_empty_elements_still_checked(srv, te):
    srv.rejected(post([f"Transfer-Encoding: {te}"], b"3\r\nabc\r\n0\r\n\r\n" + SMUGGLED), 400)


def test_te_split_over_two_lines(srv):
    srv.rejected(post(["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"], b"0\r\n\r\n"), 501)
    srv.rejected(post(["Transfer-Encoding: chunked", "Transfer-Encoding: gzip"], b"0\r\n\r\n"), 400)


def test_te_in_http10_is_400(srv):
    srv.rejected(post(["Transfer-Encoding: chunked"], b"0\r\n\r\n", version="HTTP/1.0"), 400)


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nabc\r\n0\r\n\r\n",  # not hex
        b"-1\r\nabc\r\n0\r\n\r\n",  # sign
        b"+3\r\nabc\r\n0\r\n\r\n",
        b" 3\r\nabc\r\n0\r\n\r\n",  # whitespace before the size
        b"0x3\r\nabc\r\n0\r\n\r\n",
        b"1" + b"0" * 16 + b"\r\nabc\r\n0\r\n\r\n",  # 2**64: overflow
        b"f" * 40 + b"\r\nabc\r\n0\r\n\r\n",  # too many digits
        b"3\r\nabcXY0\r\n\r\n",  # chunk data not followed by CRLF
        b"3\r\nabc0\r\n\r\n",
        b"3\nabc\r\n0\r\n\r\n",  # bare LF after the size
        b"3\r\nabc\n0\r\n\r\n",  # bare LF after the data
        b"3\rabc\r\n0\r\n\r\n",  # bare CR
        b"3\r\nabc\r\n0\r\n\n",  # bare LF at the end
        b"3\r\nabc\r\n0\r\nX-Trailer: a\nb\r\n\r\n",
    ],
    ids=lambda b: repr(b[:14]),
)
def test_bad_chunked_body_is_400(srv, body):
    srv.rejected(post(["Transfer-Encoding: chunked"], body + SMUGGLED), 400)


@pytest.mark.parametrize(
    "size_line",
    [b"3;", b"3; ", b"3;=x", b"3;a@b", b'3;a="b', b"3;a=", b"3;a b", b'3;a="b"c', b"3;x=\xff", b"3;a ", b"3;;a"],
    ids=repr,
)
def test_bad_chunk_extension_is_400(srv, size_line):
    # RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )
    srv.rejected(post(["Transfer-Encoding: chunked"], size_line + b"\r\nabc\r\n0\r\n\r\n" + SMUGGLED), 400)


def test_bad_chunk_extension_detected_when_split_across_reads(srv):
    head = post(["Transfer-Encoding: chunked"])
    srv.rejected(None, 400, pieces=[head, b"3;a", b'="unterminated', b"\r\nabc\r\n0\r\n\r\n"], delay=0.05)
    srv.rejected(None, 400, pieces=[head, b"3;", b"\r", b"\nabc\r\n0\r\n\r\n"], delay=0.05)


def test_valid_chunk_extensions_split_across_reads(srv):
    head = post(["Transfer-Encoding: chunked", "Connection: close"])
    pieces = [head, b"3;a", b"=b\r\nabc\r\n", b'3; a = "x', b';y"', b"\r\ndef\r\n3;a;", b"b=c\r\nghi\r\n0\r\n\r\n"]
    srv.reset()
    ex = exchange(srv.port, None, pieces=pieces, delay=0.05)
    (r,), rest = parse_responses(ex.data, ["POST"])
    assert r.status == 200 and r.body == b"abcdefghi" and rest == b""


def test_bad_chunk_size_detected_when_sent_in_pieces(srv):
    head = post(["Transfer-Encoding: chunked"])
    srv.rejected(None, 400, pieces=[head, b"4\r\nab", b"cd\r\n", b"z", b"z\r\n"], delay=0.05)


# ---- header syntax ---------------------------------------------------------

@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\r\n b\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\r\n\tb\r\n\r\n",  # obs-fold (tab)
        b"GET / HTTP/1.1\r\nHost : localhost\r\n\r\n",  # space before colon
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A\t: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length : 3\r\n\r\nabc",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n X-A: b\r\n\r\n",  # leading space
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\x00b\r\n\r\n",  # NUL
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\rb\r\n\r\n",  # bare CR
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\x1bb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\x7fb\r\n\r\n",  # DEL
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\x0bb\r\n\r\n",  # VT
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX\x00A: b\r\n\r\n",  # NUL in name
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX(A): b\r\n\r\n",  # not a token
        b"GET / HTTP/1.1\r\nHost: localhost\r\n: b\r\n\r\n",  # empty name
        b"GET / HTTP/1.1\r\nHost: localhost\r\nNoColon\r\n\r\n",
    ],
    ids=lambda b: repr(b[33:50]),
)
def test_bad_header_syntax_is_400(srv, raw):
    srv.rejected(raw, 400)


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\nHost: localhost\n\n",
        b"GET / HTTP/1.1\r\nHost: localhost\n\r\n",
        b"GET / HTTP/1.1\nHost: localhost\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\n",
        b"\nGET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: b\n\r\n",
    ],
    ids=repr,
)
def test_bare_lf_line_endings_are_400(srv, raw):
    srv.rejected(raw, 400)


@pytest.mark.parametrize(
    "line",
    [
        b"G@T / HTTP/1.1",
        b"GE(T / HTTP/1.1",
        b"GET\x00 / HTTP/1.1",
        b"G\xc3\xa9T / HTTP/1.1",
        b"[GET] / HTTP/1.1",
        b" GET / HTTP/1.1",
        b"GET  / HTTP/1.1",  # two spaces
        b"GET / HTTP/1.1 ",
        b"GET /a b HTTP/1.1",  # space in target
        b"GET / a HTTP/1.1",
        b"GET /\x00 HTTP/1.1",
        b"GET",
    ],
    ids=repr,
)
def test_malformed_request_line_is_400(srv, line):
    srv.rejected(line + b"\r\nHost: localhost\r\n\r\n", 400)


@pytest.mark.parametrize("version", [b"HTTP/1.2", b"HTTP/1.9"])
def test_higher_http1_minor_version_is_served_as_1_1(srv, version):
    # RFC 9110 section 2.5: process it as the highest minor version we implement,
    # and answer with that version; it keeps the connection open as 1.1 does.
    req = b"GET /environ HTTP/1.1\r\nHost: localhost\r\n\r\n".replace(b"HTTP/1.1", version)
    ex = exchange(srv.port, req + req.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    responses, rest = parse_responses(ex.data, ["GET", "GET"])
    assert [r.status for r in responses] == [200, 200] and rest == b"", ex
    assert all(r.version == "HTTP/1.1" for r in responses), ex
    assert json.loads(responses[0].body)["SERVER_PROTOCOL"] == "HTTP/1.1"


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/3.0", b"HTTP/9.9", b"HTTP/0.9"])
def test_unsupported_http_version_is_505(srv, version):
    srv.rejected(b"GET / " + version + b"\r\nHost: localhost\r\n\r\n", 505)


@pytest.mark.parametrize(
    "version", [b"HTTP/1.1x", b"http/1.1", b"HTTX/1.1", b"HTTP/1", b"HTTP/a.b", b"HTTP/1.10", b"HTTP/11"]
)
def test_garbage_http_version_is_400(srv, version):
    srv.rejected(b"GET / " + version + b"\r\nHost: localhost\r\n\r\n", 400)


def test_http11_without_host_is_400(srv):
    srv.rejected(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400)
    srv.rejected(b"GET / HTTP/1.1\r\nHost_: localhost\r\n\r\n", 400)


def test_two_host_headers_are_400(srv):
    srv.rejected(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400)
    srv.rejected(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400)
    srv.rejected(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400)


def test_two_content_types_are_400(srv):
    # RFC 9110 §5.3: Content-Type has one member; two would leave the body's
    # meaning (and a multipart boundary) to whichever one the app picks.
    srv.rejected(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\n"
                 b"content-type: application/json\r\nContent-Length: 2\r\n\r\n{}", 400)
    srv.rejected(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: a/b\r\nContent-Type: a/b\r\n"
                 b"Content-Length: 0\r\n\r\n", 400)
    # Logged as Gunicorn logs a request it refuses, with the client's address.
    srv.server.wait_log(r"WARNING.*Invalid request from ip=127\.0\.0\.1: .*duplicate Content-Type")


@pytest.mark.parametrize("host", [b"a b", b"a/b", b"evil.example/x?", b"user@host", b"a#b", b'"q"', b"a\\b",
                                  b"caf\xc3\xa9.example", b"a\tb",
                                  # structure: a port is digits, brackets only around an IP literal
                                  b"example.com:abc", b"example.com:80:80", b"[::1", b"a]b", b"[::1]x",
                                  b"[::1]:x", b"[not-ipv6]", b"::1", b":x"], ids=repr)
def test_invalid_host_value_is_400(srv, host):
    # RFC 9112 3.2: a Host that cannot be uri-host[:port] is a 400.
    srv.rejected(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", 400)


def test_valid_host_values_are_served(srv):
    for host in [b"example.com:8080", b"[::1]:80", b"[::1]", b"[2001:db8::1]:8443", b"under_score.example",
                 b"example.com:", b""]:
        ex = srv.accepted(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        assert ex.data.endswith(b"Hello, World!")


def test_http10_without_host_is_served(srv):
    ex = srv.accepted(b"GET / HTTP/1.0\r\n\r\n")
    # RFC 9110 §6.2: the server's own version, HTTP/1.1, to a 1.0 client too
    assert ex.closed and ex.data.startswith(b"HTTP/1.1 200")
    assert srv.app_calls() == ["GET /"]


# ---- request-target form (RFC 9112 3.2) -------------------------------------

@pytest.mark.parametrize(
    "line",
    [
        b"GET noslash HTTP/1.1",  # origin-form starts with '/'
        b"GET ?x HTTP/1.1",
        b"GET * HTTP/1.1",  # asterisk-form is for OPTIONS only
        b"OPTIONS *?x HTTP/1.1",  # ... and is exactly '*'
        b"GET h:80 HTTP/1.1",  # authority-form is for CONNECT only
        b"CONNECT / HTTP/1.1",  # ... and CONNECT takes nothing else
        b"CONNECT h HTTP/1.1",
        b"CONNECT http://h:443/ HTTP/1.1",
        b"GET http:x HTTP/1.1",  # absolute-form: http(s)://authority only
        b"GET http:///x HTTP/1.1",
        b"GET http://:80/x HTTP/1.1",
        b'GET http://ev"il<>/x HTTP/1.1',
        b"GET http://h:x/ HTTP/1.1",
        b"GET http://[::1/x HTTP/1.1",
        b"GET http://user@h/x HTTP/1.1",  # userinfo (RFC 9110 4.2.4)
        b"GET ftp://h/x HTTP/1.1",
        b"GET urn:x HTTP/1.1",
    ],
    ids=repr,
)
def test_bad_request_target_form_is_400(srv, line):
    srv.rejected(line + b"\r\nHost: localhost\r\n\r\n", 400)


@pytest.mark.parametrize(
    "line, call",
    [
        (b"OPTIONS * HTTP/1.1", "OPTIONS *"),
        (b"GET HTTP://localhost:80/?q HTTP/1.1", "GET /"),
        (b"GET https://[::1]/ HTTP/1.1", "GET /"),
        (b"GET /#frag HTTP/1.1", "GET /"),
        (b"GET http://h/#frag HTTP/1.1", "GET /"),
        # RFC 9110 4.2.3: an empty path is "/"
        (b"GET http://h HTTP/1.1", "GET /"),
        (b"GET http://h?q=1 HTTP/1.1", "GET /"),
        (b"CONNECT localhost:443 HTTP/1.1", "CONNECT "),
    ],
    ids=repr,
)
def test_valid_request_target_forms_reach_the_app(srv, line, call):
    srv.reset()
    ex = exchange(srv.port, line + b"\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert ex.status in (200, 404), ex
    assert srv.app_calls() == [call]


@pytest.mark.parametrize("method", [b"get", b"Get", b"GE", b"A" * 21, b"G#T"])
def test_unconventional_methods_are_400_as_gunicorn(srv, method):
    # Gunicorn's default rule (permit_unconventional_http_method off): 3 to
    # 20 characters, no lowercase letter, no '#'.
    srv.rejected(method + b" / HTTP/1.1\r\nHost: localhost\r\n\r\n", 400)


def test_unconventional_and_casefolded_methods_when_permitted(tmp_path):
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    for flags, want in ((["--permit-unconventional-http-method"], "get /"),
                        (["--permit-unconventional-http-method", "--casefold-http-method"], "GET /")):
        s = Server(["-b", "127.0.0.1:0", *flags, "basic:app"], APPS, {"CALLS_FILE": str(calls)})
        try:
            rec = Recorder(s, calls)
            rec.reset()
            ex = exchange(s.port, b"get / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert ex.status == 200, ex
            assert rec.app_calls() == [want]
        finally:
            s.close()


# ---- Expect (RFC 9110 10.1.1) -------------------------------------------------

@pytest.mark.parametrize("expect", ["something-else", "100-continue, foo", "100-continue;x=1"])
def test_unsupported_expectation_is_417(srv, expect):
    r = srv.rejected(post([f"Expect: {expect}", "Content-Length: 5"], b"hello"), 417)
    assert r.reason == "Expectation Failed"
    srv.rejected(b"GET / HTTP/1.0\r\nExpect: " + expect.encode() + b"\r\n\r\n", 417)


def test_expect_list_with_empty_elements_and_any_case(srv):
    s = connect(srv.port)
    try:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n"
                  b"Expect: , 100-CONTINUE,\r\nConnection: close\r\n\r\n")
        assert recv_until(s, b"\r\n\r\n", timeout=3) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"ok")
        ex = read_until_close(s)
    finally:
        s.close()
    (r,), _ = parse_responses(ex.data, ["POST"])
    assert r.status == 200 and r.body == b"ok"


def test_malformed_request_with_bad_expectation_is_400(srv):
    srv.rejected(post(["Expect: foo", "Content-Length: x"], b""), 400)


def environ_of(srv, raw_headers):
    raw = b"GET /environ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" + raw_headers + b"\r\n"
    ex = srv.accepted(raw)
    (r,), _ = parse_responses(ex.data, ["GET"])
    return json.loads(r.body)


def test_underscore_headers_are_dropped(srv):
    env = environ_of(srv, b"X_Forwarded_For: 6.6.6.6\r\nX_Thing: 1\r\nX-Real: r\r\n")
    assert "HTTP_X_FORWARDED_FOR" not in env
    assert "HTTP_X_THING" not in env
    assert env["HTTP_X_REAL"] == "r"
    # The dash form is the only one that counts, whatever the order.
    env = environ_of(srv, b"X_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 1.2.3.4\r\n")
    assert env["HTTP_X_FORWARDED_FOR"] == "1.2.3.4"
    env = environ_of(srv, b"X-Forwarded-For: 1.2.3.4\r\nX_Forwarded_For: 6.6.6.6\r\n")
    assert env["HTTP_X_FORWARDED_FOR"] == "1.2.3.4"
    # An underscore Content_Length frames nothing and is not CONTENT_LENGTH.
    env = environ_of(srv, b"Content_Length: 5\r\n")
    assert "CONTENT_LENGTH" not in env or env["CONTENT_LENGTH"] in ("", "0")


def test_underscore_header_cannot_spoof_scheme(srv):
    env = environ_of(srv, b"X_Forwarded_Proto: https\r\n")
    assert env["wsgi.url_scheme"] == "http"
    assert "HTTP_X_FORWARDED_PROTO" not in env


def test_values_trimmed_of_sp_and_htab_only(srv):
    env = environ_of(srv, b"X-A: \t  v a \t \r\nX-B:\xa0v\xa0\r\nX-C:\r\nX-D: \t \r\n")
    assert env["HTTP_X_A"] == "v a"
    # NBSP (obs-text) is not whitespace for HTTP: kept, as latin-1.
    assert env["HTTP_X_B"] == "\xa0v\xa0"
    assert env["HTTP_X_C"] == ""
    assert env["HTTP_X_D"] == ""


def test_repeated_headers_are_combined(srv):
    env = environ_of(srv, b"X-A: 1\r\nX-A: 2\r\nCookie: a=1\r\nCookie: b=2\r\n")
    assert env["HTTP_X_A"] == "1,2"
    assert env["HTTP_COOKIE"] == "a=1; b=2"


# ---- limits (Gunicorn's defaults) -------------------------------------------

def request_line(length):
    """A GET request line of exactly `length` bytes (without CRLF)."""
    fixed = len("GET / HTTP/1.1")
    return b"GET /" + b"a" * (length - fixed) + b" HTTP/1.1"


def test_request_line_limit(srv):
    line = request_line(4094)
    assert len(line) == 4094
    ex = srv.accepted(line + b"\r\nHost: localhost\r\nConnection: close\r\n\r\n", expect_status=404)
    assert srv.app_calls() == ["GET /" + "a" * (4094 - 14)]
    srv.rejected(request_line(4095) + b"\r\nHost: localhost\r\n\r\n", 414)
    # Never completed: still answered, not buffered forever.
    srv.rejected(request_line(9000)[:-9], 414)
    # Long by its method: 501 (RFC 9112 §3); by junk after the target: 400.
    srv.rejected(b"G" * 5000 + b" / HTTP/1.1\r\nHost: localhost\r\n\r\n", 501)
    srv.rejected(b"GET / HTTP/1.1" + b"x" * 5000 + b"\r\nHost: localhost\r\n\r\n", 400)


def fields_request(n):
    """A request with exactly `n` header fields, Host included."""
    lines = [b"GET / HTTP/1.1", b"Host: localhost", b"Connection: close"]
    lines += [b"X-F%d: v" % i for i in range(n - 2)]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def test_header_count_limit(srv):
    srv.accepted(fields_request(100))
    srv.rejected(fields_request(101), 431)


def field_line(length):
    line = b"X-Big: " + b"v" * (length - 7)
    assert len(line) == length
    return line


def test_header_field_size_limit(srv):
    head = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    # 8190 bytes with the line's CRLF, as Gunicorn counts them
    srv.accepted(head + field_line(8188) + b"\r\n\r\n")
    srv.rejected(head + field_line(8189) + b"\r\n\r\n", 431)
    srv.rejected(head + field_line(20000), 431)  # never finished


def test_custom_limit_request_line(start_server):
    s = start_server("basic:app", "--limit-request-line", "100", "--limit-request-fields", "5",
                     "--limit-request-field_size", "50")
    ok = exchange(s.port, request_line(100) + b"\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert ok.status == 404, ok
    bad = exchange(s.port, request_line(101) + b"\r\nHost: localhost\r\n\r\n")
    assert bad.status == 414 and bad.closed, bad
    five = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"
    assert exchange(s.port, five).status == 200
    six = five.replace(b"C: 3\r\n", b"C: 3\r\nD: 4\r\n")
    assert exchange(s.port, six).status == 431
    head = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
    # 50 bytes with the CRLF
    assert exchange(s.port, head + field_line(48) + b"\r\n\r\n").status == 200
    assert exchange(s.port, head + field_line(49) + b"\r\n\r\n").status == 431


# ---- HTTP/1.1 connection behaviour ------------------------------------------

def test_keepalive_many_requests_one_connection(srv):
    s = connect(srv.port)
    try:
        local = s.getsockname()
        for i in range(5):
            s.sendall(request_bytes("GET", f"/environ?{i}"))
            data = recv_until(s, b"}")  # the JSON body ends the response
            (r,), rest = parse_responses(data, ["GET"], eof=False)
            assert r.status == 200 and rest == b""
            env = json.loads(r.body)
            assert env["QUERY_STRING"] == str(i)
            assert env["REMOTE_PORT"] == str(local[1])  # same TCP connection
            assert r.header("connection") is None
    finally:
        s.close()


def test_http10_closes_by_default(srv):
    ex = exchange(srv.port, b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n")
    assert ex.closed
    (r,), rest = parse_responses(ex.data, ["GET"])
    assert r.version == "HTTP/1.1" and r.status == 200 and r.body == b"Hello, World!"
    assert rest == b""  # the second request was not answered


def test_http10_keepalive_on_request(srv):
    s = connect(srv.port)
    try:
        for _ in range(3):
            s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            data = recv_until(s, b"Hello, World!")
            (r,), rest = parse_responses(data, ["GET"], eof=False)
            assert r.status == 200 and rest == b""
            assert r.header("connection").lower() == "keep-alive"
            assert r.header("content-length") == "13"
        # A streamed body has no length in 1.0: close-delimited, then closed.
        s.sendall(b"GET /stream?2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        ex = read_until_close(s)
        assert ex.closed
        (r,), _ = parse_responses(ex.data, ["GET"], eof=True)
        assert r.body == b"chunk 0\nchunk 1\n"
        assert r.header("transfer-encoding") is None
    finally:
        s.close()


def test_connection_close_honoured(srv):
    ex = exchange(srv.port, request_bytes("GET", "/", [("Connection", "close")]) + request_bytes("GET", "/"))
    assert ex.closed
    (r,), rest = parse_responses(ex.data, ["GET"])
    assert r.status == 200 and r.header("connection").lower() == "close"
    assert rest == b""
    # Also as one element of a list.
    ex = exchange(srv.port, request_bytes("GET", "/", [("Connection", "foo, Close")]))
    assert ex.closed and ex.status == 200


def test_pipelining_answers_in_order(srv):
    reqs = (
        request_bytes("GET", "/environ?first")
        + request_bytes("POST", "/echo", [("Content-Length", "6")], b"second")
        + request_bytes("GET", "/stream?2")
        + request_bytes("HEAD", "/")
        + request_bytes("GET", "/environ?last", [("Connection", "close")])
    )
    ex = exchange(srv.port, reqs)
    assert ex.closed
    rs, rest = parse_responses(ex.data, ["GET", "POST", "GET", "HEAD", "GET"])
    assert rest == b""
    assert [r.status for r in rs] == [200] * 5
    assert json.loads(rs[0].body)["QUERY_STRING"] == "first"
    assert rs[1].body == b"second"
    # A short generator is gathered whole and gets a Content-Length.
    assert rs[2].body == b"chunk 0\nchunk 1\n"
    assert rs[3].body == b"" and rs[3].header("content-length") == "13"
    assert json.loads(rs[4].body)["QUERY_STRING"] == "last"


def test_pipelined_requests_in_one_send_byte_by_byte(srv):
    reqs = request_bytes("GET", "/") * 2 + request_bytes("GET", "/", [("Connection", "close")])
    ex = exchange(srv.port, None, pieces=[reqs[i:i + 7] for i in range(0, len(reqs), 7)], delay=0.002)
    rs, rest = parse_responses(ex.data, ["GET"] * 3)
    assert [r.body for r in rs] == [b"Hello, World!"] * 3 and rest == b""


@pytest.mark.parametrize("path", ["/", "/stream?3", "/big?1", "/write", "/file", "/environ"])
def test_head_never_has_a_body(srv, path):
    # A HEAD then a GET on one connection: if any byte of body followed the
    # HEAD answer, the second response would not start with HTTP/1.1.
    reqs = request_bytes("HEAD", path) + request_bytes("GET", "/", [("Connection", "close")])
    ex = exchange(srv.port, reqs)
    rs, rest = parse_responses(ex.data, ["HEAD", "GET"])
    assert rest == b"", ex
    head, get = rs
    assert head.status == 200
    assert get.status == 200 and get.body == b"Hello, World!"


def test_head_of_list_response_has_content_length(srv):
    reqs = request_bytes("HEAD", "/") + request_bytes("GET", "/", [("Connection", "close")])
    ex = exchange(srv.port, reqs)
    (head, get), _ = parse_responses(ex.data, ["HEAD", "GET"])
    assert head.header("content-length") == "13"
    assert head.header("content-length") == get.header("content-length")


@pytest.mark.parametrize("code", [204, 304])
def test_204_304_have_no_body(srv, code):
    reqs = request_bytes("GET", f"/status?{code}") + request_bytes("GET", "/", [("Connection", "close")])
    ex = exchange(srv.port, reqs)
    data = ex.data
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % code)
    assert b"transfer-encoding" not in head.lower()
    # Nothing between the end of the head and the next response.
    assert rest.startswith(b"HTTP/1.1 200"), data
    if code == 204:
        assert b"content-length" not in head.lower()


def test_chunked_request_body(srv):
    body = b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: t\r\n\r\n"
    raw = post(["Transfer-Encoding: chunked", "Connection: close"], body)
    ex = srv.accepted(raw)
    (r,), _ = parse_responses(ex.data, ["POST"])
    assert r.body == b"hello world!"
    assert r.header("x-content-length") == "12"
    assert srv.app_calls() == ["POST /echo"]


def test_chunked_request_body_in_small_pieces(srv):
    chunks = [bytes([65 + i % 26]) * (i * 7 % 50 + 1) for i in range(60)]
    payload = b"".join(chunks)
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    raw = post(["Transfer-Encoding: chunked"], body) + request_bytes("GET", "/", [("Connection", "close")])
    pieces = [raw[i:i + 3] for i in range(0, len(raw), 3)]
    s = connect(srv.port)
    try:
        for p in pieces[:-30]:
            s.sendall(p)
        time.sleep(0.05)
        for p in pieces[-30:]:
            s.sendall(p)
            time.sleep(0.001)
        ex = read_until_close(s)
    finally:
        s.close()
    rs, rest = parse_responses(ex.data, ["POST", "GET"])
    assert rs[0].body == payload and rs[1].body == b"Hello, World!" and rest == b""


def test_chunked_request_body_pipelined_with_next_request(srv):
    raw = post(["Transfer-Encoding: chunked"], b"3\r\nabc\r\n0\r\n\r\n") + post(
        ["Content-Length: 3", "Connection: close"], b"xyz")
    ex = exchange(srv.port, raw)
    rs, rest = parse_responses(ex.data, ["POST", "POST"])
    assert [r.body for r in rs] == [b"abc", b"xyz"] and rest == b""


def test_chunked_response_when_no_content_length(srv):
    # 1 MiB from a generator, no Content-Length: more than the server gathers
    # before sending, so HTTP/1.1 gets it chunked.
    ex = exchange(srv.port, request_bytes("GET", "/big?1", [("Connection", "close")]))
    assert ex.closed
    head, _, body = ex.data.partition(b"\r\n\r\n")
    assert b"\r\nTransfer-Encoding: chunked\r\n" in head + b"\r\n"
    assert b"content-length" not in head.lower()
    payload, n = dechunk(body)
    assert payload == b"x" * (1 << 20)
    assert n == len(body)  # terminated exactly, nothing after


def test_generator_without_length_is_chunked(srv):
    # PEP 3333: each block goes out before the next is asked for, so a
    # generator's total length is never known up front: chunked (as Gunicorn).
    ex = exchange(srv.port, request_bytes("GET", "/stream?5", [("Connection", "close")]))
    (r,), rest = parse_responses(ex.data, ["GET"])
    assert r.body == b"".join(f"chunk {i}\n".encode() for i in range(5)) and rest == b""
    assert r.chunked and r.header("content-length") is None


def test_streamed_response_with_keepalive(srv):
    # The chunked terminator lets the connection carry a next request.
    ex = exchange(srv.port, request_bytes("GET", "/big?2") + request_bytes("GET", "/", [("Connection", "close")]))
    rs, rest = parse_responses(ex.data, ["GET", "GET"])
    assert rs[0].chunked and rs[0].body == b"x" * (2 << 20)
    assert rs[1].body == b"Hello, World!" and rest == b""


def test_expect_100_continue(srv):
    s = connect(srv.port)
    try:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        got = recv_until(s, b"\r\n\r\n", timeout=3)
        assert got == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert srv.calls.read_text() == ""  # the app waits for the body
        s.sendall(b"hello")
        data = recv_until(s, b"hello")
        (r,), _ = parse_responses(data, ["POST"], eof=False)
        assert r.status == 200 and r.body == b"hello"
        # Chunked, too.
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                  b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        got = recv_until(s, b"\r\n\r\n", timeout=3)
        assert got == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"2\r\nok\r\n0\r\n\r\n")
        ex = read_until_close(s)
        (r,), _ = parse_responses(ex.data, ["POST"])
        assert r.body == b"ok"
    finally:
        s.close()


def test_expect_100_continue_with_http_client(srv):
    # http.client does not wait for 100; the interim response must still be
    # well-formed and followed by the real one.
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    c.request("POST", "/echo", body=b"data", headers={"Expect": "100-continue"})
    r = c.getresponse()
    assert r.status == 200 and r.read() == b"data"
    c.close()


def test_date_and_server_headers(srv):
    for path in ["/", "/stream", "/status?204", "/nope"]:
        st, h, _ = srv.server.request("GET", path)
        assert h["server"].startswith("ferricorn")
        assert time.strptime(h["date"], "%a, %d %b %Y %H:%M:%S GMT")
    r = srv.rejected(b"GET / HTTP/1.1\r\n\r\n", 400)
    assert r.header("server") and r.header("date").endswith("GMT")


def test_unknown_method_token_reaches_app(srv):
    ex = srv.accepted(b"PURGE-X /environ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    (r,), _ = parse_responses(ex.data, ["GET"])
    assert json.loads(r.body)["REQUEST_METHOD"] == "PURGE-X"


def test_leading_empty_line_is_tolerated(srv):
    ex = srv.accepted(b"\r\nGET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert ex.data.endswith(b"Hello, World!")


def test_a_trickled_request_head_gets_408_after_the_timeout(start_server):
    # A byte every 0.3 s keeps the connection from ever being idle; the head
    # as a whole gets --timeout (2 s here), then RFC 9110's 408 and a close.
    s = start_server("basic:app", "-t", "2")
    sock = connect(s.port, timeout=10)
    head = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 40
    t0 = time.monotonic()
    got = b""
    try:
        for b in head:
            try:
                sock.sendall(bytes([b]))
            except OSError:
                break
            time.sleep(0.3)
            if time.monotonic() - t0 > 5:
                break
        got = read_until_close(sock, timeout=5).data
    finally:
        sock.close()
    took = time.monotonic() - t0
    assert got.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), got
    assert 2 <= took < 5, took
    assert s.request("GET", "/")[0] == 200


def test_keepalive_timeout_closes_idle_connection(start_server):
    s = start_server("basic:app", "--keep-alive", "1")
    sock = connect(s.port, timeout=10)
    try:
        sock.sendall(request_bytes("GET", "/"))
        recv_until(sock, b"Hello, World!")
        t0 = time.monotonic()
        ex = read_until_close(sock, timeout=8)
        idle = time.monotonic() - t0
    finally:
        sock.close()
    assert ex.closed and ex.data == b"", ex
    assert 0.7 <= idle <= 3.5, idle
    # An active connection is not cut: requests every 0.5 s for 2.5 s.
    sock = connect(s.port, timeout=10)
    try:
        for _ in range(5):
            sock.sendall(request_bytes("GET", "/"))
            recv_until(sock, b"Hello, World!")
            time.sleep(0.5)
    finally:
        sock.close()


def test_keepalive_timeout_closes_many_idle_connections_and_keeps_serving(start_server):
    """300 keep-alive connections that go idle together are all closed (the sweep closes
    at most 64 per pass and goes on after serving), while a fresh connection is served."""
    s = start_server("basic:app", "-w", "1", "--keep-alive", "1")
    socks = []
    try:
        for _ in range(300):
            sock = connect(s.port, timeout=10)
            sock.sendall(request_bytes("GET", "/"))
            recv_until(sock, b"Hello, World!")
            socks.append(sock)
        closed = 0
        for sock in socks:
            ex = read_until_close(sock, timeout=10)
            closed += ex.closed and ex.data == b""
        assert closed == 300
        st, _, body = s.request("GET", "/")
        assert (st, body) == (200, b"Hello, World!")
    finally:
        for sock in socks:
            sock.close()


def test_keepalive_zero_closes_after_each_response(start_server):
    s = start_server("basic:app", "--keep-alive", "0")
    ex = exchange(s.port, request_bytes("GET", "/") + request_bytes("GET", "/"))
    assert ex.closed
    (r,), rest = parse_responses(ex.data, ["GET"])
    assert r.header("connection").lower() == "close" and rest == b""


def test_client_half_close_still_answered(srv):
    # The request is answered, then the connection closes at once (not at
    # the keep-alive timeout): the client said it will send nothing more.
    s = connect(srv.port)
    try:
        s.sendall(request_bytes("GET", "/") * 2)
        s.shutdown(socket.SHUT_WR)
        t0 = time.monotonic()
        ex = read_until_close(s)
        took = time.monotonic() - t0
    finally:
        s.close()
    assert ex.closed and took < 1.0, (took, ex)
    rs, rest = parse_responses(ex.data, ["GET", "GET"])
    assert [r.body for r in rs] == [b"Hello, World!"] * 2 and rest == b""


# ---- concurrency ------------------------------------------------------------

def test_concurrent_keepalive_clients(start_server):
    """20 clients x 30 keep-alive requests with distinct bodies, against 2
    workers x 2 threads: every answer belongs to its own request."""
    import concurrent.futures
    import os as _os

    s = start_server("basic:app", "-w", "2", "--threads", "2")

    def client(n):
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=20)
        try:
            for i in range(30):
                body = _os.urandom(1 + (n * 131 + i * 977) % 70000)
                if i % 3 == 2:
                    c.request("POST", "/echo", body=iter([body[:10], body[10:]]), encode_chunked=True)
                else:
                    c.request("POST", "/echo", body=body)
                r = c.getresponse()
                got = r.read()
                if r.status != 200 or got != body:
                    return f"client {n} request {i}: {r.status}, {len(got)} vs {len(body)} bytes"
            return None
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        errors = [e for e in ex.map(client, range(20)) if e]
    assert errors == []


def test_slow_uploader_does_not_block_others(start_server):
    # One worker, one thread: a client trickling its body must not stop the
    # worker from serving someone else (the body is read in Rust first).
    s = start_server("basic:app", "-w", "1", "--threads", "1")
    slow = connect(s.port, timeout=10)
    try:
        slow.sendall(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab")
        t0 = time.monotonic()
        for _ in range(5):
            assert s.request("GET", "/", timeout=2)[2] == b"Hello, World!"
        assert time.monotonic() - t0 < 2
        slow.sendall(b"cdefghij")
        data = recv_until(slow, b"abcdefghij")
        assert data.startswith(b"HTTP/1.1 200")
    finally:
        slow.close()


def test_chunked_body_one_byte_per_send(srv):
    body = b"4\r\nWiki\r\n5;a=b\r\npedia\r\n0\r\n\r\n"
    raw = post(["Transfer-Encoding: chunked", "Connection: close"], body)
    s = connect(srv.port)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head_len = len(raw) - len(body)
        s.sendall(raw[:head_len])
        for b in body:
            s.sendall(bytes([b]))
            time.sleep(0.002)
        ex = read_until_close(s)
    finally:
        s.close()
    (r,), _ = parse_responses(ex.data, ["POST"])
    assert r.body == b"Wikipedia"


def test_expect_100_continue_ignored_for_http10(srv):
    s = connect(srv.port)
    try:
        s.sendall(b"POST /echo HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        s.settimeout(0.5)
        try:
            early = s.recv(100)
        except socket.timeout:
            early = b""
        assert early == b""
        s.sendall(b"ok")
        ex = read_until_close(s)
    finally:
        s.close()
    (r,), _ = parse_responses(ex.data, ["POST"])
    assert r.status == 200 and r.body == b"ok"


def test_mutated_requests_never_break_the_worker(srv):
    """A fixed-seed fuzz: 400 mutations of valid requests. Every answer is a
    well-formed response (or none), and the worker never dies."""
    import random

    rnd = random.Random(20261125)
    seeds = [
        request_bytes("GET", "/environ?a=1", [("X-A", "b"), ("Connection", "close")]),
        post(["Content-Length: 5", "Connection: close"], b"hello"),
        post(["Transfer-Encoding: chunked", "Connection: close"], b"5\r\nhello\r\n0\r\n\r\n"),
        b"GET / HTTP/1.0\r\n\r\n",
    ]
    specials = [b"\r", b"\n", b"\x00", b" ", b"\t", b":", b",", b"0", b"f", b"\xff", b"\r\n", b"-", b"_"]
    pids = srv.server.worker_pids()
    for i in range(400):
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 4)):
            pos = rnd.randrange(len(data))
            op = rnd.random()
            if op < 0.4:
                data[pos:pos + 1] = rnd.choice(specials)
            elif op < 0.7:
                del data[pos:pos + rnd.randint(1, 3)]
            else:
                data[pos:pos] = rnd.choice(specials) * rnd.randint(1, 3)
        ex = exchange(srv.port, bytes(data), timeout=3, shut=True)
        assert ex.closed, (bytes(data), ex)
        if ex.data:
            assert re.match(rb"HTTP/1\.[01] [1-5]\d\d ", ex.data), (bytes(data), ex)
            assert b"\r\n\r\n" in ex.data, (bytes(data), ex)
            status = ex.status
            if status >= 400:
                assert ex.closed, (bytes(data), ex)
    assert srv.server.worker_pids() == pids
    assert "panicked" not in srv.server.log()
    assert srv.server.request("GET", "/")[0] == 200


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: h\r",  # incomplete head
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",  # complete request, then FIN
    b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc",  # short body
], ids=["partial-head", "complete", "short-body"])
def test_fin_arriving_with_the_data_closes_promptly(srv, data):
    # Data and FIN in one segment (TCP_CORK, then shutdown), after the
    # server has already seen the socket empty: one epoll edge brings both.
    # The server must notice the EOF now, not at a timeout.
    for _ in range(3):
        s = connect(srv.port)
        try:
            recv_timeout = s.gettimeout()
            time.sleep(0.1)  # accepted, read, EAGAIN
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            t0 = time.monotonic()
            ex = read_until_close(s, timeout=4)
            took = time.monotonic() - t0
        finally:
            s.close()
        assert ex.closed, ex
        assert took < 1.0, took
        if data.endswith(b"\r\n\r\n"):
            assert ex.data.endswith(b"Hello, World!")
        else:
            assert ex.data == b""


def test_valid_chunked_oddities_accepted(srv):
    body = (b"0005\r\nhello\r\n"  # leading zeros
            b"A\r\n0123456789\r\n"  # upper-case hex
            b"1 ;name=\"quoted; value\"\r\n!\r\n"  # BWS + quoted extension
            b"0\r\nTrailer-A: 1\r\nTrailer-B: 2\r\n\r\n")
    ex = srv.accepted(post(["Transfer-Encoding: chunked", "Connection: close"], body))
    (r,), _ = parse_responses(ex.data, ["POST"])
    assert r.body == b"hello0123456789!"


def test_one_hundred_pipelined_requests(srv):
    n = 100
    reqs = b"".join(request_bytes("GET", f"/environ?{i}") for i in range(n - 1))
    reqs += request_bytes("GET", f"/environ?{n - 1}", [("Connection", "close")])
    ex = exchange(srv.port, reqs, timeout=10)
    rs, rest = parse_responses(ex.data, ["GET"] * n)
    assert rest == b"" and len(rs) == n
    assert [json.loads(r.body)["QUERY_STRING"] for r in rs] == [str(i) for i in range(n)]


def test_error_answer_survives_a_client_still_sending(srv):
    # The server rejects the head while the client is still pushing a big
    # body: it must drain (linger) rather than close with unread data, or
    # the kernel's RST would destroy the 431 before the client reads it.
    import threading

    s = connect(srv.port, timeout=10)
    head = b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 8000000\r\n" + field_line(9000) + b"\r\n\r\n"
    errors = []

    def pump():
        try:
            s.sendall(head)
            for _ in range(40):
                s.sendall(b"z" * 200_000)
        except OSError as e:  # the server may close once it has drained enough
            errors.append(e)

    t = threading.Thread(target=pump)
    t.start()
    try:
        data = recv_until(s, b"\r\n\r\n", timeout=10)
        t.join(10)
    finally:
        s.close()
    assert data.startswith(b"HTTP/1.1 431 "), data[:200]


# ---- curl ------------------------------------------------------------------

def curl(*args, input=None, timeout=20):
    import shutil
    import subprocess

    exe = shutil.which("curl")
    if exe is None:
        pytest.fail("curl is not installed (tests/run installs it)")
    return subprocess.run([exe, "-sS", *args], input=input, capture_output=True, timeout=timeout)


def test_curl_clients(srv):
    base = f"http://127.0.0.1:{srv.port}"
    # A chunked upload from stdin, with Expect: 100-continue.
    body = b"".join(b"%06d\n" % i for i in range(300_000))  # 2.1 MB
    p = curl("-v", "-T", "-", "-H", "Expect: 100-continue", f"{base}/echo", input=body)
    assert p.returncode == 0, p.stderr
    assert p.stdout == body
    err = p.stderr.decode()
    assert "Transfer-Encoding: chunked" in err and "HTTP/1.1 100 Continue" in err
    # HEAD, HTTP/1.0, and keep-alive reuse across two URLs.
    p = curl("-I", f"{base}/")
    assert p.stdout.startswith(b"HTTP/1.1 200") and b"Content-Length: 13" in p.stdout
    p = curl("--http1.0", f"{base}/big?1")
    assert p.stdout == b"x" * (1 << 20)
    p = curl("-v", f"{base}/", f"{base}/stream?2")
    assert p.stdout == b"Hello, World!chunk 0\nchunk 1\n"
    assert "Re-using existing connection" in p.stderr.decode() or "Reusing existing" in p.stderr.decode()
    # --data-binary with a Content-Length.
    p = curl("--data-binary", "@-", f"{base}/echo", input=b"\x00\x01binary\xff")
    assert p.stdout == b"\x00\x01binary\xff"


def test_limit_request_body(start_server):
    # --limit-request-body: a declared length over it is refused from the
    # head (413, no 100 Continue, nothing read); a chunked body when it
    # goes over; smaller bodies pass.
    s = start_server("wsgicases:app", "--limit-request-body", "1000")
    c = connect(s.port)
    try:
        c.sendall(post(["Content-Length: 5000000", "Expect: 100-continue"], path="/read"))
        head = recv_until(c, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413") and b"100 Continue" not in head, head
    finally:
        c.close()
    chunks = b"".join(b"258\r\n" + b"x" * 600 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    ex = exchange(s.port, post(["Transfer-Encoding: chunked"], chunks, path="/read"))
    assert ex.status == 413 and ex.closed, ex
    ex = exchange(s.port, post(["Content-Length: 1000", "Connection: close"], b"y" * 1000, path="/read"))
    assert ex.status == 200, ex


# ---- error answers to HEAD, CONNECT's 2xx, the staged close ------------------

@pytest.mark.parametrize(
    "data, status",
    [
        (b"HEAD / HTTP/1.1\r\nHost: x\r\nExpect: foo\r\n\r\n", 417),
        (b"HEAD / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"\r\nHEAD / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"HEAD / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ],
    ids=repr,
)
def test_error_answers_to_head_have_no_content(srv, data, status):
    """RFC 9110 §9.3.2: the server MUST NOT send content in a response to HEAD, and the
    response ends with its head (RFC 9112 §6.3): an error answer too."""
    ex = exchange(srv.port, data)
    assert ex.closed and ex.status == status, ex
    head, _, after = ex.data.partition(b"\r\n\r\n")
    assert after == b"", ex
    assert b"\r\nContent-Length: " in head, "the length GET's answer would have"


def test_a_2xx_to_connect_has_no_length_and_no_body(srv):
    """RFC 9110 §9.3.6: no Content-Length or Transfer-Encoding in a 2xx to CONNECT, and
    what follows its head would be tunnel data (RFC 9112 §6.3): the server has no tunnel
    to offer, so the connection closes after the head; a request sent behind it is not
    answered as if on plain HTTP."""
    srv.reset()
    ex = exchange(srv.port, b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n"
                  + SMUGGLED)
    assert ex.closed and ex.status == 200, ex
    head, _, after = ex.data.partition(b"\r\n\r\n")
    assert after == b"", ex
    assert b"content-length" not in head.lower() and b"transfer-encoding" not in head.lower()
    assert srv.app_calls() == ["CONNECT "]


@pytest.mark.parametrize("close", [b"Connection: close\r\n", b""])
def test_closing_after_a_response_does_not_reset_unread_input(srv, close):
    """RFC 9112 §9.6: a server that closes while the client still sends (a pipelined
    request behind a `Connection: close` one, or HTTP/1.0) half-closes and reads on, so
    no RST destroys the response the client has not read yet."""
    version = b"HTTP/1.1" if close else b"HTTP/1.0"
    s = connect(srv.port, 10)
    try:
        s.sendall(b"GET /big?4 " + version + b"\r\nHost: x\r\n" + close + b"\r\n")
        time.sleep(0.3)  # the response is still going out: 4 MiB to a client not reading
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        ex = read_until_close(s, 10)
    finally:
        s.close()
    assert ex.closed, "not closed within 10 s"
    (r,), rest = parse_responses(ex.data, ["GET"], eof=True)
    assert r.status == 200 and len(r.body) == 4 << 20 and rest == b""
