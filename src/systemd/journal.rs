//! A writer for journald's native protocol
//! (<https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>), without libsystemd.
//!
//! Why it exists: lines on stderr reach the journal as flat text, one
//! `MESSAGE=` per line, so a traceback becomes thirty entries and an access
//! log line must be re-parsed to be queried. Sent natively, an entry keeps
//! multi-line messages whole, carries its own `PRIORITY=`, and adds
//! structured fields (`HTTP_STATUS=`, `WORKER_PID=`, ...) that
//! `journalctl HTTP_STATUS=500` can match directly.
//!
//! Wire format: one datagram per entry to `/run/systemd/journal/socket`,
//! holding `NAME=value\n` for each field, or, when the value contains a
//! newline, `NAME\n`, then the value's length as a little-endian u64, the
//! value and `\n`. An entry too big for one datagram is written to a sealed
//! memfd whose fd is passed with `SCM_RIGHTS` in an otherwise empty datagram.
//!
//! Field names: 1 to 64 characters of `A-Z`, `0-9`, `_`, not starting with a
//! digit, and not starting with `_` (journald reserves those for the fields it
//! adds itself and drops them from clients). [`Journal::send`] *rejects* an
//! invalid name with `InvalidInput` rather than altering it silently, since
//! ferricorn's own names are constants; names coming from outside (the keys
//! of a Python log record's `extra`) go through [`sanitize_field_name`] first.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg, setsockopt, sockopt};

/// journald's native protocol socket.
pub const DEFAULT_SOCKET: &str = "/run/systemd/journal/socket";

/// Entries larger than this go straight to a memfd instead of being tried as
/// one datagram: a big datagram is one big contiguous kernel allocation, which
/// fails (`ENOBUFS`) or blocks under memory pressure. 128 KiB keeps any
/// ordinary traceback in a single datagram.
pub const MAX_DATAGRAM: usize = 128 * 1024;

/// The send buffer we ask for (as libsystemd does); the kernel caps it at
/// `net.core.wmem_max`.
const SEND_BUFFER: usize = 8 * 1024 * 1024;

/// Longest field name journald accepts.
pub const MAX_FIELD_NAME: usize = 64;

/// syslog(3) priorities, the values of `PRIORITY=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Priority {
    Emerg = 0,
    Alert = 1,
    Crit = 2,
    Err = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
    Debug = 7,
}

impl Priority {
    /// The numeric value, 0 (emerg) to 7 (debug).
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Map a Python `logging` level number. The standard levels map
    /// exactly (CRITICAL 50 → crit, ERROR 40 → err, WARNING 30 → warning,
    /// INFO 20 → info, DEBUG 10 → debug); a custom level takes the priority
    /// of the standard level at or below it, except that levels strictly
    /// between INFO and WARNING map to notice. Above 50 stays crit: alert and
    /// emerg are for the whole system, not one application.
    pub fn from_python_level(levelno: i32) -> Priority {
        match levelno {
            50.. => Priority::Crit,
            40..50 => Priority::Err,
            30..40 => Priority::Warning,
            21..30 => Priority::Notice,
            11..21 => Priority::Info,
            _ => Priority::Debug,
        }
    }

    /// Map a ferricorn `--log-level` name (Gunicorn's names, plus the
    /// syslog spellings), case-insensitively.
    pub fn from_level_name(name: &str) -> Option<Priority> {
        Some(match name.to_ascii_lowercase().as_str() {
            "emerg" | "emergency" => Priority::Emerg,
            "alert" => Priority::Alert,
            "critical" | "crit" | "fatal" => Priority::Crit,
            "error" | "err" => Priority::Err,
            "warning" | "warn" => Priority::Warning,
            "notice" => Priority::Notice,
            "info" => Priority::Info,
            "debug" | "trace" => Priority::Debug,
            _ => return None,
        })
    }
}

impl fmt::Display for Priority {
    /// The `PRIORITY=` value: a single digit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u8())
    }
}

/// [`Priority::from_python_level`] as a number.
pub fn priority_from_python_level(levelno: i32) -> u8 {
    Priority::from_python_level(levelno).as_u8()
}

/// Whether journald accepts `name` as a field from a client.
pub fn is_valid_field_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_FIELD_NAME
        && !b[0].is_ascii_digit()
        && b[0] != b'_'
        && b.iter()
            .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
}

/// Turn an arbitrary key into a valid field name: ASCII letters are
/// uppercased, any other character not in `A-Z0-9_` becomes `_`, leading
/// underscores are dropped, a leading digit gets an `X` prefix, and the
/// result is cut to 64 characters. `None` if nothing is left.
/// `"request.id"` → `REQUEST_ID`, `"_private"` → `PRIVATE`, `"2fa"` → `X2FA`.
pub fn sanitize_field_name(key: &str) -> Option<String> {
    let mapped: String = key
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' | '_' => c,
            _ => '_',
        })
        .collect();
    let trimmed = mapped.trim_start_matches('_');
    if trimmed.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(trimmed.len() + 1);
    if trimmed.as_bytes()[0].is_ascii_digit() {
        out.push('X');
    }
    out.push_str(trimmed);
    out.truncate(MAX_FIELD_NAME);
    Some(out)
}

/// Append the native serialization of `fields` to `out`.
///
/// Fails with `InvalidInput` naming the first invalid field name (nothing
/// is sent then; `out` may hold a partial entry).
pub fn serialize<'a, I>(fields: I, out: &mut Vec<u8>) -> io::Result<()>
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    for (name, value) in fields {
        if !is_valid_field_name(name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "journal field name {name:?} is invalid (need 1-64 of A-Z 0-9 _, not starting with a digit or _)"
                ),
            ));
        }
        out.extend_from_slice(name.as_bytes());
        if value.contains(&b'\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    Ok(())
}

/// A structured journal entry: `MESSAGE`, `PRIORITY` and any other fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    fields: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// An entry with `MESSAGE=` and `PRIORITY=`.
    pub fn new(priority: Priority, message: impl AsRef<[u8]>) -> Entry {
        let mut e = Entry::default();
        e.push("MESSAGE", message);
        e.push("PRIORITY", priority.to_string());
        e
    }

    /// `SYSLOG_IDENTIFIER=` (what `journalctl -t` matches, e.g. `ferricorn`).
    pub fn identifier(self, id: &str) -> Entry {
        self.field("SYSLOG_IDENTIFIER", id)
    }

    /// `CODE_FILE=` and `CODE_LINE=` (for Python records: `pathname`, `lineno`).
    pub fn code(self, file: &str, line: u32) -> Entry {
        self.field("CODE_FILE", file)
            .field("CODE_LINE", line.to_string())
    }

    /// `CODE_FUNC=`.
    pub fn code_func(self, func: &str) -> Entry {
        self.field("CODE_FUNC", func)
    }

    /// Add a field (builder style). Names are checked when sent.
    pub fn field(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Entry {
        self.push(name, value);
        self
    }

    /// Add a field in place. A name may repeat; journald keeps every value.
    pub fn push(&mut self, name: impl Into<String>, value: impl AsRef<[u8]>) {
        self.fields.push((name.into(), value.as_ref().to_vec()));
    }

    /// The fields in order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The native serialization.
    pub fn serialize(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        serialize(self.fields(), &mut out)?;
        Ok(out)
    }
}

/// A handle on journald's native socket.
///
/// Holds one unbound datagram socket and sends each entry with `sendto`,
/// so a journald restart needs no reconnect. The socket is blocking, as in
/// libsystemd: if journald falls behind, logging waits for it, exactly as
/// writing to a journal-connected stderr would. The handle may be shared by
/// forked workers (each datagram is independent).
#[derive(Debug)]
pub struct Journal {
    sock: UnixDatagram,
    path: PathBuf,
    addr: SocketAddr,
}

impl Journal {
    /// Prepare to send to `path` (default [`DEFAULT_SOCKET`]).
    ///
    /// Fails when the path is not an existing socket, so callers can fall
    /// back to stderr when journald is not there.
    pub fn connect(path: Option<&Path>) -> io::Result<Journal> {
        let path = path.unwrap_or(Path::new(DEFAULT_SOCKET)).to_owned();
        let ctx = |e: io::Error| {
            io::Error::new(e.kind(), format!("journal socket {}: {e}", path.display()))
        };
        let meta = std::fs::metadata(&path).map_err(ctx)?;
        if !meta.file_type().is_socket() {
            return Err(ctx(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a socket",
            )));
        }
        let addr = SocketAddr::from_pathname(&path).map_err(ctx)?;
        let sock = UnixDatagram::unbound().map_err(ctx)?;
        // Best effort: a larger buffer lets bursts queue instead of block.
        let _ = setsockopt(&sock, sockopt::SndBuf, &SEND_BUFFER);
        Ok(Journal { sock, path, addr })
    }

    /// The socket path entries go to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Send one entry made of `fields`.
    pub fn send(&self, fields: &[(&str, &[u8])]) -> io::Result<()> {
        let mut buf = Vec::new();
        serialize(fields.iter().copied(), &mut buf)?;
        self.send_serialized(&buf)
    }

    /// Send an [`Entry`].
    pub fn send_entry(&self, entry: &Entry) -> io::Result<()> {
        self.send_serialized(&entry.serialize()?)
    }

    /// Send an already serialized entry: as one datagram, or through a
    /// memfd when it is larger than [`MAX_DATAGRAM`] or the kernel refuses
    /// the datagram (`EMSGSIZE`, `ENOBUFS`).
    pub fn send_serialized(&self, payload: &[u8]) -> io::Result<()> {
        if payload.len() <= MAX_DATAGRAM {
            match self.sock.send_to_addr(payload, &self.addr) {
                Ok(_) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMSGSIZE | libc::ENOBUFS)) => {}
                Err(e) => return Err(self.ctx("send", e)),
            }
        }
        self.send_memfd(payload)
    }

    fn ctx(&self, op: &str, e: io::Error) -> io::Error {
        io::Error::new(
            e.kind(),
            format!("journal {op} to {}: {e}", self.path.display()),
        )
    }

    fn send_memfd(&self, payload: &[u8]) -> io::Result<()> {
        let fd = memfd_create(
            c"ferricorn-journal",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|e| self.ctx("memfd_create", e.into()))?;
        let mut file = File::from(fd);
        file.write_all(payload)
            .map_err(|e| self.ctx("memfd write", e))?;
        // journald accepts a memfd from anyone only when it can no longer
        // change under it.
        fcntl(
            &file,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_WRITE
                    | SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(|e| self.ctx("memfd seal", e.into()))?;
        let fd: OwnedFd = file.into();
        let addr = UnixAddr::new(&self.path).map_err(|e| self.ctx("address", e.into()))?;
        let fds = [fd.as_raw_fd()];
        sendmsg(
            self.sock.as_raw_fd(),
            &[],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            Some(&addr),
        )
        .map_err(|e| self.ctx("send (memfd)", e.into()))?;
        Ok(())
    }
}

/// Whether a `JOURNAL_STREAM` value (`<st_dev>:<st_ino>`, decimal) names
/// the file with this device and inode.
pub fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    matches!((d.parse::<u64>(), i.parse::<u64>()), (Ok(d), Ok(i)) if d == dev && i == ino)
}

/// Whether `fd` is the stream `JOURNAL_STREAM` describes.
pub fn fd_is_journal_stream(fd: BorrowedFd<'_>, journal_stream: &str) -> bool {
    match nix::sys::stat::fstat(fd) {
        // st_dev/st_ino are not u64 on every target.
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => journal_stream_matches(journal_stream, st.st_dev as u64, st.st_ino as u64),
        Err(_) => false,
    }
}

/// Whether our stderr is connected to the journal (systemd sets
/// `JOURNAL_STREAM` for services whose stdout/stderr go there). When it is,
/// logging natively instead of to stderr loses nothing and gains fields;
/// when stderr was redirected elsewhere (the variable is inherited but the
/// fd no longer matches), keep writing to stderr.
pub fn stderr_is_journal() -> bool {
    match std::env::var("JOURNAL_STREAM") {
        Ok(v) => fd_is_journal_stream(io::stderr().as_fd(), &v),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{ControlMessageOwned, recvmsg};
    use std::io::{IoSliceMut, Read, Seek, SeekFrom};
    use std::os::fd::FromRawFd;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    fn temp_path(tag: &str) -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        std::env::temp_dir().join(format!(
            "ferricorn-journal-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Decode the native format back into fields; panics on malformed input.
    fn parse_native(mut b: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let end = b
                .iter()
                .position(|&c| c == b'\n' || c == b'=')
                .expect("field name not terminated");
            let name = std::str::from_utf8(&b[..end]).unwrap().to_owned();
            if b[end] == b'=' {
                let rest = &b[end + 1..];
                let nl = rest.iter().position(|&c| c == b'\n').expect("no newline");
                out.push((name, rest[..nl].to_vec()));
                b = &rest[nl + 1..];
            } else {
                let rest = &b[end + 1..];
                let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
                let value = rest[8..8 + len].to_vec();
                assert_eq!(rest[8 + len], b'\n', "binary field not closed by newline");
                out.push((name, value));
                b = &rest[8 + len + 1..];
            }
        }
        out
    }

    fn owned(fields: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect()
    }

    /// A fake journald: a datagram socket bound in the temp dir.
    struct Server {
        sock: UnixDatagram,
        path: PathBuf,
    }

    impl Server {
        fn new() -> Server {
            let path = temp_path("journal.sock");
            let sock = UnixDatagram::bind(&path).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            Server { sock, path }
        }

        fn journal(&self) -> Journal {
            Journal::connect(Some(&self.path)).unwrap()
        }

        /// Receive one entry: the datagram payload, or the content of the
        /// memfd passed with it (and whether it was a memfd).
        fn recv(&self) -> (Vec<u8>, bool) {
            let mut buf = vec![0u8; 1 << 20];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 2]);
            let (n, fds) = {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = recvmsg::<()>(
                    self.sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .unwrap();
                let mut fds = Vec::new();
                for c in msg.cmsgs().unwrap() {
                    if let ControlMessageOwned::ScmRights(v) = c {
                        fds.extend(v);
                    }
                }
                (msg.bytes, fds)
            };
            if fds.is_empty() {
                return (buf[..n].to_vec(), false);
            }
            assert_eq!(n, 0, "memfd datagram must carry no payload");
            assert_eq!(fds.len(), 1);
            let mut f = unsafe { File::from_raw_fd(fds[0]) };
            let seals = fcntl(&f, FcntlArg::F_GET_SEALS).unwrap();
            let want = SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SEAL;
            assert_eq!(seals & want.bits(), want.bits(), "memfd not sealed");
            // The file offset is shared with the sender, who left it at the end.
            f.seek(SeekFrom::Start(0)).unwrap();
            let mut content = Vec::new();
            f.read_to_end(&mut content).unwrap();
            (content, true)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    #[test]
    fn serializes_simple_and_binary_safe_fields() {
        let mut out = Vec::new();
        serialize(
            [
                ("MESSAGE", &b"hello"[..]),
                ("EMPTY", &b""[..]),
                ("TB", &b"a\nb"[..]),
            ],
            &mut out,
        )
        .unwrap();
        let mut want = b"MESSAGE=hello\nEMPTY=\nTB\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\n");
        assert_eq!(out, want);
    }

    #[test]
    fn field_name_rules() {
        for ok in ["MESSAGE", "A", "HTTP_STATUS", "X2", "A_B_", &"A".repeat(64)] {
            assert!(is_valid_field_name(ok), "{ok}");
        }
        for bad in [
            "",
            "message",
            "_PID",
            "2FA",
            "A-B",
            "A=B",
            "É",
            &"A".repeat(65),
        ] {
            assert!(!is_valid_field_name(bad), "{bad}");
        }
        let e = serialize([("bad", &b"x"[..])], &mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("\"bad\""));
    }

    #[test]
    fn sanitizes_field_names() {
        assert_eq!(
            sanitize_field_name("request.id").as_deref(),
            Some("REQUEST_ID")
        );
        assert_eq!(sanitize_field_name("_private").as_deref(), Some("PRIVATE"));
        assert_eq!(sanitize_field_name("2fa").as_deref(), Some("X2FA"));
        assert_eq!(sanitize_field_name("héllo").as_deref(), Some("H_LLO"));
        assert_eq!(sanitize_field_name("__"), None);
        assert_eq!(sanitize_field_name(""), None);
        let long = sanitize_field_name(&"a".repeat(100)).unwrap();
        assert_eq!(long.len(), 64);
        for k in ["request.id", "_private", "2fa", "héllo", "x y z", "9"] {
            assert!(is_valid_field_name(&sanitize_field_name(k).unwrap()), "{k}");
        }
    }

    #[test]
    fn python_levels_and_names() {
        assert_eq!(priority_from_python_level(50), 2);
        assert_eq!(priority_from_python_level(40), 3);
        assert_eq!(priority_from_python_level(30), 4);
        assert_eq!(priority_from_python_level(20), 6);
        assert_eq!(priority_from_python_level(10), 7);
        assert_eq!(priority_from_python_level(0), 7);
        assert_eq!(priority_from_python_level(60), 2);
        assert_eq!(priority_from_python_level(45), 3);
        assert_eq!(priority_from_python_level(25), 5);
        assert_eq!(priority_from_python_level(15), 6);
        assert_eq!(priority_from_python_level(5), 7);
        assert_eq!(priority_from_python_level(-3), 7);
        assert_eq!(
            Priority::from_level_name("WARNING"),
            Some(Priority::Warning)
        );
        assert_eq!(Priority::from_level_name("critical"), Some(Priority::Crit));
        assert_eq!(Priority::from_level_name("error"), Some(Priority::Err));
        assert_eq!(Priority::from_level_name("info"), Some(Priority::Info));
        assert_eq!(Priority::from_level_name("debug"), Some(Priority::Debug));
        assert_eq!(Priority::from_level_name("loud"), None);
        assert_eq!(Priority::Notice.to_string(), "5");
    }

    #[test]
    fn sends_short_entry() {
        let s = Server::new();
        let j = s.journal();
        let fields: &[(&str, &[u8])] = &[
            ("MESSAGE", b"GET /health 200"),
            ("PRIORITY", b"6"),
            ("HTTP_STATUS", b"200"),
        ];
        j.send(fields).unwrap();
        let (raw, memfd) = s.recv();
        assert!(!memfd);
        assert_eq!(
            raw,
            b"MESSAGE=GET /health 200\nPRIORITY=6\nHTTP_STATUS=200\n"
        );
        assert_eq!(parse_native(&raw), owned(fields));
    }

    #[test]
    fn sends_multiline_binary_safe_entry() {
        let s = Server::new();
        let j = s.journal();
        let tb = b"Traceback (most recent call last):\n  File \"app.py\", line 3\nZeroDivisionError: division by zero\n";
        let bin = [0u8, 1, b'\n', 255, b'=', 0];
        let fields: &[(&str, &[u8])] = &[
            ("MESSAGE", tb),
            ("PRIORITY", b"3"),
            ("BLOB", &bin),
            ("AFTER", b"x=y"),
        ];
        j.send(fields).unwrap();
        let (raw, memfd) = s.recv();
        assert!(!memfd);
        assert_eq!(parse_native(&raw), owned(fields));
    }

    #[test]
    fn entry_builder_fields() {
        let s = Server::new();
        let j = s.journal();
        let e = Entry::new(Priority::Warning, "worker 41 timed out")
            .identifier("ferricorn")
            .code("src/master/mod.rs", 120)
            .code_func("reap")
            .field("WORKER_PID", "41")
            .field("SIGNAL", "SIGKILL");
        j.send_entry(&e).unwrap();
        let (raw, _) = s.recv();
        assert_eq!(
            parse_native(&raw),
            owned(&[
                ("MESSAGE", b"worker 41 timed out"),
                ("PRIORITY", b"4"),
                ("SYSLOG_IDENTIFIER", b"ferricorn"),
                ("CODE_FILE", b"src/master/mod.rs"),
                ("CODE_LINE", b"120"),
                ("CODE_FUNC", b"reap"),
                ("WORKER_PID", b"41"),
                ("SIGNAL", b"SIGKILL"),
            ])
        );
        let bad = Entry::new(Priority::Info, "x").field("lower", "y");
        assert_eq!(
            j.send_entry(&bad).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn large_entry_goes_through_sealed_memfd() {
        let s = Server::new();
        let j = s.journal();
        // > 300 KiB, with newlines so it is binary-safe encoded too.
        let big: Vec<u8> = (0..310 * 1024)
            .map(|i| {
                if i % 100 == 99 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                }
            })
            .collect();
        let fields: &[(&str, &[u8])] = &[("MESSAGE", &big), ("PRIORITY", b"7")];
        j.send(fields).unwrap();
        let (raw, memfd) = s.recv();
        assert!(memfd, "a 310 KiB entry must use the memfd path");
        assert_eq!(parse_native(&raw), owned(fields));
    }

    #[test]
    fn emsgsize_falls_back_to_memfd() {
        let s = Server::new();
        let j = s.journal();
        // Shrink the send buffer so a 20 KiB datagram is refused (EMSGSIZE).
        setsockopt(&j.sock, sockopt::SndBuf, &4096).unwrap();
        let msg = vec![b'z'; 20 * 1024];
        let fields: &[(&str, &[u8])] = &[("MESSAGE", &msg)];
        j.send(fields).unwrap();
        let (raw, memfd) = s.recv();
        assert!(memfd, "EMSGSIZE must fall back to memfd");
        assert_eq!(parse_native(&raw), owned(fields));
    }

    #[test]
    fn connect_requires_a_socket() {
        let missing = temp_path("missing.sock");
        let e = Journal::connect(Some(&missing)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().starts_with("journal socket "), "{e}");

        let file = temp_path("plain-file");
        std::fs::write(&file, b"").unwrap();
        let e = Journal::connect(Some(&file)).unwrap_err();
        assert!(e.to_string().ends_with("not a socket"), "{e}");
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn send_error_has_context() {
        let s = Server::new();
        let j = s.journal();
        let path = s.path.clone();
        drop(s); // socket gone: sends fail with ENOENT/ECONNREFUSED
        let e = j.send(&[("MESSAGE", b"x")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("journal send to {}", path.display())),
            "{e}"
        );
    }

    #[test]
    fn journal_stream_matching() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(journal_stream_matches(" 8:12345\n", 8, 12345));
        assert!(!journal_stream_matches("8:12346", 8, 12345));
        assert!(!journal_stream_matches("9:12345", 8, 12345));
        assert!(!journal_stream_matches("812345", 8, 12345));
        assert!(!journal_stream_matches("a:b", 8, 12345));
        assert!(!journal_stream_matches("", 8, 12345));

        let p = temp_path("stream");
        let f = File::create(&p).unwrap();
        let st = nix::sys::stat::fstat(&f).unwrap();
        let value = format!("{}:{}", st.st_dev, st.st_ino);
        assert!(fd_is_journal_stream(f.as_fd(), &value));
        let other = File::open(std::env::temp_dir()).unwrap();
        assert!(!fd_is_journal_stream(other.as_fd(), &value));
        let _ = std::fs::remove_file(p);
    }
}
