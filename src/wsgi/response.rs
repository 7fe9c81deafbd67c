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

use std::cell::UnsafeCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::null_mut;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};

use pyo3::exceptions::{PyAssertionError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyIterator, PyList, PyString, PyTuple};

use crate::http::request::trim_ows;
use crate::http::response::{
    is_hop_by_hop, parse_status, status_has_no_body, valid_header_name, valid_header_value,
};

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
        if let Some(n) = self.take_plain(data.len()) {
            out.extend_from_slice(&data[..n]);
            return n as u64;
        }
        match self {
            Framing::Chunked => {
                if !data.is_empty() {
                    use std::io::Write;
                    let _ = write!(out, "{:x}\r\n", data.len());
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                }
                data.len() as u64
            }
            // Length and Close were taken by take_plain above.
            Framing::Length { .. } | Framing::Close | Framing::NoBody => 0,
        }
    }

    /// For a block the framing sends as it is (Content-Length or close
    /// delimited): count it and say how much of it may go (Content-Length
    /// cuts the excess). None when the framing adds bytes (chunked) or
    /// there is no body. `frame` and the direct send in `pump_iter` both
    /// count through here.
    pub fn take_plain(&mut self, len: usize) -> Option<usize> {
        match self {
            Framing::Length { remaining } => {
                let n = (*remaining).min(len as u64);
                *remaining -= n;
                Some(n as usize)
            }
            Framing::Close => Some(len),
            Framing::Chunked | Framing::NoBody => None,
        }
    }

    /// Terminate the body; false if the framing could not be completed
    /// (fewer bytes than Content-Length promised), so the connection must
    /// close. PEP 3333 asks for that to be logged too: it is, here.
    pub fn finish(&self, out: &mut Vec<u8>) -> bool {
        match self {
            Framing::Chunked => {
                out.extend_from_slice(b"0\r\n\r\n");
                true
            }
            Framing::Length { remaining: 0 } => true,
            Framing::Length { remaining } => {
                crate::log::warning(&format!(
                    "response body {remaining} bytes shorter than its Content-Length; \
                     closing the connection"
                ));
                false
            }
            Framing::Close | Framing::NoBody => true,
        }
    }

    /// The declared Content-Length has all been sent: PEP 3333's server
    /// "should stop iterating over the response" then.
    pub fn is_full(&self) -> bool {
        matches!(self, Framing::Length { remaining: 0 })
    }
}

/// What the worker tells us about the request being answered.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReqInfo {
    pub minor: u8,
    pub is_head: bool,
    /// A CONNECT request: a 2xx answer to it switches the connection to a
    /// tunnel, which a WSGI server cannot carry.
    pub is_connect: bool,
    /// The server is willing to keep the connection (client asked for it,
    /// and we are not draining).
    pub keep_alive: bool,
    /// The client socket, for `write()` calls that must flush.
    pub fd: RawFd,
    /// Hand the response headers back in `Outcome::headers` (access log).
    pub want_headers: bool,
    /// Set when the worker is told to stop (TERM) while the app runs: the
    /// head then says `Connection: close`, as the connection will close.
    pub stopping: Option<&'static std::sync::atomic::AtomicBool>,
}

/// One request's response state. Its buffers keep their capacity when a
/// `Responder` is reused, so a request allocates nothing here.
#[derive(Default)]
struct SrState {
    req: ReqInfo,
    /// 0 until `start_response` succeeded, then the status code.
    code: u16,
    /// `start_response` was called, whether or not it succeeded: PEP 3333
    /// makes a second call without exc_info an error "even if the first
    /// call raised".
    called: bool,
    /// The status as sent after "HTTP/1.x " (`200 OK`), validated.
    status: Vec<u8>,
    /// The app's headers, validated and serialized: `Name: value\r\n`...
    headers: Vec<u8>,
    content_length: Option<u64>,
    app_wants_close: bool,
    has_date: bool,
    has_server: bool,
    /// Set once the head has gone out (only `write()` can cause that
    /// before the app returns).
    committed: Option<Framing>,
    /// PEP 3333's "headers sent": the app called write() or its iterable
    /// yielded a non-empty block. From here on start_response(exc_info)
    /// re-raises instead of replacing the head.
    body_started: bool,
    keep_alive: bool,
    /// Body bytes passed to `write()` and not yet flushed (unframed).
    written: Vec<u8>,
    body_bytes: u64,
    /// The app returned and the I/O loop now streams the rest: `write()`
    /// (called from inside the iterable) only queues, and `pump_iter`
    /// sends the queue in order with the iterable's items.
    handed_off: bool,
    /// Kept across requests (not cleared by `reset`). Boxed so that
    /// `set_head` can take it out and put it back cheaply.
    seen: Option<Box<Seen>>,
}

impl SrState {
    /// Forget the previous request, keeping the buffers' capacity.
    fn reset(&mut self, req: ReqInfo) {
        self.req = req;
        self.clear_head();
        self.called = false;
        self.committed = None;
        self.body_started = false;
        self.keep_alive = false;
        self.written.clear();
        self.body_bytes = 0;
        self.handed_off = false;
    }

    /// Forget what `start_response` recorded.
    fn clear_head(&mut self) {
        self.code = 0;
        self.status.clear();
        self.headers.clear();
        self.content_length = None;
        self.app_wants_close = false;
        self.has_date = false;
        self.has_server = false;
    }
}

/// The object behind one request's `start_response` and `write`
/// callables (they are builtin functions bound to it, see `Responder`).
#[pyclass(module = "ferricorn", name = "StartResponse", frozen)]
pub struct StartResponse {
    state: Mutex<SrState>,
    /// Our `write` callable while a `Responder` holds both (a borrowed
    /// pointer: the responder owns the reference, and clears this before
    /// it lets go). Null otherwise: `start_response` then makes a new one.
    write: AtomicPtr<ffi::PyObject>,
    /// The response is over (framed whole, or its iterable finished): a
    /// `write()` kept by the app past its request must not reach the
    /// socket, which may by then carry another request or, once closed,
    /// be another client's under the same fd number. An atomic beside the
    /// state rather than in it: setting it costs no lock per request.
    ended: AtomicBool,
}

/// `start_response` and `write` as builtin functions (`PyCFunction`s)
/// bound to a `StartResponse`: CPython calls them by vectorcall with the
/// arguments in place, no tuple, no pyo3 argument parsing.
struct MethodDefs(UnsafeCell<[ffi::PyMethodDef; 2]>);
// SAFETY: written only by the static initializer; CPython only reads it.
unsafe impl Sync for MethodDefs {}

static METHODS: MethodDefs = MethodDefs(UnsafeCell::new([
    ffi::PyMethodDef {
        ml_name: c"start_response".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: start_response_vectorcall,
        },
        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: c"start_response(status, headers, exc_info=None) (PEP 3333)".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"write".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: write_meth_o,
        },
        ml_flags: ffi::METH_O,
        ml_doc: c"write(data): the legacy imperative body (PEP 3333)".as_ptr(),
    },
]));

/// A builtin function for `METHODS[i]` bound to `sr`.
fn bound_method<'py>(sr: &Bound<'py, StartResponse>, i: usize) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: METHODS is 'static and never moves; PyCFunction_NewEx takes
    // a new reference to `sr` and returns a new reference or NULL.
    unsafe {
        let def = (METHODS.0.get() as *mut ffi::PyMethodDef).add(i);
        Bound::from_owned_ptr_or_err(
            sr.py(),
            ffi::PyCFunction_NewEx(def, sr.as_ptr(), null_mut()),
        )
    }
}

/// The three objects the app sees of a response, kept by the I/O loop and
/// reused for the next request when nobody else holds on to any of them
/// (the common case): a request then creates no Python objects here.
pub struct Responder {
    sr: Py<StartResponse>,
    start_response: Py<PyAny>,
    write: Py<PyAny>,
}

impl Responder {
    fn new(py: Python<'_>) -> PyResult<Responder> {
        let sr = Bound::new(
            py,
            StartResponse {
                state: Mutex::new(SrState::default()),
                write: AtomicPtr::new(null_mut()),
                ended: AtomicBool::new(false),
            },
        )?;
        let start_response = bound_method(&sr, 0)?.unbind();
        let write = bound_method(&sr, 1)?.unbind();
        sr.get().write.store(write.as_ptr(), Ordering::Relaxed);
        Ok(Responder {
            sr: sr.unbind(),
            start_response,
            write,
        })
    }

    /// Whether only this responder references its objects (the two
    /// functions each hold one reference to the StartResponse).
    fn unshared(&self) -> bool {
        // SAFETY: reading the reference counts of live objects (GIL held).
        unsafe {
            ffi::Py_REFCNT(self.sr.as_ptr()) == 3
                && ffi::Py_REFCNT(self.start_response.as_ptr()) == 1
                && ffi::Py_REFCNT(self.write.as_ptr()) == 1
        }
    }

    /// Let go of the objects (someone else still uses them).
    fn release(self) {
        self.sr.get().write.store(null_mut(), Ordering::Relaxed);
    }
}

/// The latin-1 bytes of a native string, borrowed from the str object: a
/// str whose characters all fit in one byte stores exactly those bytes
/// (PEP 393), so nothing is decoded or copied. `Ok(None)` for a str with
/// a character past U+00FF.
#[inline]
fn latin1_of<'a>(obj: &'a Bound<'_, PyAny>, what: &str) -> PyResult<Option<&'a [u8]>> {
    let p = obj.as_ptr();
    // SAFETY: type checks and PEP 393 accessors on a live object; the
    // returned slice borrows the (immutable) str that `obj` keeps alive.
    unsafe {
        if ffi::PyUnicode_Check(p) == 0 {
            return Err(not_a_str(obj, what));
        }
        // Only the deprecated Py_UNICODE APIs make strings that are not
        // "ready" (canonical) yet; this makes them so (a no-op on 3.12+).
        if ffi::PyUnicode_READY(p) < 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        if ffi::PyUnicode_KIND(p) != ffi::PyUnicode_1BYTE_KIND {
            return Ok(None);
        }
        let len = ffi::PyUnicode_GET_LENGTH(p) as usize;
        Ok(Some(std::slice::from_raw_parts(
            ffi::PyUnicode_DATA(p) as *const u8,
            len,
        )))
    }
}

#[cold]
fn not_a_str(obj: &Bound<'_, PyAny>, what: &str) -> PyErr {
    PyTypeError::new_err(format!("{what} must be a str, not {}", type_name(obj)))
}

#[cold]
fn not_latin1(obj: &Bound<'_, PyAny>, what: &str) -> PyErr {
    PyValueError::new_err(format!(
        "{what} {} is not latin-1",
        obj.repr().map(|r| r.to_string()).unwrap_or_default()
    ))
}

/// Append a native string's latin-1 bytes to `out`.
#[inline]
fn push_latin1(obj: &Bound<'_, PyAny>, what: &str, out: &mut Vec<u8>) -> PyResult<()> {
    match latin1_of(obj, what)? {
        Some(b) => {
            out.extend_from_slice(b);
            Ok(())
        }
        None => Err(not_latin1(obj, what)),
    }
}

/// A field from the app (a `header` or an `early hint`): a token for a
/// name, a value without controls that could split the response. The
/// error names the field, never its value (it may be a secret).
fn check_field(what: &str, name: &[u8], value: &[u8]) -> PyResult<()> {
    if !valid_header_name(name) {
        return Err(PyValueError::new_err(format!(
            "invalid {what} name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    if !valid_header_value(value) {
        return Err(PyValueError::new_err(format!(
            "invalid value for {what} {:?}: control characters (CR, LF, NUL...) are not allowed",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// `1*DIGIT` as a u64 (None if empty, not all digits, or too large).
fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Append `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

impl SrState {
    /// Choose framing and write the head into `out`. `known_len` is the
    /// full body length when the whole body is already in hand.
    fn commit(&mut self, known_len: Option<u64>, out: &mut Vec<u8>) -> PyResult<Framing> {
        if self.code == 0 {
            return Err(PyAssertionError::new_err(
                "the application did not call start_response",
            ));
        }
        let req = self.req;
        let code = self.code;
        let mut add_length = None;
        let tunnel = req.is_connect && (200..300).contains(&code);
        let framing = if tunnel {
            // RFC 9110 §9.3.6: a 2xx to CONNECT has no Content-Length or
            // Transfer-Encoding, and whatever follows its head is tunnel
            // data (RFC 9112 §6.3). There is no tunnel to give: the head
            // goes out alone, then the connection closes.
            remove_content_length(&mut self.headers);
            Framing::NoBody
        } else if code == 205 {
            // RFC 9110 §15.3.6: no content; the length says so.
            add_length = Some(0);
            Framing::NoBody
        } else if status_has_no_body(code, req.is_head) {
            // HEAD: the length GET would have, when we know it (an app
            // that returns an empty body for HEAD tells us nothing: RFC
            // 9110 §8.6 then wants no Content-Length at all).
            if req.is_head
                && self.content_length.is_none()
                && code >= 200
                && code != 204
                && code != 304
            {
                add_length = known_len.filter(|&n| n > 0);
            }
            Framing::NoBody
        } else if let Some(cl) = self.content_length {
            Framing::Length { remaining: cl }
        } else if let Some(n) = known_len {
            add_length = Some(n);
            Framing::Length { remaining: n }
        } else if req.minor == 1 {
            Framing::Chunked
        } else {
            Framing::Close
        };
        let keep_alive = req.keep_alive
            && !tunnel
            && !self.app_wants_close
            && framing != Framing::Close
            && !req.stopping.is_some_and(|f| f.load(Ordering::Relaxed));
        self.keep_alive = keep_alive;

        // RFC 9110 §6.2: the highest version we conform to whose major
        // version the client has, so HTTP/1.1 for a 1.0 client too (as our
        // own error answers); the framing still follows the client's
        // version (no chunked, close unless keep-alive was asked for).
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(&self.status);
        out.extend_from_slice(b"\r\n");
        if !self.has_server {
            out.extend_from_slice(b"Server: ferricorn\r\n");
        }
        if !self.has_date {
            crate::http::response::with_date_line(|d| out.extend_from_slice(d));
        }
        out.extend_from_slice(&self.headers);
        if let Some(n) = add_length {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if req.minor == 0 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        self.committed = Some(framing);
        Ok(framing)
    }

    /// Validate a status and header list into this (cleared) state.
    fn set_head(&mut self, status: &Bound<'_, PyAny>, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        // Out of `self` while we work, so its entries can be read while
        // the rest of the state changes.
        let mut seen = self.seen.take().unwrap_or_default();
        let r = self.set_head_with(&mut seen, status, headers);
        self.seen = Some(seen);
        r
    }

    fn set_head_with(
        &mut self,
        seen: &mut Seen,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let code = match seen.status(status) {
            Some((code, text)) => {
                self.status.extend_from_slice(text);
                code
            }
            None => {
                let code = self.check_status(status)?;
                seen.add_status(status, code, &self.status);
                code
            }
        };
        // Known before the headers: 204 and 205 drop the app's
        // Content-Length (RFC 9110 §8.6, §15.3.6).
        self.code = code;
        // PEP 3333 asks for a list of tuples; Gunicorn takes any iterable
        // of pairs, and so do we: a tuple of them, a [name, value] list
        // (apps migrating from Gunicorn do send those), or an iterable
        // such as `dict.items()`, read into a list first.
        let gathered;
        let (list, tuple) = match (
            headers.cast::<PyList>().ok(),
            headers.cast::<PyTuple>().ok(),
        ) {
            (None, None) => {
                let items = headers.try_iter().map_err(|_| {
                    PyTypeError::new_err(format!(
                        "headers must be a list of (name, value) tuples, not {}",
                        type_name(headers)
                    ))
                })?;
                gathered = PyList::empty(headers.py());
                for item in items {
                    gathered.append(item?)?;
                }
                (Some(&gathered), None)
            }
            found => found,
        };
        // (One of the two is there: an iterable was gathered into a list.)
        let len = list.map_or_else(|| tuple.map_or(0, |t| t.len()), |l| l.len());
        // By index: nothing below runs Python code, so the list cannot
        // change under us.
        for i in 0..len {
            // SAFETY: i < len, and the list is not mutated meanwhile (a
            // tuple never is).
            let item = unsafe {
                match list {
                    Some(l) => l.get_item_unchecked(i),
                    None => tuple.unwrap().get_borrowed_item_unchecked(i).to_owned(),
                }
            };
            // A [name, value] list becomes a fresh tuple: validated each
            // time, never remembered in `seen`.
            let (t, fresh) = match item.cast_into::<PyTuple>() {
                Ok(t) => (t, false),
                Err(e) => {
                    let item = e.into_inner();
                    match item.cast::<PyList>() {
                        Ok(pair) if pair.len() == 2 => {
                            (PyTuple::new(item.py(), pair.iter())?, true)
                        }
                        _ => {
                            return Err(PyTypeError::new_err(format!(
                                "each header must be a (name, value) tuple, not {}",
                                type_name(&item)
                            )));
                        }
                    }
                }
            };
            if let Some((line, kind)) = seen.header(&t) {
                self.add_header(kind, line)?;
                continue;
            }
            let start = self.headers.len();
            let kind = self.check_header(&t)?;
            let line = self.headers.split_off(start);
            self.add_header(kind, &line)?;
            if !fresh {
                seen.add_header(&t, line, kind);
            }
        }
        self.code = code;
        Ok(())
    }

    /// Validate a status into `self.status`; returns the code.
    fn check_status(&mut self, status: &Bound<'_, PyAny>) -> PyResult<u16> {
        push_latin1(status, "status", &mut self.status)?;
        let status_b = &self.status;
        let code = parse_status(status_b).ok_or_else(|| {
            PyValueError::new_err(format!(
                "invalid status {:?}: must be '<3 digits> <reason>' without control characters",
                String::from_utf8_lossy(status_b)
            ))
        })?;
        if code < 200 {
            // A WSGI app gives the final response; a 1xx sent as the
            // only answer would leave the client waiting for the real
            // one (and taking the next response on the connection).
            return Err(PyValueError::new_err(format!(
                "invalid status {:?}: a 1xx status is not a final response",
                String::from_utf8_lossy(status_b)
            )));
        }
        if self.status.len() == 3 {
            // RFC 9112 §4: the SP before an (empty) reason is required.
            self.status.push(b' ');
        }
        Ok(code)
    }

    /// Validate a (name, value) tuple, appending `Name: value\r\n` to
    /// `self.headers`, and say what kind of header it is.
    fn check_header(&mut self, t: &Bound<'_, PyTuple>) -> PyResult<HeaderKind> {
        if t.len() != 2 {
            return Err(PyTypeError::new_err(
                "each header must be a (name, value) tuple",
            ));
        }
        let block = &mut self.headers;
        let start = block.len();
        // SAFETY: the tuple has two items.
        let (name, value) = unsafe {
            (
                t.get_borrowed_item_unchecked(0),
                t.get_borrowed_item_unchecked(1),
            )
        };
        push_latin1(&name, "header name", block)?;
        let name_end = block.len();
        block.extend_from_slice(b": ");
        push_latin1(&value, "header value", block)?;
        // RFC 9110 §5.5: whitespace around a field value is not part of
        // it, and §5.6.3 says not to send it. Gunicorn strips it too;
        // Django's Set-Cookie values, for one, start with a space.
        let value_start = name_end + 2;
        let v = &block[value_start..];
        let kept = trim_ows(v);
        let lead = kept.as_ptr() as usize - v.as_ptr() as usize;
        let end = value_start + lead + kept.len();
        block.truncate(end);
        block.drain(value_start..value_start + lead);
        let (name, value) = (&block[start..name_end], &block[value_start..]);
        check_field("header", name, value)?;
        let kind = if is_hop_by_hop(name) {
            HeaderKind::HopByHop {
                close: name.eq_ignore_ascii_case(b"connection")
                    && value
                        .split(|&b| b == b',')
                        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close")),
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            HeaderKind::ContentLength(parse_decimal(value.trim_ascii()).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "invalid Content-Length {:?}",
                    String::from_utf8_lossy(value)
                ))
            })?)
        } else if name.eq_ignore_ascii_case(b"date") {
            HeaderKind::Date
        } else if name.eq_ignore_ascii_case(b"server") {
            HeaderKind::Server
        } else {
            HeaderKind::Other
        };
        self.headers.extend_from_slice(b"\r\n");
        Ok(kind)
    }

    /// Record a validated header (`line` is `Name: value\r\n`).
    fn add_header(&mut self, kind: HeaderKind, line: &[u8]) -> PyResult<()> {
        match kind {
            HeaderKind::HopByHop { close } => {
                self.app_wants_close |= close;
                // PEP 3333 forbids them to apps; we do our own framing and
                // connection handling (a `close` is honoured), so the app
                // breaking the rule only shows in a debug line.
                if crate::log::enabled(crate::config::LogLevel::Debug) {
                    crate::log::debug(&format!(
                        "dropped the app's hop-by-hop response header {:?} (PEP 3333)",
                        String::from_utf8_lossy(line.trim_ascii_end())
                    ));
                }
                return Ok(());
            }
            HeaderKind::ContentLength(_) if self.code == 204 || self.code == 205 => {
                return Ok(());
            }
            HeaderKind::ContentLength(n) => {
                if self.content_length.is_some_and(|c| c != n) {
                    return Err(PyValueError::new_err("conflicting Content-Length headers"));
                }
                let first = self.content_length.is_none();
                self.content_length = Some(n);
                if !first {
                    return Ok(());
                }
            }
            HeaderKind::Date => self.has_date = true,
            HeaderKind::Server => self.has_server = true,
            HeaderKind::Other => {}
        }
        self.headers.extend_from_slice(line);
        Ok(())
    }
}

/// What a response header means to us.
#[derive(Debug, Clone, Copy)]
enum HeaderKind {
    /// Dropped; `Connection: close` asks us to close after the response.
    HopByHop {
        close: bool,
    },
    ContentLength(u64),
    Date,
    Server,
    Other,
}

/// Statuses and header tuples this responder validated before. Apps often
/// pass the same objects every time (a module-level `"200 OK"`, a constant
/// `("Content-Type", "text/plain")`): a str or tuple is immutable, so when
/// the very same object comes back (we hold a reference, so its address
/// cannot be reused by another object) its checked bytes can be reused.
/// Only exact str and tuples of exact strs are remembered: those cannot
/// reference anything else (no reference cycles through this cache).
#[derive(Default)]
struct Seen {
    status: Option<(Py<PyAny>, u16, Vec<u8>)>,
    tuples: Vec<Py<PyTuple>>,
    headers: Vec<(Vec<u8>, HeaderKind)>,
    /// Next slot to replace once full.
    next: usize,
}

/// Header tuples remembered per responder.
const SEEN_HEADERS: usize = 8;

impl Seen {
    fn status(&self, s: &Bound<'_, PyAny>) -> Option<(u16, &[u8])> {
        match &self.status {
            Some((obj, code, text)) if obj.is(s) => Some((*code, text)),
            _ => None,
        }
    }

    fn add_status(&mut self, s: &Bound<'_, PyAny>, code: u16, text: &[u8]) {
        if s.is_exact_instance_of::<PyString>() {
            self.status = Some((s.clone().unbind(), code, text.to_vec()));
        }
    }

    fn header(&self, t: &Bound<'_, PyTuple>) -> Option<(&[u8], HeaderKind)> {
        let i = self.tuples.iter().position(|x| x.is(t))?;
        let (line, kind) = &self.headers[i];
        Some((line, *kind))
    }

    fn add_header(&mut self, t: &Bound<'_, PyTuple>, line: Vec<u8>, kind: HeaderKind) {
        // SAFETY: check_header saw two items.
        let exact = unsafe {
            t.get_borrowed_item_unchecked(0)
                .is_exact_instance_of::<PyString>()
                && t.get_borrowed_item_unchecked(1)
                    .is_exact_instance_of::<PyString>()
        };
        if !exact || !t.is_exact_instance_of::<PyTuple>() {
            return;
        }
        let entry = (t.clone().unbind(), (line, kind));
        if self.tuples.len() < SEEN_HEADERS {
            self.tuples.push(entry.0);
            self.headers.push(entry.1);
        } else {
            let i = self.next % SEEN_HEADERS;
            self.next = i + 1;
            self.tuples[i] = entry.0;
            self.headers[i] = entry.1;
        }
    }
}

/// `start_response(status, headers, exc_info=None)`.
fn start_response<'py>(
    sr: &Bound<'py, StartResponse>,
    status: &Bound<'py, PyAny>,
    headers: &Bound<'py, PyAny>,
    exc_info: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = sr.py();
    let this = sr.get();
    {
        let mut st = this.state.lock().unwrap();
        if let Some(exc) = exc_info {
            if st.committed.is_some() || st.body_started {
                // PEP 3333: headers already sent, so re-raise the error
                // the app is trying to report.
                drop(st);
                let value = exc.get_item(1)?;
                return Err(PyErr::from_value(value));
            }
        } else if st.called {
            return Err(PyAssertionError::new_err(
                "start_response called a second time without exc_info",
            ));
        }
        st.called = true;
        if st.code == 0 {
            // The usual first call: validate straight into the state.
            st.clear_head();
            let r = st.set_head(status, headers);
            if r.is_err() {
                st.clear_head();
            }
            r?;
        } else {
            // A replacement (exc_info): the first head stays if this one
            // is invalid. Keep what write() produced before? PEP 3333 says
            // nothing was sent, so nothing is kept.
            let mut new = SrState::default();
            new.set_head(status, headers)?;
            std::mem::swap(&mut st.status, &mut new.status);
            std::mem::swap(&mut st.headers, &mut new.headers);
            st.code = new.code;
            st.content_length = new.content_length;
            st.app_wants_close = new.app_wants_close;
            st.has_date = new.has_date;
            st.has_server = new.has_server;
        }
    }
    let write = this.write.load(Ordering::Relaxed);
    if write.is_null() {
        // Called after the responder let go of this object.
        return bound_method(sr, 1);
    }
    // SAFETY: non-null means the responder still owns a reference.
    Ok(unsafe { Bound::from_borrowed_ptr(py, write) })
}

impl StartResponse {
    /// The response is over: from now on `write()` raises (see `ended`).
    pub fn end(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }
}

/// The legacy `write()` callable: body bytes the app pushes imperatively.
fn write(py: Python<'_>, this: &StartResponse, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let data = data.cast::<PyBytes>().map_err(|_| {
        PyTypeError::new_err(format!(
            "write() argument must be bytes, not {}",
            type_name(data)
        ))
    })?;
    if this.ended.load(Ordering::Relaxed) {
        // Gunicorn's write() on a finished request fails on the closed
        // socket with EBADF; so does ours, whatever the fd is now.
        return Err(pyo3::exceptions::PyOSError::new_err((
            libc::EBADF,
            "write() called after its response ended",
        )));
    }
    let mut st = this.state.lock().unwrap();
    if st.code == 0 {
        return Err(PyAssertionError::new_err("write() before start_response"));
    }
    st.body_started = true;
    st.written.extend_from_slice(data.as_bytes());
    if st.handed_off {
        // Called from inside the iterable: the I/O loop sends it next.
        return Ok(());
    }
    // PEP 3333: the block is sent (head first, if not yet) before write()
    // returns.
    let mut out = Vec::with_capacity(st.written.len() + 512);
    let mut framing = match st.committed {
        Some(f) => f,
        None => st.commit(None, &mut out)?,
    };
    let pending = std::mem::take(&mut st.written);
    st.body_bytes += framing.frame(&pending, &mut out);
    st.committed = Some(framing);
    let fd = st.req.fd;
    drop(st);
    UNANSWERED_FD.store(-1, Ordering::Relaxed); // the response has begun
    py.detach(|| blocking_send(fd, &out))
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("client connection lost: {e}")))
}

/// The client socket of the app call in progress while nothing of its
/// response has gone out yet, else -1. A worker killed for a timeout
/// (SIGABRT, `--threads 1`) answers it a 500 as it dies, as Gunicorn's
/// sync worker does, instead of closing it without a word (which a proxy
/// in front reports as a 502). One store before and after each call.
static UNANSWERED_FD: AtomicI32 = AtomicI32::new(-1);

/// For the SIGABRT handler: the socket owed a 500, taken (once).
pub fn take_unanswered() -> RawFd {
    UNANSWERED_FD.swap(-1, Ordering::Relaxed)
}

/// What a worker killed mid-request sends; prepared, as a signal handler
/// may not allocate. (RFC 9110 §6.6.1: Date is optional in a 5xx.)
pub const TIMEOUT_ANSWER: &[u8] = b"HTTP/1.1 500 Internal Server Error\r\n\
Server: ferricorn\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Length: 26\r\n\r\n500 Internal Server Error\n";

thread_local! {
    /// The StartResponse of the app call running on this thread, while it
    /// runs: what `wsgi.early_hints` (one function in every environ, set
    /// in the listener's base dict, so a request pays nothing for it)
    /// sends for. Elsewhere (another thread, after the call) it is None.
    static CURRENT: std::cell::RefCell<Option<Py<StartResponse>>> =
        const { std::cell::RefCell::new(None) };
}

/// `environ['wsgi.early_hints']`: see `early_hints`.
#[pyfunction]
#[pyo3(name = "early_hints")]
pub fn early_hints_fn(py: Python<'_>, headers: &Bound<'_, PyAny>) -> PyResult<()> {
    let Some(sr) = CURRENT.with(|c| c.borrow().as_ref().map(|s| s.clone_ref(py))) else {
        return Ok(());
    };
    early_hints(py, sr.get(), headers)
}

/// `environ['wsgi.early_hints'](headers)`, as Gunicorn's: a `103 Early
/// Hints` interim response (RFC 8297) carrying `headers` (`(name, value)`
/// pairs of str or bytes, typically `Link`), sent at once so a browser can
/// start fetching what the page will need while the app still works on it.
/// Ignored, as there, once the response has started (it would break the
/// framing) and for an HTTP/1.0 client (it knows no 1xx); here also once
/// the app has returned, and from a thread of the app's own. Names and values
/// are checked as `start_response`'s.
fn early_hints(py: Python<'_>, this: &StartResponse, headers: &Bound<'_, PyAny>) -> PyResult<()> {
    // Built before the state is locked: iterating may run Python code.
    let mut out = b"HTTP/1.1 103 Early Hints\r\n".to_vec();
    for pair in headers.try_iter()? {
        let pair = pair?;
        let (name, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = pair.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "each early hint must be a (name, value) pair, not {}",
                type_name(&pair)
            ))
        })?;
        let (mut n, mut v) = (Vec::new(), Vec::new());
        for (part, what, buf) in [
            (&name, "early hint name", &mut n),
            (&value, "early hint value", &mut v),
        ] {
            match part.cast::<PyBytes>() {
                Ok(b) => buf.extend_from_slice(b.as_bytes()),
                Err(_) => push_latin1(part, what, buf)?,
            }
        }
        check_field("early hint", &n, &v)?;
        out.extend_from_slice(&n);
        out.extend_from_slice(b": ");
        // RFC 9110 §5.5: SP and HTAB around a value are not part of it.
        out.extend_from_slice(trim_ows(&v));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let st = this.state.lock().unwrap();
    if st.committed.is_some() || st.handed_off || st.req.minor == 0 {
        return Ok(());
    }
    let fd = st.req.fd;
    drop(st);
    py.detach(|| blocking_send(fd, &out))
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("client connection lost: {e}")))
}

/// What both C entry points share: CPython called us with the GIL held and
/// `slf` bound to our StartResponse. Run `f` on it; an error becomes the
/// raised exception, a panic a RuntimeError (never an unwind into C).
///
/// # Safety
/// `slf` must be the StartResponse the builtin was bound to (bound_method).
unsafe fn on_start_response(
    slf: *mut ffi::PyObject,
    f: impl FnOnce(Python<'_>, &Bound<'_, StartResponse>) -> PyResult<*mut ffi::PyObject>,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls builtin functions attached to the interpreter.
    let py = unsafe { Python::assume_attached() };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the caller's contract: `slf` is a live StartResponse.
        let sr = unsafe { Bound::ref_from_ptr(py, &slf).cast_unchecked::<StartResponse>() };
        f(py, sr)
    }));
    match r {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            e.restore(py);
            null_mut()
        }
        Err(_) => {
            pyo3::exceptions::PyRuntimeError::new_err("ferricorn: internal error (panic)")
                .restore(py);
            null_mut()
        }
    }
}

/// C entry point of `start_response` (METH_FASTCALL | METH_KEYWORDS).
unsafe extern "C" fn start_response_vectorcall(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: `slf` is the StartResponse the function was bound to.
    unsafe {
        on_start_response(slf, |py, sr| {
            // SAFETY: `args` holds nargs positional arguments followed by
            // one per name in `kwnames` (a tuple of str, or NULL), all
            // borrowed for the duration of the call.
            let nargs = ffi::PyVectorcall_NARGS(nargsf as usize);
            let mut slots: [Option<&Bound<'_, PyAny>>; 3] = [None, None, None];
            if nargs > 3 {
                return Err(PyTypeError::new_err(format!(
                    "start_response() takes at most 3 arguments ({nargs} given)"
                )));
            }
            for (i, slot) in slots.iter_mut().enumerate().take(nargs as usize) {
                *slot = Some(Bound::ref_from_ptr(py, &*args.add(i)));
            }
            if !kwnames.is_null() {
                let names = Bound::ref_from_ptr(py, &kwnames).cast_unchecked::<PyTuple>();
                for (j, name) in names.iter().enumerate() {
                    let i = match latin1_of(&name, "keyword")? {
                        Some(b"status") => 0,
                        Some(b"headers" | b"response_headers") => 1,
                        Some(b"exc_info") => 2,
                        _ => {
                            return Err(PyTypeError::new_err(format!(
                                "start_response() got an unexpected keyword argument {name}"
                            )));
                        }
                    };
                    if slots[i].is_some() {
                        return Err(PyTypeError::new_err(format!(
                            "start_response() got multiple values for argument {name}"
                        )));
                    }
                    slots[i] = Some(Bound::ref_from_ptr(py, &*args.add(nargs as usize + j)));
                }
            }
            let (Some(status), Some(headers)) = (slots[0], slots[1]) else {
                return Err(PyTypeError::new_err(
                    "start_response() missing required arguments 'status' and 'headers'",
                ));
            };
            let exc_info = slots[2].filter(|e| !e.is_none());
            start_response(sr, status, headers, exc_info).map(Bound::into_ptr)
        })
    }
}

/// C entry point of `write` (METH_O).
unsafe extern "C" fn write_meth_o(
    slf: *mut ffi::PyObject,
    data: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: `slf` is our StartResponse, `data` a borrowed argument.
    unsafe {
        on_start_response(slf, |py, sr| {
            write(py, sr.get(), Bound::ref_from_ptr(py, &data))?;
            Ok(py.None().into_ptr())
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
    /// Public as in wsgiref's and Gunicorn's: middleware unwraps it.
    #[pyo3(get)]
    filelike: Py<PyAny>,
    #[pyo3(get)]
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
    /// The whole body is framed already; only the result's close() is
    /// left, due once the response is out (PEP 3333 calls it "upon
    /// completion of the current request": the client does not wait on it).
    Close { result: Py<PyAny> },
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

/// Gunicorn's "Error handling request URI" context line: the request's
/// RAW_URI from its environ (the app may have changed it), or Gunicorn's
/// "(no URI read)".
pub fn request_error_context(environ: &Bound<'_, PyAny>) -> String {
    let uri = environ
        .get_item(pyo3::intern!(environ.py(), "RAW_URI"))
        .ok()
        .and_then(|u| u.extract::<String>().ok())
        .unwrap_or_else(|| "(no URI read)".into());
    format!("Error handling request {uri}")
}

/// Log a Python exception with its traceback to the error log.
pub fn log_py_error(py: Python<'_>, err: &PyErr, context: &str) {
    let tb = super::format_py_err(py, err);
    crate::log::error(&format!("{context}\n{}", tb.trim_end()));
}

/// Drop `Content-Length: ...\r\n` lines from a serialized header block.
fn remove_content_length(headers: &mut Vec<u8>) {
    let mut kept = Vec::with_capacity(headers.len());
    for line in headers.split_inclusive(|&b| b == b'\n') {
        let is_cl = line
            .get(..15)
            .is_some_and(|n| n.eq_ignore_ascii_case(b"content-length:"));
        if !is_cl {
            kept.extend_from_slice(line);
        }
    }
    *headers = kept;
}

/// Lists and tuples (the common case) have no close(); asking would raise
/// and format an AttributeError on every request.
fn has_no_close(result: &Bound<'_, PyAny>) -> bool {
    result.is_exact_instance_of::<PyList>() || result.is_exact_instance_of::<PyTuple>()
}

pub fn close_result(py: Python<'_>, result: &Bound<'_, PyAny>) {
    if has_no_close(result) {
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

fn internal_error(req: ReqInfo, out: &mut Vec<u8>, start: usize) -> Outcome {
    out.truncate(start);
    let answer = crate::http::response::error_response(500, req.minor);
    out.extend_from_slice(crate::http::response::for_method(&answer, req.is_head));
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
/// is at hand). The GIL is held by the caller. `spare` is the I/O loop's
/// reusable responder (taken, and put back when nobody else kept it).
pub fn run_app(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    environ: Bound<'_, PyAny>,
    req: ReqInfo,
    out: &mut Vec<u8>,
    spare: &mut Option<Responder>,
) -> Outcome {
    let start = out.len();
    let r = match spare.take() {
        Some(r) => r,
        None => match Responder::new(py) {
            Ok(r) => r,
            Err(e) => {
                log_py_error(py, &e, "Error creating start_response");
                return internal_error(req, out, start);
            }
        },
    };
    let sr = r.sr.get();
    sr.state.lock().unwrap().reset(req);
    sr.ended.store(false, Ordering::Relaxed);
    CURRENT.with(|c| *c.borrow_mut() = Some(r.sr.clone_ref(py)));
    UNANSWERED_FD.store(req.fd, Ordering::Relaxed);
    let called = app.call1((&environ, r.start_response.bind(py)));
    CURRENT.with(|c| c.borrow_mut().take());
    let outcome = match called {
        Ok(result) => {
            let mut outcome = frame_result(py, sr, &result, &environ, req, out, start);
            match &mut outcome.stream {
                Some(Stream::Iter { sr: slot, .. }) => {
                    sr.state.lock().unwrap().handed_off = true;
                    *slot = Some(r.sr.clone_ref(py));
                }
                Some(Stream::File { .. } | Stream::Close { .. }) => {} // closed when sent
                None if has_no_close(&result) => {}
                None => {
                    outcome.stream = Some(Stream::Close {
                        result: result.unbind(),
                    })
                }
            }
            outcome
        }
        Err(e) => {
            log_py_error(py, &e, &request_error_context(&environ));
            fail_before_or_after_head(sr, req, out, start)
        }
    };
    // What the response holds is the I/O loop's to send from here on.
    UNANSWERED_FD.store(-1, Ordering::Relaxed);
    if !matches!(outcome.stream, Some(Stream::Iter { .. })) {
        // Framed whole (or failed): nothing more may be written.
        sr.end();
    }
    if r.unshared() {
        *spare = Some(r);
    } else {
        r.release();
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
        return Outcome {
            status: if st.code != 0 { st.code } else { 500 },
            keep_alive: false,
            body_bytes: st.body_bytes,
            stream: None,
            headers: Vec::new(),
        };
    }
    drop(st);
    internal_error(req, out, start)
}

/// The items of a list or tuple result, borrowed. Nothing we do while
/// looking at them runs Python code, so the sequence cannot change.
fn seq_items<'a>(result: &'a Bound<'_, PyAny>) -> Option<&'a [*mut ffi::PyObject]> {
    let p = result.as_ptr();
    // SAFETY: the type checks make the casts valid; the item arrays live
    // as long as the (unchanging) sequence that `result` keeps alive.
    unsafe {
        // Exact types only: a subclass may define its own __iter__.
        if ffi::PyList_CheckExact(p) != 0 {
            let l = p as *mut ffi::PyListObject;
            let n = ffi::Py_SIZE(p) as usize;
            if n == 0 {
                return Some(&[]);
            }
            Some(std::slice::from_raw_parts((*l).ob_item, n))
        } else if ffi::PyTuple_CheckExact(p) != 0 {
            let t = p as *mut ffi::PyTupleObject;
            let n = ffi::Py_SIZE(p) as usize;
            Some(std::slice::from_raw_parts(
                std::ptr::addr_of!((*t).ob_item) as *const *mut ffi::PyObject,
                n,
            ))
        } else {
            None
        }
    }
}

/// A body item's bytes (borrowed), or the PEP 3333 type error.
fn item_bytes<'a>(py: Python<'a>, item: &'a *mut ffi::PyObject) -> PyResult<&'a [u8]> {
    // SAFETY: `item` is a live object borrowed from the result.
    let item = unsafe { Bound::ref_from_ptr(py, item) };
    match item.cast::<PyBytes>() {
        Ok(b) => Ok(b.as_bytes()),
        Err(_) => Err(PyTypeError::new_err(format!(
            "the response iterable must yield bytes, not {}",
            type_name(item)
        ))),
    }
}

fn frame_result(
    py: Python<'_>,
    sr: &StartResponse,
    result: &Bound<'_, PyAny>,
    environ: &Bound<'_, PyAny>,
    req: ReqInfo,
    out: &mut Vec<u8>,
    start: usize,
) -> Outcome {
    // 1. The common case, a list or tuple of bytes: check the items and add
    // up their length, then frame them straight into `out`.
    if let Some(items) = seq_items(result) {
        let mut total = 0u64;
        for item in items {
            match item_bytes(py, item) {
                Ok(b) => total += b.len() as u64,
                Err(e) => {
                    log_py_error(py, &e, &request_error_context(environ));
                    return fail_before_or_after_head(sr, req, out, start);
                }
            }
        }
        let mut st = sr.state.lock().unwrap();
        let written = std::mem::take(&mut st.written);
        let mut framing = match st.committed {
            Some(f) => f,
            None => match st.commit(Some(written.len() as u64 + total), out) {
                Ok(f) => f,
                Err(e) => {
                    drop(st);
                    log_py_error(py, &e, "Error in response");
                    return internal_error(req, out, start);
                }
            },
        };
        let mut sent = st.body_bytes;
        sent += framing.frame(&written, out);
        st.written = written; // keep its capacity
        st.written.clear();
        for item in items {
            if let Ok(b) = item_bytes(py, item) {
                sent += framing.frame(b, out);
            }
        }
        // finish() first: it writes the last chunk even when we close.
        let complete = framing.finish(out);
        let keep_alive = st.keep_alive && complete;
        return Outcome {
            status: st.code,
            keep_alive,
            body_bytes: sent,
            stream: None,
            headers: take_headers(&mut st),
        };
    }

    // 2. A file with a real descriptor: sendfile from the I/O loop. For
    // HEAD (and 204/304) only the head goes out, with the length GET
    // would have, and the file is never read.
    if let Some((file, offset, size)) = file_of(result) {
        let mut st = sr.state.lock().unwrap();
        if st.committed.is_none() && st.written.is_empty() && st.code != 0 {
            let len = st.content_length.map(|c| c.min(size)).unwrap_or(size);
            let declared = st.content_length;
            return match st.commit(Some(len), out) {
                Ok(framing) => Outcome {
                    status: st.code,
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
                    headers: take_headers(&mut st),
                },
                Err(e) => {
                    drop(st);
                    log_py_error(py, &e, "Error in response");
                    internal_error(req, out, start)
                }
            };
        }
    }

    // 3. Any other iterable (a generator...): pull until the first
    // non-empty block, then let the I/O loop send it and pull the rest.
    // PEP 3333: a block is sent before the app is asked for the next one
    // (a generator may sleep between yields: server-sent events, progress).
    // An iterable that ends before yielding anything gets a length.
    let mut body: Vec<u8> = Vec::new();
    let mut iter: Option<Bound<'_, PyIterator>> = None;
    let gathered = (|| -> PyResult<()> {
        let mut it = result.try_iter()?;
        // write() from inside the iterable: hold its bytes and put them in
        // order below.
        sr.state.lock().unwrap().handed_off = true;
        loop {
            let next = it.next();
            {
                // What the app passed to write() during that step comes
                // after the items before it and before the one it yields.
                let mut st = sr.state.lock().unwrap();
                if !st.written.is_empty() {
                    body.extend_from_slice(&st.written);
                    st.written.clear();
                }
            }
            match next {
                Some(item) => {
                    let item = item?; // keeps the object alive while we copy
                    let ptr = item.as_ptr();
                    let b = item_bytes(py, &ptr)?;
                    if !b.is_empty() {
                        let mut st = sr.state.lock().unwrap();
                        if st.code == 0 {
                            return Err(PyAssertionError::new_err(
                                "the response iterable yielded body before start_response was called",
                            ));
                        }
                        st.body_started = true;
                    }
                    body.extend_from_slice(b);
                }
                None => break,
            }
            if !body.is_empty() {
                iter = Some(it);
                break;
            }
        }
        Ok(())
    })();
    if let Err(e) = gathered {
        log_py_error(py, &e, &request_error_context(environ));
        return fail_before_or_after_head(sr, req, out, start);
    }

    let mut st = sr.state.lock().unwrap();
    let complete = iter.is_none();
    let written = std::mem::take(&mut st.written);
    let mut framing = match st.committed {
        Some(f) => f,
        None => {
            let known = complete.then(|| (written.len() + body.len()) as u64);
            match st.commit(known, out) {
                Ok(f) => f,
                Err(e) => {
                    drop(st);
                    log_py_error(py, &e, "Error in response");
                    return internal_error(req, out, start);
                }
            }
        }
    };
    let mut sent = st.body_bytes;
    sent += framing.frame(&written, out);
    sent += framing.frame(&body, out);
    let mut keep_alive = st.keep_alive;
    let status = if st.code != 0 { st.code } else { 500 };
    let headers = take_headers(&mut st);
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

/// The response headers for the access log, if it wants them.
fn take_headers(st: &mut SrState) -> Vec<u8> {
    if st.req.want_headers {
        st.headers.clone()
    } else {
        Vec::new()
    }
}

/// Pull more of a streaming iterator into `out` (GIL held). Returns
/// `Ok(true)` when the body is complete, `Ok(false)` when there is more, and
/// `Err(())` when the response must be cut off (app error, short body).
///
/// PEP 3333: a block is handed to the OS before the app is asked for the
/// next. `out` is the connection's write buffer, empty on entry (the I/O
/// loop flushed it): each block is sent from here at once, and while the
/// socket takes it all we go on pulling; when it does not, the rest stays
/// in `out` and we return, for the I/O loop to flush when it can.
pub fn pump_iter(
    py: Python<'_>,
    iter: &Py<PyIterator>,
    sr: &Option<Py<StartResponse>>,
    framing: &mut Framing,
    out: &mut Vec<u8>,
    sent: &mut u64,
    sock: RawFd,
) -> Result<bool, ()> {
    // PyIter_Next: no StopIteration object is created at the end.
    let mut it = iter.bind(py).clone();
    let start = out.len();
    loop {
        if out.len() > start {
            if start > 0 || !send_now(py, sock, out) {
                return Ok(false);
            }
        }
        if framing.is_full() {
            // Nothing more may go out: don't run the app's iterable on
            // (an endless one would hold this loop); close() follows.
            return Ok(true);
        }
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
                    let data = b.as_bytes();
                    if out.is_empty() {
                        if let Some(n) = framing.take_plain(data.len()) {
                            // Nothing queued before it and no framing to
                            // add: send from the app's bytes object itself
                            // (one copy fewer); keep only what the socket
                            // did not take.
                            *sent += n as u64;
                            let went = if n == 0 {
                                0
                            } else {
                                send_slice(py, sock, &data[..n])
                            };
                            if went < n {
                                out.extend_from_slice(&data[went..n]);
                                return Ok(false);
                            }
                            continue;
                        }
                    }
                    *sent += framing.frame(data, out);
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

/// One non-blocking send of all of `out` (GIL released). True when it all
/// went: `out` is then emptied. Otherwise what went is removed and the rest
/// is left for the I/O loop (which also sees any error).
fn send_now(py: Python<'_>, sock: RawFd, out: &mut Vec<u8>) -> bool {
    let n = send_slice(py, sock, out);
    out.drain(..n);
    out.is_empty()
}

/// One non-blocking send of `data` (GIL released): how much went, 0 on an
/// error, which the I/O loop then meets on its own send.
fn send_slice(py: Python<'_>, sock: RawFd, data: &[u8]) -> usize {
    py.detach(|| send_nowait(sock, data))
}

/// One non-blocking send of `data`: how much went, 0 on an error. A
/// plain system call, so a signal handler may use it too.
pub fn send_nowait(sock: RawFd, data: &[u8]) -> usize {
    // SAFETY: send(2) from a live buffer (ours, or a bytes object we hold a
    // reference to, immutable) on the connection's socket; MSG_NOSIGNAL: a
    // gone peer is an error, not SIGPIPE.
    let n = unsafe {
        libc::send(
            sock,
            data.as_ptr() as *const libc::c_void,
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    n.max(0) as usize
}

/// The file ended before the length we announced: the framing cannot be
/// completed, so the connection must close.
fn file_shrank() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "file shorter than announced",
    )
}

/// How much of a file one copy step puts in the connection's write buffer.
pub const FILE_COPY_CHUNK: usize = 512 * 1024;

/// Send a file body.
///
/// To a peer across a network `sendfile(2)` hands the page-cache pages to
/// the NIC without a copy in this process: as much as the socket takes,
/// then Ok(false) ("wait for room"). On loopback there is no NIC, and the
/// spliced 4 KiB pages reach the receiving process as the frames it must
/// copy out of; measured on this project's bench (1 MiB file, wrk -c64),
/// the receiver then spends about 3x the CPU per byte, and serving by copy
/// gives ~2.5x the req/s of sendfile. So for a loopback TCP peer (`copy`)
/// a chunk is read into `wbuf` (empty when called) for the normal flush
/// path, and Ok(false) means "flush that, then call again". Unix-socket
/// peers keep sendfile: there the same measure favours it by 2x.
pub fn pump_file(
    sock: RawFd,
    file: &OwnedFd,
    offset: &mut i64,
    remaining: &mut u64,
    sent: &mut u64,
    copy: Option<&mut Vec<u8>>,
) -> std::io::Result<bool> {
    if let Some(wbuf) = copy {
        if *remaining == 0 {
            return Ok(true);
        }
        let want = (*remaining).min(FILE_COPY_CHUNK as u64) as usize;
        wbuf.clear();
        wbuf.reserve(want);
        let n = loop {
            // SAFETY: pread(2) into the buffer's spare capacity, which
            // `reserve` made at least `want` bytes long.
            let n = unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    wbuf.spare_capacity_mut().as_mut_ptr() as *mut libc::c_void,
                    want,
                    *offset,
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        };
        // SAFETY: pread initialised the first `n` bytes of spare capacity.
        unsafe { wbuf.set_len(n) };
        if n == 0 {
            return Err(file_shrank());
        }
        *offset += n as i64;
        *remaining -= n as u64;
        *sent += n as u64;
        return Ok(*remaining == 0);
    }
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
            return Err(file_shrank());
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
