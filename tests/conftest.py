"""Shared fixtures: start the real ferricorn binary on port 0 and talk to it
with real clients.

`tests/run` exports FERRICORN_BIN (the release build) and FERRICORN_TEST_VENV
(a venv made with /usr/bin/python3, holding Flask and Django).
"""
import http.client
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APPS = HERE / "apps"
BIN = os.environ.get("FERRICORN_BIN", str(ROOT / "target" / "release" / "ferricorn"))
VENV = os.environ.get("FERRICORN_TEST_VENV", str(ROOT / "target" / "testenv"))


class Server:
    """A running ferricorn master, started by `start_server`."""

    def __init__(self, args, cwd, env, ready=True, timeout=20):
        self.logfile = tempfile.NamedTemporaryFile(prefix="ferricorn-test-", suffix=".log", delete=False)
        self.args = [BIN] + list(args)
        full_env = dict(os.environ)
        # A value of None removes the variable (say, systemd's).
        for k, v in (env or {}).items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = v
        self.proc = subprocess.Popen(
            self.args,
            cwd=str(cwd),
            env=full_env,
            stdout=self.logfile,
            stderr=subprocess.STDOUT,
        )
        self.port = None
        self.addresses = []
        if ready:
            self.wait_log(r"workers are serving", timeout=timeout)
            self.addresses = re.findall(r"Listening at: (\S+)", self.log())
            for a in self.addresses:
                m = re.match(r"http://(?:\[[^\]]+\]|[\d.]+):(\d+)", a)
                if m:
                    self.port = int(m.group(1))
                    break

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        with open(self.logfile.name, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_log(self, pattern, timeout=20, count=1):
        """Wait until `pattern` occurs `count` times in the log; return the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if len(re.findall(pattern, text)) >= count:
                return text
            if self.proc.poll() is not None:
                text = self.log()
                if len(re.findall(pattern, text)) >= count:
                    return text
                raise AssertionError(
                    f"server exited ({self.proc.returncode}) before {pattern!r}:\n{text}"
                )
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {pattern!r}:\n{self.log()}")

    def worker_pids(self):
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.pid)], capture_output=True, text=True
        ).stdout
        return sorted(int(x) for x in out.split())

    def conn(self, timeout=10):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method="GET", path="/", body=None, headers=None, timeout=10):
        """One request on a fresh connection: (status, headers dict, body)."""
        c = self.conn(timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def raw(self, data, timeout=3, shut=False):
        """Send raw bytes, read until the server closes (or timeout)."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        try:
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
            out = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                out += chunk
            return out
        finally:
            s.close()

    def kill(self, sig):
        os.kill(self.pid, sig)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self):
        self.stop(signal.SIGKILL if self.proc.poll() is None else signal.SIGTERM, timeout=5)
        # Workers die with their master (PDEATHSIG); give them a moment.
        try:
            os.unlink(self.logfile.name)
        except OSError:
            pass


@pytest.fixture
def start_server():
    """start_server(app, *args, cwd=APPS, env=None, bind=True, ready=True) -> Server"""
    servers = []

    def start(app, *args, cwd=APPS, env=None, bind=True, ready=True, timeout=20):
        argv = list(args)
        if bind:
            argv = ["-b", "127.0.0.1:0"] + argv
        if app is not None:
            argv.append(app)
        s = Server(argv, cwd, env, ready=ready, timeout=timeout)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def venv():
    return VENV


def parse_response(data):
    """Split raw bytes into a list of (status, headers, body) for simple
    Content-Length responses (enough for the framing tests)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower().decode()] = v.strip().decode("latin-1")
        n = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out
