//! One client connection: its buffers and where it stands in the
//! request/response cycle.
//!
//! The connection is registered once with epoll, edge-triggered for both
//! directions, so serving a keep-alive request costs one `recv` and one
//! `send` and no `epoll_ctl`. `readable`/`writable` remember the last edge:
//! they are cleared when the kernel says EAGAIN (or a read comes back short)
//! and set again by the next event.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::http::RequestHead;
use crate::http::chunked::ChunkedDecoder;
use crate::wsgi::environ::Peer;
use crate::wsgi::input::BodySink;
use crate::wsgi::response::Stream;

pub const READ_CHUNK: usize = 16 * 1024;

pub enum BodyReader {
    Length(u64),
    Chunked(ChunkedDecoder),
}

pub struct BodyState {
    pub head: RequestHead,
    pub reader: BodyReader,
    pub sink: BodySink,
}

pub struct Responding {
    /// The body still to pull, or (`stream_done`) pulled to its end, kept
    /// until the response is out and its close() is due.
    pub stream: Option<Stream>,
    pub stream_done: bool,
    pub keep_alive: bool,
    /// Close with a lingering read-drain (after an error answer, the client
    /// may still be sending; an abrupt close would RST our answer away).
    pub linger: bool,
    /// Kept only while the access log is on.
    pub log: Option<Box<AccessInfo>>,
    pub sent: u64,
    pub status: u16,
    /// Frees the request body when the response is over (dropped with
    /// this state: finished, cut off, or the connection closed), after the
    /// stream, which may still read `wsgi.input`, was released.
    pub _body: Option<crate::wsgi::input::BodyRelease>,
    /// Gunicorn's post_request hook, due when the response is over (run by
    /// `run_post_request`, or when this state is dropped: the connection
    /// ended first). Last, so it runs after the fields above are released.
    pub post_request: Option<Box<crate::wsgi::hooks::PostRequest>>,
}

impl Responding {
    /// The response is over: run post_request now, with what was sent.
    pub fn run_post_request(&mut self) {
        if let Some(mut p) = self.post_request.take() {
            p.sent = self.sent;
            p.status = self.status;
            drop(p);
        }
    }
}

pub struct AccessInfo {
    pub head: RequestHead,
    pub started: std::time::Instant,
    pub headers: Vec<u8>,
    pub request_id: u64,
    /// Environ values the access log format asks for (`%({key}e)s`).
    pub env: Vec<Option<String>>,
}

pub enum Phase {
    /// Waiting for (or parsing) the next request head.
    Idle,
    /// Reading a request body before the app is called.
    Body(Box<BodyState>),
    /// Sending a response (and maybe pulling more of it from the app).
    Respond(Responding),
    /// Our side is shut down; discard input until EOF or the deadline.
    Linger { until_ms: u64 },
}

pub struct Conn {
    pub fd: OwnedFd,
    pub peer: Peer,
    pub listener: usize,
    pub rbuf: Vec<u8>,
    pub rpos: usize,
    pub wbuf: Vec<u8>,
    pub wpos: usize,
    pub readable: bool,
    pub writable: bool,
    /// epoll reported the peer's FIN (EPOLLRDHUP). A short read then does
    /// not mean "wait for the next edge": the FIN came with the data's edge
    /// and no other edge will follow, so keep reading until recv says 0.
    pub rdhup: bool,
    pub eof: bool,
    pub phase: Phase,
    pub last_active_ms: u64,
    /// When the first byte of what is now in the read buffer arrived (it
    /// was empty before): the start of a request head still coming in.
    pub head_started_ms: u64,
    pub requests: u64,
    /// `--proxy-protocol`: the first bytes may be a PROXY header.
    pub proxy_pending: bool,
}

pub enum Io {
    /// Made progress, or nothing to do.
    Ok,
    /// The kernel has no more for us (or no room): wait for the next edge.
    Blocked,
    /// Peer closed or the connection failed.
    Closed,
}

impl Conn {
    pub fn new(fd: OwnedFd, peer: Peer, listener: usize, now: u64) -> Conn {
        Conn {
            fd,
            peer,
            listener,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            wpos: 0,
            readable: true,
            writable: true,
            rdhup: false,
            eof: false,
            phase: Phase::Idle,
            last_active_ms: now,
            head_started_ms: now,
            requests: 0,
            proxy_pending: false,
        }
    }

    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    pub fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    pub fn consume(&mut self, n: usize) {
        self.rpos += n;
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
    }

    /// One `recv` into the read buffer.
    pub fn read_some(&mut self, now: u64) -> Io {
        if self.eof {
            return Io::Closed;
        }
        if !self.readable {
            return Io::Blocked;
        }
        if self.rpos > 0 && self.rpos * 2 >= self.rbuf.len() {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(READ_CHUNK.max(self.rbuf.len()));
        }
        let was_empty = self.rpos == self.rbuf.len();
        let mut buf = std::mem::take(&mut self.rbuf);
        let io = self.recv_into(&mut buf, usize::MAX, now);
        self.rbuf = buf;
        if was_empty && self.rpos < self.rbuf.len() {
            self.head_started_ms = now;
        }
        io
    }

    /// One `recv` of at most `max` bytes into `dst`'s spare capacity
    /// (which the caller reserved). A request body goes straight into its
    /// buffer this way, not through the read buffer and a copy.
    pub fn recv_into(&mut self, dst: &mut Vec<u8>, max: usize, now: u64) -> Io {
        if self.eof {
            return Io::Closed;
        }
        if !self.readable {
            return Io::Blocked;
        }
        let spare = (dst.capacity() - dst.len()).min(max);
        let len = dst.len();
        // SAFETY: recv writes at most `spare` bytes into the vector's
        // reserved, uninitialised tail; we then extend len by what it wrote.
        let n = unsafe {
            libc::recv(
                self.raw(),
                dst.as_mut_ptr().add(len) as *mut libc::c_void,
                spare,
                0,
            )
        };
        if n > 0 {
            let n = n as usize;
            // SAFETY: the kernel initialised n bytes.
            unsafe { dst.set_len(len + n) };
            if n < spare && !self.rdhup {
                // A short read drained the socket; the next arrival raises
                // a new edge (see module docs).
                self.readable = false;
            }
            self.last_active_ms = now;
            return Io::Ok;
        }
        if n == 0 {
            if spare == 0 {
                return Io::Ok;
            }
            self.eof = true;
            return Io::Closed;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => {
                self.readable = false;
                Io::Blocked
            }
            Some(libc::EINTR) => Io::Ok,
            _ => Io::Closed,
        }
    }

    /// Send as much of the write buffer as the socket takes.
    pub fn flush(&mut self, now: u64) -> Io {
        while self.wpos < self.wbuf.len() {
            if !self.writable {
                return Io::Blocked;
            }
            let data = &self.wbuf[self.wpos..];
            // SAFETY: send(2) from our buffer; MSG_NOSIGNAL so a closed peer
            // is an EPIPE error, not a SIGPIPE.
            let n = unsafe {
                libc::send(
                    self.raw(),
                    data.as_ptr() as *const libc::c_void,
                    data.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                self.wpos += n as usize;
                self.last_active_ms = now;
                if (n as usize) < data.len() {
                    self.writable = false;
                }
                continue;
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) => {
                    self.writable = false;
                    return Io::Blocked;
                }
                Some(libc::EINTR) => {}
                _ => return Io::Closed,
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        if self.wbuf.capacity() > 1 << 20 {
            self.wbuf.shrink_to(64 * 1024);
        }
        Io::Ok
    }
}
