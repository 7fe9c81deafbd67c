//! Logging for the master and the workers: the error log (lifecycle events,
//! tracebacks) and the access log (one line per request, Gunicorn's atoms).
//!
//! Targets: text on stderr / files by default, exactly as Gunicorn prints
//! it; native journald entries with filterable fields when stderr is
//! connected to the journal (`JOURNAL_STREAM`) or `--log-target journald`.
//!
//! The error log file (`--error-logfile`) is installed *as fd 2*, so Python
//! tracebacks, `print(file=sys.stderr)` and faulthandler dumps land in the
//! same file without any Python-side plumbing; USR1 reopens it in place.

pub mod access;

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::config::{LogLevel, LogTarget, Settings};
use crate::systemd::journal::{Entry, Journal, Priority};

static LEVEL: AtomicU8 = AtomicU8::new(1);
static JOURNAL: OnceLock<Option<Journal>> = OnceLock::new();
static USE_JOURNAL: AtomicBool = AtomicBool::new(false);
/// fd of the access log (-1: off).
static ACCESS_FD: AtomicI32 = AtomicI32::new(-1);
static PATHS: Mutex<(String, Option<String>)> = Mutex::new((String::new(), None));
/// `capture_output`: fd 1 follows the error log file as fd 2 does.
static CAPTURE_STDOUT: AtomicBool = AtomicBool::new(false);
static IDENT: OnceLock<String> = OnceLock::new();

fn level_num(l: LogLevel) -> u8 {
    l as u8
}

fn priority(l: LogLevel) -> Priority {
    match l {
        LogLevel::Debug => Priority::Debug,
        LogLevel::Info => Priority::Info,
        LogLevel::Warning => Priority::Warning,
        LogLevel::Error => Priority::Err,
        LogLevel::Critical => Priority::Crit,
    }
}

/// Set up the targets from the settings (master, at start and on HUP).
pub fn init(s: &Settings) -> Result<(), String> {
    LEVEL.store(level_num(s.loglevel), Ordering::Relaxed);
    let _ = IDENT.set("ferricorn".to_string());
    let journal_wanted = match s.log_target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => s.errorlog == "-" && crate::systemd::journal::stderr_is_journal(),
    };
    if journal_wanted {
        // FERRICORN_JOURNAL_SOCKET points at another socket (tests, or a
        // journald namespace); the default is journald's own.
        let j = JOURNAL.get_or_init(|| {
            let path = std::env::var_os("FERRICORN_JOURNAL_SOCKET").map(std::path::PathBuf::from);
            Journal::connect(path.as_deref()).ok()
        });
        if j.is_none() && s.log_target == LogTarget::Journald {
            return Err("log_target = journald, but the journal socket cannot be reached".into());
        }
        USE_JOURNAL.store(j.is_some(), Ordering::Relaxed);
    } else {
        USE_JOURNAL.store(false, Ordering::Relaxed);
    }
    {
        let mut p = PATHS.lock().unwrap();
        *p = (s.errorlog.clone(), s.accesslog.clone());
    }
    CAPTURE_STDOUT.store(s.capture_output, Ordering::Relaxed);
    reopen().map_err(|e| format!("cannot open log file: {e}"))
}

/// (Re)open the log files: the error log onto fd 2, the access log on its
/// own fd. Called at start and on USR1 (after logrotate moved the files).
pub fn reopen() -> std::io::Result<()> {
    let (errorlog, accesslog) = PATHS.lock().unwrap().clone();
    if errorlog != "-" && !errorlog.is_empty() {
        let f = open_append("errorlog", &errorlog)?;
        // SAFETY: dup2 onto stderr atomically replaces fd 2.
        unsafe { libc::dup2(f.as_raw_fd(), 2) };
        if CAPTURE_STDOUT.load(Ordering::Relaxed) {
            // Gunicorn's capture_output: print() in the app lands in the
            // error log too. SAFETY: as above, for fd 1.
            unsafe { libc::dup2(f.as_raw_fd(), 1) };
        }
    }
    let new_fd = match accesslog.as_deref() {
        None => -1,
        Some("-") => 1,
        Some(path) => {
            let f = open_append("accesslog", path)?;
            std::os::fd::IntoRawFd::into_raw_fd(f)
        }
    };
    let old = ACCESS_FD.swap(new_fd, Ordering::AcqRel);
    if old > 2 {
        // SAFETY: we opened `old` ourselves and no one else holds it.
        unsafe { libc::close(old) };
    }
    Ok(())
}

/// Open the file of setting `key` for appending; an error names both.
/// A new file gets 0666 less the umask, as Python's logging (Gunicorn's)
/// creates it: 0644 under the usual 022, 0640 under the units' 0027.
fn open_append(key: &str, path: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o666)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{key} {path:?}: {e}")))
}

pub fn enabled(l: LogLevel) -> bool {
    level_num(l) >= LEVEL.load(Ordering::Relaxed)
}

pub fn journal() -> Option<&'static Journal> {
    if USE_JOURNAL.load(Ordering::Relaxed) {
        JOURNAL.get().and_then(|j| j.as_ref())
    } else {
        None
    }
}

pub fn access_fd() -> RawFd {
    ACCESS_FD.load(Ordering::Relaxed)
}

/// Log a message with extra journald fields (ignored in text form).
#[track_caller]
pub fn event(l: LogLevel, msg: &str, fields: &[(&str, String)]) {
    if !enabled(l) {
        return;
    }
    let loc = std::panic::Location::caller();
    if let Some(j) = journal() {
        let mut e = Entry::new(priority(l), msg)
            .identifier("ferricorn")
            .code(loc.file(), loc.line());
        for (k, v) in fields {
            e.push(*k, v.as_bytes());
        }
        if j.send_entry(&e).is_ok() {
            return;
        }
    }
    let line = format!(
        "[{}] [{}] [{}] {}\n",
        timestamp_error(),
        std::process::id(),
        l.name(),
        msg
    );
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Text to stderr even under journald (see the worker's boot failure).
pub fn critical_to_stderr(msg: &str) {
    let line = format!(
        "[{}] [{}] [CRITICAL] {}\n",
        timestamp_error(),
        std::process::id(),
        msg
    );
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[track_caller]
pub fn debug(msg: &str) {
    event(LogLevel::Debug, msg, &[]);
}
#[track_caller]
pub fn info(msg: &str) {
    event(LogLevel::Info, msg, &[]);
}
#[track_caller]
pub fn warning(msg: &str) {
    event(LogLevel::Warning, msg, &[]);
}
#[track_caller]
pub fn error(msg: &str) {
    event(LogLevel::Error, msg, &[]);
}
#[track_caller]
pub fn critical(msg: &str) {
    event(LogLevel::Critical, msg, &[]);
}

/// Local time formatted with strftime (Gunicorn uses local time too).
pub fn strftime(fmt: &std::ffi::CStr, t: libc::time_t) -> String {
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let mut buf = [0u8; 64];
    // SAFETY: localtime_r/strftime write into our stack buffers only.
    let n = unsafe {
        libc::localtime_r(&t, &mut tm);
        libc::strftime(
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
            fmt.as_ptr(),
            &tm,
        )
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn timestamp_error() -> String {
    strftime(c"%Y-%m-%d %H:%M:%S %z", unix_now())
}

pub fn unix_now() -> libc::time_t {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0)
}
