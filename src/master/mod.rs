//! The master ("arbiter"): owns the listening sockets, forks workers and
//! keeps the right number of them alive, and turns signals into actions.
//!
//! It is one small state machine read top to bottom in `run`: each turn of
//! the loop waits on a signalfd (signals are queued by the kernel and
//! handled here, never in a handler), reaps children, enforces timeouts,
//! spawns what is missing, and reports to systemd. The master runs no
//! Python unless `--preload`.
//!
//! Signals: HUP reload (new generation, then retire the old), TERM graceful
//! stop, INT/QUIT fast stop, TTIN/TTOU one worker more/less, USR1 reopen
//! logs, USR2 binary upgrade (under systemd in place: exec of the same path,
//! same PID, the workers adopted; elsewhere Gunicorn's second master), CHLD
//! reap. See docs/SIGNALS.md.

mod upgrade;

pub use upgrade::{pidfile_path, remember_exe, take_handoff};

/// Listeners handed over by the previous image (USR2).
pub fn adopt_listeners(l: &[(std::os::fd::RawFd, String)]) -> Result<Vec<Listener>, String> {
    l.iter()
        .map(|(fd, name)| crate::sock::adopt(*fd, name))
        .collect()
}

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use crate::config::LogLevel;
use crate::config::{Options, Settings, is_app_load_failure};
use crate::log;
use crate::scoreboard::{STATE_LEAVING, STATE_READY, Scoreboard, now_ms};
use crate::sock::Listener;
use crate::systemd::notify::Notifier;
use crate::wsgi::hooks;

/// Slots in the heartbeat table: room for the largest worker count twice
/// over (old and new generation during a reload) plus spares.
const SCOREBOARD_SLOTS: usize = 2 * 1024 + 64;

/// A worker that dies sooner than this after it began serving counts
/// towards the crash-loop backoff.
const QUICK_DEATH: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerState {
    Booting,
    Serving,
    /// Sent TERM (reload, TTOU, stop); may finish in-flight requests.
    Retiring,
}

#[derive(Debug)]
struct Worker {
    slot: usize,
    generation: u64,
    state: WorkerState,
    spawned: Instant,
    /// When we sent SIGABRT for a timeout (SIGKILL follows if it lingers).
    aborted: Option<Instant>,
    retire_deadline: Option<Instant>,
    /// Its number in spawn order (`worker.age` for hooks; 0 when adopted
    /// across an in-place upgrade).
    age: u64,
    /// Under journald: the file (a memfd both hold) faulthandler writes the
    /// worker's Python stacks to when it is killed (a timeout) or crashes,
    /// so that the master logs them as one entry once it is reaped; on
    /// stderr, the journal stream, they would be one entry per line.
    stacks: Option<std::os::fd::OwnedFd>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Running,
    /// A new generation is booting; the old one serves until it is ready.
    Reloading {
        generation: u64,
    },
    Stopping {
        graceful: bool,
    },
}

pub struct Master {
    cli: Options,
    settings: Settings,
    listeners: Vec<Listener>,
    scoreboard: Scoreboard,
    workers: BTreeMap<Pid, Worker>,
    /// The highest generation number handed out so far (never reused).
    generation: u64,
    /// Workers spawned so far: the next one's `worker.age` for hooks.
    spawned: u64,
    /// The generation kept at strength while no reload runs: the last one
    /// that completed a reload (a failed reload leaves it unchanged).
    serving: u64,
    target: usize,
    mode: Mode,
    stop_deadline: Option<Instant>,
    sigfd: SignalFd,
    notifier: Option<Notifier>,
    /// A failed sd_notify was logged once: not again for every message
    /// (sd_notify(3): senders need not care whether anyone listens).
    notify_failed: std::cell::Cell<bool>,
    watchdog: Option<Duration>,
    last_watchdog: Instant,
    ready_sent: bool,
    /// A HUP that came before the first READY=1: done once it is sent.
    hup_pending: bool,
    last_status: String,
    last_status_at: Instant,
    /// When EXTEND_TIMEOUT_USEC was last sent while the workers boot.
    last_extend_at: Instant,
    /// Consecutive workers that died soon after starting (crash loop).
    quick_deaths: u32,
    /// A worker was killed for not booting within --timeout: the start
    /// no longer asks systemd for more time (EXTEND_TIMEOUT_USEC).
    boot_timed_out: bool,
    next_spawn_at: Instant,
    exit_code: i32,
    preloaded: Option<pyo3::Py<pyo3::PyAny>>,
    reload_started: Option<Instant>,
    last_reload: Option<String>,
    /// USR2 (or HUP with --preload) was received: re-exec at the end of
    /// this turn, after every other signal read with it was handled (the
    /// exec would drop them: they are already out of the signalfd).
    upgrade_pending: bool,
    /// USR2 re-executes in place (under systemd, whose main PID must not
    /// change) rather than starting a second master as Gunicorn does.
    upgrade_in_place: bool,
    /// The second master a Gunicorn-style USR2 started, while it lives.
    new_master: Option<Pid>,
    /// We are that second master, and this old master (our parent) still
    /// runs: our pid file is `PIDFILE.2` and our title says `.2` until it
    /// exits and we are promoted.
    old_master: Option<Pid>,
}

const HANDLED: [Signal; 10] = [
    Signal::SIGHUP,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCHLD,
    Signal::SIGWINCH,
];

fn signal_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in HANDLED {
        set.add(s);
    }
    set
}

impl Master {
    /// Set up the master from validated settings and opened sockets.
    pub fn new(
        cli: Options,
        settings: Settings,
        listeners: Vec<Listener>,
        notifier: Option<Notifier>,
        watchdog: Option<Duration>,
        adopted: Option<upgrade::Handoff>,
        upgrade_in_place: bool,
    ) -> Result<Master, String> {
        let set = signal_set();
        set.thread_block()
            .map_err(|e| format!("sigprocmask: {e}"))?;
        let sigfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| format!("signalfd: {e}"))?;
        let graceful = Duration::from_secs(settings.graceful_timeout);
        let old_master = adopted
            .as_ref()
            .and_then(|h| h.old_master)
            .map(Pid::from_raw);
        let new_master = adopted
            .as_ref()
            .and_then(|h| h.new_master)
            .map(Pid::from_raw);
        let (scoreboard, workers, generation, serving) =
            match adopted.filter(|h| h.parent.is_none()) {
                Some(h) => {
                    let sb = Scoreboard::adopt(h.scoreboard_fd, h.capacity)
                        .map_err(|e| format!("scoreboard: {e}"))?;
                    let mut workers = BTreeMap::new();
                    let now = Instant::now();
                    for w in h.workers {
                        let state = match w.state {
                            upgrade::AdoptedState::Booting => WorkerState::Booting,
                            upgrade::AdoptedState::Serving => WorkerState::Serving,
                            upgrade::AdoptedState::Retiring | upgrade::AdoptedState::Aborted => {
                                WorkerState::Retiring
                            }
                        };
                        workers.insert(
                            Pid::from_raw(w.pid),
                            Worker {
                                slot: w.slot,
                                generation: w.generation,
                                state,
                                spawned: now,
                                aborted: (w.state == upgrade::AdoptedState::Aborted).then_some(now),
                                // The old image's deadline is not carried over:
                                // a retiring worker gets a fresh graceful period.
                                retire_deadline: (state == WorkerState::Retiring)
                                    .then_some(now + graceful),
                                age: 0,
                                stacks: None,
                            },
                        );
                    }
                    let serving = h.serving.unwrap_or_else(|| {
                        workers
                            .values()
                            .filter(|w| w.state != WorkerState::Retiring)
                            .map(|w| w.generation)
                            .max()
                            .unwrap_or(h.generation)
                    });
                    (sb, workers, h.generation, serving)
                }
                None => (
                    Scoreboard::create(SCOREBOARD_SLOTS).map_err(|e| format!("scoreboard: {e}"))?,
                    BTreeMap::new(),
                    0,
                    0,
                ),
            };
        // The table workers share to balance accepts (src/balance.rs);
        // without it they still serve, only unbalanced.
        if let Err(e) = crate::balance::init(scoreboard.capacity()) {
            crate::log::warning(&format!("accept balancing table: {e}"));
        }
        let target = settings.workers;
        Ok(Master {
            cli,
            settings,
            listeners,
            scoreboard,
            workers,
            generation,
            spawned: 0,
            serving,
            target,
            mode: Mode::Running,
            stop_deadline: None,
            sigfd,
            notifier,
            notify_failed: std::cell::Cell::new(false),
            watchdog,
            last_watchdog: Instant::now() - Duration::from_secs(3600),
            ready_sent: false,
            hup_pending: false,
            last_status: String::new(),
            last_status_at: Instant::now(),
            last_extend_at: Instant::now(),
            quick_deaths: 0,
            boot_timed_out: false,
            next_spawn_at: Instant::now(),
            exit_code: 0,
            preloaded: None,
            reload_started: None,
            last_reload: None,
            upgrade_pending: false,
            upgrade_in_place,
            new_master,
            old_master,
        })
    }

    /// Where our pid file is: `PIDFILE.2` while we are a second master
    /// whose old master still runs (Gunicorn's names).
    fn pidfile_path(&self, s: &Settings) -> Option<std::path::PathBuf> {
        s.pidfile
            .as_ref()
            .map(|p| upgrade::pidfile_path(p, self.old_master.is_some()))
    }

    fn set_title(&self, s: &Settings) {
        let suffix = if self.old_master.is_some() { ".2" } else { "" };
        crate::proctitle::set(&format!("ferricorn: master [{}{suffix}]", s.proc_name));
    }

    /// Another master shares our listening sockets (one side of a
    /// Gunicorn-style USR2): stopping must not shut them down or remove
    /// their socket files, the other master goes on serving on them.
    fn sockets_shared(&self) -> bool {
        self.new_master.is_some() || self.old_master.is_some()
    }

    /// A second master whose old master has exited takes over: the pid file
    /// gets its configured name, the title loses its `.2`.
    fn check_promoted(&mut self) {
        let Some(old) = self.old_master else {
            return;
        };
        if nix::unistd::getppid() == old {
            return;
        }
        log::info("Master has been promoted.");
        let from = self.pidfile_path(&self.settings);
        self.old_master = None;
        if let (Some(from), Some(to)) = (from, self.pidfile_path(&self.settings)) {
            if let Err(e) = std::fs::rename(&from, &to) {
                log::error(&format!(
                    "renaming the pid file {} to {}: {e}",
                    from.display(),
                    to.display()
                ));
            }
        }
        self.set_title(&self.settings);
    }

    fn notify(&self, f: impl FnOnce(&Notifier) -> std::io::Result<()>) {
        if let Some(n) = &self.notifier {
            if let Err(e) = f(n) {
                if !self.notify_failed.replace(true) {
                    log::warning(&format!("sd_notify: {e} (further failures are not logged)"));
                }
            }
        }
    }

    /// Run until stopped; returns the process exit status.
    pub fn run(mut self) -> i32 {
        if self.settings.preload {
            match crate::preload::load(&self.settings) {
                Ok(app) => self.preloaded = Some(app),
                Err((_, tb)) if !self.workers.is_empty() => {
                    // Re-exec'd by HUP/USR2 with --preload, and the code on
                    // disk is broken now: the adopted workers keep serving
                    // (as a failed HUP without --preload does). Replacements,
                    // if any are needed, import the app themselves.
                    log::error(&format!(
                        "Failed to load application {:?}:\n{}",
                        self.settings.wsgi_app,
                        tb.trim_end()
                    ));
                    log::error(&format!(
                        "Reload failed (the application failed to load in the master); \
                         the previous generation keeps serving ({} workers)",
                        self.workers.len()
                    ));
                    self.last_reload = Some("failed: the application failed to load".into());
                    self.ready_sent = true;
                    self.notify(|n| n.ready());
                }
                Err((status, tb)) => {
                    log::critical(&format!(
                        "Failed to load application {:?}:\n{}",
                        self.settings.wsgi_app, tb
                    ));
                    self.notify(|n| n.errno_status(libc::ENOEXEC, "application failed to load"));
                    // The same closing lines as a start whose workers
                    // failed to import, and the pid file goes.
                    log::error(load_failure_reason(status));
                    log::error("Shutting down: Master");
                    self.cleanup();
                    return status;
                }
            }
        }
        if self.workers.is_empty() {
            self.generation = 1;
            self.serving = 1;
        } else if self.settings.preload && self.preloaded.is_none() {
            log::info(&format!(
                "Upgraded in place: adopted {} workers",
                self.workers.len()
            ));
        } else {
            // Adopted after an in-place upgrade: start a new generation on
            // the new binary and retire the adopted ones once it serves.
            log::info(&format!(
                "Upgraded in place: adopted {} workers",
                self.workers.len()
            ));
            self.generation += 1;
            self.mode = Mode::Reloading {
                generation: self.generation,
            };
            self.reload_started = Some(Instant::now());
            self.ready_sent = true;
        }
        self.own_logs();
        if self.workers.is_empty() {
            // Gunicorn's arbiter hooks of a Python config, each in a child:
            // it sets num_workers first (old value None), then starts. Not
            // again after an in-place re-exec: the same master goes on.
            hooks::run_master_hook(
                &self.settings,
                "nworkers_changed",
                None,
                Some((self.target, None)),
            );
            let started = hooks::run_master_hook(&self.settings, "on_starting", None, None)
                && hooks::run_master_hook(&self.settings, "when_ready", None, None);
            if !started {
                // Gunicorn's arbiter lets these two raise out of its start:
                // the server does not start (a hook that checks for a
                // secret or a migration can refuse it), exit status 1.
                log::error("Reason: a start hook (on_starting, when_ready) raised.");
                log::error("Shutting down: Master");
                self.notify(|n| {
                    n.errno_status(libc::ECANCELED, "a start hook raised; see the log")
                });
                self.cleanup();
                return 1;
            }
        }
        self.notify(|n| n.status("booting workers"));
        // Fork the first workers before waiting on anything.
        self.maintain();
        loop {
            self.wait_for_signals();
            self.reap();
            self.check_promoted();
            if let Some(code) = self.check_stopped() {
                self.cleanup();
                hooks::run_master_hook(&self.settings, "on_exit", None, None);
                return code;
            }
            self.check_timeouts();
            self.check_retiring();
            self.maintain();
            self.check_reload_done();
            self.check_ready();
            self.heartbeat_systemd();
        }
    }

    fn wait_for_signals(&mut self) {
        let mut timeout_ms: i32 = match self.watchdog {
            Some(w) => (w.as_millis() as i32 / 2).clamp(10, 500),
            None => 500,
        };
        if self
            .workers
            .values()
            .any(|w| w.state == WorkerState::Booting)
        {
            // A worker says it is ready through the scoreboard, not with a
            // signal: look often while one boots, so a reload completes (and
            // READY=1 goes out) soon after the last new worker can serve.
            timeout_ms = timeout_ms.min(20);
        }
        let mut pfd = libc::pollfd {
            fd: self.sigfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        let mut queue = Vec::new();
        while let Ok(Some(info)) = self.sigfd.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                queue.push(sig);
            }
        }
        for sig in queue {
            self.handle_signal(sig);
        }
        if std::mem::take(&mut self.upgrade_pending) {
            self.upgrade();
        }
    }

    fn handle_signal(&mut self, sig: Signal) {
        match sig {
            Signal::SIGCHLD => {} // reaped every turn anyway
            Signal::SIGTERM => {
                log::info("Handling signal: term; graceful stop");
                self.begin_stop(true);
            }
            Signal::SIGINT | Signal::SIGQUIT => {
                log::info(&format!(
                    "Handling signal: {}; fast stop",
                    if sig == Signal::SIGINT { "int" } else { "quit" }
                ));
                self.begin_stop(false);
            }
            Signal::SIGHUP => self.begin_reload(),
            Signal::SIGTTIN => {
                self.set_target(self.target + 1, false);
                log::info(&format!(
                    "Handling signal: ttin; workers now {}",
                    self.target
                ));
            }
            Signal::SIGTTOU => {
                self.set_target(self.target.saturating_sub(1).max(1), false);
                log::info(&format!(
                    "Handling signal: ttou; workers now {}",
                    self.target
                ));
            }
            Signal::SIGUSR1 => {
                log::info("Handling signal: usr1; reopening log files");
                if let Err(e) = log::reopen() {
                    log::error(&format!("reopening log files: {e}"));
                }
                self.own_logs();
                self.signal_all(Signal::SIGUSR1, |_| true);
            }
            Signal::SIGUSR2 if !self.upgrade_in_place => self.start_new_master(),
            Signal::SIGUSR2 => {
                log::info("Handling signal: usr2; upgrading in place (re-exec)");
                hooks::run_master_hook(&self.settings, "pre_exec", None, None);
                self.upgrade_pending = true;
            }
            Signal::SIGWINCH => {
                // Gunicorn stops its workers on WINCH only when daemonized;
                // ferricorn never is. Say it arrived, for the operator
                // following the USR2-then-WINCH upgrade recipe.
                log::info("Handling signal: winch; ignored (the master is not daemonized)");
            }
            _ => {}
        }
    }

    /// The number of workers to keep; a change runs the nworkers_changed
    /// hook (`always`: a reload, where Gunicorn's arbiter sets it again).
    fn set_target(&mut self, n: usize, always: bool) {
        let old = self.target;
        self.target = n;
        if n != old || always {
            hooks::run_master_hook(
                &self.settings,
                "nworkers_changed",
                None,
                Some((n, Some(old))),
            );
        }
    }

    /// Workers running as `--user` must be able to reopen the log files.
    fn own_logs(&self) {
        if let Err(e) = crate::privileges::chown_logs(&self.settings) {
            log::warning(&format!(
                "cannot hand the log files to the workers' user: {e}; they will not reopen them on USR1"
            ));
        }
    }

    fn signal_all(&self, sig: Signal, filter: impl Fn(&Worker) -> bool) {
        for (pid, w) in &self.workers {
            if filter(w) {
                let _ = kill(*pid, sig);
            }
        }
    }

    fn begin_stop(&mut self, graceful: bool) {
        if let Mode::Stopping { graceful: g } = self.mode {
            if g && !graceful {
                // A fast stop while a graceful one runs: escalate.
                self.mode = Mode::Stopping { graceful: false };
                self.signal_all(Signal::SIGQUIT, |_| true);
                self.stop_deadline = Some(Instant::now() + Duration::from_secs(1));
            }
            return;
        }
        self.notify(|n| n.stopping());
        self.mode = Mode::Stopping { graceful };
        self.stop_listening();
        if graceful {
            self.signal_all(Signal::SIGTERM, |_| true);
            let grace = Duration::from_secs(self.settings.graceful_timeout);
            self.stop_deadline = Some(Instant::now() + grace);
            // A --graceful-timeout longer than the unit's TimeoutStopSec=
            // would otherwise end in systemd's SIGKILL mid-request. The
            // extension only ever lengthens systemd's timeout (sd_notify(3)),
            // and covers our own deadline plus the kill and reap after it.
            self.notify(|n| n.extend_timeout(grace + Duration::from_secs(5)));
        } else {
            self.signal_all(Signal::SIGQUIT, |_| true);
            self.stop_deadline = Some(Instant::now() + Duration::from_secs(1));
        }
        for w in self.workers.values_mut() {
            w.state = WorkerState::Retiring;
        }
    }

    /// On stop, refuse new connections at once on the sockets we bound
    /// ourselves: shutdown(2) acts on the socket shared with every worker,
    /// so the kernel stops completing handshakes while in-flight requests
    /// finish. (Closing our fd alone would not: the workers hold it open.)
    /// Sockets from systemd or inherited by fd are left alone: their owner
    /// keeps queueing connections for the next instance.
    fn stop_listening(&self) {
        if self.sockets_shared() {
            return;
        }
        for l in &self.listeners {
            let ours = self.settings.bind.contains(&l.name)
                && matches!(
                    crate::sock::BindSpec::parse(&l.name),
                    Ok(crate::sock::BindSpec::Tcp(_) | crate::sock::BindSpec::Unix(_))
                );
            if ours {
                // SAFETY: shutdown(2) on a listening socket we own.
                unsafe { libc::shutdown(l.fd.as_raw_fd(), libc::SHUT_RD) };
            }
        }
    }

    fn check_stopped(&mut self) -> Option<i32> {
        let Mode::Stopping { .. } = self.mode else {
            return None;
        };
        if self.workers.is_empty() {
            // Gunicorn's halt(): INFO for a clean exit, ERROR otherwise.
            if self.exit_code == 0 {
                log::info("Shutting down: Master");
            } else {
                log::error("Shutting down: Master");
            }
            return Some(self.exit_code);
        }
        if self.stop_deadline.is_some_and(|d| Instant::now() >= d) {
            for pid in self.workers.keys() {
                log::warning(&format!(
                    "Worker (pid:{pid}) did not stop in time; sending SIGKILL"
                ));
                let _ = kill(*pid, Signal::SIGKILL);
            }
            self.stop_deadline = Some(Instant::now() + Duration::from_secs(5));
        }
        None
    }

    fn begin_reload(&mut self) {
        match self.mode {
            Mode::Stopping { .. } => {
                log::warning("Ignoring HUP: stopping");
                return;
            }
            Mode::Reloading { generation } => {
                // The generation being booted was made from what was on
                // disk at the previous HUP; this HUP asks for what is there
                // now. Drop it and start over (the serving one stays).
                log::info(&format!(
                    "Handling signal: hup; abandoning generation {generation} (still booting) and reloading again"
                ));
                let deadline = Instant::now() + Duration::from_secs(self.settings.graceful_timeout);
                for (pid, w) in self.workers.iter_mut() {
                    if w.generation == generation && w.state != WorkerState::Retiring {
                        let sig = if w.state == WorkerState::Booting {
                            Signal::SIGKILL
                        } else {
                            Signal::SIGTERM
                        };
                        let _ = kill(*pid, sig);
                        w.state = WorkerState::Retiring;
                        w.retire_deadline = Some(deadline);
                    }
                }
                self.mode = Mode::Running;
            }
            Mode::Running if !self.ready_sent && self.notifier.is_some() => {
                // Still starting under systemd: it has no READY=1 yet, so
                // RELOADING=1 now would come before it. Reload once the
                // workers serve.
                log::info("Handling signal: hup; reloading once the first workers serve");
                self.hup_pending = true;
                return;
            }
            Mode::Running => log::info("Handling signal: hup; reloading"),
        }
        self.notify(|n| n.reloading());
        if self.settings.preload {
            // Preloaded code lives in the master: only a re-exec reloads it.
            log::info("--preload: reloading by an in-place re-exec");
            hooks::run_master_hook(&self.settings, "on_reload", None, None);
            self.upgrade_pending = true;
            return;
        }
        match Settings::load(&self.cli) {
            Ok(s) if s.preload => {
                // `preload` was turned on in the config file: the app must
                // now be imported by the master, which a fresh image does.
                log::info("preload is now on: reloading by an in-place re-exec");
                hooks::run_master_hook(&s, "on_reload", None, None);
                self.upgrade_pending = true;
                return;
            }
            Ok(s) => {
                let workers = s.workers;
                if let Err(e) = crate::config::enter_working_dir(&s) {
                    log::error(&format!("Reload: {e}"));
                }
                // After the chdir: a relative unix: path is taken from the new one.
                let mut s = s;
                if s.bind != self.settings.bind {
                    if self.serving_all_activated() && !crate::sock::selects_fd(&s.bind) {
                        // The rule of the start holds on a reload too: with
                        // no fd:// in the list, systemd's sockets replace
                        // it (dropping them would leave systemd's clients
                        // queued on a socket nobody serves).
                        log::info(&format!(
                            "socket activation: still serving the {} socket(s) systemd passed \
                             instead of --bind {} (select some with -b fd://NAME to bind others as well)",
                            self.listeners.len(),
                            s.bind.join(", ")
                        ));
                    } else {
                        self.rebind(&mut s);
                    }
                }
                if let Err(e) = log::init(&s) {
                    log::error(&format!("reloading log settings: {e}"));
                }
                // As Gunicorn's reload: the old pid file goes, the new one
                // is written, the title names the new proc_name.
                if s.pidfile != self.settings.pidfile {
                    if let Some(old) = self.pidfile_path(&self.settings) {
                        crate::pidfile::remove(&old);
                    }
                    if let Some(new) = self.pidfile_path(&s) {
                        if let Err(e) = crate::pidfile::create(&new) {
                            log::error(&format!("Reload: {e}"));
                        }
                    }
                }
                self.set_title(&s);
                self.settings = s;
                self.own_logs();
                // Gunicorn's order: the new settings (num_workers), then on_reload.
                self.set_target(workers, true);
                hooks::run_master_hook(&self.settings, "on_reload", None, None);
            }
            Err(e) => {
                log::error(&format!("Reload: {e}; keeping the running configuration"));
            }
        }
        self.generation += 1;
        self.mode = Mode::Reloading {
            generation: self.generation,
        };
        self.reload_started = Some(Instant::now());
    }

    /// Whether the sockets served are the ones systemd passed, taken in
    /// place of a bind list that selects none of them by `fd://` (the rule
    /// of `sock::open_listeners`): then no listener is named by the list.
    fn serving_all_activated(&self) -> bool {
        !crate::sock::selects_fd(&self.settings.bind)
            && !self.listeners.is_empty()
            && self
                .listeners
                .iter()
                .all(|l| !l.owns_path && !self.settings.bind.contains(&l.name))
    }

    /// HUP with another `bind`: the new generation listens on the new
    /// list, as after Gunicorn's reload. The old workers keep the sockets
    /// they hold until they are retired; the master closes its copy of
    /// those no longer named now (and removes their unix socket files), so
    /// new workers never see them. If a new address cannot be bound,
    /// nothing changes and the running list is kept.
    fn rebind(&mut self, s: &mut Settings) {
        let current = std::mem::take(&mut self.listeners);
        match crate::sock::rebind(current, &s.bind, crate::sock::SocketOptions::of(s)) {
            Ok(r) => {
                self.listeners = r.listeners;
                for l in r.dropped {
                    log::info(&format!("Closing listener: {}", l.addr));
                    l.close();
                }
                let paths = self.listeners.iter().filter_map(|l| l.owned_path());
                if let Err(e) = crate::privileges::chown_to_workers(s, paths) {
                    log::error(&format!("Reload: {e}"));
                }
                for l in &self.listeners {
                    log::info(&format!(
                        "Listening at: {} ({})",
                        l.addr,
                        std::process::id()
                    ));
                }
            }
            Err((current, e)) => {
                self.listeners = current;
                log::error(&format!(
                    "Reload: cannot listen: {e}; keeping the sockets of the running configuration"
                ));
                s.bind = self.settings.bind.clone();
                s.bind_is_default = self.settings.bind_is_default;
            }
        }
    }

    /// All workers of the new generation serve: retire the old ones.
    fn check_reload_done(&mut self) {
        let Mode::Reloading { generation } = self.mode else {
            return;
        };
        let new: Vec<_> = self
            .workers
            .values()
            .filter(|w| w.generation == generation)
            .collect();
        if new.len() < self.target || new.iter().any(|w| w.state != WorkerState::Serving) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(self.settings.graceful_timeout);
        for (pid, w) in self.workers.iter_mut() {
            if w.generation < generation && w.state != WorkerState::Retiring {
                let _ = kill(*pid, Signal::SIGTERM);
                w.state = WorkerState::Retiring;
                w.retire_deadline = Some(deadline);
            }
        }
        let took = self
            .reload_started
            .map(|t| t.elapsed().as_millis())
            .unwrap_or(0);
        log::info(&format!(
            "Reload complete: generation {generation} serving ({took} ms)"
        ));
        self.last_reload = Some(format!("generation {generation}"));
        self.serving = generation;
        self.mode = Mode::Running;
        self.notify(|n| n.ready());
        self.update_status(true);
    }

    fn abort_reload(&mut self, generation: u64, why: &str) {
        log::error(&format!(
            "Reload failed ({why}); the previous generation keeps serving"
        ));
        for (pid, w) in self.workers.iter_mut() {
            if w.generation == generation {
                let _ = kill(*pid, Signal::SIGKILL);
                w.state = WorkerState::Retiring;
            }
        }
        self.mode = Mode::Running;
        // `serving` still names the previous generation: maintain() keeps
        // that one at strength, and the next HUP starts a fresh number.
        self.last_reload = Some(format!("failed: {why}"));
        self.notify(|n| n.ready());
        self.update_status(true);
    }

    /// The generation maintain() spawns into: the one a reload is
    /// booting, otherwise the one serving.
    fn current_generation(&self) -> u64 {
        match self.mode {
            Mode::Reloading { generation } => generation,
            _ => self.serving,
        }
    }

    /// Reap exited workers, log how they died, decide what follows.
    fn reap(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => s,
            };
            let (pid, code, signal) = match status {
                WaitStatus::Exited(pid, code) => (pid, Some(code), None),
                WaitStatus::Signaled(pid, sig, _) => (pid, None, Some(sig)),
                _ => continue,
            };
            if Some(pid) == self.new_master {
                self.new_master = None;
                let how = match (code, signal) {
                    (Some(c), _) => format!("exited with code {c}"),
                    (None, Some(s)) => format!("was sent {}", s.as_str()),
                    _ => "exited".into(),
                };
                log::info(&format!("New master (pid:{pid}) {how}"));
                continue;
            }
            let Some(w) = self.workers.remove(&pid) else {
                continue;
            };
            if let Some(text) = w.stacks.as_ref().and_then(read_stacks) {
                log::event(
                    LogLevel::Error,
                    &format!("Python stacks of worker (pid:{pid}):\n{}", text.trim_end()),
                    &[("WORKER_PID", pid.to_string())],
                );
            }
            hooks::run_master_hook(
                &self.settings,
                "child_exit",
                Some(hooks::WorkerRef {
                    age: w.age,
                    pid: Some(pid.as_raw()),
                }),
                None,
            );
            // A worker that announced its own exit (max_requests, --reload)
            // and left cleanly is not a crash, even if we had not seen the
            // announcement yet.
            let planned = self.scoreboard.slot(w.slot).state() == STATE_LEAVING && code == Some(0);
            self.scoreboard.release(w.slot);
            crate::balance::reset(w.slot);
            let expected = w.state == WorkerState::Retiring || planned;
            let mut fields = vec![("WORKER_PID", pid.to_string())];
            match (code, signal) {
                (Some(c), _) => {
                    fields.push(("EXIT_STATUS", c.to_string()));
                    let lvl = if c == 0 || expected {
                        LogLevel::Info
                    } else {
                        LogLevel::Error
                    };
                    // Gunicorn's words for any other code; the worker
                    // itself said "Worker exiting (pid: N)" as it left.
                    let msg = format!("Worker (pid:{pid}) exited with code {c}.");
                    log::event(lvl, &msg, &fields);
                }
                (None, Some(s)) => {
                    fields.push(("SIGNAL", s.as_str().to_string()));
                    let msg = if s == Signal::SIGKILL && w.aborted.is_none() && !expected {
                        format!("Worker (pid:{pid}) was sent SIGKILL! Perhaps out of memory?")
                    } else {
                        format!("Worker (pid:{pid}) was sent {}!", s.as_str())
                    };
                    let lvl = if expected {
                        LogLevel::Info
                    } else {
                        LogLevel::Error
                    };
                    log::event(lvl, &msg, &fields);
                }
                _ => {}
            }
            let deaths_before = self.quick_deaths;
            let load_failure = code.filter(|&c| is_app_load_failure(c));
            if let Some(status) = load_failure
                && w.state == WorkerState::Booting
            {
                match self.mode {
                    Mode::Reloading { generation }
                        if w.generation == generation
                            && !self.workers.values().all(|o| o.generation == generation) =>
                    {
                        self.abort_reload(
                            generation,
                            "the application failed to load in a new worker",
                        );
                    }
                    Mode::Stopping { .. } => {}
                    _ if !self.ready_sent => {
                        log::critical(
                            "Worker failed to boot: the application could not be loaded. Shutting down.",
                        );
                        // Gunicorn's HaltServer reason, for those who grep for
                        // it, at its level: ERROR, as the exit status is not 0.
                        log::error(load_failure_reason(status));
                        self.notify(|n| {
                            n.errno_status(libc::ENOEXEC, "application failed to load; see the log")
                        });
                        self.exit_code = status;
                        self.begin_stop(false);
                    }
                    _ => {
                        // A respawn after boot failed to import: code on disk
                        // is broken now. Back off rather than spin.
                        self.quick_deaths += 1;
                    }
                }
            } else if planned {
                // It booted, served its share and left by its own decision
                // (max_requests, --reload): the code works, so a crash loop
                // is over, however short the life (max_requests can come
                // well within QUICK_DEATH, and the reset below, which waits
                // for a worker QUICK_DEATH old, would then never come).
                self.quick_deaths = 0;
            } else if !expected && !matches!(self.mode, Mode::Stopping { .. }) {
                if code == Some(0) && w.state == WorkerState::Serving {
                    // A clean exit after serving (TERM sent to one worker by
                    // hand) is replaced at once: not a crash.
                } else if w.spawned.elapsed() < QUICK_DEATH {
                    self.quick_deaths += 1;
                } else {
                    self.quick_deaths = 0;
                }
            }
            // Only a death that counted (not a planned exit, nor one while
            // stopping) delays the next spawn and says so.
            let counted = self.quick_deaths > deaths_before;
            if let Some(backoff) = self.backoff().filter(|_| counted) {
                self.next_spawn_at = Instant::now() + backoff;
                log::warning(&format!(
                    "Workers keep dying right after start ({} in a row); waiting {} ms before the next one",
                    self.quick_deaths,
                    backoff.as_millis()
                ));
            }
            self.update_status(true);
        }
    }

    /// How long to wait before the next spawn in a crash loop. A single
    /// early death (one worker killed) is replaced at once; from the second
    /// in a row the wait doubles: 200 ms, 400 ms, ... up to 10 s.
    fn backoff(&self) -> Option<Duration> {
        (self.quick_deaths >= 2)
            .then(|| Duration::from_millis((100u64 << (self.quick_deaths - 1).min(7)).min(10_000)))
    }

    /// Kill workers stuck in one request for longer than --timeout.
    ///
    /// Gunicorn's two meanings: a sync worker (`--threads 1`) is silent
    /// while its one request runs, so a request longer than the timeout
    /// gets the worker killed; a threaded (gthread) worker keeps
    /// "communicating" whatever its requests take ("not tied to the length
    /// of time required to handle a single request"), so there only a
    /// worker whose idle loops stop running is killed, and long requests,
    /// with the others in flight beside them, finish.
    fn check_timeouts(&mut self) {
        let now = now_ms();
        let timeout_ms = self.settings.timeout * 1000;
        let per_request = self.settings.threads == 1;
        let graceful = Duration::from_secs(self.settings.graceful_timeout);
        let mut changed = false;
        for (pid, w) in self.workers.iter_mut() {
            let slot = self.scoreboard.slot(w.slot);
            let st = slot.state();
            if w.state == WorkerState::Booting && (st == STATE_READY || st == STATE_LEAVING) {
                w.state = WorkerState::Serving;
                w.spawned = Instant::now();
                changed = true;
            }
            if w.state == WorkerState::Serving && st == STATE_LEAVING {
                // The worker is recycling itself (max_requests, --reload):
                // start its replacement now, and bound its drain.
                w.state = WorkerState::Retiring;
                w.retire_deadline = Some(Instant::now() + graceful);
            }
            if let Some(at) = w.aborted {
                if at.elapsed() > Duration::from_secs(2) {
                    let _ = kill(*pid, Signal::SIGKILL);
                }
                continue;
            }
            if timeout_ms == 0 {
                continue;
            }
            let stuck = match slot.oldest_busy() {
                // Gunicorn's rule: a worker must be up within --timeout
                // too. An import that hangs would otherwise hold a reload
                // (or the start) forever; the SIGABRT makes faulthandler
                // show where it hangs.
                _ if w.state == WorkerState::Booting => {
                    (w.spawned.elapsed() > Duration::from_millis(timeout_ms)).then(|| {
                        self.boot_timed_out = true;
                        format!(
                            "it did not finish booting (importing the app) within {}s",
                            self.settings.timeout
                        )
                    })
                }
                Some((since, desc)) if per_request && now.saturating_sub(since) > timeout_ms => {
                    Some(format!(
                        "request {desc} ran longer than {}s",
                        self.settings.timeout
                    ))
                }
                // Threaded, with every loop in a request: no loop is free
                // to beat, and that is not silence.
                Some(_) if !per_request => None,
                // Silent: its loops beat at least once a second when idle,
                // so past --timeout (2 s at least) it is hung (Gunicorn:
                // "workers silent for more than this many seconds are
                // killed and restarted").
                _ if now.saturating_sub(slot.last_beat_ms()) > timeout_ms.max(2_000) => {
                    Some(format!(
                        "its event loop has not run for {}s",
                        now.saturating_sub(slot.last_beat_ms()) / 1000
                    ))
                }
                _ => None,
            };
            if let Some(why) = stuck {
                log::event(
                    LogLevel::Critical,
                    &format!(
                        "WORKER TIMEOUT (pid:{pid}): {why}; sending SIGABRT (the Python stacks of its threads follow)"
                    ),
                    &[("WORKER_PID", pid.to_string())],
                );
                let _ = kill(*pid, Signal::SIGABRT);
                w.aborted = Some(Instant::now());
            }
        }
        if changed {
            // A worker started serving: STATUS= says so now, not at the
            // next periodic refresh.
            self.update_status(true);
        }
    }

    /// Retiring workers past their graceful deadline are killed.
    fn check_retiring(&mut self) {
        let now = Instant::now();
        for (pid, w) in self.workers.iter_mut() {
            if w.retire_deadline.is_some_and(|d| now >= d) {
                log::warning(&format!(
                    "Worker (pid:{pid}) did not finish within graceful_timeout; sending SIGKILL"
                ));
                let _ = kill(*pid, Signal::SIGKILL);
                w.retire_deadline = Some(now + Duration::from_secs(5));
            }
        }
    }

    /// Spawn missing workers of the current generation; retire extras.
    fn maintain(&mut self) {
        if matches!(self.mode, Mode::Stopping { .. }) {
            return;
        }
        let cur_gen = self.current_generation();
        if self.mode == Mode::Running {
            // Outside a reload only the serving generation belongs: one
            // left from elsewhere (a reload still booting when a --preload
            // re-exec failed to import the app) is retired, not kept.
            let deadline = Instant::now() + Duration::from_secs(self.settings.graceful_timeout);
            for (pid, w) in self.workers.iter_mut() {
                if w.generation != cur_gen && w.state != WorkerState::Retiring {
                    log::info(&format!(
                        "Retiring worker (pid:{pid}) of generation {} (generation {cur_gen} is serving)",
                        w.generation
                    ));
                    let _ = kill(*pid, Signal::SIGTERM);
                    w.state = WorkerState::Retiring;
                    w.retire_deadline = Some(deadline);
                }
            }
        }
        let active: Vec<Pid> = self
            .workers
            .iter()
            .filter(|(_, w)| w.generation == cur_gen && w.state != WorkerState::Retiring)
            .map(|(p, _)| *p)
            .collect();
        if active.len() > self.target {
            // TTOU: retire the oldest first (Gunicorn's order: by age, the
            // spawn order; `spawned` is reset when a worker becomes ready).
            let mut by_age: Vec<(u64, Instant, Pid)> = active
                .iter()
                .map(|p| (self.workers[p].age, self.workers[p].spawned, *p))
                .collect();
            by_age.sort();
            for (_, _, pid) in by_age.into_iter().take(active.len() - self.target) {
                let _ = kill(pid, Signal::SIGTERM);
                if let Some(w) = self.workers.get_mut(&pid) {
                    w.state = WorkerState::Retiring;
                    w.retire_deadline =
                        Some(Instant::now() + Duration::from_secs(self.settings.graceful_timeout));
                }
            }
            return;
        }
        if self.quick_deaths > 0
            && active.iter().any(|p| {
                self.workers[p].state == WorkerState::Serving
                    && self.workers[p].spawned.elapsed() >= QUICK_DEATH
            })
        {
            // A worker has served long enough: the crash loop is over.
            self.quick_deaths = 0;
        }
        let mut missing = self.target - active.len();
        while missing > 0 {
            if Instant::now() < self.next_spawn_at {
                return;
            }
            if let Err(e) = self.spawn(cur_gen) {
                log::error(&format!("cannot spawn worker: {e}"));
                self.next_spawn_at = Instant::now() + Duration::from_secs(1);
                return;
            }
            if let Some(backoff) = self.backoff() {
                // In a crash loop, start one at a time.
                self.next_spawn_at = Instant::now() + backoff;
            }
            missing -= 1;
            self.update_status(true);
        }
    }

    fn spawn(&mut self, generation: u64) -> Result<(), String> {
        let slot = self
            .scoreboard
            .claim(generation)
            .ok_or("heartbeat table is full")?;
        crate::balance::reset(slot);
        let settings = self.settings.clone();
        let master = nix::unistd::getpid();
        self.spawned += 1;
        let age = self.spawned;
        hooks::run_master_hook(
            &self.settings,
            "pre_fork",
            Some(hooks::WorkerRef { age, pid: None }),
            None,
        );
        let stacks = log::journal().and_then(|_| {
            nix::sys::memfd::memfd_create(
                c"ferricorn-stacks",
                nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
            )
            .ok()
        });
        // SAFETY: the master is single-threaded, so the child starts with a
        // consistent copy of everything; it never returns from worker::run.
        // With --preload CPython lives in this process (even when the
        // import failed after a re-exec), so fork by its protocol.
        // SAFETY: Py_IsInitialized only reads a flag.
        let forked = if unsafe { pyo3::ffi::Py_IsInitialized() } != 0 {
            crate::preload::fork()
        } else {
            unsafe { fork() }
        };
        match forked {
            Ok(ForkResult::Child) => {
                // SAFETY: PR_SET_PDEATHSIG so the worker dies with its master
                // even on SIGKILL; then check the master did not die already
                // (the new parent is then init or a subreaper, not 1 always).
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
                // The master's signalfd is of no use here (and the app
                // should not inherit it). SAFETY: closing our own fd; this
                // Master is never dropped in the child, so never again.
                unsafe { libc::close(self.sigfd.as_raw_fd()) };
                // SAFETY: the child never returns from worker::run, so this
                // Master (and its scoreboard mapping) is never dropped here;
                // the slot reference stays valid for the child's lifetime.
                let sb_slot: &'static crate::scoreboard::Slot =
                    unsafe { &*(self.scoreboard.slot(slot) as *const crate::scoreboard::Slot) };
                sb_slot.set_pid(std::process::id() as i32);
                // SAFETY: as for the slot: the scoreboard outlives the child.
                let scoreboard: &'static crate::scoreboard::Scoreboard =
                    unsafe { &*(&self.scoreboard as *const crate::scoreboard::Scoreboard) };
                // Every worker gets its entry, `-w 1` too: TTIN can give
                // it a sibling later (`Standing::Only` while it has none).
                let balance = crate::balance::Mine::new(slot, settings.threads, scoreboard);
                if nix::unistd::getppid() != master {
                    unsafe { libc::_exit(0) };
                }
                crate::proctitle::set(&format!("ferricorn: worker [{}]", settings.proc_name));
                let app = self.preloaded.take();
                let stacks_fd = stacks.as_ref().map(|f| f.as_raw_fd());
                crate::worker::run(
                    settings,
                    &self.listeners,
                    sb_slot,
                    balance,
                    app,
                    age,
                    stacks_fd,
                );
            }
            Ok(ForkResult::Parent { child }) => {
                self.scoreboard.slot(slot).set_pid(child.as_raw());
                self.workers.insert(
                    child,
                    Worker {
                        slot,
                        generation,
                        state: WorkerState::Booting,
                        spawned: Instant::now(),
                        aborted: None,
                        retire_deadline: None,
                        age,
                        stacks,
                    },
                );
                Ok(())
            }
            Err(e) => {
                self.scoreboard.release(slot);
                Err(format!("fork: {e}"))
            }
        }
    }

    /// READY=1 once every initial worker has imported the app and accepts.
    fn check_ready(&mut self) {
        if self.ready_sent || !matches!(self.mode, Mode::Running) {
            return;
        }
        let serving = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Serving)
            .count();
        if serving >= self.target {
            self.ready_sent = true;
            log::info(&format!("All {serving} workers are serving"));
            self.update_status(true);
            self.notify(|n| n.ready());
            if std::mem::take(&mut self.hup_pending) {
                self.begin_reload();
            }
        } else if self.notifier.is_some() {
            // Slow imports: keep systemd's start timeout from firing. Each
            // message grants 15 s from now; one every 5 s while a worker
            // boots. Not while workers crash at start or after an import
            // ran past --timeout: that is no progress, and TimeoutStartSec=
            // is then the operator's limit.
            let progress = self.quick_deaths < 2
                && !self.boot_timed_out
                && self
                    .workers
                    .values()
                    .any(|w| w.state == WorkerState::Booting);
            if progress && self.last_extend_at.elapsed() >= Duration::from_secs(5) {
                self.last_extend_at = Instant::now();
                self.notify(|n| n.extend_timeout(Duration::from_secs(15)));
                self.update_status(true);
            }
        }
    }

    fn status_text(&self) -> String {
        let serving = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Serving)
            .count();
        let booting = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Booting)
            .count();
        let retiring = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Retiring)
            .count();
        let requests: u64 = self
            .workers
            .values()
            .map(|w| self.scoreboard.slot(w.slot).requests())
            .sum();
        let mut s = format!(
            "{serving} workers serving, {booting} booting, {retiring} retiring; {requests} requests by live workers; generation {}",
            self.current_generation()
        );
        if let Some(r) = &self.last_reload {
            s.push_str(&format!("; last reload: {r}"));
        }
        s
    }

    fn update_status(&mut self, force: bool) {
        // After a fatal start failure STATUS= says why (with ERRNO=): the
        // worker count must not replace it in `systemctl status`.
        if self.notifier.is_none() || self.exit_code != 0 {
            return;
        }
        if !force && self.last_status_at.elapsed() < Duration::from_secs(2) {
            return;
        }
        let s = self.status_text();
        if s != self.last_status {
            self.notify(|n| n.status(&s));
            self.last_status = s;
        }
        self.last_status_at = Instant::now();
    }

    /// WATCHDOG=1 from this loop, only while at least one worker beats.
    fn heartbeat_systemd(&mut self) {
        self.update_status(false);
        let Some(wd) = self.watchdog else { return };
        if self.last_watchdog.elapsed() < wd / 2 {
            return;
        }
        let now = now_ms();
        let fresh_ms = (wd.as_millis() as u64).max(2000);
        let timeout_ms = self.settings.timeout * 1000;
        // Alive: a worker whose loop beat lately, or one inside an app call
        // younger than --timeout (its loop runs the app inline and cannot
        // beat meanwhile; past --timeout check_timeouts kills it; with
        // --timeout 0 any length of request is allowed).
        let alive = self.workers.values().any(|w| {
            let s = self.scoreboard.slot(w.slot);
            s.state() == STATE_READY
                && (now.saturating_sub(s.last_beat_ms()) < fresh_ms
                    || s.oldest_busy().is_some_and(|(since, _)| {
                        timeout_ms == 0 || now.saturating_sub(since) <= timeout_ms
                    }))
        });
        if alive {
            self.notify(|n| n.watchdog());
            self.last_watchdog = Instant::now();
        }
    }

    /// USR2: exec the binary at our path in place (same PID), handing over
    /// sockets, the heartbeat table and the running workers.
    fn upgrade(&mut self) {
        if matches!(self.mode, Mode::Stopping { .. }) {
            log::warning("Not upgrading: stopping");
            return;
        }
        self.notify(|n| n.reloading());
        let workers = self
            .workers
            .iter()
            .map(|(p, w)| upgrade::AdoptedWorker {
                pid: p.as_raw(),
                slot: w.slot,
                generation: w.generation,
                state: match w.state {
                    _ if w.aborted.is_some() => upgrade::AdoptedState::Aborted,
                    WorkerState::Booting => upgrade::AdoptedState::Booting,
                    WorkerState::Serving => upgrade::AdoptedState::Serving,
                    WorkerState::Retiring => upgrade::AdoptedState::Retiring,
                },
            })
            .collect();
        let err = upgrade::reexec(
            &self.listeners,
            &self.scoreboard,
            upgrade::Family {
                workers,
                generation: self.generation,
                serving: self.serving,
                new_master: self.new_master.map(Pid::as_raw),
            },
            self.notifier.as_ref(),
            self.watchdog,
        );
        // Only reached when exec failed.
        log::error(&format!(
            "In-place upgrade failed: {err}; carrying on with the running binary"
        ));
        self.notify(|n| n.ready());
    }

    /// USR2 outside systemd, as Gunicorn's: a second master (our child)
    /// starts on the same sockets with its own workers; both serve until
    /// the operator stops one of them.
    fn start_new_master(&mut self) {
        if let Some(pid) = self.new_master {
            log::warning(&format!(
                "USR2 signal ignored. Child exists (new master pid:{pid})."
            ));
            return;
        }
        if self.old_master.is_some() {
            log::warning("USR2 signal ignored. Parent exists.");
            return;
        }
        if matches!(self.mode, Mode::Stopping { .. }) {
            log::warning("USR2 signal ignored: stopping");
            return;
        }
        log::info("Handling signal: usr2; starting a new master");
        hooks::run_master_hook(&self.settings, "pre_exec", None, None);
        match upgrade::spawn_new_master(&self.listeners) {
            Ok(pid) => {
                log::info(&format!(
                    "New master started (pid:{pid}); send TERM to this one (pid:{}) to finish the upgrade",
                    std::process::id()
                ));
                self.new_master = Some(pid);
            }
            Err(e) => log::error(&format!("Upgrade failed: {e}; carrying on")),
        }
    }

    fn cleanup(&mut self) {
        if !self.sockets_shared() {
            for p in self.listeners.iter().filter_map(|l| l.owned_path()) {
                let _ = std::fs::remove_file(p);
            }
        }
        if let Some(p) = self.pidfile_path(&self.settings) {
            crate::pidfile::remove(&p);
        }
    }
}

/// What faulthandler wrote to a worker's stacks file (`Worker::stacks`),
/// if anything.
fn read_stacks(f: &std::os::fd::OwnedFd) -> Option<String> {
    let mut buf = vec![0u8; 256 * 1024];
    let n = nix::sys::uio::pread(f, &mut buf, 0).ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Gunicorn's HaltServer reason for a start whose app did not load (in the
/// master with --preload, or in the workers), by the exit status.
fn load_failure_reason(status: i32) -> &'static str {
    if status == crate::config::EXIT_APP_NOT_FOUND {
        "Reason: App failed to load."
    } else {
        "Reason: Worker failed to boot."
    }
}
