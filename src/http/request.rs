//! Request-head parsing (request line + header fields) with RFC 9112's strict
//! framing rules and Gunicorn's size limits.
//!
//! Why this exists: a WSGI server sits behind proxies, and every place where
//! it reads a request head differently from the proxy (bare LF, obs-fold,
//! `Content-Length` lists, `Transfer-Encoding` tricks, `_` vs `-` in names) is
//! a request-smuggling or header-spoofing hole. `httparse` does the fast
//! tokenising; this module adds the checks it leaves to the caller, and
//! refuses anything ambiguous instead of guessing.
//!
//! CONTRACT (the worker relies on exactly this):
//! - `parse_head(buf, limits)` looks at the start of `buf`:
//!   * `Ok(None)`: the head is incomplete; read more bytes. (If `buf` already
//!     exceeds what the limits could allow, it returns the matching error
//!     instead of `None`, so a client cannot grow the buffer forever.)
//!   * `Ok(Some((head, n)))`: a complete, valid head occupies `buf[..n]`
//!     (through the blank line). Leading empty lines (CRLF) before the
//!     request line are skipped as RFC 9112 §2.2 allows.
//!   * `Err(e)`: the request is malformed; answer `e.status()` and close.
//! - header fields whose name contains `_` are dropped (not an error).
//! - values are trimmed of SP/HTAB only.
//!
//! Decisions where the RFCs leave a choice (all "be strict"):
//! - Every line must end in CRLF; a bare LF anywhere in the head is a 400.
//! - The request target must be ASCII (RFC 3986: anything else is
//!   percent-encoded), as in Gunicorn; a raw non-ASCII byte is a 400.
//! - The target's form must suit the method (RFC 9112 §3.2): origin-form
//!   (`/...`) except for CONNECT; `*` only for `OPTIONS`; authority-form
//!   (`host:port`) for CONNECT only, and nothing else for CONNECT; otherwise
//!   absolute-form, accepted only as `http://` / `https://` with a valid,
//!   non-empty host and no userinfo. A `#fragment` is tolerated (dropped
//!   later). Any other target is a 400.
//! - Host must be `uri-host [":" port]` (either part may be empty); an
//!   `Expect` member other than `100-continue` is a 417 (as in Gunicorn),
//!   reported only when the request is otherwise valid.
//! - Empty list elements in `Transfer-Encoding`, `Connection` and `Expect`
//!   are ignored (RFC 9110 §5.6.1), but a `Transfer-Encoding` line naming
//!   no coding at all is a 400.
//! - `Content-Length: 0` is reported as `BodyKind::Length(0)`; `Empty` means
//!   the request carried no framing header at all.
//! - Versions: `HTTP/1.0` and `HTTP/1.1` are served, and a higher minor
//!   version of HTTP/1 (`HTTP/1.2` to `HTTP/1.9`) is served as `HTTP/1.1`
//!   (RFC 9110 §2.5: "process the message as if it were in the highest minor
//!   version within that major version"; Gunicorn serves them too). Another
//!   well-formed version (`HTTP/2.0`, `HTTP/0.9`, and the bare-major forms
//!   `HTTP/2`, `HTTP/3`) is a 505; anything else (`HTTP/1`, `http/1.1`,
//!   `HTTP/1.1x`) is a 400.
//! - Line limits count the line without its CRLF (Gunicorn counts the CRLF
//!   for header fields, so our field limit is 2 bytes more lenient there).

use std::fmt;
use std::mem::MaybeUninit;

/// Gunicorn's limits: `--limit-request-line` (4094),
/// `--limit-request-fields` (100), `--limit-request-field-size` (8190).
/// 0 means unlimited for line and field size (Gunicorn's meaning; in fact
/// capped at 1 MiB per line); 0 fields means Gunicorn's maximum, 32768. A
/// whole head is never allowed past 4 MiB, whatever the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub request_line: usize,
    pub fields: usize,
    pub field_size: usize,
    /// Gunicorn's `permit_unconventional_http_method`: off (the default),
    /// a method must be 3 to 20 characters with no lowercase letter.
    pub permit_unconventional_method: bool,
    /// Gunicorn's `casefold_http_method`: the method reaches the app
    /// upper-cased.
    pub casefold_method: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_line: 4094,
            fields: 100,
            field_size: 8190,
            permit_unconventional_method: false,
            casefold_method: false,
        }
    }
}

/// Where a piece of the head sits in `RequestHead::raw`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// `part`, a slice of `base`, as a span of it.
    fn of(base: &[u8], part: &[u8]) -> Span {
        let start = offset(base, part.as_ptr());
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    fn get(self, raw: &[u8]) -> &[u8] {
        &raw[self.start as usize..self.end as usize]
    }
}

/// One header field line: where its name and (trimmed) value are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    name: Span,
    value: Span,
}

/// A header field of a `RequestHead`, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
}

/// The header fields of a `RequestHead`, in order (a cheap, copyable view).
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a> {
    raw: &'a [u8],
    fields: &'a [Field],
}

impl<'a> Headers<'a> {
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn get(&self, i: usize) -> Header<'a> {
        let f = self.fields[i];
        // SAFETY: names were `&str` from httparse (token characters only).
        let name = unsafe { std::str::from_utf8_unchecked(f.name.get(self.raw)) };
        Header {
            name,
            value: f.value.get(self.raw),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Header<'a>> + Clone + use<'a> {
        let h = *self;
        (0..h.len()).map(move |i| h.get(i))
    }

    /// Fields `from..`.
    pub fn after(&self, from: usize) -> Headers<'a> {
        Headers {
            raw: self.raw,
            fields: &self.fields[from..],
        }
    }

    /// Fields `..to`.
    pub fn before(&self, to: usize) -> Headers<'a> {
        Headers {
            raw: self.raw,
            fields: &self.fields[..to],
        }
    }

    /// Value of the first field named `name` (ASCII case-insensitive).
    pub fn find(&self, name: &str) -> Option<&'a [u8]> {
        self.iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyKind {
    /// Neither `Content-Length` nor `Transfer-Encoding` was sent.
    #[default]
    Empty,
    /// `Content-Length: n` (n may be 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`; decode with `chunked::ChunkedDecoder`.
    Chunked,
}

/// A parsed request head. It owns a copy of the head's bytes and records
/// where the parts are, so parsing allocates nothing once a `RequestHead`
/// is reused (`parse_head_into`).
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    /// The head as received, from the request line through the blank line.
    raw: Vec<u8>,
    method: Span,
    /// The raw request-target, as sent (RAW_URI).
    target: Span,
    fields: Vec<Field>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub body: BodyKind,
    /// Whether the connection may persist after this exchange
    /// (version default + `Connection: close/keep-alive`).
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent (HTTP/1.1 only).
    pub expect_continue: bool,
    /// A SCRIPT_NAME or PATH_INFO field is among `fields` (the only names
    /// with `_` kept; see `is_forwarder_header`).
    pub forwarder_fields: bool,
}

impl RequestHead {
    pub fn method(&self) -> &str {
        // SAFETY: the span held httparse's `&str` method (a token).
        unsafe { std::str::from_utf8_unchecked(self.method.get(&self.raw)) }
    }

    /// The raw request-target, as sent (RAW_URI).
    pub fn target(&self) -> &str {
        // SAFETY: the span held httparse's `&str` path (checked UTF-8).
        unsafe { std::str::from_utf8_unchecked(self.target.get(&self.raw)) }
    }

    /// The header fields, in order (names with `_` dropped, except
    /// SCRIPT_NAME and PATH_INFO: see `forwarder_fields`).
    pub fn headers(&self) -> Headers<'_> {
        Headers {
            raw: &self.raw,
            fields: &self.fields,
        }
    }

    /// Value of the first header named `name` (ASCII case-insensitive).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().find(name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    BadRequest(&'static str),
    UriTooLong,
    FieldsTooLarge(&'static str),
    NotImplemented(&'static str),
    VersionNotSupported,
    /// An `Expect` member other than `100-continue` (RFC 9110 §10.1.1).
    ExpectationFailed,
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::UriTooLong => 414,
            HttpError::ExpectationFailed => 417,
            HttpError::FieldsTooLarge(_) => 431,
            HttpError::NotImplemented(_) => 501,
            HttpError::VersionNotSupported => 505,
        }
    }

    /// Short human-readable reason, for logs and error bodies.
    pub fn detail(&self) -> &'static str {
        match self {
            HttpError::BadRequest(m)
            | HttpError::FieldsTooLarge(m)
            | HttpError::NotImplemented(m) => m,
            HttpError::UriTooLong => "request line too long",
            HttpError::VersionNotSupported => "HTTP version not supported",
            HttpError::ExpectationFailed => "unsupported expectation",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.detail())
    }
}

impl std::error::Error for HttpError {}

/// Per-line cap standing in for "unlimited" (0) line/field sizes.
const UNLIMITED_LINE: usize = 1 << 20;
/// Gunicorn's MAX_HEADERS: the field count used for `fields == 0` and the
/// ceiling for larger settings.
const MAX_FIELDS: usize = 32768;
/// Hard ceiling on a whole head, whatever the configured limits multiply to.
const MAX_HEAD: usize = 4 << 20;
/// RFC 9112 §2.2 asks us to tolerate "at least one" empty line before the
/// request line; a few more covers sloppy clients, more is an attack.
const MAX_LEADING_EMPTY_LINES: usize = 16;
/// httparse header slots kept on the stack; larger `fields` limits fall back
/// to a heap array.
const STACK_FIELDS: usize = 128;

/// Limits with the "0 means ..." conventions resolved.
struct Bounds {
    request_line: usize,
    fields: usize,
    field_size: usize,
    permit_unconventional_method: bool,
    casefold_method: bool,
    /// Largest possible head, leading empty lines included.
    head: usize,
}

impl Bounds {
    fn new(l: &Limits) -> Bounds {
        // Larger settings are clamped to the cap too, which also keeps the
        // `limit + 2` arithmetic below far from overflow.
        let cap = |v: usize| {
            if v == 0 {
                UNLIMITED_LINE
            } else {
                v.min(UNLIMITED_LINE)
            }
        };
        let request_line = cap(l.request_line);
        // A field line's size counts its CRLF, as Gunicorn counts it: with
        // the default 8190, 8188 bytes of name, colon and value.
        let field_size = cap(l.field_size).saturating_sub(2);
        let fields = if l.fields == 0 || l.fields > MAX_FIELDS {
            MAX_FIELDS
        } else {
            l.fields
        };
        let head = (2 * MAX_LEADING_EMPTY_LINES)
            .saturating_add(request_line + 2)
            .saturating_add(fields.saturating_mul(field_size + 2))
            .saturating_add(2)
            .min(MAX_HEAD);
        Bounds {
            request_line,
            fields,
            field_size,
            permit_unconventional_method: l.permit_unconventional_method,
            casefold_method: l.casefold_method,
            head,
        }
    }
}

/// Parses the request head at the start of `buf`; see the module docs.
#[cfg_attr(not(test), allow(dead_code))]
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let mut head = RequestHead::default();
    Ok(parse_head_into(buf, limits, &mut head)?.map(|n| (head, n)))
}

/// `parse_head`, filling `head` (whose buffers are reused): `Ok(Some(n))`
/// when a complete head occupies `buf[..n]`. On `Ok(None)` or an error,
/// `head` holds nothing meaningful.
pub fn parse_head_into(
    buf: &[u8],
    limits: &Limits,
    head: &mut RequestHead,
) -> Result<Option<usize>, HttpError> {
    let bounds = Bounds::new(limits);
    let Some(start) = skip_empty_lines(buf)? else {
        return Ok(None);
    };
    match parse_with_slots(buf, start, &bounds, head) {
        Err(HttpError::VersionNotSupported) => match newer_http1_minor(&buf[start..]) {
            // httparse knows only 1.0 and 1.1: parse a copy that says 1.1.
            // Rare, so the copy costs nothing that matters.
            Some(digit) => {
                let mut copy = buf.to_vec();
                copy[start + digit] = b'1';
                parse_with_slots(&copy, start, &bounds, head)
            }
            None => Err(HttpError::VersionNotSupported),
        },
        parsed => parsed,
    }
}

/// Where the minor digit is, if the request line ends in `HTTP/1.2` to
/// `HTTP/1.9`.
fn newer_http1_minor(rest: &[u8]) -> Option<usize> {
    let end = rest.iter().position(|&b| b == b'\r' || b == b'\n')?;
    match &rest[..end] {
        [
            ..,
            b' ',
            b'H',
            b'T',
            b'T',
            b'P',
            b'/',
            b'1',
            b'.',
            b'2'..=b'9',
        ] => Some(end - 1),
        _ => None,
    }
}

fn parse_with_slots(
    buf: &[u8],
    start: usize,
    bounds: &Bounds,
    head: &mut RequestHead,
) -> Result<Option<usize>, HttpError> {
    // One httparse slot per allowed field: httparse then reports
    // `TooManyHeaders` exactly when the count limit is exceeded. The slots
    // are uninitialised, so the stack array costs nothing per call.
    if bounds.fields <= STACK_FIELDS {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_FIELDS];
        parse_after_empty_lines(buf, start, bounds, &mut slots[..bounds.fields], head)
    } else {
        let mut slots = Vec::with_capacity(bounds.fields);
        slots.resize_with(bounds.fields, MaybeUninit::uninit);
        parse_after_empty_lines(buf, start, bounds, &mut slots, head)
    }
}

/// Returns the offset of the request line, after any leading CRLFs, or
/// `None` if the buffer holds nothing else yet.
#[inline]
fn skip_empty_lines(buf: &[u8]) -> Result<Option<usize>, HttpError> {
    let mut i = 0;
    loop {
        match buf.get(i) {
            None => return Ok(None),
            Some(b'\r') => match buf.get(i + 1) {
                None => return Ok(None),
                Some(b'\n') => i += 2,
                Some(_) => return Err(HttpError::BadRequest("bare CR before request line")),
            },
            Some(b'\n') => return Err(HttpError::BadRequest("bare LF before request line")),
            Some(_) => return Ok(Some(i)),
        }
        if i > 2 * MAX_LEADING_EMPTY_LINES {
            return Err(HttpError::BadRequest(
                "too many empty lines before request line",
            ));
        }
    }
}

fn parse_after_empty_lines<'b>(
    buf: &'b [u8],
    start: usize,
    bounds: &Bounds,
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
    head: &mut RequestHead,
) -> Result<Option<usize>, HttpError> {
    let rest = &buf[start..];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(rest, slots) {
        Ok(httparse::Status::Complete(n)) => {
            if start + n > bounds.head {
                return Err(HttpError::FieldsTooLarge("request head too large"));
            }
            build_head(rest, &req, n, bounds, head)?;
            Ok(Some(start + n))
        }
        Ok(httparse::Status::Partial) => {
            check_incomplete(buf, start, bounds)?;
            Ok(None)
        }
        Err(httparse::Error::Version) => version_error(rest, req.path, bounds),
        Err(httparse::Error::TooManyHeaders) => {
            // The request line parsed, so `path` and `version` are known.
            if let Some(path) = req.path
                && request_line_len(rest, path) > bounds.request_line
            {
                let len = request_line_len(rest, path).min(rest.len());
                return Err(line_too_long(&rest[..len]));
            }
            Err(HttpError::FieldsTooLarge("too many header fields"))
        }
        Err(httparse::Error::Token) if req.method.is_none() => {
            Err(HttpError::BadRequest("invalid method"))
        }
        Err(httparse::Error::Token) => Err(HttpError::BadRequest("invalid request target")),
        Err(httparse::Error::HeaderName) => Err(HttpError::BadRequest("invalid header field name")),
        Err(httparse::Error::HeaderValue) => {
            Err(HttpError::BadRequest("invalid byte in header field value"))
        }
        Err(httparse::Error::NewLine) => Err(HttpError::BadRequest("invalid line ending")),
        Err(_) => Err(HttpError::BadRequest("malformed request head")),
    }
}

/// Offset of `p` (a pointer into `base`) from the start of `base`.
#[inline]
fn offset(base: &[u8], p: *const u8) -> usize {
    p as usize - base.as_ptr() as usize
}

/// Length of the request line without CRLF, given a parsed target:
/// the target is followed by exactly " HTTP/1.x".
#[inline]
fn request_line_len(rest: &[u8], path: &str) -> usize {
    offset(rest, path.as_ptr()) + path.len() + b" HTTP/1.x".len()
}

/// A request line over the limit, by what makes it long: the target is a
/// 414 (RFC 9112 §3, a MUST), the method a 501 (the same section, a
/// SHOULD: longer than any method we implement), anything after the
/// target a malformed line (400). The longest part is taken to be at fault.
fn line_too_long(line: &[u8]) -> HttpError {
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().map_or(0, <[u8]>::len);
    let target = parts.next().map_or(0, <[u8]>::len);
    let rest = parts.next().map_or(0, <[u8]>::len);
    if method >= target && method >= rest {
        HttpError::NotImplemented("method too long")
    } else if target >= rest {
        HttpError::UriTooLong
    } else {
        HttpError::BadRequest("malformed request line")
    }
}

/// Is a line that has no LF yet already longer than `limit`? The last byte
/// may be the CR of a CRLF that is still arriving.
#[inline]
fn open_line_exceeds(line: &[u8], limit: usize) -> bool {
    line.len() > limit + 1 || (line.len() == limit + 1 && line[limit] != b'\r')
}

/// Length of a line given with its terminating LF, not counting CR or LF.
#[inline]
fn closed_line_len(line_and_lf: &[u8]) -> usize {
    let lf = line_and_lf.len() - 1;
    if lf > 0 && line_and_lf[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    }
}

#[inline]
fn find_lf(hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == b'\n')
}

/// httparse saw a valid but unfinished head. Fail now if what is there
/// already breaks a limit, so the caller never buffers without bound.
/// (Slow path: only runs while a head is still arriving.)
fn check_incomplete(buf: &[u8], start: usize, bounds: &Bounds) -> Result<(), HttpError> {
    let rest = &buf[start..];
    // Look no further than the longest acceptable line plus CRLF.
    let window = &rest[..rest.len().min(bounds.request_line + 2)];
    let Some(lf) = find_lf(window) else {
        if open_line_exceeds(window, bounds.request_line) {
            return Err(line_too_long(window));
        }
        return Ok(());
    };
    if closed_line_len(&rest[..=lf]) > bounds.request_line {
        return Err(line_too_long(&rest[..lf]));
    }
    let mut pos = lf + 1;
    let mut count = 0usize;
    while pos < rest.len() {
        let end = rest.len().min(pos + bounds.field_size + 2);
        let window = &rest[pos..end];
        match find_lf(window) {
            None => {
                if open_line_exceeds(window, bounds.field_size) {
                    return Err(HttpError::FieldsTooLarge("header field too long"));
                }
                break;
            }
            Some(i) => {
                if closed_line_len(&window[..=i]) > bounds.field_size {
                    return Err(HttpError::FieldsTooLarge("header field too long"));
                }
                count += 1;
                if count > bounds.fields {
                    return Err(HttpError::FieldsTooLarge("too many header fields"));
                }
                pos += i + 1;
            }
        }
    }
    if buf.len() > bounds.head {
        return Err(HttpError::FieldsTooLarge("request head too large"));
    }
    Ok(())
}

/// httparse accepts only `HTTP/1.0` and `HTTP/1.1`. Tell a well-formed but
/// unsupported version (505) from garbage (400), waiting for more bytes if
/// the version is still arriving and could go either way.
fn version_error(
    rest: &[u8],
    path: Option<&str>,
    bounds: &Bounds,
) -> Result<Option<usize>, HttpError> {
    let Some(path) = path else {
        return Err(HttpError::BadRequest("malformed request line"));
    };
    let vstart = offset(rest, path.as_ptr()) + path.len() + 1;
    let tail = &rest[vstart..];
    let end = tail.iter().position(|&b| b == b'\r' || b == b'\n');
    let line_len = vstart + end.unwrap_or(tail.len());
    if line_len > bounds.request_line {
        return Err(line_too_long(&rest[..line_len]));
    }
    let is_digit = |b: Option<&u8>| b.is_some_and(u8::is_ascii_digit);
    match end {
        Some(end) => {
            let v = &tail[..end];
            let well_formed =
                v.len() == 8 && is_digit(v.get(5)) && v[6] == b'.' && is_digit(v.get(7))
                    || v.len() == 6 && is_digit(v.get(5)) && v[5] != b'1';
            if well_formed && v.starts_with(b"HTTP/") {
                Err(HttpError::VersionNotSupported)
            } else {
                Err(HttpError::BadRequest("malformed HTTP version"))
            }
        }
        None => {
            // Could more bytes still make it `HTTP/D.D` or `HTTP/D`?
            let v = tail;
            let n = v.len().min(5);
            let could = v.len() <= 8
                && v[..n] == b"HTTP/"[..n]
                && (v.len() <= 5 || v[5].is_ascii_digit())
                && (v.len() <= 6 || v[6] == b'.')
                && (v.len() <= 7 || v[7].is_ascii_digit());
            if could {
                Ok(None)
            } else {
                Err(HttpError::BadRequest("malformed HTTP version"))
            }
        }
    }
}

/// Strips SP and HTAB (RFC 9110 OWS) — and nothing else — from both ends.
/// (Also what the response side strips from the app's header values.)
#[inline]
pub fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[inline]
fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
}

/// RFC 9112 §3.2: a Host with an invalid value is a 400. The value is
/// `uri-host [ ":" port ]` (RFC 3986 §3.2.2-3): an IP literal in brackets
/// or a reg-name, then optionally `:` and digits. It may be empty (no
/// authority), and so may the host (reg-name is `*( ... )`): `:8080` has
/// the grammar, and the environ then takes the listener's name. Unlike a
/// target's authority (`check_target`), Host is not itself an http URI.
/// Anything else (SP, `/`, `@`, `?`, `#`, quotes, controls, non-ASCII,
/// stray brackets, a non-numeric port) cannot be a host and would reach
/// the app as SERVER_NAME / HTTP_HOST.
#[inline]
fn valid_host(v: &[u8]) -> bool {
    split_authority(v).is_some()
}

/// Splits `uri-host [ ":" port ]` into the host (brackets included for an
/// IP literal; possibly empty) and the port digits (`None` without `:`,
/// possibly empty after it, as `port = *DIGIT` allows). `None` if `v` does
/// not have that structure. One table lookup per byte of a reg-name.
#[inline]
pub fn split_authority(v: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let host_end = if v.first() == Some(&b'[') {
        let close = v.iter().position(|&b| b == b']')?;
        if !valid_ip_literal(&v[1..close]) {
            return None;
        }
        close + 1
    } else {
        v.iter()
            .position(|&b| !REG_NAME[b as usize])
            .unwrap_or(v.len())
    };
    let (host, rest) = v.split_at(host_end);
    match rest {
        [] => Some((host, None)),
        [b':', port @ ..] if port.iter().all(u8::is_ascii_digit) => Some((host, Some(port))),
        _ => None,
    }
}

/// The inside of `[...]`: RFC 3986 `IPv6address` (RFC 6874's `%25` zone
/// suffix tolerated) or `IPvFuture` (`v` 1*HEXDIG `.` 1*(unreserved /
/// sub-delims / `:`)). Only runs for bracketed hosts, which are rare.
fn valid_ip_literal(lit: &[u8]) -> bool {
    if let [b'v' | b'V', rest @ ..] = lit {
        let Some(dot) = rest.iter().position(|&b| b == b'.') else {
            return false;
        };
        let (ver, tail) = (&rest[..dot], &rest[dot + 1..]);
        return !ver.is_empty()
            && ver.iter().all(u8::is_ascii_hexdigit)
            && !tail.is_empty()
            && tail
                .iter()
                .all(|&b| b == b':' || (REG_NAME[b as usize] && b != b'%'));
    }
    let (addr, zone) = match lit.iter().position(|&b| b == b'%') {
        Some(i) => (&lit[..i], Some(&lit[i..])),
        None => (lit, None),
    };
    if let Some(zone) = zone {
        // IPv6addrz: "%25" 1*( unreserved / pct-encoded )
        let Some(id) = zone.strip_prefix(b"%25") else {
            return false;
        };
        if id.is_empty() || !valid_pct_unreserved(id) {
            return false;
        }
    }
    // std's parser takes exactly the RFC 4291 text forms (and allocates
    // nothing).
    std::str::from_utf8(addr).is_ok_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
}

/// `*( unreserved / pct-encoded )`.
fn valid_pct_unreserved(s: &[u8]) -> bool {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                if !(s.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && s.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                {
                    return false;
                }
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => i += 1,
            _ => return false,
        }
    }
    true
}

/// The bytes of an RFC 3986 reg-name (unreserved, sub-delims and `%` of
/// pct-encoded), as a table (one load per byte). `_` is unreserved, so
/// `under_score.example` is fine; `:`, `[` and `]` are structure, not
/// host characters.
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
            );
        i += 1;
    }
    t
};

/// Gunicorn's default rule for methods (unless
/// `permit_unconventional_http_method`), stricter than RFC 9110's token: 3
/// to 20 characters, no lowercase letter and no `#`. Methods are case-sensitive,
/// so `delete` is not DELETE, yet a framework that upper-cases it would
/// run a DELETE view for a request a proxy's rule for DELETE never saw.
#[inline]
fn check_conventional_method(method: &str) -> Result<(), HttpError> {
    let m = method.as_bytes();
    if !(3..=20).contains(&m.len()) || m.iter().any(|&b| b.is_ascii_lowercase() || b == b'#') {
        return Err(HttpError::BadRequest("invalid HTTP method"));
    }
    Ok(())
}

/// RFC 9112 §3.2: the form of the request-target must suit the method.
/// origin-form (`/...`) for everything but CONNECT; `*` only for OPTIONS;
/// authority-form (`host:port`) only, and always, for CONNECT; otherwise
/// absolute-form, of which only `http://` and `https://` URIs with a valid,
/// non-empty authority and no userinfo are served (RFC 9110 §4.2.1, §4.2.4).
#[inline]
fn check_target(method: &str, target: &str) -> Result<(), HttpError> {
    if !target.is_ascii() {
        // RFC 9112 §3.2 / RFC 3986: a URI is ASCII, anything else
        // percent-encoded; §3 says to answer an invalid request line
        // 400. Gunicorn does too.
        return Err(HttpError::BadRequest("non-ASCII byte in request target"));
    }
    let connect = method == "CONNECT";
    if target.as_bytes().first() == Some(&b'/') && !connect {
        return Ok(()); // origin-form: the usual case
    }
    check_other_target(method, target.as_bytes(), connect)
}

fn check_other_target(method: &str, t: &[u8], connect: bool) -> Result<(), HttpError> {
    if connect {
        // authority-form = uri-host ":" port; CONNECT has no default port.
        return match split_authority(t) {
            Some((host, Some(port))) if !host.is_empty() && !port.is_empty() => Ok(()),
            _ => Err(HttpError::BadRequest("CONNECT target is not host:port")),
        };
    }
    // A fragment belongs to no form; it is tolerated as in origin-form (and
    // dropped when the environ is built).
    let t = match t.iter().position(|&b| b == b'#') {
        Some(i) => &t[..i],
        None => t,
    };
    if t == b"*" {
        return if method == "OPTIONS" {
            Ok(())
        } else {
            Err(HttpError::BadRequest("'*' target is only for OPTIONS"))
        };
    }
    let rest = strip_prefix_ignore_case(t, b"http://")
        .or_else(|| strip_prefix_ignore_case(t, b"https://"))
        .ok_or(HttpError::BadRequest("invalid request target"))?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains(&b'@') {
        return Err(HttpError::BadRequest("userinfo in request target"));
    }
    match split_authority(authority) {
        Some((host, _)) if !host.is_empty() => Ok(()),
        _ => Err(HttpError::BadRequest("invalid authority in request target")),
    }
}

#[inline]
fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// Elements of a comma-separated list value, OWS-trimmed (may be empty).
#[inline]
fn list_elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim_ows)
}

/// RFC 9110 §8.6: `Content-Length = 1*DIGIT`. No sign, no list, no inner
/// whitespace, no overflow: anything a proxy might read differently is a 400.
fn parse_content_length(v: &[u8]) -> Result<u64, HttpError> {
    if v.is_empty() {
        return Err(HttpError::BadRequest("empty Content-Length"));
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return Err(HttpError::BadRequest("invalid Content-Length"));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(HttpError::BadRequest("Content-Length overflow"))?;
    }
    Ok(n)
}

/// Transfer-Encoding codings seen so far, across all TE field lines in order.
#[derive(Default)]
struct TransferCodings {
    present: bool,
    chunked_count: u32,
    last_is_chunked: bool,
    /// A coding that is not registered (or obsolete, like `identity`).
    unknown: bool,
    /// A registered coding we do not decode (gzip, deflate, compress).
    unimplemented: bool,
}

impl TransferCodings {
    fn add(&mut self, value: &[u8]) -> Result<(), HttpError> {
        self.present = true;
        let mut any = false;
        for coding in list_elements(value) {
            // RFC 9110 §5.6.1: empty list elements are ignored
            // (`chunked,` and `, chunked` are `chunked`).
            if coding.is_empty() {
                continue;
            }
            any = true;
            // Parameters (`;q=..`) are not accepted on any coding we know.
            if !coding.iter().all(|&b| is_tchar(b)) {
                return Err(HttpError::BadRequest("invalid Transfer-Encoding"));
            }
            self.last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
            if self.last_is_chunked {
                self.chunked_count += 1;
            } else if [
                &b"gzip"[..],
                b"x-gzip",
                b"deflate",
                b"compress",
                b"x-compress",
            ]
            .iter()
            .any(|k| coding.eq_ignore_ascii_case(k))
            {
                self.unimplemented = true;
            } else {
                self.unknown = true;
            }
        }
        // A field line naming no coding at all (empty, or only commas) is
        // not a list anyone sends on purpose: refuse it rather than guess.
        if !any {
            return Err(HttpError::BadRequest("empty Transfer-Encoding"));
        }
        Ok(())
    }

    /// RFC 9112 §6.3 then §6.1, in this order: a framing that does not end
    /// in exactly one `chunked` is a 400 (the body length cannot be
    /// determined: a MUST, whatever the codings are); then a coding we do
    /// not know, or know but do not decode, is a 501 (a SHOULD).
    fn finish(&self) -> Result<BodyKind, HttpError> {
        if !self.last_is_chunked {
            Err(HttpError::BadRequest(
                "chunked is not the final transfer coding",
            ))
        } else if self.chunked_count > 1 {
            Err(HttpError::BadRequest("chunked applied more than once"))
        } else if self.unknown {
            Err(HttpError::NotImplemented("unknown transfer coding"))
        } else if self.unimplemented {
            Err(HttpError::NotImplemented("unsupported transfer coding"))
        } else {
            Ok(BodyKind::Chunked)
        }
    }
}

/// Turns a complete httparse result into `head`, applying the checks
/// httparse leaves to us.
fn build_head(
    rest: &[u8],
    req: &httparse::Request<'_, '_>,
    n: usize,
    bounds: &Bounds,
    head: &mut RequestHead,
) -> Result<(), HttpError> {
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HttpError::BadRequest("malformed request line"));
    };
    let fields: &[httparse::Header<'_>] = &*req.headers;

    // Line structure, from httparse's slices alone (no rescan of the bytes):
    // each line ends where the next begins; httparse took `\n` or `\r\n` as
    // the terminator, and we insist on the latter.
    let rl_len = request_line_len(rest, path);
    if rl_len > bounds.request_line {
        return Err(line_too_long(&rest[..rl_len]));
    }
    if rest[rl_len] != b'\r' || rest[n - 2] != b'\r' {
        return Err(HttpError::BadRequest("bare LF line ending"));
    }
    if !bounds.permit_unconventional_method {
        check_conventional_method(method)?;
    }
    check_target(method, path)?;
    for (i, f) in fields.iter().enumerate() {
        let line_start = offset(rest, f.name.as_ptr());
        let next_start = match fields.get(i + 1) {
            Some(next) => offset(rest, next.name.as_ptr()),
            None => n - 2,
        };
        if rest[next_start - 2] != b'\r' {
            return Err(HttpError::BadRequest("bare LF line ending"));
        }
        if next_start - 2 - line_start > bounds.field_size {
            return Err(HttpError::FieldsTooLarge("header field too long"));
        }
    }

    // Semantics, one pass.
    head.fields.clear();
    let mut content_length: Option<u64> = None;
    let mut te = TransferCodings::default();
    let mut hosts = 0u32;
    let mut content_types = 0u32;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut expect_continue = false;
    let mut expect_other = false;
    let mut forwarder = false;
    for f in fields {
        let name = f.name;
        // `X_Forwarded_For` would become HTTP_X_FORWARDED_FOR in WSGI, the
        // same key as `X-Forwarded-For`; drop it so it cannot impersonate
        // a header the proxy vouches for (and so it cannot frame anything).
        // Gunicorn's forwarder_headers are the exception: SCRIPT_NAME and
        // PATH_INFO are kept, for the environ to use or drop by the
        // sender's trust (they frame nothing).
        if name.bytes().any(|b| b == b'_') {
            if is_forwarder_header(name) {
                forwarder = true;
                head.fields.push(Field {
                    name: Span::of(rest, name.as_bytes()),
                    value: Span::of(rest, trim_ows(f.value)),
                });
            }
            continue;
        }
        let value = trim_ows(f.value);
        match name.len() {
            4 if name.eq_ignore_ascii_case("host") => {
                hosts += 1;
                if !valid_host(value) {
                    return Err(HttpError::BadRequest("invalid Host"));
                }
            }
            // RFC 9110 §10.1.1: `100-continue` is the only expectation
            // (ignored in HTTP/1.0); any other member gets a 417, as in
            // Gunicorn. Empty list elements are ignored (§5.6.1).
            6 if name.eq_ignore_ascii_case("expect") => {
                for member in list_elements(value) {
                    if member.eq_ignore_ascii_case(b"100-continue") {
                        expect_continue |= minor == 1;
                    } else if !member.is_empty() {
                        expect_other = true;
                    }
                }
            }
            10 if name.eq_ignore_ascii_case("connection") => {
                for token in list_elements(value) {
                    conn_close |= token.eq_ignore_ascii_case(b"close");
                    conn_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            14 if name.eq_ignore_ascii_case("content-length") => {
                // Even equal duplicates: a proxy may have used the other one.
                if content_length.is_some() {
                    return Err(HttpError::BadRequest("duplicate Content-Length"));
                }
                content_length = Some(parse_content_length(value)?);
            }
            12 if name.eq_ignore_ascii_case("content-type") => content_types += 1,
            17 if name.eq_ignore_ascii_case("transfer-encoding") => te.add(value)?,
            _ => {}
        }
        head.fields.push(Field {
            name: Span::of(rest, name.as_bytes()),
            value: Span::of(rest, value),
        });
    }

    if hosts > 1 {
        return Err(HttpError::BadRequest("duplicate Host"));
    }
    // RFC 9110 §5.3: a field of one member cannot be repeated; two media
    // types (a multipart boundary each) leave the body's meaning to
    // whichever the reader picks. Gunicorn refuses them too.
    if content_types > 1 {
        return Err(HttpError::BadRequest("duplicate Content-Type"));
    }
    if hosts == 0 && minor == 1 {
        return Err(HttpError::BadRequest("missing Host"));
    }
    let body = if te.present {
        if minor == 0 {
            return Err(HttpError::BadRequest(
                "Transfer-Encoding in HTTP/1.0 request",
            ));
        }
        if content_length.is_some() {
            return Err(HttpError::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        te.finish()?
    } else {
        match content_length {
            Some(len) => BodyKind::Length(len),
            None => BodyKind::Empty,
        }
    };
    // Only now: a malformed request is a 400 whatever it expects.
    if expect_other {
        return Err(HttpError::ExpectationFailed);
    }
    let keep_alive = !conn_close && (minor == 1 || conn_keep_alive);

    head.raw.clear();
    head.raw.extend_from_slice(&rest[..n]);
    head.method = Span::of(rest, method.as_bytes());
    if bounds.casefold_method {
        let (start, end) = (head.method.start as usize, head.method.end as usize);
        head.raw[start..end].make_ascii_uppercase();
    }
    head.target = Span::of(rest, path.as_bytes());
    head.minor_version = minor;
    head.body = body;
    head.keep_alive = keep_alive;
    head.expect_continue = expect_continue;
    head.forwarder_fields = forwarder;
    Ok(())
}

/// Gunicorn's default `forwarder_headers`: names with `_` that a trusted
/// proxy may send (the environ ignores them from anyone else).
pub fn is_forwarder_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("script_name") || name.eq_ignore_ascii_case("path_info")
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = Result<Option<(RequestHead, usize)>, HttpError>;

    fn parse(b: &[u8]) -> Parsed {
        parse_head(b, &Limits::default())
    }

    fn ok(b: &[u8]) -> RequestHead {
        let (head, n) = parse(b).expect("should parse").expect("should be complete");
        assert_eq!(n, b.len(), "head should span the whole input");
        head
    }

    fn status(b: &[u8]) -> u16 {
        match parse(b) {
            Err(e) => e.status(),
            Ok(r) => panic!(
                "expected an error for {:?}, got {:?}",
                String::from_utf8_lossy(b),
                r
            ),
        }
    }

    /// A GET with `extra` header lines (each with its CRLF) after Host.
    fn get_with(extra: &str) -> Vec<u8> {
        format!("GET / HTTP/1.1\r\nHost: h\r\n{extra}\r\n").into_bytes()
    }

    fn get_with_bytes(extra: &[u8]) -> Vec<u8> {
        [&b"GET / HTTP/1.1\r\nHost: h\r\n"[..], extra, b"\r\n"].concat()
    }

    fn post_with(extra: &str) -> Vec<u8> {
        format!("POST /p HTTP/1.1\r\nHost: h\r\n{extra}\r\n").into_bytes()
    }

    fn value(h: &RequestHead, name: &str) -> Vec<u8> {
        h.header(name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .to_vec()
    }

    const SIMPLE: &[u8] = b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nAccept: */*\r\nX-Mixed-Case: V\r\n\r\n";

    // ---- basics ---------------------------------------------------------

    #[test]
    fn simple_get() {
        let h = ok(SIMPLE);
        assert_eq!(h.method(), "GET");
        assert_eq!(h.target(), "/a/b?c=d");
        assert_eq!(h.minor_version, 1);
        assert_eq!(h.body, BodyKind::Empty);
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
        let names: Vec<&str> = h.headers().iter().map(|h| h.name).collect();
        assert_eq!(names, ["Host", "User-Agent", "Accept", "X-Mixed-Case"]);
        assert_eq!(value(&h, "x-mixed-case"), b"V");
        assert_eq!(h.header("nope"), None);
    }

    #[test]
    fn host_characters() {
        for b in 0..=255u8 {
            let want = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b);
            assert_eq!(valid_host(&[b]), want || b == b':', "byte {b:#x}");
            assert_eq!(REG_NAME[b as usize], want, "byte {b:#x}");
        }
        assert!(valid_host(b"[::1]:8080") && valid_host(b""));
        assert!(!valid_host(b"a b") && !valid_host(b"a/b") && !valid_host(b"a@b"));
    }

    #[test]
    fn authority_structure() {
        let split = |v: &'static str| {
            split_authority(v.as_bytes()).map(|(h, p)| {
                (
                    std::str::from_utf8(h).unwrap(),
                    p.map(|p| std::str::from_utf8(p).unwrap()),
                )
            })
        };
        assert_eq!(split("example.com"), Some(("example.com", None)));
        assert_eq!(
            split("example.com:8080"),
            Some(("example.com", Some("8080")))
        );
        assert_eq!(split("example.com:"), Some(("example.com", Some(""))));
        assert_eq!(split("[::1]:80"), Some(("[::1]", Some("80"))));
        assert_eq!(split("[::1]"), Some(("[::1]", None)));
        assert_eq!(split(":80"), Some(("", Some("80"))));
        assert_eq!(split(""), Some(("", None)));
        for bad in [
            "example.com:abc",
            "example.com:80:80",
            "example.com:8a",
            "example.com:-1",
            "[::1",
            "::1",
            "a]b",
            "a[b",
            "[::1]x",
            "[::1]:x",
            "[::1]]",
            "[[::1]]",
            "x[::1]",
            "[]",
            "[1]",
            "[::g]",
            "[1:2:3:4:5:6:7:8:9]",
            "[12345::]",
            "[1::2::3]",
            "[::1%eth0]",
            "[::1%25]",
            "[::1%25a b]",
            "[::1%25%zz]",
            "[v1]",
            "[v.x]",
            "[vg.x]",
            "[v1.]",
            "[v1.a/b]",
            "[v1.a%20]",
            "[example.com]",
        ] {
            assert_eq!(split(bad), None, "{bad:?}");
        }
        for good in [
            "[::]",
            "[::ffff:1.2.3.4]",
            "[2001:db8::8:800:200c:417a]:443",
            "[FE80::1%25eth0]",
            "[fe80::1%25en%30]",
            "[v1.x:y]",
            "[VaF.a-b_c~!$&'()*+,;=]:1",
        ] {
            assert!(split(good).is_some(), "{good:?}");
        }
    }

    #[test]
    fn reused_head_holds_only_the_new_request() {
        let mut head = RequestHead::default();
        let n = parse_head_into(SIMPLE, &Limits::default(), &mut head)
            .unwrap()
            .unwrap();
        assert_eq!(n, SIMPLE.len());
        let second = b"POST /x HTTP/1.0\r\nContent-Length: 2\r\n\r\nab";
        let n = parse_head_into(second, &Limits::default(), &mut head)
            .unwrap()
            .unwrap();
        assert_eq!(n, second.len() - 2);
        assert_eq!((head.method(), head.target()), ("POST", "/x"));
        assert_eq!(head.minor_version, 0);
        assert_eq!(head.body, BodyKind::Length(2));
        let names: Vec<&str> = head.headers().iter().map(|h| h.name).collect();
        assert_eq!(names, ["Content-Length"]);
        assert_eq!(head.header("content-length"), Some(&b"2"[..]));
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let full = post_with("Content-Length: 3\r\n");
        for i in 0..full.len() {
            assert_eq!(parse(&full[..i]).unwrap().map(|x| x.1), None, "prefix {i}");
        }
        let mut with_body = full.clone();
        with_body.extend_from_slice(b"abc");
        let (h, n) = parse(&with_body).unwrap().unwrap();
        assert_eq!(n, full.len());
        assert_eq!(h.body, BodyKind::Length(3));
    }

    #[test]
    fn every_prefix_with_leading_crlf_is_incomplete() {
        let mut full = b"\r\n\r\n".to_vec();
        full.extend_from_slice(SIMPLE);
        for i in 0..full.len() {
            assert!(parse(&full[..i]).unwrap().is_none(), "prefix {i}");
        }
        assert_eq!(parse(&full).unwrap().unwrap().1, full.len());
    }

    #[test]
    fn pipelined_request_left_unconsumed() {
        let mut buf = SIMPLE.to_vec();
        buf.extend_from_slice(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\nGET /thi");
        let (h1, n1) = parse(&buf).unwrap().unwrap();
        assert_eq!(n1, SIMPLE.len());
        assert_eq!(h1.target(), "/a/b?c=d");
        let (h2, n2) = parse(&buf[n1..]).unwrap().unwrap();
        assert_eq!(h2.target(), "/second");
        assert!(parse(&buf[n1 + n2..]).unwrap().is_none());
    }

    #[test]
    fn leading_empty_lines() {
        let mut b = b"\r\n\r\n".to_vec();
        b.extend_from_slice(SIMPLE);
        assert_eq!(ok(&b).target(), "/a/b?c=d");
        assert!(parse(b"\r").unwrap().is_none());
        assert!(parse(b"\r\n").unwrap().is_none());
        assert_eq!(status(b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
        assert_eq!(status(b"\rGET / HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
        let mut many = b"\r\n".repeat(MAX_LEADING_EMPTY_LINES);
        many.extend_from_slice(SIMPLE);
        ok(&many);
        let mut too_many = b"\r\n".repeat(MAX_LEADING_EMPTY_LINES + 1);
        too_many.extend_from_slice(SIMPLE);
        assert_eq!(status(&too_many), 400);
        assert_eq!(status(&b"\r\n".repeat(100)), 400);
    }

    #[test]
    fn http10() {
        let h = ok(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(h.minor_version, 0);
        assert!(!h.keep_alive);
        assert!(h.headers().is_empty());
        let h = ok(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(h.keep_alive);
        let h = ok(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n");
        assert!(!h.keep_alive);
    }

    #[test]
    fn connection_header() {
        assert!(!ok(&get_with("Connection: close\r\n")).keep_alive);
        assert!(!ok(&get_with("Connection: CLOSE\r\n")).keep_alive);
        assert!(!ok(&get_with("Connection: Upgrade,\tclose \r\n")).keep_alive);
        assert!(!ok(&get_with("Connection: upgrade\r\nConnection: close\r\n")).keep_alive);
        assert!(ok(&get_with("Connection: keep-alive\r\n")).keep_alive);
        assert!(ok(&get_with("Connection: closed\r\n")).keep_alive);
        assert!(ok(&get_with("Connection: Upgrade\r\n")).keep_alive);
    }

    #[test]
    fn expect_continue() {
        assert!(ok(&post_with("Expect: 100-continue\r\nContent-Length: 1\r\n")).expect_continue);
        assert!(ok(&post_with("Expect: 100-Continue\r\n")).expect_continue);
        assert!(ok(&post_with("Expect: 100-CONTINUE, \r\n")).expect_continue);
        assert!(ok(&post_with("Expect: ,100-continue\r\n")).expect_continue);
        assert!(!ok(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
        // No member at all: nothing is expected.
        assert!(!ok(&post_with("Expect:\r\n")).expect_continue);
        assert!(!ok(&post_with("Expect: , \r\n")).expect_continue);
    }

    #[test]
    fn other_expectations_are_417() {
        for v in [
            "something-else",
            "100-continue, foo",
            "foo, 100-continue",
            "100-continue;x=1",
            "100-continue=1",
            "101-continue",
            "\"100-continue\"",
        ] {
            let req = post_with(&format!("Expect: {v}\r\nContent-Length: 1\r\n"));
            assert_eq!(
                parse(&req).unwrap_err(),
                HttpError::ExpectationFailed,
                "{v}"
            );
            assert_eq!(status(&req), 417, "{v}");
        }
        // In HTTP/1.0 too: 100-continue is ignored there, not the others.
        assert_eq!(status(b"POST / HTTP/1.0\r\nExpect: foo\r\n\r\n"), 417);
        // Across field lines.
        assert_eq!(
            status(&post_with("Expect: 100-continue\r\nExpect: foo\r\n")),
            417
        );
        // A malformed request is a 400 whatever it expects.
        assert_eq!(
            status(&post_with("Expect: foo\r\nContent-Length: x\r\n")),
            400
        );
        assert_eq!(
            status(b"GET noslash HTTP/1.1\r\nHost: h\r\nExpect: foo\r\n\r\n"),
            400
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\nExpect: foo\r\n\r\n"), 400);
    }

    // ---- request line -----------------------------------------------------

    #[test]
    fn methods() {
        assert_eq!(ok(b"PURGE / HTTP/1.1\r\nHost: h\r\n\r\n").method(), "PURGE");
        assert_eq!(
            ok(b"M-SEARCH / HTTP/1.1\r\nHost: h\r\n\r\n").method(),
            "M-SEARCH"
        );
        assert_eq!(status(b"GE(T / HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
        // Gunicorn's conventions by default: 3 to 20 characters, no lowercase
        for m in ["get", "Get", "GE", "ABCDEFGHIJKLMNOPQRSTU", "G#T"] {
            let req = format!("{m} / HTTP/1.1\r\nHost: h\r\n\r\n");
            assert_eq!(status(req.as_bytes()), 400, "{m}");
        }
        let lenient = Limits {
            permit_unconventional_method: true,
            ..Limits::default()
        };
        let req = b"get / HTTP/1.1\r\nHost: h\r\n\r\n";
        let head = parse_head(req, &lenient).unwrap().unwrap().0;
        assert_eq!(head.method(), "get");
        let folding = Limits {
            casefold_method: true,
            ..lenient
        };
        let head = parse_head(req, &folding).unwrap().unwrap().0;
        assert_eq!(head.method(), "GET");
        assert_eq!(status(b"GE@T / HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
        assert_eq!(status(b" GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
        assert_eq!(status(b"GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
        // detected before the line is complete
        assert_eq!(status(b"GE(T"), 400);
    }

    #[test]
    fn targets() {
        assert_eq!(ok(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").target(), "*");
        assert_eq!(
            ok(b"GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n").target(),
            "http://a/b"
        );
        for bad in [
            "/caf\u{e9}".as_bytes(),
            "/x?q=\u{e9}".as_bytes(),
            "http://h/caf\u{e9}".as_bytes(),
            b"/a\x01b",
            b"/a\x7fb",
            b"/a\x00b",
            b"/a\tb",
            b"/a\xffb",
            b"/a b",
        ] {
            let mut req = b"GET ".to_vec();
            req.extend_from_slice(bad);
            req.extend_from_slice(b" HTTP/1.1\r\nHost: h\r\n\r\n");
            assert_eq!(status(&req), 400, "{bad:?}");
        }
        assert_eq!(status(b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
        assert_eq!(status(b"GET /  HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
        assert_eq!(status(b"GET  HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
        assert_eq!(status(b"GET /\r\n\r\n"), 400); // HTTP/0.9
    }

    fn target_status(method: &str, target: &str) -> Result<(), u16> {
        let req = format!("{method} {target} HTTP/1.1\r\nHost: h\r\n\r\n");
        match parse(req.as_bytes()) {
            Ok(Some((h, _))) => {
                assert_eq!(h.target(), target);
                Ok(())
            }
            Ok(None) => panic!("incomplete"),
            Err(e) => Err(e.status()),
        }
    }

    #[test]
    fn target_forms() {
        for (m, t) in [
            ("GET", "/"),
            ("GET", "//x"),
            ("GET", "/a?b#frag"),
            ("POST", "/?"),
            ("OPTIONS", "*"),
            ("OPTIONS", "*#frag"),
            ("OPTIONS", "/"),
            ("OPTIONS", "http://h"),
            ("GET", "http://h"),
            ("GET", "http://h/"),
            ("GET", "HTTP://H:80/x?y"),
            ("GET", "https://h?q"),
            ("GET", "HtTpS://h:/x"),
            ("GET", "http://h#frag"),
            ("GET", "http://[::1]:8080/x"),
            ("GET", "http://127.0.0.1/"),
            ("GET", "http://h/a@b"),
            ("GET", "http://h/?u=a@b"),
            ("CONNECT", "h:443"),
            ("CONNECT", "127.0.0.1:1"),
            ("CONNECT", "[::1]:443"),
        ] {
            assert_eq!(target_status(m, t), Ok(()), "{m} {t}");
        }
        for (m, t) in [
            // origin-form must start with '/'
            ("GET", "noslash"),
            ("GET", "a/b"),
            ("GET", "?x"),
            ("GET", "#x"),
            // asterisk-form: OPTIONS only, and exactly '*'
            ("GET", "*"),
            ("M-SEARCH", "*"),
            ("options", "*"),
            ("OPTIONS", "*?x"),
            ("OPTIONS", "**"),
            ("OPTIONS", "*/"),
            // authority-form: CONNECT only
            ("GET", "h:80"),
            ("OPTIONS", "h:80"),
            // CONNECT: authority-form only, with a host and a port
            ("CONNECT", "/"),
            ("CONNECT", "*"),
            ("CONNECT", "h"),
            ("CONNECT", "h:"),
            ("CONNECT", ":443"),
            ("CONNECT", "h:x"),
            ("CONNECT", "h:443/"),
            ("CONNECT", "http://h:443"),
            ("CONNECT", "u@h:443"),
            ("CONNECT", "[::1]"),
            ("CONNECT", "h:443#f"),
            // absolute-form: http(s) with a valid, non-empty authority
            ("GET", "http:x"),
            ("GET", "http:/x"),
            ("GET", "http:///x"),
            ("GET", "http://"),
            ("GET", "http://?x"),
            ("GET", "http://#x"),
            ("GET", "http://:80/x"),
            ("GET", "http://h:x/"),
            ("GET", "http://h:80:80/"),
            ("GET", "http://[::1/x"),
            ("GET", "http://a]b/x"),
            ("GET", "http://ev\"il<>/x"),
            ("GET", "http://h\\x/"),
            ("GET", "http://user@h/"),
            ("GET", "http://user:pw@h/"),
            ("GET", "http://@h/"),
            ("GET", "ftp://h/"),
            ("GET", "httpx://h/"),
            ("GET", "urn:x"),
            ("GET", "mailto:a@b"),
            ("GET", "h/x"),
        ] {
            assert_eq!(target_status(m, t), Err(400), "{m} {t}");
        }
    }

    #[test]
    fn versions() {
        for v in ["HTTP/1.2", "HTTP/1.9"] {
            let req = format!("\r\nGET /a?b {v}\r\nHost: h\r\nConnection: close\r\n\r\n");
            let head = ok(req.as_bytes());
            assert_eq!(head.minor_version, 1, "{v} is served as HTTP/1.1");
            assert_eq!(head.target(), "/a?b");
            assert!(!head.keep_alive);
        }
        // Keep-alive by default, as HTTP/1.1; incomplete stays incomplete.
        assert!(ok(b"GET / HTTP/1.5\r\nHost: h\r\n\r\n").keep_alive);
        assert!(matches!(parse(b"GET / HTTP/1.5\r\nHost: h\r\n"), Ok(None)));
        // The same rules as for 1.1 apply to the rest of the head.
        assert_eq!(status(b"GET / HTTP/1.2\r\n\r\n"), 400, "no Host");
        for v in ["HTTP/2.0", "HTTP/3.0", "HTTP/2", "HTTP/3", "HTTP/0.9"] {
            let req = format!("GET / {v}\r\nHost: h\r\n\r\n");
            assert_eq!(status(req.as_bytes()), 505, "{v}");
        }
        for v in [
            "HTTP/1.1x",
            "http/1.1",
            "HTTP/1",
            "HTTP/1.",
            "HTTP/10.0",
            "HTTP/1.10",
            "HTTP/1.1 ",
            "HTTPS/1.1",
            "HTTP/a.b",
            "HTTP/2.0.1",
            "X",
        ] {
            let req = format!("GET / {v}\r\nHost: h\r\n\r\n");
            assert_eq!(status(req.as_bytes()), 400, "{v}");
        }
        // Still arriving: wait while it could become a version of either kind.
        for partial in [
            "GET / H",
            "GET / HTTP/",
            "GET / HTTP/2",
            "GET / HTTP/2.",
            "GET / HTTP/2.0",
            "GET / HTTP/1.1\r",
        ] {
            assert!(parse(partial.as_bytes()).unwrap().is_none(), "{partial}");
        }
        assert_eq!(status(b"GET / XTTP"), 400);
        assert_eq!(status(b"GET / HTTP/2x"), 400);
        assert_eq!(status(b"GET / HTTP/2.0x"), 400);
        // The version is known once its line ends.
        assert_eq!(status(b"GET / HTTP/2.0\r"), 505);
    }

    #[test]
    fn bare_lf_rejected() {
        assert_eq!(status(b"GET / HTTP/1.1\nHost: h\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: h\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: h\r\n\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.0\r\n\n"), 400);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: h\r\nA: b\nC: d\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: h\r\nA: b  \nC: d\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: h\r\nA:\nC: d\r\n\r\n"),
            400
        );
        assert_eq!(status(b"GET / HTTP/1.1\n\n"), 400);
    }

    // ---- header syntax ---------------------------------------------------

    #[test]
    fn header_name_syntax() {
        assert_eq!(status(&get_with("Foo :x\r\n")), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost :x\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost\t:x\r\n\r\n"), 400);
        assert_eq!(status(&get_with(": x\r\n")), 400);
        assert_eq!(status(&get_with("Fo(o: x\r\n")), 400);
        assert_eq!(status(&get_with("Foo x\r\n")), 400);
        assert_eq!(status(&get_with("F\u{e9}o: x\r\n")), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\n Host: h\r\n\r\n"), 400);
    }

    #[test]
    fn obs_fold_rejected() {
        assert_eq!(status(&get_with("Foo: a\r\n b\r\n")), 400);
        assert_eq!(status(&get_with("Foo: a\r\n\tb\r\n")), 400);
        assert_eq!(status(&get_with("Foo:\r\n b\r\n")), 400);
    }

    #[test]
    fn header_value_bytes() {
        for bad in [
            &b"a\x00b"[..],
            b"a\rb",
            b"a\r",
            b"\x01",
            b"a\x08",
            b"a\x0bb",
            b"a\x0cb",
            b"a\x1fb",
            b"a\x7fb",
            b"\x0b",
        ] {
            let mut req = b"GET / HTTP/1.1\r\nHost: h\r\nX: ".to_vec();
            req.extend_from_slice(bad);
            req.extend_from_slice(b"\r\n\r\n");
            assert_eq!(status(&req), 400, "{bad:?}");
        }
        // LF inside a value would end the line; the remainder is not a field.
        assert_eq!(status(&get_with("X: a\nb\r\n")), 400);
        let h = ok(&get_with_bytes(b"X: a\tb\x80\xff\r\n"));
        assert_eq!(value(&h, "x"), b"a\tb\x80\xff");
        let h = ok(&get_with("X:\r\nY: \r\n"));
        assert_eq!(value(&h, "x"), b"");
        assert_eq!(value(&h, "y"), b"");
    }

    #[test]
    fn value_trimming() {
        let h = ok(&get_with_bytes(
            b"X: \t a  b \t \r\nY:\tz\t\r\nZ:\xa0v\xa0\r\n",
        ));
        assert_eq!(value(&h, "x"), b"a  b");
        assert_eq!(value(&h, "y"), b"z");
        // NBSP is obs-text, not whitespace: kept.
        assert_eq!(value(&h, "z"), b"\xa0v\xa0");
        assert_eq!(trim_ows(b" \t\x0b a \x0c\t "), b"\x0b a \x0c");
        assert_eq!(trim_ows(b" \t "), b"");
    }

    #[test]
    fn underscore_headers_dropped() {
        let h = ok(&get_with(
            "X_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 1.2.3.4\r\n",
        ));
        assert_eq!(h.headers().len(), 2);
        assert_eq!(value(&h, "x-forwarded-for"), b"1.2.3.4");
        assert!(h.header("x_forwarded_for").is_none());
        // Never framing-relevant.
        assert_eq!(
            ok(&post_with("Content_Length: 5\r\n")).body,
            BodyKind::Empty
        );
        assert_eq!(
            ok(&post_with("Transfer_Encoding: chunked\r\n")).body,
            BodyKind::Empty
        );
        assert_eq!(
            ok(&post_with("Content_Length: x\r\nContent-Length: 2\r\n")).body,
            BodyKind::Length(2)
        );
        assert_eq!(
            ok(&post_with(
                "Transfer_Encoding: gzip\r\nContent-Length: 2\r\n"
            ))
            .body,
            BodyKind::Length(2)
        );
        assert!(ok(&get_with("Connection_: close\r\n")).keep_alive);
        // A `Host_` is not a Host.
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost_: h\r\n\r\n"), 400);
        ok(&get_with("Host_: other\r\n"));
    }

    // ---- Host --------------------------------------------------------------

    #[test]
    fn host_rules() {
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"), 400);
        assert_eq!(status(&get_with("Host: h\r\n")), 400);
        assert_eq!(status(&get_with("HOST: other\r\n")), 400);
        assert_eq!(status(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(
            status(&get_with("Content-Type: a/b\r\ncontent-type: a/b\r\n")),
            400
        );
        ok(&get_with("Content-Type: a/b\r\n"));
        ok(b"GET / HTTP/1.0\r\n\r\n");
        ok(b"GET / HTTP/1.1\r\nhost:\r\n\r\n");
        for h in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:80",
            "[::1]:8000",
            "[fe80::1%25eth0]",
            "xn--bcher-kva.example",
            "under_score.example",
            "example.com:",
            "[::1]:",
            "[v7.fe:ed]",
            "EXAMPLE.com:00080",
            // An empty uri-host is in the grammar (the environ falls back to
            // the listener's name).
            ":8080",
            ":",
        ] {
            ok(format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes());
        }
        for h in [
            "a b",
            "a/b",
            "a@b",
            "a?b",
            "a#b",
            "a\"b",
            "<a>",
            "a\\b",
            "h\u{e9}",
            "a\tb",
            "example.com:abc",
            "example.com:80:81",
            "example.com:8o",
            "[::1",
            "a]b",
            "[::1]x",
            "[::1]:x",
            "[]",
            "[zz]",
            "::1",
            ":x",
            "[::1%eth0]",
        ] {
            let req = format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n");
            assert_eq!(status(req.as_bytes()), 400, "{h:?}");
        }
    }

    // ---- Content-Length ----------------------------------------------------

    #[test]
    fn content_length_valid() {
        assert_eq!(
            ok(&post_with("Content-Length: 5\r\n")).body,
            BodyKind::Length(5)
        );
        assert_eq!(
            ok(&post_with("content-length: 0\r\n")).body,
            BodyKind::Length(0)
        );
        assert_eq!(
            ok(&post_with("Content-Length: 007\r\n")).body,
            BodyKind::Length(7)
        );
        // Surrounding OWS is not part of the field value (RFC 9110 §5.5).
        assert_eq!(
            ok(&post_with("Content-Length:  3\t\r\n")).body,
            BodyKind::Length(3)
        );
        assert_eq!(
            ok(&post_with("Content-Length: 18446744073709551615\r\n")).body,
            BodyKind::Length(u64::MAX)
        );
        assert_eq!(
            ok(b"POST / HTTP/1.0\r\nContent-Length: 4\r\n\r\n").body,
            BodyKind::Length(4)
        );
    }

    #[test]
    fn content_length_invalid() {
        for v in [
            "+3",
            "-3",
            "0x3",
            "3, 30",
            "3,3",
            "3 0",
            "3a",
            "1e3",
            "",
            "3.0",
            " \x0b3",
            "18446744073709551616",
            "99999999999999999999999",
        ] {
            let req = post_with(&format!("Content-Length: {v}\r\n"));
            assert_eq!(status(&req), 400, "{v:?}");
        }
        assert_eq!(
            status(&post_with("Content-Length: 3\r\nContent-Length: 3\r\n")),
            400
        );
        assert_eq!(
            status(&post_with("Content-Length: 3\r\nContent-Length: 30\r\n")),
            400
        );
        assert_eq!(
            status(&post_with("Content-Length: 3\r\ncontent-length: 3\r\n")),
            400
        );
    }

    // ---- Transfer-Encoding -------------------------------------------------

    fn te(v: &str) -> Result<BodyKind, u16> {
        match parse(&post_with(&format!("Transfer-Encoding: {v}\r\n"))) {
            Ok(Some((h, _))) => Ok(h.body),
            Ok(None) => panic!("incomplete"),
            Err(e) => Err(e.status()),
        }
    }

    #[test]
    fn transfer_encoding() {
        assert_eq!(te("chunked"), Ok(BodyKind::Chunked));
        assert_eq!(te("Chunked"), Ok(BodyKind::Chunked));
        assert_eq!(te(" CHUNKED \t"), Ok(BodyKind::Chunked));
        assert_eq!(te("gzip"), Err(400));
        assert_eq!(te("chunked, gzip"), Err(400));
        assert_eq!(te("gzip, chunked"), Err(501));
        assert_eq!(te("deflate,chunked"), Err(501));
        // RFC 9112 §6.3 before §6.1: chunked not final is a 400, known or not
        assert_eq!(te("identity"), Err(400));
        assert_eq!(te("foo"), Err(400));
        assert_eq!(te("chunked, foo"), Err(400));
        assert_eq!(te("identity, chunked"), Err(501));
        assert_eq!(te("foo, chunked"), Err(501));
        assert_eq!(te("chunked, chunked"), Err(400));
        // RFC 9110 §5.6.1: empty list elements are ignored.
        assert_eq!(te("chunked,"), Ok(BodyKind::Chunked));
        assert_eq!(te(", chunked"), Ok(BodyKind::Chunked));
        assert_eq!(te(" ,\t, chunked , ,"), Ok(BodyKind::Chunked));
        assert_eq!(te("gzip,, chunked"), Err(501));
        assert_eq!(te("chunked,,chunked"), Err(400));
        assert_eq!(te("chunked, ,gzip"), Err(400));
        // ... but a field line naming no coding at all is refused.
        assert_eq!(te(""), Err(400));
        assert_eq!(te(","), Err(400));
        assert_eq!(te(" , , "), Err(400));
        assert_eq!(te("chunked;q=1"), Err(400));
        assert_eq!(te("chun ked"), Err(400));
        assert_eq!(te("\"chunked\""), Err(400));
    }

    #[test]
    fn transfer_encoding_across_lines() {
        let two = |a: &str, b: &str| {
            parse(&post_with(&format!(
                "Transfer-Encoding: {a}\r\nTransfer-Encoding: {b}\r\n"
            )))
            .map(|r| r.unwrap().0.body)
            .map_err(|e| e.status())
        };
        assert_eq!(two("gzip", "chunked"), Err(501));
        assert_eq!(two("chunked", "gzip"), Err(400));
        assert_eq!(two("chunked", "chunked"), Err(400));
        assert_eq!(two("chunked", ""), Err(400));
        assert_eq!(two("chunked", ","), Err(400));
        assert_eq!(two("gzip,", ", chunked"), Err(501));
        assert_eq!(two(",", "chunked"), Err(400));
    }

    #[test]
    fn transfer_encoding_conflicts() {
        assert_eq!(
            status(&post_with(
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"
            )),
            400
        );
        assert_eq!(
            status(&post_with(
                "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"
            )),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
    }

    // ---- limits --------------------------------------------------------

    fn line_of(len: usize) -> Vec<u8> {
        // "GET /aaa HTTP/1.1" with a target sized to make the line `len` long
        let target_len = len - "GET  HTTP/1.1".len();
        let mut line = b"GET /".to_vec();
        line.resize(4 + target_len, b'a');
        line.extend_from_slice(b" HTTP/1.1");
        assert_eq!(line.len(), len);
        line
    }

    #[test]
    fn request_line_limit() {
        let tail = b"\r\nHost: h\r\n\r\n";
        let at = line_of(4094);
        ok(&[&at[..], tail].concat());
        let over = line_of(4095);
        assert_eq!(status(&[&over[..], tail].concat()), 414);
        // Incomplete but already too long.
        assert_eq!(status(&over), 414);
        assert_eq!(status(&[&over[..], b"\r"].concat()), 414);
        assert!(parse(&at).unwrap().is_none());
        assert!(parse(&[&at[..], b"\r"].concat()).unwrap().is_none());
        assert!(parse(&at[..4000]).unwrap().is_none());
        // A target with no end in sight.
        assert_eq!(status(&[&b"GET /"[..], &[b'a'; 5000]].concat()), 414);
        // Bad version on an over-long line: the length is reported first.
        assert_eq!(
            status(&[&line_of(5000)[..4990], b" HTTP/2.0\r\n\r\n"].concat()),
            414
        );
        // Too long by its method (501, RFC 9112 §3) or by junk after the
        // target (400), complete or still arriving.
        let long_method = [&[b'G'; 5000][..], b" / HTTP/1.1"].concat();
        assert_eq!(status(&[&long_method[..], tail].concat()), 501);
        assert_eq!(status(&long_method[..4500]), 501);
        let long_version = [&b"GET / HTTP/1.1"[..], &[b'x'; 5000]].concat();
        assert_eq!(status(&[&long_version[..], tail].concat()), 400);
        assert_eq!(status(&long_version), 400);
        // Too-long line plus too many headers: 414 wins.
        let lim = Limits {
            request_line: 10,
            fields: 1,
            field_size: 100,
            ..Limits::default()
        };
        let r = parse_head(b"GET /abcdefgh HTTP/1.1\r\nHost: h\r\nA: b\r\n\r\n", &lim);
        assert_eq!(r.unwrap_err(), HttpError::UriTooLong);
    }

    #[test]
    fn request_line_limit_configurable_and_unlimited() {
        let lim = Limits {
            request_line: 20,
            ..Limits::default()
        };
        assert!(
            parse_head(&[&line_of(20)[..], b"\r\nHost: h\r\n\r\n"].concat(), &lim)
                .unwrap()
                .is_some()
        );
        assert_eq!(
            parse_head(&[&line_of(21)[..], b"\r\nHost: h\r\n\r\n"].concat(), &lim).unwrap_err(),
            HttpError::UriTooLong
        );
        let unlimited = Limits {
            request_line: 0,
            ..Limits::default()
        };
        let big = [&line_of(100_000)[..], b"\r\nHost: h\r\n\r\n"].concat();
        assert!(parse_head(&big, &unlimited).unwrap().is_some());
        // ... but still capped, as are absurd settings.
        let absurd = Limits {
            request_line: usize::MAX,
            fields: usize::MAX,
            field_size: usize::MAX,
            ..Limits::default()
        };
        assert!(parse_head(&big, &absurd).unwrap().is_some());
        assert!(
            parse_head(&[&line_of(200)[..], b"\r"].concat(), &absurd)
                .unwrap()
                .is_none()
        );
        let past_cap = [&b"GET /"[..], &vec![b'a'; UNLIMITED_LINE + 10]].concat();
        assert_eq!(
            parse_head(&past_cap, &absurd).unwrap_err(),
            HttpError::UriTooLong
        );
        let huge = [&b"GET /"[..], &vec![b'a'; UNLIMITED_LINE + 10]].concat();
        assert_eq!(
            parse_head(&huge, &unlimited).unwrap_err(),
            HttpError::UriTooLong
        );
    }

    fn n_fields(n: usize) -> Vec<u8> {
        let mut s = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
        for i in 1..n {
            s.push_str(&format!("X-{i}: v\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    #[test]
    fn field_count_limit() {
        assert_eq!(ok(&n_fields(100)).headers().len(), 100);
        assert_eq!(
            parse(&n_fields(101)).unwrap_err(),
            HttpError::FieldsTooLarge("too many header fields")
        );
        // Detected before the head is complete, too.
        let b = n_fields(101);
        assert_eq!(status(&b[..b.len() - 2]), 431);
        assert!(
            parse(&n_fields(100)[..n_fields(100).len() - 2])
                .unwrap()
                .is_none()
        );
        // Dropped `_` fields still count.
        let mut s = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
        for i in 0..100 {
            s.push_str(&format!("X_{i}: v\r\n"));
        }
        assert_eq!(status(format!("{s}\r\n").as_bytes()), 431);
        // Configurable, including beyond the stack slots.
        let lim = Limits {
            fields: 300,
            ..Limits::default()
        };
        assert_eq!(
            parse_head(&n_fields(300), &lim)
                .unwrap()
                .unwrap()
                .0
                .headers()
                .len(),
            300
        );
        assert_eq!(parse_head(&n_fields(301), &lim).unwrap_err().status(), 431);
        let lim = Limits {
            fields: 2,
            ..Limits::default()
        };
        assert!(parse_head(&n_fields(2), &lim).unwrap().is_some());
        assert_eq!(parse_head(&n_fields(3), &lim).unwrap_err().status(), 431);
        // 0 means Gunicorn's maximum.
        let lim = Limits {
            fields: 0,
            ..Limits::default()
        };
        assert_eq!(
            parse_head(&n_fields(1000), &lim)
                .unwrap()
                .unwrap()
                .0
                .headers()
                .len(),
            1000
        );
    }

    /// A header line of exactly `len` bytes (without CRLF).
    fn field_of(len: usize) -> String {
        let mut s = String::from("X: ");
        while s.len() < len {
            s.push('v');
        }
        s
    }

    #[test]
    fn field_size_limit() {
        // 8190 with the CRLF, as Gunicorn counts.
        ok(&get_with(&format!("{}\r\n", field_of(8188))));
        assert_eq!(status(&get_with(&format!("{}\r\n", field_of(8189)))), 431);
        // Trailing whitespace counts: it is on the line.
        assert_eq!(status(&get_with(&format!("{}  \r\n", field_of(8187)))), 431);
        // Incomplete but already too long.
        let open = format!("GET / HTTP/1.1\r\nHost: h\r\n{}", field_of(8189));
        assert_eq!(status(open.as_bytes()), 431);
        let open = format!("GET / HTTP/1.1\r\nHost: h\r\n{}", field_of(8188));
        assert!(parse(open.as_bytes()).unwrap().is_none());
        assert!(parse(format!("{open}\r").as_bytes()).unwrap().is_none());
        assert_eq!(status(format!("{open}x\r").as_bytes()), 431);
        // The Host line is a field like any other.
        let long_host = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", "h".repeat(8183));
        assert_eq!(status(long_host.as_bytes()), 431);
        // Unlimited (0), with the safety cap.
        let lim = Limits {
            field_size: 0,
            ..Limits::default()
        };
        let big = get_with(&format!("{}\r\n", field_of(100_000)));
        assert!(parse_head(&big, &lim).unwrap().is_some());
        let huge = format!(
            "GET / HTTP/1.1\r\nHost: h\r\n{}",
            field_of(UNLIMITED_LINE + 2)
        );
        assert_eq!(parse_head(huge.as_bytes(), &lim).unwrap_err().status(), 431);
    }

    #[test]
    fn head_never_grows_without_bound() {
        // Feed a plausible head byte by byte under tight limits: parse_head
        // must answer an error before the buffer outgrows the bound.
        let lim = Limits {
            request_line: 30,
            fields: 4,
            field_size: 20,
            ..Limits::default()
        };
        let bound = Bounds::new(&lim).head;
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        let mut i = 0;
        loop {
            buf.extend_from_slice(format!("X{i}: abcdefgh\r\n").as_bytes());
            i += 1;
            match parse_head(&buf, &lim) {
                Ok(None) => assert!(buf.len() <= bound),
                Ok(Some(_)) => panic!("no blank line was sent"),
                Err(e) => {
                    assert_eq!(e.status(), 431);
                    break;
                }
            }
        }
        assert!(Bounds::new(&Limits::default()).head < MAX_HEAD);
        assert_eq!(
            Bounds::new(&Limits {
                request_line: 0,
                fields: 0,
                field_size: 0,
                ..Limits::default()
            })
            .head,
            MAX_HEAD
        );
    }

    #[test]
    fn total_head_cap() {
        // Unlimited field size and many fields: the hard cap still holds.
        let lim = Limits {
            request_line: 0,
            fields: 0,
            field_size: 0,
            ..Limits::default()
        };
        let line = format!("X: {}\r\n", "v".repeat(UNLIMITED_LINE - 10));
        let mut buf = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        while buf.len() <= MAX_HEAD {
            buf.extend_from_slice(line.as_bytes());
        }
        assert_eq!(parse_head(&buf, &lim).unwrap_err().status(), 431);
        buf.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&buf, &lim).unwrap_err().status(), 431);
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            HttpError::UriTooLong.to_string(),
            "414 request line too long"
        );
        assert_eq!(HttpError::BadRequest("x").detail(), "x");
        assert_eq!(HttpError::VersionNotSupported.status(), 505);
        assert_eq!(HttpError::NotImplemented("x").status(), 501);
        assert_eq!(HttpError::ExpectationFailed.status(), 417);
        assert_eq!(
            HttpError::ExpectationFailed.to_string(),
            "417 unsupported expectation"
        );
    }
}
