#!/usr/bin/env python3
"""ferricorn side-by-side benchmark: scenarios x servers, run by bench/run.

Run it through bench/run (which installs what is needed and uses the bench venv).
Every server is started on its own free loopback port, waited for, checked with a
real request, measured and stopped (TERM, then KILL). A failure becomes a
"fail: reason" cell in the table; the run goes on.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
APPS = BENCH / "apps"
TOOLS = BENCH / "tools"
RESULTS = BENCH / "results"
TARGET = ROOT / "target"
VENV = Path(os.environ.get("BENCH_VENV", TARGET / "bench-venv"))
WORK = TARGET / "bench-work"
LOGS = WORK / "logs"
DJANGO_DIR = WORK / "django"
DATA_FILE = WORK / "1mib.bin"
FERRICORN = Path(os.environ.get("FERRICORN_BIN", ROOT / "target" / "release" / "ferricorn"))
PY = VENV / "bin" / "python"

ONE_MIB = 1 << 20
HOST = "127.0.0.1"

# ---------------------------------------------------------------------------
# small utilities


def log(msg):
    print(msg, file=sys.stderr, flush=True)


_used_ports = set()


def free_port():
    for _ in range(100):
        s = socket.socket()
        s.bind((HOST, 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _used_ports:
            _used_ports.add(port)
            return port
    raise RuntimeError("no free port")


def last_line(path, limit=90):
    try:
        lines = [l.strip() for l in Path(path).read_text(errors="replace").splitlines()
                 if l.strip() and not l.startswith("$ ")]
    except OSError:
        return "no log"
    # prefer a line that looks like an error
    for l in reversed(lines[-40:]):
        if re.search(r"error|Error|ERROR|fail|Fail|cannot|No module|not found|denied", l):
            return l[:limit]
    return lines[-1][:limit] if lines else "no output"


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(pid):
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def smaps_rollup(pid):
    vals = {}
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[0] in ("Rss:", "Pss:", "Private_Dirty:"):
                    vals[parts[0][:-1]] = int(parts[1])  # kB
    except OSError:
        return None
    return vals


def cmdline(pid):
    try:
        return Path("/proc/%d/cmdline" % pid).read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def memory(pid):
    """PSS total of the process tree (MB), mean RSS per worker (MB), and each
    worker's Private_Dirty (MB): with --preload, a worker that never served a
    request has copied few of the master's pages, so it shows as a low figure."""
    procs = [pid] + [p for p in descendants(pid) if "resource_tracker" not in cmdline(p)]
    pss_total = 0
    rss = {}
    dirty = {}
    for p in procs:
        v = smaps_rollup(p)
        if v is None:
            continue
        pss_total += v.get("Pss", 0)
        rss[p] = v.get("Rss", 0)
        dirty[p] = v.get("Private_Dirty", 0)
    workers = [rss[p] for p in procs[1:] if p in rss] or [rss.get(pid, 0)]
    return {
        "pss_mb": pss_total / 1024.0,
        "rss_worker_mb": statistics.mean(workers) / 1024.0 if workers else None,
        "nprocs": len(rss),
        "dirty_worker_mb": sorted((dirty[p] / 1024.0 for p in procs[1:] if p in dirty),
                                  reverse=True),
    }


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """utime+stime of one process, in clock ticks (0 if gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


class CpuWatch:
    """How much CPU processes other than ours used during a measurement: the machine is
    shared, and a compile running beside a benchmark halves its figures."""

    def __init__(self, pids_fn):
        self.pids_fn = pids_fn

    @staticmethod
    def _stat():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal
        return v[0] + v[1] + v[2], (v[7] if len(v) > 7 else 0)

    def _ours(self):
        import resource
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        ru_self = resource.getrusage(resource.RUSAGE_SELF)
        ticks = (ru.ru_utime + ru.ru_stime + ru_self.ru_utime + ru_self.ru_stime) * CLK_TCK
        # kernel threads (ksoftirqd, kworkers) mostly carry our own loopback traffic
        pids = self.pids_fn() + children_map().get(2, [])
        return ticks + sum(proc_cpu(p) for p in pids), pids

    def start(self):
        self.t0 = time.monotonic()
        self.busy0, self.steal0 = self._stat()
        self.ours0, _ = self._ours()

    def stop(self):
        wall = time.monotonic() - self.t0
        busy1, steal1 = self._stat()
        ours1, _ = self._ours()
        # a process that appeared during the window counts from 0, which is right
        ours_delta = ours1 - self.ours0
        cap = wall * CLK_TCK * (os.cpu_count() or 1)
        self.foreign = max(0.0, (busy1 - self.busy0 - ours_delta) / cap * 100) if cap else 0.0
        self.steal = (steal1 - self.steal0) / cap * 100 if cap else 0.0
        return self

    def warning(self, threshold=10.0):
        out = []
        if self.foreign >= threshold:
            out.append("WARNING: other processes used %.0f%% of the CPUs" % self.foreign)
        if self.steal >= 5.0:
            out.append("WARNING: %.0f%% CPU steal" % self.steal)
        return "; ".join(out)


def http_get(port, path="/", method="GET", body=None, timeout=5.0):
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Host": "bench"}
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data
    finally:
        conn.close()


def fmt_num(v):
    if v is None:
        return "—"
    if v >= 100:
        return "{:,.0f}".format(v)
    if v >= 10:
        return "{:.1f}".format(v)
    return "{:.3g}".format(v)


# ---------------------------------------------------------------------------
# servers


class Fail(Exception):
    pass


class Skip(Exception):
    pass


class Server:
    """One started server: a process group we own."""

    def __init__(self, name, cmd, cwd, port, env=None, valgrind_dir=None, pin=None, tag=""):
        self.name, self.cmd, self.cwd, self.port = name, cmd, cwd, port
        self.env = env or server_env()
        self.valgrind_dir = valgrind_dir
        self.pin = pin
        LOGS.mkdir(parents=True, exist_ok=True)
        self.logpath = LOGS / ("%s-%s%s.log" % (name, port, tag))
        self.proc = None
        self.started_at = None
        self.stop_signal = signal.SIGTERM

    def start(self):
        cmd = list(self.cmd)
        if self.valgrind_dir:
            cmd = ["valgrind", "--tool=callgrind", "--trace-children=yes",
                   "--callgrind-out-file=%s/callgrind.out.%%p" % self.valgrind_dir] + cmd
        if self.pin is not None:
            cmd = ["taskset", "-c", str(self.pin)] + cmd
        self.logf = open(self.logpath, "wb")
        self.logf.write(("$ cd %s && %s\n" % (self.cwd, " ".join(map(str, cmd)))).encode())
        self.logf.flush()
        self.started_at = time.monotonic()
        try:
            self.proc = subprocess.Popen([str(c) for c in cmd], cwd=str(self.cwd), env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=self.logf,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            raise Fail("cannot start: %s" % e)

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Fail("exited rc=%s: %s" % (self.proc.returncode, last_line(self.logpath)))
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise Fail("not listening after %ds: %s" % (timeout, last_line(self.logpath)))

    def pids(self):
        if not self.proc:
            return []
        return [self.proc.pid] + descendants(self.proc.pid)

    def signal_stop(self):
        """First half of stop: send the stop signal to our process group."""
        if not self.proc:
            return
        self._tree = self.pids()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, self.stop_signal)
            except ProcessLookupError:
                pass

    def finish_stop(self, deadline):
        """Second half: wait until the tree is gone or the deadline, then KILL the rest."""
        if not self.proc:
            return
        tree = getattr(self, "_tree", None) or self.pids()
        while time.monotonic() < deadline:
            alive = [p for p in tree if os.path.exists("/proc/%d" % p) and not _zombie(p)]
            if self.proc.poll() is not None and not alive:
                break
            time.sleep(0.05)
        # KILL whatever of the tree is left (our group, and any member that left it)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in tree:
            try:
                if not _zombie(p) and os.path.exists("/proc/%d" % p):
                    os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if not self.logf.closed:
            self.logf.close()
        self.proc_done = True

    def stop(self, grace=5.0):
        if not self.proc or getattr(self, "proc_done", False):
            return
        self.signal_stop()
        self.finish_stop(time.monotonic() + grace)


def stop_all(servers, grace):
    servers = [s for s in servers if s.proc and not getattr(s, "proc_done", False)]
    for s in servers:
        s.signal_stop()
    deadline = time.monotonic() + grace
    for s in servers:
        s.finish_stop(deadline)


def _zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def server_env():
    env = dict(os.environ)
    for k in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(k, None)
    env["PATH"] = "%s:%s" % (VENV / "bin", env.get("PATH", "/usr/bin:/bin"))
    env["FERRICORN_BENCH_FILE"] = str(DATA_FILE)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# name -> builder(app, cwd, port, workers, preload, valgrind) -> (cmd, note)
def cmd_ferricorn(app, cwd, port, workers, preload, valgrind):
    if not FERRICORN.exists():
        shown = FERRICORN.relative_to(ROOT) if FERRICORN.is_relative_to(ROOT) else FERRICORN
        raise Skip("skipped: %s missing (bench/run builds it: see its warnings)" % shown)
    cmd = [FERRICORN]
    if preload:
        # first, so that an optional-value flag cannot swallow the app argument
        cmd.append("--preload")
    cmd += ["-w", workers, "-b", "%s:%d" % (HOST, port), "--chdir", cwd, "--virtualenv", VENV]
    if valgrind:
        cmd += ["-t", "600"]
    return cmd + [app], ""


def cmd_gunicorn(kind):
    def build(app, cwd, port, workers, preload, valgrind):
        cmd = [VENV / "bin" / "gunicorn", "-w", workers, "-b", "%s:%d" % (HOST, port),
               "--chdir", cwd, "-k", kind]
        note = ""
        if kind == "gthread":
            cmd += ["--threads", "4"]
            note = "%dw x 4t" % workers
        if preload:
            cmd.append("--preload")
        if valgrind:
            cmd += ["-t", "600"]
        return cmd + [app], note
    return build


def cmd_granian(app, cwd, port, workers, preload, valgrind):
    if preload:
        raise Skip("n/a: granian has no --preload")
    return [VENV / "bin" / "granian", "--interface", "wsgi", "--workers", workers,
            "--host", HOST, "--port", port, "--working-dir", cwd, "--no-access-log", app], ""


def cmd_bjoern(app, cwd, port, workers, preload, valgrind):
    return [PY, APPS / "run_bjoern.py", app, HOST, port], "1 process (bjoern has no workers)"


def cmd_uwsgi(app, cwd, port, workers, preload, valgrind):
    cmd = [VENV / "bin" / "uwsgi", "--http-socket", "%s:%d" % (HOST, port), "--master",
           "--processes", workers, "--wsgi", app, "--chdir", cwd, "--virtualenv", VENV,
           "--disable-logging", "--die-on-term", "--need-app", "--listen", "1024",
           "--buffer-size", "32768", "--add-header", "Connection: close"]
    if not preload:
        cmd.append("--lazy-apps")
    # --http-socket has no keep-alive: it closes after every response. The added header
    # says so, so wrk reconnects instead of counting a read error per request.
    return cmd, "closes after each response"


def cmd_nginx(app, cwd, port, workers, preload, valgrind):
    if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
        raise Fail("nginx not installed")
    prefix = WORK / ("nginx-%d" % port)
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text("""
worker_processes %d;
pid %s/nginx.pid;
error_log %s/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    default_type text/plain;
    server {
        listen %s:%d;
        location / { return 200 "Hello, World!"; }
    }
}
""" % (workers, prefix, prefix, HOST, port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return [nginx, "-p", prefix, "-e", prefix / "error.log", "-c", conf,
            "-g", "daemon off; master_process on;"], "no Python: the ceiling"


SERVERS = {
    "ferricorn": cmd_ferricorn,
    "gunicorn-sync": cmd_gunicorn("sync"),
    "gunicorn-gthread": cmd_gunicorn("gthread"),
    "granian": cmd_granian,
    "bjoern": cmd_bjoern,
    "uwsgi": cmd_uwsgi,
    "nginx": cmd_nginx,
}
PY_SERVERS = ["ferricorn", "gunicorn-sync", "gunicorn-gthread", "granian", "bjoern", "uwsgi"]

# ---------------------------------------------------------------------------
# apps and their checks


def check_hello(st, hd, body):
    return st == 200 and body == b"Hello, World!"


def check_json(st, hd, body):
    return st == 200 and hd.get("content-type", "").startswith("application/json")


def check_1mib(st, hd, body):
    return st == 200 and len(body) == ONE_MIB


def check_upload(st, hd, body):
    return st == 200 and body.strip() == str(ONE_MIB).encode()


def check_django(st, hd, body):
    return st == 200 and b"csrfmiddlewaretoken" in body


APPS_DEF = {
    # key: (module:callable, cwd, path, method, check)
    "hello": ("hello:app", APPS, "/", "GET", check_hello),
    "flask": ("flaskapp:app", APPS, "/json", "GET", check_json),
    "gen1m": ("bigbody:generated", APPS, "/", "GET", check_1mib),
    "file1m": ("bigbody:filewrap", APPS, "/", "GET", check_1mib),
    "upload": ("upload:app", APPS, "/", "POST", check_upload),
    "django": ("benchsite.wsgi:application", DJANGO_DIR, "/admin/login/", "GET", check_django),
}


def sanity(port, appkey):
    _, _, path, method, check = APPS_DEF[appkey]
    body = b"x" * ONE_MIB if method == "POST" else None
    try:
        st, hd, data = http_get(port, path, method, body, timeout=30)
    except (OSError, http.client.HTTPException) as e:
        raise Fail("request failed: %s" % (e.__class__.__name__ if not str(e) else str(e)[:60]))
    if not check(st, hd, data):
        raise Fail("bad response: HTTP %d, %d bytes" % (st, len(data)))
    return hd


def start_server(name, appkey, workers, preload=False, valgrind_dir=None, pin=None,
                 timeout=30, tag="", keepalive=None):
    app, cwd, _, _, _ = APPS_DEF[appkey]
    port = free_port()
    cmd, note = SERVERS[name](app, cwd, port, workers, preload, valgrind_dir)
    if keepalive and name in KEEPALIVE_FLAG:
        # before the app argument, which every command ends with
        cmd[-1:-1] = [KEEPALIVE_FLAG[name], str(keepalive)]
        note = "; ".join(x for x in (note, "keep-alive %d s" % keepalive) if x)
    srv = Server(name, cmd, cwd, port, valgrind_dir=valgrind_dir, pin=pin, tag=tag)
    srv.note = note
    if name == "bjoern":
        srv.stop_signal = signal.SIGINT  # its libev loop watches SIGINT only
    srv.start()
    try:
        srv.wait_ready(timeout)
        hd = sanity(srv.port, appkey) if name != "nginx" else None
        if hd and hd.get("x-bench-fallback"):
            srv.note = (srv.note + "; " if srv.note else "") + "no wsgi.file_wrapper: read loop"
    except Exception:
        srv.stop()
        raise
    return srv


# ---------------------------------------------------------------------------
# wrk

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_latency(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s)
    return float(m.group(1)) * UNIT_MS[m.group(2)] if m else None


def parse_wrk(out):
    res = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else 0
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(r"^\s+%s(?:\.000)?%%\s+(\S+)" % pct, out, re.M)
        res[key] = parse_latency(m.group(1)) if m else None
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    res["errors"] = errors
    return res


def run_wrk(port, path, duration, conns=64, lua=None, pin=None, timeout_s=None):
    cmd = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % duration, "--latency"]
    if timeout_s:
        cmd += ["--timeout", "%ds" % timeout_s]
    if lua:
        cmd += ["-s", str(lua)]
    cmd.append("http://%s:%d%s" % (HOST, port, path))
    if pin is not None:
        cmd = ["taskset", "-c", str(pin)] + cmd
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired:
        raise Fail("wrk hung")
    if p.returncode != 0 and "Requests/sec" not in p.stdout:
        raise Fail("wrk: %s" % (p.stderr.strip() or p.stdout.strip())[:80])
    return parse_wrk(p.stdout)


# ---------------------------------------------------------------------------
# scenarios

LOAD_SCENARIOS = {
    # name: (title, app, workers, pin, extra load, servers)
    "hello1w": ("hello, 1 worker (pinned)", "hello", 1, True, None,
                PY_SERVERS + ["nginx"]),
    "hello2w": ("hello, 2 workers", "hello", 2, False, None, PY_SERVERS + ["nginx"]),
    "flask2w": ("Flask JSON, 2 workers", "flask", 2, False, None, PY_SERVERS),
    "file1m": ("1 MiB file_wrapper, 2 workers", "file1m", 2, False, None, PY_SERVERS),
    "gen1m": ("1 MiB generated, 2 workers", "gen1m", 2, False, None, PY_SERVERS),
    "upload1m": ("1 MiB upload, 2 workers", "upload", 2, False, None, PY_SERVERS),
    "idle1000": ("hello 2w + 1000 idle keep-alive", "hello", 2, False, ("idle", 1000),
                 PY_SERVERS),
    "slowloris50": ("hello 2w + 50 slowloris", "hello", 2, False, ("slowloris", 50),
                    PY_SERVERS),
}
OTHER_SCENARIOS = ["instr", "django-start", "django-pss"]
ALL_SCENARIOS = list(LOAD_SCENARIOS) + OTHER_SCENARIOS
QUICK_SCENARIOS = ["hello1w", "hello2w", "flask2w", "slowloris50", "instr", "django-start",
                   "django-pss"]


# Servers whose idle keep-alive timeout is short by default (Gunicorn's 2 s, which
# ferricorn keeps), and the flag that sets it. The idle1000 scenario is about serving
# while 1000 idle connections are *held open*: with the default they close 1-2 s into
# the measurement, the holder's 1000 EOFs then cost its ~70 ms of CPU beside the load,
# and the row measures that instead. bjoern and Granian keep idle connections without
# a timeout; Gunicorn sync and uWSGI's --http-socket close after every response anyway.
KEEPALIVE_FLAG = {"ferricorn": "--keep-alive", "gunicorn-sync": "--keep-alive",
                  "gunicorn-gthread": "--keep-alive"}
HOLD_KEEPALIVE_S = 300  # longer than the scenario with all its retries


def row(scenario, server, **kw):
    r = {"scenario": scenario, "server": server}
    r.update(kw)
    return r


RETRY_BUDGET = [150.0]  # seconds a run may spend measuring noisy loads again


def run_load(scn, server, opts):
    title, appkey, workers, pin, extra, _ = LOAD_SCENARIOS[scn]
    _, _, path, method, _ = APPS_DEF[appkey]
    srv = None
    holder = None
    note = ""
    holder_note = ""
    try:
        srv = start_server(server, appkey, workers, pin=0 if pin else None,
                           keepalive=HOLD_KEEPALIVE_S if extra and extra[0] == "idle" else None)
        note = srv.note
        lua = TOOLS / "upload.lua" if method == "POST" else None
        if extra:
            mode, n = extra
            holder = subprocess.Popen([PY, TOOLS / "holders.py", mode, HOST, str(srv.port), str(n)],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True)
            line = holder.stdout.readline().strip()  # "ready ..." (waits up to 60 s)
            if mode == "slowloris":
                time.sleep(2)  # let the trickle start holding whatever it can hold
            holder_note = "holder " + line
        # short warm-up, then the measured run
        run_wrk(srv.port, path, 1, lua=lua, pin=1 if pin else None)
        holder_pid = holder.pid if holder else None
        best = None
        for attempt in range(1 + opts.retries):
            watch = CpuWatch(lambda: srv.pids() + ([holder_pid] + descendants(holder_pid)
                                                     if holder_pid else []))
            watch.start()
            res = run_wrk(srv.port, path, opts.duration, lua=lua, pin=1 if pin else None)
            watch.stop()
            if best is None or watch.foreign < best[1].foreign:
                best = (res, watch)
            if watch.foreign < 10.0 or attempt == opts.retries:
                break
            if RETRY_BUDGET[0] < opts.duration + 3:
                log("    other processes used %.0f%% of the CPUs (retry budget spent)" % watch.foreign)
                break
            RETRY_BUDGET[0] -= opts.duration + 3
            log("    other processes used %.0f%% of the CPUs: measuring again" % watch.foreign)
            time.sleep(2)
        res, watch = best
        mem = memory(srv.proc.pid)
        if srv.proc.poll() is not None:
            raise Fail("server died during the load")
        if holder:
            holder.send_signal(signal.SIGTERM)
            out, _ = holder.communicate(timeout=10)
            stats = [l for l in out.splitlines() if l.startswith("stats")]
            if stats:
                holder_note = "holder at end: " + stats[0][6:]
            holder = None
        return row(scn, server, rps=res["rps"], p50=res["p50"], p99=res["p99"],
                   errors=res["errors"], pss_mb=mem["pss_mb"], rss_worker_mb=mem["rss_worker_mb"],
                   nprocs=mem["nprocs"], foreign_cpu=watch.foreign, steal=watch.steal,
                   note="; ".join(x for x in (note, holder_note, watch.warning()) if x))
    except Skip as e:
        return row(scn, server, skip=str(e))
    except Fail as e:
        return row(scn, server, fail=str(e), note="; ".join(x for x in (note, holder_note) if x))
    finally:
        if holder and holder.poll() is None:
            holder.kill()
            holder.wait()
        if srv:
            srv.stop()


def combine_rounds(rounds):
    """One row from a server's rounds of one scenario: the median of each figure.

    The machine is shared: one round can lose a third of its throughput to a
    neighbour. Rounds run in rotated server order, and the median of three
    keeps one bad round from deciding a ratio. Errors are summed: an error in
    any round counts.
    """
    if len(rounds) == 1:
        return rounds[0]
    ok = [r for r in rounds if "fail" not in r and "skip" not in r]
    if not ok:
        return rounds[0]
    out = dict(ok[0])
    for key in ("rps", "p50", "p99", "pss_mb", "rss_worker_mb", "foreign_cpu", "steal"):
        vals = [r[key] for r in ok if r.get(key) is not None]
        out[key] = statistics.median(vals) if vals else None
    out["errors"] = sum(r.get("errors") or 0 for r in ok)
    notes = []
    base = ok[0].get("note") or ""
    # the per-round warnings are summarised by the median foreign_cpu below
    base = "; ".join(x for x in base.split("; ") if not x.startswith("WARNING"))
    if base:
        notes.append(base)
    notes.append("median of %d rounds: %s req/s" % (
        len(ok), " / ".join("{:,.0f}".format(r["rps"] or 0) for r in ok)))
    failed = [r for r in rounds if "fail" in r]
    if failed:
        notes.append("%d round(s) failed: %s" % (len(failed), failed[0]["fail"]))
    if (out.get("foreign_cpu") or 0) >= 10.0:
        notes.append("WARNING: other processes used %.0f%% of the CPUs (median over rounds)"
                     % out["foreign_cpu"])
    if (out.get("steal") or 0) >= 5.0:
        notes.append("WARNING: %.0f%% CPU steal (median over rounds)" % out["steal"])
    out["rounds"] = [r.get("rps") for r in ok]
    out["note"] = "; ".join(notes)
    return out


def callgrind_total(d):
    total = 0
    files = sorted(Path(d).glob("callgrind.out.*"))
    for f in files:
        val = None
        summary = None
        with open(f, errors="replace") as fh:
            for line in fh:
                if line.startswith("totals:"):
                    val = int(line.split()[1])
                elif line.startswith("summary:"):
                    summary = int(line.split()[1])
        v = val if val is not None else summary
        if v is not None:
            total += v
    return total, len(files)


def run_instr(server, opts):
    """(Ir(run B) - Ir(run A)) / (B - A): user-space instructions per hello request."""
    n_a, n_b = opts.instr_counts
    runs = {}
    srvs = {}
    try:
        # The two runs go side by side (2 cores): instruction counts do not depend on timing.
        for n in (n_a, n_b):
            d = WORK / "callgrind" / ("%s-%d" % (server, n))
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            d.chmod(0o777)  # workers that drop privileges (nginx: nobody) must write here too
            runs[n] = d
        for n in (n_a, n_b):
            srvs[n] = start_server(server, "hello", 1, valgrind_dir=runs[n], timeout=240,
                                   tag="-callgrind-%d" % n)
        clients = {}
        for n in (n_a, n_b):
            clients[n] = subprocess.Popen([sys.executable, TOOLS / "reqloop.py", HOST,
                                           str(srvs[n].port), "/", str(n)],
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for n, c in clients.items():
            out, _ = c.communicate(timeout=1800)
            if c.returncode != 0:
                raise Fail("client: %s" % out.strip()[-60:])
        stop_all(list(srvs.values()), grace=120)
        totals = {n: callgrind_total(runs[n]) for n in (n_a, n_b)}
        if not totals[n_a][1] or not totals[n_b][1]:
            raise Fail("no callgrind output")
        empty = [f.name for n in (n_a, n_b) for f in runs[n].glob("callgrind.out.*")
                 if f.stat().st_size == 0]
        if empty:
            raise Fail("%d process(es) killed before callgrind could write" % len(empty))
        per = (totals[n_b][0] - totals[n_a][0]) / float(n_b - n_a)
        note = srvs[n_a].note
        note = (note + "; " if note else "") + "%d process%s; (Ir@%d - Ir@%d)/%d" % (
            totals[n_b][1], "" if totals[n_b][1] == 1 else "es", n_b, n_a, n_b - n_a)
        return row("instr", server, instr=per, note=note)
    except Skip as e:
        return row("instr", server, skip=str(e))
    except Fail as e:
        return row("instr", server, fail=str(e))
    except subprocess.TimeoutExpired:
        return row("instr", server, fail="client timed out")
    finally:
        stop_all(list(srvs.values()), grace=60)


def django_start_once(server, i):
    """Seconds from spawn to the first 200 of /admin/login/ (2 workers); note."""
    app, cwd, path, _, check = APPS_DEF["django"]
    port = free_port()
    cmd, note = SERVERS[server](app, cwd, port, 2, False, None)
    srv = Server(server, cmd, cwd, port, tag="-djstart%d" % i)
    if server == "bjoern":
        srv.stop_signal = signal.SIGINT
    srv.start()
    try:
        deadline = srv.started_at + 60
        while True:
            if srv.proc.poll() is not None:
                raise Fail("exited rc=%s: %s" % (srv.proc.returncode, last_line(srv.logpath)))
            try:
                st, hd, body = http_get(port, path, timeout=10)
                if st == 200:
                    took = time.monotonic() - srv.started_at
                    if not check(st, hd, body):
                        raise Fail("200 without the login form")
                    return took, note
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise Fail("no 200 within 60 s: %s" % last_line(srv.logpath))
            # 2 ms between attempts: the figures are ~0.2 s, and a 10 ms
            # step made two servers' medians tie or differ by one step
            time.sleep(0.002)
    finally:
        srv.stop()


def run_django_start(servers, opts):
    """Rows for the Django start scenario: the median of N starts per server.

    The starts are interleaved (round i starts every server once, in rotated
    order), so a neighbour's load during one stretch of the run does not land
    on one server's figures only."""
    times = dict((s, []) for s in servers)
    notes = dict((s, "") for s in servers)
    failed = {}
    foreign = dict((s, []) for s in servers)
    for i in range(opts.django_repeats):
        k = i % len(servers) if servers else 0
        for server in servers[k:] + servers[:k]:
            if server in failed:
                continue
            watch = CpuWatch(lambda: [])
            watch.start()
            try:
                took, notes[server] = django_start_once(server, i)
                times[server].append(took)
            except Skip as e:
                failed[server] = row("django-start", server, skip=str(e))
            except Fail as e:
                failed[server] = row("django-start", server, fail=str(e))
            watch.stop()
            foreign[server].append(watch.foreign)
    out = []
    for server in servers:
        if server in failed:
            out.append(failed[server])
            continue
        f = statistics.median(foreign[server])
        warn = "WARNING: other processes used %.0f%% of the CPUs" % f if f >= 10.0 else ""
        out.append(row("django-start", server, start_s=statistics.median(times[server]),
                       foreign_cpu=f, note="; ".join(x for x in (
                           notes[server], "median of %d: %s s" % (
                               len(times[server]),
                               " / ".join("%.3f" % t for t in times[server])), warn) if x)))
    return out


def run_django_pss(server, opts, preload):
    scn = "django-pss-preload" if preload else "django-pss"
    srv = None
    try:
        srv = start_server(server, "django", 2, preload=preload)
        # 20 requests from 2 clients at once (10 each, a new connection per
        # request), so that both workers of every server serve: with one
        # client, which worker accepts each connection is a race, and a
        # worker that served nothing has copied few of the master's pages
        # (with --preload the total then drops by about one warm worker).
        workers = [p for p in descendants(srv.proc.pid) if "resource_tracker" not in cmdline(p)]
        cpu = {p: proc_cpu(p) for p in workers}
        errors = []

        def client():
            try:
                for _ in range(10):
                    st, _, _ = http_get(srv.port, "/admin/login/", timeout=10)
                    if st != 200:
                        errors.append("HTTP %d" % st)
                        return
            except (OSError, http.client.HTTPException) as e:
                errors.append("request failed: %s" % e)

        clients = [threading.Thread(target=client) for _ in range(2)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(120)
        if errors:
            raise Fail(errors[0])
        time.sleep(0.2)
        # a worker that served Django requests used some CPU (one clock
        # tick is 10 ms; the first admin page alone costs more)
        cold = [p for p in workers if proc_cpu(p) - cpu[p] < 1]
        mem = memory(srv.proc.pid)
        note = srv.note
        if server == "uwsgi":
            note = (note + "; " if note else "") + ("app loaded in master" if preload else "--lazy-apps")
        dirty = mem["dirty_worker_mb"]
        if len(dirty) > 1:
            note = (note + "; " if note else "") + "worker private dirty %s MB" % (
                "/".join("%.1f" % d for d in dirty))
        if cold:
            note = (note + "; " if note else "") + "WARNING: %d worker(s) served no request" % len(cold)
        return row(scn, server, pss_mb=mem["pss_mb"], rss_worker_mb=mem["rss_worker_mb"],
                   nprocs=mem["nprocs"], dirty_worker_mb=dirty, note=note)
    except Skip as e:
        return row(scn, server, skip=str(e))
    except Fail as e:
        return row(scn, server, fail=str(e))
    except (OSError, http.client.HTTPException) as e:
        return row(scn, server, fail="request failed: %s" % e)
    finally:
        if srv:
            srv.stop()


# ---------------------------------------------------------------------------
# setup


def prepare():
    WORK.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    if not DATA_FILE.exists() or DATA_FILE.stat().st_size != ONE_MIB:
        DATA_FILE.write_bytes(os.urandom(ONE_MIB))
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


def prepare_django():
    if (DJANGO_DIR / "benchsite" / "settings.py").exists() and (DJANGO_DIR / "db.sqlite3").exists():
        return
    shutil.rmtree(DJANGO_DIR, ignore_errors=True)
    DJANGO_DIR.mkdir(parents=True)
    subprocess.run([VENV / "bin" / "django-admin", "startproject", "benchsite", DJANGO_DIR],
                   check=True)
    settings = DJANGO_DIR / "benchsite" / "settings.py"
    text = settings.read_text()
    text = text.replace("DEBUG = True", "DEBUG = False")
    text = text.replace("ALLOWED_HOSTS = []", "ALLOWED_HOSTS = ['*']")
    settings.write_text(text)
    subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=DJANGO_DIR,
                   check=True, env=server_env())


# ---------------------------------------------------------------------------
# report


def cell_result(r):
    if "skip" in r:
        return r["skip"]
    if "fail" in r:
        return "fail: " + r["fail"]
    if "rps" in r:
        return "{:,.0f} req/s".format(r["rps"] or 0)
    if "instr" in r:
        return "{:,.0f} instr/req".format(r["instr"])
    if "start_s" in r:
        return "{:.2f} s to first 200".format(r["start_s"])
    if "pss_mb" in r:
        return "PSS {:.1f} MB".format(r["pss_mb"])
    return "—"


SCENARIO_TITLES = dict((k, v[0]) for k, v in LOAD_SCENARIOS.items())
SCENARIO_TITLES.update({
    "instr": "instructions/hello req (callgrind, 1w)",
    "django-start": "Django start → first 200 (2w)",
    "django-pss": "Django PSS after 20 req (2w)",
    "django-pss-preload": "Django PSS after 20 req (2w, --preload)",
})


def markdown(rows, meta):
    out = []
    out.append("# ferricorn benchmark — %s" % meta["date"])
    out.append("")
    rounds = meta.get("rounds", 1)
    out.append("%s; wrk -t1 -c64 -d%ds --latency (1 s warm-up first)%s; %s. "
               "PSS = sum over master+workers (smaps_rollup); RSS/worker = mean over the "
               "processes below the master (the process itself when it has no workers). "
               "errors = non-2xx + socket errors. A WARNING note means other processes used "
               "that share of the CPUs during the measurement: repeat that row. %s"
               % (meta["machine"], meta["duration"],
                  ("; each load measured in %d rounds, servers in rotated order, the median of "
                   "each figure shown (errors: the sum)" % rounds) if rounds > 1 else "",
                  meta["mode"], meta["versions"]))
    out.append("")
    out.append("| scenario | server | result | p50 ms | p99 ms | errors | PSS MB | RSS/worker MB | note |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ok = "fail" not in r and "skip" not in r

        def g(k, f="{:.2f}"):
            v = r.get(k)
            return f.format(v) if (ok and v is not None) else ""
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            SCENARIO_TITLES.get(r["scenario"], r["scenario"]), r["server"], cell_result(r),
            g("p50"), g("p99"), g("errors", "{:d}"), g("pss_mb", "{:.1f}"),
            g("rss_worker_mb", "{:.1f}"), (r.get("note") or "").replace("|", "/")))
    out.append("")
    out.extend(ratio_section(rows))
    out.extend(latency_section(rows))
    return "\n".join(out) + "\n"


def find_row(rows, scenario, server):
    for r in rows:
        if r["scenario"] == scenario and r["server"] == server and "fail" not in r and "skip" not in r:
            return r
    return None


def lookup(rows, scenario, server, key):
    r = find_row(rows, scenario, server)
    return r.get(key) if r else None


def noisy(rows, *keys):
    return any((find_row(rows, sc, sv) or {}).get("foreign_cpu", 0) >= 10.0 for sc, sv, _ in keys)


TARGETS = [
    # (label, (scenario, server, key) ferricorn, (scenario, server, key) reference, op, bound)
    ("hello 1w vs bjoern", ("hello1w", "ferricorn", "rps"), ("hello1w", "bjoern", "rps"), ">=", 1.1),
    ("hello 1w vs nginx", ("hello1w", "ferricorn", "rps"), ("hello1w", "nginx", "rps"), ">=", 0.95),
    ("instructions/hello vs bjoern", ("instr", "ferricorn", "instr"), ("instr", "bjoern", "instr"),
     "<=", 0.5),
    ("hello 2w vs granian", ("hello2w", "ferricorn", "rps"), ("hello2w", "granian", "rps"), ">=", 1.6),
    ("Flask 2w vs granian", ("flask2w", "ferricorn", "rps"), ("flask2w", "granian", "rps"), ">=", 1.3),
    ("Flask 2w vs gunicorn gthread", ("flask2w", "ferricorn", "rps"),
     ("flask2w", "gunicorn-gthread", "rps"), ">=", 1.8),
    ("slowloris vs own unloaded hello 2w", ("slowloris50", "ferricorn", "rps"),
     ("hello2w", "ferricorn", "rps"), ">=", 0.9),
    ("Django PSS vs gunicorn sync", ("django-pss", "ferricorn", "pss_mb"),
     ("django-pss", "gunicorn-sync", "pss_mb"), "<=", 0.95),
    ("Django PSS --preload vs gunicorn sync --preload", ("django-pss-preload", "ferricorn", "pss_mb"),
     ("django-pss-preload", "gunicorn-sync", "pss_mb"), "<=", 0.85),
    ("Django start time vs gunicorn sync", ("django-start", "ferricorn", "start_s"),
     ("django-start", "gunicorn-sync", "start_s"), "<=", 1.0),
]


def ratio_section(rows):
    out = ["## ferricorn against the targets", "",
           "| target | ferricorn | reference | ratio | goal | verdict |", "|---|---|---|---|---|---|"]
    for label, a, b, op, bound in TARGETS:
        va, vb = lookup(rows, *a), lookup(rows, *b)
        if va is None or vb is None or not vb:
            why = []
            if va is None:
                why.append("no ferricorn figure")
            if vb is None and b[1] != a[1]:
                why.append("no %s figure" % b[1])
            out.append("| %s | %s | %s | — | %s %.2fx | n/a (%s) |" % (
                label, fmt_num(va), fmt_num(vb), op, bound, ", ".join(why) or "zero reference"))
            continue
        ratio = va / vb
        ok = ratio >= bound if op == ">=" else ratio <= bound
        verdict = "PASS" if ok else "FAIL"
        if noisy(rows, a, b):
            verdict += " (other load during the run: repeat it)"
        out.append("| %s | %s | %s | %.3fx | %s %.2fx | %s |" % (
            label, fmt_num(va), fmt_num(vb), ratio, op, bound, verdict))
    return out


def latency_section(rows):
    """The p99 target: ferricorn's p99 against the lowest p99 among the WSGI peers
    in each load scenario (nginx is shown apart: it runs no Python). A peer that
    served nothing (0 req/s: its p99 is wrk's empty 0.00) is not a reference."""
    out = ["", "## p99 latency against the best WSGI peer, and errors", "",
           "| scenario | ferricorn p99 ms | best peer p99 ms | ratio | ferricorn errors | verdict |",
           "|---|---|---|---|---|---|"]
    for scn in LOAD_SCENARIOS:
        mine = find_row(rows, scn, "ferricorn")
        if not mine or mine.get("p99") is None:
            continue
        peers = [r for r in rows if r["scenario"] == scn and r["server"] not in ("ferricorn", "nginx")
                 and "fail" not in r and "skip" not in r and r.get("p99") and (r.get("rps") or 0) > 0]
        if not peers:
            continue
        best = min(peers, key=lambda r: r["p99"])
        ratio = mine["p99"] / best["p99"]
        ok = ratio <= 1.0 and not mine.get("errors")
        verdict = "PASS" if ok else "FAIL"
        if noisy(rows, (scn, "ferricorn", "p99"), (scn, best["server"], "p99")):
            verdict += " (other load during the run: repeat it)"
        out.append("| %s | %.2f | %.2f (%s) | %.2fx | %d | %s |" % (
            SCENARIO_TITLES[scn], mine["p99"], best["p99"], best["server"], ratio,
            mine.get("errors") or 0, verdict))
    return out if len(out) > 5 else []


def chart(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        log("matplotlib missing: no chart")
        return False
    scns = [s for s in LOAD_SCENARIOS if any(r["scenario"] == s for r in rows)]
    if not scns:
        return False
    servers = PY_SERVERS + ["nginx"]
    colors = dict(zip(servers, ["#d62728", "#1f77b4", "#aec7e8", "#ff7f0e", "#2ca02c", "#9467bd",
                                "#7f7f7f"]))
    ncols = 2 if len(scns) > 1 else 1
    nrows = (len(scns) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(7 * ncols, 2.6 * nrows + 0.6), squeeze=False)
    for i, s in enumerate(scns):
        ax = axes[i // ncols][i % ncols]
        names, vals, labels = [], [], []
        for srv in servers:
            r = next((r for r in rows if r["scenario"] == s and r["server"] == srv), None)
            if r is None:
                continue
            names.append(srv)
            if "rps" in r and "fail" not in r:
                vals.append(r["rps"] or 0)
                labels.append("{:,.0f}".format(r["rps"] or 0))
            else:
                vals.append(0)
                labels.append("skipped" if "skip" in r else "fail")
        y = range(len(names))
        ax.barh(list(y), vals, color=[colors[n] for n in names])
        ax.set_yticks(list(y))
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(SCENARIO_TITLES[s], fontsize=10)
        ax.tick_params(axis="x", labelsize=7)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
            lambda v, _: "%gk" % (v / 1000) if v >= 1000 else "%g" % v))
        top = max(vals) if vals and max(vals) > 0 else 1
        ax.set_xlim(0, top * 1.25)
        for yy, v, lab in zip(y, vals, labels):
            ax.text(v + top * 0.01, yy, lab, va="center", fontsize=7)
        ax.set_xlabel("req/s", fontsize=8)
    for j in range(len(scns), nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    fig.suptitle("ferricorn vs peers: requests/s per scenario (wrk -t1 -c64)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def versions():
    out = []
    try:
        p = subprocess.run([PY, "-c", "import importlib.metadata as m\n"
                            "for d in ('gunicorn','granian','bjoern','uWSGI','Flask','Django'):\n"
                            "    try: print(d, m.version(d))\n"
                            "    except Exception: print(d, 'missing')"],
                           capture_output=True, text=True, timeout=30)
        out.extend(l for l in p.stdout.splitlines() if l.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        p = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
        out.append(p.stderr.strip().replace("nginx version: ", ""))
    except OSError:
        pass
    try:
        p = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        m = re.search(r"wrk (\S+)", p.stdout + p.stderr)
        if m:
            out.append("wrk " + m.group(1))
    except OSError:
        pass
    out.append(ferricorn_python_link())
    return "Versions: " + ", ".join(o for o in out if o) + "." if out else ""


def ferricorn_python_link():
    """How the ferricorn binary holds CPython. A plain `cargo build` links the shared
    libpython3.X.so, whose Python code runs about 12% slower than the static link that
    bench/run's own build (tools/pyo3-config) makes: say which one was measured."""
    if not FERRICORN.exists():
        return ""
    try:
        p = subprocess.run(["ldd", str(FERRICORN)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    m = re.search(r"(libpython[0-9.]+\.so[0-9.]*)", p.stdout)
    if m:
        log("WARNING: %s links %s (shared); bench/run without --no-build links CPython statically, "
            "as Debian's python3 is" % (FERRICORN, m.group(1)))
        return "ferricorn with %s (shared: not bench/run's build)" % m.group(1)
    return "ferricorn with CPython linked in"


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="few seconds per scenario, subset: %s" % ", ".join(QUICK_SCENARIOS))
    ap.add_argument("--only", default="",
                    help="comma list of scenarios: %s" % ", ".join(ALL_SCENARIOS))
    ap.add_argument("--servers", default="",
                    help="comma list of servers: %s" % ", ".join(SERVERS))
    ap.add_argument("--duration", type=int, help="seconds of wrk per run (default 5, quick 3)")
    ap.add_argument("--instr-counts", default="",
                    help="A,B request counts of the two callgrind runs (default 2000,12000; quick 300,1300)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="measure each load this many times, servers in rotated order, and "
                         "report the median (default 3, quick 1)")
    ap.add_argument("--retries", type=int, default=None,
                    help="measure a load again (keeping the quietest) when other processes used "
                         ">=10%% of the CPUs (default 1; quick 0)")
    ap.add_argument("--out", default=str(RESULTS / "latest"),
                    help="output prefix (writes PREFIX.md, PREFIX.png, PREFIX.json)")
    opts = ap.parse_args()
    opts.duration = opts.duration or (3 if opts.quick else 5)
    if opts.instr_counts:
        opts.instr_counts = tuple(int(x) for x in opts.instr_counts.split(","))
    else:
        opts.instr_counts = (300, 1300) if opts.quick else (2000, 12000)
    opts.django_repeats = 1 if opts.quick else 5
    if opts.rounds is None:
        opts.rounds = 1 if opts.quick else 3
    opts.rounds = max(1, opts.rounds)
    if opts.retries is None:
        # with rounds, the median already discards one disturbed measurement
        opts.retries = 0 if (opts.quick or opts.rounds > 1) else 1
    scenarios = [s.strip() for s in opts.only.split(",") if s.strip()] or (
        QUICK_SCENARIOS if opts.quick else ALL_SCENARIOS)
    for s in scenarios:
        if s not in ALL_SCENARIOS:
            ap.error("unknown scenario %r (choose from %s)" % (s, ", ".join(ALL_SCENARIOS)))
    only_servers = [s.strip() for s in opts.servers.split(",") if s.strip()]
    for s in only_servers:
        if s not in SERVERS:
            ap.error("unknown server %r" % s)

    def want(server):
        return not only_servers or server in only_servers

    prepare()
    t0 = time.monotonic()
    load_start = os.getloadavg()[0]
    if not FERRICORN.exists():
        log("NOTE: %s is missing: ferricorn is skipped (bench/run builds it unless --no-build "
            "or FERRICORN_BIN is given: see its warnings)" % FERRICORN)
    rows = []

    def add(r):
        rows.append(r)
        log("  %-20s %-17s %s" % (r["scenario"], r["server"], cell_result(r)))

    for scn in scenarios:
        log("== %s" % scn)
        if scn in LOAD_SCENARIOS:
            servers = [s for s in LOAD_SCENARIOS[scn][5] if want(s)]
            per_server = dict((s, []) for s in servers)
            for rnd in range(opts.rounds):
                # Each round starts one server further on, so no server always runs
                # first (or last) while the shared machine's load drifts.
                k = rnd % len(servers) if servers else 0
                for server in servers[k:] + servers[:k]:
                    r = run_load(scn, server, opts)
                    per_server[server].append(r)
                    if opts.rounds > 1:
                        log("    round %d %-17s %s" % (rnd + 1, server, cell_result(r)))
            for server in servers:
                add(combine_rounds(per_server[server]))
        elif scn == "instr":
            if not shutil.which("valgrind"):
                for server in PY_SERVERS + ["nginx"]:
                    if want(server):
                        add(row("instr", server, fail="valgrind not installed"))
                continue
            for server in PY_SERVERS + ["nginx"]:
                if want(server):
                    add(run_instr(server, opts))
        elif scn in ("django-start", "django-pss"):
            try:
                prepare_django()
            except (subprocess.CalledProcessError, OSError) as e:
                for server in PY_SERVERS:
                    if want(server):
                        add(row(scn, server, fail="django project setup: %s" % e))
                continue
            if scn == "django-start":
                for r in run_django_start([s for s in PY_SERVERS if want(s)], opts):
                    add(r)
            else:
                for preload in (False, True):
                    for server in PY_SERVERS:
                        if not want(server):
                            continue
                        if preload and server in ("bjoern", "granian"):
                            continue  # no separate preload mode
                        add(run_django_pss(server, opts, preload))

    elapsed = time.monotonic() - t0
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": "%d cores, %s" % (os.cpu_count(), os.uname().release),
        "duration": opts.duration,
        "rounds": opts.rounds,
        "mode": ("--quick" if opts.quick else "full") + (" --only " + opts.only if opts.only else "")
        + ("; run took %.0f s; load average %.1f at start, %.1f at end"
           % (elapsed, load_start, os.getloadavg()[0])),
        "versions": versions(),
    }
    md = markdown(rows, meta)
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    has_chart = chart(rows, out.with_suffix(".png"))
    print(md)
    log("wrote %s%s (%.0f s)" % (out.with_suffix(".md"),
                                 " and " + str(out.with_suffix(".png")) if has_chart else "", elapsed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
