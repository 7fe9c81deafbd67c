//! USR2: the binary upgrade, in one of two ways.
//!
//! Under systemd, a second master would be a new main PID that systemd does
//! not follow, and the unit would break. There we `execve` the binary at
//! the path we were started from, *in the same process*: the PID stays, the
//! workers stay our children, and the listening sockets keep their fd
//! numbers (close-on-exec cleared).
//!
//! Everywhere else we do what Gunicorn documents: fork a child that execs
//! the binary as a second master on the same sockets, with its own workers;
//! the operator then stops the old master (`TERM`), and the new one, seeing
//! its parent gone, takes over the pid file.
//!
//! Either way, what the new image must know travels in one environment
//! variable, `FERRICORN_UPGRADE`, read and removed at start.

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
    /// Set when we are the second master of a Gunicorn-style upgrade: the
    /// old master's pid (our parent until it exits). Nothing but the
    /// listeners is handed over then; the scoreboard fd is -1.
    pub parent: Option<i32>,
    /// A second master we had started (Gunicorn-style USR2) before this
    /// in-place re-exec: still our child, still sharing our sockets.
    pub new_master: Option<i32>,
    /// The old master still running beside us, when we are the second
    /// master of a Gunicorn-style USR2: set once at start by
    /// [`Handoff::resolve_old_master`], then read by all.
    pub old_master: Option<i32>,
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
        parent: None,
        new_master: None,
        old_master: None,
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
        // The next word of the line as a number.
        fn num<T: std::str::FromStr>(
            it: &mut std::str::SplitN<'_, char>,
            line: &str,
        ) -> Result<T, String> {
            it.next()
                .and_then(|x| x.parse().ok())
                .ok_or_else(|| format!("{VAR}: malformed line {line:?}"))
        }
        match it.next() {
            Some("parent") => h.parent = Some(num(&mut it, line)?),
            Some("new_master") => h.new_master = Some(num(&mut it, line)?),
            Some("scoreboard") => {
                h.scoreboard_fd = num(&mut it, line)?;
                h.capacity = num(&mut it, line)?;
            }
            Some("generation") => h.generation = num(&mut it, line)?,
            Some("serving") => h.serving = Some(num(&mut it, line)?),
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
    if h.scoreboard_fd < 0 && h.parent.is_none() {
        return Err(format!("{VAR}: no scoreboard"));
    }
    Ok(Some(h))
}

/// The hand-off lines naming each listening socket by fd.
fn listener_lines(listeners: &[Listener]) -> String {
    listeners
        .iter()
        .map(|l| {
            format!(
                "listener {} {}\n",
                l.fd.as_raw_fd(),
                l.name.replace('\n', " ")
            )
        })
        .collect()
}

/// What execve needs to run our binary again: its path, our arguments,
/// and our environment with `handoff` in `FERRICORN_UPGRADE` plus `extra`.
fn exec_image(
    exe: &std::path::Path,
    handoff: String,
    extra: Vec<(OsString, OsString)>,
) -> (CString, Vec<CString>, Vec<CString>) {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    env.retain(|(k, _)| k != VAR);
    env.push((VAR.into(), handoff.into()));
    env.extend(extra);
    let to_c = |s: &[u8]| CString::new(s).unwrap_or_default();
    let args = ARGS
        .get()
        .map(|a| a.iter().map(|a| to_c(a.as_bytes())).collect())
        .unwrap_or_default();
    let envs = env
        .iter()
        .map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            to_c(&b)
        })
        .collect();
    (to_c(exe.as_os_str().as_bytes()), args, envs)
}

/// The master's children and counters, as an in-place re-exec hands them
/// to the new image.
pub struct Family {
    pub workers: Vec<AdoptedWorker>,
    /// The highest generation number handed out.
    pub generation: u64,
    /// The generation serving.
    pub serving: u64,
    /// The second master of a Gunicorn-style USR2, if one runs.
    pub new_master: Option<i32>,
}

/// Exec the new binary. Returns only on failure, with the reason.
pub fn reexec(
    listeners: &[Listener],
    scoreboard: &Scoreboard,
    family: Family,
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
        family.generation,
        family.serving
    );
    if let Some(pid) = family.new_master {
        text.push_str(&format!("new_master {pid}\n"));
    }
    for w in &family.workers {
        text.push_str(&format!(
            "worker {} {} {} {}\n",
            w.pid,
            w.slot,
            w.generation,
            w.state.as_str()
        ));
    }
    text.push_str(&listener_lines(listeners));
    let mut keep: Vec<RawFd> = listeners.iter().map(|l| l.fd.as_raw_fd()).collect();
    keep.push(scoreboard.raw_fd());
    for fd in &keep {
        if let Err(e) = sock::clear_cloexec(*fd) {
            return format!("clearing close-on-exec on fd {fd}: {e}");
        }
    }
    let extra = notify::exec_env(notifier, watchdog, std::process::id())
        .into_iter()
        .map(|(k, v)| (k.into(), v))
        .collect();
    let (path, args, envs) = exec_image(exe, text, extra);
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

/// The pid file of a second master while its old master runs is
/// `PIDFILE.2`, as Gunicorn's.
pub fn pidfile_path(configured: &std::path::Path, second: bool) -> PathBuf {
    if second {
        let mut s = configured.as_os_str().to_owned();
        s.push(".2");
        PathBuf::from(s)
    } else {
        configured.to_path_buf()
    }
}

impl Handoff {
    /// Find the old master still running beside us, when we are the second
    /// master of a Gunicorn-style USR2: our parent as the hand-off names it,
    /// or, after an in-place re-exec of that second master (HUP with
    /// --preload), our parent when the pid file names it and `PIDFILE.2`
    /// names us. Done once, so the pid file written and the master's idea
    /// of it cannot disagree should the old master exit meanwhile.
    pub fn resolve_old_master(&mut self, pidfile: Option<&std::path::Path>) {
        let parent = nix::unistd::getppid().as_raw();
        self.old_master = if self.parent.is_some() {
            self.parent.filter(|p| *p == parent)
        } else {
            pidfile.and_then(|pidfile| {
                let read = |p: &std::path::Path| crate::pidfile::read(p).map(|pid| pid as i32);
                let me = std::process::id() as i32;
                (read(&pidfile_path(pidfile, true)) == Some(me) && read(pidfile) == Some(parent))
                    .then_some(parent)
            })
        };
    }
}

/// Gunicorn's USR2: fork a child that execs our binary (same path, same
/// arguments, from the start directory) as a second master on our
/// listening sockets. Returns the child's pid once its exec succeeded, or
/// why it failed (then no child is left behind).
pub fn spawn_new_master(listeners: &[Listener]) -> Result<nix::unistd::Pid, String> {
    use nix::unistd::{ForkResult, fork};
    let Some(exe) = EXE.get() else {
        return Err("executable path unknown".into());
    };
    let text = format!(
        "parent {}\n{}",
        std::process::id(),
        listener_lines(listeners)
    );
    // Everything the child needs is built here: between fork and exec it
    // may only make async-signal-safe calls (no allocation).
    let (path, args, envs) = exec_image(exe, text, vec![]);
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = envs.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let dir = START_DIR
        .get()
        .and_then(|d| CString::new(d.as_os_str().as_bytes()).ok());
    let fds: Vec<RawFd> = listeners.iter().map(|l| l.fd.as_raw_fd()).collect();
    // A close-on-exec pipe: a successful exec closes it, a failed one
    // writes errno into it, so the parent knows which before returning.
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the child only calls fcntl, chdir, execve, write and _exit
    // (async-signal-safe) on data prepared above, then never returns.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => unsafe {
            for fd in &fds {
                libc::fcntl(*fd, libc::F_SETFD, 0);
            }
            if let Some(d) = &dir {
                libc::chdir(d.as_ptr());
            }
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(
                w.as_raw_fd(),
                (&errno as *const i32).cast::<libc::c_void>(),
                4,
            );
            libc::_exit(127);
        },
        Ok(ForkResult::Parent { child }) => {
            drop(w);
            let mut buf = [0u8; 4];
            let mut got = 0;
            while got < 4 {
                match nix::unistd::read(&r, &mut buf[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => break,
                }
            }
            if got == 4 {
                let _ = nix::sys::wait::waitpid(child, None);
                let errno = nix::errno::Errno::from_raw(i32::from_ne_bytes(buf));
                return Err(format!("execve {}: {errno}", exe.display()));
            }
            Ok(child)
        }
        Err(e) => Err(format!("fork: {e}")),
    }
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
        // A second master's hand-off: its parent and the sockets only.
        let h = parse("parent 42\nlistener 3 127.0.0.1:8000\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.parent, h.new_master), (Some(42), None));
        assert!(h.workers.is_empty());
        assert_eq!(h.listeners, vec![(3, "127.0.0.1:8000".to_string())]);
        // An in-place re-exec of a master that had started one.
        let h = parse("scoreboard 7 1\nnew_master 43\n").unwrap().unwrap();
        assert_eq!((h.parent, h.new_master), (None, Some(43)));
    }
}
