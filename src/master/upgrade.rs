//! USR2: the in-place binary upgrade.
//!
//! Gunicorn forks a new master on USR2, so systemd's MAINPID points at the
//! old one and the unit breaks. We instead `execve` the binary at the path
//! we were started from, *in the same process*: the PID stays, the workers
//! stay our children, and the listening sockets keep their fd numbers
//! (close-on-exec cleared). What the new image must know travels in one
//! environment variable, `FERRICORN_UPGRADE`, read and removed at start.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use crate::scoreboard::Scoreboard;
use crate::sock::{self, Listener};
use crate::systemd::notify::{self, Notifier};

const VAR: &str = "FERRICORN_UPGRADE";

/// The executable path, captured at start before anyone can replace it.
static EXE: OnceLock<PathBuf> = OnceLock::new();
/// argv as we were started (the process title later overwrites argv).
static ARGS: OnceLock<Vec<OsString>> = OnceLock::new();

pub fn remember_exe() {
    let _ = ARGS.set(std::env::args_os().collect());
    if let Ok(p) = std::env::current_exe() {
        // current_exe reads /proc/self/exe; strip a " (deleted)" suffix in
        // case we were ourselves started by an upgrade of a replaced file.
        let s = p.to_string_lossy();
        let clean = s.strip_suffix(" (deleted)").map(PathBuf::from).unwrap_or(p);
        let _ = EXE.set(clean);
    }
}

/// What the previous image handed over.
pub struct Handoff {
    pub scoreboard_fd: RawFd,
    pub capacity: usize,
    pub generation: u64,
    /// (pid, slot, generation)
    pub workers: Vec<(i32, usize, u64)>,
    /// (fd, name)
    pub listeners: Vec<(RawFd, String)>,
}

/// Read (and remove) the hand-off, if we are the new image of an upgrade.
pub fn take_handoff() -> Result<Option<Handoff>, String> {
    let Some(v) = std::env::var_os(VAR) else {
        return Ok(None);
    };
    // SAFETY: called at the top of main, single-threaded.
    unsafe { std::env::remove_var(VAR) };
    let text = v.to_string_lossy().into_owned();
    let mut h = Handoff {
        scoreboard_fd: -1,
        capacity: 0,
        generation: 0,
        workers: vec![],
        listeners: vec![],
    };
    let bad = |l: &str| format!("{VAR}: malformed line {l:?}");
    for line in text.lines() {
        let mut it = line.splitn(4, ' ');
        match it.next() {
            Some("scoreboard") => {
                h.scoreboard_fd = it
                    .next()
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(|| bad(line))?;
                h.capacity = it
                    .next()
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(|| bad(line))?;
            }
            Some("generation") => {
                h.generation = it
                    .next()
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(|| bad(line))?
            }
            Some("worker") => {
                let pid = it
                    .next()
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(|| bad(line))?;
                let slot = it
                    .next()
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(|| bad(line))?;
                let g = it
                    .next()
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(|| bad(line))?;
                h.workers.push((pid, slot, g));
            }
            Some("listener") => {
                let fd = it
                    .next()
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(|| bad(line))?;
                let rest: Vec<&str> = it.collect();
                h.listeners.push((fd, rest.join(" ")));
            }
            _ => return Err(bad(line)),
        }
    }
    if h.scoreboard_fd < 0 {
        return Err(format!("{VAR}: no scoreboard"));
    }
    Ok(Some(h))
}

/// Exec the new binary. Returns only on failure, with the reason.
pub fn reexec(
    listeners: &[Listener],
    scoreboard: &Scoreboard,
    workers: Vec<(i32, usize, u64)>,
    generation: u64,
    notifier: Option<&Notifier>,
    watchdog: Option<Duration>,
) -> String {
    let Some(exe) = EXE.get() else {
        return "executable path unknown".into();
    };
    let mut text = format!(
        "scoreboard {} {}\ngeneration {}\n",
        scoreboard.raw_fd(),
        scoreboard.capacity(),
        generation
    );
    for (pid, slot, g) in &workers {
        text.push_str(&format!("worker {pid} {slot} {g}\n"));
    }
    for l in listeners {
        text.push_str(&format!(
            "listener {} {}\n",
            l.fd.as_raw_fd(),
            l.name.replace('\n', " ")
        ));
    }
    let mut keep: Vec<RawFd> = listeners.iter().map(|l| l.fd.as_raw_fd()).collect();
    keep.push(scoreboard.raw_fd());
    for fd in &keep {
        if let Err(e) = sock::clear_cloexec(*fd) {
            return format!("clearing close-on-exec on fd {fd}: {e}");
        }
    }
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    env.retain(|(k, _)| k != VAR);
    env.push((VAR.into(), text.into()));
    for (k, v) in notify::exec_env(notifier, watchdog, std::process::id()) {
        env.push((k.into(), v));
    }
    let to_c = |s: &[u8]| CString::new(s).unwrap_or_default();
    let path = to_c(exe.as_os_str().as_bytes());
    let args: Vec<CString> = ARGS
        .get()
        .map(|a| a.iter().map(|a| to_c(a.as_bytes())).collect())
        .unwrap_or_default();
    let envs: Vec<CString> = env
        .iter()
        .map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            to_c(&b)
        })
        .collect();
    let err = nix::unistd::execve(&path, &args, &envs).err();
    // Still here: put close-on-exec back.
    for fd in keep {
        // SAFETY: fcntl on our own fds.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    format!(
        "execve {}: {}",
        exe.display(),
        err.map(|e| e.to_string()).unwrap_or_default()
    )
}
