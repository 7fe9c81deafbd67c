"""The basics a Gunicorn user relies on: start, serve, stop, errors."""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time

import pytest

from conftest import APPS, BIN, VENV


def test_hello_keepalive_and_headers(start_server):
    s = start_server("basic:app")
    c = s.conn()
    for _ in range(3):  # three requests on one connection
        c.request("GET", "/")
        r = c.getresponse()
        assert r.status == 200
        assert r.read() == b"Hello, World!"
        assert r.getheader("Server").startswith("ferricorn")
        assert r.getheader("Date").endswith("GMT")
    c.close()


def test_module_default_callable_and_factory(start_server):
    s = start_server("basic")  # `application` is the default name
    assert s.request()[0] == 200
    s2 = start_server("basic:create_app('made')")
    assert s2.request()[2] == b"made"


def test_app_exception_is_500_without_traceback(start_server):
    s = start_server("basic:app")
    status, headers, body = s.request("GET", "/error?x=1")
    assert status == 500
    assert b"secret" not in body and b"Traceback" not in body
    log = s.wait_log(r"RuntimeError: boom")
    assert "Traceback" in log
    # Gunicorn's line, with the request's URI
    assert re.search(r"\[ERROR\] Error handling request /error\?x=1$", log, re.M), log
    # The worker survives and serves the next request.
    assert s.request()[0] == 200


def test_crlf_in_response_header_is_500(start_server):
    s = start_server("basic:app")
    raw = s.raw(b"GET /bad-header HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 500")
    assert b"pwned" not in raw and b"should not be sent" not in raw


def test_invalid_status_is_500(start_server):
    s = start_server("basic:app")
    assert s.request("GET", "/bad-status")[0] == 500


@pytest.mark.parametrize("preload", [False, True])
def test_import_error_exits_3_with_traceback(tmp_path, preload):
    pidfile = tmp_path / "app.pid"
    p = subprocess.run(
        [BIN, "-b", "127.0.0.1:0", "-w", "2", "-p", str(pidfile)]
        + (["--preload"] if preload else []) + ["broken:app"],
        cwd=APPS, capture_output=True, text=True, timeout=30,
    )
    assert p.returncode == 3, p.stderr
    assert "Traceback" in p.stderr and "ModuleNotFoundError" in p.stderr
    assert "[ERROR] Reason: Worker failed to boot." in p.stderr, "Gunicorn's halt reason"
    assert "[ERROR] Shutting down: Master" in p.stderr
    assert not pidfile.exists()


@pytest.mark.parametrize("spec,why", [("basic:no_such_app", "Failed to find attribute"),
                                      ("basic:no_such_factory()", "Failed to find attribute"),
                                      ("basic:CALLS_FILE", "must be callable")])
@pytest.mark.parametrize("preload", [False, True])
def test_app_object_not_found_exits_4(spec, why, preload):
    # Gunicorn's two statuses: 3 when importing raised (above), 4 (APP_LOAD_ERROR) when the
    # module imported but the app object is not there or not callable: the reason, no traceback
    args = [BIN, "-b", "127.0.0.1:0", "-w", "2"] + (["--preload"] if preload else []) + [spec]
    p = subprocess.run(args, cwd=APPS, capture_output=True, text=True, timeout=30)
    assert p.returncode == 4, p.stderr
    assert why in p.stderr and "Traceback" not in p.stderr, p.stderr
    # Not a respawn loop: each of the two workers failed once at most.
    assert p.stderr.count("Failed to load application") <= 2
    assert "Reason: App failed to load." in p.stderr, "Gunicorn's halt reason"


def test_config_error_names_the_key():
    p = subprocess.run([BIN, "-w", "0", "basic:app"], cwd=APPS, capture_output=True, text=True, timeout=10)
    assert p.returncode == 2
    assert "`workers`" in p.stderr


@pytest.mark.parametrize("args,named", [
    (["-w", "-1"], "--workers"),              # a bad number, not an unknown flag '-1'
    (["--keep-alive", "-1"], "--keep-alive"),
    (["--error-logfile", "/nonexistent/dir/err.log"], 'errorlog "/nonexistent/dir/err.log"'),
    (["--access-logfile", "/nonexistent/dir/a.log"], 'accesslog "/nonexistent/dir/a.log"'),
])
def test_bad_values_are_named(args, named):
    p = subprocess.run([BIN, "-b", "127.0.0.1:0", *args, "basic:app"], cwd=APPS, capture_output=True,
                       text=True, timeout=10)
    assert p.returncode == 2 and named in p.stderr, p.stderr


def test_check_config_exits_0_or_1_as_gunicorn():
    def check(*args):
        return subprocess.run([BIN, "--check-config", *args], cwd=APPS, capture_output=True,
                              text=True, timeout=30)

    ok = check("-b", "127.0.0.1:0", "basic:app")
    assert ok.returncode == 0, ok.stderr
    # It imports the app (nothing is bound, no worker forked): a broken app is 1,
    # with its traceback.
    broken = check("broken:app")
    assert broken.returncode == 1
    assert "ModuleNotFoundError" in broken.stderr and "broken:app" in broken.stderr
    bad = check("--threads", "0", "basic:app")
    assert bad.returncode == 1 and "`threads`" in bad.stderr
    nouser = check("-u", "no-such-user-here", "basic:app")
    assert nouser.returncode == 1 and "no-such-user-here" in nouser.stderr


def test_man_page_has_the_operator_sections(tmp_path):
    # man-pages(7) order; what an operator opens `man ferricorn` for (exit
    # codes, signals, environment, files) beside the generated options.
    page = subprocess.run([BIN, "generate", "man"], capture_output=True, text=True, timeout=10,
                          check=True).stdout
    sections = re.findall(r'^\.SH "?([A-Z ]+?)"?$', page, re.M)
    assert sections == ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SUBCOMMANDS", "EXIT STATUS",
                        "SIGNALS", "ENVIRONMENT", "FILES", "SEE ALSO", "VERSION"], sections
    signals = page.split(".SH SIGNALS")[1].split(".SH ")[0]
    for sig in ("HUP", "TERM", "INT", "QUIT", "TTIN", "TTOU", "USR1", "USR2", "WINCH"):
        assert re.search(rf"^\.B[R]? .*\b{sig}\b", signals, re.M), sig
    status = page.split('.SH "EXIT STATUS"')[1].split(".SH ")[0]
    assert re.findall(r"^\.B (\d)$", status, re.M) == ["0", "1", "2", "3", "4"]
    # The installed page (generate man-pages, as debian/build-deb runs it)
    # is the same page, next to those of the subcommands it names.
    subprocess.run([BIN, "generate", "man-pages", str(tmp_path)], check=True, timeout=10)
    assert (tmp_path / "ferricorn.1").read_text() == page
    assert (tmp_path / "ferricorn-systemd-units.1").exists()
    if shutil.which("man"):
        r = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", str(tmp_path / "ferricorn.1")],
                           capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, MANWIDTH="80"))
        assert r.returncode == 0 and r.stderr == "", r.stderr
        # (bold is overstruck: "E\bE")
        assert "EXIT STATUS" in re.sub(".\b", "", r.stdout)


def test_cmd_args_from_the_environment(tmp_path, start_server):
    # FERRICORN_CMD_ARGS, as Gunicorn's GUNICORN_CMD_ARGS: shell-quoted
    # arguments that beat the config file and lose to the command line.
    import os
    conf = tmp_path / "c.toml"
    conf.write_text("workers = 5\ntimeout = 9\n")
    env = dict(os.environ, FERRICORN_CMD_ARGS="-w 3 -b 10.0.0.1:1 --access-logformat '%(h)s \"%(r)s\"'")
    p = subprocess.run([BIN, "--print-config", "-c", str(conf), "--timeout", "4", "-b", "127.0.0.1:0",
                        "basic:app"], cwd=APPS, capture_output=True, text=True, timeout=30, env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    for want in ["workers = 3", "timeout = 4", 'bind = ["127.0.0.1:0"]',
                 'access_log_format = \'%(h)s "%(r)s"\'']:
        assert want in lines, p.stdout
    # and a real start with it
    s = start_server("basic:app", env={"FERRICORN_CMD_ARGS": "--workers 2"})
    assert len(s.worker_pids()) == 2
    bad = subprocess.run([BIN, "basic:app"], cwd=APPS, capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, FERRICORN_CMD_ARGS="-w 'oops"))
    assert bad.returncode == 2 and "FERRICORN_CMD_ARGS" in bad.stderr, bad.stderr
    # Gunicorn's own variable, where ours is not set: a Gunicorn deployment's environment
    # keeps working, its Gunicorn-only options handled as on the command line
    s = start_server("basic:app", env={"GUNICORN_CMD_ARGS": "--workers 2 --worker-tmp-dir /dev/shm"})
    assert len(s.worker_pids()) == 2 and "ignoring Gunicorn options" in s.log()
    both = dict(os.environ, GUNICORN_CMD_ARGS="-w 4", FERRICORN_CMD_ARGS="-w 3")
    p = subprocess.run([BIN, "--print-config", "-b", "127.0.0.1:0", "basic:app"], cwd=APPS,
                       capture_output=True, text=True, timeout=30, env=both)
    assert "workers = 3" in p.stdout.splitlines(), p.stdout


@pytest.mark.parametrize("given,octal", [("0027", "0027"), ("0o027", "0027"), ("0x17", "0027"), ("23", "0027"),
                                         ("7", "0007")])
def test_umask_is_read_as_gunicorn_reads_it(given, octal):
    # Gunicorn's auto_int: a leading 0 is octal, 0o/0x/0b by prefix, other digits decimal
    p = subprocess.run([BIN, "--print-config", "-m", given, "basic:app"], cwd=APPS,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and f'umask = "{octal}"' in p.stdout.splitlines(), (p.stdout, p.stderr)


def test_limits_past_gunicorns_maximum_are_clamped_as_gunicorn_does():
    # Gunicorn uses 8190 for a larger limit_request_line (32768 fields at most): a
    # config written for it starts, with a warning naming the key.
    p = subprocess.run([BIN, "--print-config", "--limit-request-line", "9000",
                        "--limit-request-fields", "40000", "basic:app"], cwd=APPS,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "limit_request_line = 8190" in lines and "limit_request_fields = 32768" in lines
    assert "limit_request_line = 9000 is over its maximum, 8190" in p.stderr + p.stdout


def umask_of(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1] for line in f if line.startswith("Umask:"))


def test_umask_is_only_for_the_unix_socket(tmp_path, start_server):
    """Gunicorn's --umask sets the mode of the unix socket file it binds and nothing else:
    the master, the workers and so the app's files keep the umask the server was started
    with (systemd's UMask=, a shell's). The pid file is -rw-r--r-- whatever the umask."""
    sock = tmp_path / "app.sock"
    pid = tmp_path / "app.pid"
    made = tmp_path / "made-by-app"
    (tmp_path / "touchapp.py").write_text(
        "import os\n"
        "def app(environ, start_response):\n"
        f"    open({str(made)!r}, 'w').close()\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'ok']\n")
    old = os.umask(0o027)
    try:
        s = start_server("touchapp:app", "-b", f"unix:{sock}", "-m", "0o007", "-p", str(pid),
                         cwd=tmp_path, bind=False)
    finally:
        os.umask(old)
    c = http.client.HTTPConnection("localhost", timeout=10)
    c.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.sock.connect(str(sock))
    c.request("GET", "/")
    assert c.getresponse().read() == b"ok"
    c.close()
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o770  # 0777 & ~0007
    assert stat.S_IMODE(os.stat(pid).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o640  # 0666 & ~0027: the inherited umask
    assert umask_of(s.proc.pid) == "0027"
    assert [umask_of(w) for w in s.worker_pids()] == ["0027"]


def test_gunicorn_only_options_warn_or_refuse(tmp_path, start_server):
    """A Gunicorn command line or config runs as it is: Gunicorn's options ferricorn does
    not have are named in one warning and ignored (with their values taken off the command
    line), unless honouring them matters: TLS, daemon, an ASGI worker class stop the start
    with status 2 and the reason."""
    s = start_server("basic:app", "-k", "gevent", "--worker-tmp-dir", "/dev/shm", "--statsd-host=x:8125",
                     "--no-sendfile", "-w", "2", "--log-file", "-", "--spew")
    log = s.wait_log("workers are serving")
    assert re.search(r"WARNING.*ignoring Gunicorn options ferricorn does not have: "
                     r"worker_class, worker_tmp_dir, statsd_host, sendfile, spew", log), log
    # what ignoring gevent means for an app that waits on I/O
    assert re.search(r'WARNING.*worker_class "gevent": .*--threads raised', log), log
    assert len(s.worker_pids()) == 2 and s.request("GET", "/")[0] == 200
    s = start_server("basic:app", "-k", "gthread", "--threads", "2")
    assert "ignoring" not in s.log()
    conf = tmp_path / "g.toml"
    for args, key, why in ((["--certfile", "/etc/ssl/cert.pem", "--keyfile", "k.pem"], "certfile", "TLS"),
                           (["-D"], "daemon", "foreground"),
                           (["-k", "uvicorn.workers.UvicornWorker"], "worker_class", "ASGI"),
                           (["--paste", "development.ini"], "paste", "PasteDeploy"),
                           (["--protocol", "uwsgi"], "protocol", "HTTP only"),
                           (["-c", str(conf)], "daemon", "foreground")):
        conf.write_text("workers = 2\ndaemon = true\n")
        r = subprocess.run([BIN, "-b", "127.0.0.1:0", *args, "basic:app"], cwd=APPS,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, (args, r.stderr)
        assert re.search(r"invalid setting `%s`:.*%s" % (key, why), r.stderr), (args, r.stderr)
    # --check-config reports a refused one as any other problem: status 1, as Gunicorn
    r = subprocess.run([BIN, "--check-config", "--keyfile", "k.pem", "basic:app"], cwd=APPS,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "`keyfile`" in r.stderr, r.stderr
    # a TOML config may carry them too (config keys, Gunicorn's names)
    conf.write_text('workers = 2\nworker_class = "gthread"\nstatsd_host = "x:8125"\ndaemon = false\n')
    r = subprocess.run([BIN, "--print-config", "-c", str(conf), "basic:app"], cwd=APPS,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "workers = 2" in r.stdout.splitlines(), r.stderr
    assert re.search(r"does not have: statsd_host$", r.stderr, re.M), r.stderr


def test_gunicorn_python_config_file(tmp_path, start_server):
    """-c gunicorn.conf.py: Gunicorn's config format, a Python module whose names are the
    settings (computed values too). Gunicorn-only settings are named in a warning
    and ignored; other names (imports, helpers, _private) are ignored; errors name the key or
    show the file's traceback."""
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "import multiprocessing\n"
        "bind = '127.0.0.1:0'\n"
        "workers = min(2, multiprocessing.cpu_count() * 2 + 1)\n"
        "keepalive = 7\n"
        "umask = 0o027\n"
        "raw_env = ['A=1', 'B=2']\n"
        "preload_app = True\n"
        "worker_class = 'sync'\n"
        "worker_tmp_dir = '/dev/shm'\n"
        "_helper = 3\n")
    p = subprocess.run([BIN, "--print-config", "-c", str(conf), "basic:app"], cwd=APPS,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    for want in ['bind = ["127.0.0.1:0"]', "workers = 2", "keepalive = 7", 'umask = "0027"',
                 'raw_env = ["A=1", "B=2"]', "preload_app = true"]:
        assert want in lines, p.stdout
    # -e on the command line replaces the file's raw_env, as any setting given in both
    p = subprocess.run([BIN, "--print-config", "-c", str(conf), "-e", "C=3", "basic:app"], cwd=APPS,
                       capture_output=True, text=True, timeout=30)
    assert 'raw_env = ["C=3"]' in p.stdout.splitlines(), p.stdout
    assert "ferricorn does not have: worker_tmp_dir" in p.stderr and "WARNING" in p.stderr, p.stderr
    assert "worker_class" not in p.stderr, "sync is what ferricorn's workers are: nothing to warn of"
    assert "_helper" not in p.stderr and "multiprocessing" not in p.stderr
    # it serves with those settings; the command line still beats the file
    s = start_server("basic:app", "-c", str(conf), "-w", "1")
    assert len(s.worker_pids()) == 1
    st, _, body = s.request("GET", "/")
    assert st == 200
    # Gunicorn's other two forms: file:PATH, and python:MODULE from the working directory
    (tmp_path / "confmod.py").write_text("workers = 3\nbind = '127.0.0.1:0'\n")
    for spec in ("python:confmod", f"file:{tmp_path / 'confmod.py'}"):
        r = subprocess.run([BIN, "--print-config", "-c", spec, "--chdir", str(APPS), "basic:app"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "workers = 3" in r.stdout.splitlines(), (spec, r.stderr)
    # without -c, ./gunicorn.conf.py is read, as Gunicorn reads it (and -c replaces it)
    r = subprocess.run([BIN, "--print-config", "--chdir", str(APPS), "basic:app"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "keepalive = 7" in r.stdout.splitlines(), r.stderr
    assert "gunicorn.conf.py" in r.stderr, r.stderr
    r = subprocess.run([BIN, "--print-config", "-c", str(tmp_path / "confmod.py"), "--chdir", str(APPS),
                        "basic:app"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert "keepalive = 2" in r.stdout.splitlines() and "workers = 3" in r.stdout.splitlines()
    # the config imports from the app's virtualenv (--virtualenv or VIRTUAL_ENV), as from
    # Gunicorn's own venv
    (tmp_path / "venvconf.py").write_text("import flask\nworkers = 4\n")
    r = subprocess.run([BIN, "--print-config", "-c", str(tmp_path / "venvconf.py"), "--virtualenv",
                        VENV, "--chdir", str(APPS), "basic:app"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and "workers = 4" in r.stdout.splitlines(), r.stderr
    # numbers and booleans given as text (read from the environment) convert as in Gunicorn
    envconf = tmp_path / "envconf.py"
    envconf.write_text("import os\nworkers = os.environ.get('NO_SUCH_VAR', '3')\ntimeout = ' 0x10 '\n"
                       "preload_app = 'True'\n")
    r = subprocess.run([BIN, "--print-config", "-c", str(envconf), "basic:app"], cwd=APPS,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    for want in ("workers = 3", "timeout = 16", "preload_app = true"):
        assert want in r.stdout.splitlines(), r.stdout
    # errors: a bad value names its key; a file that raises shows its traceback
    bad = tmp_path / "bad.conf.py"
    bad.write_text("workers = 'two'\n")
    r = subprocess.run([BIN, "-c", str(bad), "basic:app"], cwd=APPS, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "`workers`" in r.stderr, r.stderr
    bad.write_text("import no_such_module_here\n")
    r = subprocess.run([BIN, "-c", str(bad), "basic:app"], cwd=APPS, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "ModuleNotFoundError" in r.stderr and "no_such_module_here" in r.stderr


def test_print_config_is_a_config_file_that_reproduces_the_settings(tmp_path):
    p = subprocess.run([BIN, "--print-config", "-b", "127.0.0.1:0", "-w", "3", "--threads", "2",
                        "--reuse-port", "-e", "A=1", "--max-requests", "7", "basic:app"],
                       cwd=APPS, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    for want in ['wsgi_app = "basic:app"', 'bind = ["127.0.0.1:0"]', "workers = 3", "threads = 2",
                 "reuse_port = true", 'raw_env = ["A=1"]', "max_requests = 7", "timeout = 30",
                 "# accesslog (not set)"]:
        assert want in lines, p.stdout
    conf = tmp_path / "printed.toml"
    conf.write_text(p.stdout)
    again = subprocess.run([BIN, "--print-config", "-c", str(conf)], cwd=APPS,
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 0, again.stderr
    assert again.stdout == p.stdout


def test_capture_output_sends_app_stdout_to_the_error_log(start_server, tmp_path):
    import re

    def started(log, *extra):
        s = start_server("basic:app", "--error-logfile", str(log), *extra, ready=False)
        deadline = time.time() + 20
        while not (log.exists() and "workers are serving" in log.read_text()):
            assert time.time() < deadline, "no boot"
            time.sleep(0.05)
        s.port = int(re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", log.read_text()).group(1))
        assert s.request("GET", "/print")[2] == b"printed"
        return s

    plain_log = tmp_path / "plain.log"
    old_umask = os.umask(0o022)
    try:
        plain = started(plain_log)
    finally:
        os.umask(old_umask)
    # 0666 less the umask, as Gunicorn (Python's logging) creates it
    assert stat.S_IMODE(os.stat(plain_log).st_mode) == 0o644
    log = tmp_path / "error.log"
    started(log, "--capture-output")
    deadline = time.time() + 5
    while "printed by the app" not in log.read_text() and time.time() < deadline:
        time.sleep(0.05)
    assert "printed by the app" in log.read_text()
    # Without the flag (Gunicorn's default) stdout stays where it was.
    assert "printed by the app" not in plain_log.read_text()
    assert "printed by the app" in plain.log()


def test_reuse_port_lets_two_servers_share_a_port(start_server):
    first = start_server("basic:app", "--reuse-port")
    second = start_server("basic:app", "--reuse-port", "-b", f"127.0.0.1:{first.port}", bind=False)
    assert second.port == first.port
    pids = set()
    for _ in range(40):
        st, _, body = first.request("GET", "/pid")
        assert st == 200
        pids.add(body)
        if len(pids) == 2:
            break
    assert len(pids) == 2, "the kernel never picked the second server"
    # Without it (Gunicorn's default) the port is refused, after five tries
    # a second apart.
    t = time.monotonic()
    p = subprocess.run([BIN, "-b", f"127.0.0.1:{first.port}", "basic:app"], cwd=APPS,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "Address already in use" in p.stderr
    assert p.stderr.count("Connection in use") == 5, p.stderr
    assert f"Can't connect to 127.0.0.1:{first.port}" in p.stderr
    assert time.monotonic() - t > 3.5


def free_port():
    # a port free on both families
    while True:
        with socket.socket(socket.AF_INET6) as s6:
            s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s6.bind(("::", 0))
            port = s6.getsockname()[1]
            try:
                with socket.socket() as s4:
                    s4.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port


def test_ipv6_wildcard_takes_ipv4_too_unless_ipv4_is_bound_beside_it(start_server):
    # Gunicorn's [::] socket is dual-stack (the kernel's default), which
    # containers rely on; with 0.0.0.0 on the same port in the list, each
    # family gets its own socket instead of a collision.
    for binds in (["[::]:{p}"], ["0.0.0.0:{p}", "[::]:{p}"], ["[::]:{p}", "0.0.0.0:{p}"]):
        port = free_port()
        args = []
        for b in binds:
            args += ["-b", b.format(p=port)]
        s = start_server("basic:app", *args, bind=False)
        for host in ("127.0.0.1", "::1"):
            c = http.client.HTTPConnection(host, port, timeout=5)
            c.request("GET", "/")
            assert c.getresponse().status == 200, (binds, host)
            c.close()
        s.close()


def test_a_port_in_use_is_retried_as_gunicorn_does(start_server):
    # Gunicorn tries a port that is in use five times, a second apart (an
    # old server still exiting), logging "Connection in use", then gives up
    # with status 1.
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    threading.Timer(1.5, held.close).start()
    s = start_server("basic:app", "-b", f"127.0.0.1:{port}", bind=False)
    assert s.port == port
    assert s.request("GET", "/")[0] == 200
    assert f"Connection in use: 127.0.0.1:{port}" in s.log()


def test_numeric_user_and_group_in_config_files(tmp_path):
    # Gunicorn: "A valid user id (as an integer) or the name of a user".
    uid, gid = os.getuid(), os.getgid()
    for name, text in (("n.conf.py", f"user = {uid}\ngroup = {gid}\n"),
                       ("n.toml", f"user = {uid}\ngroup = {gid}\n")):
        (tmp_path / name).write_text(text)
        p = subprocess.run([BIN, "-c", str(tmp_path / name), "--print-config", "basic:app"], cwd=APPS,
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        assert f'user = "{uid}"' in p.stdout and f'group = "{gid}"' in p.stdout, p.stdout


def test_unambiguous_option_prefixes_as_argparse(tmp_path):
    # Gunicorn's argparse takes `--grace 5` for --graceful-timeout.
    p = subprocess.run([BIN, "--print-config", "--grace", "5", "--max-requests-j", "7", "--error-log=-",
                        "basic:app"], cwd=APPS, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    for line in ("graceful_timeout = 5", "max_requests_jitter = 7", 'errorlog = "-"'):
        assert line in p.stdout.splitlines(), p.stdout


def test_worker_exiting_is_logged_by_the_worker(start_server):
    # Gunicorn's worker says "Worker exiting (pid: N)" under its own pid.
    s = start_server("basic:app", "-w", "1")
    [pid] = s.worker_pids()
    s.kill(signal.SIGTERM)
    assert s.proc.wait(10) == 0
    assert re.search(rf"\[{pid}\] \[INFO\] Worker exiting \(pid: {pid}\)$", s.log(), re.M), s.log()


def test_term_is_graceful(start_server):
    s = start_server("basic:app")
    c = s.conn(timeout=10)
    c.request("GET", "/sleep?1")
    time.sleep(0.3)  # the request is in the app now
    s.kill(signal.SIGTERM)
    r = c.getresponse()
    assert r.status == 200 and r.read() == b"slept"
    assert s.proc.wait(timeout=10) == 0


def test_quit_is_fast(start_server):
    s = start_server("basic:app")
    c = s.conn(timeout=10)
    c.request("GET", "/sleep?5")
    time.sleep(0.3)
    t = time.monotonic()
    s.kill(signal.SIGQUIT)
    s.proc.wait(timeout=5)
    assert time.monotonic() - t < 3


def test_worker_crash_is_replaced(start_server):
    s = start_server("basic:app", "-w", "2")
    before = s.worker_pids()
    assert len(before) == 2
    import os
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        now = s.worker_pids()
        if len(now) == 2 and before[0] not in now:
            break
        time.sleep(0.05)
    assert len(now) == 2 and before[0] not in now
    assert "SIGKILL" in s.wait_log(r"SIGKILL")
    assert s.request()[0] == 200


def test_environ_basics(start_server):
    s = start_server("basic:app")
    status, _, body = s.request("GET", "/environ?a=1&b=%20", headers={"X-Thing": "v"})
    env = json.loads(body)
    assert env["REQUEST_METHOD"] == "GET"
    assert env["PATH_INFO"] == "/environ"
    assert env["QUERY_STRING"] == "a=1&b=%20"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["HTTP_X_THING"] == "v"
    assert env["wsgi.url_scheme"] == "http"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["RAW_URI"] == "/environ?a=1&b=%20"
    assert env["wsgi.input_terminated"] is True


def test_environ_of_consecutive_requests_is_independent(start_server):
    """Each environ holds exactly its own request (the server reuses the
    strings and the dict of earlier ones): headers, query, method, version,
    host and scheme that an earlier request had must not linger."""
    s = start_server("basic:app", "-w", "1")
    c = s.conn()
    reqs = [
        ("GET", "/environ?q=1", {"Host": "a.example:81", "X-One": "1", "Cookie": "c=1",
                                "X-Forwarded-Proto": "https"}),
        ("GET", "/environ?q=1", {"Host": "a.example:81", "X-One": "1", "Cookie": "c=1",
                                "X-Forwarded-Proto": "https"}),
        ("GET", "/environ", {"Host": "b.example"}),
        ("POST", "/environ?z", {"Host": "b.example", "Content-Type": "text/plain",
                                "X-Two": "2"}),
        ("GET", "/environ", {"Host": "b.example"}),
        ("GET", "/environ", {"Host": "b.example"}),
        ("DELETE", "/environ?d", {"Host": "b.example", "X-One": "again"}),
        ("GET", "/environ", {"Host": "b.example"}),
    ]
    envs = []
    for method, path, headers in reqs:
        c.request(method, path, body=b"ab" if method == "POST" else None, headers=headers)
        r = c.getresponse()
        envs.append(json.loads(r.read()))
    c.close()
    e = envs[0]
    assert (e["QUERY_STRING"], e["HTTP_X_ONE"], e["HTTP_COOKIE"]) == ("q=1", "1", "c=1")
    assert (e["wsgi.url_scheme"], e["HTTP_HOST"], e["SERVER_PORT"]) == ("https", "a.example:81", str(s.port))
    assert envs[1] == envs[0] | {"REMOTE_PORT": envs[1]["REMOTE_PORT"]}
    e = envs[2]
    assert "HTTP_X_ONE" not in e and "HTTP_COOKIE" not in e and "HTTP_X_FORWARDED_PROTO" not in e
    assert (e["QUERY_STRING"], e["RAW_URI"], e["REQUEST_METHOD"]) == ("", "/environ", "GET")
    assert (e["wsgi.url_scheme"], e["HTTP_HOST"], e["SERVER_PORT"]) == ("http", "b.example", str(s.port))
    e = envs[3]
    assert (e["REQUEST_METHOD"], e["QUERY_STRING"], e["CONTENT_LENGTH"]) == ("POST", "z", "2")
    assert (e["CONTENT_TYPE"], e["HTTP_X_TWO"]) == ("text/plain", "2")
    for e in envs[4], envs[5], envs[7]:
        assert e == envs[2] | {"REMOTE_PORT": e["REMOTE_PORT"]}
    e = envs[6]
    assert (e["REQUEST_METHOD"], e["QUERY_STRING"], e["HTTP_X_ONE"]) == ("DELETE", "d", "again")
    assert "CONTENT_TYPE" not in e and "CONTENT_LENGTH" not in e and "HTTP_X_TWO" not in e


def test_reload_restarts_workers_on_source_change(start_server, tmp_path):
    src = tmp_path / "reloadme.py"
    src.write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'v1']\n"
    )
    s = start_server("reloadme:app", "--reload", "--chdir", str(tmp_path), cwd=tmp_path)
    assert s.request()[2] == b"v1"
    src.write_text(src.read_text().replace("v1", "v2"))
    deadline = time.monotonic() + 10
    body = b""
    while time.monotonic() < deadline and body != b"v2":
        time.sleep(0.2)
        try:
            body = s.request()[2]
        except OSError:
            pass
    assert body == b"v2"
    assert "reloadme.py modified" in s.log()


def test_reload_serves_500_while_the_code_does_not_import(start_server, tmp_path):
    # Gunicorn's reloader, after a SyntaxError, keeps the worker up with an
    # app that fails every request, and watches the broken file. Ours
    # answers 500 without the traceback (that goes to the log only) and does
    # the same for any exception raised while importing, in a module the
    # app imports too.
    src = tmp_path / "reloadme.py"
    helper = tmp_path / "helper.py"
    helper.write_text("WORD = b'v1'\n")
    src.write_text(
        "import helper\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [helper.WORD]\n"
    )
    s = start_server("reloadme:app", "--reload", "--chdir", str(tmp_path), cwd=tmp_path,
                     env={"PYTHONDONTWRITEBYTECODE": "1"})

    def body_becomes(want):
        deadline = time.monotonic() + 10
        got = None
        while time.monotonic() < deadline and got != want:
            time.sleep(0.1)
            try:
                got = s.request()
                got = (got[0], got[2])
            except OSError:
                pass
        return got

    src.write_text("def app(environ, start_response)\n    pass\n")
    assert body_becomes((500, b"Internal Server Error\n")) == (500, b"Internal Server Error\n")
    log = s.wait_log(r"answering 500 until a watched file changes")
    assert "SyntaxError" in log and not re.search(r"exited with code [1-9]", log)
    src.write_text(
        "import helper\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [helper.WORD]\n"
    )
    assert body_becomes((200, b"v1")) == (200, b"v1")
    # An exception in an imported module: that module is watched.
    helper.write_text("WORD = b'v2'\nraise RuntimeError('half-written')\n")
    assert body_becomes((500, b"Internal Server Error\n")) == (500, b"Internal Server Error\n")
    helper.write_text("WORD = b'v2'\n")
    assert body_becomes((200, b"v2")) == (200, b"v2")
    assert "half-written" in s.log()
    assert s.proc.poll() is None


def test_reload_extra_files_and_patterns(start_server, tmp_path):
    # --reload-extra-file, as Gunicorn: files the app reads (templates, configs) restart the
    # workers too; glob patterns (** recursive) are relative to where the server started.
    (tmp_path / "tpl" / "sub").mkdir(parents=True)
    page = tmp_path / "tpl" / "sub" / "page.html"
    page.write_text("v1")
    conf = tmp_path / "settings.ini"
    conf.write_text("a=1")
    (tmp_path / "readsfile.py").write_text(
        "import pathlib\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [pathlib.Path(__file__).with_name('tpl').joinpath('sub', 'page.html').read_bytes()]\n")
    s = start_server("readsfile:app", "--reload", "--reload-extra-file", "tpl/**/*.html",
                     "--reload-extra-file", "settings.ini", "--reload-extra-file", "gone.txt",
                     "--chdir", str(tmp_path), cwd=tmp_path)
    assert s.request()[2] == b"v1"
    assert "gone.txt: no such file" in s.log()
    for n, (path, marker, new) in enumerate(((page, "page.html modified", "v2"),
                                             (conf, "settings.ini modified", "a=2"))):
        # the worker watches once it says it is booting (after its watches are set)
        s.wait_log("Booting worker with pid", count=n + 1)
        path.write_text(new)
        s.wait_log(re.escape(marker))
    assert s.request()[2] == b"v2"
    p = subprocess.run([BIN, "--print-config", "--reload-extra-file", "tpl/*.html", "basic:app"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert f'reload_extra_files = ["{tmp_path}/tpl/*.html"]' in p.stdout.splitlines(), p.stdout


def test_threads_run_app_calls_concurrently(start_server):
    import concurrent.futures
    s = start_server("basic:app", "-w", "1", "--threads", "4")
    t = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda _: s.request("GET", "/sleep?0.6", timeout=10)[0], range(4)))
    took = time.monotonic() - t
    assert results == [200] * 4
    # Four 0.6 s sleeps on one worker: concurrent, not 2.4 s in a row.
    assert took < 1.8, took
    env = json.loads(s.request("GET", "/environ")[2])
    assert env["wsgi.multithread"] is True and env["wsgi.multiprocess"] is False


def test_threads_keepalive_connections_do_not_wait_behind_a_slow_call(start_server):
    """With --threads, any idle loop serves any connection: requests on other
    keep-alive connections are answered while one connection's app call
    sleeps, however the connections were spread when they were accepted."""
    import concurrent.futures
    import http.client
    s = start_server("basic:app", "-w", "1", "--threads", "2", "--keep-alive", "30")
    # Four connections on two loops: whatever the spread at accept time,
    # some loop took two of them, and the slow call below lands on each
    # connection in turn.
    conns = [http.client.HTTPConnection("127.0.0.1", s.port, timeout=10) for _ in range(4)]
    try:
        for c in conns:  # established and kept alive before the test starts
            c.request("GET", "/")
            r = c.getresponse()
            assert r.status == 200 and r.read()

        def get(c, path):
            t0 = time.monotonic()
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            return r.status, time.monotonic() - t0

        with concurrent.futures.ThreadPoolExecutor(len(conns)) as ex:
            for i, slow_conn in enumerate(conns):
                slow = ex.submit(get, slow_conn, "/sleep?1.2")
                time.sleep(0.2)  # the slow call has started
                fast = [ex.submit(get, c, "/") for c in conns if c is not slow_conn]
                results = [f.result() for f in fast]
                assert slow.result()[0] == 200
                for status, took in results:
                    assert status == 200
                    # not behind the 1.2 s sleep (generous for a loaded machine)
                    assert took < 0.8, (i, results)
    finally:
        for c in conns:
            c.close()


def test_new_connections_are_spread_over_the_workers(start_server):
    """New keep-alive connections land on every worker, not all on the one
    that is first in the listening socket's wait queue (EPOLLEXCLUSIVE wakes
    the first waiter in line; a worker that is always back in epoll_wait
    first would take every connection, as it did wrk's 64)."""
    import http.client
    from collections import Counter
    s = start_server("basic:app", "-w", "2", "--keep-alive", "30")
    wait_workers = time.monotonic() + 10
    while time.monotonic() < wait_workers:  # both workers booted and accepting
        pids = {s.request("GET", "/pid")[2] for _ in range(20)}
        if len(pids) == 2:
            break
        time.sleep(0.1)
    conns = []
    try:
        owners = []
        for _ in range(32):  # each opened and answered, then kept open
            c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
            conns.append(c)
            c.request("GET", "/pid")
            owners.append(c.getresponse().read())
        per_worker = Counter(owners)
        print("connections per worker:", sorted(per_worker.values()))
        assert len(per_worker) == 2, per_worker
        # 16/16 here when idle, 9/23 at worst under a CPU hog; the old binary 32/0
        assert min(per_worker.values()) >= 5, per_worker
    finally:
        for c in conns:
            c.close()


def burst_of_pid_requests(port, n=64):
    """Open n connections as fast as Python goes, one `GET /pid` on each;
    the worker pid that answered each."""
    socks = [socket.socket() for _ in range(n)]
    try:
        req = b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n"
        # On loopback connect() returns with the connection already queued
        # for accept, and the request follows.
        for c in socks:
            c.connect(("127.0.0.1", port))
            c.send(req)
        for c in socks:
            c.settimeout(10)
        pids = []
        for c in socks:
            data = b""
            while True:
                head, sep, body = data.partition(b"\r\n\r\n")
                m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                if sep and m and len(body) >= int(m.group(1)):
                    break
                chunk = c.recv(4096)
                assert chunk, data
                data += chunk
            assert head.startswith(b"HTTP/1.1 200 "), head
            pids.append(int(body))
        return pids
    finally:
        for c in socks:
            c.close()


@pytest.mark.parametrize("how", ["-w 2", "-w 1 and TTIN"])
def test_a_burst_of_connections_is_shared_between_workers(start_server, how):
    """64 connections opened at once (a proxy filling its pool, wrk
    starting) are spread over both workers, not left mostly to the one that
    happened to be running: each keeps the connections it accepted, so a
    lopsided split lasts as long as they do. Also when the second worker
    came from TTIN on a server started with one."""
    if how == "-w 2":
        s = start_server("basic:app", "-w", "2")
    else:
        s = start_server("basic:app", "-w", "1")
        s.kill(signal.SIGTTIN)
        deadline = time.monotonic() + 15
        while len(s.worker_pids()) < 2:
            assert time.monotonic() < deadline, s.log()
            time.sleep(0.05)
        # until the new worker serves (it boots the app first)
        seen = set()
        while len(seen) < 2:
            assert time.monotonic() < deadline, (seen, s.log())
            seen.update(burst_of_pid_requests(s.port, 4))
    pids = burst_of_pid_requests(s.port)
    counts = sorted(pids.count(p) for p in set(pids))
    assert set(pids) <= set(s.worker_pids())
    # Balanced is 32/32; a worker busy in the app at the moment of an
    # accept is passed over, so allow some slack. Before the balancing
    # (src/balance.rs) this same burst split 8/56, 2/62, 1/63, 17/47; after
    # TTIN from -w 1, before the workers balanced then, 2/62, 0/64, 4/60, 15/49.
    assert len(counts) == 2 and counts[0] >= 20, counts
