//! sd_notify(3) without libsystemd: telling the service manager how we are.
//!
//! Why it exists: with `Type=notify` (or `notify-reload`) systemd considers
//! the service started only when we say `READY=1`, shows our `STATUS=` in
//! `systemctl status`, kills us when `WATCHDOG=1` pings stop, and knows a
//! reload is in progress from `RELOADING=1`. The protocol is one datagram of
//! newline-separated `KEY=VALUE` lines sent to the `AF_UNIX` socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace), so it is
//! spoken here directly instead of linking libsystemd.
//!
//! With `NotifyAccess=main` only the master may notify; it reads the
//! variables once ([`Notifier::from_env`], [`watchdog_timeout`]) and then
//! calls [`unset_env`] so workers and the application don't inherit them.
//! For an in-place re-exec it puts them back with [`exec_env`].

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

/// The variables of the protocol, cleared by [`unset_env`].
pub const ENV_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyTarget {
    /// A filesystem socket path.
    Path(PathBuf),
    /// An abstract-namespace socket (name without the leading `@`/NUL).
    Abstract(Vec<u8>),
}

/// Parse a `NOTIFY_SOCKET` value.
///
/// `None` for an empty value. An absolute path or `@name` is accepted;
/// anything else (a relative path, or the `vsock:` form systemd uses for VMs)
/// is an `InvalidInput` error.
pub fn parse_notify_socket(value: &OsStr) -> io::Result<Option<NotifyTarget>> {
    let b = value.as_bytes();
    match b.first() {
        None => Ok(None),
        Some(b'@') => Ok(Some(NotifyTarget::Abstract(b[1..].to_vec()))),
        Some(b'/') => Ok(Some(NotifyTarget::Path(PathBuf::from(value)))),
        Some(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "NOTIFY_SOCKET={value:?} is not supported (need an absolute path or @abstract-name)"
            ),
        )),
    }
}

/// A handle for sending notifications to the service manager.
///
/// Each send opens a fresh unbound datagram socket (as sd_notify does), so a
/// `Notifier` holds no fd and survives `fork` and re-exec trivially; the
/// kernel attaches our pid to each datagram, which `NotifyAccess=main` checks.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: NotifyTarget,
    raw: OsString,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; `None` when it is absent or empty (not under
    /// `Type=notify`). An unusable value is reported on stderr and also gives
    /// `None`, since notifications are then impossible anyway; use
    /// [`Notifier::try_from_env`] to handle it yourself.
    pub fn from_env() -> Option<Notifier> {
        Notifier::try_from_env().unwrap_or_else(|e| {
            eprintln!("ferricorn: not notifying systemd: {e}");
            None
        })
    }

    /// From `NOTIFY_SOCKET`: `Ok(None)` when absent or empty, an error when
    /// the value is unusable (see [`parse_notify_socket`]).
    pub fn try_from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(v) => Notifier::new(&v),
            None => Ok(None),
        }
    }

    /// From a `NOTIFY_SOCKET` value; `Ok(None)` when it is empty.
    pub fn new(value: &OsStr) -> io::Result<Option<Notifier>> {
        Ok(parse_notify_socket(value)?.map(|target| Notifier {
            target,
            raw: value.to_owned(),
        }))
    }

    /// Where notifications go.
    pub fn target(&self) -> &NotifyTarget {
        &self.target
    }

    /// The `NOTIFY_SOCKET` value this was made from, to put back in the
    /// environment before an in-place re-exec (see [`exec_env`]).
    pub fn socket_path(&self) -> &OsStr {
        &self.raw
    }

    /// Send `state` (newline-separated `KEY=VALUE` assignments) as one
    /// datagram.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let addr = match &self.target {
            NotifyTarget::Path(p) => SocketAddr::from_pathname(p),
            NotifyTarget::Abstract(n) => SocketAddr::from_abstract_name(n),
        }
        .map_err(|e| with_context(e, &self.raw))?;
        let sock = UnixDatagram::unbound().map_err(|e| with_context(e, &self.raw))?;
        let n = sock
            .send_to_addr(state.as_bytes(), &addr)
            .map_err(|e| with_context(e, &self.raw))?;
        if n != state.len() {
            return Err(with_context(
                io::Error::new(io::ErrorKind::WriteZero, "short datagram write"),
                &self.raw,
            ));
        }
        Ok(())
    }

    /// `READY=1`: startup finished (all initial workers accept), or a
    /// reload finished.
    pub fn ready(&self) -> io::Result<()> {
        self.send("READY=1")
    }

    /// `READY=1` and `STATUS=` in one datagram.
    pub fn ready_with_status(&self, status: &str) -> io::Result<()> {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (the clock reading
    /// `Type=notify-reload` requires); follow with [`Notifier::ready`].
    pub fn reloading(&self) -> io::Result<()> {
        self.send(&reloading_message(monotonic_usec()))
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1")
    }

    /// `STATUS=`: one line for `systemctl status` (newlines become spaces).
    pub fn status(&self, status: &str) -> io::Result<()> {
        self.send(&format!("STATUS={}", one_line(status)))
    }

    /// `WATCHDOG=1`: keep-alive ping.
    pub fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1")
    }

    /// `EXTEND_TIMEOUT_USEC=`: ask for `d` more time (from now) for the
    /// current start, reload or stop phase.
    pub fn extend_timeout(&self, d: Duration) -> io::Result<()> {
        self.send(&format!("EXTEND_TIMEOUT_USEC={}", usec(d)))
    }

    /// `MAINPID=`: the main process is now `pid`.
    pub fn mainpid(&self, pid: u32) -> io::Result<()> {
        self.send(&format!("MAINPID={pid}"))
    }

    /// `STATUS=` plus `ERRNO=`: why we are failing.
    pub fn errno_status(&self, errno: i32, status: &str) -> io::Result<()> {
        self.send(&format!("STATUS={}\nERRNO={errno}", one_line(status)))
    }
}

fn with_context(e: io::Error, raw: &OsStr) -> io::Error {
    io::Error::new(e.kind(), format!("sd_notify to NOTIFY_SOCKET={raw:?}: {e}"))
}

/// A value for a single-line field: newlines would start a new assignment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn usec(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The `RELOADING=1` datagram for a given `CLOCK_MONOTONIC` reading.
pub fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares with.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// Parse `WATCHDOG_USEC` / `WATCHDOG_PID` as `sd_watchdog_enabled(3)` does:
/// the full watchdog timeout, or `None` when no watchdog is asked of us
/// (`WATCHDOG_USEC` absent, or `WATCHDOG_PID` set to another pid). Malformed
/// or zero values are errors.
pub fn parse_watchdog(
    watchdog_usec: Option<&str>,
    watchdog_pid: Option<&str>,
    my_pid: u32,
) -> Result<Option<Duration>, String> {
    let Some(u) = watchdog_usec else {
        return Ok(None);
    };
    let us: u64 = u
        .trim()
        .parse()
        .map_err(|_| format!("WATCHDOG_USEC={u:?} is not a number of microseconds"))?;
    if us == 0 {
        return Err("WATCHDOG_USEC=0 is invalid".into());
    }
    if let Some(p) = watchdog_pid {
        let pid: u32 = p
            .trim()
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("WATCHDOG_PID={p:?} is not a pid"))?;
        if pid != my_pid {
            return Ok(None);
        }
    }
    Ok(Some(Duration::from_micros(us)))
}

/// The full watchdog timeout (`WatchdogSec=`) asked of this process, from
/// `WATCHDOG_USEC` / `WATCHDOG_PID` (see [`parse_watchdog`]).
pub fn try_watchdog_timeout() -> Result<Option<Duration>, String> {
    let var = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
    parse_watchdog(
        var("WATCHDOG_USEC").as_deref(),
        var("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )
}

/// Like [`try_watchdog_timeout`], but a malformed value is reported on
/// stderr and treated as no watchdog.
pub fn watchdog_timeout() -> Option<Duration> {
    try_watchdog_timeout().unwrap_or_else(|e| {
        eprintln!("ferricorn: ignoring watchdog: {e}");
        None
    })
}

/// How often to send `WATCHDOG=1`: half the timeout, as sd_watchdog_enabled(3)
/// recommends.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_timeout().map(|t| t / 2)
}

/// Remove `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from our
/// environment, so that workers and the application don't inherit them.
/// Read them first.
///
/// Must be called while no other thread reads or writes the environment.
pub fn unset_env() {
    for k in ENV_VARS {
        // SAFETY: documented precondition: no other thread touches the
        // environment at this point (the master is single-threaded).
        unsafe { std::env::remove_var(k) };
    }
}

/// The variables to set (on the `Command`, or with `setenv` right before
/// `execve`) so that a process exec'd *as `pid`* gets the same notify socket
/// and watchdog back after [`unset_env`].
pub fn exec_env(
    notifier: Option<&Notifier>,
    watchdog_timeout: Option<Duration>,
    pid: u32,
) -> Vec<(&'static str, OsString)> {
    let mut v = Vec::new();
    if let Some(n) = notifier {
        v.push(("NOTIFY_SOCKET", n.socket_path().to_owned()));
    }
    if let Some(t) = watchdog_timeout {
        v.push(("WATCHDOG_USEC", OsString::from(usec(t).to_string())));
        v.push(("WATCHDOG_PID", OsString::from(pid.to_string())));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// `OsString` from raw bytes, for building `@abstract` values.
    fn abstract_value(name: &[u8]) -> OsString {
        let mut b = Vec::with_capacity(name.len() + 1);
        b.push(b'@');
        b.extend_from_slice(name);
        OsString::from_vec(b)
    }

    fn unique(tag: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "ferricorn-notify-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            tag
        )
    }

    struct Listener {
        sock: UnixDatagram,
        path: Option<PathBuf>,
    }

    impl Listener {
        fn path() -> (Listener, Notifier) {
            let p = std::env::temp_dir().join(unique("notify.sock"));
            let sock = UnixDatagram::bind(&p).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let n = Notifier::new(p.as_os_str()).unwrap().unwrap();
            (
                Listener {
                    sock,
                    path: Some(p),
                },
                n,
            )
        }

        fn recv(&self) -> String {
            let mut buf = vec![0u8; 4096];
            let n = self.sock.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }
    }

    impl Drop for Listener {
        fn drop(&mut self) {
            if let Some(p) = &self.path {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    #[test]
    fn parse_targets() {
        assert_eq!(parse_notify_socket(OsStr::new("")).unwrap(), None);
        assert_eq!(
            parse_notify_socket(OsStr::new("/run/systemd/notify")).unwrap(),
            Some(NotifyTarget::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_notify_socket(OsStr::new("@org/sd/notify/1")).unwrap(),
            Some(NotifyTarget::Abstract(b"org/sd/notify/1".to_vec()))
        );
        let e = parse_notify_socket(OsStr::new("vsock:2:1234")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(parse_notify_socket(OsStr::new("relative.sock")).is_err());
        assert!(Notifier::new(OsStr::new("")).unwrap().is_none());
    }

    #[test]
    fn sends_exact_datagrams_to_path() {
        let (l, n) = Listener::path();
        n.ready().unwrap();
        assert_eq!(l.recv(), "READY=1");
        n.stopping().unwrap();
        assert_eq!(l.recv(), "STOPPING=1");
        n.watchdog().unwrap();
        assert_eq!(l.recv(), "WATCHDOG=1");
        n.status("4 workers\nidle").unwrap();
        assert_eq!(l.recv(), "STATUS=4 workers idle");
        n.ready_with_status("serving").unwrap();
        assert_eq!(l.recv(), "READY=1\nSTATUS=serving");
        n.extend_timeout(Duration::from_millis(1500)).unwrap();
        assert_eq!(l.recv(), "EXTEND_TIMEOUT_USEC=1500000");
        n.mainpid(4321).unwrap();
        assert_eq!(l.recv(), "MAINPID=4321");
        n.errno_status(98, "cannot bind").unwrap();
        assert_eq!(l.recv(), "STATUS=cannot bind\nERRNO=98");
        n.send("CUSTOM=1\nOTHER=2").unwrap();
        assert_eq!(l.recv(), "CUSTOM=1\nOTHER=2");
        assert_eq!(n.socket_path(), l.path.as_ref().unwrap().as_os_str());
    }

    #[test]
    fn reloading_carries_monotonic_clock() {
        let (l, n) = Listener::path();
        let before = monotonic_usec();
        n.reloading().unwrap();
        let after = monotonic_usec();
        let got = l.recv();
        let us: u64 = got
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{got:?}"))
            .parse()
            .unwrap();
        assert!(before <= us && us <= after, "{before} <= {us} <= {after}");
        assert_eq!(reloading_message(12), "RELOADING=1\nMONOTONIC_USEC=12");
    }

    #[test]
    fn sends_to_abstract_socket() {
        let name = unique("abstract");
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let value = abstract_value(name.as_bytes());
        let n = Notifier::new(&value).unwrap().unwrap();
        assert_eq!(n.target(), &NotifyTarget::Abstract(name.into_bytes()));
        n.ready().unwrap();
        let mut buf = [0u8; 64];
        let got = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..got], b"READY=1");
    }

    #[test]
    fn send_error_names_the_socket() {
        let p = std::env::temp_dir().join(unique("absent.sock"));
        let n = Notifier::new(p.as_os_str()).unwrap().unwrap();
        let e = n.send("READY=1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(
            e.to_string().starts_with("sd_notify to NOTIFY_SOCKET="),
            "{e}"
        );
    }

    #[test]
    fn watchdog_parsing() {
        assert_eq!(parse_watchdog(None, None, 7), Ok(None));
        assert_eq!(
            parse_watchdog(Some("30000000"), None, 7),
            Ok(Some(Duration::from_secs(30)))
        );
        assert_eq!(
            parse_watchdog(Some("30000000"), Some("7"), 7),
            Ok(Some(Duration::from_secs(30)))
        );
        assert_eq!(parse_watchdog(Some("30000000"), Some("8"), 7), Ok(None));
        assert!(parse_watchdog(Some("0"), None, 7).is_err());
        assert!(parse_watchdog(Some("soon"), None, 7).is_err());
        assert!(parse_watchdog(Some("10"), Some("x"), 7).is_err());
        assert!(parse_watchdog(Some("10"), Some("0"), 7).is_err());
    }

    #[test]
    fn exec_env_round_trips() {
        let n = Notifier::new(OsStr::new("@sd")).unwrap().unwrap();
        let env = exec_env(Some(&n), Some(Duration::from_secs(20)), 99);
        assert_eq!(
            env,
            vec![
                ("NOTIFY_SOCKET", OsString::from("@sd")),
                ("WATCHDOG_USEC", OsString::from("20000000")),
                ("WATCHDOG_PID", OsString::from("99")),
            ]
        );
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            parse_watchdog(
                get("WATCHDOG_USEC").as_deref(),
                get("WATCHDOG_PID").as_deref(),
                99
            ),
            Ok(Some(Duration::from_secs(20)))
        );
        assert!(exec_env(None, None, 1).is_empty());
    }
}
