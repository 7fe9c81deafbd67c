//! Response framing: validating what the application hands us (status line,
//! header names and values) and writing the response head.
//!
//! Why validate here: a WSGI app builds headers from user data; one CR/LF in
//! a value is a response-splitting hole. Anything invalid makes the whole
//! response a 500, decided before a byte of it is sent.

use std::cell::RefCell;

/// RFC 9110 token characters.
pub fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// `is_tchar` as a table: one load per byte instead of a chain of ranges.
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = matches!(c,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z');
        b += 1;
    }
    t
};

pub fn valid_header_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| is_tchar(b))
}

/// A header value (or status) from the app: VCHAR / obs-text / SP / HTAB
/// (RFC 9110 §5.5 field-content, RFC 9112 §4 reason-phrase). Never CR, LF,
/// NUL or any other control: those could split the response. HTAB is let
/// through as Gunicorn does (a Content-Security-Policy written over several
/// tab-indented lines and joined), though PEP 3333 asks apps not to send it.
pub fn valid_header_value(v: &[u8]) -> bool {
    // Eight bytes at a time: a word with no byte below 0x20 and none equal
    // to 0x7f is fine as it is; only a word that might hold a control is
    // looked at byte by byte.
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let byte_ok = |b: u8| (b >= 0x20 && b != 0x7f) || b == b'\t';
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        let x = u64::from_le_bytes(c.try_into().unwrap());
        // Bytes < 0x20 (those without their high bit set), and bytes
        // equal to 0x7f (zero after the xor): the classic "has less /
        // has zero" tricks; false positives (and HTABs) only send us to
        // the slow check, never past it.
        let below = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
        let y = x ^ (ONES * 0x7f);
        let del = y.wrapping_sub(ONES) & !y & HIGHS;
        if (below | del) != 0 && !c.iter().all(|&b| byte_ok(b)) {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| byte_ok(b))
}

/// Parse a WSGI status string `"200 OK"`: three digits, then a space and a
/// reason phrase (which may be empty). Returns the code.
pub fn parse_status(s: &[u8]) -> Option<u16> {
    if s.len() < 3 || !s[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    if s.len() > 3 && s[3] != b' ' {
        return None;
    }
    if !valid_header_value(s) {
        return None;
    }
    let code = (s[0] - b'0') as u16 * 100 + (s[1] - b'0') as u16 * 10 + (s[2] - b'0') as u16;
    // RFC 9110 §15: codes outside 100..599 are invalid on the wire.
    if !(100..=599).contains(&code) {
        return None;
    }
    Some(code)
}

/// Whether a response with this status to this method carries no body
/// (RFC 9110 §6.4.1): HEAD, 1xx, 204, 304.
pub fn status_has_no_body(code: u16, is_head: bool) -> bool {
    is_head || (100..200).contains(&code) || code == 204 || code == 304
}

/// Hop-by-hop headers a WSGI app must not set (PEP 3333); we drop them and
/// do our own connection management and framing.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    // By length first: most names are ruled out without a comparison.
    let hop: &[u8] = match name.len() {
        2 => b"te",
        7 if name[0] | 0x20 == b't' => b"trailer",
        7 => b"upgrade",
        10 if name[0] | 0x20 == b'c' => b"connection",
        10 => b"keep-alive",
        17 => b"transfer-encoding",
        18 => b"proxy-authenticate",
        19 => b"proxy-authorization",
        _ => return false,
    };
    hop.eq_ignore_ascii_case(name)
}

pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A complete small error response (always `Connection: close`).
pub fn error_response(code: u16, minor: u8) -> Vec<u8> {
    let reason = reason_phrase(code);
    let body = format!("{code} {reason}\n");
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(format!("HTTP/1.{minor} {code} {reason}\r\n").as_bytes());
    out.extend_from_slice(b"Server: ferricorn\r\n");
    with_date_line(|d| out.extend_from_slice(d));
    out.extend_from_slice(b"Connection: close\r\nContent-Type: text/plain; charset=utf-8\r\n");
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body.as_bytes());
    out
}

/// An error answer as sent to this request: to HEAD, the head alone
/// (RFC 9110 §9.3.2: no content; the Content-Length stays, it is what GET
/// gets).
pub fn for_method(answer: &[u8], is_head: bool) -> &[u8] {
    match answer.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) if is_head => &answer[..i + 4],
        _ => answer,
    }
}

thread_local! {
    /// "Date: <IMF-fixdate>\r\n", refreshed at most once per second.
    static DATE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
}

/// Call `f` with the current `Date: ...\r\n` header line.
pub fn with_date_line<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|x| x.as_secs())
            .unwrap_or(0);
        if d.0 != now {
            d.0 = now;
            d.1.clear();
            d.1.extend_from_slice(b"Date: ");
            d.1.extend_from_slice(imf_fixdate(now).as_bytes());
            d.1.extend_from_slice(b"\r\n");
        }
        f(&d.1)
    })
}

/// RFC 9110 §5.6.7 IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn imf_fixdate(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86400;
    let rem = secs % 86400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(mo - 1) as usize],
        y,
        h,
        m,
        s
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(imf_fixdate(784111777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(imf_fixdate(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(imf_fixdate(951782400), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn statuses() {
        assert_eq!(parse_status(b"200 OK"), Some(200));
        assert_eq!(parse_status(b"404 "), Some(404));
        assert_eq!(parse_status(b"204"), Some(204));
        assert_eq!(parse_status(b"20 OK"), None);
        assert_eq!(parse_status(b"200OK"), None);
        assert_eq!(parse_status(b"200 OK\r\nX: y"), None);
        assert_eq!(parse_status(b"099 x"), None);
        assert_eq!(parse_status(b"abc OK"), None);
    }

    #[test]
    fn header_checks() {
        assert!(valid_header_name(b"X-Thing"));
        assert!(!valid_header_name(b"X Thing"));
        assert!(!valid_header_name(b"X:"));
        assert!(!valid_header_name(b""));
        assert!(valid_header_value(b"a b c\xff"));
        assert!(valid_header_value(b"a\tb"), "RFC 9110 field-content");
        assert!(
            parse_status(b"200 OK\tfine").is_some(),
            "RFC 9112 reason-phrase"
        );
        assert!(!valid_header_value(b"a\r\nSet-Cookie: x"));
        assert!(!valid_header_value(b"a\nb"));
        assert!(!valid_header_value(b"a\0b"));
        assert!(is_hop_by_hop(b"Transfer-Encoding"));
        assert!(!is_hop_by_hop(b"Content-Length"));
        for h in [
            "connection",
            "Keep-Alive",
            "proxy-authenticate",
            "Proxy-Authorization",
            "TE",
            "trailer",
            "transfer-encoding",
            "UPGRADE",
        ] {
            assert!(is_hop_by_hop(h.as_bytes()), "{h}");
        }
        for h in ["Date", "Trailers", "upgrad", "Connectio", "tE2", ""] {
            assert!(!is_hop_by_hop(h.as_bytes()), "{h}");
        }
        // Every byte, in every position of a word and of the tail.
        for b in 0..=255u8 {
            let ok = (b >= 0x20 && b != 0x7f) || b == b'\t';
            for len in [1, 7, 8, 9, 16, 17] {
                for pos in 0..len {
                    let mut v = vec![b'a'; len];
                    v[pos] = b;
                    assert_eq!(valid_header_value(&v), ok, "byte {b:#x} at {pos} of {len}");
                }
            }
            let tchar = matches!(b,
                b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
                | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z');
            assert_eq!(is_tchar(b), tchar, "byte {b:#x}");
        }
    }
}
