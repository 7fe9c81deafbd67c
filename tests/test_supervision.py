"""The master supervises workers like Gunicorn's arbiter (and closes its gaps).

Every test drives the real binary; the reload/upgrade/crash tests do so under
a concurrent load of real HTTP clients (threads running http.client request
loops) and count failed requests. See docs/SIGNALS.md for what each signal
is meant to do.
"""
import collections
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

import conftest
from conftest import APPS, BIN

# A module the tests rewrite on disk, to prove a new generation imports
# fresh code. It records every import (pid and version) in IMPORT_LOG.
GEN_APP = '''\
import os, time
VERSION = {version!r}
_log = os.environ.get("IMPORT_LOG")
if _log:
    with open(_log, "a") as f:
        f.write("%d %s\\n" % (os.getpid(), VERSION))
time.sleep({import_delay})

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or "1"))
        body = ("slept " + VERSION).encode()
    elif path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/both":
        body = ("%s %d" % (VERSION, os.getpid())).encode()
    else:
        body = VERSION.encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''

# Not bytecode-cached: a rewrite within the same second must be seen.
NO_PYC = {"PYTHONDONTWRITEBYTECODE": "1"}


def deploy(d, name, text):
    """Write module `name` into `d` atomically, as a deploy would do."""
    p = Path(d) / f"{name}.py"
    tmp = p.with_suffix(".tmp")
    tmp.write_text(text)
    os.rename(tmp, p)
    return p


def write_app(d, version, name="vapp", import_delay=0):
    return deploy(d, name, GEN_APP.format(version=version, import_delay=import_delay))


def write_hanging_app(d, name="vapp"):
    return deploy(d, name, "import time\ntime.sleep(600)  # an import that never finishes\n")


def write_broken_app(d, name="vapp"):
    return deploy(d, name, "VERSION = 'broken'\ndef app(environ, start_response:\n    pass\n")


class Load:
    """Client threads looping over requests until stopped.

    `fresh` threads open a new connection per request: every failure counts.
    `slow` threads do the same but wait 50 ms between connecting and
    sending (a client that preconnects, or a slow network): a server that
    drops accepted connections whose request has not arrived yet fails them.
    `keepalive` threads reuse their connection the way HTTP client libraries
    do: when the server closed an idle keep-alive connection just as the
    next request went out (a race no server can close), the request is
    retried once on a new connection, like urllib3/requests do for
    idempotent requests; that retry is counted in `stale_retries`, and a
    failure of the retry is a failure.
    """

    def __init__(self, port, path="/", fresh=3, keepalive=1, slow=1, timeout=10):
        self.port = port
        self.path = path
        self.timeout = timeout
        self.lock = threading.Lock()
        self.ok = 0
        self.failures = []
        self.stale_retries = 0
        self.results = []  # (monotonic time, body)
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(False,), daemon=True) for _ in range(fresh)]
        self.threads += [threading.Thread(target=self._run, args=(True,), daemon=True) for _ in range(keepalive)]
        self.threads += [threading.Thread(target=self._run, args=(False, 0.05), daemon=True) for _ in range(slow)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(self.timeout + 5)
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _new(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)

    def _once(self, conn):
        conn.request("GET", self.path)
        r = conn.getresponse()
        body = r.read()
        return r.status, body, r.will_close

    def _record(self, status, body):
        with self.lock:
            if status == 200:
                self.ok += 1
                self.results.append((time.monotonic(), body))
            else:
                self.failures.append(f"status {status}: {body[:100]!r}")

    def _run(self, keepalive, preconnect=0):
        conn = None
        while not self._stop.is_set():
            reused = conn is not None
            if conn is None:
                conn = self._new()
            try:
                if preconnect:
                    conn.connect()
                    time.sleep(preconnect)
                status, body, will_close = self._once(conn)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                conn = None
                if not reused:
                    with self.lock:
                        self.failures.append(repr(e))
                    continue
                with self.lock:
                    self.stale_retries += 1
                conn = self._new()
                try:
                    status, body, will_close = self._once(conn)
                except Exception as e2:  # noqa: BLE001 -- any error is a failure
                    with self.lock:
                        self.failures.append(f"retry: {e2!r}")
                    conn.close()
                    conn = None
                    continue
            except Exception as e:  # noqa: BLE001
                with self.lock:
                    self.failures.append(repr(e))
                conn.close()
                conn = None
                continue
            self._record(status, body)
            if not keepalive or will_close:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def bodies_after(self, t):
        with self.lock:
            return [b for (at, b) in self.results if at >= t]

    def count(self):
        with self.lock:
            return self.ok


def wait_for(pred, timeout, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        # ProcessLookupError: the process went away between open and read
        return False
    return state not in ("Z", "X")


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].split()
    return None


def args_of(pid):
    return subprocess.run(["ps", "ww", "-o", "args=", "-p", str(pid)], capture_output=True,
                          text=True).stdout.strip()


def get(port, path="/", timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def stop_until_killed(pid, timeout=8.0):
    """SIGSTOP a worker (silent: no heartbeat) and wait for the master to kill it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: not alive(pid), timeout, what="the silent worker killed")
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGCONT)


def in_background(fn, *args):
    """Run fn(*args) in a thread; returns a callable giving its result."""
    box = {}

    def run():
        try:
            box["value"] = fn(*args)
        except Exception as e:  # noqa: BLE001
            box["value"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def result(timeout=30):
        t.join(timeout)
        return box.get("value")

    return result


# --- HUP ------------------------------------------------------------------


@pytest.mark.parametrize("threads", ["1", "3"])
def test_hup_under_load_serves_fresh_code_without_failures(start_server, tmp_path, threads):
    write_app(tmp_path, "v1")
    s = start_server("vapp:app", "-w", "2", "--threads", threads, "--graceful-timeout", "10",
                     cwd=tmp_path, env=NO_PYC)
    old = s.worker_pids()
    assert len(old) == 2
    with Load(s.port) as load:
        wait_for(lambda: load.count() > 50, 10, what="load to start")
        # A request in flight on the old generation when HUP arrives.
        inflight = in_background(get, s.port, "/sleep?1.5")
        time.sleep(0.3)
        write_app(tmp_path, "version-2")
        hup_at = time.monotonic()
        s.kill(signal.SIGHUP)
        s.wait_log(r"Reload complete: generation 2", timeout=15)
        wait_for(lambda: not set(old) & set(s.worker_pids()), 10, what="old generation to exit")
        retired_at = time.monotonic()
        wait_for(lambda: len(load.bodies_after(retired_at)) > 50, 10, what="requests after the reload")
    assert inflight() == (200, b"slept v1"), "the in-flight request must finish on the old generation"
    assert load.failures == [], load.failures[:5]
    before = load.bodies_after(0)
    assert b"v1" in before
    after = load.bodies_after(retired_at)
    assert after and set(after) == {b"version-2"}, collections.Counter(after)
    new = s.worker_pids()
    assert len(new) == 2 and not set(new) & set(old)
    print(f"HUP (--threads {threads}): {load.ok} ok, 0 failed, {load.stale_retries} keep-alive retries; "
          f"old generation gone {retired_at - hup_at:.2f}s after HUP")


def test_hup_old_generation_bounded_by_graceful_timeout(start_server, tmp_path):
    write_app(tmp_path, "v1")
    s = start_server("vapp:app", "-w", "1", "--graceful-timeout", "1", cwd=tmp_path, env=NO_PYC)
    old = s.worker_pids()
    stuck = in_background(get, s.port, "/sleep?30", 40)
    time.sleep(0.3)
    t0 = time.monotonic()
    s.kill(signal.SIGHUP)
    wait_for(lambda: not alive(old[0]), 6, what="old worker killed after graceful_timeout")
    took = time.monotonic() - t0
    assert 0.9 <= took < 4, took
    assert isinstance(stuck(), Exception)  # it was cut off, by design
    s.wait_log(r"did not finish within graceful_timeout")
    assert get(s.port)[0] == 200


def test_hup_with_broken_app_keeps_old_generation(start_server, tmp_path):
    write_app(tmp_path, "v1")
    s = start_server("vapp:app", "-w", "2", cwd=tmp_path, env=NO_PYC)
    old = s.worker_pids()
    with Load(s.port) as load:
        wait_for(lambda: load.count() > 50, 10, what="load to start")
        write_broken_app(tmp_path)
        s.kill(signal.SIGHUP)
        s.wait_log(r"Reload failed", timeout=15)
        t = time.monotonic()
        # The master does not keep spawning the broken generation.
        time.sleep(2)
        wait_for(lambda: len(load.bodies_after(t)) > 50, 10, what="requests after the failed reload")
    assert load.failures == [], load.failures[:5]
    assert set(load.bodies_after(0)) == {b"v1"}
    assert s.worker_pids() == old
    log = s.log()
    assert "SyntaxError" in log
    assert len(re.findall(r"Failed to load application", log)) <= 2, log
    # Fixed code on disk: the next HUP goes through, and the old
    # generation retires (it does not keep serving beside the new one).
    write_app(tmp_path, "fixed")
    s.kill(signal.SIGHUP)
    s.wait_log(r"Reload complete", timeout=15)
    wait_for(lambda: not set(old) & set(s.worker_pids()), 10, what="old generation to exit")
    assert len(s.worker_pids()) == 2
    assert get(s.port) == (200, b"fixed")


def test_hup_with_hanging_import_times_out_and_next_hup_recovers(start_server, tmp_path):
    write_app(tmp_path, "v1")
    s = start_server("vapp:app", "-w", "2", "-t", "2", cwd=tmp_path, env=NO_PYC)
    old = s.worker_pids()
    with Load(s.port) as load:
        wait_for(lambda: load.count() > 50, 10, what="load to start")
        write_hanging_app(tmp_path)
        s.kill(signal.SIGHUP)
        # The new workers hang in the import: killed after --timeout, with
        # the place they hang in the log; the old generation serves on.
        log = s.wait_log(r"did not finish booting \(importing the app\) within 2s", timeout=10)
        s.wait_log(r'File ".*vapp\.py", line 2 in <module>', timeout=5)
        assert s.proc.poll() is None
        # A HUP with good code on disk abandons the hanging generation.
        write_app(tmp_path, "v3")
        s.kill(signal.SIGHUP)
        s.wait_log(r"abandoning generation 2", timeout=5)
        s.wait_log(r"Reload complete: generation 3", timeout=15)
        wait_for(lambda: not set(old) & set(s.worker_pids()), 10, what="old generation to exit")
        done = time.monotonic()
        wait_for(lambda: len(load.bodies_after(done)) > 30, 10, what="requests after the reload")
    assert load.failures == [], load.failures[:5]
    assert set(load.bodies_after(0)) == {b"v1", b"v3"}
    assert set(load.bodies_after(done)) == {b"v3"}
    assert len(s.worker_pids()) == 2


# --- USR2 -----------------------------------------------------------------
# Under systemd (NOTIFY_SOCKET or INVOCATION_ID set) USR2 re-executes the
# master in place; elsewhere it starts a second master, as Gunicorn's does.
IN_PLACE = {"INVOCATION_ID": "0123456789abcdef0123456789abcdef"}
NOT_SYSTEMD = {"INVOCATION_ID": None, "NOTIFY_SOCKET": None}


@pytest.fixture
def new_masters():
    """Second masters a test started: they outlive the test's server (no
    parent-death signal), so any still running at the end are killed."""
    pids = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def pid_in(path):
    try:
        return int(Path(path).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def replace_with_non_program(exe):
    """Put an executable text file (no #!) where the binary was: execve fails."""
    bad = exe.with_name("bad")
    bad.write_text("this is not a program\n")
    bad.chmod(0o755)
    os.rename(bad, exe)


def ppid_of(pid):
    return int(proc_status(pid, "PPid")[0])


def test_usr2_starts_a_second_master_as_gunicorn_does(start_server, tmp_path, new_masters):
    # Gunicorn's documented upgrade, outside systemd: USR2 starts a new
    # master (pid file PIDFILE.2) with its own workers on the same sockets;
    # TERM to the old master then leaves the new one, which takes over the
    # pid file. No request fails on the way.
    write_app(tmp_path, "v1")
    pidfile = tmp_path / "app.pid"
    sock = tmp_path / "app.sock"
    s = start_server("vapp:app", "-w", "2", "-p", str(pidfile), "-b", f"unix:{sock}",
                     cwd=tmp_path, env=dict(NO_PYC, **NOT_SYSTEMD))
    old = s.pid
    assert pid_in(pidfile) == old
    with Load(s.port, path="/both") as load:
        wait_for(lambda: load.count() > 50, 10, what="load to start")
        write_app(tmp_path, "v2")
        s.kill(signal.SIGUSR2)
        new = wait_for(lambda: pid_in(f"{pidfile}.2"), 10, what="the new master's pid file")
        new_masters.append(new)
        assert new != old and ppid_of(new) == old
        assert pid_in(pidfile) == old
        s.wait_log(r"All 2 workers are serving", count=2, timeout=15)
        assert args_of(new) == "ferricorn: master [vapp:app.2]"
        new_workers = [int(p) for p in subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(new)], capture_output=True, text=True).stdout.split()]
        assert len(new_workers) == 2
        # Both generations answer on the shared socket.
        wait_for(lambda: any(b.startswith(b"v2 ") for b in load.bodies_after(0)), 10,
                 what="a request served by the new master's workers")
        # A second USR2 is refused while the new master runs.
        s.kill(signal.SIGUSR2)
        s.wait_log(r"USR2 signal ignored. Child exists")
        # Gunicorn's recipe sends WINCH next: said, and nothing changes.
        children = s.worker_pids()  # (the new master among them)
        s.kill(signal.SIGWINCH)
        s.wait_log(r"Handling signal: winch; ignored")
        assert s.worker_pids() == children
        s.kill(signal.SIGTERM)
        assert s.proc.wait(20) == 0
        done = time.monotonic()
        wait_for(lambda: len(load.bodies_after(done)) > 50, 10, what="requests after the upgrade")
    assert load.failures == [], load.failures[:5]
    assert {b.split()[0] for b in load.bodies_after(done)} == {b"v2"}
    # (The old master has exited: wait on the log itself.)
    wait_for(lambda: "Master has been promoted." in s.log(), 5, what="the promotion")
    wait_for(lambda: pid_in(pidfile) == new, 5, what="the pid file to name the new master")
    assert not Path(f"{pidfile}.2").exists()
    wait_for(lambda: args_of(new) == "ferricorn: master [vapp:app]", 5, what="the title without .2")
    # The old master left the unix socket to the new one.
    assert unix_get(sock).startswith(b"HTTP/1.1 200 ")
    os.kill(new, signal.SIGTERM)
    wait_for(lambda: not alive(new), 20, what="the new master to stop")
    assert not sock.exists() and not pidfile.exists()


def test_usr2_then_term_to_the_new_master_reverts(start_server, tmp_path, monkeypatch,
                                                  new_masters):
    # Gunicorn's way back: stop the new master; the old one goes on alone
    # and can upgrade again. An exec that fails starts nothing.
    pidfile = tmp_path / "app.pid"
    sock = tmp_path / "app.sock"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "ferricorn"
    shutil.copy2(BIN, exe)
    monkeypatch.setattr(conftest, "BIN", str(exe))
    s = start_server("basic:app", "-w", "1", "-p", str(pidfile), "-b", f"unix:{sock}",
                     env=NOT_SYSTEMD)
    workers = s.worker_pids()
    s.kill(signal.SIGUSR2)
    new = wait_for(lambda: pid_in(f"{pidfile}.2"), 10, what="the new master's pid file")
    new_masters.append(new)
    s.wait_log(r"All 1 workers are serving", count=2, timeout=15)
    os.kill(new, signal.SIGTERM)
    s.wait_log(rf"New master \(pid:{new}\) exited with code 0", timeout=20)
    assert not Path(f"{pidfile}.2").exists()
    assert pid_in(pidfile) == s.pid
    assert s.worker_pids() == workers
    assert get(s.port)[0] == 200
    assert unix_get(sock).startswith(b"HTTP/1.1 200 ")
    # Not an executable any more: nothing starts, the master carries on.
    replace_with_non_program(exe)
    s.kill(signal.SIGUSR2)
    s.wait_log(r"Upgrade failed: execve .*ferricorn: .*; carrying on", timeout=5)
    assert s.worker_pids() == workers
    assert get(s.port)[0] == 200
    assert s.stop() == 0
    assert not sock.exists() and not pidfile.exists()


def test_usr2_masters_with_preload_survive_their_own_hups(start_server, tmp_path, new_masters):
    # With --preload a HUP re-executes the master in place. Done to either
    # master during a Gunicorn-style upgrade, each keeps its part: the new
    # one stays the second master (PIDFILE.2), the old one still knows its
    # sockets are shared, so its TERM leaves them (and the socket file) to
    # the new one.
    pidfile = tmp_path / "app.pid"
    sock = tmp_path / "app.sock"
    s = start_server("basic:app", "-w", "1", "--preload", "-p", str(pidfile), "-b", f"unix:{sock}",
                     env=NOT_SYSTEMD)
    s.kill(signal.SIGUSR2)
    new = wait_for(lambda: pid_in(f"{pidfile}.2"), 10, what="the new master's pid file")
    new_masters.append(new)
    s.wait_log(r"All 1 workers are serving", count=2, timeout=15)
    os.kill(new, signal.SIGHUP)
    s.wait_log(r"Reload complete", timeout=15)
    s.kill(signal.SIGHUP)
    s.wait_log(r"Reload complete", count=2, timeout=15)
    assert pid_in(f"{pidfile}.2") == new and pid_in(pidfile) == s.pid
    assert args_of(new) == "ferricorn: master [basic:app.2]"
    s.kill(signal.SIGTERM)
    assert s.proc.wait(20) == 0
    wait_for(lambda: pid_in(pidfile) == new, 5, what="the pid file to name the new master")
    assert get(s.port)[0] == 200
    assert unix_get(sock).startswith(b"HTTP/1.1 200 ")
    os.kill(new, signal.SIGTERM)
    wait_for(lambda: not alive(new), 20, what="the new master to stop")
    assert not pidfile.exists() and not sock.exists()


def test_usr2_after_binary_replaced_under_load(start_server, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "ferricorn"
    shutil.copy2(BIN, exe)
    monkeypatch.setattr(conftest, "BIN", str(exe))
    write_app(tmp_path, "v1")
    s = start_server("vapp:app", "-w", "2", cwd=tmp_path, env=dict(NO_PYC, **IN_PLACE))
    master = s.pid
    old = s.worker_pids()
    with Load(s.port, path="/both") as load:
        wait_for(lambda: load.count() > 50, 10, what="load to start")
        # Replace the binary as a package upgrade does: the running inode
        # is deleted.
        shutil.copy2(BIN, bindir / "ferricorn.new")
        os.rename(bindir / "ferricorn.new", exe)
        assert os.readlink(f"/proc/{master}/exe").endswith("(deleted)")
        s.kill(signal.SIGUSR2)
        s.wait_log(r"Upgraded in place: adopted 2 workers", timeout=15)
        s.wait_log(r"Reload complete", timeout=15)
        wait_for(lambda: not set(old) & set(s.worker_pids()), 10, what="old workers to exit")
        done = time.monotonic()
        wait_for(lambda: len(load.bodies_after(done)) > 50, 10, what="requests after the upgrade")
    assert s.proc.poll() is None
    assert load.failures == [], load.failures[:5]
    assert os.readlink(f"/proc/{master}/exe") == str(exe)
    new = s.worker_pids()
    assert len(new) == 2 and not set(new) & set(old)
    served_by = {int(b.split()[1]) for b in load.bodies_after(done)}
    assert served_by <= set(new), (served_by, new)
    assert args_of(master).startswith("ferricorn: master")
    print(f"USR2: {load.ok} ok, 0 failed, {load.stale_retries} keep-alive retries")
    assert s.stop() == 0


def test_usr2_during_a_reload_under_load(start_server, tmp_path):
    # USR2 while a HUP's generation is still booting: the hand-off carries
    # the booting workers as booting, and only the newest generation stays.
    imports = tmp_path / "imports.log"
    write_app(tmp_path, "v1")
    s = start_server("vapp:app", "-w", "2", cwd=tmp_path,
                     env=dict(NO_PYC, IMPORT_LOG=str(imports), **IN_PLACE))
    old = s.worker_pids()
    with Load(s.port) as load:
        wait_for(lambda: load.count() > 50, 10, what="load to start")
        write_app(tmp_path, "version-2", import_delay=1)  # a slow import, like Django's
        s.kill(signal.SIGHUP)
        wait_for(lambda: imports.read_text().count("version-2") == 2, 5, what="the new workers to import")
        s.kill(signal.SIGUSR2)
        s.wait_log(r"Upgraded in place: adopted 4 workers", timeout=10)
        s.wait_log(r"Reload complete: generation 3", timeout=15)
        wait_for(lambda: len(s.worker_pids()) == 2 and not set(old) & set(s.worker_pids()), 10,
                 what="only the newest generation")
        done = time.monotonic()
        time.sleep(1)  # nothing else is spawned or retired afterwards
        assert len(s.worker_pids()) == 2
        wait_for(lambda: len(load.bodies_after(done)) > 30, 10, what="requests after the upgrade")
    assert load.failures == [], load.failures[:5]
    assert set(load.bodies_after(done)) == {b"version-2"}


def test_usr2_follows_a_switched_symlink(start_server, tmp_path, monkeypatch):
    # Deployments that switch a symlink to a new release: USR2 runs what
    # the path we were started by points to now.
    for rel in ("a", "b"):
        (tmp_path / rel).mkdir()
        shutil.copy2(BIN, tmp_path / rel / "ferricorn")
    link = tmp_path / "ferricorn"
    os.symlink(tmp_path / "a" / "ferricorn", link)
    monkeypatch.setattr(conftest, "BIN", str(link))
    s = start_server("basic:app", "-w", "1", env=IN_PLACE)
    assert os.readlink(f"/proc/{s.pid}/exe") == str(tmp_path / "a" / "ferricorn")
    os.symlink(tmp_path / "b" / "ferricorn", tmp_path / "new-link")
    os.rename(tmp_path / "new-link", link)
    s.kill(signal.SIGUSR2)
    s.wait_log(r"Reload complete", timeout=15)
    assert os.readlink(f"/proc/{s.pid}/exe") == str(tmp_path / "b" / "ferricorn")
    assert get(s.port)[0] == 200


def test_term_right_after_usr2_is_not_lost(start_server):
    # Both signals are likely read in one batch: the exec must not happen
    # before the TERM read with it is handled (it would be lost).
    s = start_server("basic:app", "-w", "2", env=IN_PLACE)
    os.kill(s.pid, signal.SIGUSR2)
    os.kill(s.pid, signal.SIGTERM)
    assert s.proc.wait(10) == 0


def test_usr2_exec_failure_keeps_running(start_server, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "ferricorn"
    shutil.copy2(BIN, exe)
    monkeypatch.setattr(conftest, "BIN", str(exe))
    s = start_server("basic:app", "-w", "2", env=IN_PLACE)
    workers = s.worker_pids()
    # Not an executable format: execve fails and the master carries on.
    replace_with_non_program(exe)
    s.kill(signal.SIGUSR2)
    s.wait_log(r"In-place upgrade failed: execve .*ferricorn: .*", timeout=5)
    assert get(s.port)[0] == 200
    assert s.worker_pids() == workers
    # The sockets did not leak into anything, and a good binary upgrades.
    shutil.copy2(BIN, bindir / "good")
    os.rename(bindir / "good", exe)
    s.kill(signal.SIGUSR2)
    s.wait_log(r"Reload complete", timeout=15)
    wait_for(lambda: not set(workers) & set(s.worker_pids()), 10, what="old workers to exit")
    assert get(s.port)[0] == 200
    assert s.stop() == 0


# --- worker death -----------------------------------------------------------


def test_kill9_worker_under_load(start_server):
    s = start_server("basic:app", "-w", "2")
    before = s.worker_pids()
    with Load(s.port, path="/pid", fresh=3, keepalive=1) as load:
        wait_for(lambda: load.count() > 50, 10, what="load to start")
        t0 = time.monotonic()
        os.kill(before[0], signal.SIGKILL)

        def replacement_serves():
            with load.lock:
                for at, b in load.results:
                    if at >= t0 and int(b) not in before:
                        return at
            return None

        served_at = wait_for(replacement_serves, 5, what="a replacement worker to serve")
        time.sleep(0.3)
    took = served_at - t0
    assert took < 1.0, f"replacement served {took:.3f}s after kill -9"
    assert len(load.failures) <= 5, load.failures
    assert len(s.worker_pids()) == 2
    assert re.search(rf"Worker \(pid:{before[0]}\) was sent SIGKILL", s.log())
    print(f"kill -9 worker: {len(load.failures)} failed of {load.ok}, replacement served after {took * 1000:.0f} ms")


def test_stuck_request_times_out_with_traceback(start_server):
    s = start_server("basic:app", "-w", "2", "-t", "2")
    pids = s.worker_pids()
    stuck = in_background(get, s.port, "/sleep?30", 40)
    t0 = time.monotonic()
    log = s.wait_log(r"Worker \(pid:\d+\) was sent SIGABRT!", timeout=10)
    took = time.monotonic() - t0
    # Gunicorn's sync worker answers the interrupted request a 500, rather
    # than an empty reply (a 502 from the proxy in front)
    assert stuck() == (500, b"500 Internal Server Error\n")
    assert 2 <= took < 5, took
    m = re.search(r"WORKER TIMEOUT \(pid:(\d+)\): request GET /sleep\?30 ran longer than 2s", log)
    assert m, log
    victim = int(m.group(1))
    assert victim in pids
    # faulthandler's dump: basic.py's frame, at the time.sleep line.
    src = (APPS / "basic.py").read_text().splitlines()
    sleep_line = next(i + 1 for i, l in enumerate(src) if "time.sleep(" in l)
    assert re.search(rf'File ".*basic\.py", line {sleep_line} in app', log), log
    wait_for(lambda: len(s.worker_pids()) == 2 and victim not in s.worker_pids(), 5, what="replacement")
    assert get(s.port)[0] == 200


def test_timeout_kill_follows_an_ignored_abort(start_server):
    s = start_server("basic:app", "-w", "1", "-t", "1")
    pid = s.worker_pids()[0]
    stuck = in_background(get, s.port, "/stubborn?30", 40)
    log = s.wait_log(rf"Worker \(pid:{pid}\) was sent SIGKILL!", timeout=10)
    assert isinstance(stuck(), Exception)
    assert re.search(rf"WORKER TIMEOUT \(pid:{pid}\): request GET /stubborn\?30 ran longer than 1s", log)
    assert "out of memory" not in log  # the master knows why it killed it
    wait_for(lambda: s.worker_pids() and pid not in s.worker_pids(), 5, what="replacement")
    assert get(s.port)[0] == 200


def test_threaded_workers_time_out_only_when_silent_as_gthread(start_server):
    # Gunicorn's --timeout for threaded (gthread) workers: "the worker
    # process is still communicating and is not tied to the length of time
    # required to handle a single request". Requests longer than -t finish,
    # also with every thread busy; a stopped worker is still replaced.
    s = start_server("basic:app", "-w", "1", "--threads", "2", "-t", "1")
    [pid] = s.worker_pids()
    slow = [in_background(get, s.port, "/sleep?3", 20) for _ in range(2)]
    assert [f() for f in slow] == [(200, b"slept")] * 2
    assert s.worker_pids() == [pid] and "TIMEOUT" not in s.log()
    stop_until_killed(pid)
    s.wait_log(r"WORKER TIMEOUT \(pid:%d\): its event loop has not run" % pid)


def test_idle_worker_never_times_out(start_server):
    s = start_server("basic:app", "-w", "1", "-t", "1")
    pid = s.worker_pids()
    time.sleep(3.5)
    assert s.worker_pids() == pid
    assert get(s.port, "/pid") == (200, str(pid[0]).encode())
    assert "TIMEOUT" not in s.log()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_max_requests_recycles_without_failures(start_server, workers):
    s = start_server("basic:app", "-w", workers, "--max-requests", "25")
    first = set(s.worker_pids())
    with Load(s.port, path="/pid", fresh=2, keepalive=2) as load:
        wait_for(lambda: len({b for _, b in load.results}) >= 6, 20, what="several worker generations")
    assert load.failures == [], load.failures[:5]
    seen = {int(b) for _, b in load.results}
    assert first < seen
    counts = collections.Counter(int(b) for _, b in load.results)
    # Every worker that was recycled served its 25 requests first (a few
    # more may have been in its hands when it reached the limit: those are
    # answered, not dropped).
    retired = seen - set(s.worker_pids())
    assert retired and all(counts[p] >= 25 for p in retired), counts
    assert re.findall(r"Autorestarting worker after 25 requests", s.log())
    assert "keep dying" not in s.log()
    print(f"max-requests: {load.ok} ok over {len(seen)} workers, 0 failed, {load.stale_retries} keep-alive retries")


def test_max_requests_last_response_says_close(start_server):
    # The request that reaches the limit is the worker's last: its response
    # carries `Connection: close` (as Gunicorn's), so a keep-alive client
    # knows not to send another on that connection.
    s = start_server("basic:app", "-w", "1", "--max-requests", "3")
    c = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    try:
        heads = []
        for _ in range(3):
            c.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            data = b""
            while b"Hello, World!" not in data:
                chunk = c.recv(65536)
                assert chunk, (heads, data)
                data += chunk
            heads.append(data.split(b"\r\n\r\n")[0].lower())
        assert [b"connection: close" in h for h in heads] == [False, False, True], heads
        assert c.recv(100) == b""  # and the server closes it
    finally:
        c.close()
    s.wait_log(r"Autorestarting worker after 3 requests")


def test_max_requests_jitter_varies_the_limit(start_server):
    s = start_server("basic:app", "-w", "2", "--max-requests", "10", "--max-requests-jitter", "20")
    with Load(s.port, path="/pid", fresh=2, keepalive=1) as load:
        wait_for(lambda: len(re.findall(r"Autorestarting worker after", s.log())) >= 6, 20,
                 what="six recycles")
    assert load.failures == [], load.failures[:5]
    limits = [int(n) for n in re.findall(r"Autorestarting worker after (\d+) requests", s.log())]
    assert all(10 <= n <= 30 for n in limits), limits
    assert len(set(limits)) > 1, limits


# --- TTIN / TTOU ----------------------------------------------------------------


def test_ttin_ttou_change_the_worker_count(start_server):
    s = start_server("basic:app", "-w", "2")
    sent = collections.Counter()

    def send(sig, name):
        # Two identical standard signals sent before the master reads the
        # first are one signal (the kernel keeps one pending): wait for
        # each to be handled, as an operator's shell would.
        sent[name] += 1
        s.kill(sig)
        s.wait_log(rf"Handling signal: {name}", count=sent[name], timeout=5)

    with Load(s.port, fresh=2, keepalive=1) as load:
        send(signal.SIGTTIN, "ttin")
        send(signal.SIGTTIN, "ttin")
        wait_for(lambda: len(s.worker_pids()) == 4, 10, what="4 workers")
        for _ in range(5):
            send(signal.SIGTTOU, "ttou")
        wait_for(lambda: len(s.worker_pids()) == 1, 10, what="1 worker")
        time.sleep(0.5)
        assert len(s.worker_pids()) == 1  # never below one
        send(signal.SIGTTIN, "ttin")
        wait_for(lambda: len(s.worker_pids()) == 2, 10, what="2 workers")
    assert load.failures == [], load.failures[:5]
    log = s.log()
    assert re.findall(r"workers now (\d+)", log) == ["3", "4", "3", "2", "1", "1", "1", "2"]


# --- USR1 -------------------------------------------------------------------


def start_logging_to_files(start_server, d, *args, cwd=APPS, env=None):
    err = Path(d) / "error.log"
    acc = Path(d) / "access.log"
    s = start_server("basic:app", "-w", "2", "--error-logfile", str(err), "--access-logfile", str(acc),
                     *args, cwd=cwd, env=env, ready=False)
    # The fixture's log is empty (the error log is the file): wait on it.
    wait_for(lambda: err.exists() and "workers are serving" in err.read_text(), 20, what="boot")
    s.port = int(re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", err.read_text()).group(1))
    return s, err, acc


def rotate_and_check(s, err, acc):
    """Rotate both logs, USR1, and check every new line lands in the new files."""
    for _ in range(4):
        assert get(s.port, "/log")[0] == 200
    os.rename(err, str(err) + ".1")
    os.rename(acc, str(acc) + ".1")
    s.kill(signal.SIGUSR1)
    wait_for(lambda: err.exists() and acc.exists(), 5, what="new log files")
    time.sleep(0.5)  # let both workers act on their USR1
    old_err = Path(str(err) + ".1").read_text()
    old_acc = Path(str(acc) + ".1").read_text()
    for _ in range(10):
        assert get(s.port, "/log")[0] == 200
    s.kill(signal.SIGTTIN)  # a master line after the reopen
    wait_for(lambda: "Handling signal: ttin" in err.read_text(), 5, what="master line in the new file")
    wait_for(lambda: acc.read_text().count("/log") == 10, 5, what="access lines in the new file")
    assert err.read_text().count("a warning from the app") == 10
    assert Path(str(err) + ".1").read_text().count("a warning from the app") == old_err.count("a warning from the app")
    assert Path(str(acc) + ".1").read_text() == old_acc
    assert "reopening log files:" not in err.read_text()  # no error reopening


def test_usr1_reopens_rotated_logs(start_server, tmp_path):
    s, err, acc = start_logging_to_files(start_server, tmp_path)
    rotate_and_check(s, err, acc)
    assert s.stop() == 0


# --- boot failures ----------------------------------------------------------


def test_import_error_with_4_workers_exits_3_without_respawn():
    t = time.monotonic()
    p = subprocess.run(
        [BIN, "-b", "127.0.0.1:0", "-w", "4", "broken:app"],
        cwd=APPS, capture_output=True, text=True, timeout=30,
    )
    took = time.monotonic() - t
    assert p.returncode == 3, p.stderr
    assert took < 10, took
    assert "Traceback" in p.stderr and "ModuleNotFoundError" in p.stderr
    assert p.stderr.count("Failed to load application") <= 4
    assert len(re.findall(r"Booting worker", p.stderr)) == 0


@pytest.mark.parametrize("mode", ["timer", "request"])
def test_crash_loop_backs_off(start_server, mode):
    s = start_server("crashy:app", "-w", "2", env={"CRASH_MODE": mode}, ready=(mode == "request"))
    t0 = time.monotonic()
    load = Load(s.port, fresh=2, keepalive=0, timeout=2).start() if mode == "request" else None
    time.sleep(5)
    if load:
        load.stop()
    log = s.log()
    boots = len(re.findall(r"Booting worker with pid", log))
    # Without backoff two workers dying 0.2s after boot respawn ~40 times
    # in 5 s; with it, a handful.
    assert boots <= 14, log
    assert re.search(r"waiting \d+ ms before the next one", log), log
    assert s.proc.poll() is None
    assert s.stop() == 0
    print(f"crash loop ({mode}): {boots} boots in {time.monotonic() - t0:.1f}s")


# --- master death -----------------------------------------------------------


def test_kill9_master_leaves_no_worker(start_server):
    s = start_server("basic:app", "-w", "3")
    workers = s.worker_pids()
    assert len(workers) == 3
    s.kill(signal.SIGKILL)
    s.proc.wait(5)
    wait_for(lambda: not any(alive(p) for p in workers), 1.0, what="workers to die with the master")


def test_under_supervisor(tmp_path):
    """A real supervisord (from PyPI) runs ferricorn as a foreground
    program: `supervisorctl signal HUP` reloads the workers, a master killed
    with -9 is restarted on the same socket (its workers died with it), and
    `supervisorctl stop` is a graceful TERM that ends in STOPPED, not in a
    SIGKILL after stopwaitsecs."""
    sock = tmp_path / "app.sock"
    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"""\
[supervisord]
nodaemon=true
logfile={tmp_path}/supervisord.log
pidfile={tmp_path}/supervisord.pid
[unix_http_server]
file={tmp_path}/supervisor.sock
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{tmp_path}/supervisor.sock
[program:app]
command={BIN} -w 2 -b unix:{sock} --chdir {APPS} basic:app
stdout_logfile={tmp_path}/app.log
redirect_stderr=true
autorestart=true
startsecs=1
stopwaitsecs=10
""")
    bindir = Path(conftest.VENV) / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "NOTIFY_SOCKET")}

    def ctl(*args):
        r = subprocess.run([bindir / "supervisorctl", "-c", conf, *args], capture_output=True,
                           text=True, timeout=30, env=env)
        return r.stdout

    def running_pid():
        m = re.search(r"^app\s+RUNNING\s+pid (\d+)", ctl("status"), re.M)
        return int(m.group(1)) if m else None

    def serves():
        try:
            return unix_get(sock).startswith(b"HTTP/1.1 200 ")
        except OSError:
            return False

    def children(pid):
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                             text=True).stdout
        return sorted(int(x) for x in out.split())

    sup = subprocess.Popen([bindir / "supervisord", "-c", conf], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        master = wait_for(running_pid, 15, what="supervisord to report app RUNNING")
        wait_for(serves, 15, what="the app to serve on its unix socket")
        workers = wait_for(lambda: len(children(master)) == 2 and children(master), 10,
                           what="two workers")
        assert "app: signalled" in ctl("signal", "HUP", "app")
        wait_for(lambda: len(children(master)) == 2 and not set(workers) & set(children(master)),
                 15, what="the workers to be replaced after HUP")
        assert running_pid() == master and serves()
        workers = children(master)
        os.kill(master, signal.SIGKILL)
        wait_for(lambda: running_pid() not in (None, master), 20,
                 what="supervisord to restart the killed master")
        wait_for(lambda: not any(alive(p) for p in workers), 5, what="the old workers to die")
        wait_for(serves, 15, what="the restarted master to serve")
        master = running_pid()
        workers = children(master)
        out = ctl("stop", "app")
        assert "app: stopped" in out, out
        assert re.search(r"^app\s+STOPPED", ctl("status"), re.M)
        log = (tmp_path / "app.log").read_text()
        assert "Handling signal: term; graceful stop" in log and "Shutting down: Master" in log
        slog = (tmp_path / "supervisord.log").read_text()
        assert "stopped: app (exit status 0)" in slog and "killing 'app'" not in slog, slog
        assert not alive(master) and not any(alive(p) for p in workers)
        assert not sock.exists()
    finally:
        ctl("shutdown")
        try:
            sup.wait(20)
        except subprocess.TimeoutExpired:
            sup.kill()
            sup.wait()



# --- preload ----------------------------------------------------------------


def test_preload_imports_once_in_master_and_hup_reexecs(start_server, tmp_path):
    imports = tmp_path / "imports.log"
    write_app(tmp_path, "v1")
    env = dict(NO_PYC, IMPORT_LOG=str(imports))
    # A relative --chdir: the master changes directory to import the app,
    # and the re-exec must still find everything relative to where it began.
    s = start_server("vapp:app", "--preload", "-w", "2", "--chdir", tmp_path.name, cwd=tmp_path.parent,
                     env=env)
    assert imports.read_text().split() == [str(s.pid), "v1"]
    old = s.worker_pids()
    assert get(s.port) == (200, b"v1")
    status, pid = get(s.port, "/pid")
    assert int(pid) in old and int(pid) != s.pid
    with Load(s.port) as load:
        wait_for(lambda: load.count() > 50, 10, what="load to start")
        write_app(tmp_path, "version-2")
        s.kill(signal.SIGHUP)
        s.wait_log(r"Reload complete", timeout=15)
        wait_for(lambda: not set(old) & set(s.worker_pids()), 10, what="old workers to exit")
        done = time.monotonic()
        wait_for(lambda: len(load.bodies_after(done)) > 30, 10, what="requests after the reload")
    assert load.failures == [], load.failures[:5]
    assert set(load.bodies_after(done)) == {b"version-2"}
    lines = imports.read_text().splitlines()
    assert lines == [f"{s.pid} v1", f"{s.pid} version-2"], lines


def test_hup_rereads_config_file_including_preload(start_server, tmp_path):
    imports = tmp_path / "imports.log"
    write_app(tmp_path, "v1")
    conf = tmp_path / "ferricorn.toml"
    conf.write_text("workers = 2\n")
    s = start_server("vapp:app", "-c", str(conf), cwd=tmp_path, env=dict(NO_PYC, IMPORT_LOG=str(imports)))
    assert len(s.worker_pids()) == 2
    # More workers, and the app imported once by the master from now on.
    conf.write_text("workers = 3\npreload_app = true\n")
    s.kill(signal.SIGHUP)
    s.wait_log(r"Upgraded in place", timeout=10)
    s.wait_log(r"Reload complete", timeout=15)
    wait_for(lambda: len(s.worker_pids()) == 3, 10, what="3 workers")
    assert f"{s.pid} v1" in imports.read_text().splitlines()
    assert get(s.port) == (200, b"v1")
    # And back: workers = 1, no preload.
    conf.write_text("workers = 1\n")
    s.kill(signal.SIGHUP)
    s.wait_log(r"Upgraded in place", count=2, timeout=10)  # preload was on: a re-exec
    s.wait_log(r"Reload complete", count=2, timeout=15)
    wait_for(lambda: len(s.worker_pids()) == 1, 10, what="1 worker")
    assert get(s.port) == (200, b"v1")


def test_preload_hup_with_broken_app_keeps_serving(start_server, tmp_path):
    write_app(tmp_path, "v1")
    s = start_server("vapp:app", "--preload", "-w", "2", cwd=tmp_path, env=NO_PYC)
    old = s.worker_pids()
    with Load(s.port) as load:
        wait_for(lambda: load.count() > 50, 10, what="load to start")
        write_broken_app(tmp_path)
        s.kill(signal.SIGHUP)
        s.wait_log(r"Reload failed \(the application failed to load in the master\)", timeout=15)
        t = time.monotonic()
        wait_for(lambda: len(load.bodies_after(t)) > 50, 10, what="requests after the failed reload")
        assert s.worker_pids() == old
        write_app(tmp_path, "v3")
        s.kill(signal.SIGHUP)
        s.wait_log(r"Reload complete", timeout=15)
        wait_for(lambda: not set(old) & set(s.worker_pids()), 10, what="old workers to exit")
        done = time.monotonic()
        wait_for(lambda: len(load.bodies_after(done)) > 30, 10, what="requests after the reload")
    assert load.failures == [], load.failures[:5]
    assert set(load.bodies_after(done)) == {b"v3"}
    assert "SyntaxError" in s.log()
    assert s.proc.poll() is None


# --- pid file, process titles -------------------------------------------------


def test_pidfile_and_process_titles(start_server, tmp_path):
    pidfile = tmp_path / "run" / "app.pid"
    pidfile.parent.mkdir()
    s = start_server("basic:app", "-w", "2", "-p", str(pidfile), "-n", "shop")
    assert pidfile.read_text().strip() == str(s.pid)
    assert args_of(s.pid) == "ferricorn: master [shop]"
    for w in s.worker_pids():
        assert args_of(w) == "ferricorn: worker [shop]"
    assert s.stop() == 0
    assert not pidfile.exists()


def test_relative_paths_are_relative_to_chdir(start_server, tmp_path):
    # Gunicorn changes into --chdir right after reading its settings, so a
    # relative pid file, log file or unix socket lands there, not where
    # the server was started. The config file itself is found from the
    # start directory, on a HUP too.
    start, app = tmp_path / "start", tmp_path / "app"
    start.mkdir()
    app.mkdir()
    shutil.copy(APPS / "basic.py", app / "basic.py")
    (start / "c.toml").write_text('proc_name = "one"\n')
    s = start_server("basic:app", "-c", "c.toml", "--chdir", "../app", "-p", "app.pid",
                     "--error-logfile", "error.log", "--access-logfile", "access.log",
                     "-b", "unix:app.sock", cwd=start, ready=False)
    err = app / "error.log"
    wait_for(lambda: err.exists() and "workers are serving" in err.read_text(), 20, what="boot")
    s.port = int(re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", err.read_text()).group(1))
    assert (app / "app.pid").read_text().strip() == str(s.pid)
    assert get(s.port, "/")[0] == 200
    c = socket.socket(socket.AF_UNIX)
    c.settimeout(5)
    c.connect(str(app / "app.sock"))
    c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert c.recv(100).startswith(b"HTTP/1.1 200 ")
    c.close()
    wait_for(lambda: (app / "access.log").exists() and "GET / " in (app / "access.log").read_text(),
             5, what="the access log in --chdir")
    assert sorted(p.name for p in start.iterdir()) == ["c.toml"]
    (start / "c.toml").write_text('proc_name = "two"\n')
    s.kill(signal.SIGHUP)
    wait_for(lambda: "Reload complete" in err.read_text(), 15, what="the reload")
    assert "Reload:" not in err.read_text()
    assert args_of(s.pid) == "ferricorn: master [two]"
    assert s.stop() == 0
    assert not (app / "app.pid").exists() and not (app / "app.sock").exists()


def test_hup_moves_the_pidfile_and_renames_the_title(start_server, tmp_path):
    # Gunicorn's reload unlinks the old pid file, writes the new one and
    # sets the title from the new proc_name.
    conf = tmp_path / "c.toml"
    conf.write_text('pidfile = "a.pid"\nproc_name = "first"\n')
    shutil.copy(APPS / "basic.py", tmp_path / "basic.py")
    s = start_server("basic:app", "-w", "1", "-c", str(conf), "--chdir", str(tmp_path))
    assert (tmp_path / "a.pid").read_text().strip() == str(s.pid)
    assert args_of(s.pid) == "ferricorn: master [first]"
    conf.write_text('pidfile = "b.pid"\nproc_name = "second"\n')
    s.kill(signal.SIGHUP)
    s.wait_log(r"Reload complete", timeout=15)
    assert not (tmp_path / "a.pid").exists()
    assert (tmp_path / "b.pid").read_text().strip() == str(s.pid)
    assert args_of(s.pid) == "ferricorn: master [second]"
    wait_for(lambda: [args_of(w) for w in s.worker_pids()] == ["ferricorn: worker [second]"], 10,
             what="the new generation's title")
    assert s.stop() == 0
    assert not (tmp_path / "b.pid").exists()


def unix_get(path):
    c = socket.socket(socket.AF_UNIX)
    c.settimeout(5)
    try:
        c.connect(str(path))
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return c.recv(100)
    finally:
        c.close()


def test_hup_with_another_bind_listens_on_the_new_list(start_server, tmp_path):
    # Gunicorn's reload: when the configured addresses change, the new
    # workers listen on the new ones and the old ones are closed. An
    # address named before and after keeps its socket.
    conf = tmp_path / "c.toml"
    conf.write_text('bind = ["unix:a.sock", "unix:kept.sock"]\n')
    shutil.copy(APPS / "basic.py", tmp_path / "basic.py")
    s = start_server("basic:app", "-w", "1", "-c", str(conf), "--chdir", str(tmp_path), bind=False)
    assert unix_get(tmp_path / "a.sock").startswith(b"HTTP/1.1 200 ")
    kept_inode = (tmp_path / "kept.sock").stat().st_ino
    (old_worker,) = s.worker_pids()

    conf.write_text('bind = ["unix:kept.sock", "127.0.0.1:0"]\n')
    s.kill(signal.SIGHUP)
    log = s.wait_log(r"Reload complete", timeout=15)
    wait_for(lambda: not alive(old_worker), 10, what="the old worker to go")
    assert not (tmp_path / "a.sock").exists()
    assert (tmp_path / "kept.sock").stat().st_ino == kept_inode
    assert unix_get(tmp_path / "kept.sock").startswith(b"HTTP/1.1 200 ")
    port = int(re.findall(r"Listening at: http://127\.0\.0\.1:(\d+)", log)[-1])
    assert get(port, "/")[0] == 200
    assert "Reload: cannot listen" not in log

    # An address that cannot be bound: the running list stays, and so
    # does the next reload's idea of it.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        conf.write_text('bind = ["unix:c.sock", "127.0.0.1:%d"]\n' % taken.getsockname()[1])
        s.kill(signal.SIGHUP)
        log = s.wait_log(r"Reload complete", timeout=15, count=2)
        assert re.search(r"Reload: cannot listen: bind .*127\.0\.0\.1:%d.*keeping the sockets"
                         % taken.getsockname()[1], log), log
        assert not (tmp_path / "c.sock").exists()
        assert unix_get(tmp_path / "kept.sock").startswith(b"HTTP/1.1 200 ")
        assert get(port, "/")[0] == 200
    finally:
        taken.close()
    assert s.stop() == 0
    assert not (tmp_path / "kept.sock").exists()


def test_pidfile_of_a_live_process_is_refused_and_not_removed(start_server, tmp_path):
    # As Gunicorn's: a pid file naming a live process means another
    # instance owns it (two sharing one would remove each other's file).
    pidfile = tmp_path / "app.pid"
    s = start_server("basic:app", "-p", str(pidfile))
    t = start_server("basic:app", "-p", str(pidfile), ready=False)
    assert t.proc.wait(10) == 1
    assert re.search(r"Already running on PID %d" % s.pid, t.log()), t.log()
    assert pidfile.read_text().strip() == str(s.pid)
    # A stale one (no such process) is replaced.
    assert s.stop() == 0 and not pidfile.exists()
    pidfile.write_text("999999999\n")
    u = start_server("basic:app", "-p", str(pidfile))
    assert pidfile.read_text().strip() == str(u.pid)
    # On exit the file goes only if it still names us.
    pidfile.write_text("%d\n" % os.getpid())
    assert u.stop() == 0
    assert pidfile.read_text().strip() == str(os.getpid())


def test_process_title_longer_than_the_command_line(start_server, tmp_path):
    # The name comes from the config file, so the title is longer than the
    # command line: it takes the environment's space, and the environment
    # the app sees is intact.
    name = "a-long-process-name-" + "x" * 120
    conf = tmp_path / "c.toml"
    conf.write_text(f'proc_name = "{name}"\n')
    s = start_server("basic:app", "-w", "1", "-c", str(conf), env={"FERRICORN_TEST_MARK": "kept"})
    assert len(" ".join(s.args)) < len(f"ferricorn: master [{name}]")
    assert args_of(s.pid) == f"ferricorn: master [{name}]"
    (w,) = s.worker_pids()
    assert args_of(w) == f"ferricorn: worker [{name}]"
    env = json.loads(get(s.port, "/environ")[1])
    assert env["HTTP_HOST"].startswith("127.0.0.1")
    # The app's process environment survived the move.
    status, body = get(s.port, "/env?FERRICORN_TEST_MARK")
    assert (status, body) == (200, b"kept")


# --- privileges -----------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_user_group_drop(start_server):
    d = tempfile.mkdtemp(prefix="ferricorn-user-")
    try:
        os.chmod(d, 0o755)
        shutil.copy(APPS / "basic.py", d)
        os.chmod(Path(d) / "basic.py", 0o644)
        s = start_server("basic:app", "-w", "2", "--user", "nobody", "--group", "nogroup", cwd=d,
                         env=NO_PYC)
        workers = s.worker_pids()
        assert proc_status(s.pid, "Uid")[:2] == ["0", "0"]
        for w in workers:
            assert proc_status(w, "Uid") == ["65534"] * 4
            assert proc_status(w, "Gid") == ["65534"] * 4
        status, pid = get(s.port, "/pid")
        assert status == 200 and int(pid) in workers
        # Dropping privileges must not lose the parent-death signal.
        s.kill(signal.SIGKILL)
        s.proc.wait(5)
        wait_for(lambda: not any(alive(p) for p in workers), 1.0, what="workers to die with the master")
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_user_group_workers_reopen_logs_on_usr1(start_server):
    d = tempfile.mkdtemp(prefix="ferricorn-user-")
    try:
        os.chmod(d, 0o755)
        shutil.copy(APPS / "basic.py", d)
        s, err, acc = start_logging_to_files(start_server, d, "--user", "nobody", "--group", "nogroup",
                                             cwd=d, env=NO_PYC)
        assert all(proc_status(w, "Uid")[0] == "65534" for w in s.worker_pids())
        rotate_and_check(s, err, acc)
        assert s.stop() == 0
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user first")
def test_user_switch_without_root_is_a_config_error():
    def become_nobody():
        os.setgid(65534)
        os.setuid(65534)

    p = subprocess.run([BIN, "-b", "127.0.0.1:0", "--user", "root", "basic:app"], cwd="/",
                       env=dict(os.environ, PYTHONPATH=str(APPS)), capture_output=True, text=True,
                       timeout=10, preexec_fn=become_nobody)
    assert p.returncode == 2, p.stderr
    assert "`user`" in p.stderr and "needs root" in p.stderr
    assert "Booting worker" not in p.stderr


GROUPS_APP = """\
import os
def app(environ, start_response):
    body = ("%d %d %s" % (os.getuid(), os.getgid(), sorted(os.getgroups()))).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_supplementary_groups_only_with_initgroups(start_server, tmp_path):
    # Gunicorn's --initgroups: the user's groups only when asked for; and
    # never root's own (group 0) in the workers.
    # a directory nobody can read (pytest's tmp_path is root's alone)
    where = tempfile.mkdtemp(dir="/tmp")
    os.chmod(where, 0o755)
    try:
        with open(os.path.join(where, "groupsapp.py"), "w") as f:
            f.write(GROUPS_APP)
        s = start_server("groupsapp:app", "-u", "nobody", "-g", "nogroup", cwd=where)
        assert get(s.port) == (200, b"65534 65534 []")
        s = start_server("groupsapp:app", "-u", "nobody", "-g", "nogroup", "--initgroups", cwd=where)
        assert get(s.port) == (200, b"65534 65534 [65534]")
        assert "initgroups" not in s.log(), "not among the ignored options"
    finally:
        shutil.rmtree(where)


def test_user_and_group_already_in_effect_are_no_ops(tmp_path):
    # An image with `USER nobody` and a config written for root (`-u nobody
    # -g nogroup`): nothing to switch, so it serves, as Gunicorn does.
    def become_nobody():
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)

    log = tmp_path / "log"
    with open(log, "wb") as out:
        p = subprocess.Popen([BIN, "-b", "127.0.0.1:0", "-u", "65534", "-g", "65534", "basic:app"],
                             cwd="/", env=dict(os.environ, PYTHONPATH=str(APPS)), stdout=out,
                             stderr=subprocess.STDOUT, preexec_fn=become_nobody)
    try:
        wait_for(lambda: "workers are serving" in log.read_text() or p.poll() is not None, 20,
                 what="the workers to serve")
        text = log.read_text()
        assert "workers are serving" in text, text
        port = int(re.search(r"Listening at: http://127.0.0.1:(\d+)", text).group(1))
        assert get(port)[0] == 200
    finally:
        p.terminate()
        assert p.wait(10) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_workers_that_cannot_drop_privileges_stop_the_start(tmp_path):
    # A worker that cannot become --user fails to boot (Gunicorn's
    # WORKER_BOOT_ERROR): the master stops with status 3 instead of
    # respawning it forever. A capability-less root cannot setgid.
    p = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", BIN, "-b",
                        "127.0.0.1:0", "-u", "nobody", "basic:app"], cwd=str(APPS),
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 3, p.stderr
    assert "Cannot drop privileges" in p.stderr and "Worker failed to boot" in p.stderr


QUIT_APP = """\
import atexit, os, sys
MARK = os.environ["ATEXIT_MARK"]
atexit.register(lambda: open(MARK, "a").write("%d\\n" % os.getpid()))
def app(environ, start_response):
    print("printed by", os.getpid())  # stdout is a file: block-buffered
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
def test_fast_stop_flushes_stdout_and_runs_atexit(start_server, tmp_path, sig):
    # Gunicorn's worker leaves a fast stop by sys.exit: what the app printed
    # reaches the log and its atexit handlers run.
    (tmp_path / "quitapp.py").write_text(QUIT_APP)
    mark = tmp_path / "atexit"
    s = start_server("quitapp:app", "-w", "2", cwd=tmp_path,
                     env={"ATEXIT_MARK": str(mark), "PYTHONUNBUFFERED": None})
    workers = s.worker_pids()
    assert get(s.port)[0] == 200
    s.kill(sig)
    assert s.proc.wait(5) == 0
    assert re.search(r"^printed by \d+$", s.log(), re.M), s.log()
    assert sorted(int(x) for x in mark.read_text().split()) == workers


def test_fast_stop_during_a_graceful_one_still_leaves_through_python(start_server, tmp_path):
    # TERM, and while the worker drains (a client is still sending its
    # body), QUIT: the worker still flushes print() output and runs atexit.
    (tmp_path / "quitapp.py").write_text(QUIT_APP)
    mark = tmp_path / "atexit"
    s = start_server("quitapp:app", "-w", "1", cwd=tmp_path,
                     env={"ATEXIT_MARK": str(mark), "PYTHONUNBUFFERED": None})
    [worker] = s.worker_pids()
    assert get(s.port)[0] == 200
    slow = socket.create_connection(("127.0.0.1", s.port))
    try:
        slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf")
        time.sleep(0.3)
        s.kill(signal.SIGTERM)
        time.sleep(0.5)
        assert s.proc.poll() is None, "the worker should still be draining"
        s.kill(signal.SIGQUIT)
        assert s.proc.wait(5) == 0
    finally:
        slow.close()
    assert re.search(r"^printed by \d+$", s.log(), re.M), s.log()
    assert mark.read_text().split() == [str(worker)]


def test_app_subprocesses_inherit_no_ignored_signals(start_server, tmp_path):
    # The worker ignores the master's signals with a handler, not SIG_IGN,
    # which a child would inherit across exec (a helper that survives HUP,
    # a shell script that cannot trap it).
    (tmp_path / "sigapp.py").write_text(
        "import subprocess\n"
        "def app(environ, start_response):\n"
        "    out = subprocess.run(['grep', 'SigIgn', '/proc/self/status'],\n"
        "                         capture_output=True).stdout\n"
        "    start_response('200 OK', [('Content-Length', str(len(out)))])\n"
        "    return [out]\n")
    s = start_server("sigapp:app", "-w", "1", cwd=tmp_path)
    st, body = get(s.port)
    assert st == 200
    ignored = int(body.split()[1], 16)
    for sig in (signal.SIGHUP, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH):
        assert not ignored & (1 << (sig - 1)), (sig, body)


# --- stopping -------------------------------------------------------------------


def test_term_finishes_in_flight_and_refuses_new(start_server):
    s = start_server("basic:app", "-w", "2")
    inflight = in_background(get, s.port, "/sleep?1.5")
    time.sleep(0.3)
    t0 = time.monotonic()
    s.kill(signal.SIGTERM)
    time.sleep(0.2)
    # New connections are refused while the in-flight request finishes.
    with pytest.raises((ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected)):
        get(s.port, "/", timeout=2)
    assert inflight() == (200, b"slept")
    assert s.proc.wait(10) == 0
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGQUIT])
def test_stop_logs_no_errors(start_server, sig):
    # Stopping is routine: the master shuts its sockets down first, and the
    # workers must not report that as a failure (it once logged `accept:
    # Invalid argument` hundreds of times per stop).
    for _ in range(3):
        s = start_server("basic:app", "-w", "4")
        assert get(s.port, "/")[0] == 200
        s.kill(sig)
        assert s.proc.wait(10) == 0
        assert "[ERROR]" not in s.log() and "[WARNING]" not in s.log(), s.log()[-2000:]


def test_response_finished_after_term_says_close(start_server):
    # A keep-alive request in flight when TERM comes is answered, with
    # `Connection: close`: the worker is closing the connection after it.
    s = start_server("basic:app", "-w", "1")
    c = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    try:
        c.sendall(b"GET /sleep?1 HTTP/1.1\r\nHost: h\r\n\r\n")
        time.sleep(0.3)
        s.kill(signal.SIGTERM)
        data = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        c.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b"slept", data
    assert b"connection: close" in head.lower(), head
    assert s.proc.wait(10) == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
def test_int_quit_stop_fast(start_server, sig):
    s = start_server("basic:app", "-w", "2")
    workers = s.worker_pids()
    inflight = in_background(get, s.port, "/sleep?10", 15)
    time.sleep(0.3)
    t0 = time.monotonic()
    s.kill(sig)
    assert s.proc.wait(5) == 0
    assert time.monotonic() - t0 < 2
    # The request cut short is answered 500, as Gunicorn's sync worker
    # answers the SystemExit raised in the app: not an empty reply.
    assert inflight() == (500, b"500 Internal Server Error\n")
    assert not any(alive(p) for p in workers)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_unix_socket_belongs_to_the_workers_user_and_group(start_server, tmp_path):
    """Gunicorn chowns the unix socket it binds to --user/--group, so with
    `-m 007 -u U -g G` the group (a proxy in it) may connect and others may not."""
    os.chmod(tmp_path, 0o755)
    path = tmp_path / "s.sock"
    start_server("basic:app", "-b", f"unix:{path}", "-m", "007", "--user", "nobody",
                 "--group", "nogroup", bind=False, env=NO_PYC)
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert st.st_mode & 0o777 == 0o770, oct(st.st_mode)


def test_workers_stopped_by_hand_are_replaced_at_once(start_server):
    """A worker sent TERM by hand finishes and exits 0: not a crash, so however soon
    after start it happens, the master replaces it at once (Gunicorn: no back-off)."""
    s = start_server("basic:app", "-w", "3")
    for _ in range(3):
        before = s.worker_pids()
        assert len(before) == 3
        os.kill(before[0], signal.SIGTERM)
        wait_for(lambda: len(s.worker_pids()) == 3 and before[0] not in s.worker_pids(), 3.0,
                 what="the worker replaced")
    assert "keep dying" not in s.log(), s.log()
    assert s.request()[0] == 200


def test_requests_on_keepalive_connections_survive_worker_recycling(start_server):
    """A worker that recycles (max_requests) drains: a request already sent on one of its
    idle keep-alive connections is served (with Connection: close), not reset."""
    s = start_server("basic:app", "-w", "2", "--max-requests", "10")
    failures, done = [], []

    def client():
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        for _ in range(40):
            try:
                c.request("GET", "/")
                r = c.getresponse()
                r.read()
                done.append(r.status)
                if r.getheader("connection", "").lower() == "close":
                    c.close()
                    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
            except (http.client.HTTPException, OSError) as e:
                failures.append(repr(e))
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        c.close()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # An idle connection closed in the instant its next request is on the way is HTTP's
    # keep-alive race (RFC 9112 §9.3.1: clients retry); one that had its request in the
    # server's buffer must never be reset. Allow the race a little, not the buffered case.
    assert len(done) + len(failures) == 320
    assert len(failures) <= 8, (len(failures), failures[:5])


def test_worker_sent_segv_dies_and_is_replaced(start_server):
    """A Python process dies of SIGSEGV/SIGBUS (after faulthandler's dump); so does a
    worker: the master logs it and replaces it, as for a real crash."""
    s = start_server("basic:app", "-w", "1")
    for sig in (signal.SIGSEGV, signal.SIGBUS):
        (w,) = s.worker_pids()
        os.kill(w, sig)
        wait_for(lambda: not alive(w), 5.0, what=f"the worker to die of {sig.name}")
        s.wait_log(rf"Worker \(pid:{w}\) was sent {sig.name}!")
        wait_for(lambda: len(s.worker_pids()) == 1, 5.0, what="a new worker")
        wait_for(lambda: s.request()[0] == 200, 5.0, what="serving again")


def test_reload_with_preload_is_warned_about(start_server):
    s = start_server("basic:app", "--reload", "--preload")
    assert "--reload with --preload" in s.log()


def test_silent_worker_is_killed_after_timeout(start_server):
    """Gunicorn's --timeout: "Workers silent for more than this many seconds are killed
    and restarted." A stopped worker (no heartbeat, no request) is replaced soon after
    its -t 2 seconds."""
    s = start_server("basic:app", "-w", "1", "-t", "2")
    (w,) = s.worker_pids()
    t0 = time.monotonic()
    stop_until_killed(w)
    took = time.monotonic() - t0
    assert took < 6.0, took
    s.wait_log(r"WORKER TIMEOUT")
    wait_for(lambda: s.request()[0] == 200, 5.0, what="serving again")


def test_a_recycled_worker_ends_a_crash_loop(start_server):
    """Two quick deaths (OOM kills) start the back-off; a worker that then
    reaches --max-requests and leaves proves the code works, so the count
    starts over: workers recycling faster than the 5 s it otherwise takes
    to reset must not keep the pool throttled."""
    s = start_server("basic:app", "-w", "1", "--max-requests", "5")
    for _ in range(2):
        pid = s.worker_pids()[0]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: s.worker_pids() and s.worker_pids()[0] != pid, 5.0, what="a respawn")
    s.wait_log(r"keep dying right after start \(2 in a row\)")
    recycled = s.worker_pids()[0]
    for _ in range(5):
        assert get(s.port, "/pid")[0] == 200
    wait_for(lambda: s.worker_pids() and s.worker_pids()[0] != recycled, 5.0, what="the recycle")
    s.wait_log(r"Autorestarting worker after 5 requests")
    # One more kill is a first quick death again: replaced at once, no back-off.
    pid = s.worker_pids()[0]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: s.worker_pids() and s.worker_pids()[0] != pid, 5.0, what="a respawn")
    time.sleep(0.3)
    assert "(3 in a row)" not in s.log(), s.log()
    assert get(s.port, "/pid")[0] == 200


def test_a_paced_keepalive_client_of_a_recycling_worker_is_answered(start_server):
    """A draining worker keeps an idle keep-alive connection open for the
    next request its client sends (up to the keep-alive time, 2 s) and
    answers it with Connection: close; a client pausing 0.8 s between
    requests (a pool behind a proxy) loses nothing to the recycle."""
    s = start_server("basic:app", "-w", "1", "--max-requests", "3")
    worker = s.worker_pids()[0]
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
    c.request("GET", "/pid")
    r = c.getresponse()
    assert (r.status, r.read()) == (200, str(worker).encode())
    for _ in range(2):  # the worker's 2nd and 3rd requests: it starts to drain
        assert get(s.port, "/pid") == (200, str(worker).encode())
    time.sleep(0.8)
    c.request("GET", "/pid")
    r = c.getresponse()
    assert (r.status, r.read()) == (200, str(worker).encode())
    assert r.getheader("Connection") == "close"
    c.close()
    wait_for(lambda: worker not in s.worker_pids(), 5.0, what="the recycled worker gone")
