"""systemd protocols with real systemd tools and test-bound sockets:
socket activation (systemd-socket-activate), sd_notify messages in order,
the watchdog cadence, and native journald entries."""
import contextlib
import http.client
import os
import re
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import APPS, BIN, Server


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def get(port=None, path="/", unix=None, timeout=15):
    if unix:
        class UConn(http.client.HTTPConnection):
            def connect(self):
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(unix)
        c = UConn("localhost", timeout=timeout)
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


@pytest.fixture
def activate():
    procs = []

    def run(args, env=None):
        p = subprocess.Popen(args, cwd=APPS, env=dict(os.environ, **(env or {})),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    yield run
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def test_socket_activation_tcp_and_unix_by_name(activate, tmp_path):
    port = free_port()
    sock_path = str(tmp_path / "app.sock")
    p = activate([
        "systemd-socket-activate", "-l", f"127.0.0.1:{port}", "-l", sock_path,
        "--fdname=web:admin", BIN, "-w", "2", "basic:app",
    ])
    time.sleep(0.3)
    # The first connection makes systemd-socket-activate start ferricorn,
    # which serves the queued connection on the passed socket.
    assert get(port) == (200, b"Hello, World!")
    assert get(unix=sock_path) == (200, b"Hello, World!")
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=15)[0].decode()
    assert f"Listening at: http://127.0.0.1:{port}" in out
    assert f"unix:{sock_path}" in out


def test_socket_activation_selects_by_name(activate, tmp_path):
    web, admin = free_port(), free_port()
    p = activate([
        "systemd-socket-activate", "-l", f"127.0.0.1:{web}", "-l", f"127.0.0.1:{admin}",
        "--fdname=web:admin", BIN, "--bind", "fd://admin", "basic:app",
    ])
    time.sleep(0.3)
    assert get(admin) == (200, b"Hello, World!")
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=15)[0].decode()
    assert f"Listening at: http://127.0.0.1:{admin}" in out
    assert f"Listening at: http://127.0.0.1:{web}" not in out
    # The socket no --bind selected is not silently dropped: the log says so.
    assert re.search(r"WARNING.*systemd passed fd \d+ \(name \"web\"\) but no --bind selects it", out), out


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_socket_activation_replaces_the_same_bind(activate, tmp_path, kind):
    """Gunicorn's rule: when systemd passes sockets, they are served and the --bind
    addresses (usually the same, as in Gunicorn's deploy guide) are not bound again: a
    unix socket file stays systemd's (same inode, still there after the stop), a port is
    not taken twice."""
    if kind == "unix":
        path = str(tmp_path / "app.sock")
        listen, bind = path, f"unix:{path}"
    else:
        port = free_port()
        listen, bind = f"127.0.0.1:{port}", f"127.0.0.1:{port}"
    p = activate(["systemd-socket-activate", "-l", listen, "--fdname=web", BIN, "-w", "1",
                  "-b", bind, "basic:app"])
    time.sleep(0.3)
    if kind == "unix":
        inode = os.stat(path).st_ino
        assert get(unix=path) == (200, b"Hello, World!")
        assert os.stat(path).st_ino == inode
    else:
        assert get(port) == (200, b"Hello, World!")
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=15)[0].decode()
    assert p.returncode == 0, out
    assert "serving the 1 socket(s) systemd passed instead of --bind" in out, out
    assert "Connection in use" not in out
    if kind == "unix":
        assert os.stat(path).st_ino == inode  # not removed: it is systemd's


def test_socket_activation_still_replaces_the_bind_after_a_reload(activate, tmp_path):
    """The start's rule holds on HUP: a config whose `bind` changed, still with no
    fd://, does not make the master drop systemd's socket and bind the new address
    (systemd's clients would queue on a socket nobody serves); fd://NAME in the new
    list keeps the passed socket by name and binds the rest."""
    port, other, third = free_port(), free_port(), free_port()
    conf = tmp_path / "app.toml"
    conf.write_text(f'bind = ["127.0.0.1:{other}"]\n')
    p = activate(["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=web",
                  BIN, "-w", "1", "-c", str(conf), "basic:app"])
    time.sleep(0.3)
    assert get(port) == (200, b"Hello, World!")
    conf.write_text(f'bind = ["127.0.0.1:{third}"]\n')
    p.send_signal(signal.SIGHUP)
    time.sleep(1.5)  # a reload takes 40-60 ms here
    assert get(port) == (200, b"Hello, World!")
    with pytest.raises(ConnectionRefusedError):
        get(third)
    conf.write_text(f'bind = ["fd://web", "127.0.0.1:{third}"]\n')
    p.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if get(third) == (200, b"Hello, World!"):
                break
        time.sleep(0.1)
    assert get(third) == (200, b"Hello, World!")
    assert get(port) == (200, b"Hello, World!")
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=15)[0].decode()
    assert "still serving the 1 socket(s) systemd passed instead of --bind" in out, out
    assert f"Closing listener: http://127.0.0.1:{port}" not in out, out


def test_socket_activation_unknown_name_is_an_error(activate):
    port = free_port()
    p = activate([
        "systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=web",
        BIN, "--bind", "fd://nope", "basic:app",
    ])
    time.sleep(0.3)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        pass
    out = p.communicate(timeout=15)[0].decode()
    assert p.returncode != 0
    assert "nope" in out


class DatagramSink:
    """A bound unix datagram socket read by a background thread; each
    datagram (with any passed fd's content instead) goes to `received`."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(path)
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                data, anc, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4 * 4))
            except socket.timeout:
                continue
            except OSError:
                return
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    # journald's memfd fallback: the entry is the fd's content.
                    fd = struct.unpack("i", payload[:4])[0]
                    data = os.pread(fd, 64 << 20, 0)
                    os.close(fd)
            self.received(data)

    def close(self):
        self._stop = True
        self.sock.close()


class NotifySocket(DatagramSink):
    """Stands in for systemd's notify socket."""

    def __init__(self, path):
        self.messages = []  # (monotonic time, text)
        super().__init__(path)

    def received(self, data):
        self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, text, after=0, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, (_, m) in enumerate(self.messages[after:], after):
                if text in m.split("\n"):
                    return i
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} after #{after}; got {[m for _, m in self.messages]}")


@pytest.fixture
def notify_socket(tmp_path):
    n = NotifySocket(str(tmp_path / "notify"))
    yield n
    n.close()


def start(args, env, ready=True):
    s = Server(["-b", "127.0.0.1:0"] + args, APPS, env, ready=ready)
    return s


def start_journald(args, env):
    """Under journald the log goes to the journal socket, not stderr: wait
    for the port to answer instead of reading the log."""
    port = free_port()
    s = Server(["-b", f"127.0.0.1:{port}"] + args, APPS, env, ready=False)
    s.port = port
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                if s.request("GET", "/pid", timeout=2)[0] == 200:
                    return s
            except OSError:
                pass
            assert s.proc.poll() is None, s.log()
            assert time.monotonic() < deadline, s.log()
            time.sleep(0.1)
    except BaseException:
        s.close()  # never leak a server when start-up fails
        raise


def test_notify_boot_reload_upgrade_stop_in_order(notify_socket):
    s = start(["-w", "2", "basic:app"], {"NOTIFY_SOCKET": notify_socket.path})
    try:
        ready = notify_socket.wait_for("READY=1")
        # READY only once both workers serve, and a STATUS says so.
        assert "2 workers serving" in s.log() or any("2 workers serving" in m for _, m in notify_socket.messages)
        pids_before = s.worker_pids()
        s.kill(signal.SIGHUP)
        rel = notify_socket.wait_for("RELOADING=1", after=ready + 1)
        msg = notify_socket.messages[rel][1]
        assert any(l.startswith("MONOTONIC_USEC=") for l in msg.split("\n")), msg
        ready2 = notify_socket.wait_for("READY=1", after=rel + 1)
        s.wait_log(r"Reload complete")
        assert s.request()[0] == 200
        # USR2: in-place upgrade, same pid, RELOADING then READY again.
        s.kill(signal.SIGUSR2)
        rel2 = notify_socket.wait_for("RELOADING=1", after=ready2 + 1)
        notify_socket.wait_for("READY=1", after=rel2 + 1)
        assert s.proc.poll() is None
        assert s.request()[0] == 200
        assert set(s.worker_pids()).isdisjoint(pids_before)
        s.kill(signal.SIGTERM)
        assert s.proc.wait(timeout=30) == 0
        stopping = notify_socket.wait_for("STOPPING=1", after=rel2 + 1)
        # The graceful stop asks systemd for --graceful-timeout (30 s by
        # default) plus 5 s, so TimeoutStopSec= cannot cut the drain short.
        notify_socket.wait_for("EXTEND_TIMEOUT_USEC=35000000", after=stopping + 1)
    finally:
        s.close()


@contextlib.contextmanager
def failed_start(notify_socket, args, status, errno, timeout):
    """A start that must fail: yields (server, index of the ERRNO= message)
    once the master exited with `status` and sent ERRNO=`errno`."""
    s = Server(["-b", "127.0.0.1:0", *args], APPS, {"NOTIFY_SOCKET": notify_socket.path}, ready=False)
    try:
        assert s.proc.wait(timeout) == status
        yield s, notify_socket.wait_for(f"ERRNO={errno}", timeout=5)
    finally:
        s.close()


def test_config_error_reports_status_and_errno(notify_socket):
    with failed_start(notify_socket, ["--workers", "0", "basic:app"], 2, 22, 10) as (s, i):
        msg = notify_socket.messages[i][1]
        assert re.search(r"^STATUS=configuration error: .*workers", msg, re.M), msg


def test_app_load_failure_status_is_the_last_word(notify_socket):
    # `systemctl status` shows the last STATUS=: after a failed start that
    # must be the reason (with ERRNO=8), not a worker count sent after it.
    with failed_start(notify_socket, ["-w", "2", "broken:app"], 3, 8, 20) as (s, i):
        time.sleep(0.2)
        statuses = [m for _, m in notify_socket.messages if "STATUS=" in m]
        assert "application failed to load" in statuses[-1], statuses
        assert "application failed to load" in notify_socket.messages[i][1]
        # One warning at most for a notify socket nobody reads (none here).
        assert "sd_notify" not in s.log()


def test_slow_import_extends_the_start_timeout(notify_socket, tmp_path):
    # docs/SYSTEMD.md: while the app imports, EXTEND_TIMEOUT_USEC keeps
    # TimeoutStartSec= counting from the last sign of progress.
    (tmp_path / "slowapp.py").write_text(
        "import time\ntime.sleep(6.5)\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [])\n    return [b'ok']\n")
    s = Server(["-b", "127.0.0.1:0", "--chdir", str(tmp_path), "slowapp:app"], APPS,
               {"NOTIFY_SOCKET": notify_socket.path}, ready=False)
    try:
        ready = notify_socket.wait_for("READY=1", timeout=30)
        before = [(t, m) for t, m in notify_socket.messages[:ready]]
        extends = [(t, m) for t, m in before if m.startswith("EXTEND_TIMEOUT_USEC=")]
        assert extends, [m for _, m in before]
        usec = int(extends[0][1].split("=", 1)[1])
        assert usec >= 10_000_000  # more than the 5 s between two of them
    finally:
        s.close()


def test_watchdog_cadence_and_silence_without_live_workers(notify_socket):
    # WATCHDOG_USEC=1s: pings every ~0.5 s while a worker beats.
    s = start(["basic:app"], {"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "1000000"})
    try:
        notify_socket.wait_for("READY=1")
        time.sleep(3)
        pings = [t for t, m in notify_socket.messages if "WATCHDOG=1" in m.split("\n")]
        recent = [t for t in pings if t > pings[-1] - 2.5]
        assert len(recent) >= 4, pings
        gaps = [b - a for a, b in zip(recent, recent[1:])]
        assert max(gaps) < 0.8, gaps
        # Freeze every worker: no worker beats, so no more pings.
        workers = s.worker_pids()
        for w in workers:
            os.kill(w, signal.SIGSTOP)
        time.sleep(3)  # beats go stale after the watchdog period
        mark = time.monotonic()
        time.sleep(2)
        late = [t for t, m in notify_socket.messages if "WATCHDOG=1" in m.split("\n") and t > mark]
        for w in workers:
            os.kill(w, signal.SIGCONT)
        assert late == [], f"{len(late)} pings while no worker was alive"
        time.sleep(2)
        again = [t for t, m in notify_socket.messages if "WATCHDOG=1" in m.split("\n") and t > mark + 2]
        assert again, "pings did not resume"
    finally:
        s.close()


def test_no_notify_socket_means_plain_process():
    s = start(["basic:app"], {})
    try:
        assert s.request()[0] == 200
    finally:
        s.close()


# --- journald native protocol ------------------------------------------------

def parse_native(data):
    """Decode one native-protocol datagram into a list of (name, bytes)."""
    fields = []
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, _, v = line.partition(b"=")
            fields.append((k.decode(), v))
            i = nl + 1
        else:
            name = line.decode()
            (n,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            v = data[nl + 9:nl + 9 + n]
            assert data[nl + 9 + n:nl + 10 + n] == b"\n"
            fields.append((name, v))
            i = nl + 10 + n
    return fields


class JournalSocket(DatagramSink):
    """Stands in for journald's native socket."""

    def __init__(self, path):
        self.entries = []
        super().__init__(path)

    def received(self, data):
        self.entries.append(dict(parse_native(data)))

    def wait(self, pred, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in list(self.entries):
                if pred(e):
                    return e
            time.sleep(0.05)
        raise AssertionError(f"no matching entry; got {self.entries[-10:]}")


def test_journald_fields_priorities_and_tracebacks(tmp_path):
    j = JournalSocket(str(tmp_path / "journal"))
    s = start_journald(["--log-target", "journald", "--access-logfile", "-", "basic:app"],
              {"FERRICORN_JOURNAL_SOCKET": j.path})
    try:
        assert s.request("GET", "/?x=1", headers={"User-Agent": "probe/1"})[0] == 200
        e = j.wait(lambda e: e.get("HTTP_PATH") == b"/")
        assert e["HTTP_METHOD"] == b"GET" and e["HTTP_STATUS"] == b"200"
        assert e["HTTP_QUERY"] == b"x=1" and e["HTTP_USER_AGENT"] == b"probe/1"
        assert e["HTTP_BYTES"] == b"13" and int(e["HTTP_DURATION_USEC"]) >= 0
        assert e["REMOTE_ADDR"] == b"127.0.0.1" and e["WORKER_PID"].isdigit()
        assert e["REQUEST_ID"] and e["PRIORITY"] == b"6" and e["SYSLOG_IDENTIFIER"] == b"ferricorn"
        assert e["HTTP_VERSION"] == b"HTTP/1.1"
        # No query, no User-Agent: those fields are absent, not empty.
        assert s.request("GET", "/nothing-else", headers={"User-Agent": ""})[0] in (200, 404)
        bare = j.wait(lambda e: e.get("HTTP_PATH") == b"/nothing-else")
        assert "HTTP_QUERY" not in bare and "HTTP_USER_AGENT" not in bare, bare
        boot = j.wait(lambda e: e.get("MESSAGE", b"").startswith(b"Booting worker"))
        assert boot["WORKER_PID"] == boot["MESSAGE"].split()[-1], boot
        # The app's logging.warning: PRIORITY 4, logger name as a field.
        assert s.request("GET", "/log")[0] == 200
        w = j.wait(lambda e: e.get("PYTHON_LOGGER") == b"testapp")
        assert w["PRIORITY"] == b"4" and w["MESSAGE"] == b"a warning from the app"
        assert w["CODE_FILE"].endswith(b"basic.py")
        # Its `extra` as fields, names made valid; the entry's own stay.
        assert w["REQUEST_ID"] == b"r-42" and w["CART_SIZE"] == b"3", w
        errs = j.wait(lambda e: e.get("PYTHON_LOGGER") == b"wsgi.errors")
        assert errs["MESSAGE"] == b"to wsgi.errors"
        # A traceback is ONE entry (multi-line MESSAGE, binary-safe form).
        assert s.request("GET", "/error")[0] == 500
        tb = j.wait(lambda e: b"RuntimeError: boom" in e.get("MESSAGE", b""))
        assert b"Traceback" in tb["MESSAGE"] and b"\n" in tb["MESSAGE"]
        assert tb["PRIORITY"] == b"3"
        # Master lifecycle entries carry WORKER_PID / EXIT_STATUS.
        s.kill(signal.SIGTERM)
        s.proc.wait(timeout=20)
        ex = j.wait(lambda e: "EXIT_STATUS" in e)
        assert ex["WORKER_PID"].isdigit()
        # and the worker's own last words, under its pid
        bye = j.wait(lambda e: e.get("MESSAGE", b"").startswith(b"Worker exiting"))
        assert bye["WORKER_PID"] == bye["MESSAGE"].split()[-1].rstrip(b")"), bye
        # Nothing of this went to stderr as text.
        assert "Hello" not in s.log() and "RuntimeError" not in s.log()
    finally:
        s.close()
        j.close()


def test_journald_timeout_stacks_are_one_entry(tmp_path):
    """faulthandler's dump of a worker killed for a timeout goes to a file the
    master reads when it reaps the worker: one entry with WORKER_PID, not a line
    per entry on the journal stream (stderr)."""
    j = JournalSocket(str(tmp_path / "journal"))
    args = ["--log-target", "journald", "-w", "1", "-t", "2", "basic:app"]
    s = start_journald(args, {"FERRICORN_JOURNAL_SOCKET": j.path})
    try:
        worker = s.worker_pids()[0]
        # the sync worker's kill: the request outlives --timeout
        assert s.request("GET", "/sleep?6", timeout=20)[0] == 500
        e = j.wait(lambda e: e.get("MESSAGE", b"").startswith(b"Python stacks of worker"), timeout=20)
        assert e["WORKER_PID"] == str(worker).encode(), e
        assert e["PRIORITY"] == b"3"
        assert b"\n" in e["MESSAGE"] and b"basic.py" in e["MESSAGE"], e["MESSAGE"]
        assert "basic.py" not in s.log(), s.log()  # nothing of it on stderr
    finally:
        s.close()
        j.close()


def test_journald_large_entry_uses_memfd(tmp_path):
    j = JournalSocket(str(tmp_path / "journal"))
    s = start_journald(["--log-target", "journald", "basic:app"], {"FERRICORN_JOURNAL_SOCKET": j.path})
    try:
        assert s.request("GET", "/biglog")[0] == 200
        e = j.wait(lambda e: e.get("PYTHON_LOGGER") == b"biglog")
        assert len(e["MESSAGE"]) == 400_000 and e["MESSAGE"] == b"y" * 400_000
    finally:
        s.close()
        j.close()


def test_watchdog_pings_through_a_long_request_within_timeout(notify_socket):
    """A worker inside an app call younger than --timeout is alive (its loop runs the app
    inline and cannot beat): the watchdog keeps pinging, so systemd does not abort the
    service in the middle of a request Gunicorn's rules allow."""
    s = start(["-w", "1", "-t", "20", "basic:app"],
              {"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "1000000"})
    try:
        notify_socket.wait_for("READY=1")
        th = threading.Thread(target=lambda: s.request("GET", "/sleep?5", timeout=20))
        th.start()
        time.sleep(1)
        mark = time.monotonic()
        time.sleep(3)  # the worker's last beat is now older than the watchdog period
        pings = [t for t, m in notify_socket.messages if "WATCHDOG=1" in m.split("\n")
                 and t > mark]
        th.join(20)
        assert len(pings) >= 4, pings
        assert max(b - a for a, b in zip(pings, pings[1:])) < 0.8, pings
    finally:
        s.close()


def test_crash_loop_at_start_stops_extending_the_start_timeout(notify_socket, tmp_path):
    """EXTEND_TIMEOUT_USEC says the start makes progress; workers that die right after
    they start make none, so TimeoutStartSec= must be left to fire."""
    (tmp_path / "dies.py").write_text("import os\nos._exit(1)\n")
    s = Server(["-b", "127.0.0.1:0", "--chdir", str(tmp_path), "dies:app"], APPS,
               {"NOTIFY_SOCKET": notify_socket.path}, ready=False)
    try:
        s.wait_log("keep dying", timeout=10)
        time.sleep(7)  # more than one 5 s extension period
        assert s.proc.poll() is None, s.log()
        msgs = [m for _, m in notify_socket.messages]
        assert not any(m.startswith("EXTEND_TIMEOUT_USEC=") for m in msgs), msgs
        assert "READY=1" not in "\n".join(msgs).split("\n")
    finally:
        s.close()


def test_hup_while_starting_reloads_after_ready(notify_socket, tmp_path):
    """sd_notify: RELOADING=1 ... READY=1 is a reload of a started service. A HUP that
    arrives before the first READY=1 is carried out after it, not before it."""
    (tmp_path / "slowapp.py").write_text(
        "import time\ntime.sleep(3)\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [])\n    return [b'ok']\n")
    s = Server(["-b", "127.0.0.1:0", "-w", "2", "--chdir", str(tmp_path), "slowapp:app"],
               APPS, {"NOTIFY_SOCKET": notify_socket.path}, ready=False)
    try:
        s.wait_log("Listening at")
        time.sleep(1)  # the workers are importing
        assert "READY=1" not in "\n".join(m for _, m in notify_socket.messages).split("\n")
        s.kill(signal.SIGHUP)
        first = notify_socket.wait_for("READY=1", timeout=30)
        rel = notify_socket.wait_for("RELOADING=1", after=first + 1, timeout=30)
        notify_socket.wait_for("READY=1", after=rel + 1, timeout=30)
        lines = "\n".join(m for _, m in notify_socket.messages[:first]).split("\n")
        assert "RELOADING=1" not in lines, (lines, s.log())
        s.wait_log("Reload complete")
    finally:
        s.close()


def test_bind_failure_reports_the_real_errno(notify_socket, tmp_path):
    """ERRNO= carries the failing call's errno: a unix socket in a missing directory is
    ENOENT (2), not EADDRINUSE."""
    s = Server(["-b", f"unix:{tmp_path}/missing/dir/s.sock", "basic:app"], APPS,
               {"NOTIFY_SOCKET": notify_socket.path}, ready=False)
    try:
        assert s.proc.wait(10) == 1
        notify_socket.wait_for("ERRNO=2", timeout=5)
    finally:
        s.close()
