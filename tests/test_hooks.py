"""Gunicorn's server hooks in a Python config. The worker-side ones (post_fork,
post_worker_init, pre_request, post_request, worker_int, worker_exit) run in each worker,
the arbiter's (on_starting, when_ready, pre_fork, child_exit, nworkers_changed, on_reload,
on_exit) in a short-lived child of the master; when and with what Gunicorn's documentation
says, their errors handled as Gunicorn handles them."""
import http.client
import json
import re
import signal
import subprocess
import time

import pytest

from conftest import APPS, BIN

HOOKS_CONF = '''
import json, os
OUT = os.environ["HOOK_EVENTS"]

def _w(*event):
    with open(OUT, "a") as f:
        f.write(json.dumps(event) + "\\n")

def post_fork(server, worker):
    server.log.info("post_fork hook in %s", worker.pid)
    _w("post_fork", os.getpid(), worker.pid, worker.ppid, server.pid, worker.age,
       server.cfg.workers, worker.cfg.timeout, worker.booted)

def post_worker_init(worker):
    _w("post_worker_init", os.getpid(), callable(worker.wsgi), worker.booted)

def pre_request(worker, req):
    _w("pre_request", os.getpid(), req.method, req.path, req.query, req.uri,
       dict(req.headers).get("X-TRACE"), list(req.version), worker.nr)

def post_request(worker, req, environ, resp):
    _w("post_request", os.getpid(), req.path, environ["PATH_INFO"], resp.status,
       resp.status_code, resp.sent, dict(resp.headers).get("Content-Type"), worker.nr)

def worker_int(worker):
    _w("worker_int", os.getpid())

def worker_exit(server, worker):
    _w("worker_exit", os.getpid(), worker.pid)

def worker_abort(worker):  # only on a timeout: test_worker_abort_on_timeout
    _w("worker_abort", os.getpid())
'''


def events(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_events(path, name, count, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [e for e in events(path) if e[0] == name]
        if len(got) >= count:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{count} x {name} expected, got: {events(path)}")


@pytest.mark.parametrize("preload", [False, True])
def test_worker_hooks_run_as_in_gunicorn(tmp_path, start_server, preload):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(HOOKS_CONF)
    out = tmp_path / "events"
    args = ["-c", str(conf), "-w", "2"] + (["--preload"] if preload else [])
    s = start_server("basic:app", *args, env={"HOOK_EVENTS": str(out)})
    workers = s.worker_pids()
    assert len(workers) == 2
    forks = wait_events(out, "post_fork", 2)
    # in each worker, with Gunicorn's objects: the worker's pid, its parent the master
    assert sorted(e[1] for e in forks) == workers
    for _, pid, wpid, ppid, server_pid, age, nworkers, timeout, booted in forks:
        assert (wpid, ppid, server_pid, nworkers, timeout, booted) == (pid, s.pid, s.pid, 2, 30, False)
    assert sorted(e[5] for e in forks) == [1, 2], "worker.age counts the spawns"
    inits = wait_events(out, "post_worker_init", 2)
    assert sorted(e[1] for e in inits) == workers
    assert all(e[2] is True and e[3] is False for e in inits), "the app is loaded, not yet booted"
    assert "post_fork hook in" in s.log(), "server.log writes to the error log"
    assert "does not have" not in s.log(), "every hook of the file runs"

    st, _, body = s.request("GET", "/?a=1", headers={"X-Trace": "t1"})
    assert (st, body) == (200, b"Hello, World!")
    st, _, body = s.request("GET", "/big?2")
    assert st == 200 and len(body) == 2 << 20
    pre = wait_events(out, "pre_request", 2)
    assert pre[0][2:8] == ["GET", "/", "a=1", "/?a=1", "t1", [1, 1]]
    post = wait_events(out, "post_request", 2)
    by_path = {e[2]: e for e in post}
    assert by_path["/"][3:7] == ["/", "200 OK", 200, 13]
    assert by_path["/"][7] == "text/plain"
    # a streamed body: the hook runs when it has all been sent
    assert by_path["/big"][5:7] == [200, 2 << 20]
    for e in post:
        assert e[8] >= 1, "worker.nr counts the requests"

    assert s.stop(signal.SIGTERM) == 0
    exits = wait_events(out, "worker_exit", 2)
    assert sorted(e[1] for e in exits) == workers and all(e[1] == e[2] for e in exits)
    assert not [e for e in events(out) if e[0] == "worker_int"], "worker_int is for INT/QUIT only"


def test_worker_int_then_worker_exit_on_fast_stop(tmp_path, start_server):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(HOOKS_CONF)
    out = tmp_path / "events"
    s = start_server("basic:app", "-c", str(conf), "-w", "2", env={"HOOK_EVENTS": str(out)})
    workers = s.worker_pids()
    wait_events(out, "post_worker_init", 2)
    s.kill(signal.SIGINT)
    s.proc.wait(timeout=15)
    ints = wait_events(out, "worker_int", 2)
    exits = wait_events(out, "worker_exit", 2)
    assert sorted(e[1] for e in ints) == workers == sorted(e[1] for e in exits)
    names = [e[0] for e in events(out) if e[0] in ("worker_int", "worker_exit")]
    for pid in workers:
        mine = [e[0] for e in events(out) if e[0] in ("worker_int", "worker_exit") and e[1] == pid]
        assert mine == ["worker_int", "worker_exit"], names


def test_hook_errors_are_handled_as_gunicorn_does(tmp_path, start_server):
    # a hook that cannot take Gunicorn's arguments: a config error naming it (exit 2)
    conf = tmp_path / "arity.py"
    conf.write_text("def post_fork(worker):\n    pass\n")
    r = subprocess.run([BIN, "-c", str(conf), "-b", "127.0.0.1:0", "basic:app"], cwd=APPS,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "post_fork" in r.stderr and "2 arguments" in r.stderr, r.stderr
    # post_fork raising: the worker cannot boot (3), with the traceback; the master stops
    conf = tmp_path / "raises.py"
    conf.write_text("def post_fork(server, worker):\n    raise RuntimeError('no database here')\n")
    r = subprocess.run([BIN, "-c", str(conf), "-b", "127.0.0.1:0", "basic:app"], cwd=APPS,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr
    assert "RuntimeError: no database here" in r.stderr and "Traceback" in r.stderr
    # pre_request raising: a 500 without the traceback, which goes to the log;
    # post_request raising: logged, the response stands
    conf = tmp_path / "requests.py"
    conf.write_text(
        "def pre_request(worker, req):\n"
        "    if req.path == '/boom':\n"
        "        raise ValueError('pre_request says no')\n"
        "def post_request(worker, req):\n"  # Gunicorn's 2-argument form
        "    if req.path == '/late':\n"
        "        raise KeyError('post_request failed')\n")
    s = start_server("basic:app", "-c", str(conf), "--threads", "2")
    st, _, body = s.request("GET", "/boom")
    assert st == 500 and b"pre_request says no" not in body and b"Traceback" not in body
    s.wait_log("ValueError: pre_request says no")
    st, _, body = s.request("GET", "/late")
    assert (st, body) == (404, b"not found")
    s.wait_log("Exception in post_request hook")
    assert "KeyError: 'post_request failed'" in s.log()
    st, _, body = s.request("GET", "/")
    assert (st, body) == (200, b"Hello, World!"), "the worker goes on serving"


def test_print_config_names_the_worker_hooks(tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(HOOKS_CONF)
    r = subprocess.run([BIN, "--print-config", "-c", str(conf), "basic:app"], cwd=APPS,
                       capture_output=True, text=True, timeout=30, env={"HOOK_EVENTS": "/dev/null"})
    assert r.returncode == 0, r.stderr
    line = [l for l in r.stdout.splitlines() if l.startswith("# server hooks")]
    assert line and all(h in line[0] for h in ("post_fork", "pre_request", "worker_abort",
                                               "worker_exit")), r.stdout
    assert "does not have" not in r.stderr and "post_fork" not in r.stderr, r.stderr


MASTER_CONF = '''
import json, os
OUT = os.environ["HOOK_EVENTS"]

def _w(*event):
    with open(OUT, "a") as f:
        f.write(json.dumps(event) + "\\n")

def on_starting(server):
    _w("on_starting", os.getpid(), server.pid, server.cfg.workers)

def when_ready(server):
    server.log.info("when_ready hook ran")
    print("when_ready printed this", flush=False)
    _w("when_ready", server.pid)

def pre_fork(server, worker):
    _w("pre_fork", worker.age, worker.pid)

def post_fork(server, worker):
    _w("post_fork", worker.age, worker.pid)

def child_exit(server, worker):
    _w("child_exit", worker.age, worker.pid)

def nworkers_changed(server, new_value, old_value):
    _w("nworkers_changed", new_value, old_value)

def on_reload(server):
    _w("on_reload", server.pid)

def on_exit(server):
    _w("on_exit", server.pid)
'''


@pytest.mark.parametrize("preload", [False, True])
def test_arbiter_hooks_run_as_in_gunicorn(tmp_path, start_server, preload):
    """The master runs no Python of its own: each arbiter hook runs in a child of the
    master, which waits for it, at the moment Gunicorn's arbiter runs it."""
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(MASTER_CONF)
    out = tmp_path / "events"
    args = ["-c", str(conf), "-w", "2"] + (["--preload"] if preload else [])
    s = start_server("basic:app", *args, env={"HOOK_EVENTS": str(out)})
    start = wait_events(out, "post_fork", 2)
    names = [e[0] for e in events(out)]
    assert names[:4] == ["nworkers_changed", "on_starting", "when_ready", "pre_fork"], names
    evs = events(out)
    for age in (1, 2):  # each worker's pre_fork (in the master) comes before its post_fork
        assert evs.index(["pre_fork", age, None]) < [
            i for i, e in enumerate(evs) if e[0] == "post_fork" and e[1] == age][0], evs
    assert events(out)[0][1:] == [2, None], "the first setting has old_value None"
    first = events(out)[1]
    assert first[2] == s.pid and first[1] != s.pid and first[3] == 2, first
    assert [e[1:] for e in events(out) if e[0] == "pre_fork"] == [[1, None], [2, None]]
    assert "when_ready hook ran" in s.log()
    assert "when_ready printed this" in s.log(), "a hook's print() is not lost"
    workers = dict((e[1], e[2]) for e in start)  # age -> pid

    s.kill(signal.SIGTTIN)
    assert wait_events(out, "nworkers_changed", 2)[1][1:] == [3, 2]
    wait_events(out, "post_fork", 3)
    s.kill(signal.SIGTTOU)
    assert wait_events(out, "nworkers_changed", 3)[2][1:] == [2, 3]
    gone = wait_events(out, "child_exit", 1)[0]
    assert gone[1] == 1 and gone[2] == workers[1], ("the oldest worker is retired", events(out), s.log())

    s.kill(signal.SIGHUP)
    assert wait_events(out, "on_reload", 1)[0][1] == s.pid
    if not preload:
        # as Gunicorn's reload: the settings are set again (num_workers), then on_reload
        names = [e[0] for e in events(out)]
        assert names[names.index("on_reload") - 1] == "nworkers_changed", names
        assert wait_events(out, "nworkers_changed", 4)[3][1:] == [2, 2]
    wait_events(out, "post_fork", 5)
    assert s.stop(signal.SIGTERM) == 0
    exits = wait_events(out, "child_exit", 5)
    assert len({e[2] for e in exits}) == 5
    assert events(out)[-1] == ["on_exit", s.pid]
    names = [e[0] for e in events(out)]
    assert names.count("on_starting") == 1 and names.count("when_ready") == 1, \
        "a reload (an in-place re-exec with --preload) does not start the master again"


@pytest.mark.parametrize("hook", ["on_starting", "when_ready"])
def test_a_start_hook_that_raises_stops_the_start(tmp_path, hook):
    """Gunicorn lets on_starting/when_ready raise out of its arbiter's start: the
    server does not start (exit 1). A hook can so refuse to start a server."""
    conf = tmp_path / "gunicorn.conf.py"
    pidfile = tmp_path / "app.pid"
    conf.write_text(f"def {hook}(server):\n    raise RuntimeError('{hook} says no')\n")
    r = subprocess.run([BIN, "-c", str(conf), "-b", "127.0.0.1:0", "-p", str(pidfile), "basic:app"],
                       cwd=APPS, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r.stderr
    assert f"Exception in {hook} hook" in r.stderr and f"RuntimeError: {hook} says no" in r.stderr
    assert "Reason: a start hook (on_starting, when_ready) raised." in r.stderr
    assert "Booting worker" not in r.stderr
    assert not pidfile.exists()


def test_a_hook_that_is_not_callable_is_a_config_error(tmp_path):
    # Gunicorn's validate_callable refuses it ("Value is not callable").
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("post_fork = 5\n")
    r = subprocess.run([BIN, "-c", str(conf), "-b", "127.0.0.1:0", "basic:app"], cwd=APPS,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "post_fork" in r.stderr and "not callable" in r.stderr, r.stderr
    assert "does not have" not in r.stderr


def test_arbiter_hook_errors_are_logged_and_the_master_goes_on(tmp_path, start_server):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("def when_ready(server):\n    raise RuntimeError('when_ready failed')\n"
                    "def nworkers_changed(server, new_value):\n    pass\n")
    r = subprocess.run([BIN, "-c", str(conf), "-b", "127.0.0.1:0", "basic:app"], cwd=APPS,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "nworkers_changed" in r.stderr and "3 arguments" in r.stderr
    # Past the start, a hook that raises is logged and the master goes on.
    conf.write_text("def pre_fork(server, worker):\n    raise RuntimeError('pre_fork failed')\n")
    s = start_server("basic:app", "-c", str(conf))
    s.wait_log("RuntimeError: pre_fork failed")
    assert "Exception in pre_fork hook" in s.log()
    st, _, body = s.request("GET", "/")
    assert (st, body) == (200, b"Hello, World!")


@pytest.mark.parametrize("preload", [False, True])
def test_worker_abort_on_timeout(tmp_path, start_server, preload):
    """Gunicorn: worker_abort(worker) is called when a worker receives SIGABRT, which the
    arbiter sends on a timeout; the worker then exits (worker_exit runs) and is replaced.
    faulthandler's stack dump still comes first."""
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(HOOKS_CONF)
    out = tmp_path / "events"
    s = start_server("basic:app", "-c", str(conf), "-t", "1",
                     *(["--preload"] if preload else []), env={"HOOK_EVENTS": str(out)})
    first = wait_events(out, "post_worker_init", 1)[0][1]
    try:
        s.request("GET", "/sleep?30", timeout=20)
    except (http.client.HTTPException, OSError):
        pass  # the worker is gone mid-request: the connection closes
    aborted = wait_events(out, "worker_abort", 1)[0]
    assert aborted[1] == first, "run in the worker that timed out"
    exits = [e for e in wait_events(out, "worker_exit", 1) if e[1] == first]
    assert exits, events(out)
    names = [e[0] for e in events(out)]
    assert names.index("worker_abort") < names.index("worker_exit")
    s.wait_log("WORKER TIMEOUT")
    s.wait_log(re.escape(f"Worker (pid:{first}) exited with code 1"))
    assert "sleep" in s.log(), "faulthandler's dump of the stuck stack"
    wait_events(out, "post_worker_init", 2)
    st, _, body = s.request("GET", "/")
    assert (st, body) == (200, b"Hello, World!")
