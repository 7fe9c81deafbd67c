//! Signals as a worker sees them (Gunicorn's meanings):
//! TERM = finish the requests in hand, then exit; INT/QUIT = exit now;
//! USR1 = reopen log files; ABRT = Python's faulthandler prints every
//! thread's stack (the master sends it to a worker stuck past --timeout),
//! then a `worker_abort` hook runs if the config has one.
//!
//! Handlers only set a flag and poke an eventfd that every I/O loop
//! watches; the loops act on it. The master blocks signals for its
//! signalfd, so a fresh child starts by unblocking them.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static GRACEFUL: AtomicBool = AtomicBool::new(false);
static REOPEN: AtomicBool = AtomicBool::new(false);
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_term(_: libc::c_int) {
    GRACEFUL.store(true, Ordering::SeqCst);
    wake();
}

/// A pipe's write end when SIGINT/SIGQUIT must run Python hooks first
/// (`quit_through`); -1: not.
static QUIT_FD: AtomicI32 = AtomicI32::new(-1);
/// SIGINT/SIGQUIT ask the I/O loop to leave through Python (`quit_on_wake`).
static QUIT_ON_WAKE: AtomicBool = AtomicBool::new(false);
static QUIT: AtomicBool = AtomicBool::new(false);

/// How long the I/O loop has to notice a quit before the process leaves
/// without Python (the app holds the loop's thread).
const QUIT_GRACE_USEC: libc::suseconds_t = 300_000;

extern "C" fn on_quit(_: libc::c_int) {
    let fd = QUIT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the thread of
        // `quit_through` reads it and exits the process.
        unsafe { libc::write(fd, b"q".as_ptr() as *const libc::c_void, 1) };
        return;
    }
    if QUIT_ON_WAKE.load(Ordering::SeqCst) && !QUIT.swap(true, Ordering::SeqCst) {
        set_handler(
            libc::SIGALRM,
            on_quit_timeout as *const () as libc::sighandler_t,
        );
        let t = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
            it_value: libc::timeval {
                tv_sec: 0,
                tv_usec: QUIT_GRACE_USEC,
            },
        };
        // SAFETY: setitimer is a plain system call; the SIGALRM handler
        // set above only calls _exit.
        unsafe { libc::setitimer(libc::ITIMER_REAL, &t, std::ptr::null_mut()) };
        wake();
        return;
    }
    answer_unanswered();
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) };
}

extern "C" fn on_quit_timeout(_: libc::c_int) {
    // The app still holds the loop: its client gets a 500, as from
    // Gunicorn's sync worker (SystemExit in the app), not an empty reply.
    answer_unanswered();
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) };
}

extern "C" fn on_ignored(_: libc::c_int) {}

extern "C" fn on_usr1(_: libc::c_int) {
    REOPEN.store(true, Ordering::SeqCst);
    wake();
}

fn set_handler(sig: libc::c_int, h: libc::sighandler_t) {
    // SAFETY: installing a plain handler with an empty mask; the handlers
    // above only touch atomics and call async-signal-safe functions.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = h;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Reset the master's signal setup and install the worker's handlers.
pub fn install() {
    // SAFETY: eventfd creation and sigprocmask in a single-threaded child.
    unsafe {
        let fd = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
        WAKE_FD.store(fd, Ordering::SeqCst);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    set_handler(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
    set_handler(libc::SIGINT, on_quit as *const () as libc::sighandler_t);
    set_handler(libc::SIGQUIT, on_quit as *const () as libc::sighandler_t);
    set_handler(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t);
    // The master's signals do nothing to a worker; a handler that does
    // nothing, not SIG_IGN, because an ignored signal stays ignored across
    // execve: the app's subprocesses would inherit it (a child that
    // survives HUP, a shell script that cannot trap it).
    for s in [
        libc::SIGHUP,
        libc::SIGUSR2,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGWINCH,
    ] {
        set_handler(s, on_ignored as *const () as libc::sighandler_t);
    }
    // Python ignores SIGPIPE too, and subprocess restores it for children.
    set_handler(libc::SIGPIPE, libc::SIG_IGN);
    set_handler(libc::SIGCHLD, libc::SIG_DFL);
}

/// From now on SIGINT/SIGQUIT run `quit` on a thread of its own (it takes
/// the GIL between the app's bytecodes, so a busy app does not hold it
/// up) instead of ending the process in the handler; `quit` exits.
pub fn quit_through(quit: fn() -> !) {
    run_on_signal(&QUIT_FD, "ferricorn-quit", quit);
}

/// From now on SIGINT/SIGQUIT wake the I/O loop, which leaves through
/// Python (`quit_requested`), so print() buffers are flushed and atexit
/// runs; if the app holds the loop's only thread for longer than
/// QUIT_GRACE_USEC, the process leaves without them. No thread is started
/// for this: a second thread would cost every request (glibc takes its
/// malloc locks once a process has two).
pub fn quit_on_wake() {
    QUIT_ON_WAKE.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGQUIT came and the loop should leave (`quit_on_wake`).
pub fn quit_requested() -> bool {
    QUIT.load(Ordering::Relaxed)
}

/// A pipe's write end once SIGABRT runs the `worker_abort` hook; -1: not.
static ABORT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_abort(_: libc::c_int) {
    answer_unanswered();
    let fd = ABORT_FD.load(Ordering::SeqCst);
    // SAFETY: write(2) is async-signal-safe; `abort_through`'s thread reads it.
    unsafe { libc::write(fd, b"a".as_ptr() as *const libc::c_void, 1) };
}

/// A 500 to the client of the app call a timeout or a fast stop
/// interrupts, if nothing of its response went out yet
/// (`response::take_unanswered`).
fn answer_unanswered() {
    let fd = crate::wsgi::response::take_unanswered();
    if fd >= 0 {
        // One send(2) (async-signal-safe) from a static buffer, which never
        // blocks and never raises SIGPIPE.
        crate::wsgi::response::send_nowait(fd, crate::wsgi::response::TIMEOUT_ANSWER);
    }
}

extern "C" fn on_abort_answer(_: libc::c_int) {
    answer_unanswered();
    // Then die of the signal, as before: it is blocked while this handler
    // runs, so the raise lands, with the default action, once it returns.
    set_handler(libc::SIGABRT, libc::SIG_DFL);
    // SAFETY: raise(3) is async-signal-safe.
    unsafe { libc::raise(libc::SIGABRT) };
}

/// From now on SIGABRT (the master's timeout kill, `--threads 1`) first
/// answers the interrupted request a 500; installed, as `abort_through`,
/// before faulthandler, whose stack dump then comes first.
pub fn answer_on_abort() {
    set_handler(
        libc::SIGABRT,
        on_abort_answer as *const () as libc::sighandler_t,
    );
}

/// From now on SIGABRT (the master's timeout kill) runs `abort` on a thread
/// of its own, as SIGINT does `quit`; `abort` exits. The caller installs
/// Python's faulthandler after this, so its stack dump comes first and it
/// then hands the signal on to this handler.
pub fn abort_through(abort: fn() -> !) {
    if run_on_signal(&ABORT_FD, "ferricorn-abort", abort) {
        set_handler(libc::SIGABRT, on_abort as *const () as libc::sighandler_t);
    }
}

/// A thread that waits on a pipe and runs `f` once a byte arrives; `slot`
/// gets the write end for a signal handler. False if it could not start.
fn run_on_signal(slot: &'static AtomicI32, name: &str, f: fn() -> !) -> bool {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return false; // the signal keeps its present handling
    }
    let rd = fds[0];
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut b = [0u8; 1];
            // SAFETY: read(2) into our one-byte buffer, from our own pipe.
            while unsafe { libc::read(rd, b.as_mut_ptr() as *mut libc::c_void, 1) } != 1 {}
            f()
        });
    if spawned.is_ok() {
        slot.store(fds[1], Ordering::SeqCst);
    }
    spawned.is_ok()
}

pub fn wake_fd() -> i32 {
    WAKE_FD.load(Ordering::Relaxed)
}

pub fn wake() {
    let one: u64 = 1;
    // SAFETY: write(2) of 8 bytes to our eventfd (async-signal-safe).
    unsafe {
        libc::write(
            WAKE_FD.load(Ordering::Relaxed),
            &one as *const u64 as *const libc::c_void,
            8,
        )
    };
}

pub fn clear_wake() {
    let mut v: u64 = 0;
    // SAFETY: read(2) of 8 bytes from our non-blocking eventfd.
    unsafe {
        libc::read(
            WAKE_FD.load(Ordering::Relaxed),
            &mut v as *mut u64 as *mut libc::c_void,
            8,
        )
    };
}

pub fn graceful() -> bool {
    GRACEFUL.load(Ordering::Relaxed)
}

/// The flag TERM sets, for code below the worker that frames responses
/// while the app runs (a response started after TERM says
/// `Connection: close`).
pub fn graceful_flag() -> &'static AtomicBool {
    &GRACEFUL
}

pub fn take_reopen() -> bool {
    REOPEN.swap(false, Ordering::SeqCst)
}
