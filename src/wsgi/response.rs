//! The application's side of a response: `start_response`, the `write()`
//! callable, `wsgi.file_wrapper`, and turning the returned iterable into
//! framed bytes (Content-Length, chunked, or close-delimited).
//!
//! Rules enforced here (PEP 3333, RFC 9110/9112):
//! - status and headers are native strings holding latin-1 only; a CR/LF or
//!   control byte, a bad status, or a malformed Content-Length makes the
//!   response a 500 before any byte is sent, never a split response;
//! - `start_response` a second time without `exc_info` is an error; with
//!   `exc_info` after headers went out, the exception is re-raised;
//! - hop-by-hop headers from the app are dropped (we frame ourselves);
//! - the result's `close()` is always called, whatever happened.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use pyo3::exceptions::{PyAssertionError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyIterator, PyList, PyString, PyTuple};

use crate::http::response::{
    is_hop_by_hop, parse_status, status_has_no_body, valid_header_name, valid_header_value,
};

/// Bytes of body gathered before we stop pulling from an iterator and let
/// the I/O loop send them (keeps memory per connection bounded).
pub const HIGH_WATER: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length { remaining: u64 },
    Chunked,
    Close,
    NoBody,
}

impl Framing {
    /// Append `data` framed; returns how many payload bytes were taken.
    pub fn frame(&mut self, data: &[u8], out: &mut Vec<u8>) -> u64 {
        match self {
            Framing::Length { remaining } => {
                let n = (*remaining).min(data.len() as u64);
                out.extend_from_slice(&data[..n as usize]);
                *remaining -= n;
                n
            }
            Framing::Chunked => {
                if !data.is_empty() {
                    use std::io::Write;
                    let _ = write!(out, "{:x}\r\n", data.len());
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                }
                data.len() as u64
            }
            Framing::Close => {
                out.extend_from_slice(data);
                data.len() as u64
            }
            Framing::NoBody => 0,
        }
    }

    /// Terminate the body; false if the framing could not be completed
    /// (fewer bytes than Content-Length promised), so the connection must
    /// close.
    pub fn finish(&self, out: &mut Vec<u8>) -> bool {
        match self {
            Framing::Chunked => {
                out.extend_from_slice(b"0\r\n\r\n");
                true
            }
            Framing::Length { remaining } => *remaining == 0,
            Framing::Close | Framing::NoBody => true,
        }
    }
}

/// What the worker tells us about the request being answered.
#[derive(Debug, Clone, Copy)]
pub struct ReqInfo {
    pub minor: u8,
    pub is_head: bool,
    /// The server is willing to keep the connection (client asked for it,
    /// and we are not draining).
    pub keep_alive: bool,
    /// The client socket, for `write()` calls that must flush.
    pub fd: RawFd,
}

#[derive(Default)]
struct SrState {
    status: Option<(u16, Vec<u8>)>,
    /// The app's headers, validated and serialized: `Name: value\r\n`...
    headers: Vec<u8>,
    content_length: Option<u64>,
    app_wants_close: bool,
    has_date: bool,
    has_server: bool,
    /// Set once the head has gone out (only `write()` can cause that
    /// before the app returns).
    committed: Option<Framing>,
    keep_alive: bool,
    /// Body bytes passed to `write()` and not yet flushed (unframed).
    written: Vec<u8>,
    body_bytes: u64,
    /// The app returned and the I/O loop now streams the rest: `write()`
    /// (called from inside the iterable) only queues, and `pump_iter`
    /// sends the queue in order with the iterable's items.
    handed_off: bool,
}

#[pyclass(module = "ferricorn", name = "StartResponse", frozen)]
pub struct StartResponse {
    req: ReqInfo,
    state: Mutex<SrState>,
}

fn latin1(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    let s = obj.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!("{what} must be a str, not {}", type_name(obj)))
    })?;
    // to_str borrows CPython's cached UTF-8 form: no copy for ASCII.
    let cow = s.to_str()?;
    if cow.is_ascii() {
        return Ok(cow.as_bytes().to_vec());
    }
    cow.chars()
        .map(|c| {
            u8::try_from(c as u32)
                .map_err(|_| PyValueError::new_err(format!("{what} {cow:?} is not latin-1")))
        })
        .collect()
}

/// Append a latin-1 native string's bytes to `out` (no intermediate Vec).
fn latin1_into(obj: &Bound<'_, PyAny>, what: &str, out: &mut Vec<u8>) -> PyResult<()> {
    let s = obj.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!("{what} must be a str, not {}", type_name(obj)))
    })?;
    let text = s.to_str()?;
    if text.is_ascii() {
        out.extend_from_slice(text.as_bytes());
        return Ok(());
    }
    for c in text.chars() {
        out.push(
            u8::try_from(c as u32)
                .map_err(|_| PyValueError::new_err(format!("{what} {text:?} is not latin-1")))?,
        );
    }
    Ok(())
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

impl StartResponse {
    pub fn new(req: ReqInfo) -> StartResponse {
        StartResponse {
            req,
            state: Mutex::new(SrState::default()),
        }
    }

    /// Choose framing and write the head into `out`. `known_len` is the
    /// full body length when the whole body is already in hand.
    fn commit(
        &self,
        st: &mut SrState,
        known_len: Option<u64>,
        out: &mut Vec<u8>,
    ) -> PyResult<Framing> {
        let (code, status) = st.status.clone().ok_or_else(|| {
            PyAssertionError::new_err("the application did not call start_response")
        })?;
        let mut add_length = None;
        let framing = if status_has_no_body(code, self.req.is_head) {
            if self.req.is_head
                && st.content_length.is_none()
                && code >= 200
                && code != 204
                && code != 304
            {
                add_length = known_len;
            }
            Framing::NoBody
        } else if let Some(cl) = st.content_length {
            Framing::Length { remaining: cl }
        } else if let Some(n) = known_len {
            add_length = Some(n);
            Framing::Length { remaining: n }
        } else if self.req.minor == 1 {
            Framing::Chunked
        } else {
            Framing::Close
        };
        let keep_alive = self.req.keep_alive && !st.app_wants_close && framing != Framing::Close;
        st.keep_alive = keep_alive;

        use std::io::Write;
        let _ = write!(out, "HTTP/1.{} ", self.req.minor);
        out.extend_from_slice(&status);
        out.extend_from_slice(b"\r\n");
        if !st.has_server {
            out.extend_from_slice(b"Server: ferricorn\r\n");
        }
        if !st.has_date {
            crate::http::response::with_date_line(|d| out.extend_from_slice(d));
        }
        out.extend_from_slice(&st.headers);
        if let Some(n) = add_length {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if self.req.minor == 0 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        st.committed = Some(framing);
        Ok(framing)
    }
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info = None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        let exc_info = exc_info.filter(|e| !e.is_none());
        {
            let mut st = this.state.lock().unwrap();
            if let Some(exc) = exc_info {
                if st.committed.is_some() {
                    // PEP 3333: headers already sent, so re-raise the error
                    // the app is trying to report.
                    let value = exc.get_item(1)?;
                    drop(st);
                    return Err(PyErr::from_value(value));
                }
            } else if st.status.is_some() {
                return Err(PyAssertionError::new_err(
                    "start_response called a second time without exc_info",
                ));
            }
            let mut status_b = latin1(status, "status")?;
            let code = parse_status(&status_b).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "invalid status {:?}: must be '<3 digits> <reason>' without control characters",
                    String::from_utf8_lossy(&status_b)
                ))
            })?;
            if code < 200 {
                // A WSGI app gives the final response; a 1xx sent as the
                // only answer would leave the client waiting for the real
                // one (and taking the next response on the connection).
                return Err(PyValueError::new_err(format!(
                    "invalid status {:?}: a 1xx status is not a final response",
                    String::from_utf8_lossy(&status_b)
                )));
            }
            if status_b.len() == 3 {
                // RFC 9112 §4: the SP before an (empty) reason is required.
                status_b.push(b' ');
            }
            let mut new = SrState {
                status: Some((code, status_b)),
                ..SrState::default()
            };
            let list = headers.cast::<PyList>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "headers must be a list, not {}",
                    type_name(headers)
                ))
            })?;
            for item in list.iter() {
                let t = item.cast::<PyTuple>().map_err(|_| {
                    PyTypeError::new_err(format!(
                        "each header must be a (name, value) tuple, not {}",
                        type_name(&item)
                    ))
                })?;
                if t.len() != 2 {
                    return Err(PyTypeError::new_err(
                        "each header must be a (name, value) tuple",
                    ));
                }
                let block = &mut new.headers;
                let start = block.len();
                latin1_into(&t.get_item(0)?, "header name", block)?;
                let name_end = block.len();
                block.extend_from_slice(b": ");
                latin1_into(&t.get_item(1)?, "header value", block)?;
                let (name, value) = (&block[start..name_end], &block[name_end + 2..]);
                if !valid_header_name(name) {
                    return Err(PyValueError::new_err(format!(
                        "invalid header name {:?}",
                        String::from_utf8_lossy(name)
                    )));
                }
                if !valid_header_value(value) {
                    return Err(PyValueError::new_err(format!(
                        "invalid value for header {:?}: control characters (CR/LF) are not allowed",
                        String::from_utf8_lossy(name)
                    )));
                }
                let mut keep = true;
                if is_hop_by_hop(name) {
                    if name.eq_ignore_ascii_case(b"connection")
                        && value
                            .split(|&b| b == b',')
                            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
                    {
                        new.app_wants_close = true;
                    }
                    keep = false;
                } else if name.eq_ignore_ascii_case(b"content-length") {
                    let v = value.trim_ascii();
                    let n = (!v.is_empty() && v.iter().all(u8::is_ascii_digit))
                        .then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                        .flatten()
                        .ok_or_else(|| {
                            PyValueError::new_err(format!(
                                "invalid Content-Length {:?}",
                                String::from_utf8_lossy(value)
                            ))
                        })?;
                    if new.content_length.is_some_and(|c| c != n) {
                        return Err(PyValueError::new_err("conflicting Content-Length headers"));
                    }
                    keep = new.content_length.is_none();
                    new.content_length = Some(n);
                } else if name.eq_ignore_ascii_case(b"date") {
                    new.has_date = true;
                } else if name.eq_ignore_ascii_case(b"server") {
                    new.has_server = true;
                }
                if keep {
                    new.headers.extend_from_slice(b"\r\n");
                } else {
                    new.headers.truncate(start);
                }
            }
            // Keep what write() produced before an exc_info restart? PEP
            // 3333 says nothing was sent, so nothing is kept.
            *st = new;
        }
        slf.getattr(pyo3::intern!(slf.py(), "write"))
    }

    /// The legacy `write()` callable: body bytes the app pushes imperatively.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = data.cast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!(
                "write() argument must be bytes, not {}",
                type_name(data)
            ))
        })?;
        let mut st = self.state.lock().unwrap();
        if st.status.is_none() {
            return Err(PyAssertionError::new_err("write() before start_response"));
        }
        st.written.extend_from_slice(data.as_bytes());
        if st.written.len() < HIGH_WATER || st.handed_off {
            return Ok(());
        }
        // Too much to hold: send the head (if not yet) and what we have.
        let mut out = Vec::with_capacity(st.written.len() + 512);
        let mut framing = match st.committed {
            Some(f) => f,
            None => self.commit(&mut st, None, &mut out)?,
        };
        let pending = std::mem::take(&mut st.written);
        st.body_bytes += framing.frame(&pending, &mut out);
        st.committed = Some(framing);
        let fd = self.req.fd;
        drop(st);
        py.detach(|| blocking_send(fd, &out)).map_err(|e| {
            pyo3::exceptions::PyOSError::new_err(format!("client connection lost: {e}"))
        })
    }
}

/// Send all of `data`, waiting (with the GIL released by the caller) while
/// the socket is full. Only `write()` uses this; iterables never block.
pub fn blocking_send(fd: RawFd, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        // SAFETY: send(2) on a socket fd the worker owns for this request.
        let n = unsafe {
            libc::send(
                fd,
                data.as_ptr() as *const _,
                data.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            data = &data[n as usize..];
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: poll on one valid pollfd.
                let r = unsafe { libc::poll(&mut p, 1, 30_000) };
                if r == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "client stopped reading",
                    ));
                }
            }
            Some(libc::EINTR) => {}
            _ => return Err(e),
        }
    }
    Ok(())
}

/// `wsgi.file_wrapper`: iterates a file-like object in blocks, and lets
/// the worker `sendfile(2)` it when it has a real file descriptor.
#[pyclass(module = "ferricorn", name = "FileWrapper", frozen)]
pub struct FileWrapper {
    filelike: Py<PyAny>,
    blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize = 8192))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> FileWrapper {
        FileWrapper {
            filelike,
            blksize: blksize.max(1),
        }
    }
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1("read", (self.blksize,))?;
        if data.len()? == 0 {
            return Ok(None);
        }
        Ok(Some(data))
    }
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr("close")? {
            f.call_method0("close")?;
        }
        Ok(())
    }
}

/// The rest of a response body, sent by the I/O loop as the socket drains.
pub enum Stream {
    Iter {
        iter: Py<PyIterator>,
        result: Py<PyAny>,
        framing: Framing,
        /// For `write()` calls made from inside the iterable.
        sr: Option<Py<StartResponse>>,
    },
    File {
        file: OwnedFd,
        offset: i64,
        remaining: u64,
        result: Py<PyAny>,
    },
}

/// The outcome of one application call.
pub struct Outcome {
    pub status: u16,
    pub keep_alive: bool,
    pub body_bytes: u64,
    pub stream: Option<Stream>,
    /// Response headers as sent, `Name: value\r\n`... (for the access log).
    pub headers: Vec<u8>,
}

/// Log a Python exception with its traceback to the error log.
pub fn log_py_error(py: Python<'_>, err: &PyErr, context: &str) {
    let tb = super::format_py_err(py, err);
    crate::log::error(&format!("{context}\n{}", tb.trim_end()));
}

pub fn close_result(py: Python<'_>, result: &Bound<'_, PyAny>) {
    // Lists and tuples (the common case) have no close(); asking would
    // raise and format an AttributeError on every request.
    if result.is_exact_instance_of::<PyList>() || result.is_exact_instance_of::<PyTuple>() {
        return;
    }
    match result.getattr(pyo3::intern!(py, "close")) {
        Ok(close) => {
            if let Err(e) = close.call0() {
                log_py_error(py, &e, "Error in the application's close()");
            }
        }
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => {}
        Err(e) => log_py_error(py, &e, "Error looking up close()"),
    }
}

fn internal_error(minor: u8, out: &mut Vec<u8>, start: usize) -> Outcome {
    out.truncate(start);
    out.extend_from_slice(&crate::http::response::error_response(500, minor));
    Outcome {
        status: 500,
        keep_alive: false,
        body_bytes: 0,
        stream: None,
        headers: Vec::new(),
    }
}

fn file_of(result: &Bound<'_, PyAny>) -> Option<(OwnedFd, i64, u64)> {
    let fw = result.cast::<FileWrapper>().ok()?;
    let filelike = fw.get().filelike.bind(result.py());
    let fd: RawFd = filelike.call_method0("fileno").ok()?.extract().ok()?;
    // SAFETY: fstat/lseek/dup on an fd the file object reports as its own.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 || (st.st_mode & libc::S_IFMT) != libc::S_IFREG {
            return None;
        }
        // Where Python's buffered reader stands (it may have read ahead).
        let pos: i64 = match filelike.call_method0("tell").and_then(|p| p.extract()) {
            Ok(p) => p,
            Err(_) => libc::lseek(fd, 0, libc::SEEK_CUR),
        };
        let dup = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0);
        if dup < 0 || pos < 0 {
            return None;
        }
        let size = (st.st_size as i64 - pos).max(0) as u64;
        Some((OwnedFd::from_raw_fd(dup), pos, size))
    }
}

/// Call the app and frame its response into `out` (head + as much body as
/// is at hand). The GIL is held by the caller.
pub fn run_app(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    environ: Bound<'_, PyAny>,
    req: ReqInfo,
    out: &mut Vec<u8>,
) -> Outcome {
    let start = out.len();
    let sr = match Bound::new(py, StartResponse::new(req)) {
        Ok(sr) => sr,
        Err(e) => {
            log_py_error(py, &e, "Error creating start_response");
            return internal_error(req.minor, out, start);
        }
    };
    let result = match app.call1((environ, &sr)) {
        Ok(r) => r,
        Err(e) => {
            log_py_error(py, &e, "Error handling request");
            return fail_before_or_after_head(sr.get(), req, out, start);
        }
    };
    let mut outcome = frame_result(py, sr.get(), &result, req, out, start);
    if let Some(Stream::Iter { sr: slot, .. }) = &mut outcome.stream {
        sr.get().state.lock().unwrap().handed_off = true;
        *slot = Some(sr.unbind());
    }
    if !matches!(outcome.stream, Some(_)) {
        close_result(py, &result);
    }
    outcome
}

/// An error once the app ran: a 500 if nothing was sent yet, otherwise the
/// connection can only be closed.
fn fail_before_or_after_head(
    sr: &StartResponse,
    req: ReqInfo,
    out: &mut Vec<u8>,
    start: usize,
) -> Outcome {
    let st = sr.state.lock().unwrap();
    if st.committed.is_some() {
        out.truncate(start);
        let status = st.status.as_ref().map(|s| s.0).unwrap_or(500);
        return Outcome {
            status,
            keep_alive: false,
            body_bytes: st.body_bytes,
            stream: None,
            headers: Vec::new(),
        };
    }
    drop(st);
    internal_error(req.minor, out, start)
}

fn frame_result(
    py: Python<'_>,
    sr: &StartResponse,
    result: &Bound<'_, PyAny>,
    req: ReqInfo,
    out: &mut Vec<u8>,
    start: usize,
) -> Outcome {
    // 1. A file with a real descriptor: sendfile from the I/O loop. For
    // HEAD (and 204/304) only the head goes out, with the length GET
    // would have, and the file is never read.
    if let Some((file, offset, size)) = file_of(result) {
        let mut st = sr.state.lock().unwrap();
        if st.committed.is_none() && st.written.is_empty() && st.status.is_some() {
            let len = st.content_length.map(|c| c.min(size)).unwrap_or(size);
            let declared = st.content_length;
            return match sr.commit(&mut st, Some(len), out) {
                Ok(framing) => Outcome {
                    status: st.status.as_ref().unwrap().0,
                    // A file shorter than its declared length cannot
                    // complete the framing: close after it.
                    keep_alive: st.keep_alive
                        && (framing == Framing::NoBody || declared.is_none_or(|c| c <= size)),
                    body_bytes: 0,
                    stream: (framing != Framing::NoBody).then(|| Stream::File {
                        file,
                        offset,
                        remaining: len,
                        result: result.clone().unbind(),
                    }),
                    headers: std::mem::take(&mut st.headers),
                },
                Err(e) => {
                    drop(st);
                    log_py_error(py, &e, "Error in response");
                    internal_error(req.minor, out, start)
                }
            };
        }
    }

    // 2. Gather body bytes: a list/tuple whole, an iterator up to HIGH_WATER.
    let mut body: Vec<u8> = Vec::new();
    let mut iter: Option<Bound<'_, PyIterator>> = None;
    let gathered = (|| -> PyResult<()> {
        let push = |item: Bound<'_, PyAny>, body: &mut Vec<u8>| -> PyResult<()> {
            let b = item.cast::<PyBytes>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "the response iterable must yield bytes, not {}",
                    type_name(&item)
                ))
            })?;
            body.extend_from_slice(b.as_bytes());
            Ok(())
        };
        if let Ok(list) = result.cast::<PyList>() {
            for item in list.iter() {
                push(item, &mut body)?;
            }
        } else if let Ok(t) = result.cast::<PyTuple>() {
            for item in t.iter() {
                push(item, &mut body)?;
            }
        } else {
            let mut it = result.try_iter()?;
            loop {
                match it.next() {
                    Some(item) => push(item?, &mut body)?,
                    None => break,
                }
                if body.len() >= HIGH_WATER {
                    iter = Some(it);
                    break;
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = gathered {
        log_py_error(py, &e, "Error handling request");
        return fail_before_or_after_head(sr, req, out, start);
    }

    // 3. Frame it.
    let mut st = sr.state.lock().unwrap();
    let complete = iter.is_none();
    let written = std::mem::take(&mut st.written);
    let mut framing = match st.committed {
        Some(f) => f,
        None => {
            let known = complete.then(|| (written.len() + body.len()) as u64);
            match sr.commit(&mut st, known, out) {
                Ok(f) => f,
                Err(e) => {
                    drop(st);
                    log_py_error(py, &e, "Error in response");
                    return internal_error(req.minor, out, start);
                }
            }
        }
    };
    let mut sent = st.body_bytes;
    sent += framing.frame(&written, out);
    sent += framing.frame(&body, out);
    let mut keep_alive = st.keep_alive;
    let status = st.status.as_ref().map(|s| s.0).unwrap_or(500);
    let headers = std::mem::take(&mut st.headers);
    drop(st);
    let stream = match iter {
        Some(it) => Some(Stream::Iter {
            iter: it.unbind(),
            result: result.clone().unbind(),
            framing,
            sr: None,
        }),
        None => {
            if !framing.finish(out) {
                keep_alive = false;
            }
            None
        }
    };
    Outcome {
        status,
        keep_alive,
        body_bytes: sent,
        stream,
        headers,
    }
}

/// Pull more of a streaming iterator into `out` (GIL held). Returns
/// `Ok(true)` when the body is complete, `Ok(false)` when there is more, and
/// `Err(())` when the response must be cut off (app error, short body).
pub fn pump_iter(
    py: Python<'_>,
    iter: &Py<PyIterator>,
    sr: &Option<Py<StartResponse>>,
    framing: &mut Framing,
    out: &mut Vec<u8>,
    sent: &mut u64,
) -> Result<bool, ()> {
    // PyIter_Next: no StopIteration object is created at the end.
    let mut it = iter.bind(py).clone();
    let start = out.len();
    loop {
        let next = it.next();
        // What the app passed to write() during that step goes first.
        if let Some(sr) = sr {
            let mut st = sr.get().state.lock().unwrap();
            if !st.written.is_empty() {
                let w = std::mem::take(&mut st.written);
                drop(st);
                *sent += framing.frame(&w, out);
            }
        }
        match next {
            None => {
                return if framing.finish(out) {
                    Ok(true)
                } else {
                    Err(())
                };
            }
            Some(Ok(item)) => match item.cast::<PyBytes>() {
                Ok(b) => {
                    *sent += framing.frame(b.as_bytes(), out);
                    if out.len() - start >= HIGH_WATER {
                        return Ok(false);
                    }
                }
                Err(_) => {
                    let e = PyTypeError::new_err(format!(
                        "the response iterable must yield bytes, not {}",
                        type_name(&item)
                    ));
                    log_py_error(py, &e, "Error in response iterable");
                    return Err(());
                }
            },
            Some(Err(e)) => {
                log_py_error(py, &e, "Error in response iterable");
                return Err(());
            }
        }
    }
}

/// sendfile(2) as much of a file body as the socket takes. Returns
/// Ok(true) when done, Ok(false) when the socket is full.
pub fn pump_file(
    sock: RawFd,
    file: &OwnedFd,
    offset: &mut i64,
    remaining: &mut u64,
    sent: &mut u64,
) -> std::io::Result<bool> {
    while *remaining > 0 {
        let want = (*remaining).min(1 << 20) as usize;
        // SAFETY: sendfile between two fds we own; offset is ours.
        let n = unsafe { libc::sendfile(sock, file.as_raw_fd(), offset, want) };
        if n > 0 {
            *remaining -= n as u64;
            *sent += n as u64;
            continue;
        }
        if n == 0 {
            // The file shrank under us: the framing cannot be completed.
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file shorter than announced",
            ));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
    Ok(true)
}
