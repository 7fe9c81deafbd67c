"""Big request and response bodies: they pass through intact and the
worker's memory stays bounded (request bodies beyond --body-buffer-size are
spooled to a temp file; responses stream from the iterable or sendfile)."""
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


def test_file_wrapper_integrity_and_sendfile(start_server, tmp_path):
    data = os.urandom(30 * MB + 12345)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    s = start_server("basic:app", "-w", "1", env={"FILE_TO_SEND": str(path)})
    pid = one_worker(s)
    st, h, body = s.request("GET", "/file", timeout=60)
    assert st == 200
    assert h["content-length"] == str(len(data))
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
    # HTTP/1.0 and keep-alive after a file body.
    c = s.conn(timeout=60)
    for _ in range(2):
        c.request("GET", "/file")
        r = c.getresponse()
        assert r.read() == data
    c.close()

    strace = shutil.which("strace")
    if not strace:
        pytest.skip("strace not installed: integrity checked, sendfile not")
    out = tmp_path / "strace.txt"
    tr = subprocess.Popen([strace, "-f", "-qq", "-e", "trace=sendfile", "-o", str(out), "-p", str(pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)  # let strace attach
        if tr.poll() is not None:
            pytest.skip(f"strace cannot attach here: {tr.stderr.read().decode()[:200]}")
        st, _, body = s.request("GET", "/file", timeout=60)
        assert st == 200 and body == data
        time.sleep(0.2)
    finally:
        tr.send_signal(signal.SIGINT)
        try:
            tr.wait(timeout=10)
        except subprocess.TimeoutExpired:
            tr.kill()
            tr.wait()
    trace = out.read_text()
    sent = 0
    for line in trace.splitlines():
        if "sendfile(" in line and "=" in line:
            rv = line.rsplit("=", 1)[1].split()[0]
            if rv.lstrip("-").isdigit() and int(rv) > 0:
                sent += int(rv)
    assert sent == len(data), trace[-2000:]


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
