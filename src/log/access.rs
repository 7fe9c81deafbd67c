//! The access log: Gunicorn's `%(x)s` format atoms, compiled once, and
//! written after the response has gone out (never before it).
//!
//! Under journald each request becomes one native entry whose MESSAGE is
//! the formatted line and whose fields (HTTP_STATUS, HTTP_PATH, ...) can be
//! filtered on: `journalctl -u app HTTP_STATUS=500`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::systemd::journal::{Entry, Priority};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Atom {
    Lit(String),
    /// One-letter atom (h, l, u, t, r, m, U, q, H, s, B, b, f, a, T, M, D, L, p).
    Code(char),
    RequestHeader(String),
    ResponseHeader(String),
    /// `%({key}e)s`: index into `AccessFormat::env_keys`.
    Env(usize),
    /// An atom Gunicorn does not define: `-`, as Gunicorn prints it.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct AccessFormat {
    atoms: Vec<Atom>,
    /// The environ keys `%({key}e)s` atoms ask for, lower-cased (Gunicorn
    /// matches them case-insensitively). The worker reads them from the
    /// request's environ after the app ran; empty (no cost) usually.
    env_keys: Vec<String>,
}

/// What one finished request looked like.
pub struct Record<'a> {
    pub remote_addr: &'a str,
    pub method: &'a str,
    /// The raw request target (path?query).
    pub target: &'a str,
    pub minor_version: u8,
    pub status: u16,
    pub body_bytes: u64,
    pub duration: Duration,
    pub request_headers: crate::http::Headers<'a>,
    /// The app's response headers as serialized: `Name: value\r\n`...
    pub response_headers: &'a [u8],
    pub request_id: u64,
    /// Values for `env_keys`, in order (None: not in the environ).
    pub env: &'a [Option<String>],
}

impl<'a> Record<'a> {
    fn req_header(&self, name: &str) -> Option<&'a [u8]> {
        self.request_headers.find(name)
    }
    fn resp_header(&self, name: &str) -> Option<&'a [u8]> {
        self.response_headers
            .split(|&b| b == b'\n')
            .find_map(|line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let colon = line.iter().position(|&b| b == b':')?;
                line[..colon]
                    .eq_ignore_ascii_case(name.as_bytes())
                    .then(|| line[colon + 1..].trim_ascii())
            })
    }
    fn path_query(&self) -> (&'a str, &'a str) {
        self.target.split_once('?').unwrap_or((self.target, ""))
    }
}

impl AccessFormat {
    pub fn env_keys(&self) -> &[String] {
        &self.env_keys
    }

    pub fn compile(fmt: &str) -> AccessFormat {
        let mut atoms = Vec::new();
        let mut env_keys: Vec<String> = Vec::new();
        let mut lit = String::new();
        let mut rest = fmt;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(a) = after.strip_prefix('%') {
                lit.push('%');
                rest = a;
                continue;
            }
            if let Some(inner) = after.strip_prefix('(') {
                if let Some(close) = inner.find(")s") {
                    let name = &inner[..close];
                    let atom = if name.chars().count() == 1 {
                        let c = name.chars().next().unwrap();
                        if "hlutrmUqHsBbfaTMDLp".contains(c) {
                            Atom::Code(c)
                        } else {
                            Atom::Unknown
                        }
                    } else if let Some(h) = name.strip_prefix('{') {
                        let cut = h.len().saturating_sub(2);
                        let (key, kind) = if h.is_char_boundary(cut) {
                            h.split_at(cut)
                        } else {
                            (h, "")
                        };
                        // Gunicorn lower-cases the whole key: `{X-Id}I` too.
                        match kind.to_ascii_lowercase().as_str() {
                            "}i" => Atom::RequestHeader(key.to_string()),
                            "}o" => Atom::ResponseHeader(key.to_string()),
                            "}e" => {
                                let key = key.to_ascii_lowercase();
                                let i = match env_keys.iter().position(|k| *k == key) {
                                    Some(i) => i,
                                    None => {
                                        env_keys.push(key);
                                        env_keys.len() - 1
                                    }
                                };
                                Atom::Env(i)
                            }
                            _ => Atom::Unknown,
                        }
                    } else {
                        Atom::Unknown
                    };
                    {
                        if !lit.is_empty() {
                            atoms.push(Atom::Lit(std::mem::take(&mut lit)));
                        }
                        atoms.push(atom);
                        rest = &inner[close + 2..];
                        continue;
                    }
                }
            }
            lit.push('%');
            rest = after;
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            atoms.push(Atom::Lit(lit));
        }
        AccessFormat { atoms, env_keys }
    }

    pub fn format(&self, r: &Record<'_>, out: &mut String) {
        let dash = |v: Option<&[u8]>, out: &mut String| match v {
            Some(b) if !b.is_empty() => out.push_str(&String::from_utf8_lossy(b)),
            _ => out.push('-'),
        };
        for a in &self.atoms {
            let start = out.len();
            match a {
                Atom::Lit(s) => {
                    out.push_str(s);
                    continue; // the operator's own text: kept as written
                }
                Atom::Code(c) => match c {
                    'h' => out.push_str(if r.remote_addr.is_empty() {
                        "-"
                    } else {
                        r.remote_addr
                    }),
                    'l' => out.push('-'),
                    'u' => out.push_str(
                        &basic_auth_user(r.req_header("authorization"))
                            .unwrap_or_else(|| "-".into()),
                    ),
                    't' => {
                        out.push('[');
                        out.push_str(&super::strftime(c"%d/%b/%Y:%H:%M:%S %z", super::unix_now()));
                        out.push(']');
                    }
                    'r' => {
                        let _ = write!(out, "{} {} HTTP/1.{}", r.method, r.target, r.minor_version);
                    }
                    'm' => out.push_str(r.method),
                    // PATH_INFO, as Gunicorn: percent-decoded.
                    'U' => out.push_str(&String::from_utf8_lossy(
                        &crate::wsgi::environ::percent_decode(r.path_query().0.as_bytes()),
                    )),
                    'q' => out.push_str(r.path_query().1),
                    'H' => {
                        let _ = write!(out, "HTTP/1.{}", r.minor_version);
                    }
                    's' => {
                        let _ = write!(out, "{}", r.status);
                    }
                    'B' => {
                        let _ = write!(out, "{}", r.body_bytes);
                    }
                    'b' => {
                        if r.body_bytes == 0 {
                            out.push('-')
                        } else {
                            let _ = write!(out, "{}", r.body_bytes);
                        }
                    }
                    'f' => dash(r.req_header("referer"), out),
                    'a' => dash(r.req_header("user-agent"), out),
                    'T' => {
                        let _ = write!(out, "{}", r.duration.as_secs());
                    }
                    'M' => {
                        let _ = write!(out, "{}", r.duration.as_millis());
                    }
                    'D' => {
                        let _ = write!(out, "{}", r.duration.as_micros());
                    }
                    'L' => {
                        let _ = write!(out, "{:.6}", r.duration.as_secs_f64());
                    }
                    'p' => {
                        let _ = write!(out, "<{}>", std::process::id());
                    }
                    _ => out.push('-'),
                },
                Atom::RequestHeader(h) => dash(r.req_header(h), out),
                Atom::ResponseHeader(h) => dash(r.resp_header(h), out),
                Atom::Env(i) => dash(
                    r.env.get(*i).and_then(|v| v.as_deref()).map(str::as_bytes),
                    out,
                ),
                Atom::Unknown => out.push('-'),
            }
            // As Gunicorn's SafeAtoms: a `"` in a value is escaped, so a
            // client cannot close a quoted field and forge the next ones.
            if out[start..].contains('"') {
                let escaped = out[start..].replace('"', "\\\"");
                out.truncate(start);
                out.push_str(&escaped);
            }
        }
    }

    /// Write the entry to its target: journald (with fields) or the access
    /// log fd. Errors are dropped: logging must never fail a request.
    pub fn emit(&self, r: &Record<'_>) {
        let fd = super::access_fd();
        if fd < 0 {
            return;
        }
        let mut line = String::with_capacity(160);
        self.format(r, &mut line);
        if let Some(j) = super::journal() {
            let (path, query) = r.path_query();
            let mut e = Entry::new(Priority::Info, &line)
                .identifier("ferricorn")
                .field("HTTP_METHOD", r.method)
                .field("HTTP_PATH", path);
            // Absent rather than empty, so `journalctl HTTP_QUERY=` style
            // matches only what was there.
            if !query.is_empty() {
                e.push("HTTP_QUERY", query);
            }
            e = e
                .field("HTTP_STATUS", r.status.to_string())
                .field("HTTP_BYTES", r.body_bytes.to_string())
                .field("HTTP_DURATION_USEC", r.duration.as_micros().to_string());
            if let Some(ua) = r.req_header("user-agent").filter(|ua| !ua.is_empty()) {
                e.push("HTTP_USER_AGENT", ua);
            }
            let e = e
                .field("HTTP_VERSION", format!("HTTP/1.{}", r.minor_version))
                .field("REMOTE_ADDR", r.remote_addr)
                .field("WORKER_PID", std::process::id().to_string())
                .field(
                    "REQUEST_ID",
                    format!("{}-{}", std::process::id(), r.request_id),
                );
            if j.send_entry(&e).is_ok() {
                return;
            }
        }
        line.push('\n');
        // SAFETY: write(2) on the access-log fd; a short write or error only
        // loses a log line.
        unsafe { libc::write(fd, line.as_ptr() as *const libc::c_void, line.len()) };
    }
}

fn basic_auth_user(v: Option<&[u8]>) -> Option<String> {
    let v = v?;
    let s = std::str::from_utf8(v).ok()?;
    let (scheme, cred) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64_decode(cred.trim())?;
    let text = String::from_utf8(decoded).ok()?;
    Some(
        text.split_once(':')
            .map(|(u, _)| u.to_string())
            .unwrap_or(text),
    )
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = chunk.len();
        if n < 2 {
            return None;
        }
        out.push((acc >> 16) as u8);
        if n > 2 {
            out.push((acc >> 8) as u8);
        }
        if n > 3 {
            out.push(acc as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GET answered 200 with no body, for `head`.
    fn record<'a>(
        head: &'a crate::http::RequestHead,
        target: &'a str,
        env: &'a [Option<String>],
    ) -> Record<'a> {
        Record {
            remote_addr: "127.0.0.1",
            method: "GET",
            target,
            minor_version: 1,
            status: 200,
            body_bytes: 0,
            duration: Duration::ZERO,
            request_headers: head.headers(),
            response_headers: b"",
            request_id: 1,
            env,
        }
    }

    #[test]
    fn gunicorn_default_format() {
        let f = AccessFormat::compile(crate::config::DEFAULT_ACCESS_LOG_FORMAT);
        let (head, _) = crate::http::parse_head(
            b"GET /a?b=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8\r\n\
              Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
            &Default::default(),
        )
        .unwrap()
        .unwrap();
        let env = [Some("https".into()), None];
        let r = Record {
            body_bytes: 13,
            duration: Duration::from_micros(1500),
            response_headers: b"Content-Type: text/plain\r\nX-A: b\r\n",
            ..record(&head, "/a?b=1", &env)
        };
        let mut s = String::new();
        f.format(&r, &mut s);
        assert!(s.starts_with("127.0.0.1 - user ["), "{s}");
        assert!(
            s.ends_with("] \"GET /a?b=1 HTTP/1.1\" 200 13 \"-\" \"curl/8\""),
            "{s}"
        );
        let mut s = String::new();
        AccessFormat::compile("%(m)s %(U)s %(q)s %(D)s %({content-type}o)s %({x-missing}i)s 100%%")
            .format(&r, &mut s);
        assert_eq!(s, "GET /a b=1 1500 text/plain - 100%");
        // the suffix in capitals too (Gunicorn lower-cases the whole key);
        // a key ending inside a multi-byte character is just unknown
        let mut s = String::new();
        AccessFormat::compile("%({user-agent}I)s %({X-A}O)s %({é)s").format(&r, &mut s);
        assert_eq!(s, "curl/8 b -");
        // env atoms by (case-insensitive) key, unknown atoms as '-'
        let f = AccessFormat::compile("%({wsgi.url_scheme}e)s %({NOPE}e)s %(zz)s %(x)s %({a}q)s");
        assert_eq!(f.env_keys(), ["wsgi.url_scheme", "nope"]);
        let mut s = String::new();
        f.format(&r, &mut s);
        assert_eq!(s, "https - - - -");
    }

    #[test]
    fn quotes_in_values_are_escaped() {
        let (head, _) = crate::http::parse_head(
            b"GET /x%20y HTTP/1.1\r\nHost: h\r\nUser-Agent: evil\" 200 0 \"injected\r\n\r\n",
            &Default::default(),
        )
        .unwrap()
        .unwrap();
        let r = record(&head, "/x%20y", &[]);
        let mut s = String::new();
        AccessFormat::compile("\"%(a)s\" %(U)s %(b)s").format(&r, &mut s);
        assert_eq!(s, r#""evil\" 200 0 \"injected" /x y -"#);
    }
}
