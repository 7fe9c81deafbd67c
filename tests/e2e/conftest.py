"""Fixtures of ferricorn's end-to-end tests: the .deb, a booted container, HTTP helpers.

Run (as root, from the repository):
    target/testenv/bin/python -m pytest tests/e2e -v

FERRICORN_E2E_DEB=path.deb  the host suite's (bookworm's) package, instead of building one
FERRICORN_E2E_SUITES=bookworm,trixie   the Debian releases to test (default: all)
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

import container as ct

REPO = ct.REPO


# ---------------------------------------------------------------------------
# the Debian releases, the package of each, a booted container of each

@pytest.fixture(scope="session", params=ct.suites_under_test(), ids=lambda s: s.name)
def suite(request) -> ct.Suite:
    """Each Debian release the package targets (FERRICORN_E2E_SUITES); every e2e test runs per suite."""
    return request.param


@pytest.fixture(scope="session")
def deb(suite) -> Path:
    """The .deb of SUITE: FERRICORN_E2E_DEB for the host's suite if set, else built now.

    The host's suite builds with debian/build-deb (lintian skipped: it is its
    own test); another suite builds inside its cached build root.
    """
    given = os.environ.get("FERRICORN_E2E_DEB")
    if given and suite.name == ct.HOST_SUITE:
        path = Path(given).resolve()
        assert path.is_file(), f"FERRICORN_E2E_DEB={given} does not exist"
        return path
    try:
        return ct.build_deb(suite)
    except ct.CannotBoot as e:
        msg = ct.loud(f"SKIPPING the {suite.name} package: this machine cannot make its build root: {e}")
        print(msg)
        pytest.skip(msg)
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def container(suite):
    c = ct.Container(suite)
    try:
        c.start()
    except ct.CannotBoot as e:
        msg = ct.loud(f"SKIPPING the systemd e2e tests ({suite.name}): this machine cannot boot a container: {e}")
        print(msg)
        pytest.skip(msg)
    try:
        yield c
    finally:
        try:
            r = c.run("journalctl -b --no-pager -o short-monotonic", check=False, timeout=60)
            out = ct.E2E_DIR / f"last-journal-{suite.name}.txt"
            out.write_text(r.stdout)
            ct.log(f"container journal saved to {out}")
        except Exception as e:  # noqa: BLE001 - diagnostics must not mask the result
            ct.log(f"could not save the journal: {e}")
        c.stop()


# ---------------------------------------------------------------------------
# systemd helpers

def show(c: ct.Container, unit: str, *props: str) -> dict[str, str]:
    args = " ".join(f"-p {p}" for p in props)
    out = c.run(f"systemctl show {args} {unit}").stdout
    d = {}
    for line in out.splitlines():
        k, _, v = line.partition("=")
        d[k] = v
    return d


def diag(c: ct.Container, *units: str, lines: int = 60) -> str:
    """systemctl status + the journal tail of UNITS, for assertion messages."""
    parts = []
    for u in units:
        parts.append(c.run(f"systemctl status --no-pager -l {u}", check=False).stdout)
        parts.append(c.run(f"journalctl -u {u} -n {lines} --no-pager", check=False).stdout)
    return "\n".join(parts)


def journal(c: ct.Container, unit: str, *matches: str, since_cursor: str | None = None) -> list[dict]:
    """Entries of UNIT (journalctl -u) as dicts; MATCHES like 'HTTP_STATUS=500'."""
    c.run("journalctl --sync", check=False)
    cmd = f"journalctl -u {unit} -o json --no-pager "
    if since_cursor:
        cmd += f"--after-cursor='{since_cursor}' "
    cmd += " ".join(matches)
    out = c.run(cmd, check=False).stdout
    entries = []
    for line in out.splitlines():
        line = line.strip()
        if not line:
            continue
        e = json.loads(line)
        for k, v in list(e.items()):
            if isinstance(v, list) and v and all(isinstance(x, int) for x in v):
                e[k] = bytes(v).decode(errors="replace")  # binary / non-UTF-8 field
        entries.append(e)
    return entries


def journal_cursor(c: ct.Container) -> str:
    c.run("journalctl --sync", check=False)
    out = c.run("journalctl -n 1 -o json --no-pager", check=False).stdout.strip()
    return json.loads(out.splitlines()[-1])["__CURSOR"] if out else ""


def wait_for(pred, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# ---------------------------------------------------------------------------
# HTTP from the host (the container shares the host's network namespace)

def free_port() -> int:
    """A free high loopback port (checked on the host, which is the container's network too)."""
    import random
    for _ in range(200):
        port = random.randint(30000, 60000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def http_get(port: int, path: str, timeout: float = 10) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close", "User-Agent": "ferricorn-e2e"})
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def wait_http(port: int, path: str = "/", expect: int = 200, timeout: float = 30) -> str:
    """Poll until GET PATH answers EXPECT; returns the body."""
    last: object = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, body = http_get(port, path, timeout=max(1.0, deadline - time.monotonic()))
            if status == expect:
                return body
            last = (status, body[:200])
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"GET {path} on port {port} did not answer {expect} within {timeout}s (last: {last!r})")


class Load:
    """Client threads looping GETs (new connection each) until stop(); bounded in time and count.

    Counts successes (200), refused connections, and every other failure
    (timeouts, resets, non-200), keeping a sample of the errors.
    """

    def __init__(self, port: int, path: str = "/", threads: int = 4, max_seconds: float = 90,
                 max_requests: int = 200_000):
        self.port, self.path, self.nthreads = port, path, threads
        self.max_seconds, self.max_requests = max_seconds, max_requests
        self.ok = self.refused = self.failed = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _loop(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self.ok + self.refused + self.failed >= self.max_requests:
                    return
            try:
                status, body = http_get(self.port, self.path, timeout=20)
                with self._lock:
                    if status == 200:
                        self.ok += 1
                    else:
                        self.failed += 1
                        self._note(f"HTTP {status}: {body[:120]!r}")
            except ConnectionRefusedError as e:
                with self._lock:
                    self.refused += 1
                    self._note(f"refused: {e}")
            except Exception as e:  # noqa: BLE001 - every failure counts
                with self._lock:
                    self.failed += 1
                    self._note(f"{type(e).__name__}: {e}")

    def _note(self, msg: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(f"{time.strftime('%H:%M:%S')} {msg}")

    def start(self) -> "Load":
        for _ in range(self.nthreads):
            t = threading.Thread(target=self._loop, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> "Load":
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return self

    def __str__(self) -> str:
        return f"ok={self.ok} refused={self.refused} failed={self.failed} errors={self.errors}"
