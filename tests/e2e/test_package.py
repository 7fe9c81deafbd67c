"""Host-side checks of the packaging: unit files, named templates, the .deb, lintian.

No container needed. The .deb checks build it (debian/build-deb) unless
FERRICORN_E2E_DEB names one.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import container as ct

REPO = ct.REPO
SYSTEMD = REPO / "systemd"
sys.path.insert(0, str(SYSTEMD / "named"))
import render  # noqa: E402  (systemd/named/render.py)


def offline_exposure(unit_file: Path) -> float:
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit_file)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert m, out[-2000:]
    return float(m.group(1))


needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")


@needs_analyze
def test_template_service_exposure(tmp_path):
    unit = tmp_path / "ferricorn@x.service"
    shutil.copy(SYSTEMD / "ferricorn@.service", unit)
    score = offline_exposure(unit)
    print(f"ferricorn@.service exposure {score}")
    assert score <= 2.5


@needs_analyze
def test_named_units_render_and_verify(tmp_path):
    units = render.render("app", "/etc/ferricorn/app.toml", ["127.0.0.1:8123", "unix:/run/app.sock"],
                          ferricorn="/bin/true")
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    sock = units["app.socket"]
    assert "ListenStream=127.0.0.1:8123\nListenStream=/run/app.sock\n" in sock
    svc = units["app.service"]
    assert "ExecStart=/bin/true --config /etc/ferricorn/app.toml --bind fd://http" in svc
    assert "Requires=app.socket" in svc and "User=_ferricorn" in svc
    r = subprocess.run(["systemd-analyze", "verify", "--man=no",
                        str(tmp_path / "app.socket"), str(tmp_path / "app.service")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout
    assert offline_exposure(tmp_path / "app.service") <= 2.5
    default = render.render("web", "/etc/ferricorn/web.toml", [])
    assert "ListenStream=/run/ferricorn/web.sock\n" in default["web.socket"]


def _service_body(text: str) -> list[str]:
    """Directive lines from [Unit] on, comments dropped."""
    lines = text[text.index("[Unit]"):].splitlines()
    return [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def test_named_template_matches_instance_template():
    """NAME.service.in is ferricorn@.service with placeholders: nothing else may drift."""
    inst = _service_body((SYSTEMD / "ferricorn@.service").read_text())
    named = _service_body((SYSTEMD / "named" / "NAME.service.in").read_text())
    subst = {"%i": "@NAME@"}
    expected = []
    for ln in inst:
        ln = ln.replace("ferricorn@%i.socket", "@NAME@.socket")
        ln = ln.replace("/etc/ferricorn/%i.toml", "@CONFIG@")
        ln = ln.replace("ExecStart=/usr/bin/ferricorn", "ExecStart=@FERRICORN@")
        ln = ln.replace("User=_ferricorn", "User=@USER@").replace("Group=_ferricorn", "Group=@GROUP@")
        for a, b in subst.items():
            ln = ln.replace(a, b)
        expected.append(ln)
    assert named == expected
    inst_sock = _service_body((SYSTEMD / "ferricorn@.socket").read_text())
    named_sock = _service_body((SYSTEMD / "named" / "NAME.socket.in").read_text())
    expected_sock = [("@LISTEN_STREAMS@" if ln.startswith("ListenStream=")
                      else ln.replace("/etc/ferricorn/%i.toml", "@CONFIG@").replace("%i", "@NAME@"))
                     for ln in inst_sock]
    assert named_sock == expected_sock


def test_service_timeouts_are_consistent():
    text = (SYSTEMD / "ferricorn@.service").read_text()
    stop = int(re.search(r"^TimeoutStopSec=(\d+)s$", text, re.M).group(1))
    example = (REPO / "debian" / "example.toml").read_text()
    graceful = int(re.search(r"^graceful_timeout = (\d+)$", example, re.M).group(1))
    assert stop > graceful, "TimeoutStopSec must leave the graceful timeout room"
    assert re.search(r"^ExecReload=/bin/kill -s HUP \$MAINPID$", text, re.M)
    control = (REPO / "Cargo.toml").read_text()
    assert re.search(r'^depends = ".*\bprocps\b', control, re.M), "units call /bin/kill: Depends: procps"


# ---------------------------------------------------------------------------
# the .deb

def dpkg_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], stdout=subprocess.PIPE, text=True,
                          check=True).stdout.strip()


def test_deb_contents(deb):
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], stdout=subprocess.PIPE, text=True,
                             check=True).stdout
    files = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
    for path in ("/usr/bin/ferricorn", "/usr/lib/systemd/system/ferricorn@.socket",
                 "/usr/lib/systemd/system/ferricorn@.service", "/usr/lib/sysusers.d/ferricorn.conf",
                 "/etc/ferricorn/example.toml", "/usr/share/man/man1/ferricorn.1.gz",
                 "/usr/share/bash-completion/completions/ferricorn",
                 "/usr/share/zsh/vendor-completions/_ferricorn",
                 "/usr/share/doc/ferricorn/copyright", "/usr/share/doc/ferricorn/changelog.Debian.gz",
                 "/usr/share/doc/ferricorn/README.md.gz", "/usr/share/doc/ferricorn/DEPLOY.md.gz",
                 "/usr/share/doc/ferricorn/SIGNALS.md.gz", "/usr/share/doc/ferricorn/SYSTEMD.md.gz",
                 "/usr/share/doc/ferricorn/TUNING.md.gz", "/usr/share/doc/ferricorn/GUNICORN.md.gz",
                 "/usr/share/doc/ferricorn/rust-crates-licenses.txt.gz",
                 # the pages ferricorn.1 names in its SUBCOMMANDS section
                 "/usr/share/man/man1/ferricorn-systemd-units.1.gz",
                 "/usr/share/man/man1/ferricorn-generate.1.gz"):
        assert path in files, f"{path} not in the package"
    # Policy 12.3: documentation larger than 4 kB is compressed with gzip (the copyright
    # file never is: 12.5)
    for line in listing.splitlines():
        path, size = line.split()[-1].lstrip("."), int(line.split()[2])
        if (line.startswith("-") and path.startswith("/usr/share/doc/ferricorn/")
                and path != "/usr/share/doc/ferricorn/copyright"):
            assert path.endswith(".gz") or size <= 4096, (path, size)
    assert re.fullmatch(r"ferricorn_[0-9][^_]*_amd64\.deb", deb.name), deb.name
    assert dpkg_field(deb, "Package") == "ferricorn"
    depends = dpkg_field(deb, "Depends")
    assert "procps" in depends and "libc6" in depends, depends
    control = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], stdout=subprocess.PIPE,
                             text=True).stdout
    assert "/etc/ferricorn/example.toml" in control
    # md5sums for dpkg --verify / debsums: every file but the conffiles, each sum right
    sums = subprocess.run(["dpkg-deb", "-I", str(deb), "md5sums"], stdout=subprocess.PIPE,
                          text=True, check=True).stdout
    listed = {line.split(None, 1)[1] for line in sums.splitlines()}
    regular = {line.split()[-1].lstrip("./") for line in listing.splitlines()
               if line.startswith("-")}
    assert listed == regular - {"etc/ferricorn/example.toml"}, listed ^ regular
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                         check=True).stdout
    binary = subprocess.run(["tar", "-xO", "./usr/bin/ferricorn"], input=tar,
                            stdout=subprocess.PIPE, check=True).stdout
    want = [l.split()[0] for l in sums.splitlines() if l.endswith(" usr/bin/ferricorn")]
    assert want == [hashlib.md5(binary).hexdigest()]


def test_deb_version_names_its_release(deb, suite, tmp_path):
    """Each release's package has its own version, 0.1.0-1~debN (N = 12, 13): the two embed
    different CPythons, so they must not share one; ~debN sorts below the plain revision and
    12 below 13, so a release upgrade replaces the package. The changelog's top entry says so."""
    version = dpkg_field(deb, "Version")
    assert re.fullmatch(rf"\d+\.\d+\.\d+-1~deb{suite.version}", version), version
    assert deb.name == f"ferricorn_{version}_amd64.deb", deb.name
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    import gzip
    changelog = gzip.decompress((tmp_path / "usr/share/doc/ferricorn/changelog.Debian.gz")
                                .read_bytes()).decode()
    assert changelog.startswith(f"ferricorn ({version}) {suite.name}; "), changelog[:200]
    for a, b in (("0.1.0-1~deb12", "0.1.0-1~deb13"), ("0.1.0-1~deb13", "0.1.0-1")):
        assert subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0, (a, b)


def test_deb_depends_on_debian_libpython(deb, suite, tmp_path):
    """Built with PYO3_PYTHON=/usr/bin/python3, the binary runs the release's own CPython 3.X.
    Linked in from libpython3.X.a (tools/pyo3-config; Debian 12), the package depends on that
    release's standard library, libpython3.X-stdlib, and names the embedded source in
    Static-Built-Using. Linked to libpython3.X.so (Debian 13, whose archive lacks objects),
    it depends on libpython3.X and has no Static-Built-Using."""
    depends = dpkg_field(deb, "Depends")
    static = dpkg_field(deb, "Static-Built-Using")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    needed = subprocess.run(["readelf", "-d", str(tmp_path / "usr/bin/ferricorn")],
                            stdout=subprocess.PIPE, text=True, check=True).stdout
    shared = re.findall(r"\[(libpython3\.\d+)\.so[^\]]*\]", needed)
    if suite.name == "bookworm":
        assert not shared, f"bookworm's binary should have CPython linked in: {needed}"
    if shared:
        assert shared == [f"libpython{suite.python}"], needed
        assert re.search(rf"\blibpython{re.escape(suite.python)} \(>= ", depends), depends
        assert static == "", static
    else:
        lib = f"libpython{suite.python}-stdlib"
        assert re.search(rf"\b{re.escape(lib)} \(>= ", depends), \
            f"Depends lacks {lib} (binary not built against {suite.name}'s Python?): {depends}"
        assert re.fullmatch(rf"python{re.escape(suite.python)} \(= \S+\)", static), static
        # Policy 12.5: the copyright file carries the built-in CPython's license
        copyright = (tmp_path / "usr/share/doc/ferricorn/copyright").read_text()
        assert "Files: cpython/*" in copyright and "PSF-2.0" in copyright, copyright[:800]
        assert "PYTHON SOFTWARE FOUNDATION LICENSE" in copyright.upper()
        assert "dynamically" not in copyright
    others = set(re.findall(r"\blibpython3\.\d+\b", depends)) - {f"libpython{suite.python}"}
    assert not others, f"{suite.name}'s package depends on {others}: {depends}"


def _deb_file(deb: Path, member: str) -> str:
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, check=True).stdout
    return subprocess.run(["tar", "-xO", "." + member], input=tar, stdout=subprocess.PIPE,
                          check=True).stdout.decode()


def test_deb_units_use_the_releases_reload_protocol(deb, suite):
    """systemd >= 253 (Debian 13): Type=notify-reload; 252 (Debian 12): Type=notify + ExecReload
    (kill -HUP, then sleep 1 so RELOADING=1 arrives before the reload command ends)."""
    service = _deb_file(deb, "/usr/lib/systemd/system/ferricorn@.service")
    types = re.findall(r"^Type=(\S+)$", service, re.M)
    reloads = re.findall(r"^ExecReload=(.*)$", service, re.M)
    if suite.systemd >= 253:
        assert types == ["notify-reload"] and reloads == [], service
    else:
        assert types == ["notify"] and reloads == ["/bin/kill -s HUP $MAINPID", "/bin/sleep 1"], service
    # apart from that, the shipped template is systemd/ferricorn@.service
    source = _service_body((SYSTEMD / "ferricorn@.service").read_text())
    shipped = _service_body(service)
    drop = {"Type=notify", "Type=notify-reload", "ExecReload=/bin/kill -s HUP $MAINPID",
            "ExecReload=/bin/sleep 1"}
    assert [ln for ln in shipped if ln not in drop] == [ln for ln in source if ln not in drop]
    assert _deb_file(deb, "/usr/lib/systemd/system/ferricorn@.socket") == (SYSTEMD / "ferricorn@.socket").read_text()


def test_lintian_clean(deb, suite):
    """The release's own lintian: the host's for bookworm, the build root's for another suite."""
    cmd = ["lintian", "--fail-on", "error,warning", "--tag-display-limit", "0", str(deb)]
    if suite.name == ct.HOST_SUITE:
        if shutil.which("lintian") is None:
            pytest.skip("lintian not installed (apt-get install lintian)")
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = r.stdout
    else:
        r = ct.run_in_build_root(suite, " ".join(cmd) + " 2>&1")
        out = r.stdout + r.stderr
    print(out)
    assert r.returncode == 0, out
    assert not re.search(r"^[EW]: ", out, re.M), out


def test_example_config_is_accepted(tmp_path):
    """/etc/ferricorn/example.toml, every commented key switched on, starts a server that answers."""
    import http.client
    import os
    import signal
    import socket
    import time

    app = tmp_path / "hello.py"
    app.write_text("def application(environ, start_response):\n"
                   "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
                   "    return [b'hello\\n']\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    venv = REPO / "target" / "testenv"  # made with /usr/bin/python3, like the package expects
    assert (venv / "pyvenv.cfg").is_file()
    text = (REPO / "debian" / "example.toml").read_text()
    text = re.sub(r"^# (\w+ = .*?)([ \t]+#.*)?$", r"\1", text, flags=re.M)  # uncomment every setting
    text = re.sub(r'^wsgi_app = .*$', 'wsgi_app = "hello:application"', text, flags=re.M)
    text = re.sub(r'^chdir = .*$', f'chdir = "{tmp_path}"', text, flags=re.M)
    text = re.sub(r'^virtualenv = .*$', f'virtualenv = "{venv}"', text, flags=re.M)
    text = re.sub(r'^bind = .*$', f'bind = ["127.0.0.1:{port}"]', text, flags=re.M)
    cfg = tmp_path / "example.toml"
    cfg.write_text(text)
    proc = subprocess.Popen([str(REPO / "target" / "release" / "ferricorn"), "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "NOTIFY_SOCKET")})
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/")
                status = conn.getresponse().status
                conn.close()
                break
            except OSError:
                time.sleep(0.2)
        assert status == 200, f"exit {proc.poll()}; config:\n{text}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out = proc.communicate(timeout=40)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
    print(out[-3000:])
