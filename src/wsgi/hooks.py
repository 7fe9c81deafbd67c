"""Gunicorn's worker-side server hooks, run in a ferricorn worker.

A Gunicorn config file may define functions that Gunicorn's worker calls
with its own objects: post_fork(server, worker), post_worker_init(worker),
pre_request(worker, req), post_request(worker, req, environ, resp),
worker_int(worker) and worker_exit(server, worker). The master evaluated the
file in a throwaway process; each worker runs it again to get the functions,
and passes them the stand-ins below, which carry the attributes Gunicorn's
documentation and common hooks use (pid, cfg, log, age, nr, ...).

src/wsgi/hooks.rs loads this module and calls `load`, then the hooks;
src/pyconfig.rs checks the hooks' parameters with `check` when it reads the config.
"""

import os
import runpy
import sys
import traceback

WORKER_HOOKS = ("post_fork", "post_worker_init", "pre_request", "post_request",
                "worker_int", "worker_abort", "worker_exit")
# Gunicorn's arbiter runs these; ferricorn's master runs each in a
# short-lived child of its own (run_master_hook).
MASTER_HOOKS = ("on_starting", "when_ready", "on_reload", "pre_fork", "pre_exec",
                "child_exit", "nworkers_changed", "on_exit")
HOOKS = WORKER_HOOKS + MASTER_HOOKS


class Config:
    """`server.cfg` / `worker.cfg`: the settings by Gunicorn's names. A setting
    ferricorn does not have reads as None."""

    def __init__(self, settings):
        self.__dict__.update(settings)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return None


class Log:
    """`server.log` / `worker.log`: Gunicorn's logger methods, writing to
    ferricorn's error log (or the journal) like ferricorn's own records."""

    def __init__(self, emit):
        self._emit = emit

    def _out(self, level, msg, args, exc_info=False):
        text = str(msg)
        if args:
            try:
                text = text % args
            except (TypeError, ValueError):
                text = "%s %r" % (text, args)
        if exc_info and sys.exc_info()[0] is not None:
            text += "\n" + traceback.format_exc().rstrip("\n")
        self._emit(level, text)

    def critical(self, msg, *args, **kw):
        self._out(50, msg, args, kw.get("exc_info"))

    def error(self, msg, *args, **kw):
        self._out(40, msg, args, kw.get("exc_info"))

    def exception(self, msg, *args, **kw):
        self._out(40, msg, args, kw.get("exc_info", True))

    def warning(self, msg, *args, **kw):
        self._out(30, msg, args, kw.get("exc_info"))

    warn = warning

    def info(self, msg, *args, **kw):
        self._out(20, msg, args, kw.get("exc_info"))

    def debug(self, msg, *args, **kw):
        self._out(10, msg, args, kw.get("exc_info"))

    def log(self, lvl, msg, *args, **kw):
        if isinstance(lvl, str):
            lvl = {"critical": 50, "error": 40, "warning": 30, "info": 20,
                   "debug": 10}.get(lvl.lower(), 20)
        self._out(lvl, msg, args, kw.get("exc_info"))

    # Gunicorn's Logger has these too; ferricorn's log files are its own.
    def access(self, *args, **kw):
        pass

    def reopen_files(self):
        pass

    def close_on_exec(self):
        pass


class Server:
    """The `server` argument: Gunicorn's Arbiter, as far as hooks read it."""

    def __init__(self, cfg, log, pid):
        self.cfg = cfg
        self.log = log
        self.pid = pid
        self.num_workers = cfg.workers
        self.timeout = cfg.timeout
        self.proc_name = cfg.proc_name
        self.app = None
        self.WORKERS = {}


class Worker:
    """The `worker` argument: Gunicorn's worker, as far as hooks read it."""

    def __init__(self, age, ppid, cfg, log):
        self.age = age
        self.pid = os.getpid()
        self.ppid = ppid
        self.cfg = cfg
        self.log = log
        self.timeout = cfg.timeout
        self.max_requests = cfg.max_requests or sys.maxsize
        self.nr = 0
        self.alive = True
        self.booted = False
        self.wsgi = None

    def __str__(self):
        return "<Worker %s>" % self.pid


class Request:
    """The `req` argument: Gunicorn's parsed request, rebuilt from the environ."""

    def __init__(self, environ):
        self.method = environ.get("REQUEST_METHOD", "")
        self.uri = environ.get("RAW_URI", "")
        target = self.uri
        if "://" in target.split("?", 1)[0]:  # absolute-form
            rest = target.split("://", 1)[1]
            target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
        path, _, self.fragment = target.partition("#")
        self.path = path.split("?", 1)[0]
        self.query = environ.get("QUERY_STRING", "")
        proto = environ.get("SERVER_PROTOCOL", "HTTP/1.1")
        try:
            major, minor = proto.split("/", 1)[1].split(".")
            self.version = (int(major), int(minor))
        except (IndexError, ValueError):
            self.version = (1, 1)
        headers = []
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                headers.append((key[5:].replace("_", "-"), value))
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
                headers.append((key.replace("_", "-"), value))
        self.headers = headers
        self.trailers = []
        self.scheme = environ.get("wsgi.url_scheme", "http")
        self.remote_addr = environ.get("REMOTE_ADDR")
        self.peer_addr = (environ.get("REMOTE_ADDR"), environ.get("REMOTE_PORT"))
        self.body = environ.get("wsgi.input")

    def should_close(self):
        return False


class Response:
    """The `resp` argument of post_request: what was sent."""

    def __init__(self, status_code, reason, head, sent):
        self.status_code = status_code
        self.status = "%d %s" % (status_code, reason) if reason else str(status_code)
        headers = []
        for line in head.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers.append((name, value.strip()))
        self.headers = headers
        self.sent = sent
        self.response_length = sent
        self.version = (1, 1)


def _run_config(location, start_dir):
    if location.startswith("python:"):
        if start_dir not in sys.path:
            sys.path.insert(0, start_dir)
        return runpy.run_module(location[len("python:"):], run_name="__config__")
    return runpy.run_path(location, run_name="__config__")


def load(location, start_dir, settings, age, master_pid, emit):
    """Run the config file (again) and return the stand-ins and the worker
    hooks it defines: (server, worker, {name: function})."""
    ns = _run_config(location, start_dir)
    hooks = {name: ns[name] for name in WORKER_HOOKS if callable(ns.get(name))}
    cfg = Config(settings)
    log = Log(emit)
    return Server(cfg, log, master_pid), Worker(age, master_pid, cfg, log), hooks


def run_master_hook(location, start_dir, settings, master_pid, name, worker, extra, emit):
    """In a child of the master: run the config file and call its hook `name`
    as Gunicorn's arbiter would. `worker`: (age, pid) for pre_fork (pid None)
    and child_exit; `extra`: nworkers_changed's new and old values."""
    try:
        hook = _run_config(location, start_dir).get(name)
        if not callable(hook):
            return
        cfg = Config(settings)
        log = Log(emit)
        server = Server(cfg, log, master_pid)
        if worker is not None:
            w = Worker(worker[0], master_pid, cfg, log)
            w.pid = worker[1]
            hook(server, w)
        elif name == "nworkers_changed":
            hook(server, *extra)
        else:
            hook(server)
    finally:
        # the child leaves with _exit(): what the hook print()ed goes out now
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


def _call_post_request(hook, worker, req, environ, resp):
    # Gunicorn accepts post_request(worker, req), (worker, req, environ) and
    # (worker, req, environ, resp).
    n = _arity(hook)
    if n == 2:
        hook(worker, req)
    elif n == 3:
        hook(worker, req, environ)
    else:
        hook(worker, req, environ, resp)


def _arity(f):
    import inspect
    try:
        params = inspect.signature(f).parameters.values()
    except (TypeError, ValueError):
        return -1
    return sum(1 for p in params
               if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


# The positional parameters Gunicorn checks a hook for when it reads the config.
ARITY = {"post_fork": ((2,), "server, worker"), "post_worker_init": ((1,), "worker"),
         "pre_request": ((2,), "worker, req"),
         "post_request": ((2, 3, 4), "worker, req[, environ[, resp]]"),
         "worker_int": ((1,), "worker"), "worker_abort": ((1,), "worker"),
         "worker_exit": ((2,), "server, worker"),
         "on_starting": ((1,), "server"), "when_ready": ((1,), "server"),
         "on_reload": ((1,), "server"), "pre_fork": ((2,), "server, worker"),
         "pre_exec": ((1,), "server"), "child_exit": ((2,), "server, worker"),
         "nworkers_changed": ((3,), "server, new_value, old_value"),
         "on_exit": ((1,), "server")}


def check(name, f):
    """For the config's evaluation (src/pyconfig.rs): the hook's name, or
    "!name:reason" when Gunicorn could not call it so."""
    want, params = ARITY[name]
    n = _arity(f)
    if n == -1 or n in want:
        return name
    count = ("%d argument%s" % (want[0], "" if want[0] == 1 else "s") if len(want) == 1
             else "%d to %d arguments" % (want[0], want[-1]))
    return "!%s:must take %s (%s); %r takes %d" % (
        name, count, params, getattr(f, "__name__", f), n)


def before_request(worker, pre_request, environ):
    req = Request(environ)
    if pre_request is not None:
        pre_request(worker, req)
    worker.nr += 1
    return req


def after_request(worker, post_request, req, environ, status, head, sent):
    try:
        from http import HTTPStatus
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    _call_post_request(post_request, worker, req, environ,
                       Response(status, reason, head, sent))
