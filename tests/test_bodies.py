"""Big request and response bodies: they pass through intact and the
worker's memory stays bounded (request bodies beyond --body-buffer-size are
spooled to a temp file; responses stream from the iterable, or from a file
by sendfile or, to a loopback TCP peer, by copy)."""
import hashlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import APPS
from wire import connect, exchange, request_bytes

MB = 1 << 20
BIG = 200  # MiB
MAX_GROWTH_KB = 64 * 1024


def vm_hwm_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def one_worker(s):
    pids = s.worker_pids()
    assert len(pids) == 1, pids
    return pids[0]


def blocks(n_mib, h):
    """n_mib distinct 1 MiB blocks (so reordering or loss changes the hash)."""
    base = os.urandom(MB - 16)
    for i in range(n_mib):
        b = b"%016d" % i + base
        h.update(b)
        yield b


@pytest.fixture
def upload_server(start_server):
    s = start_server("wsgicases:app", "-w", "1", "--timeout", "120")
    pid = one_worker(s)
    # Warm up the code paths (spooling included) before the baseline.
    body = os.urandom(3 * MB)
    st, _, data = s.request("POST", "/sha256", body=body)
    assert data.decode() == f"{len(body)} {hashlib.sha256(body).hexdigest()}"
    return s, pid, vm_hwm_kb(pid)


def test_spool_directory_not_writable_keeps_the_body_in_memory(start_server, tmp_path):
    # A read-only root in a container: $TMPDIR cannot take the spool file.
    # The body is kept in memory (a memfd) instead of failing with a 500,
    # and the log says so once, naming the directory.
    ro = tmp_path / "no-such-dir"
    s = start_server("wsgicases:app", "-w", "1", "--body-buffer-size", "65536",
                     env={"TMPDIR": str(ro)})
    for _ in range(2):
        body = os.urandom(3 * MB)
        st, _, data = s.request("POST", "/sha256", body=body)
        assert st == 200 and data.decode() == f"{len(body)} {hashlib.sha256(body).hexdigest()}"
    log = s.log()
    assert log.count(f"cannot spool request bodies over --body-buffer-size to {ro}") == 1, log


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_200mb_upload_bounded_memory(upload_server, framing):
    s, pid, before = upload_server
    h = hashlib.sha256()
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=120)
    if framing == "chunked":
        c.request("POST", "/sha256", body=blocks(BIG, h), encode_chunked=True)
    else:
        c.request("POST", "/sha256", body=blocks(BIG, h), headers={"Content-Length": str(BIG * MB)})
    r = c.getresponse()
    got = r.read().decode()
    c.close()
    assert r.status == 200
    assert got == f"{BIG * MB} {h.hexdigest()}"
    growth = vm_hwm_kb(pid) - before
    assert growth < MAX_GROWTH_KB, f"worker peak RSS grew by {growth} KiB for a {BIG} MiB upload"


def test_200mb_upload_to_upload_size(start_server):
    # basic.py's /upload-size reads 64 KiB at a time.
    s = start_server("basic:app", "-w", "1", "--timeout", "120")
    pid = one_worker(s)
    assert s.request("POST", "/upload-size", body=b"x" * (2 * MB))[2] == str(2 * MB).encode()
    before = vm_hwm_kb(pid)
    st, _, body = s.request("POST", "/upload-size", body=blocks(BIG, hashlib.sha256()),
                            headers={"Content-Length": str(BIG * MB)}, timeout=120)
    assert (st, body) == (200, str(BIG * MB).encode())
    assert vm_hwm_kb(pid) - before < MAX_GROWTH_KB


def test_200mb_download_bounded_memory(start_server):
    s = start_server("basic:app", "-w", "1", "--timeout", "120")
    pid = one_worker(s)
    assert len(s.request("GET", "/big?4")[2]) == 4 * MB
    before = vm_hwm_kb(pid)
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=120)
    c.request("GET", f"/big?{BIG}")
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Transfer-Encoding") == "chunked"
    total = 0
    while True:
        chunk = r.read(4 * MB)
        if not chunk:
            break
        assert chunk.count(b"x") == len(chunk)
        total += len(chunk)
    c.close()
    assert total == BIG * MB
    growth = vm_hwm_kb(pid) - before
    assert growth < MAX_GROWTH_KB, f"worker peak RSS grew by {growth} KiB for a {BIG} MiB download"


def test_slow_reader_download_bounded_memory(start_server):
    # A client that stops reading: the worker must not buffer the rest.
    s = start_server("basic:app", "-w", "1", "--timeout", "120")
    pid = one_worker(s)
    assert len(s.request("GET", "/big?4")[2]) == 4 * MB
    before = vm_hwm_kb(pid)
    sock = connect(s.port, timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        sock.sendall(request_bytes("GET", f"/big?{BIG}"))
        sock.recv(1000)
        time.sleep(1.0)  # the worker fills the socket and must then wait
        growth = vm_hwm_kb(pid) - before
        assert growth < 16 * 1024, growth
        # and it still serves others meanwhile
        assert s.request("GET", "/")[2] == b"Hello, World!"
    finally:
        sock.close()


class UnixConn(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path))


def traced_bytes(pid, tmp_path, calls, fetch):
    """Run fetch() while strace watches the worker; bytes returned by each
    of `calls` (syscall names) in the trace."""
    strace = shutil.which("strace")
    if not strace:
        pytest.skip("strace not installed: integrity checked, syscalls not")
    out = tmp_path / ("strace-%s.txt" % "-".join(calls))
    tr = subprocess.Popen([strace, "-f", "-qq", "-e", "trace=" + ",".join(calls), "-o", str(out),
                           "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)  # let strace attach
        if tr.poll() is not None:
            pytest.skip(f"strace cannot attach here: {tr.stderr.read().decode()[:200]}")
        fetch()
        time.sleep(0.2)
    finally:
        tr.send_signal(signal.SIGINT)
        try:
            tr.wait(timeout=10)
        except subprocess.TimeoutExpired:
            tr.kill()
            tr.wait()
    trace = out.read_text()
    total = dict.fromkeys(calls, 0)
    for line in trace.splitlines():
        for call in calls:
            if call + "(" in line and "=" in line:
                rv = line.rsplit("=", 1)[1].split()[0]
                if rv.lstrip("-").isdigit() and int(rv) > 0:
                    total[call] += int(rv)
    return total, trace


def test_file_wrapper_integrity_sendfile_and_loopback_copy(start_server, tmp_path):
    data = os.urandom(30 * MB + 12345)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    sock_path = tmp_path / "s.sock"
    s = start_server("basic:app", "-w", "1", "-b", f"unix:{sock_path}",
                     env={"FILE_TO_SEND": str(path)})
    pid = one_worker(s)
    digest = hashlib.sha256(data).hexdigest()
    for conn in (lambda: s.conn(timeout=60), lambda: UnixConn(sock_path, 60)):
        c = conn()
        # keep-alive after a file body, twice on one connection
        for _ in range(2):
            c.request("GET", "/file")
            r = c.getresponse()
            assert r.status == 200
            assert r.getheader("content-length") == str(len(data))
            assert hashlib.sha256(r.read()).hexdigest() == digest
        c.request("GET", "/")
        assert c.getresponse().read() == b"Hello, World!"
        c.close()

    # A unix-socket peer (the local proxy) gets the file by sendfile(2).
    def over_unix():
        c = UnixConn(sock_path, 60)
        c.request("GET", "/file")
        assert c.getresponse().read() == data
        c.close()

    total, trace = traced_bytes(pid, tmp_path, ["sendfile"], over_unix)
    assert total["sendfile"] == len(data), trace[-2000:]

    # A TCP peer on loopback gets it by pread + send (no NIC to hand pages
    # to; the copy is cheaper for the receiver: docs/TUNING.md).
    def over_loopback():
        st, _, body = s.request("GET", "/file", timeout=60)
        assert st == 200 and body == data

    total, trace = traced_bytes(pid, tmp_path, ["sendfile", "pread64"], over_loopback)
    assert total["sendfile"] == 0, trace[-2000:]
    assert total["pread64"] == len(data), trace[-2000:]


def test_truncated_upload_never_reaches_app(start_server, tmp_path):
    calls = tmp_path / "calls"
    s = start_server("basic:app", env={"CALLS_FILE": str(calls)})
    sock = connect(s.port)
    try:
        sock.sendall(b"POST /upload-size HTTP/1.1\r\nHost: h\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 500000)
        time.sleep(0.2)
    finally:
        sock.close()
    # Chunked, cut before the last chunk.
    ex = exchange(s.port, b"POST /upload-size HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"5\r\nhello\r\n", timeout=0.5)
    assert ex.data == b"" and not ex.closed
    assert s.request("GET", "/marker")[0] == 404
    assert calls.read_text().splitlines() == ["GET /marker"]
