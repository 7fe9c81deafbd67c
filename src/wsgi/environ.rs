//! Building the WSGI environ (PEP 3333) for one request.
//!
//! Per request the Python side is the cost, so: the constant entries live in
//! a prepared dict per listener; each I/O loop keeps the environ it built
//! last (a template) and starts the next one as a copy of it (one C-level
//! dict copy), setting only the entries that differ; keys are interned
//! strings, and header keys (`HTTP_USER_AGENT`...) and values are cached
//! per loop (`EnvCache`), so a repeated value is the same str, compared
//! against the request's bytes before any new str is made.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use pyo3::{ffi, intern};

use crate::config::AllowIps;
use crate::http::RequestHead;
use crate::sock::ListenAddr;

/// Python strings made once per connection and reused by every request
/// on it (keep-alive clients send the same Host each time).
#[derive(Default)]
pub struct PeerCache {
    addr_port: Option<(Py<PyString>, Py<PyString>)>,
    /// (raw Host header, SERVER_NAME, SERVER_PORT)
    host: Option<(Box<[u8]>, Py<PyString>, Py<PyString>)>,
}

impl std::fmt::Debug for PeerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerCache")
    }
}

/// Who is on the other end of the connection.
#[derive(Debug)]
pub struct Peer {
    /// Textual IP ("" for unix sockets, as Gunicorn).
    pub addr: String,
    /// Port as text ("" for unix sockets).
    pub port: String,
    /// May set X-Forwarded-Proto & co (forwarded_allow_ips; unix-socket
    /// peers are local proxies and trusted, as in Gunicorn).
    pub trusted: bool,
    /// A TCP peer on this host (127.0.0.0/8, ::1). File bodies go to it by
    /// copy rather than sendfile: see `wsgi::response::pump_file`.
    pub loopback: bool,
    /// The connection's own remote IP (None for unix sockets), whatever a
    /// PROXY header says: the one `proxy_allow_ips` is checked against.
    pub ip: Option<std::net::IpAddr>,
    /// From a PROXY header: `addr`/`port` above are then its client's, and
    /// the environ gets Gunicorn's PROXY_PROTOCOL, PROXY_ADDR, PROXY_PORT.
    pub proxy: Option<Box<crate::http::proxy::ProxyInfo>>,
    pub cache: std::cell::RefCell<PeerCache>,
}

impl Peer {
    pub fn new(addr: Option<std::net::SocketAddr>, allow: &AllowIps) -> Peer {
        match addr {
            Some(a) => {
                let ip = match a.ip() {
                    std::net::IpAddr::V6(v6) => v6
                        .to_ipv4_mapped()
                        .map(std::net::IpAddr::V4)
                        .unwrap_or(a.ip()),
                    ip => ip,
                };
                Peer {
                    addr: ip.to_string(),
                    port: a.port().to_string(),
                    trusted: allow.allows(&ip),
                    loopback: ip.is_loopback(),
                    ip: Some(ip),
                    proxy: None,
                    cache: Default::default(),
                }
            }
            None => Peer {
                addr: String::new(),
                port: String::new(),
                trusted: true,
                loopback: false,
                ip: None,
                proxy: None,
                cache: Default::default(),
            },
        }
    }
}

impl Peer {
    /// The connection came through a PROXY-protocol balancer: the app sees
    /// the client it names. Trust for X-Forwarded-* stays with the real
    /// peer (the balancer), as in Gunicorn.
    pub fn set_proxied(&mut self, info: crate::http::proxy::ProxyInfo) {
        self.addr = info.client_addr.to_string();
        self.port = info.client_port.to_string();
        self.cache.get_mut().addr_port = None;
        self.proxy = Some(Box::new(info));
    }
}

/// Keys `build` sets on every request (seeded in the base dict).
const PER_REQUEST_KEYS: [&str; 8] = [
    "REQUEST_METHOD",
    "SERVER_PROTOCOL",
    "RAW_URI",
    "PATH_INFO",
    "QUERY_STRING",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "wsgi.input",
];

/// The constant part of every environ for one listener.
pub fn base_environ<'py>(
    py: Python<'py>,
    listen: &ListenAddr,
    root_path: &str,
    multithread: bool,
    multiprocess: bool,
) -> PyResult<Bound<'py, PyDict>> {
    // A plain dict, grown by inserting: it keeps CPython's str-only key
    // table (`_PyDict_NewPresized` would make a general one, with 24-byte
    // entries and slower lookups). PyDict_Copy keeps the table size of its
    // source, and `grow_table` makes that 64 slots (42 usable), so every
    // per-request copy has room for this request's headers without a
    // resize. Every key the request sets is seeded here too (placeholder
    // values), so setting it replaces a value rather than inserting.
    let d = PyDict::new(py);
    for key in PER_REQUEST_KEYS {
        if key == "REMOTE_PORT" && matches!(listen, ListenAddr::Unix(_)) {
            continue; // a unix-socket client has no port: no key (Gunicorn)
        }
        d.set_item(PyString::intern(py, key), "")?;
    }
    // The most common values are seeded too; `build` skips setting them.
    d.set_item(intern!(py, "REQUEST_METHOD"), intern!(py, "GET"))?;
    d.set_item(intern!(py, "SERVER_PROTOCOL"), intern!(py, "HTTP/1.1"))?;
    // Requests without a body (most) share one empty `wsgi.input`: it
    // reads the same for everyone. `build` replaces it for the others.
    d.set_item(
        intern!(py, "wsgi.input"),
        Bound::new(
            py,
            super::input::Input::new(super::input::Body::Mem(Vec::new())).0,
        )?,
    )?;
    d.set_item(intern!(py, "wsgi.version"), (1, 0))?;
    d.set_item(intern!(py, "wsgi.multithread"), multithread)?;
    d.set_item(intern!(py, "wsgi.multiprocess"), multiprocess)?;
    d.set_item(intern!(py, "wsgi.run_once"), false)?;
    d.set_item(intern!(py, "wsgi.errors"), super::pylog::install(py)?)?;
    d.set_item(
        "wsgi.file_wrapper",
        py.get_type::<super::response::FileWrapper>(),
    )?;
    d.set_item(intern!(py, "wsgi.input_terminated"), true)?;
    d.set_item(
        "wsgi.early_hints",
        pyo3::wrap_pyfunction!(super::response::early_hints_fn, py)?,
    )?;
    d.set_item(intern!(py, "wsgi.url_scheme"), intern!(py, "http"))?;
    d.set_item(
        "SERVER_SOFTWARE",
        concat!("ferricorn/", env!("CARGO_PKG_VERSION")),
    )?;
    d.set_item(intern!(py, "SCRIPT_NAME"), root_path)?;
    let (name, port) = listen.server_name_port();
    d.set_item(intern!(py, "SERVER_NAME"), name)?;
    d.set_item(intern!(py, "SERVER_PORT"), port)?;
    grow_table(&d)?;
    Ok(d)
}

/// Entries that grow a str-keyed dict's table to 64 slots (42 usable):
/// CPython sizes the table to 3x the entries when the 21 usable slots of
/// 32 run out.
const TABLE_ENTRIES: usize = 22;

/// Make sure `d`'s table has room for a request's headers: pad it with
/// throw-away keys up to `TABLE_ENTRIES` and delete them again. Deleting
/// never shrinks a table, and the two or three dead entries left behind
/// are too few to take PyDict_Copy off its fast (memcpy) path.
fn grow_table(d: &Bound<'_, PyDict>) -> PyResult<()> {
    let pad: Vec<String> = (d.len()..TABLE_ENTRIES)
        .map(|i| format!("ferricorn.pad{i}"))
        .collect();
    for k in &pad {
        d.set_item(k, ())?;
    }
    for k in &pad {
        d.del_item(k)?;
    }
    Ok(())
}

/// A Python str from latin-1 bytes (PEP 3333's "native string" rule).
pub fn latin1_str<'py>(py: Python<'py>, b: &[u8]) -> Bound<'py, PyString> {
    // SAFETY: PyUnicode_DecodeLatin1 reads exactly b.len() bytes (ASCII is
    // latin-1 too; it copies the bytes into a one-byte str, no UTF-8
    // decoding). It fails only on memory exhaustion: NULL with an error
    // set, which we clear and replace by "".
    unsafe {
        let p = ffi::PyUnicode_DecodeLatin1(
            b.as_ptr() as *const _,
            b.len() as ffi::Py_ssize_t,
            std::ptr::null(),
        );
        if p.is_null() {
            ffi::PyErr_Clear();
            return PyString::new(py, "");
        }
        Bound::from_owned_ptr(py, p).cast_into_unchecked()
    }
}

/// The bytes of a one-byte (latin-1) str, borrowed; None for wider ones.
fn str_bytes<'a>(s: &'a Bound<'_, PyString>) -> Option<&'a [u8]> {
    let p = s.as_ptr();
    // SAFETY: PEP 393 accessors on a live str; the slice borrows it. Our
    // strs come from PyUnicode_DecodeLatin1 or interning: always ready.
    unsafe {
        if ffi::PyUnicode_KIND(p) != ffi::PyUnicode_1BYTE_KIND {
            return None;
        }
        Some(std::slice::from_raw_parts(
            ffi::PyUnicode_DATA(p) as *const u8,
            ffi::PyUnicode_GET_LENGTH(p) as usize,
        ))
    }
}

/// A fast, non-cryptographic hash for the caches below (8 bytes a step).
/// The tables are tiny and direct-mapped, so a client that makes entries
/// collide only costs itself a string creation.
fn hash(b: &[u8]) -> usize {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = b.len() as u64;
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().unwrap()))
            .wrapping_mul(K)
            .rotate_left(31);
    }
    let mut tail = 0u64;
    for (i, &x) in words.remainder().iter().enumerate() {
        tail |= u64::from(x) << (8 * i);
    }
    ((h ^ tail).wrapping_mul(K) >> 32) as usize
}

/// Slots in the value cache (a power of two).
const VALUE_SLOTS: usize = 256;
/// Longer values are not cached.
const VALUE_MAX: usize = 256;
/// Slots in the header-key cache (a power of two).
const KEY_SLOTS: usize = 128;

/// Python strings an I/O loop made for earlier environs, to hand out again
/// when the same bytes come back: keep-alive clients (and proxies) repeat
/// the same Host, User-Agent, Accept... and often the same path, so most
/// values are a hash, a compare and an incref instead of a new str.
/// Strings are immutable, so sharing them between environs is safe.
pub struct EnvCache {
    /// Values, by hash of their bytes (one per slot, last one wins).
    values: Box<[Option<Py<PyString>>]>,
    /// Header name as received -> interned environ key (`HTTP_X_THING`).
    keys: Box<[Option<(Box<[u8]>, Py<PyString>)>]>,
    /// The environ of an earlier request, to start the next one from.
    template: Option<Template>,
    /// Requests in a row that the template did not fit exactly.
    template_misses: u8,
    /// This request's entries while `build` runs (kept for its capacity).
    entries: Vec<Entry<'static, 'static>>,
    /// The last `build` saw a trusted peer's scheme headers disagree.
    conflicting_scheme: bool,
}

/// An environ entry on top of the base dict: key and value.
type Entry<'a, 'py> = (Bound<'py, PyString>, Val<'a, 'py>);

/// An entry's value: an object, or latin-1 bytes of the request head not
/// made into a str yet (when the template already holds a str with these
/// bytes, none is made).
enum Val<'a, 'py> {
    Obj(Bound<'py, PyAny>),
    Latin1(&'a [u8]),
}

/// An emptied Vec's buffer, for entries of another lifetime.
fn recycle<'b, 'q>(mut v: Vec<Entry<'_, '_>>) -> Vec<Entry<'b, 'q>> {
    v.clear();
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: the Vec is empty, and entries of different lifetimes have
    // the same layout: the buffer is reused as is.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast(), 0, v.capacity()) }
}

impl Default for EnvCache {
    fn default() -> Self {
        EnvCache {
            values: (0..VALUE_SLOTS).map(|_| None).collect(),
            keys: (0..KEY_SLOTS).map(|_| None).collect(),
            template: None,
            template_misses: 0,
            entries: Vec::new(),
            conflicting_scheme: false,
        }
    }
}

/// An environ as `build` made it (before any app saw it), with the entries
/// it holds on top of its listener's base dict. Consecutive requests
/// mostly carry the same Host, addresses, Accept-* and often the same
/// path: copying this dict and setting only what differs costs one dict
/// copy either way, but saves most of the PyDict_SetItem calls.
struct Template {
    listener: usize,
    dict: Py<PyDict>,
    /// Keys and values set on top of the base dict, in the order set.
    entries: Vec<(Py<PyString>, Py<PyAny>)>,
}

/// Start a new template when a request differs from the current one in
/// more entries than this (two: a new path is RAW_URI + PATH_INFO).
const TEMPLATE_MAX_CHANGES: usize = 2;

/// ... or when this many requests in a row differed from it at all: a
/// template made from an odd first request (a health check with headers
/// the regular clients do not send) would otherwise cost every later
/// request its few changes for good.
const TEMPLATE_MAX_MISSES: u8 = 4;
/// Templates track their entries in a u64 bit set.
const TEMPLATE_MAX_ENTRIES: usize = 64;

impl EnvCache {
    /// A str for latin-1 bytes `b`, from the cache when it has one.
    pub fn value<'py>(&mut self, py: Python<'py>, b: &[u8]) -> Bound<'py, PyString> {
        if b.len() > VALUE_MAX {
            return latin1_str(py, b);
        }
        let slot = &mut self.values[hash(b) & (VALUE_SLOTS - 1)];
        if let Some(s) = slot {
            let s = s.bind(py);
            if str_bytes(s) == Some(b) {
                return s.clone();
            }
        }
        let s = latin1_str(py, b);
        *slot = Some(s.clone().unbind());
        s
    }

    /// The environ key for a header field name (`HTTP_USER_AGENT`...).
    fn header_key<'py>(&mut self, py: Python<'py>, name: &str) -> Bound<'py, PyString> {
        let slot = &mut self.keys[hash(name.as_bytes()) & (KEY_SLOTS - 1)];
        if let Some((n, k)) = slot {
            if **n == *name.as_bytes() {
                return k.bind(py).clone();
            }
        }
        let mut key = String::with_capacity(name.len() + 5);
        if !name.eq_ignore_ascii_case("content-type")
            && !name.eq_ignore_ascii_case("content-length")
        {
            key.push_str("HTTP_");
        }
        for c in name.chars() {
            key.push(if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            });
        }
        let k = PyString::intern(py, &key);
        *slot = Some((name.as_bytes().into(), k.clone().unbind()));
        k
    }
}

/// `env[key] = value` without pyo3's conversions (both are borrowed).
#[inline]
fn set(
    env: &Bound<'_, PyDict>,
    key: &Bound<'_, PyString>,
    value: &Bound<'_, PyAny>,
) -> PyResult<()> {
    // SAFETY: three live objects; PyDict_SetItem takes its own references.
    if unsafe { ffi::PyDict_SetItem(env.as_ptr(), key.as_ptr(), value.as_ptr()) } < 0 {
        return Err(PyErr::fetch(env.py()));
    }
    Ok(())
}

/// Percent-decode a path into bytes (invalid escapes stay as they are).
pub fn percent_decode(s: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !s.contains(&b'%') {
        return std::borrow::Cow::Borrowed(s);
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// Split a request-target into (path, query). Handles origin-form,
/// absolute-form (proxies), `*` and authority-form.
pub fn split_target(target: &str) -> (&str, &str) {
    // Plain byte scans: targets are short, and memchr/char searchers cost
    // more to set up than they save here.
    let t = match target.bytes().position(|b| b == b'#') {
        Some(i) => &target[..i],
        None => target,
    };
    let t = if t.starts_with('/') || t == "*" {
        t
    } else if let Some(i) = t.find("://") {
        let rest = &t[i + 3..];
        let (path, query) = match rest.find(['/', '?']) {
            Some(j) => split_query(&rest[j..]),
            None => ("", ""),
        };
        // RFC 9110 §4.2.3: an empty path is the same as "/".
        return (if path.is_empty() { "/" } else { path }, query);
    } else {
        // authority-form (CONNECT host:port): no path.
        ""
    };
    split_query(t)
}

fn split_query(t: &str) -> (&str, &str) {
    match t.bytes().position(|b| b == b'?') {
        Some(i) => (&t[..i], &t[i + 1..]),
        None => (t, ""),
    }
}

/// The worker's secure_scheme_headers (Gunicorn's default until the worker
/// sets its settings' list).
static SECURE_SCHEME_HEADERS: std::sync::OnceLock<Vec<(String, String)>> =
    std::sync::OnceLock::new();

/// Use `headers` (name, value meaning https) as the secure_scheme_headers;
/// once, when the worker starts.
pub fn set_secure_scheme_headers(headers: &[(String, String)]) {
    let _ = SECURE_SCHEME_HEADERS.set(headers.to_vec());
}

/// Whether this header line, if it is one of the secure_scheme_headers,
/// says https (true) or http (false).
fn forwarded_scheme(name: &str, value: &[u8]) -> Option<bool> {
    let list = SECURE_SCHEME_HEADERS.get_or_init(|| {
        crate::config::DEFAULT_SECURE_SCHEME_HEADERS
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    });
    // By length first: most names are none of them.
    let (_, want) = list
        .iter()
        .find(|(n, _)| n.len() == name.len() && n.eq_ignore_ascii_case(name))?;
    Some(value.trim_ascii().eq_ignore_ascii_case(want.as_bytes()))
}

impl EnvCache {
    /// Whether the last `build` found a trusted peer's X-Forwarded-Proto,
    /// -Ssl and -Protocol disagreeing (cleared by reading it).
    pub fn take_conflicting_scheme(&mut self) -> bool {
        std::mem::take(&mut self.conflicting_scheme)
    }
}

/// For the access log's `%({key}e)s`: the environ's values for `keys`
/// (lower-case), matched case-insensitively as Gunicorn, as str().
pub fn values_for_log(env: &Bound<'_, PyAny>, keys: &[String]) -> Vec<Option<String>> {
    let mut out = vec![None; keys.len()];
    let Ok(d) = env.cast::<PyDict>() else {
        return out;
    };
    for (k, v) in d.iter() {
        let Ok(k) = k.cast::<PyString>() else {
            continue;
        };
        let Ok(k) = k.to_str() else {
            continue;
        };
        if let Some(i) = keys.iter().position(|want| k.eq_ignore_ascii_case(want)) {
            out[i] = v.str().ok().map(|s| s.to_string_lossy().into_owned());
        }
    }
    out
}

/// What `build` needs to know besides the request head.
pub struct Ctx<'a> {
    pub head: &'a RequestHead,
    pub peer: &'a Peer,
    pub root_path: &'a str,
    pub body_len: u64,
}

/// A fresh environ: `base` (the listener's constant part, number
/// `listener`) plus this request's entries. `input` is `wsgi.input` for a
/// request with a body (the base dict holds a shared empty one for the
/// others).
pub fn build<'py>(
    py: Python<'py>,
    base: &Bound<'py, PyDict>,
    listener: usize,
    c: &Ctx<'_>,
    cache: &mut EnvCache,
    input: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut entries = recycle(std::mem::take(&mut cache.entries));
    let r = collect(py, c, cache, input, &mut entries)
        .and_then(|()| apply(py, base, listener, cache, &mut entries, input.is_some()));
    // Cleared: nothing outlives the request here (wsgi.input...).
    cache.entries = recycle(entries);
    r
}

/// This request's entries on top of the base dict, in order.
fn collect<'py, 'a>(
    py: Python<'py>,
    c: &Ctx<'a>,
    cache: &mut EnvCache,
    input: Option<&Bound<'py, PyAny>>,
    out: &mut Vec<Entry<'a, 'py>>,
) -> PyResult<()> {
    // An object value, or latin-1 bytes of the head (made a str later,
    // if at all).
    fn set<'a, 'py>(
        out: &mut Vec<Entry<'a, 'py>>,
        k: &Bound<'py, PyString>,
        v: &Bound<'py, PyAny>,
    ) -> PyResult<()> {
        out.push((k.clone(), Val::Obj(v.clone())));
        Ok(())
    }
    fn set_bytes<'a, 'py>(
        out: &mut Vec<Entry<'a, 'py>>,
        k: &Bound<'py, PyString>,
        v: &'a [u8],
    ) -> PyResult<()> {
        out.push((k.clone(), Val::Latin1(v)));
        Ok(())
    }
    let head: &'a RequestHead = c.head;
    // GET, HTTP/1.1 and an empty query are what the base dict holds.
    let method = intern!(py, "REQUEST_METHOD");
    match head.method() {
        "GET" => {}
        "POST" => set(out, method, intern!(py, "POST"))?,
        "HEAD" => set(out, method, intern!(py, "HEAD"))?,
        m => set(out, method, &cache.value(py, m.as_bytes()))?,
    }
    if head.minor_version != 1 {
        set(out, intern!(py, "SERVER_PROTOCOL"), intern!(py, "HTTP/1.0"))?;
    }
    let target = head.target();
    // PEP 3333: every environ str is the request's bytes read as latin-1
    // (a non-ASCII target's UTF-8 bytes each become one code point).
    set_bytes(out, intern!(py, "RAW_URI"), target.as_bytes())?;
    let (path, query) = split_target(target);
    let decoded = percent_decode(path.as_bytes());
    let mut path_info: &[u8] = &decoded;
    // A trusted proxy's SCRIPT_NAME header (Gunicorn's forwarder_headers)
    // stands in for --root-path.
    let mut root_path = c.root_path.as_bytes();
    if head.forwarder_fields && c.peer.trusted {
        let sent = head
            .headers()
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("script_name"));
        if let Some(h) = sent {
            root_path = h.value;
            set_bytes(out, intern!(py, "SCRIPT_NAME"), h.value)?;
        }
    }
    if !root_path.is_empty() {
        if path_info.starts_with(root_path)
            && (path_info.len() == root_path.len() || path_info[root_path.len()] == b'/')
        {
            path_info = &path_info[root_path.len()..];
        }
    }
    match decoded {
        // Borrowed from the head: the bytes can wait.
        std::borrow::Cow::Borrowed(_) => {
            let path_info = &path.as_bytes()[path.len() - path_info.len()..];
            set_bytes(out, intern!(py, "PATH_INFO"), path_info)?
        }
        std::borrow::Cow::Owned(_) => {
            set(out, intern!(py, "PATH_INFO"), &cache.value(py, path_info))?
        }
    }
    if !query.is_empty() {
        set_bytes(out, intern!(py, "QUERY_STRING"), query.as_bytes())?;
    }
    if let Some(input) = input {
        set(out, intern!(py, "wsgi.input"), input)?;
    }
    let mut peer = c.peer.cache.borrow_mut();
    let (addr, port) = peer.addr_port.get_or_insert_with(|| {
        (
            PyString::new(py, &c.peer.addr).unbind(),
            PyString::new(py, &c.peer.port).unbind(),
        )
    });
    set(out, intern!(py, "REMOTE_ADDR"), addr.bind(py))?;
    if !c.peer.port.is_empty() {
        // A unix-socket client has none: no key, as in Gunicorn.
        set(out, intern!(py, "REMOTE_PORT"), port.bind(py))?;
    }
    if let Some(p) = &c.peer.proxy {
        set(
            out,
            intern!(py, "PROXY_PROTOCOL"),
            &PyString::new(py, p.protocol),
        )?;
        let addr = p.proxy_addr.to_string();
        set(out, intern!(py, "PROXY_ADDR"), &PyString::new(py, &addr))?;
        let port = p.proxy_port.to_string();
        set(out, intern!(py, "PROXY_PORT"), &PyString::new(py, &port))?;
    }

    // RFC 9112 §3.2.2: with an absolute-form target, its authority is the
    // host, whatever the Host header says.
    let target_host = absolute_authority(target);
    let mut host: Option<&[u8]> = target_host;
    let hs = head.headers();
    let mut scheme: Option<bool> = None;
    cache.conflicting_scheme = false;
    for (i, h) in hs.iter().enumerate() {
        if c.peer.trusted {
            // Every line counts (repeats too): all must agree, as Gunicorn.
            if let Some(secure) = forwarded_scheme(h.name, h.value) {
                cache.conflicting_scheme |= scheme.is_some_and(|s| s != secure);
                scheme = Some(secure);
            }
        }
        if head.forwarder_fields
            && !c.peer.trusted
            && crate::http::request::is_forwarder_header(h.name)
        {
            continue; // SCRIPT_NAME / PATH_INFO from an untrusted peer
        }
        // Repeated fields are combined into the first occurrence.
        if hs
            .before(i)
            .iter()
            .any(|p| p.name.eq_ignore_ascii_case(h.name))
        {
            continue;
        }
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            continue; // set below from the body actually read
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            // The body was de-chunked before the app runs and comes with a
            // CONTENT_LENGTH: a Transfer-Encoding beside it would describe
            // a framing the app never sees (and a proxying app would pass
            // both on, which RFC 9112 §6.1 forbids).
            continue;
        }
        if name.eq_ignore_ascii_case("host") {
            if let Some(t) = target_host {
                set_bytes(out, intern!(py, "HTTP_HOST"), t)?;
                continue;
            }
            // PEP 3333: SERVER_NAME is never empty. An empty Host (or
            // one with no name before the port) leaves the listener's.
            // (The parser checked the structure: an empty name is an empty
            // value or one that starts with the port's ':'.)
            if h.value.first().is_none_or(|&b| b == b':') {
                host = None;
            } else {
                host = Some(h.value);
            }
        }
        let key = cache.header_key(py, name);
        // One pass over the later fields: peek tells whether to join.
        let mut dups = hs
            .after(i + 1)
            .iter()
            .filter(|p| p.name.eq_ignore_ascii_case(name))
            .peekable();
        if dups.peek().is_some() {
            let sep: &[u8] = if name.eq_ignore_ascii_case("cookie") {
                b"; "
            } else {
                b","
            };
            let mut v = h.value.to_vec();
            for d in dups {
                v.extend_from_slice(sep);
                v.extend_from_slice(d.value);
            }
            set(out, &key, &latin1_str(py, &v))?;
        } else {
            set_bytes(out, &key, h.value)?;
        }
    }
    if c.body_len > 0 || !matches!(head.body, crate::http::BodyKind::Empty) {
        set(
            out,
            intern!(py, "CONTENT_LENGTH"),
            &PyString::new(py, &c.body_len.to_string()),
        )?;
    }
    let https = scheme == Some(true);
    if https {
        set(out, intern!(py, "wsgi.url_scheme"), intern!(py, "https"))?;
    }
    // SERVER_NAME/SERVER_PORT: as Gunicorn, the listening socket's address
    // (in the listener's base dict) on TCP, where the Host header is the
    // client's word; only a unix socket, which has no address to give,
    // takes them from Host.
    let host = if c.peer.ip.is_none() { host } else { None };
    if let Some(h) = host {
        let fresh = match &peer.host {
            Some((raw, _, _)) => &**raw != h,
            None => true,
        };
        if fresh || https {
            let (name, port) = split_host(h);
            let port: &[u8] = match port {
                Some(p) if !p.is_empty() => p,
                _ if https => b"443",
                _ => b"80",
            };
            let entry = (
                h.into(),
                latin1_str(py, name).unbind(),
                latin1_str(py, port).unbind(),
            );
            if https {
                // The default port depends on the scheme: don't cache.
                set(out, intern!(py, "SERVER_NAME"), entry.1.bind(py))?;
                set(out, intern!(py, "SERVER_PORT"), entry.2.bind(py))?;
                return Ok(());
            }
            peer.host = Some(entry);
        }
        let (_, name, port) = peer.host.as_ref().expect("host cached above");
        set(out, intern!(py, "SERVER_NAME"), name.bind(py))?;
        set(out, intern!(py, "SERVER_PORT"), port.bind(py))?;
    }
    Ok(())
}

/// The environ: a copy of the template (when it was made for the same
/// listener) with only the differences applied, else a copy of `base`
/// with every entry set. An environ that holds a request body never
/// becomes the template (it would keep the body alive). Values that are
/// set are made objects in `entries`.
fn apply<'py>(
    py: Python<'py>,
    base: &Bound<'py, PyDict>,
    listener: usize,
    cache: &mut EnvCache,
    entries: &mut [Entry<'_, 'py>],
    has_body: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let template = cache
        .template
        .take()
        .filter(|t| t.listener == listener && t.entries.len() <= TEMPLATE_MAX_ENTRIES);
    let Some(t) = template else {
        let env = base.copy()?;
        for (k, v) in entries.iter_mut() {
            set(&env, k, resolve(py, cache, v))?;
        }
        if !has_body {
            snapshot(py, cache, listener, &env, entries, None)?;
        }
        return Ok(env);
    };
    let env = t.dict.bind(py).copy()?;
    let mut seen = 0u64; // template entries this request also has
    let mut changes = 0;
    for (i, (k, v)) in entries.iter_mut().enumerate() {
        let k = &*k;
        // Usually at the same position; else look for it.
        let j = match t.entries.get(i) {
            Some(e) if e.0.is(k) => Some(i),
            _ => t.entries.iter().position(|e| e.0.is(k)),
        };
        if let Some(j) = j {
            seen |= 1 << j;
            let old = t.entries[j].1.bind(py);
            let same = match v {
                Val::Obj(v) => old.is(v),
                Val::Latin1(b) => old.cast::<PyString>().ok().and_then(str_bytes) == Some(*b),
            };
            if same {
                continue; // the template holds it already
            }
        }
        set(&env, k, resolve(py, cache, v))?;
        changes += 1;
    }
    for (j, (k, _)) in t.entries.iter().enumerate() {
        if seen & (1 << j) != 0 {
            continue;
        }
        // The template had it, this request does not: back to the base
        // dict's value, or gone.
        changes += 1;
        let k = k.bind(py);
        match base.get_item(k)? {
            Some(v) => set(&env, k, &v)?,
            None => env.del_item(k)?,
        }
    }
    cache.template_misses = if changes == 0 {
        0
    } else {
        cache.template_misses.saturating_add(1)
    };
    let stale = cache.template_misses >= TEMPLATE_MAX_MISSES;
    if (changes > TEMPLATE_MAX_CHANGES || stale) && !has_body {
        cache.template_misses = 0;
        snapshot(py, cache, listener, &env, entries, Some(t))?;
    } else {
        cache.template = Some(t);
    }
    Ok(env)
}

/// The object for a value, made (and kept in `v`) if it was bytes.
fn resolve<'py, 'v>(
    py: Python<'py>,
    cache: &mut EnvCache,
    v: &'v mut Val<'_, 'py>,
) -> &'v Bound<'py, PyAny> {
    if let Val::Latin1(b) = *v {
        *v = Val::Obj(cache.value(py, b).into_any());
    }
    match v {
        Val::Obj(o) => o,
        Val::Latin1(_) => unreachable!("made an object above"),
    }
}

/// Keep a copy of `env` (not yet seen by the app) as the template. Values
/// still in bytes are the ones `old` (the previous template) holds.
fn snapshot(
    py: Python<'_>,
    cache: &mut EnvCache,
    listener: usize,
    env: &Bound<'_, PyDict>,
    entries: &[Entry<'_, '_>],
    old: Option<Template>,
) -> PyResult<()> {
    let dict = env.copy()?.unbind();
    let (old_entries, mut kept) = match old {
        Some(t) => {
            let kept = Vec::with_capacity(entries.len());
            (t.entries, kept)
        }
        None => (Vec::new(), Vec::with_capacity(entries.len())),
    };
    for (k, v) in entries {
        let v = match v {
            Val::Obj(o) => o.clone().unbind(),
            Val::Latin1(_) => match old_entries.iter().find(|e| e.0.is(k)) {
                Some(e) => e.1.clone_ref(py),
                None => unreachable!("bytes are left only where the template matched"),
            },
        };
        kept.push((k.clone().unbind(), v));
    }
    cache.template = Some(Template {
        listener,
        dict,
        entries: kept,
    });
    Ok(())
}

/// The authority of an absolute-form target (`http://host:port/path`).
fn absolute_authority(target: &str) -> Option<&[u8]> {
    if target.starts_with('/') {
        return None; // origin-form, the usual case
    }
    let (scheme, rest) = target.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let auth = &rest[..end];
    // Drop any userinfo (not allowed in http URIs, but never let it pose as a host).
    let auth = auth.rsplit_once('@').map(|(_, h)| h).unwrap_or(auth);
    (!auth.is_empty()).then_some(auth.as_bytes())
}

/// Host (or an absolute target's authority) as (name, port), an empty port
/// as none. The parser already checked the value with the same function.
fn split_host(h: &[u8]) -> (&[u8], Option<&[u8]>) {
    match crate::http::request::split_authority(h) {
        Some((name, port)) => (name, port.filter(|p| !p.is_empty())),
        None => (h, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(split_target("/a/b?x=1&y"), ("/a/b", "x=1&y"));
        assert_eq!(split_target("/a#frag"), ("/a", ""));
        assert_eq!(split_target("http://h:1/p?q"), ("/p", "q"));
        assert_eq!(split_target("http://h"), ("/", ""));
        assert_eq!(split_target("http://h?q=1"), ("/", "q=1"));
        assert_eq!(split_target("*"), ("*", ""));
        assert_eq!(split_target("h:443"), ("", ""));
    }

    #[test]
    fn percent() {
        assert_eq!(&*percent_decode(b"/a%20b%2Fc"), b"/a b/c");
        assert_eq!(&*percent_decode(b"/%e9"), b"/\xe9");
        assert_eq!(&*percent_decode(b"/%zz%4"), b"/%zz%4");
        assert_eq!(&*percent_decode(b"/100%"), b"/100%");
    }

    #[test]
    fn absolute_form_authority() {
        assert_eq!(
            absolute_authority("http://a.example:81/x?y"),
            Some(&b"a.example:81"[..])
        );
        assert_eq!(absolute_authority("HTTPS://b/"), Some(&b"b"[..]));
        assert_eq!(absolute_authority("/x"), None);
        assert_eq!(absolute_authority("ftp://c/"), None);
    }

    #[test]
    fn hosts() {
        assert_eq!(
            split_host(b"example.com:8080"),
            (&b"example.com"[..], Some(&b"8080"[..]))
        );
        assert_eq!(split_host(b"example.com"), (&b"example.com"[..], None));
        assert_eq!(split_host(b"[::1]:80"), (&b"[::1]"[..], Some(&b"80"[..])));
        assert_eq!(split_host(b"[::1]"), (&b"[::1]"[..], None));
    }
}
