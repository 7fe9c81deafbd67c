#!/usr/bin/env python3
"""A real systemd in a throwaway Debian container, for ferricorn's e2e tests.

PID 1 of the machines this project runs on is not systemd, but a full systemd
boots in systemd-nspawn here (as root). This module

* installs the host tools it needs (systemd-container, debootstrap) if missing;
* knows the Debian releases ("suites") the package targets: bookworm (Debian
  12, the host's) and trixie (Debian 13, systemd 257, Python 3.13);
* debootstraps a minbase root of a suite once and caches it under
  target/e2e/SUITE-root (provisioned with a Flask virtualenv at
  /srv/app/venv, so tests need no network for that);
* builds the .deb of a suite: on the host for bookworm, and for any other
  suite inside a cached build root target/e2e/SUITE-build (that suite's
  compilers, python3-dev and lintian; the host's Rust toolchain lent by bind
  mounts), into target/SUITE/debian/;
* boots a fresh copy of a test root per run (``cp -a`` of the cache, so every
  run starts clean) with ``systemd-nspawn --keep-unit --register=no -b`` in
  the background, and waits until ``systemctl is-system-running`` says
  running/degraded;
* runs commands inside with ``nsenter`` into the container's PID 1;
* tears everything down (poweroff, then SIGTERM/SIGKILL of nspawn, then
  SIGKILL of the container's PID 1, which ends its whole PID namespace), even
  when a test fails, and removes the per-run copy.

The container shares the host's network namespace: use loopback ports only.
Anything that means "this machine cannot boot a container" (not root, no
nspawn and no way to install it, debootstrap failing, systemd not coming up)
raises CannotBoot, which the tests turn into a loud skip.

Command line (as root; --suite defaults to bookworm):
    python3 tests/e2e/container.py [--suite S] build       # build/refresh the cached root
    python3 tests/e2e/container.py [--suite S] build-deb [--lintian]
                                   # build the suite's .deb, print its path
    python3 tests/e2e/container.py [--suite S] run [--copy SRC=DEST]... CMD...
                                   # boot, copy files in, run CMD inside, tear down
    python3 tests/e2e/container.py [--suite S] shell [--copy SRC=DEST]...
                                   # boot and open a shell inside

Environment:
    FERRICORN_E2E_SUITES   suites the tests cover (default "bookworm,trixie")
    FERRICORN_E2E_MIRROR   Debian mirror for debootstrap (default deb.debian.org)
    FERRICORN_E2E_SECURITY_MIRROR  its security updates (default deb.debian.org/debian-security)
    FERRICORN_E2E_KEEP=1   keep the per-run root after teardown (for debugging)
    FERRICORN_E2E_REBUILD=1  rebuild cached roots even if they are current
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
E2E_DIR = REPO / "target" / "e2e"
RUNS_DIR = E2E_DIR / "runs"
STAMP_NAME = ".ferricorn-e2e-stamp"

MIRROR = os.environ.get("FERRICORN_E2E_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("FERRICORN_E2E_SECURITY_MIRROR", "http://deb.debian.org/debian-security")

# A Debian server as installed: the release's -updates and -security
# suites too, and upgraded. (debootstrap knows only the release itself; a
# package built on an up-to-date host depends on the security update of
# libpython that the bare release does not have.) No braces: the text goes
# through str.format.
UPDATES = (
    ". /etc/os-release\n"
    f"echo \"deb {MIRROR} $VERSION_CODENAME-updates main\" > /etc/apt/sources.list.d/updates.list\n"
    f"echo \"deb {SECURITY_MIRROR} $VERSION_CODENAME-security main\" >> /etc/apt/sources.list.d/updates.list\n"
    "apt-get update -qq\n"
    "apt-get upgrade -y -qq -o Dpkg::Use-Pty=0 >/dev/null\n"
)


class Suite:
    """A Debian release the package is built for and tested on.

    ``python`` is the release's default python3 (the package links its
    libpython); ``systemd`` the major version of its systemd. The host is
    Debian 12, so bookworm's package is built on the host; any other suite's
    package is built inside a cached build root of that suite (see build_deb).
    """

    def __init__(self, name: str, version: str, python: str, systemd: int):
        self.name, self.version, self.python, self.systemd = name, version, python, systemd

    def __repr__(self) -> str:
        return f"Suite({self.name})"

    @property
    def cache_root(self) -> Path:
        """The booted test root: systemd, python3-venv, a Flask venv; no build tools."""
        return E2E_DIR / f"{self.name}-root"

    @property
    def build_root(self) -> Path:
        """The build root (non-bookworm suites): compilers, pythonX-dev, dpkg-dev, lintian."""
        return E2E_DIR / f"{self.name}-build"

    @property
    def target_dir(self) -> Path:
        """CARGO_TARGET_DIR of this suite's build (bookworm: the host's target/)."""
        return REPO / "target" if self.name == HOST_SUITE else REPO / "target" / self.name

    def include(self) -> list[str]:
        return [
            "systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "procps",
            "curl", "ca-certificates",
            # what ferricorn's .deb depends on beyond the above, so that
            # `apt install ./ferricorn_*.deb` needs no download
            f"libpython{self.python}",
        ]

    def build_include(self) -> list[str]:
        # the rest comes from apt in BUILD_PROVISION_SCRIPT: debootstrap
        # --include does not order the configuration of lintian's perl deps
        return ["ca-certificates"]


SUITES = {
    "bookworm": Suite("bookworm", "12", python="3.11", systemd=252),
    "trixie": Suite("trixie", "13", python="3.13", systemd=257),
}
HOST_SUITE = "bookworm"


def suites_under_test() -> list[Suite]:
    """FERRICORN_E2E_SUITES (comma-separated, default every suite in SUITES)."""
    names = [n.strip() for n in os.environ.get("FERRICORN_E2E_SUITES", ",".join(SUITES)).split(",") if n.strip()]
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise SystemExit(f"FERRICORN_E2E_SUITES: unknown suite(s) {unknown}; known: {list(SUITES)}")
    return [SUITES[n] for n in names]


# Installed into /srv/app/venv of the cached root.
PIP_PACKAGES = ["flask"]

# Environment of every command run inside: nothing of the host's leaks in.
INSIDE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
    "DEBIAN_FRONTEND": "noninteractive",
    "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}
for _k in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
    if os.environ.get(_k):
        INSIDE_ENV[_k] = os.environ[_k]

# Bump when the provisioning below changes: the cached root is rebuilt.
PROVISION_SCRIPT = r"""
set -eu
update-ca-certificates >/dev/null
""" + UPDATES + r"""python3 -m venv /srv/app/venv
/srv/app/venv/bin/pip install -q --no-cache-dir {pip}
# keep the journal small and quick
mkdir -p /etc/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=64M\n' > /etc/systemd/journald.conf.d/e2e.conf
# nothing in the container needs a login prompt
systemctl mask console-getty.service getty@.service >/dev/null 2>&1 || true
apt-get clean
"""
BUILD_PROVISION_SCRIPT = r"""
set -eu
update-ca-certificates >/dev/null
""" + UPDATES + r"""apt-get install -y -qq -o Dpkg::Use-Pty=0 build-essential python3 python3-dev dpkg-dev \
    lintian util-linux gzip >/dev/null
apt-get clean
"""


def provision_version(suite: Suite, build: bool = False) -> str:
    what = ([suite.name, MIRROR, suite.build_include(), BUILD_PROVISION_SCRIPT, 1] if build else
            [suite.name, MIRROR, suite.include(), PIP_PACKAGES, PROVISION_SCRIPT, 1])
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]


class CannotBoot(Exception):
    """This machine cannot boot a systemd container (a reason to skip, not a failure)."""


def log(msg: str) -> None:
    print(f"[e2e] {msg}", file=sys.stderr, flush=True)


def loud(msg: str) -> str:
    bar = "!" * 78
    return f"\n{bar}\n!! {msg}\n{bar}\n"


# ---------------------------------------------------------------------------
# host tools and the cached root

def ensure_host_tools() -> None:
    if os.geteuid() != 0:
        raise CannotBoot("the e2e tests must run as root (systemd-nspawn, debootstrap)")
    missing = [pkg for tool, pkg in (("systemd-nspawn", "systemd-container"),
                                     ("debootstrap", "debootstrap"),
                                     ("nsenter", "util-linux"))
               if shutil.which(tool) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise CannotBoot(f"missing {missing} and no apt-get to install them")
    log(f"installing {' '.join(missing)} on the host")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env)
        r = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise CannotBoot(f"could not install {missing}:\n{r.stdout[-2000:]}")


class _Lock:
    """An flock on target/e2e/.lock, so two test runs don't build the root at once."""

    def __init__(self) -> None:
        E2E_DIR.mkdir(parents=True, exist_ok=True)
        self.f = open(E2E_DIR / ".lock", "w")

    def __enter__(self):
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def cache_is_current(root: Path, version: str) -> bool:
    stamp = root / STAMP_NAME
    return stamp.is_file() and stamp.read_text().strip() == version


def _nspawn_base(root: Path) -> list[str]:
    return ["systemd-nspawn", "--keep-unit", "--register=no", "--quiet", "-D", str(root)]


def _run_in_root(root: Path, script: str, timeout: float = 900) -> None:
    """Run a shell script in ROOT with nspawn in non-boot mode (no systemd running)."""
    cmd = _nspawn_base(root) + ["--pipe"]
    for k, v in INSIDE_ENV.items():
        cmd.append(f"--setenv={k}={v}")
    cmd += ["/bin/sh", "-c", script]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if r.returncode != 0:
        raise CannotBoot(f"provisioning the root failed (exit {r.returncode}):\n{r.stdout[-4000:]}")


def _copy_host_trust(root: Path) -> None:
    """Make the container trust what the host trusts, and fetch the way it does.

    The host may reach PyPI through an egress proxy with its own CA (installed
    under /usr/local/share/ca-certificates); apt here is told not to reject
    stale Release files. Both are copied so that pip and apt work inside.
    """
    src = Path("/usr/local/share/ca-certificates")
    dst = root / "usr/local/share/ca-certificates"
    dst.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        for crt in src.rglob("*.crt"):
            shutil.copy2(crt, dst / crt.name)
    conf = root / "etc/apt/apt.conf.d/99ferricorn-e2e"
    lines = ['Acquire::Check-Valid-Until "false";', 'Acquire::Check-Date "false";',
             'APT::Install-Recommends "false";']
    dump = subprocess.run(["apt-config", "dump"], stdout=subprocess.PIPE, text=True) \
        if shutil.which("apt-config") else None
    if dump and dump.returncode == 0:
        lines += [line for line in dump.stdout.splitlines()
                  if line.startswith(("Acquire::http::Proxy ", "Acquire::https::Proxy "))]
    conf.write_text("\n".join(lines) + "\n")
    (root / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
                                       "disable-pip-version-check = true\n")


def _debootstrap(suite: Suite, dest: Path, include: list[str], version: str, script: str) -> Path:
    """Debootstrap SUITE (minbase + INCLUDE) and run SCRIPT in it, unless DEST is current."""
    ensure_host_tools()
    force = os.environ.get("FERRICORN_E2E_REBUILD") == "1"
    with _Lock():
        if cache_is_current(dest, version) and not force:
            return dest
        tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        t0 = time.monotonic()
        log(f"debootstrap {suite.name} minbase into {tmp} (a minute or two)")
        r = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=" + ",".join(include),
             suite.name, str(tmp), MIRROR],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CannotBoot(f"debootstrap {suite.name} failed (exit {r.returncode}):\n{r.stdout[-4000:]}")
        log(f"debootstrap done in {time.monotonic() - t0:.0f}s; provisioning")
        _copy_host_trust(tmp)
        _run_in_root(tmp, script)
        (tmp / STAMP_NAME).write_text(version + "\n")
        if dest.exists():
            old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
            dest.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(dest)
        log(f"cached root ready in {time.monotonic() - t0:.0f}s: {dest}")
        return dest


def build_cached_root(suite: Suite) -> Path:
    """The booted test root of SUITE (debootstrapped + provisioned once, then cached)."""
    script = PROVISION_SCRIPT.format(pip=" ".join(shlex.quote(p) for p in PIP_PACKAGES))
    return _debootstrap(suite, suite.cache_root, suite.include(), provision_version(suite), script)


def build_build_root(suite: Suite) -> Path:
    """The build root of SUITE: its compilers, python3-dev, dpkg-dev and lintian."""
    return _debootstrap(suite, suite.build_root, suite.build_include(),
                        provision_version(suite, build=True), BUILD_PROVISION_SCRIPT)


def _toolchain_binds() -> tuple[list[str], dict[str, str]]:
    """nspawn --bind options and environment that lend the host's Rust toolchain to a build root.

    rustup's toolchains and cargo's registry cache are bind-mounted at the same
    paths; the binaries need only a glibc at least as new as the host's (true of
    every suite newer than the host's).
    """
    cargo_home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")).resolve()
    rustup_home = Path(os.environ.get("RUSTUP_HOME", Path.home() / ".rustup")).resolve()
    binds, env = [f"--bind={cargo_home}"], {"CARGO_HOME": str(cargo_home)}
    if rustup_home.is_dir():
        binds.append(f"--bind-ro={rustup_home}")
        env["RUSTUP_HOME"] = str(rustup_home)
        env["RUSTUP_AUTO_INSTALL"] = "0"
        toolchain = os.environ.get("RUSTUP_TOOLCHAIN")
        if toolchain:
            env["RUSTUP_TOOLCHAIN"] = toolchain
    env["PATH"] = f"{cargo_home}/bin:" + INSIDE_ENV["PATH"]
    return binds, env


def build_deb(suite: Suite, lintian: bool = False) -> Path:
    """Build ferricorn's .deb for SUITE; returns its path.

    The host's suite builds on the host (debian/build-deb). Another suite builds
    inside its build root (systemd-nspawn, no boot) with the repository
    bind-mounted at the same path and CARGO_TARGET_DIR=target/SUITE, so it
    links that suite's libpython and its units match that suite's systemd.
    """
    env = dict(os.environ, FERRICORN_LINTIAN="1" if lintian else "0")
    if suite.name == HOST_SUITE:
        cmd = [str(REPO / "debian" / "build-deb")]
    else:
        root = build_build_root(suite)
        binds, inside = _toolchain_binds()
        inside.update(CARGO_TARGET_DIR=str(suite.target_dir), PYO3_PYTHON="/usr/bin/python3",
                      FERRICORN_LINTIAN=env["FERRICORN_LINTIAN"])
        cmd = _nspawn_base(root) + ["--pipe", f"--bind={REPO}", *binds, f"--chdir={REPO}"]
        for k, v in {**INSIDE_ENV, **inside}.items():
            cmd.append(f"--setenv={k}={v}")
        cmd += [str(REPO / "debian" / "build-deb")]
    t0 = time.monotonic()
    log(f"building the {suite.name} package: {shlex.join(cmd)}")
    r = subprocess.run(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"building the {suite.name} package failed (exit {r.returncode}):\n"
                           f"{r.stderr[-6000:]}")
    path = Path(r.stdout.strip().splitlines()[-1])
    log(f"built {path} in {time.monotonic() - t0:.0f}s")
    return path


def run_in_build_root(suite: Suite, script: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run SCRIPT (sh) in SUITE's build root with the repository bind-mounted (for lintian)."""
    root = build_build_root(suite)
    cmd = _nspawn_base(root) + ["--pipe", f"--bind={REPO}", f"--chdir={REPO}"]
    for k, v in INSIDE_ENV.items():
        cmd.append(f"--setenv={k}={v}")
    cmd += ["/bin/sh", "-c", script]
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)


# ---------------------------------------------------------------------------
# leftovers of earlier runs

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _cmdline(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    except OSError:
        return ""


def cleanup_stale_runs() -> None:
    """Kill containers of earlier runs that died without teardown, and remove their roots.

    Only processes recorded in our own pid files, and only if their command line
    or root still names that run's directory.
    """
    if not RUNS_DIR.is_dir():
        return
    for info_file in RUNS_DIR.glob("*.json"):
        try:
            info = json.loads(info_file.read_text())
        except (OSError, ValueError):
            continue
        root = info.get("root", "")
        owner = info.get("owner_pid")
        if owner and _pid_alive(owner) and owner != os.getpid():
            continue  # another run in progress
        for key in ("leader_pid", "nspawn_pid"):
            pid = info.get(key)
            if not pid or not _pid_alive(pid):
                continue
            if key == "nspawn_pid" and root not in _cmdline(pid):
                continue
            if key == "leader_pid" and (not info.get("leader_ns") or _pid_ns(pid) != info["leader_ns"]):
                continue
            log(f"killing stale {key} {pid} of {root}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if root and Path(root).is_dir() and Path(root).parent == RUNS_DIR:
            time.sleep(0.5)
            shutil.rmtree(root, ignore_errors=True)
        info_file.unlink(missing_ok=True)
        info_file.with_suffix(".log").unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# the container

class Container:
    """One booted container on a fresh copy of the cached root.

    Use as a context manager, or call start() and stop() (stop is idempotent and
    also registered with atexit).
    """

    def __init__(self, suite: Suite | None = None, name: str | None = None, keep: bool | None = None):
        self.suite = suite or SUITES[HOST_SUITE]
        self.name = name or f"ferricorn-e2e-{self.suite.name}-{os.getpid()}"
        self.root = RUNS_DIR / self.name
        self.log_path = RUNS_DIR / f"{self.name}.log"
        self.info_path = RUNS_DIR / f"{self.name}.json"
        self.keep = os.environ.get("FERRICORN_E2E_KEEP") == "1" if keep is None else keep
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None
        self.leader_ns: str | None = None  # "pid:[inode]" of the container's PID namespace
        self._log_file = None

    # -- lifecycle --------------------------------------------------------
    def __enter__(self) -> "Container":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, boot_timeout: float = 90) -> "Container":
        cache_root = build_cached_root(self.suite)
        RUNS_DIR.mkdir(parents=True, exist_ok=True)
        cleanup_stale_runs()
        if self.root.exists():
            shutil.rmtree(self.root)
        t0 = time.monotonic()
        subprocess.run(["cp", "-a", "--reflink=auto", str(cache_root), str(self.root)], check=True)
        log(f"fresh root {self.root} in {time.monotonic() - t0:.1f}s")
        import atexit
        import threading
        atexit.register(self.stop)
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
            # a plain SIGTERM (a CI timeout, say) should still tear down
            def _term(signum, frame):
                raise SystemExit(128 + signum)
            signal.signal(signal.SIGTERM, _term)
        self._log_file = open(self.log_path, "wb")
        cmd = ["systemd-nspawn", "--keep-unit", "--register=no", "--console=read-only",
               "-M", self.name[:64], "-D", str(self.root), "-b"]
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT)
        self._write_info()
        try:
            self.leader = self._find_leader(timeout=30)
            self.leader_ns = _pid_ns(self.leader)
            self._write_info()
            self._wait_running(boot_timeout)
        except CannotBoot:
            self.stop()
            raise
        log(f"container {self.name} booted in {time.monotonic() - t0:.1f}s (PID 1 = host pid {self.leader})")
        return self

    def _write_info(self) -> None:
        self.info_path.write_text(json.dumps({
            "root": str(self.root), "owner_pid": os.getpid(),
            "nspawn_pid": self.proc.pid if self.proc else None, "leader_pid": self.leader,
            "leader_ns": self.leader_ns}))

    def _boot_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _find_leader(self, timeout: float) -> int:
        """The host pid of the container's PID 1: a descendant of nspawn that is pid 1 in its namespace."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CannotBoot(f"systemd-nspawn exited with {self.proc.returncode} before booting:\n"
                                 + self._boot_log())
            for pid in self._descendants(self.proc.pid):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("NSpid:"):
                        ids = line.split()[1:]
                        if len(ids) > 1 and ids[-1] == "1":
                            return pid
            time.sleep(0.05)
        raise CannotBoot("no container PID 1 appeared under systemd-nspawn:\n" + self._boot_log())

    @staticmethod
    def _descendants(pid: int) -> list[int]:
        children: dict[int, list[int]] = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d.name))
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            for c in children.get(p, []):
                out.append(c)
                todo.append(c)
        return out

    def _wait_running(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CannotBoot(f"systemd-nspawn exited with {self.proc.returncode} during boot:\n"
                                 + self._boot_log())
            r = self.run("systemctl is-system-running", check=False, timeout=10)
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                if state == "degraded":
                    failed = self.run("systemctl --failed --no-legend --plain", check=False).stdout
                    log(f"container is degraded; failed units:\n{failed}")
                return
            time.sleep(0.2)
        raise CannotBoot(f"systemd in the container did not reach running within {timeout:.0f}s "
                         f"(last state {state!r}):\n" + self._boot_log())

    def stop(self, timeout: float = 30) -> None:
        """Power the container off; force it if needed; remove the per-run root. Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            if self.leader and _pid_alive(self.leader):
                self.run("systemctl poweroff --no-block", check=False, timeout=10)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log("container did not power off in time; terminating systemd-nspawn")
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        if self.leader and self.leader_ns and _pid_ns(self.leader) == self.leader_ns:
            # still our container's PID 1: killing it ends its whole PID namespace
            log(f"killing the container's PID 1 (host pid {self.leader})")
            try:
                os.kill(self.leader, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for _ in range(100):
                if not _pid_alive(self.leader):
                    break
                time.sleep(0.1)
        self.leader = self.leader_ns = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
            try:  # keep the last boot log only
                self.log_path.replace(E2E_DIR / f"last-boot-{self.suite.name}.log")
            except OSError:
                pass
        if self.proc is not None:
            self.proc = None
            if self.keep:
                log(f"keeping {self.root} (FERRICORN_E2E_KEEP=1)")
            else:
                shutil.rmtree(self.root, ignore_errors=True)
            self.info_path.unlink(missing_ok=True)

    def host_pids(self) -> list[int]:
        """Host pids of every process in the container (its PID namespace)."""
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and self.leader_ns and _pid_ns(int(d.name)) == self.leader_ns:
                out.append(int(d.name))
        return out

    # -- inside -----------------------------------------------------------
    def _nsenter(self) -> list[str]:
        if not self.leader:
            raise RuntimeError("container is not running")
        return ["nsenter", "-t", str(self.leader), "-a", "--", "/usr/bin/env", "-i",
                *(f"{k}={v}" for k, v in INSIDE_ENV.items())]

    def run(self, cmd: str | list[str], check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run CMD inside (a string goes through /bin/sh -c). stdout/stderr are text."""
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        r = subprocess.run(self._nsenter() + argv, input=input, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=timeout,
                           stdin=None if input is not None else subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise subprocess.CalledProcessError(r.returncode, cmd, r.stdout, r.stderr)
        return r

    def popen(self, cmd: str, **kw) -> subprocess.Popen:
        """Start CMD inside without waiting (for background load)."""
        return subprocess.Popen(self._nsenter() + ["/bin/sh", "-c", cmd], **kw)

    def path(self, inside: str) -> Path:
        """The host path of a path inside the container's root (not for its tmpfs mounts: /tmp, /run)."""
        return self.root / inside.lstrip("/")

    def write(self, inside: str, content: str | bytes, mode: int = 0o644) -> None:
        p = self.path(inside)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        os.chmod(p, mode)

    def copy_in(self, src: str | os.PathLike, inside: str) -> str:
        """Copy a host file into the container; returns the inside path."""
        dst = self.path(inside)
        if inside.endswith("/"):
            dst = dst / Path(src).name
            inside = inside + Path(src).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        return inside


def main(argv: list[str]) -> int:
    suite = SUITES[HOST_SUITE]
    if len(argv) >= 2 and argv[0] == "--suite":
        if argv[1] not in SUITES:
            print(f"unknown suite {argv[1]!r}; known: {list(SUITES)}", file=sys.stderr)
            return 2
        suite, argv = SUITES[argv[1]], argv[2:]
    if not argv or argv[0] not in ("build", "build-deb", "run", "shell"):
        print(__doc__)
        return 2
    try:
        if argv[0] == "build":
            if "--force" in argv:
                os.environ["FERRICORN_E2E_REBUILD"] = "1"
            build_cached_root(suite)
            return 0
        if argv[0] == "build-deb":
            print(build_deb(suite, lintian="--lintian" in argv))
            return 0
        args = argv[1:]
        copies = []
        while len(args) >= 2 and args[0] == "--copy":
            src, _, dest = args[1].partition("=")
            copies.append((src, dest or "/root/"))
            args = args[2:]
        with Container(suite) as c:
            for src, dest in copies:
                c.copy_in(src, dest)
            if argv[0] == "run":
                r = c.run(shlex.join(args) if len(args) > 1 else args[0], check=False, timeout=3600)
                sys.stdout.write(r.stdout)
                sys.stderr.write(r.stderr)
                return r.returncode
            return subprocess.call(c._nsenter() + ["TERM=" + os.environ.get("TERM", "xterm"), "/bin/bash", "-l"])
    except CannotBoot as e:
        print(loud(f"cannot boot a systemd container on this machine: {e}"), file=sys.stderr)
        return 77


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
