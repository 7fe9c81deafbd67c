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
/// The directory we were started in (--preload may chdir the master); the
/// re-exec runs from there, so relative paths in argv mean the same again.
static START_DIR: OnceLock<PathBuf> = OnceLock::new();

pub fn remember_exe() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cwd = std::env::current_dir().ok();
    let invoked = args
        .first()
        .and_then(|a0| resolve_invoked(a0, cwd.as_deref(), std::env::var_os("PATH").as_deref()));
    if let Some(d) = cwd {
        let _ = START_DIR.set(d);
    }
    let _ = ARGS.set(args);
    // The path we were invoked by, symlinks kept: an upgrade that switches
    // a symlink (or replaces the file) is then followed. Failing that, the
    // file we run from (/proc/self/exe, minus a " (deleted)" suffix in case
    // we were ourselves started by an upgrade of a replaced file).
    let exe = invoked.or_else(|| {
        std::env::current_exe().ok().map(|p| {
            let s = p.to_string_lossy();
            s.strip_suffix(" (deleted)").map(PathBuf::from).unwrap_or(p)
        })
    });
    if let Some(p) = exe {
        let _ = EXE.set(p);
    }
}

/// argv[0] as an absolute path, the way the shell found it: relative to the
/// directory we started in (the master may chdir later, with --preload) if
/// it holds a slash, else the first executable of that name on PATH.
fn resolve_invoked(
    argv0: &std::ffi::OsStr,
    cwd: Option<&std::path::Path>,
    path_var: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exe = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if argv0.is_empty() {
        return None;
    }
    let p = std::path::Path::new(argv0);
    if argv0.as_bytes().contains(&b'/') {
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            cwd?.join(p)
        };
        return is_exe(&abs).then_some(abs);
    }
    std::env::split_paths(path_var?)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(p))
        .find(|c| is_exe(c))
}

/// Where an adopted worker stood in the previous image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdoptedState {
    Booting,
    Serving,
    /// Sent TERM (reload, TTOU, recycling): it must not be counted as a
    /// serving worker by the new image.
    Retiring,
    /// Sent SIGABRT for a timeout: SIGKILL follows if it lingers.
    Aborted,
}

impl AdoptedState {
    fn as_str(self) -> &'static str {
        match self {
            AdoptedState::Booting => "booting",
            AdoptedState::Serving => "serving",
            AdoptedState::Retiring => "retiring",
            AdoptedState::Aborted => "aborted",
        }
    }
    fn parse(s: &str) -> Option<AdoptedState> {
        Some(match s {
            "booting" => AdoptedState::Booting,
            "serving" => AdoptedState::Serving,
            "retiring" => AdoptedState::Retiring,
            "aborted" => AdoptedState::Aborted,
            _ => return None,
        })
    }
}

/// One worker carried across the exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdoptedWorker {
    pub pid: i32,
    pub slot: usize,
    pub generation: u64,
    pub state: AdoptedState,
}

/// What the previous image handed over.
pub struct Handoff {
    pub scoreboard_fd: RawFd,
    pub capacity: usize,
    /// The highest generation number handed out.
    pub generation: u64,
    /// The generation that was serving (absent from older images).
    pub serving: Option<u64>,
    pub workers: Vec<AdoptedWorker>,
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
    parse(&v.to_string_lossy())
}

fn parse(text: &str) -> Result<Option<Handoff>, String> {
    let mut h = Handoff {
        scoreboard_fd: -1,
        capacity: 0,
        generation: 0,
        serving: None,
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
            Some("serving") => {
                h.serving = Some(
                    it.next()
                        .and_then(|x| x.parse().ok())
                        .ok_or_else(|| bad(line))?,
                )
            }
            Some("worker") => {
                // worker PID SLOT GENERATION [STATE]
                let f: Vec<&str> = line.split(' ').skip(1).collect();
                // Fields after the state are for later versions.
                if f.len() < 3 {
                    return Err(bad(line));
                }
                let pid = f[0].parse().map_err(|_| bad(line))?;
                let slot = f[1].parse().map_err(|_| bad(line))?;
                let generation = f[2].parse().map_err(|_| bad(line))?;
                // A state this version does not know counts as serving: it
                // is retired with the rest once the new generation serves.
                let state = f
                    .get(3)
                    .and_then(|s| AdoptedState::parse(s))
                    .unwrap_or(AdoptedState::Serving);
                h.workers.push(AdoptedWorker {
                    pid,
                    slot,
                    generation,
                    state,
                });
            }
            Some("listener") => {
                let fd = it
                    .next()
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(|| bad(line))?;
                let rest: Vec<&str> = it.collect();
                h.listeners.push((fd, rest.join(" ")));
            }
            // Lines a later version adds (a downgrade by USR2) are skipped.
            Some(_) => {}
            None => return Err(bad(line)),
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
    workers: Vec<AdoptedWorker>,
    generation: u64,
    serving: u64,
    notifier: Option<&Notifier>,
    watchdog: Option<Duration>,
) -> String {
    let Some(exe) = EXE.get() else {
        return "executable path unknown".into();
    };
    let mut text = format!(
        "scoreboard {} {}\ngeneration {}\nserving {}\n",
        scoreboard.raw_fd(),
        scoreboard.capacity(),
        generation,
        serving
    );
    for w in &workers {
        text.push_str(&format!(
            "worker {} {} {} {}\n",
            w.pid,
            w.slot,
            w.generation,
            w.state.as_str()
        ));
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
    let here = std::env::current_dir().ok();
    if let Some(d) = START_DIR.get() {
        let _ = std::env::set_current_dir(d);
    }
    let err = nix::unistd::execve(&path, &args, &envs).err();
    // Still here: back to where we were, and put close-on-exec back.
    if let Some(d) = here {
        let _ = std::env::set_current_dir(d);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoked_path_keeps_symlinks() {
        use std::ffi::OsStr;
        let dir = std::env::temp_dir().join(format!("ferricorn-exe-test-{}", std::process::id()));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let real = dir.join("real-ferricorn");
        std::fs::write(&real, b"x").unwrap();
        std::fs::set_permissions(&real, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let link = bin.join("ferricorn");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        // Found on PATH: the symlink, not its target.
        let path = std::env::join_paths([dir.join("nowhere"), bin.clone()]).unwrap();
        assert_eq!(
            resolve_invoked(OsStr::new("ferricorn"), None, Some(&path)),
            Some(link.clone())
        );
        // Relative to the start directory.
        assert_eq!(
            resolve_invoked(OsStr::new("bin/ferricorn"), Some(&dir), None),
            Some(link.clone())
        );
        assert_eq!(
            resolve_invoked(link.as_os_str(), None, None),
            Some(link.clone())
        );
        assert_eq!(resolve_invoked(OsStr::new("nope"), None, Some(&path)), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn handoff_round_trip_text() {
        let h = parse(
            "scoreboard 7 2112\ngeneration 3\nserving 2\n\
             worker 100 0 2 serving\nworker 101 1 3 booting\nworker 99 4 1\n\
             listener 5 127.0.0.1:0\nlistener 6 unix:/run/a b\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.scoreboard_fd, h.capacity, h.generation), (7, 2112, 3));
        assert_eq!(h.serving, Some(2));
        assert_eq!(h.workers.len(), 3);
        assert_eq!(h.workers[1].state, AdoptedState::Booting);
        // A line from an older image without the state: serving.
        assert_eq!(h.workers[2].state, AdoptedState::Serving);
        assert_eq!(h.listeners[1], (6, "unix:/run/a b".to_string()));
        assert!(parse("scoreboard 7 1\nworker 1 2\n").is_err());
        assert!(parse("scoreboard 7 1\nworker x 2 3\n").is_err());
        assert!(parse("generation 1\n").is_err());
        // What a later version may add is skipped, not fatal (a downgrade).
        let h = parse("scoreboard 7 1\nworker 1 2 3 dancing extra\nfuture thing\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.workers[0].state, AdoptedState::Serving);
    }
}
