//! Socket activation: adopting listening sockets that systemd (or anything
//! speaking the same protocol, see sd_listen_fds(3)) opened for us.
//!
//! Why it exists: under a `.socket` unit the listening sockets outlive the
//! service, so restarts and upgrades drop no connection, the port can be
//! privileged without ferricorn ever running as root, and the operator wires
//! sockets by *name* (`FileDescriptorName=`) instead of repeating addresses.
//!
//! The protocol: when `LISTEN_PID` equals our pid, `LISTEN_FDS` fds starting
//! at fd 3 (`SD_LISTEN_FDS_START`) are ours, and `LISTEN_FDNAMES` holds their
//! names, colon-separated. Like `sd_listen_fds(unset_environment=1)` we clear
//! the three variables once read, so workers and apps don't adopt them again.
//!
//! Only listening (`Accept=no`) stream sockets of family `AF_INET`,
//! `AF_INET6` or `AF_UNIX` are accepted; anything else is refused with an
//! error naming the fd and what it actually is, since serving HTTP on a UDP
//! socket or on one accepted connection is always a unit-file mistake.
//!
//! The `listenfd` crate is deliberately not used here: it accepts a missing
//! `LISTEN_PID` (a systemfd convention that is not the systemd protocol),
//! knows nothing of `LISTEN_FDNAMES`, and does not check `SO_ACCEPTCONN`.

use std::fmt;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{SockaddrLike, SockaddrStorage, getsockname};

/// The first passed fd (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// The name systemd gives a socket when `LISTEN_FDNAMES` is absent.
pub const UNKNOWN_NAME: &str = "unknown";

/// The variables of the protocol, cleared once read.
pub const ENV_VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// One adopted listening socket.
#[derive(Debug)]
pub struct ActivatedSocket {
    /// The listening socket; `FD_CLOEXEC` is set on it.
    pub fd: OwnedFd,
    /// Its `FileDescriptorName=` (systemd defaults it to the `.socket` unit
    /// name), or `"unknown"` when `LISTEN_FDNAMES` was not set.
    pub name: String,
    /// What it listens on.
    pub kind: SocketKind,
}

/// What an activated socket listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketKind {
    /// `AF_INET` or `AF_INET6` stream socket.
    Tcp(SocketAddr),
    /// `AF_UNIX` stream socket.
    Unix(UnixName),
}

/// The address of an `AF_UNIX` socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixName {
    /// A filesystem path.
    Path(PathBuf),
    /// An abstract-namespace name (without the leading NUL byte).
    Abstract(Vec<u8>),
    /// Never bound to a name.
    Unnamed,
}

impl fmt::Display for SocketKind {
    /// `127.0.0.1:8000`, `[::]:80`, `unix:/run/app.sock`, `unix:@name`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketKind::Tcp(addr) => write!(f, "{addr}"),
            SocketKind::Unix(UnixName::Path(p)) => write!(f, "unix:{}", p.display()),
            SocketKind::Unix(UnixName::Abstract(n)) => {
                write!(f, "unix:@{}", String::from_utf8_lossy(n))
            }
            SocketKind::Unix(UnixName::Unnamed) => write!(f, "unix:(unnamed)"),
        }
    }
}

impl fmt::Display for ActivatedSocket {
    /// `fd 3 "web" (0.0.0.0:80)`, as used in logs and errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fd {} {:?} ({})",
            self.fd.as_raw_fd(),
            self.name,
            self.kind
        )
    }
}

/// Why the passed sockets could not be taken.
#[derive(Debug)]
pub enum ActivationError {
    /// A variable is set but malformed.
    BadVar {
        var: &'static str,
        value: String,
        reason: &'static str,
    },
    /// `LISTEN_FDNAMES` does not name exactly `LISTEN_FDS` sockets.
    NameCount { fds: usize, names: usize },
    /// The fd is not open.
    NotOpen { fd: RawFd, name: String },
    /// The fd is open but is not something we can serve HTTP on.
    Unsupported {
        fd: RawFd,
        name: String,
        what: String,
    },
    /// A system call on the fd failed.
    Io {
        fd: RawFd,
        name: String,
        op: &'static str,
        source: io::Error,
    },
}

impl fmt::Display for ActivationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActivationError::BadVar { var, value, reason } => {
                write!(f, "socket activation: {var}={value:?} is invalid: {reason}")
            }
            ActivationError::NameCount { fds, names } => write!(
                f,
                "socket activation: LISTEN_FDS={fds} but LISTEN_FDNAMES has {names} names"
            ),
            ActivationError::NotOpen { fd, name } => write!(
                f,
                "socket activation: fd {fd} ({name:?}) was passed but is not open"
            ),
            ActivationError::Unsupported { fd, name, what } => write!(
                f,
                "socket activation: fd {fd} ({name:?}) is {what}; ferricorn needs a \
                 listening stream socket (ListenStream= with Accept=no) of family \
                 AF_INET, AF_INET6 or AF_UNIX"
            ),
            ActivationError::Io {
                fd,
                name,
                op,
                source,
            } => write!(f, "socket activation: {op} on fd {fd} ({name:?}): {source}"),
        }
    }
}

impl ActivationError {
    /// The errno for systemd's ERRNO=: the failed call's own, EBADF for an
    /// fd that is not open or not a socket we can use, EINVAL for a
    /// malformed variable.
    pub fn errno(&self) -> i32 {
        match self {
            ActivationError::BadVar { .. } | ActivationError::NameCount { .. } => libc::EINVAL,
            ActivationError::NotOpen { .. } => libc::EBADF,
            ActivationError::Unsupported { .. } => libc::ENOTSOCK,
            ActivationError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl std::error::Error for ActivationError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ActivationError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Parse the protocol variables: which fds are ours and their names.
///
/// Follows `sd_listen_fds_with_names(3)`: no `LISTEN_PID`, or one that is not
/// `my_pid`, or `LISTEN_FDS` absent or 0, means nothing was passed to us
/// (`Ok(empty)`). A malformed value is an error, and so is a
/// `LISTEN_FDNAMES` whose name count differs from `LISTEN_FDS`. Without
/// `LISTEN_FDNAMES` every socket is named `"unknown"`.
pub fn parse(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
    my_pid: u32,
) -> Result<Vec<(RawFd, String)>, ActivationError> {
    let Some(pid_s) = listen_pid else {
        return Ok(Vec::new());
    };
    let pid: u32 = pid_s.trim().parse().map_err(|_| ActivationError::BadVar {
        var: "LISTEN_PID",
        value: pid_s.to_owned(),
        reason: "not a pid",
    })?;
    if pid == 0 {
        return Err(ActivationError::BadVar {
            var: "LISTEN_PID",
            value: pid_s.to_owned(),
            reason: "not a pid",
        });
    }
    if pid != my_pid {
        return Ok(Vec::new());
    }
    let Some(fds_s) = listen_fds else {
        return Ok(Vec::new());
    };
    let n: u32 = fds_s.trim().parse().map_err(|_| ActivationError::BadVar {
        var: "LISTEN_FDS",
        value: fds_s.to_owned(),
        reason: "not a non-negative count",
    })?;
    // Keep start + n within RawFd (sd_listen_fds: -E2BIG).
    if n as i64 > (RawFd::MAX - LISTEN_FDS_START) as i64 {
        return Err(ActivationError::BadVar {
            var: "LISTEN_FDS",
            value: fds_s.to_owned(),
            reason: "too many fds",
        });
    }
    let n = n as usize;
    if n == 0 {
        return Ok(Vec::new());
    }
    let names: Vec<String> = match names {
        // Empty fields are kept, like systemd (EXTRACT_DONT_COALESCE_SEPARATORS).
        Some(s) => s.split(':').map(str::to_owned).collect(),
        None => vec![UNKNOWN_NAME.to_owned(); n],
    };
    if names.len() != n {
        return Err(ActivationError::NameCount {
            fds: n,
            names: names.len(),
        });
    }
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, name)| (LISTEN_FDS_START + i as RawFd, name))
        .collect())
}

/// Take the sockets passed to this process, then clear `LISTEN_PID`,
/// `LISTEN_FDS` and `LISTEN_FDNAMES` (whether or not they were for us, as
/// `sd_listen_fds(1)` does).
///
/// Returns `Ok(empty)` when nothing was passed to us. Each fd is checked
/// ([`adopt`]) and gets `FD_CLOEXEC`; on error, fds adopted so far are closed
/// and the caller is expected to exit.
///
/// Call it early in `main`, while the process is still single-threaded: it
/// modifies the environment.
pub fn take_from_env() -> Result<Vec<ActivatedSocket>, ActivationError> {
    let var = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
    let (pid, fds, names) = (var("LISTEN_PID"), var("LISTEN_FDS"), var("LISTEN_FDNAMES"));
    unset_env();
    let passed = parse(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )?;
    passed
        .into_iter()
        .map(|(fd, name)| {
            // SAFETY: the protocol hands these fds to this pid: nothing else
            // in the process owns them. `adopt` checks that they are open.
            unsafe { adopt(fd, name) }
        })
        .collect()
}

/// Remove the protocol variables from our environment.
///
/// Must be called while no other thread reads or writes the environment.
pub fn unset_env() {
    for k in ENV_VARS {
        // SAFETY: documented precondition: the process is single-threaded
        // (or no other thread touches the environment) at this point.
        unsafe { std::env::remove_var(k) };
    }
}

/// The variables to export so that a process exec'd *as pid `pid`* (an
/// in-place re-exec keeps the pid) adopts sockets named `names`, which the
/// caller must have placed at fds 3, 4, ... without `FD_CLOEXEC`.
pub fn listen_env(pid: u32, names: &[&str]) -> [(&'static str, String); 3] {
    [
        ("LISTEN_PID", pid.to_string()),
        ("LISTEN_FDS", names.len().to_string()),
        ("LISTEN_FDNAMES", names.join(":")),
    ]
}

/// Check that `fd` is a listening stream socket we can serve on, set
/// `FD_CLOEXEC`, and take ownership of it.
///
/// On error the fd is left open and not owned (the caller decides).
///
/// # Safety
/// `fd` must not be owned by anything else in the process: on success it is
/// wrapped in an [`OwnedFd`] that closes it when dropped.
pub unsafe fn adopt(fd: RawFd, name: String) -> Result<ActivatedSocket, ActivationError> {
    let flags = {
        // SAFETY: F_GETFD only reads the descriptor flags; it fails with
        // EBADF on a closed fd, which is what we probe for.
        let r = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBADF) {
                return Err(ActivationError::NotOpen { fd, name });
            }
            return Err(ActivationError::Io {
                fd,
                name,
                op: "fcntl(F_GETFD)",
                source: e,
            });
        }
        r
    };
    // SAFETY: the fd is open (F_GETFD succeeded) and the borrow does not
    // outlive this function.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let kind = match inspect(borrowed) {
        Ok(kind) => kind,
        Err(Inspect::Unsupported(what)) => {
            return Err(ActivationError::Unsupported { fd, name, what });
        }
        Err(Inspect::Io(op, source)) => {
            return Err(ActivationError::Io {
                fd,
                name,
                op,
                source,
            });
        }
    };
    if flags & libc::FD_CLOEXEC == 0 {
        // SAFETY: sets a descriptor flag on an open fd; no memory involved.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
            return Err(ActivationError::Io {
                fd,
                name,
                op: "fcntl(F_SETFD, FD_CLOEXEC)",
                source: io::Error::last_os_error(),
            });
        }
    }
    Ok(ActivatedSocket {
        // SAFETY: the caller guarantees exclusive ownership of `fd`.
        fd: unsafe { OwnedFd::from_raw_fd(fd) },
        name,
        kind,
    })
}

enum Inspect {
    /// What the fd is, in words, for the error message.
    Unsupported(String),
    Io(&'static str, io::Error),
}

/// Read an int socket option.
fn sockopt_int(fd: BorrowedFd<'_>, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `val` and `len` are valid for writes and `len` holds the size
    // of `val`; the kernel writes at most `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw mut val).cast(),
            &mut len,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(val)
    }
}

fn file_type_words(fd: BorrowedFd<'_>) -> Result<&'static str, Inspect> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| Inspect::Io("fstat", e.into()))?;
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => "a socket",
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFIFO => "a pipe or FIFO",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        _ => "not a socket",
    })
}

fn type_words(ty: libc::c_int) -> String {
    match ty {
        libc::SOCK_STREAM => "SOCK_STREAM".into(),
        libc::SOCK_DGRAM => "SOCK_DGRAM".into(),
        libc::SOCK_SEQPACKET => "SOCK_SEQPACKET".into(),
        libc::SOCK_RAW => "SOCK_RAW".into(),
        other => format!("socket type {other}"),
    }
}

fn family_words(family: libc::c_int) -> String {
    match family {
        libc::AF_INET => "AF_INET".into(),
        libc::AF_INET6 => "AF_INET6".into(),
        libc::AF_UNIX => "AF_UNIX".into(),
        libc::AF_NETLINK => "AF_NETLINK".into(),
        libc::AF_PACKET => "AF_PACKET".into(),
        libc::AF_VSOCK => "AF_VSOCK".into(),
        other => format!("address family {other}"),
    }
}

/// Classify an open fd: a supported listening socket, or why not.
fn inspect(fd: BorrowedFd<'_>) -> Result<SocketKind, Inspect> {
    let ftype = file_type_words(fd)?;
    if ftype != "a socket" {
        return Err(Inspect::Unsupported(ftype.to_owned()));
    }
    let ty = sockopt_int(fd, libc::SO_TYPE).map_err(|e| Inspect::Io("getsockopt(SO_TYPE)", e))?;
    let addr: SockaddrStorage =
        getsockname(fd.as_raw_fd()).map_err(|e| Inspect::Io("getsockname", e.into()))?;
    let family = addr.family().map_or(-1, |f| f as libc::c_int);
    let fam_ok = matches!(family, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX);
    if ty != libc::SOCK_STREAM || !fam_ok {
        return Err(Inspect::Unsupported(format!(
            "a {} socket of family {}",
            type_words(ty),
            family_words(family)
        )));
    }
    let kind = sockaddr_kind(&addr);
    let listening = sockopt_int(fd, libc::SO_ACCEPTCONN)
        .map_err(|e| Inspect::Io("getsockopt(SO_ACCEPTCONN)", e))?;
    if listening == 0 {
        return Err(Inspect::Unsupported(format!(
            "a SOCK_STREAM socket on {kind} that is not listening (a connection \
             passed by Accept=yes, or a socket never listen()ed on)"
        )));
    }
    Ok(kind)
}

fn sockaddr_kind(addr: &SockaddrStorage) -> SocketKind {
    if let Some(a) = addr.as_sockaddr_in() {
        SocketKind::Tcp(SocketAddr::V4(SocketAddrV4::from(*a)))
    } else if let Some(a) = addr.as_sockaddr_in6() {
        SocketKind::Tcp(SocketAddr::V6(SocketAddrV6::from(*a)))
    } else if let Some(u) = addr.as_unix_addr() {
        if let Some(p) = u.path() {
            SocketKind::Unix(UnixName::Path(p.to_owned()))
        } else if let Some(n) = u.as_abstract() {
            SocketKind::Unix(UnixName::Abstract(n.to_owned()))
        } else {
            SocketKind::Unix(UnixName::Unnamed)
        }
    } else {
        // inspect() only calls this for the three families above.
        SocketKind::Unix(UnixName::Unnamed)
    }
}

/// Why a `fd://` selector matched nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectError {
    pub spec: String,
    /// The available sockets, for the message: `fd 3 "web" (0.0.0.0:80)`.
    pub available: Vec<String>,
}

impl fmt::Display for SelectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.available.is_empty() {
            write!(
                f,
                "--bind {}: no sockets were passed by systemd (LISTEN_FDS unset \
                 or not for this pid)",
                self.spec
            )
        } else {
            write!(
                f,
                "--bind {}: no passed socket matches; passed: {}",
                self.spec,
                self.available.join(", ")
            )
        }
    }
}

impl std::error::Error for SelectError {}

/// Resolve a `--bind` selector of the form `fd://N` or `fd://NAME` (the
/// `fd://` prefix is optional here).
///
/// All digits: the socket whose fd number is `N`. Otherwise: every socket
/// whose `LISTEN_FDNAMES` name is `NAME` (one `.socket` unit may carry
/// several `ListenStream=` lines, all with the same name). A name made only of
/// digits therefore cannot be selected by name; pick it by fd number.
pub fn select<'a>(
    socks: &'a [ActivatedSocket],
    spec: &str,
) -> Result<Vec<&'a ActivatedSocket>, SelectError> {
    let key = spec.strip_prefix("fd://").unwrap_or(spec);
    let found: Vec<&ActivatedSocket> = if !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit())
    {
        let n: Option<RawFd> = key.parse().ok();
        socks
            .iter()
            .filter(|s| Some(s.fd.as_raw_fd()) == n)
            .collect()
    } else {
        socks
            .iter()
            .filter(|s| !key.is_empty() && s.name == key)
            .collect()
    };
    if found.is_empty() {
        return Err(SelectError {
            spec: spec.to_owned(),
            available: socks.iter().map(ToString::to_string).collect(),
        });
    }
    Ok(found)
}

/// Whether a `--bind` value is a socket-activation selector.
pub fn is_fd_spec(bind: &str) -> bool {
    bind.starts_with("fd://")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, UdpSocket};
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::{UnixDatagram, UnixListener};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn unique(tag: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "ferricorn-act-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            tag
        )
    }

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(unique(tag))
    }

    // ---- parse ----

    #[test]
    fn parse_absent_or_other_pid_is_empty() {
        assert!(parse(None, Some("2"), None, 42).unwrap().is_empty());
        assert!(parse(Some("41"), Some("2"), None, 42).unwrap().is_empty());
        assert!(parse(Some("42"), None, None, 42).unwrap().is_empty());
        assert!(parse(Some("42"), Some("0"), None, 42).unwrap().is_empty());
    }

    #[test]
    fn parse_without_names_uses_unknown() {
        let v = parse(Some("42"), Some("2"), None, 42).unwrap();
        assert_eq!(
            v,
            vec![(3, "unknown".to_owned()), (4, "unknown".to_owned())]
        );
    }

    #[test]
    fn parse_with_names() {
        let v = parse(Some("42"), Some("3"), Some("web:web:admin"), 42).unwrap();
        assert_eq!(
            v,
            vec![
                (3, "web".to_owned()),
                (4, "web".to_owned()),
                (5, "admin".to_owned())
            ]
        );
        // Empty fields are kept, not coalesced.
        let v = parse(Some("42"), Some("2"), Some(":b"), 42).unwrap();
        assert_eq!(v, vec![(3, String::new()), (4, "b".to_owned())]);
    }

    #[test]
    fn parse_rejects_malformed() {
        assert!(matches!(
            parse(Some("x"), Some("1"), None, 42),
            Err(ActivationError::BadVar {
                var: "LISTEN_PID",
                ..
            })
        ));
        assert!(matches!(
            parse(Some("0"), Some("1"), None, 42),
            Err(ActivationError::BadVar {
                var: "LISTEN_PID",
                ..
            })
        ));
        assert!(matches!(
            parse(Some("42"), Some("-1"), None, 42),
            Err(ActivationError::BadVar {
                var: "LISTEN_FDS",
                ..
            })
        ));
        assert!(matches!(
            parse(Some("42"), Some("4294967295"), None, 42),
            Err(ActivationError::BadVar {
                var: "LISTEN_FDS",
                ..
            })
        ));
        let e = parse(Some("42"), Some("2"), Some("only-one"), 42).unwrap_err();
        assert!(matches!(e, ActivationError::NameCount { fds: 2, names: 1 }));
        assert_eq!(
            e.to_string(),
            "socket activation: LISTEN_FDS=2 but LISTEN_FDNAMES has 1 names"
        );
    }

    #[test]
    fn listen_env_round_trips_through_parse() {
        let env = listen_env(7, &["web", "admin"]);
        let v = parse(Some(&env[0].1), Some(&env[1].1), Some(&env[2].1), 7).unwrap();
        assert_eq!(v, vec![(3, "web".to_owned()), (4, "admin".to_owned())]);
    }

    // ---- adopt ----

    #[test]
    fn adopt_tcp_listener_sets_cloexec() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let fd = l.into_raw_fd();
        // Clear CLOEXEC as systemd passes it, to see adopt() set it.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        let s = unsafe { adopt(fd, "web".into()) }.unwrap();
        assert_eq!(s.kind, SocketKind::Tcp(addr));
        assert_eq!(s.name, "web");
        let flags = unsafe { libc::fcntl(s.fd.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        assert_eq!(s.to_string(), format!("fd {fd} \"web\" ({addr})"));
    }

    #[test]
    fn adopt_tcp6_listener() {
        let Ok(l) = TcpListener::bind("[::1]:0") else {
            return; // no IPv6 on this host
        };
        let addr = l.local_addr().unwrap();
        let s = unsafe { adopt(l.into_raw_fd(), "v6".into()) }.unwrap();
        assert_eq!(s.kind, SocketKind::Tcp(addr));
    }

    #[test]
    fn adopt_unix_path_listener() {
        let p = temp_path("listen.sock");
        let l = UnixListener::bind(&p).unwrap();
        let s = unsafe { adopt(l.into_raw_fd(), "unix".into()) }.unwrap();
        assert_eq!(s.kind, SocketKind::Unix(UnixName::Path(p.clone())));
        assert_eq!(s.kind.to_string(), format!("unix:{}", p.display()));
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn adopt_unix_abstract_listener() {
        use std::os::linux::net::SocketAddrExt;
        let name = unique("abstract");
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let l = UnixListener::bind_addr(&addr).unwrap();
        let s = unsafe { adopt(l.into_raw_fd(), "abs".into()) }.unwrap();
        assert_eq!(
            s.kind,
            SocketKind::Unix(UnixName::Abstract(name.clone().into_bytes()))
        );
        assert_eq!(s.kind.to_string(), format!("unix:@{name}"));
    }

    fn adopt_err(fd: RawFd) -> ActivationError {
        let e = unsafe { adopt(fd, "x".into()) }.unwrap_err();
        // adopt() leaves the fd open on error: close it here.
        unsafe { libc::close(fd) };
        e
    }

    #[test]
    fn adopt_refuses_udp() {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = u.into_raw_fd();
        let e = adopt_err(fd);
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "socket activation: fd {fd} (\"x\") is a SOCK_DGRAM socket of family AF_INET;"
            )),
            "{msg}"
        );
    }

    #[test]
    fn adopt_refuses_unix_datagram() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        let e = adopt_err(a.into_raw_fd());
        assert!(
            e.to_string()
                .contains("is a SOCK_DGRAM socket of family AF_UNIX"),
            "{e}"
        );
    }

    #[test]
    fn adopt_refuses_non_listening_stream() {
        // A connected stream socket, as Accept=yes would pass.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let e = adopt_err(c.into_raw_fd());
        assert!(e.to_string().contains("that is not listening"), "{e}");
    }

    #[test]
    fn adopt_refuses_regular_file() {
        let p = temp_path("file");
        let f = std::fs::File::create(&p).unwrap();
        let e = adopt_err(f.into_raw_fd());
        assert!(e.to_string().contains("is a regular file"), "{e}");
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn adopt_refuses_closed_fd() {
        // Far above any fd the test process opens.
        let e = unsafe { adopt(1_000_000, "gone".into()) }.unwrap_err();
        assert!(matches!(e, ActivationError::NotOpen { fd: 1_000_000, .. }));
        assert_eq!(
            e.to_string(),
            "socket activation: fd 1000000 (\"gone\") was passed but is not open"
        );
    }

    // ---- select ----

    #[test]
    fn select_by_fd_and_name() {
        let mk = |name: &str| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            unsafe { adopt(l.into_raw_fd(), name.into()) }.unwrap()
        };
        let socks = vec![mk("web"), mk("web"), mk("admin")];
        let fd1 = socks[1].fd.as_raw_fd();

        let by_fd = select(&socks, &format!("fd://{fd1}")).unwrap();
        assert_eq!(by_fd.len(), 1);
        assert_eq!(by_fd[0].fd.as_raw_fd(), fd1);

        let web = select(&socks, "fd://web").unwrap();
        assert_eq!(web.len(), 2);
        assert!(web.iter().all(|s| s.name == "web"));

        let admin = select(&socks, "admin").unwrap();
        assert_eq!(admin.len(), 1);

        let e = select(&socks, "fd://nope").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--bind fd://nope: no passed socket matches; passed: fd ")
        );
        assert_eq!(e.available.len(), 3);

        assert!(select(&socks, "fd://").is_err());
        assert!(select(&socks, "fd://1000000").is_err());
        let e = select(&[], "fd://web").unwrap_err();
        assert!(e.to_string().contains("no sockets were passed"));
        assert!(is_fd_spec("fd://web") && !is_fd_spec("127.0.0.1:80"));
    }
}
