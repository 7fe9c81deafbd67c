//! Listening sockets: parse `--bind` specs, bind them (or adopt fds that
//! systemd or a previous master passed us), and describe them for logs.
//!
//! The master owns these; workers inherit the fds across fork and all
//! accept on the same sockets (the kernel balances, EPOLLEXCLUSIVE avoids
//! the thundering herd). No per-worker SO_REUSEPORT sockets: that would
//! break socket activation.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket,
    sockopt,
};

use crate::systemd::activation::{self, ActivatedSocket};

/// How sockets are made: Gunicorn's `backlog`, `reuse_port` and `umask`.
#[derive(Debug, Clone, Copy)]
pub struct SocketOptions {
    pub backlog: i32,
    pub reuse_port: bool,
    /// In force only while a unix socket file is created (its mode is
    /// 0777 & !umask), as in Gunicorn: the process keeps the umask it was
    /// started with (systemd's `UMask=`), and so do the app's files.
    pub umask: u32,
}

impl SocketOptions {
    pub fn of(s: &crate::config::Settings) -> SocketOptions {
        SocketOptions {
            backlog: s.backlog,
            reuse_port: s.reuse_port,
            umask: s.umask,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindSpec {
    Tcp(String),
    Unix(PathBuf),
    /// `fd://N` or `fd://NAME`: an inherited or socket-activated fd.
    Fd(String),
}

impl BindSpec {
    pub fn parse(s: &str) -> Result<BindSpec, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            let p = p.strip_prefix("//").unwrap_or(p);
            if p.is_empty() {
                return Err("unix: needs a path".into());
            }
            return Ok(BindSpec::Unix(PathBuf::from(p)));
        }
        if let Some(f) = s.strip_prefix("fd://") {
            if f.is_empty() {
                return Err("fd:// needs a number or a socket name".into());
            }
            return Ok(BindSpec::Fd(f.to_string()));
        }
        let hp = s.strip_prefix("tcp://").unwrap_or(s);
        if hp.is_empty() {
            return Err("empty address".into());
        }
        // HOST:PORT, [V6]:PORT, or a bare HOST (port 8000, as Gunicorn).
        let (host, port) = if let Some(rest) = hp.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or("unclosed '[' in IPv6 address")?;
            let port = match after.strip_prefix(':') {
                Some(p) => p,
                None if after.is_empty() => "8000",
                None => return Err("expected :PORT after ']'".into()),
            };
            (h.to_string(), port)
        } else {
            match hp.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h.to_string(), p),
                Some(_) => return Err("IPv6 addresses need brackets: [::1]:8000".into()),
                None => (hp.to_string(), "8000"),
            }
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{port:?} is not a port number"))?;
        // `:8000`: Gunicorn binds the empty host, which is every IPv4 address.
        let host = if host.is_empty() {
            "0.0.0.0".to_string()
        } else {
            host
        };
        if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?} is not an IPv6 address"));
        }
        Ok(BindSpec::Tcp(if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }))
    }
}

/// One listening socket, as the workers see it.
#[derive(Debug)]
pub struct Listener {
    pub fd: OwnedFd,
    pub addr: ListenAddr,
    /// The name systemd gave it (`FileDescriptorName=`), or the bind spec.
    pub name: String,
    /// Whether we created a unix socket file that we must remove on exit.
    pub owns_path: bool,
}

impl Listener {
    /// The unix socket file we created for it (ours to chown and remove).
    pub fn owned_path(&self) -> Option<&str> {
        match &self.addr {
            ListenAddr::Unix(p) if self.owns_path => Some(p),
            _ => None,
        }
    }

    /// Close it, and remove its socket file if we created one.
    pub fn close(self) {
        if let Some(p) = self.owned_path() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[derive(Debug, Clone)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(String),
}

impl ListenAddr {
    /// SERVER_NAME / SERVER_PORT for requests without a Host header. PEP
    /// 3333: neither is ever empty; a unix socket has no port, so HTTP's
    /// default, as Gunicorn gives.
    pub fn server_name_port(&self) -> (String, String) {
        match self {
            ListenAddr::Tcp(a) => (a.ip().to_string(), a.port().to_string()),
            ListenAddr::Unix(p) => (p.clone(), "80".to_string()),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "http://{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{p}"),
        }
    }
}

pub fn listen_addr_of(fd: RawFd) -> std::io::Result<ListenAddr> {
    let ss: SockaddrStorage = nix::sys::socket::getsockname(fd)?;
    if let Some(v4) = ss.as_sockaddr_in() {
        return Ok(ListenAddr::Tcp(SocketAddr::V4((*v4).into())));
    }
    if let Some(v6) = ss.as_sockaddr_in6() {
        return Ok(ListenAddr::Tcp(SocketAddr::V6((*v6).into())));
    }
    if let Some(un) = ss.as_unix_addr() {
        let s = match (un.path(), un.as_abstract()) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(a)) => format!("@{}", String::from_utf8_lossy(a)),
            _ => "(unnamed)".into(),
        };
        return Ok(ListenAddr::Unix(s));
    }
    Err(std::io::Error::other("not an inet or unix socket"))
}

fn bind_tcp(
    addr: SocketAddr,
    backlog: i32,
    reuse_port: bool,
    v6only: bool,
) -> std::io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if reuse_port {
        // Lets another server (a second instance, or a new one started
        // beside this during a migration) bind the same port.
        setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    // Accepted sockets inherit TCP_NODELAY: a response is one write, and
    // Nagle would only delay the tail of streamed ones.
    setsockopt(&fd, sockopt::TcpNoDelay, &true)?;
    if v6only {
        // Only when an IPv4 address on the same port is bound too (see
        // `v6only`); otherwise the kernel's default (bindv6only=0: [::]
        // takes IPv4 too, as Gunicorn's socket does).
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    let sa = SockaddrStorage::from(addr);
    bind(fd.as_raw_fd(), &sa)?;
    listen(&fd, Backlog::new(backlog).unwrap_or(Backlog::MAXCONN))?;
    Ok(fd)
}

fn bind_unix(path: &PathBuf, backlog: i32, umask: u32) -> std::io::Result<OwnedFd> {
    // A stale socket file left by a crashed run would make bind fail with
    // EADDRINUSE; remove it only if it *is* a socket (never a regular file).
    if let Ok(md) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if md.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
    // SAFETY: umask(2) cannot fail. The master binds from its one thread
    // (start-up, or a reload in its main loop), so nothing else creates
    // files under the temporary mask.
    let inherited = unsafe { libc::umask(umask as libc::mode_t) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above; the inherited mask is back before anything else.
    unsafe { libc::umask(inherited) };
    let fd: OwnedFd = bound?.into();
    listen(&fd, Backlog::new(backlog).unwrap_or(Backlog::MAXCONN))?;
    Ok(fd)
}

/// Why the sockets could not be opened, and the errno for systemd's ERRNO=
/// (the system call's own; EINVAL for a bad bind address).
#[derive(Debug)]
pub struct ListenError {
    pub errno: i32,
    msg: String,
}

impl From<String> for ListenError {
    fn from(msg: String) -> ListenError {
        ListenError {
            errno: libc::EINVAL,
            msg,
        }
    }
}

impl std::fmt::Display for ListenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

/// An `io::Error` of binding `spec`, with its errno.
fn bind_error(spec: &str, e: std::io::Error) -> ListenError {
    ListenError {
        errno: e.raw_os_error().unwrap_or(libc::EINVAL),
        msg: format!("bind {spec:?}: {e}"),
    }
}

/// Gunicorn's patience with a port still held (an old server exiting, a
/// restart racing its predecessor): five tries, a second apart, each
/// failure logged, before giving up.
const BIND_TRIES: u32 = 5;

fn retry_in_use<T>(spec: &str, mut bind: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut tries = 1;
    loop {
        match bind() {
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                crate::log::error(&format!("Connection in use: {spec}"));
                crate::log::error(&format!("connection to {spec} failed: {e}"));
                if tries == BIND_TRIES {
                    crate::log::error(&format!("Can't connect to {spec}"));
                    return Err(e);
                }
                crate::log::debug("Retrying in 1 second.");
                std::thread::sleep(std::time::Duration::from_secs(1));
                tries += 1;
            }
            other => return other,
        }
    }
}

/// The first address a `host:port` spec resolves to.
fn resolve(spec: &str, hp: &str) -> Result<SocketAddr, ListenError> {
    Ok(hp
        .to_socket_addrs()
        .map_err(|e| format!("bind {spec:?}: cannot resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("bind {spec:?}: no address"))?)
}

/// Whether an IPv6 socket on `port` must be IPv6-only: when the bind
/// list also has an IPv4 address on that port. `[::]:8000` alone is
/// dual-stack as in Gunicorn (containers bind it to take every address);
/// with `0.0.0.0:8000` beside it, a dual-stack `[::]` would collide with
/// it (EADDRINUSE), so each family gets its own socket.
fn v6only(all_specs: &[String], port: u16) -> bool {
    port != 0
        && all_specs.iter().any(|spec| match BindSpec::parse(spec) {
            Ok(BindSpec::Tcp(hp)) => {
                resolve(spec, &hp).is_ok_and(|a| a.is_ipv4() && a.port() == port)
            }
            _ => false,
        })
}

/// Bind a `host:port` spec (its first address), named by the spec. With
/// `patient`, a port in use is tried again as Gunicorn does (`retry_in_use`).
/// `all_specs` is the whole bind list (for `v6only`).
fn open_tcp(
    spec: &str,
    hp: &str,
    all_specs: &[String],
    opts: SocketOptions,
    patient: bool,
) -> Result<Listener, ListenError> {
    let first = resolve(spec, hp)?;
    let v6only = first.is_ipv6() && v6only(all_specs, first.port());
    let bind = || bind_tcp(first, opts.backlog, opts.reuse_port, v6only);
    let fd = if patient {
        retry_in_use(spec, bind)
    } else {
        bind()
    }
    .map_err(|e| bind_error(spec, e))?;
    let addr = listen_addr_of(fd.as_raw_fd()).map_err(|e| e.to_string())?;
    Ok(Listener {
        fd,
        addr,
        name: spec.to_string(),
        owns_path: false,
    })
}

/// Bind a `unix:` spec; the socket file is ours to remove.
fn open_unix(spec: &str, path: &PathBuf, opts: SocketOptions) -> Result<Listener, ListenError> {
    let fd = bind_unix(path, opts.backlog, opts.umask).map_err(|e| bind_error(spec, e))?;
    Ok(Listener {
        fd,
        addr: ListenAddr::Unix(path.display().to_string()),
        name: spec.to_string(),
        owns_path: true,
    })
}

/// Whether a bind list picks sockets by `fd://`: without one, the sockets
/// systemd passes replace the list (Gunicorn's rule), at start and on HUP.
pub fn selects_fd(bind_specs: &[String]) -> bool {
    bind_specs
        .iter()
        .any(|b| matches!(BindSpec::parse(b), Ok(BindSpec::Fd(_))))
}

/// Open every socket the settings ask for. `activated` holds what systemd
/// passed (already validated); unless a `--bind` is `fd://`, all of those
/// are served and the other `--bind` addresses are not bound (Gunicorn's
/// rule); with `fd://NAME|N`, it picks among them or among inherited fds,
/// and the other addresses are bound too.
pub fn open_listeners(
    bind_specs: &[String],
    bind_is_default: bool,
    opts: SocketOptions,
    activated: Vec<ActivatedSocket>,
) -> Result<Vec<Listener>, ListenError> {
    let mut out = Vec::new();
    let selects = selects_fd(bind_specs);
    if !activated.is_empty() && (bind_is_default || !selects) {
        // Gunicorn's rule: sockets passed by systemd replace the --bind
        // addresses (the usual unit pairs a .socket with the same address
        // in -b; binding it again would take the path from systemd's
        // socket or fail on the port). Only fd:// picks among them.
        if !bind_is_default {
            crate::log::info(&format!(
                "socket activation: serving the {} socket(s) systemd passed instead of \
                 --bind {} (select some with -b fd://NAME to bind others as well)",
                activated.len(),
                bind_specs.join(", ")
            ));
        }
        for a in activated {
            let addr = listen_addr_of(a.fd.as_raw_fd())
                .map_err(|e| format!("fd {}: {e}", a.fd.as_raw_fd()))?;
            out.push(Listener {
                fd: a.fd,
                addr,
                name: a.name,
                owns_path: false,
            });
        }
        return Ok(out);
    }
    let mut activated = activated;
    for spec in bind_specs {
        match BindSpec::parse(spec).map_err(|e| format!("bind {spec:?}: {e}"))? {
            BindSpec::Tcp(hp) => out.push(open_tcp(spec, &hp, bind_specs, opts, true)?),
            BindSpec::Unix(path) => out.push(open_unix(spec, &path, opts)?),
            BindSpec::Fd(sel) => {
                let chosen: Vec<RawFd> = activation::select(&activated, &sel)
                    .map(|v| v.iter().map(|a| a.fd.as_raw_fd()).collect())
                    .unwrap_or_default();
                if !chosen.is_empty() {
                    let (take, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut activated)
                        .into_iter()
                        .partition(|a| chosen.contains(&a.fd.as_raw_fd()));
                    activated = keep;
                    for a in take {
                        let addr = listen_addr_of(a.fd.as_raw_fd()).map_err(|e| e.to_string())?;
                        out.push(Listener {
                            fd: a.fd,
                            addr,
                            name: a.name,
                            owns_path: false,
                        });
                    }
                    continue;
                }
                // Not socket-activated: an fd inherited by number (Gunicorn's fd://N).
                let n: RawFd = sel.parse().map_err(|_| {
                    format!("bind {spec:?}: no socket named {sel:?} was passed by systemd (LISTEN_FDNAMES)")
                })?;
                let ok = nix::sys::socket::getsockopt(
                    // SAFETY-free: getsockopt only reads; a bad fd gives EBADF.
                    &unsafe { std::os::fd::BorrowedFd::borrow_raw(n) },
                    sockopt::AcceptConn,
                );
                match ok {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(ListenError {
                            errno: libc::ENOTSOCK,
                            msg: format!("bind {spec:?}: fd {n} is not a listening socket"),
                        });
                    }
                    Err(e) => {
                        return Err(ListenError {
                            errno: e as i32,
                            msg: format!("bind {spec:?}: fd {n}: {e}"),
                        });
                    }
                }
                // SAFETY: fd n is open (getsockopt succeeded) and was handed to
                // us by our parent; from here on we own it.
                let fd = unsafe { OwnedFd::from_raw_fd(n) };
                let _ = nix::fcntl::fcntl(
                    &fd,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
                );
                let addr = listen_addr_of(n).map_err(|e| format!("bind {spec:?}: {e}"))?;
                out.push(Listener {
                    fd,
                    addr,
                    name: spec.clone(),
                    owns_path: false,
                });
            }
        }
    }
    for a in &activated {
        // Closed when dropped: systemd keeps its own copy and queues the
        // connections, which then wait for nothing. Say so.
        crate::log::warning(&format!(
            "socket activation: systemd passed fd {} (name {:?}) but no --bind selects it \
             (add -b fd://{}); not listening on it",
            a.fd.as_raw_fd(),
            a.name,
            a.name
        ));
    }
    Ok(out)
}

/// What `rebind` made of the running sockets.
pub struct Rebound {
    /// The new list, in the order of the new `bind`.
    pub listeners: Vec<Listener>,
    /// Open before, named no more: the caller closes them.
    pub dropped: Vec<Listener>,
}

/// HUP with a changed `bind`, as Gunicorn's reload. A socket the new list
/// names that is open already is kept as it is (its queue and the
/// connections in it stay: re-binding it would fail while the old workers
/// hold it), the others are bound now, once each (no waiting on a port in
/// use: the master would not handle signals meanwhile). `fd://` can only
/// name a socket the master already holds. On failure nothing changes:
/// `current` comes back with the reason.
pub fn rebind(
    current: Vec<Listener>,
    new_specs: &[String],
    opts: SocketOptions,
) -> Result<Rebound, (Vec<Listener>, ListenError)> {
    let mut old: Vec<Option<Listener>> = current.into_iter().map(Some).collect();
    // Each with where it came from: Some(index in `old`) when kept.
    let mut out: Vec<(Option<usize>, Listener)> = Vec::new();
    let mut failure = None;
    for spec in new_specs {
        let parsed = match BindSpec::parse(spec) {
            Ok(p) => p,
            Err(e) => {
                failure = Some(ListenError::from(format!("bind {spec:?}: {e}")));
                break;
            }
        };
        let held = old.iter().position(|l| {
            l.as_ref().is_some_and(|l| match &parsed {
                BindSpec::Fd(sel) => {
                    l.name == *spec
                        || l.name == *sel
                        || sel.parse::<RawFd>().ok() == Some(l.fd.as_raw_fd())
                }
                _ => l.name == *spec,
            })
        });
        if let Some(i) = held {
            out.extend(old[i].take().map(|l| (Some(i), l)));
            continue;
        }
        let opened = match parsed {
            BindSpec::Tcp(hp) => open_tcp(spec, &hp, new_specs, opts, false),
            BindSpec::Unix(path) => open_unix(spec, &path, opts),
            BindSpec::Fd(_) => Err(ListenError::from(format!(
                "bind {spec:?}: on a reload, fd:// can only name a socket the master already \
                 holds (restart to take a new one)"
            ))),
        };
        match opened {
            Ok(l) => out.push((None, l)),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failure {
        // Undo: the kept sockets go back to their places; those bound
        // just now are closed (and a unix socket's file removed).
        for (origin, l) in out {
            match origin {
                Some(i) => old[i] = Some(l),
                None => l.close(),
            }
        }
        return Err((old.into_iter().flatten().collect(), e));
    }
    let dropped = old.into_iter().flatten().collect();
    Ok(Rebound {
        listeners: out.into_iter().map(|(_, l)| l).collect(),
        dropped,
    })
}

/// Take over a listening socket inherited across the in-place upgrade.
pub fn adopt(fd: RawFd, name: &str) -> Result<Listener, String> {
    let addr = listen_addr_of(fd).map_err(|e| format!("fd {fd} ({name}): {e}"))?;
    // SAFETY: the previous image of this process handed us fd for exactly
    // this; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let owns_path = matches!(BindSpec::parse(name), Ok(BindSpec::Unix(_)));
    Ok(Listener {
        fd,
        addr,
        name: name.to_string(),
        owns_path,
    })
}

/// Keep an fd across exec (used by the in-place binary upgrade).
pub fn clear_cloexec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: plain fcntl on an fd we own.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_specs() {
        assert_eq!(
            BindSpec::parse("127.0.0.1:80").unwrap(),
            BindSpec::Tcp("127.0.0.1:80".into())
        );
        assert_eq!(
            BindSpec::parse("[::1]:80").unwrap(),
            BindSpec::Tcp("[::1]:80".into())
        );
        assert_eq!(
            BindSpec::parse("localhost").unwrap(),
            BindSpec::Tcp("localhost:8000".into())
        );
        assert_eq!(
            BindSpec::parse("unix:/tmp/x.sock").unwrap(),
            BindSpec::Unix("/tmp/x.sock".into())
        );
        assert_eq!(BindSpec::parse("fd://3").unwrap(), BindSpec::Fd("3".into()));
        assert_eq!(
            BindSpec::parse("fd://web").unwrap(),
            BindSpec::Fd("web".into())
        );
        assert_eq!(
            BindSpec::parse(":8080").unwrap(),
            BindSpec::Tcp("0.0.0.0:8080".into())
        );
        assert_eq!(
            BindSpec::parse("tcp://[::]:81").unwrap(),
            BindSpec::Tcp("[::]:81".into())
        );
        assert!(BindSpec::parse("::1:80").is_err());
        assert!(BindSpec::parse("1.2.3.4:http").is_err());
        assert!(BindSpec::parse("unix:").is_err());
        assert!(BindSpec::parse("[::1").is_err());
    }

    const OPTS: SocketOptions = SocketOptions {
        backlog: 16,
        reuse_port: false,
        umask: 0o022,
    };

    #[test]
    fn binds_port_zero_and_reports_real_port() {
        let l = open_listeners(&["127.0.0.1:0".into()], false, OPTS, vec![]).unwrap();
        match &l[0].addr {
            ListenAddr::Tcp(a) => assert_ne!(a.port(), 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rebind_keeps_what_is_still_named_and_undoes_a_failure() {
        let dir = std::env::temp_dir().join(format!("ferricorn-rebind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = format!("unix:{}", dir.join("a.sock").display());
        let b = format!("unix:{}", dir.join("b.sock").display());
        let c = format!("unix:{}", dir.join("c.sock").display());
        let cur = open_listeners(&[a.clone(), b.clone()], false, OPTS, vec![]).unwrap();
        let b_fd = cur[1].fd.as_raw_fd();

        // b kept (same socket), c bound, a dropped for the caller to close.
        let r = rebind(cur, &[b.clone(), c.clone()], OPTS).unwrap();
        let names: Vec<_> = r.listeners.iter().map(|l| l.name.clone()).collect();
        assert_eq!(names, [b.clone(), c.clone()]);
        assert_eq!(r.listeners[0].fd.as_raw_fd(), b_fd);
        assert_eq!(r.dropped.len(), 1);
        assert_eq!(r.dropped[0].name, a);
        for l in r.dropped {
            l.close();
        }
        assert!(!dir.join("a.sock").exists());

        // A port that is taken: nothing changes, what was bound on the way
        // (d.sock) is closed and its file removed.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = taken.local_addr().unwrap().to_string();
        let d = format!("unix:{}", dir.join("d.sock").display());
        let (back, e) = match rebind(r.listeners, &[d, busy.clone(), b.clone()], OPTS) {
            Err(x) => x,
            Ok(_) => panic!("bound a port in use"),
        };
        assert_eq!(e.errno, libc::EADDRINUSE, "{e}");
        let names: Vec<_> = back.iter().map(|l| l.name.clone()).collect();
        assert_eq!(names, [b, c]);
        assert_eq!(back[0].fd.as_raw_fd(), b_fd);
        assert!(!dir.join("d.sock").exists());
        for l in back {
            l.close();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
