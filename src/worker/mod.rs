//! A worker process: after the fork it starts (or inherits) CPython,
//! imports the app, and runs one I/O loop per `--threads`.
//!
//! The worker has one epoll instance and one table of connections. Each
//! loop waits on that epoll, accepts from the shared listening sockets
//! (EPOLLEXCLUSIVE, so one idle worker wakes per connection), reads and
//! parses requests, and calls the app *inline* once a request is complete:
//! no hand-off between threads on the hot path. With `--threads N` the
//! loops share the connections: whichever loop is idle in `epoll_wait`
//! takes the next ready one, so a keep-alive connection never waits behind
//! a sibling's slow app call while another loop sits idle. The GIL is taken
//! only for that call (and to pull more of a streaming body); socket I/O,
//! parsing and framing run with it released, so with `--threads N` one loop
//! reads and writes while another runs Python. A slow client costs a
//! connection slot, never a Python thread: the app only ever sees complete
//! requests, and responses drain from Rust buffers.

mod conn;
mod reload;
mod signals;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::balance::{Standing, Taking};
use crate::config::{EXIT_APP_LOAD_ERROR, Settings};
use crate::http::chunked::ChunkedDecoder;
use crate::http::{BodyKind, RequestHead, parse_head_into};
use crate::log::access::{AccessFormat, Record};
use crate::scoreboard::{Slot, now_ms};
use crate::sock::{ListenAddr, Listener};
use crate::wsgi::environ::{self, EnvCache, Peer};
use crate::wsgi::input::{Body, BodySink, Input};
use crate::wsgi::response::{self, ReqInfo, Responder, Stream};
use conn::{AccessInfo, BodyReader, BodyState, Conn, Io, Phase, Responding};

const TOK_WAKE: u64 = u64::MAX;
/// The master we were forked by; a different parent means it died.
static MASTER_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
const TOK_LISTEN: u64 = u64::MAX - 1024; // listener i has TOK_LISTEN + i
/// Set in a slot's pending flags by every event, so "an event came" is
/// never 0 even when epoll reports no flag we act on.
const PENDING: u32 = 1 << 31;

/// What all loops of one worker share.
struct Shared {
    settings: Settings,
    listeners: Vec<(RawFd, ListenAddr)>,
    bases: Vec<Py<PyDict>>,
    app: Py<PyAny>,
    slot: &'static Slot,
    access: Option<AccessFormat>,
    /// Recycle after this many requests (0 = never).
    max_requests: u64,
    draining: AtomicBool,
    seq: AtomicU64,
    /// The worker's epoll instance: the wake fd, the listeners (while
    /// accepting) and every connection, edge-triggered.
    ep: OwnedFd,
    /// Whether the listeners are registered; changes are made holding
    /// `accepting_lock`, so the epoll registrations match the flag.
    accepting: AtomicBool,
    accepting_lock: Mutex<()>,
    /// Our entry in the table that balances accepts between workers
    /// (src/balance.rs); `None` only if the master could not map the table.
    balance: Option<crate::balance::Mine>,
    /// While not accepting because a sibling holds fewer connections: when
    /// to take part again at the latest (ms; 0 = not stepped back).
    stepped_back_until_ms: AtomicU64,
    /// Per listener: the master shut it down (stop), so accept(2) fails
    /// with EINVAL; it stays out of the epoll set from then on.
    shut: Vec<AtomicBool>,
    conns: Table,
    /// When a loop last swept idle connections (one loop per second does).
    last_sweep_ms: AtomicU64,
    /// When this worker started draining (0: not yet): an idle keep-alive
    /// connection gets DRAIN_GRACE_MS from then to send its next request.
    drain_started_ms: AtomicU64,
    /// A Python config defines pre_request or post_request (src/wsgi/hooks.rs).
    request_hooks: bool,
    /// The response's headers are kept for someone (access log, post_request).
    want_headers: bool,
}

/// The worker's connections, by epoll token. A loop holds a connection's
/// lock while it moves it forward (including the app call), so exactly one
/// loop works on a connection at a time; an event that arrives meanwhile is
/// parked in `pending` for the holder to pick up when it lets go.
struct Table {
    slots: Box<[ConnSlot]>,
    free: Mutex<Vec<usize>>,
    live: AtomicUsize,
}

struct ConnSlot {
    conn: Mutex<Option<Box<Conn>>>,
    /// epoll flags not yet applied to the connection.
    pending: AtomicU32,
}

impl Table {
    fn new(capacity: usize) -> Table {
        Table {
            slots: (0..capacity)
                .map(|_| ConnSlot {
                    conn: Mutex::new(None),
                    pending: AtomicU32::new(0),
                })
                .collect(),
            free: Mutex::new((0..capacity).rev().collect()),
            live: AtomicUsize::new(0),
        }
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// A free slot index, if the table is not full.
    fn take_free(&self) -> Option<usize> {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn give_back(&self, idx: usize) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(idx);
    }
}

/// Entry point in the forked child. Never returns.
/// `age`: this worker's number among all the master spawned (Gunicorn's
/// `worker.age`, for hooks).
pub fn run(
    settings: Settings,
    listeners: &[Listener],
    slot: &'static Slot,
    balance: Option<crate::balance::Mine>,
    preloaded: Option<Py<PyAny>>,
    age: u64,
    stacks: Option<RawFd>,
) -> ! {
    signals::install();
    let master = nix::unistd::getppid();
    if let Err(e) = crate::privileges::drop_to(&settings) {
        crate::log::critical(&format!("Cannot drop privileges: {e}"));
        // A boot failure, as in Gunicorn (WORKER_BOOT_ERROR): the master
        // stops at start rather than respawning a worker that cannot boot.
        exit(crate::config::EXIT_APP_LOAD_ERROR);
    }
    // Changing credentials clears PR_SET_PDEATHSIG (see prctl(2)): arm it
    // again, then make sure the master did not die in between.
    // SAFETY: prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if nix::unistd::getppid() != master {
        exit(0);
    }
    MASTER_PID.store(master.as_raw(), Ordering::Relaxed);
    let (app, watch_also) = match preloaded {
        Some(app) => {
            boot_hooks(&settings, age, master.as_raw());
            (app, Vec::new())
        }
        None => boot_python(&settings, age, master.as_raw()),
    };
    if let Err(e) = Python::attach(|py| crate::wsgi::hooks::post_worker_init(py, &app)) {
        boot_failed(&format!(
            "Exception in post_worker_init hook:\n{}",
            e.trim_end()
        ));
    }
    // SIGINT/SIGQUIT end the worker through Python, so buffered print()
    // output is flushed and atexit handlers run (Gunicorn's worker leaves
    // by sys.exit). With hooks to run, or several threads already, a
    // thread waits for the signal (it takes the GIL between the app's
    // bytecodes); else the I/O loop leaves when woken, within a grace
    // period. The master's SIGKILL a second later bounds the rest.
    if crate::wsgi::hooks::on_quit() || settings.threads > 1 {
        signals::quit_through(quit_with_hooks);
    } else {
        signals::quit_on_wake();
    }
    let hooks = crate::wsgi::hooks::on_abort();
    if hooks || settings.threads == 1 {
        // faulthandler (enabled at boot, or in the master with --preload)
        // is put back after our handler, so it dumps the stacks first and
        // then calls ours, which it keeps as the previous handler. Ours
        // answers the interrupted request (--threads 1: only there does a
        // long request get its worker killed), then runs the hook or dies.
        let r = Python::attach(|py| -> PyResult<()> {
            let faulthandler = py.import("faulthandler")?;
            faulthandler.call_method0("disable")?;
            if hooks {
                signals::abort_through(abort_with_hooks);
            } else {
                signals::answer_on_abort();
            }
            enable_faulthandler(py, stacks)?;
            Ok(())
        });
        if let Err(e) = r {
            crate::log::error(&format!("cannot set up the SIGABRT handler: {e}"));
        }
    } else if stacks.is_some() {
        if let Err(e) = Python::attach(|py| enable_faulthandler(py, stacks)) {
            crate::log::error(&format!(
                "cannot send faulthandler's dumps to the master: {e}"
            ));
        }
    }
    let lst: Vec<(RawFd, ListenAddr)> = listeners
        .iter()
        .map(|l| (l.fd.as_raw_fd(), l.addr.clone()))
        .collect();
    for (fd, _) in &lst {
        // Every loop accepts until EAGAIN, so the shared listening sockets
        // must never block (O_NONBLOCK lives on the shared file description).
        // SAFETY: fcntl on fds this process holds open.
        unsafe {
            let fl = libc::fcntl(*fd, libc::F_GETFL);
            libc::fcntl(*fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
    environ::set_secure_scheme_headers(&settings.secure_scheme_headers);
    let bases = Python::attach(|py| -> PyResult<Vec<Py<PyDict>>> {
        lst.iter()
            .map(|(_, a)| {
                environ::base_environ(
                    py,
                    a,
                    &settings.root_path,
                    settings.threads > 1,
                    settings.workers > 1,
                )
                .map(Bound::unbind)
            })
            .collect()
    });
    let bases = match bases {
        Ok(b) => b,
        Err(e) => {
            let msg = Python::attach(|py| crate::wsgi::format_py_err(py, &e));
            crate::log::critical(&format!("Cannot prepare the WSGI environ: {msg}"));
            exit(1);
        }
    };
    let max_requests = if settings.max_requests > 0 {
        settings.max_requests + jitter(settings.max_requests_jitter)
    } else {
        0
    };
    let access = settings
        .accesslog
        .as_ref()
        .map(|_| AccessFormat::compile(&settings.access_log_format));
    let threads = settings.threads;
    let ep = match new_epoll() {
        Ok(ep) => ep,
        Err(e) => {
            crate::log::critical(&format!("worker epoll setup failed: {e}"));
            exit(1);
        }
    };
    let capacity = settings.worker_connections.max(1);
    let nlisteners = lst.len();
    let access_on = access.is_some();
    let shared: &'static Shared = Box::leak(Box::new(Shared {
        settings,
        listeners: lst,
        bases,
        app,
        slot,
        access,
        max_requests,
        draining: AtomicBool::new(false),
        seq: AtomicU64::new(0),
        ep,
        accepting: AtomicBool::new(false),
        accepting_lock: Mutex::new(()),
        balance,
        stepped_back_until_ms: AtomicU64::new(0),
        shut: (0..nlisteners).map(|_| AtomicBool::new(false)).collect(),
        conns: Table::new(capacity),
        last_sweep_ms: AtomicU64::new(now_ms()),
        drain_started_ms: AtomicU64::new(0),
        request_hooks: crate::wsgi::hooks::around_requests(),
        want_headers: access_on || crate::wsgi::hooks::wants_response(),
    }));
    set_accepting(shared, true);
    if shared.settings.reload {
        let mut watch = shared.settings.reload_extra_files.clone();
        watch.extend(watch_also);
        reload::spawn(&watch, move |path| {
            crate::log::info(&format!("Worker reloading: {path} modified"));
            shared.draining.store(true, Ordering::Relaxed);
            signals::wake();
        });
    }
    slot.set_ready();
    let pid = std::process::id();
    crate::log::event(
        crate::config::LogLevel::Info,
        &format!("Booting worker with pid: {pid}"),
        &[("WORKER_PID", pid.to_string())],
    );

    let mut handles = Vec::new();
    for t in 1..threads {
        handles.push(
            std::thread::Builder::new()
                .name(format!("ferricorn-io{t}"))
                .spawn(move || run_loop(shared, t)),
        );
    }
    run_loop(shared, 0);
    for h in handles.into_iter().flatten() {
        let _ = h.join();
    }
    exit(0)
}

/// Start CPython in this process and import the app; on failure print the
/// traceback and exit with the documented status (the master then stops).
/// The app, and with `--reload` after an import that raised, the files to
/// watch besides the imported modules (the app is then a 500 stand-in).
fn boot_python(settings: &Settings, age: u64, master: i32) -> (Py<PyAny>, Vec<String>) {
    if let Err(e) = crate::wsgi::prepare_process(settings)
        .and_then(|_| crate::wsgi::init_interpreter(settings, age == 1))
    {
        crate::log::critical(&format!("Worker failed to boot: {e}"));
        exit(EXIT_APP_LOAD_ERROR);
    }
    boot_hooks(settings, age, master);
    match Python::attach(|py| {
        crate::wsgi::load_app(py, &settings.wsgi_app).map_err(|e| {
            let stand_in = match &e {
                crate::wsgi::LoadError::Raised(err) if settings.reload => {
                    crate::wsgi::fail_app(py, err)
                        .map_err(|x| crate::log::error(&format!("--reload stand-in: {x}")))
                        .ok()
                }
                _ => None,
            };
            (e.exit_status(), e.describe(py), stand_in)
        })
    }) {
        Ok(app) => (app, Vec::new()),
        Err((_, tb, Some((fail_app, files)))) => {
            crate::log::error(&format!(
                "Failed to load application {:?}:\n{}",
                settings.wsgi_app,
                tb.trim_end()
            ));
            crate::log::warning(
                "--reload: answering 500 until a watched file changes (the traceback is above)",
            );
            (fail_app, files)
        }
        Err((status, tb, None)) => {
            // To stderr, not the native journal socket: we exit right away,
            // and journald can attribute a dead sender's datagram to no unit,
            // while a stderr stream connection always belongs to the unit.
            crate::log::critical_to_stderr(&format!(
                "Failed to load application {:?}:\n{}",
                settings.wsgi_app,
                tb.trim_end()
            ));
            exit(status);
        }
    }
}

/// A Python config's worker hooks (src/wsgi/hooks.rs): load them, then
/// `post_fork`, before the app is imported (unless --preload did that).
fn boot_hooks(settings: &Settings, age: u64, master: i32) {
    let r = Python::attach(|py| {
        crate::wsgi::hooks::load(py, settings, age, master).map_err(|e| {
            format!(
                "Cannot load the hooks of the config file:\n{}",
                e.trim_end()
            )
        })?;
        crate::wsgi::hooks::post_fork(py)
            .map_err(|e| format!("Exception in post_fork hook:\n{}", e.trim_end()))
    });
    if let Err(e) = r {
        boot_failed(&e);
    }
}

/// (Re-)enable faulthandler: on stderr, or under journald on the stacks
/// file the master reads when it reaps us, so a dump becomes one journal
/// entry instead of one per line on the journal stream.
fn enable_faulthandler(py: Python<'_>, stacks: Option<RawFd>) -> PyResult<()> {
    let faulthandler = py.import("faulthandler")?;
    match stacks {
        Some(fd) => {
            let kw = pyo3::types::PyDict::new(py);
            kw.set_item("file", fd)?;
            kw.set_item("all_threads", true)?;
            faulthandler.call_method("enable", (), Some(&kw))?;
        }
        None => {
            faulthandler.call_method0("enable")?;
        }
    }
    Ok(())
}

/// A boot error outside the app's import (a hook raised): Gunicorn's
/// WORKER_BOOT_ERROR, as an import that raised.
fn boot_failed(msg: &str) -> ! {
    crate::log::critical_to_stderr(&format!("Worker failed to boot. {msg}"));
    exit(EXIT_APP_LOAD_ERROR)
}

/// SIGINT/SIGQUIT: run the `worker_int` hook of a Python config (and
/// `worker_exit`, from `exit`) if it has them, flush, run atexit, leave.
fn quit_with_hooks() -> ! {
    Python::attach(crate::wsgi::hooks::worker_int);
    exit(0)
}

/// SIGABRT (a timeout) with a `worker_abort` hook: run it, then exit with
/// status 1 (`worker_exit` runs from `exit`), as Gunicorn's worker does.
fn abort_with_hooks() -> ! {
    Python::attach(crate::wsgi::hooks::worker_abort);
    exit(1)
}

fn jitter(max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let seed = (std::process::id() as u64) ^ now_ms().wrapping_mul(0x9E37_79B9_7F4A_7C15);
    seed % (max + 1)
}

/// Leave the worker process: flush Python's buffered streams, run the
/// app's atexit hooks, then `_exit` (no Rust destructors on shared state).
fn exit(code: i32) -> ! {
    // Gunicorn's worker says so itself, under its own pid, on every way out.
    let pid = std::process::id();
    crate::log::event(
        crate::config::LogLevel::Info,
        &format!("Worker exiting (pid: {pid})"),
        &[("WORKER_PID", pid.to_string())],
    );
    // SAFETY: only checks whether the interpreter exists.
    if unsafe { pyo3::ffi::Py_IsInitialized() } != 0 {
        Python::attach(|py| {
            crate::wsgi::hooks::worker_exit(py);
            let _ = py.run(c"import atexit, sys\natexit._run_exitfuncs()\nsys.stdout.flush()\nsys.stderr.flush()", None, None);
        });
    }
    // SAFETY: terminating the process.
    unsafe { libc::_exit(code) }
}

/// One I/O loop. Holds a Python thread state for its whole life (so taking
/// the GIL per request is a cheap `PyEval_RestoreThread`), but runs with
/// the GIL released except inside app calls.
fn run_loop(sh: &'static Shared, thread: usize) {
    Python::attach(|py| {
        py.detach(|| {
            Loop::new(sh, thread).run();
        })
    });
}

struct Loop {
    sh: &'static Shared,
    thread: usize,
    /// `start_response` & co, reused from request to request.
    responder: Option<Responder>,
    /// The request head being parsed; its buffers go from request to
    /// request (unless the access log keeps one).
    head: RequestHead,
    /// Python strings for repeated environ values.
    env_cache: EnvCache,
    /// Where an unfinished sweep goes on (it closed SWEEP_CLOSE_BUDGET
    /// connections and gave the loop back to the requests).
    sweep_from: Option<usize>,
}

/// The most connections one pass of the sweep closes before the loop serves
/// requests again. A close costs 10-20 µs (the FIN crosses loopback in our
/// own context), and connections opened together expire together: with 3000
/// idle keep-alive connections expiring at once, closing them in one go held
/// a request for 19-23 ms; with this budget, 3.5-4.3 ms.
const SWEEP_CLOSE_BUDGET: usize = 64;

/// How long a draining worker (max_requests, --reload, TERM) keeps an idle
/// keep-alive connection open for the request its client may be sending
/// right now. Closing at once loses that request to HTTP's keep-alive race
/// (the client sees the connection closed without a response) for every
/// busy client of a recycling worker; this serves it, with
/// `Connection: close`. An idle pooled connection costs the drain this much
/// (or the keep-alive time, if shorter). 2 s, Gunicorn's keep-alive: with
/// 0.3 s, clients pausing up to 0.4 s between requests lost 31 of 9,082
/// over ten HUPs (Gunicorn's gthread worker: none); pools behind a proxy
/// pause that long.
const DRAIN_GRACE_MS: u64 = 2000;

fn new_epoll() -> std::io::Result<OwnedFd> {
    // SAFETY: epoll_create1 returns a new fd or -1.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: we own the new epoll fd.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    epoll_ctl(
        ep.as_raw_fd(),
        libc::EPOLL_CTL_ADD,
        signals::wake_fd(),
        libc::EPOLLIN as u32,
        TOK_WAKE,
    )?;
    Ok(ep)
}

fn epoll_ctl(ep: RawFd, op: i32, fd: RawFd, events: u32, token: u64) -> std::io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: plain epoll_ctl on fds we own; `ev` lives across the call.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Register (or remove) the listening sockets in the worker's epoll.
/// EPOLLEXCLUSIVE: one worker is woken per new connection, and within the
/// worker one loop.
fn set_accepting(sh: &Shared, on: bool) {
    let taking = if on { Taking::Yes } else { Taking::No };
    register_listeners(sh, on, taking, 0);
}

/// Leave the next connections to a sibling that holds fewer (see
/// src/balance.rs), for at most PAUSE_MS.
fn step_back(sh: &Shared, now: u64) {
    let until = now + crate::balance::PAUSE_MS;
    register_listeners(sh, false, Taking::SteppedBack, until);
}

/// The one place that changes the listeners' registration, holding
/// `accepting_lock` so the flags match the epoll set; `taking` is what the
/// siblings see, `stepped_back_until` is 0 unless stepping back.
fn register_listeners(sh: &Shared, on: bool, taking: Taking, stepped_back_until: u64) {
    let _guard = sh.accepting_lock.lock().unwrap_or_else(|e| e.into_inner());
    if sh.accepting.load(Ordering::Relaxed) == on {
        if !on && taking == Taking::No {
            // Stepped back, and now full or draining: no longer a place
            // for the siblings to leave connections to.
            sh.stepped_back_until_ms.store(0, Ordering::Relaxed);
            if let Some(b) = &sh.balance {
                b.set_taking(Taking::No);
            }
        }
        return;
    }
    for li in 0..sh.listeners.len() {
        if sh.shut[li].load(Ordering::Relaxed) {
            continue; // already out of the set
        }
        let op = if on {
            libc::EPOLL_CTL_ADD
        } else {
            libc::EPOLL_CTL_DEL
        };
        if let Err(e) = listener_ctl(sh, li, op) {
            crate::log::error(&format!("epoll_ctl on listener: {e}"));
        }
    }
    sh.accepting.store(on, Ordering::Relaxed);
    sh.stepped_back_until_ms
        .store(stepped_back_until, Ordering::Relaxed);
    if let Some(b) = &sh.balance {
        b.set_taking(taking);
    }
}

/// Whether a worker that is not accepting should be: not full, not
/// draining (the caller checks), and not stepped back, or stepped back but
/// no longer ahead of a sibling, or for long enough.
fn should_resume(sh: &Shared, now: u64) -> bool {
    let live = sh.conns.live();
    if live >= sh.settings.worker_connections {
        return false;
    }
    match sh.stepped_back_until_ms.load(Ordering::Relaxed) {
        0 => true,
        until => {
            now >= until
                || !sh.balance.as_ref().is_some_and(|b| b.ahead(live))
                || (now > until - crate::balance::PAUSE_MS && connections_waiting(sh))
        }
    }
}

/// Whether a listening socket has connections queued. Stepped back for a
/// millisecond or more and they are still there: the sibling we left them
/// to is busy (a long batch of events, say), so we take them after all
/// rather than let them wait for it.
fn connections_waiting(sh: &Shared) -> bool {
    let mut fds: Vec<libc::pollfd> = sh
        .listeners
        .iter()
        .enumerate()
        .filter(|(li, _)| !sh.shut[*li].load(Ordering::Relaxed))
        .map(|(_, (fd, _))| libc::pollfd {
            fd: *fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: poll(2) with a zero timeout on fds we hold, writing only the
    // `revents` of the array we pass with its length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    n > 0 && fds.iter().any(|p| p.revents & libc::POLLIN != 0)
}

/// Keep our entry in the balancing table in step with the connection count.
fn publish_live(sh: &Shared) {
    if let Some(b) = &sh.balance {
        b.set_live(sh.conns.live());
    }
}

/// Add listener `li` to the worker's epoll (EPOLLEXCLUSIVE), or remove it.
fn listener_ctl(sh: &Shared, li: usize, op: i32) -> std::io::Result<()> {
    let events = if op == libc::EPOLL_CTL_DEL {
        0
    } else {
        (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32
    };
    epoll_ctl(
        sh.ep.as_raw_fd(),
        op,
        sh.listeners[li].0,
        events,
        TOK_LISTEN + li as u64,
    )
}

/// Balance new connections across workers. With EPOLLEXCLUSIVE the kernel
/// wakes the first epoll instance in the listening socket's wait queue that
/// has a thread waiting, so a worker that is back in `epoll_wait` quickly
/// after each accept would get every connection of a burst (wrk's 64, say)
/// while its siblings idle. Re-registering after an accept moves us to the
/// back of that queue: the next connection goes to a sibling that is
/// waiting, and to us only when none is. Costs two `epoll_ctl` per new
/// connection, none per request. Not enough alone: re-adding a listener
/// that still has connections queued puts it straight into our own ready
/// list, so while a burst lasts we keep winning the race against the
/// sibling the kernel woke; `step_back` (src/balance.rs) covers that.
fn to_the_back_of_the_queue(sh: &Shared, li: usize) {
    let _guard = sh.accepting_lock.lock().unwrap_or_else(|e| e.into_inner());
    if !sh.accepting.load(Ordering::Relaxed) {
        return;
    }
    let r = listener_ctl(sh, li, libc::EPOLL_CTL_DEL)
        .and_then(|()| listener_ctl(sh, li, libc::EPOLL_CTL_ADD));
    if let Err(e) = r {
        crate::log::error(&format!("epoll_ctl on listener: {e}"));
    }
}

fn is_accepting(sh: &Shared) -> bool {
    sh.accepting.load(Ordering::Relaxed)
}

/// Out of the listeners for a moment in favour of a sibling (src/balance.rs).
fn stepped_back(sh: &Shared) -> bool {
    sh.stepped_back_until_ms.load(Ordering::Relaxed) != 0 && !is_accepting(sh)
}

impl Loop {
    fn new(sh: &'static Shared, thread: usize) -> Loop {
        Loop {
            sh,
            thread,
            responder: None,
            head: RequestHead::default(),
            env_cache: EnvCache::default(),
            sweep_from: None,
        }
    }

    fn draining(&self) -> bool {
        self.sh.draining.load(Ordering::Relaxed) || signals::graceful()
    }

    fn run(&mut self) {
        // With several loops, take one event per wake-up: events handed to
        // a loop wait while it runs the app, and an idle sibling should get
        // them instead. One loop takes what is ready in one go.
        let batch = if self.sh.settings.threads > 1 { 1 } else { 256 };
        let yield_after_batch = self.sh.settings.threads == 1;
        let mut requests_seen = self.sh.slot.requests();
        let mut events: Vec<libc::epoll_event> =
            vec![libc::epoll_event { events: 0, u64: 0 }; batch];
        loop {
            // SAFETY: epoll_wait fills at most events.len() entries.
            let n = unsafe {
                libc::epoll_wait(
                    self.sh.ep.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    // an unfinished sweep goes on as soon as the events are
                    // served; draining, the sweep closes what the grace ends
                    if self.sweep_from.is_some() {
                        0
                    } else if self.draining() {
                        50
                    } else if stepped_back(self.sh) {
                        // Look again every millisecond: the sibling we left
                        // the connections to may have stepped back too, and
                        // nothing else would wake us to see it.
                        1
                    } else {
                        1000
                    },
                )
            };
            let now = now_ms();
            self.sh.slot.beat_at(now);
            if n <= 0 && signals::quit_requested() {
                // A quit while draining: the wake fd is out of the epoll
                // set by then, but the signal ended the wait (EINTR) or
                // the drain's short timeout did.
                quit_with_hooks();
            }
            if n < 0 {
                if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    crate::log::error(&format!("epoll_wait: {}", std::io::Error::last_os_error()));
                }
            }
            let ready = &events[..n.max(0) as usize];
            // New connections first: serving the batch can take a while
            // (a 1 MiB response per connection), and a connection waiting
            // in the accept queue meanwhile is latency nobody sees coming.
            for ev in ready
                .iter()
                .filter(|ev| ev.u64 != TOK_WAKE && ev.u64 >= TOK_LISTEN)
            {
                self.accept((ev.u64 - TOK_LISTEN) as usize, now);
            }
            for ev in ready {
                let tok = ev.u64;
                let flags = ev.events;
                if tok == TOK_WAKE {
                    self.on_wake();
                } else if tok >= TOK_LISTEN {
                    // taken above
                } else if let Some(slot) = self.sh.conns.slots.get(tok as usize) {
                    slot.pending.fetch_or(flags | PENDING, Ordering::SeqCst);
                    self.drive(tok as usize, now);
                    self.resume_if_due();
                }
            }
            let requests = self.sh.slot.requests();
            if yield_after_batch && requests != requests_seen {
                // A lone loop gives the CPU up after every batch that ran the
                // app. Busy workers often share a CPU (with each other, with
                // a proxy on the same host, with more workers than cores);
                // both stay runnable under load, and the scheduler then
                // switches between them only at its tick (4 ms with HZ=250),
                // so a request that lands on the waiting one waits a whole
                // tick: hello world, two workers and wrk on this 2-core box,
                // p99 3.4-5.0 ms in nine runs (4.5 when the workers shared a
                // core). Yielding hands the CPU over at a request boundary
                // instead (p99 1.4-3.6 ms in nine runs, same req/s; the rest
                // is wrk sharing a core with a worker, and wrk does not
                // yield), for one cheap syscall per batch (under load a batch
                // is about four requests); it returns at once when nothing
                // else is waiting to run. Batches that only moved bytes (a
                // body arriving, a response being flushed) do not count. Not
                // with --threads: there a batch is one event, and the yield
                // went to a sibling loop that then waited for the GIL (Flask,
                // 2 workers x 4 threads: 6-33% fewer req/s in three rounds).
                requests_seen = requests;
                // SAFETY: sched_yield takes no arguments and cannot fail.
                unsafe { libc::sched_yield() };
            }
            let last = self.sh.last_sweep_ms.load(Ordering::Relaxed);
            let due = now.saturating_sub(last) >= 1000
                && self
                    .sh
                    .last_sweep_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok();
            if due {
                // Belt and braces beside PDEATHSIG: never keep serving old
                // code on the socket without a master.
                if nix::unistd::getppid().as_raw() != MASTER_PID.load(Ordering::Relaxed) {
                    crate::log::warning("Master is gone; worker exiting");
                    exit(0);
                }
                if is_accepting(self.sh) {
                    // Backstop for a wake-up lost to a worker that exited
                    // between being woken and accepting: look once a second.
                    self.accept_from_every_listener(now);
                }
            }
            let resume = self.sweep_from.take();
            if due || self.draining() || resume.is_some() {
                self.sweep_from = self.sweep(now, resume.unwrap_or(0));
            }
            if self.draining() {
                let _ = self.sh.drain_started_ms.compare_exchange(
                    0,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                if self.sh.draining.load(Ordering::Relaxed) {
                    // Our own decision (max_requests, --reload): tell the
                    // master, which starts the replacement now.
                    self.sh.slot.set_leaving();
                }
                set_accepting(self.sh, false);
                if self.sh.conns.live() == 0 {
                    return;
                }
            } else if !is_accepting(self.sh) && should_resume(self.sh, now) {
                set_accepting(self.sh, true);
            }
        }
    }

    /// Stepped back from accepting and in a long batch: take part again as
    /// soon as we should (not only when the batch is over), and take what
    /// is queued at once, since the listener's next event would only come
    /// with the next `epoll_wait`.
    fn resume_if_due(&mut self) {
        if !stepped_back(self.sh) || self.draining() {
            return;
        }
        let now = now_ms();
        if should_resume(self.sh, now) {
            set_accepting(self.sh, true);
            self.accept_from_every_listener(now);
        }
    }

    /// Take what is queued on each listener that is not shut down, without
    /// waiting for its event.
    fn accept_from_every_listener(&mut self, now: u64) {
        for li in 0..self.sh.listeners.len() {
            if !self.sh.shut[li].load(Ordering::Relaxed) {
                self.accept(li, now);
            }
        }
    }

    fn on_wake(&mut self) {
        if signals::quit_requested() {
            quit_with_hooks();
        }
        if signals::take_reopen() {
            if let Err(e) = crate::log::reopen() {
                crate::log::error(&format!("reopening log files: {e}"));
            }
        }
        if signals::graceful() {
            // Stay out of the wake fd's way: it stays readable from now on.
            let _ = epoll_ctl(
                self.sh.ep.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                signals::wake_fd(),
                0,
                0,
            );
        } else {
            signals::clear_wake();
        }
    }

    fn accept(&mut self, li: usize, now: u64) {
        let sh = self.sh;
        let (lfd, _) = sh.listeners[li];
        let several_loops = sh.settings.threads > 1;
        // Up to 16 per wake-up, as long as no sibling that could take
        // connections is behind us (src/balance.rs); one when no sibling
        // could take one now, so that a burst is shared with those that
        // come free rather than drained by whoever runs first.
        // Whether a sibling takes connections too, as seen after our last
        // accept (false while none was taken).
        let mut siblings = false;
        for _ in 0..16 {
            // Even while draining, take what woke us: with EPOLLEXCLUSIVE
            // no other worker was woken for these connections, and they
            // would wait in the queue until the next one arrived. They are
            // served with `Connection: close`; the loop then deregisters.
            let Some(idx) = sh.conns.take_free() else {
                set_accepting(sh, false);
                return;
            };
            let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: accept4 writes at most `len` bytes into `ss`.
            let fd = unsafe {
                libc::accept4(
                    lfd,
                    &mut ss as *mut _ as *mut libc::sockaddr,
                    &mut len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                sh.conns.give_back(idx);
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ECONNABORTED) => {}
                    Some(libc::EINVAL) => {
                        // The master shut the socket down (it is stopping;
                        // our TERM follows). It would stay readable: take
                        // it out of the set instead of spinning on it.
                        let _guard = sh.accepting_lock.lock().unwrap_or_else(|e| e.into_inner());
                        if !sh.shut[li].swap(true, Ordering::Relaxed)
                            && sh.accepting.load(Ordering::Relaxed)
                        {
                            let _ = listener_ctl(sh, li, libc::EPOLL_CTL_DEL);
                        }
                        crate::log::debug("accept: listener shut down (stopping)");
                    }
                    Some(libc::EMFILE) | Some(libc::ENFILE) => {
                        crate::log::error(&format!(
                            "accept: {e} (raise LimitNOFILE or lower --worker-connections)"
                        ));
                    }
                    _ => crate::log::error(&format!("accept: {e}")),
                }
                break;
            }
            // SAFETY: accept4 returned a new fd that we now own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let peer = Peer::new(sockaddr_to_std(&ss), &sh.settings.forwarded_allow_ips);
            let raw = fd.as_raw_fd();
            let slot = &sh.conns.slots[idx];
            {
                let mut guard = slot.conn.lock().unwrap_or_else(|e| e.into_inner());
                slot.pending.store(0, Ordering::SeqCst);
                let mut conn = Box::new(Conn::new(fd, peer, li, now));
                conn.proxy_pending = sh.settings.proxy_protocol.on();
                *guard = Some(conn);
            }
            sh.conns.live.fetch_add(1, Ordering::Relaxed);
            publish_live(sh);
            // Whether to take another: settled before this connection is
            // served, so that a sibling gets the next ones meanwhile.
            let standing = sh.balance.as_ref().map(|b| b.standing(sh.conns.live()));
            siblings = !matches!(standing, None | Some(Standing::Only));
            let more = match standing {
                None | Some(Standing::Only) => true,
                _ if self.draining() => false,
                Some(Standing::Level) => true,
                Some(Standing::Ahead) => {
                    step_back(sh, now);
                    false
                }
                Some(Standing::Alone) => {
                    to_the_back_of_the_queue(sh, li);
                    false
                }
            };
            // Registered after the slot is filled: from here on any loop
            // may get its events. Registering a socket that already has
            // data queues an event at once, which wakes an idle loop.
            let ev = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
            if let Err(e) = epoll_ctl(sh.ep.as_raw_fd(), libc::EPOLL_CTL_ADD, raw, ev, idx as u64) {
                crate::log::error(&format!("epoll_ctl add: {e}"));
                let mut guard = slot.conn.lock().unwrap_or_else(|e| e.into_inner());
                if guard.take().is_some() {
                    sh.conns.live.fetch_sub(1, Ordering::Relaxed);
                    publish_live(sh);
                    sh.conns.give_back(idx);
                }
            } else if !several_loops && !(siblings && more) {
                // The request is often already here: serve it without
                // waiting for the epoll round-trip. Not while taking more
                // in a burst: serving each as it comes would keep the rest
                // in the queue meanwhile (a 1 MiB response takes about a
                // millisecond), and registering it has already queued its
                // first event. Nor with several loops: its first event
                // wakes an idle loop, and this one may be about to run the
                // app for a while.
                slot.pending.fetch_or(PENDING, Ordering::SeqCst);
                self.drive(idx, now);
            }
            if !more {
                return;
            }
        }
        if siblings {
            to_the_back_of_the_queue(sh, li);
        }
    }

    /// Close idle keep-alive connections, and ones that stalled, looking at
    /// the slots from `from` on. Skips connections another loop is working
    /// on. Returns where to go on when it stopped at SWEEP_CLOSE_BUDGET.
    fn sweep(&mut self, now: u64, from: usize) -> Option<usize> {
        let keepalive_ms = self.sh.settings.keepalive.max(1) * 1000;
        let stall_ms = if self.sh.settings.timeout > 0 {
            self.sh.settings.timeout * 1000
        } else {
            30_000
        };
        let draining = self.draining();
        let drain_started = match self.sh.drain_started_ms.load(Ordering::Relaxed) {
            0 => now,
            t => t,
        };
        let mut closed = 0;
        for (idx, slot) in self.sh.conns.slots.iter().enumerate().skip(from) {
            if closed == SWEEP_CLOSE_BUDGET {
                return Some(idx);
            }
            let Ok(mut guard) = slot.conn.try_lock() else {
                continue;
            };
            let Some(c) = guard.as_ref() else { continue };
            let idle = now.saturating_sub(c.last_active_ms);
            let close = match &c.phase {
                // Draining: idle keep-alive connections close once the
                // grace is over (DRAIN_GRACE_MS); one that was accepted (or
                // holds part of a request) gets at most the keep-alive time
                // to deliver its request.
                Phase::Idle if c.buffered().is_empty() && c.requests > 0 => {
                    let quiet_since = c.last_active_ms.max(drain_started);
                    // A request that arrived and is not read yet is left to
                    // its event, which serves it (closing on it would reset
                    // the connection under the client).
                    (draining
                        && now.saturating_sub(quiet_since) >= DRAIN_GRACE_MS
                        && !has_unread_input(c.raw()))
                        || idle >= keepalive_ms
                }
                Phase::Idle if c.buffered().is_empty() => {
                    idle >= if draining {
                        keepalive_ms
                    } else {
                        stall_ms.max(keepalive_ms)
                    }
                }
                // Part of a request head: at most the stall time between
                // two arrivals, and, whatever it trickles, the stall time
                // for the whole head (RFC 9110 §15.5.9's 408): a client
                // sending a byte a second would otherwise hold its slot
                // for ever.
                Phase::Idle => {
                    let head_age = now.saturating_sub(c.head_started_ms);
                    if head_age >= stall_ms && !draining {
                        send_request_timeout(c.raw());
                        true
                    } else {
                        idle >= if draining {
                            keepalive_ms.min(stall_ms)
                        } else {
                            stall_ms
                        }
                    }
                }
                Phase::Body(_) | Phase::Respond(_) => idle >= stall_ms,
                Phase::Linger { until_ms } => now >= *until_ms,
            };
            if close {
                self.close(idx, &mut guard);
                closed += 1;
            }
        }
        None
    }

    /// Drop the connection in slot `idx` (its lock held): closing the fd
    /// also removes it from epoll.
    fn close(&self, idx: usize, conn: &mut Option<Box<Conn>>) {
        if let Some(mut c) = conn.take() {
            if let Phase::Respond(r) = &mut c.phase {
                if let Some(s) = r.stream.take() {
                    release_stream(s);
                }
            }
            drop(c);
            self.sh.conns.live.fetch_sub(1, Ordering::Relaxed);
            publish_live(self.sh);
            self.sh.conns.give_back(idx);
        }
    }

    /// Move connection `idx` forward as far as it can go without blocking,
    /// with the epoll flags parked for it. If another loop holds it, that
    /// loop will see the flags when it lets go.
    fn drive(&mut self, idx: usize, now: u64) {
        let slot = &self.sh.conns.slots[idx];
        loop {
            let Ok(mut guard) = slot.conn.try_lock() else {
                return;
            };
            let flags = slot.pending.swap(0, Ordering::SeqCst);
            if flags == 0 {
                return;
            }
            let Some(c) = guard.as_mut() else {
                return; // closed since the event was queued
            };
            if flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32
                != 0
            {
                c.readable = true;
            }
            if flags & (libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0 {
                c.rdhup = true;
            }
            if flags & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                c.writable = true;
            }
            if !self.step(c, now) {
                self.close(idx, &mut guard);
            }
            drop(guard);
            // Pairs with the SeqCst fetch_or of a loop whose try_lock
            // failed while we held the lock: either it got the lock, or we
            // see its flags here and go again.
            fence(Ordering::SeqCst);
            if slot.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
        }
    }

    /// Returns false when the connection should be closed.
    fn step(&mut self, c: &mut Conn, now: u64) -> bool {
        loop {
            match &mut c.phase {
                Phase::Respond(_) => {
                    match c.flush(now) {
                        Io::Ok => {}
                        Io::Blocked => return true,
                        Io::Closed => return false,
                    }
                    let Phase::Respond(r) = &mut c.phase else {
                        unreachable!()
                    };
                    if let Some(stream) = r.stream.as_mut().filter(|_| !r.stream_done) {
                        let loopback = c.peer.loopback;
                        match pump(stream, c.fd.as_raw_fd(), loopback, &mut c.wbuf, &mut r.sent) {
                            Pump::More => continue,
                            Pump::Blocked => {
                                c.writable = false;
                                return true;
                            }
                            Pump::Done => {
                                // Flush the tail; close() once it is out.
                                r.stream_done = true;
                                continue;
                            }
                            Pump::Failed => {
                                let s = r.stream.take().unwrap();
                                release_stream(s);
                                r.keep_alive = false;
                                self.log_access(r, &c.peer.addr);
                                r.run_post_request();
                                return false;
                            }
                        }
                    }
                    // Response complete: Gunicorn's order, the access log,
                    // the result's close(), post_request.
                    self.log_access(r, &c.peer.addr);
                    if let Some(s) = r.stream.take() {
                        release_stream(s);
                    }
                    r.run_post_request();
                    // A response that promised keep-alive keeps it while
                    // draining too: the connection waits out the grace for
                    // a request the client may already be sending.
                    let keep_alive = r.keep_alive;
                    // Every close after a response is staged (RFC 9112
                    // §9.6): half-close, then read until the client closes
                    // (2 s at most). Closing at once with a pipelined
                    // request unread would send a RST, which can make the
                    // client drop the response it has not read yet.
                    if r.linger || !keep_alive {
                        // SAFETY: shutdown(2) of our socket's write side.
                        unsafe { libc::shutdown(c.raw(), libc::SHUT_WR) };
                        c.phase = Phase::Linger {
                            until_ms: now + 2000,
                        };
                        continue;
                    }
                    c.phase = Phase::Idle;
                }
                Phase::Idle => {
                    if c.buffered().is_empty() {
                        // Draining: a request that already arrived is
                        // served (with `Connection: close`); a fresh
                        // connection gets to send its first one, an idle
                        // keep-alive one its next (sweep bounds the wait).
                        match c.read_some(now) {
                            Io::Ok => continue,
                            // draining, the sweep closes it after the grace
                            Io::Blocked => return true,
                            Io::Closed => return false,
                        }
                    }
                    if c.proxy_pending {
                        match self.proxy_header(c) {
                            ProxyStep::Done => {}
                            ProxyStep::Read => match c.read_some(now) {
                                Io::Ok => continue,
                                Io::Blocked => return true,
                                Io::Closed => return false,
                            },
                            ProxyStep::Answered => continue,
                        }
                    }
                    match parse_head_into(c.buffered(), &self.sh.settings.limits, &mut self.head) {
                        Ok(Some(n)) => {
                            c.consume(n);
                            let head = std::mem::take(&mut self.head);
                            self.start_request(c, head, now);
                        }
                        Ok(None) => match c.read_some(now) {
                            Io::Ok => continue,
                            Io::Blocked => return true,
                            Io::Closed => return false,
                        },
                        Err(e) => {
                            invalid_request(&c.peer.addr, &e);
                            // The head did not parse, but a HEAD request
                            // still gets its answer without content.
                            let buffered = c.buffered();
                            let from = buffered
                                .iter()
                                .position(|&b| b != b'\r' && b != b'\n')
                                .unwrap_or(buffered.len());
                            let to_head = buffered[from..].starts_with(b"HEAD ");
                            self.answer_error_to(c, e.status(), 1, to_head);
                        }
                    }
                }
                Phase::Body(b) => {
                    let data = &c.rbuf[c.rpos..];
                    let mut failed = None;
                    let (used, done) = match &mut b.reader {
                        BodyReader::Length(left) => {
                            let n = (*left).min(data.len() as u64) as usize;
                            if let Err(e) = b.sink.push(&data[..n]) {
                                failed = Some(e.to_string());
                            }
                            *left -= n as u64;
                            (n, *left == 0)
                        }
                        BodyReader::Chunked(dec) => {
                            let mut out = Vec::new();
                            match dec.decode(data, &mut out) {
                                Ok(p) => {
                                    let limit = self.sh.settings.limit_request_body;
                                    if limit > 0 && b.sink.len() + out.len() as u64 > limit {
                                        crate::log::debug(&format!(
                                            "chunked body over limit_request_body ({limit})"
                                        ));
                                        let minor = b.head.minor_version;
                                        let to_head = b.head.method() == "HEAD";
                                        c.consume(data.len());
                                        self.answer_error_to(c, 413, minor, to_head);
                                        continue;
                                    }
                                    if let Err(e) = b.sink.push(&out) {
                                        failed = Some(e.to_string());
                                    }
                                    (p.consumed, p.done)
                                }
                                Err(e) => {
                                    invalid_request(&c.peer.addr, &e);
                                    let minor = b.head.minor_version;
                                    let to_head = b.head.method() == "HEAD";
                                    c.consume(data.len());
                                    self.answer_error_to(c, e.status(), minor, to_head);
                                    continue;
                                }
                            }
                        }
                    };
                    c.consume(used);
                    if let Some(e) = failed {
                        crate::log::error(&format!("cannot buffer request body: {e}"));
                        self.answer_error(c, 500, 1);
                        continue;
                    }
                    if done {
                        let Phase::Body(b) = std::mem::replace(&mut c.phase, Phase::Idle) else {
                            unreachable!()
                        };
                        let b = *b;
                        match b.sink.finish() {
                            Ok(body) => self.dispatch(c, b.head, body, now),
                            Err(e) => {
                                crate::log::error(&format!("cannot buffer request body: {e}"));
                                self.answer_error(c, 500, b.head.minor_version);
                            }
                        }
                        continue;
                    }
                    // A body of known length that fits in memory is read
                    // straight into its buffer (one copy fewer), at most
                    // what is left of it, so a pipelined request behind it
                    // stays in the socket for the read buffer.
                    let lent = match &mut c.phase {
                        Phase::Body(b) if c.rpos == c.rbuf.len() => match b.reader {
                            BodyReader::Length(left) => b.sink.lend(left).map(|v| (v, left)),
                            BodyReader::Chunked(_) => None,
                        },
                        _ => None,
                    };
                    let io = match lent {
                        Some((mut mem, left)) => {
                            let before = mem.len();
                            let io = c.recv_into(&mut mem, left as usize, now);
                            let got = mem.len() - before;
                            if let Phase::Body(b) = &mut c.phase {
                                b.sink.put_back(mem, got);
                                if let BodyReader::Length(left) = &mut b.reader {
                                    *left -= got as u64;
                                }
                            }
                            io
                        }
                        None => c.read_some(now),
                    };
                    match io {
                        Io::Ok => {}
                        Io::Blocked => return true,
                        Io::Closed => return false,
                    }
                }
                Phase::Linger { .. } => {
                    // Discard what the client still sends until it closes.
                    c.rbuf.clear();
                    c.rpos = 0;
                    match c.read_some(now) {
                        Io::Ok => {}
                        Io::Blocked => return true,
                        Io::Closed => return false,
                    }
                }
            }
        }
    }

    /// `--proxy-protocol`, at the start of a connection: take a PROXY
    /// header off the input if there is one. A sender outside
    /// `proxy_allow_ips` gets 403, a malformed header 400 (as Gunicorn).
    fn proxy_header(&mut self, c: &mut Conn) -> ProxyStep {
        use crate::http::proxy::{Parsed, parse_accepting};
        let mode = self.sh.settings.proxy_protocol;
        let parsed = parse_accepting(c.buffered(), mode.accepts_v1(), mode.accepts_v2());
        if matches!(parsed, Ok(Parsed::Incomplete)) {
            return ProxyStep::Read;
        }
        c.proxy_pending = false;
        if matches!(parsed, Ok(Parsed::Absent)) {
            return ProxyStep::Done;
        }
        // Unix-socket peers are local (a balancer on this host), trusted as
        // for forwarded_allow_ips.
        let allowed = c
            .peer
            .ip
            .is_none_or(|ip| self.sh.settings.proxy_allow_ips.allows(&ip));
        if !allowed {
            invalid_request(&c.peer.addr, &"PROXY header from outside proxy_allow_ips");
            self.answer_error(c, 403, 1);
            return ProxyStep::Answered;
        }
        match parsed {
            Ok(Parsed::Header(info, n)) => {
                c.consume(n);
                if let Some(info) = info {
                    c.peer.set_proxied(info);
                }
                ProxyStep::Done
            }
            Err(e) => {
                invalid_request(&c.peer.addr, &e);
                self.answer_error(c, 400, 1);
                ProxyStep::Answered
            }
            Ok(Parsed::Absent | Parsed::Incomplete) => unreachable!("handled above"),
        }
    }

    /// A complete head is in: read the body (if any) or call the app now.
    fn start_request(&mut self, c: &mut Conn, head: RequestHead, now: u64) {
        let reader = match head.body {
            BodyKind::Empty | BodyKind::Length(0) => {
                self.dispatch(c, head, Body::Mem(Vec::new()), now);
                return;
            }
            BodyKind::Length(n) => BodyReader::Length(n),
            BodyKind::Chunked => BodyReader::Chunked(ChunkedDecoder::new()),
        };
        let limit = self.sh.settings.limit_request_body;
        if limit > 0 && matches!(head.body, BodyKind::Length(n) if n > limit) {
            // Refused from the head alone, before any of it is read (and
            // without a 100 Continue).
            crate::log::debug(&format!("request body over limit_request_body ({limit})"));
            self.answer_head_error(c, 413, &head);
            self.head = head;
            return;
        }
        if head.expect_continue && c.buffered().is_empty() {
            // RFC 9110 §10.1.1: tell the client to go ahead with the body.
            c.wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            let _ = c.flush(now);
        }
        let expected = match head.body {
            BodyKind::Length(n) => Some(n),
            _ => None,
        };
        let sink = BodySink::new(self.sh.settings.body_buffer_size, expected);
        c.phase = Phase::Body(Box::new(BodyState { head, reader, sink }));
    }

    /// Answer a request we will not pass to the app, then close.
    fn answer_error(&mut self, c: &mut Conn, status: u16, minor: u8) {
        c.rbuf.clear();
        c.rpos = 0;
        c.wbuf
            .extend_from_slice(&crate::http::response::error_response(status, minor));
        c.phase = Phase::Respond(Responding {
            stream: None,
            stream_done: false,
            keep_alive: false,
            linger: true,
            log: None,
            sent: 0,
            status,
            _body: None,
            post_request: None,
        });
    }

    /// `answer_error` for a request whose head we have: to HEAD, no content.
    fn answer_head_error(&mut self, c: &mut Conn, status: u16, head: &RequestHead) {
        self.answer_error_to(c, status, head.minor_version, head.method() == "HEAD");
    }

    /// `answer_error`, without the content when the request was a HEAD
    /// (RFC 9110 §9.3.2: a response to HEAD never has content, an error
    /// answer included).
    fn answer_error_to(&mut self, c: &mut Conn, status: u16, minor: u8, to_head: bool) {
        let before = c.wbuf.len();
        self.answer_error(c, status, minor);
        if to_head {
            let answer = &c.wbuf[before..];
            let end = before + crate::http::response::for_method(answer, true).len();
            c.wbuf.truncate(end);
        }
    }

    /// Call the application with a complete request.
    fn dispatch(&mut self, c: &mut Conn, head: RequestHead, body: Body, now: u64) {
        let sh = self.sh;
        // Only the access log needs the time.
        let started = sh.access.is_some().then(Instant::now);
        c.requests += 1;
        let req = ReqInfo {
            minor: head.minor_version,
            is_head: head.method() == "HEAD",
            is_connect: head.method() == "CONNECT",
            // The request that reaches max_requests is this worker's last:
            // its response says `Connection: close` (as Gunicorn's).
            keep_alive: head.keep_alive
                && sh.settings.keepalive > 0
                && !self.draining()
                && (sh.max_requests == 0 || sh.slot.requests() + 1 < sh.max_requests),
            fd: c.raw(),
            want_headers: sh.want_headers,
            stopping: Some(signals::graceful_flag()),
        };
        sh.slot.enter_app(
            self.thread,
            &[head.method().as_bytes(), b" ", head.target().as_bytes()],
            now,
        );
        let body_len = body.len();
        let spare = &mut self.responder;
        let cache = &mut self.env_cache;
        let mut body_release = None;
        let out = Python::attach(|py| {
            let built = (|| -> PyResult<Bound<'_, PyAny>> {
                let input = match body_len {
                    0 => None, // the base dict's shared empty input
                    _ => {
                        let (input, release) = Input::new(body);
                        body_release = Some(release);
                        Some(Bound::new(py, input)?.into_any())
                    }
                };
                let env = environ::build(
                    py,
                    sh.bases[c.listener].bind(py),
                    c.listener,
                    &environ::Ctx {
                        head: &head,
                        peer: &c.peer,
                        root_path: &sh.settings.root_path,
                        body_len,
                    },
                    cache,
                    input.as_ref(),
                )?;
                Ok(env.into_any())
            })();
            match built {
                Ok(_) if cache.take_conflicting_scheme() => {
                    // Gunicorn's InvalidSchemeHeaders: a trusted proxy
                    // said both http and https.
                    invalid_request(&c.peer.addr, &"Contradictory scheme headers");
                    Err(400)
                }
                Ok(env) => {
                    // Gunicorn's pre_request/post_request hooks, when a
                    // Python config defines them.
                    let mut post_request = None;
                    if sh.request_hooks {
                        match crate::wsgi::hooks::before_request(py, &env) {
                            Ok(p) => post_request = p,
                            Err(e) => {
                                response::log_py_error(
                                    py,
                                    &e,
                                    &response::request_error_context(&env),
                                );
                                return Err(500);
                            }
                        }
                    }
                    // `%({key}e)s` in the access log: read after the app ran
                    // (it may have added keys), as Gunicorn.
                    let keys = sh.access.as_ref().map_or(&[][..], |f| f.env_keys());
                    let kept = (!keys.is_empty()).then(|| env.clone());
                    let out = response::run_app(py, sh.app.bind(py), env, req, &mut c.wbuf, spare);
                    let values = match kept {
                        Some(env) => environ::values_for_log(&env, keys),
                        None => Vec::new(),
                    };
                    if let Some(p) = &mut post_request {
                        p.status = out.status;
                        p.sent = out.body_bytes;
                        p.head = out.headers.clone();
                    }
                    Ok((out, values, post_request))
                }
                Err(e) => {
                    response::log_py_error(py, &e, "Error building the WSGI environ");
                    Err(500)
                }
            }
        });
        sh.slot.leave_app(self.thread);
        let served = sh.slot.add_request();
        if sh.max_requests > 0
            && served >= sh.max_requests
            && !sh.draining.swap(true, Ordering::Relaxed)
        {
            crate::log::info(&format!(
                "Autorestarting worker after {served} requests (max_requests)."
            ));
            signals::wake();
        }
        let (out, env_values, post_request) = match out {
            Ok(out) => out,
            Err(status) => {
                self.answer_head_error(c, status, &head);
                self.head = head;
                return;
            }
        };
        let log = match started {
            Some(started) => Some(Box::new(AccessInfo {
                head,
                started,
                headers: out.headers,
                request_id: sh.seq.fetch_add(1, Ordering::Relaxed),
                env: env_values,
            })),
            None => {
                // Give the head's buffers back for the next request.
                self.head = head;
                None
            }
        };
        c.phase = Phase::Respond(Responding {
            stream: out.stream,
            stream_done: false,
            keep_alive: out.keep_alive,
            linger: false,
            log,
            sent: out.body_bytes,
            status: out.status,
            _body: body_release,
            post_request,
        });
    }

    fn log_access(&self, r: &mut Responding, remote_addr: &str) {
        let (Some(fmt), Some(info)) = (&self.sh.access, r.log.take()) else {
            return;
        };
        fmt.emit(&Record {
            remote_addr,
            method: info.head.method(),
            target: info.head.target(),
            minor_version: info.head.minor_version,
            status: r.status,
            body_bytes: r.sent,
            duration: info.started.elapsed(),
            request_headers: info.head.headers(),
            response_headers: &info.headers,
            request_id: info.request_id,
            env: &info.env,
        });
    }
}

/// Where reading a PROXY header left the connection.
enum ProxyStep {
    /// No header (or it was taken off): go on to the request.
    Done,
    /// A header has begun: read more.
    Read,
    /// Refused: an error answer is queued.
    Answered,
}

enum Pump {
    More,
    Blocked,
    Done,
    Failed,
}

/// Move a streamed body on. `loopback`: the peer is a TCP client on this
/// host (files then go by copy, see `response::pump_file`).
fn pump(
    stream: &mut Stream,
    sock: RawFd,
    loopback: bool,
    wbuf: &mut Vec<u8>,
    sent: &mut u64,
) -> Pump {
    match stream {
        Stream::Iter {
            iter, framing, sr, ..
        } => {
            match Python::attach(|py| response::pump_iter(py, iter, sr, framing, wbuf, sent, sock))
            {
                Ok(true) => Pump::Done,
                Ok(false) => Pump::More,
                Err(()) => Pump::Failed,
            }
        }
        Stream::Close { .. } => Pump::Done,
        Stream::File {
            file,
            offset,
            remaining,
            ..
        } => match response::pump_file(
            sock,
            file,
            offset,
            remaining,
            sent,
            loopback.then_some(wbuf),
        ) {
            Ok(true) => Pump::Done,
            Ok(false) if loopback => Pump::More, // a chunk in wbuf to flush
            Ok(false) => Pump::Blocked,
            Err(e) => {
                crate::log::debug(&format!("sendfile: {e}"));
                Pump::Failed
            }
        },
    }
}

/// Call the result's close() and drop its Python references (GIL held).
/// Whether the client has sent bytes we have not read (one peek, no wait).
fn has_unread_input(fd: RawFd) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: recv(2) of at most one byte into our buffer; MSG_PEEK leaves
    // it in the socket for the loop that serves the connection.
    let n = unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr() as *mut libc::c_void,
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

fn release_stream(s: Stream) {
    Python::attach(|py| {
        let result = match s {
            Stream::Iter {
                iter, result, sr, ..
            } => {
                drop(iter);
                if let Some(sr) = sr {
                    sr.get().end();
                }
                result
            }
            Stream::File { result, .. } | Stream::Close { result } => result,
        };
        response::close_result(py, result.bind(py));
        drop(result);
    });
}

fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(std::net::SocketAddr::from((
                u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(std::net::SocketAddr::from((
                a.sin6_addr.s6_addr,
                u16::from_be(a.sin6_port),
            )))
        }
        _ => None,
    }
}

/// Best effort, once, without waiting: a 408 to a client whose request
/// head did not arrive in time, just before its connection is closed.
fn send_request_timeout(fd: RawFd) {
    // whatever the kernel does not take is dropped with the connection
    response::send_nowait(fd, &crate::http::response::error_response(408, 1));
}

/// A request we answer with a 4xx without calling the app: a warning with
/// the client's address, worded as Gunicorn's (operators grep for it).
fn invalid_request(ip: &str, why: &dyn std::fmt::Display) {
    crate::log::warning(&format!("Invalid request from ip={ip}: {why}"));
}
