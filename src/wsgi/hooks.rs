//! Gunicorn's worker-side server hooks, so that a `gunicorn.conf.py` that
//! sets up tracing in `post_fork`, reconnects a database in
//! `post_worker_init` or logs in `pre_request` works unchanged.
//!
//! The master runs no Python, so it cannot hold the config's functions:
//! each worker runs the config file again (after its fork and privilege
//! drop, before it imports the app) and keeps the hooks it defines. They
//! get stand-ins for Gunicorn's objects (src/wsgi/hooks.py). Which hooks a
//! worker runs, and when, as Gunicorn's sync worker does:
//!
//! - `post_fork(server, worker)`: before the app is imported (with
//!   `--preload` it already is); raising is a boot error (exit status 3);
//! - `post_worker_init(worker)`: after the app is imported; same;
//! - `pre_request(worker, req)`: before each app call; raising answers 500;
//! - `post_request(worker, req, environ, resp)`: when the response is over
//!   (also when the client went away); raising is logged;
//! - `worker_int(worker)`: on SIGINT/SIGQUIT (fast stop), from a thread of
//!   its own, then the worker exits;
//! - `worker_abort(worker)`: on SIGABRT (the master's timeout kill), after
//!   faulthandler's stack dump, from a thread of its own; then the worker
//!   exits with status 1;
//! - `worker_exit(server, worker)`: when the worker exits.
//!
//! The arbiter's hooks (`on_starting`, `when_ready`, `pre_fork`,
//! `child_exit`, ...) run in a short-lived child of the master
//! (`run_master_hook`). Without hooks nothing here is loaded and the
//! request path has no extra step.

use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};

use crate::config::Settings;

const SOURCE: &str = include_str!("hooks.py");

struct Hooks {
    module: Py<PyModule>,
    server: Py<PyAny>,
    worker: Py<PyAny>,
    post_fork: Option<Py<PyAny>>,
    post_worker_init: Option<Py<PyAny>>,
    pre_request: Option<Py<PyAny>>,
    post_request: Option<Py<PyAny>>,
    worker_int: Option<Py<PyAny>>,
    worker_abort: Option<Py<PyAny>>,
    worker_exit: Option<Py<PyAny>>,
}

static HOOKS: OnceLock<Hooks> = OnceLock::new();

/// `server.log.info(...)` and co. land here, as ferricorn's own records.
#[pyfunction]
fn emit(level: i32, message: &str) {
    match level {
        50.. => crate::log::critical(message),
        40..=49 => crate::log::error(message),
        30..=39 => crate::log::warning(message),
        20..=29 => crate::log::info(message),
        _ => crate::log::debug(message),
    }
}

/// hooks.py as a module (also for the config's evaluation, which checks
/// the hooks' parameters with it).
pub fn module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    PyModule::from_code(
        py,
        &std::ffi::CString::new(SOURCE).expect("no NUL in hooks.py"),
        c"ferricorn_hooks.py",
        c"ferricorn_hooks",
    )
}

/// The hooks a worker runs (hooks.py's WORKER_HOOKS).
const WORKER_HOOKS: &[&str] = &[
    "post_fork",
    "post_worker_init",
    "pre_request",
    "post_request",
    "worker_int",
    "worker_abort",
    "worker_exit",
];

/// Whether the Python config defines the hook `name`.
pub fn defines(s: &Settings, name: &str) -> bool {
    s.hooks
        .as_ref()
        .is_some_and(|h| h.names.iter().any(|n| n == name))
}

/// Run the config file in this worker and keep its hooks. Does nothing
/// when the config defines none for workers. Err: the traceback (a boot
/// error).
pub fn load(py: Python<'_>, s: &Settings, age: u64, master_pid: i32) -> Result<(), String> {
    let Some(h) = &s.hooks else {
        return Ok(());
    };
    if !WORKER_HOOKS.iter().any(|w| defines(s, w)) {
        return Ok(());
    }
    let loaded = (|| -> PyResult<Hooks> {
        let module = module(py)?;
        let (server, worker, found): (Py<PyAny>, Py<PyAny>, Bound<'_, PyDict>) = module
            .getattr("load")?
            .call1((
                &h.location,
                crate::config::start_dir().display().to_string(),
                settings_dict(py, s)?,
                age,
                master_pid,
                wrap_pyfunction!(emit, py)?,
            ))?
            .extract()?;
        let get = |name: &str| -> PyResult<Option<Py<PyAny>>> {
            Ok(found.get_item(name)?.map(Bound::unbind))
        };
        Ok(Hooks {
            server,
            worker,
            post_fork: get("post_fork")?,
            post_worker_init: get("post_worker_init")?,
            pre_request: get("pre_request")?,
            post_request: get("post_request")?,
            worker_int: get("worker_int")?,
            worker_abort: get("worker_abort")?,
            worker_exit: get("worker_exit")?,
            module: module.unbind(),
        })
    })()
    .map_err(|e| super::format_py_err(py, &e))?;
    let _ = HOOKS.set(loaded);
    Ok(())
}

/// The settings as Gunicorn names them, for `server.cfg` / `worker.cfg`.
fn settings_dict<'py>(py: Python<'py>, s: &Settings) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("wsgi_app", &s.wsgi_app)?;
    d.set_item("bind", &s.bind)?;
    d.set_item("workers", s.workers)?;
    d.set_item("threads", s.threads)?;
    d.set_item(
        "worker_class",
        if s.threads > 1 { "gthread" } else { "sync" },
    )?;
    d.set_item("worker_connections", s.worker_connections)?;
    d.set_item("backlog", s.backlog)?;
    d.set_item("keepalive", s.keepalive)?;
    d.set_item("timeout", s.timeout)?;
    d.set_item("graceful_timeout", s.graceful_timeout)?;
    d.set_item("max_requests", s.max_requests)?;
    d.set_item("max_requests_jitter", s.max_requests_jitter)?;
    d.set_item("chdir", s.chdir.as_ref().map(|p| p.display().to_string()))?;
    d.set_item(
        "raw_env",
        s.env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>(),
    )?;
    d.set_item("proc_name", &s.proc_name)?;
    d.set_item("preload_app", s.preload)?;
    d.set_item("reload", s.reload)?;
    d.set_item("errorlog", &s.errorlog)?;
    d.set_item("accesslog", &s.accesslog)?;
    d.set_item("access_log_format", &s.access_log_format)?;
    d.set_item("user", &s.user)?;
    d.set_item("group", &s.group)?;
    d.set_item("umask", s.umask)?;
    d.set_item("limit_request_line", s.limits.request_line)?;
    d.set_item("limit_request_fields", s.limits.fields)?;
    d.set_item("limit_request_field_size", s.limits.field_size)?;
    Ok(d)
}

fn hooks() -> Option<&'static Hooks> {
    HOOKS.get()
}

/// `post_fork(server, worker)`. Err: the traceback.
pub fn post_fork(py: Python<'_>) -> Result<(), String> {
    let Some(h) = hooks() else { return Ok(()) };
    match &h.post_fork {
        Some(f) => f
            .call1(py, (h.server.bind(py), h.worker.bind(py)))
            .map(drop)
            .map_err(|e| super::format_py_err(py, &e)),
        None => Ok(()),
    }
}

/// `post_worker_init(worker)`, `worker.wsgi` set to the app; then the
/// worker counts as booted. Err: the traceback.
pub fn post_worker_init(py: Python<'_>, app: &Py<PyAny>) -> Result<(), String> {
    let Some(h) = hooks() else { return Ok(()) };
    let worker = h.worker.bind(py);
    let run = || -> PyResult<()> {
        worker.setattr("wsgi", app.bind(py))?;
        if let Some(f) = &h.post_worker_init {
            f.call1(py, (worker,))?;
        }
        worker.setattr("booted", true)
    };
    run().map_err(|e| super::format_py_err(py, &e))
}

/// Whether requests go through `before_request`/`after_request` at all.
pub fn around_requests() -> bool {
    hooks().is_some_and(|h| h.pre_request.is_some() || h.post_request.is_some())
}

/// Whether post_request wants the response headers.
pub fn wants_response() -> bool {
    hooks().is_some_and(|h| h.post_request.is_some())
}

/// Before the app call: `pre_request(worker, req)` and `worker.nr += 1`.
/// Returns what `after_request` needs (when post_request is defined); an
/// Err is the hook's exception, which the caller answers with a 500.
pub fn before_request(
    py: Python<'_>,
    environ: &Bound<'_, PyAny>,
) -> PyResult<Option<Box<PostRequest>>> {
    let Some(h) = hooks() else { return Ok(None) };
    let req = h.module.bind(py).getattr("before_request")?.call1((
        h.worker.bind(py),
        h.pre_request.as_ref(),
        environ,
    ))?;
    Ok(h.post_request.as_ref().map(|_| {
        Box::new(PostRequest {
            req: req.unbind(),
            environ: environ.clone().unbind(),
            status: 0,
            head: Vec::new(),
            sent: 0,
        })
    }))
}

/// A request whose `post_request` is due. Dropping it runs the hook: when
/// the response is over, or when the connection ends before that.
pub struct PostRequest {
    req: Py<PyAny>,
    environ: Py<PyAny>,
    pub status: u16,
    /// The response's header lines (`Name: value\r\n`...).
    pub head: Vec<u8>,
    pub sent: u64,
}

impl Drop for PostRequest {
    fn drop(&mut self) {
        let Some(h) = hooks() else { return };
        Python::attach(|py| {
            let r = h.module.bind(py).getattr("after_request").and_then(|f| {
                f.call1((
                    h.worker.bind(py),
                    h.post_request.as_ref(),
                    self.req.bind(py),
                    self.environ.bind(py),
                    self.status,
                    String::from_utf8_lossy(&self.head),
                    self.sent,
                ))
            });
            if let Err(e) = r {
                crate::log::error(&format!(
                    "Exception in post_request hook\n{}",
                    super::format_py_err(py, &e).trim_end()
                ));
            }
        });
    }
}

/// `worker_int(worker)`, if defined (the worker exits after it).
pub fn worker_int(py: Python<'_>) {
    if let Some(h) = hooks() {
        call_worker_hook(py, h, "worker_int", &h.worker_int);
    }
}

/// Whether a Python config defines worker_int or worker_exit, which
/// SIGINT/SIGQUIT must run even while the app holds the worker.
pub fn on_quit() -> bool {
    hooks().is_some_and(|h| h.worker_int.is_some() || h.worker_exit.is_some())
}

/// `worker_abort(worker)`, if defined (the worker exits after it).
pub fn worker_abort(py: Python<'_>) {
    if let Some(h) = hooks() {
        call_worker_hook(py, h, "worker_abort", &h.worker_abort);
    }
}

/// A hook that takes the worker as it stops (`worker.alive` is False).
fn call_worker_hook(py: Python<'_>, h: &Hooks, name: &str, f: &Option<Py<PyAny>>) {
    if let Some(f) = f {
        h.worker.bind(py).setattr("alive", false).ok();
        if let Err(e) = f.call1(py, (h.worker.bind(py),)) {
            crate::log::error(&format!(
                "Exception in {name} hook\n{}",
                super::format_py_err(py, &e).trim_end()
            ));
        }
    }
}

/// `worker_exit(server, worker)`, if defined: run once, as the worker exits.
pub fn worker_exit(py: Python<'_>) {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let Some(h) = hooks() else { return };
    if DONE.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    if let Some(f) = &h.worker_exit {
        h.worker.bind(py).setattr("alive", false).ok();
        if let Err(e) = f.call1(py, (h.server.bind(py), h.worker.bind(py))) {
            crate::log::error(&format!(
                "Exception in worker_exit hook\n{}",
                super::format_py_err(py, &e).trim_end()
            ));
        }
    }
}

/// Whether SIGABRT must run `worker_abort` before the worker exits.
pub fn on_abort() -> bool {
    hooks().is_some_and(|h| h.worker_abort.is_some())
}

/// A worker as Gunicorn's arbiter hooks see it: its `age`, and its pid (none
/// yet in pre_fork).
#[derive(Clone, Copy)]
pub struct WorkerRef {
    pub age: u64,
    pub pid: Option<i32>,
}

/// Run the arbiter hook `name` (`on_starting`, `when_ready`, `on_reload`,
/// `pre_fork`, `pre_exec`, `child_exit`, `nworkers_changed`, `on_exit`) if
/// the Python config defines it. The master holds no Python of its own
/// (unless --preload), so a child does: it starts CPython (or inherits the
/// preloaded one), runs the config file and calls the hook, while the
/// master waits for it, as Gunicorn's arbiter waits for its hooks. A hook
/// that raises is logged with its traceback, and false comes back: the
/// caller decides (a start hook stops the start, as in Gunicorn; the others
/// leave the master going on).
pub fn run_master_hook(
    s: &Settings,
    name: &str,
    worker: Option<WorkerRef>,
    nworkers: Option<(usize, Option<usize>)>,
) -> bool {
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::ForkResult;
    let Some(h) = s.hooks.as_ref().filter(|_| defines(s, name)) else {
        return true;
    };
    let master_pid = std::process::id() as i32;
    // SAFETY: Py_IsInitialized only reads a flag.
    let forked = if unsafe { pyo3::ffi::Py_IsInitialized() } != 0 {
        crate::preload::fork()
    } else {
        // SAFETY: the master is single-threaded; the child runs only its
        // own Python and then _exit()s.
        unsafe { nix::unistd::fork() }
    };
    match forked {
        Ok(ForkResult::Child) => {
            // The master blocks the signals it reads from its signalfd; the
            // hook (and anything it starts) gets the ordinary mask back.
            let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
            let code = match call_in_child(s, h, name, master_pid, worker, nworkers) {
                Ok(()) => 0,
                Err(tb) => {
                    crate::log::error(&format!("Exception in {name} hook\n{}", tb.trim_end()));
                    1
                }
            };
            // SAFETY: leave without the master's atexit handlers or destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            matches!(waitpid(child, None), Ok(WaitStatus::Exited(_, 0)))
        }
        Err(e) => {
            crate::log::error(&format!("cannot run the {name} hook: fork: {e}"));
            false
        }
    }
}

fn call_in_child(
    s: &Settings,
    h: &crate::pyconfig::Hooks,
    name: &str,
    master_pid: i32,
    worker: Option<WorkerRef>,
    nworkers: Option<(usize, Option<usize>)>,
) -> Result<(), String> {
    // SAFETY: Py_IsInitialized only reads a flag.
    if unsafe { pyo3::ffi::Py_IsInitialized() } == 0 {
        // as pyconfig's evaluation: the app's virtualenv on the path
        Python::initialize();
        if let Some(sp) = s
            .virtualenv
            .as_deref()
            .and_then(|v| super::venv_site_packages(v).ok())
        {
            Python::attach(|py| super::add_site_dir(py, &sp))
                .map_err(|e| Python::attach(|py| super::format_py_err(py, &e)))?;
        }
    }
    Python::attach(|py| {
        let run = || -> PyResult<()> {
            module(py)?.getattr("run_master_hook")?.call1((
                &h.location,
                crate::config::start_dir().display().to_string(),
                settings_dict(py, s)?,
                master_pid,
                name,
                worker.map(|w| (w.age, w.pid)),
                nworkers.map_or((0, None), |n| n),
                wrap_pyfunction!(emit, py)?,
            ))?;
            Ok(())
        };
        run().map_err(|e| super::format_py_err(py, &e))
    })
}
