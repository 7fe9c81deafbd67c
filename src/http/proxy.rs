//! The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and
//! 2): a load balancer that forwards raw TCP (HAProxy in `mode tcp`, AWS
//! NLB, stunnel) puts the real client's address in front of the first
//! request, since the connection itself only shows the balancer's.
//!
//! With `--proxy-protocol`, as in Gunicorn, the header is optional: a
//! connection that starts with one has it read and checked (the sender must
//! be in `proxy_allow_ips`), one that does not is plain HTTP. Only the
//! parsing lives here; the worker decides what to do with the result.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Version 2's fixed first 12 bytes.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Version 1's longest header, CRLF included (the spec's bound).
const V1_MAX: usize = 107;

/// What the header says about the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyInfo {
    /// "TCP4" or "TCP6", as Gunicorn's `PROXY_PROTOCOL` environ key.
    pub protocol: &'static str,
    pub client_addr: IpAddr,
    pub client_port: u16,
    pub proxy_addr: IpAddr,
    pub proxy_port: u16,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The connection does not start with a PROXY header.
    Absent,
    /// A header has begun; read more.
    Incomplete,
    /// A whole header of this many bytes. `None`: a valid header that
    /// carries no address (v1 `UNKNOWN`, v2 `LOCAL` or a non-IP family):
    /// the connection's own addresses stand.
    Header(Option<ProxyInfo>, usize),
}

/// Why a header was refused (answered 400, as Gunicorn's InvalidProxyLine).
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid PROXY header: {}", self.0)
    }
}

/// Look at the start of a connection's input, for either version.
#[cfg(test)]
pub fn parse(buf: &[u8]) -> Result<Parsed, Invalid> {
    parse_accepting(buf, true, true)
}

/// Look at the start of a connection's input for the versions accepted
/// (`proxy_protocol = "v1"` or `"v2"`): a version not accepted is not
/// looked for, so its bytes are `Absent` and get parsed as HTTP, as in
/// Gunicorn.
pub fn parse_accepting(buf: &[u8], v1: bool, v2: bool) -> Result<Parsed, Invalid> {
    if v1 && starts_as(buf, b"PROXY ") {
        if buf.len() < 6 {
            return Ok(Parsed::Incomplete);
        }
        return parse_v1(buf);
    }
    if v2 && starts_as(buf, V2_SIGNATURE) {
        if buf.len() < 12 {
            return Ok(Parsed::Incomplete);
        }
        return parse_v2(buf);
    }
    Ok(Parsed::Absent)
}

/// `buf` is `sig`'s prefix or starts with it (and is not empty).
fn starts_as(buf: &[u8], sig: &[u8]) -> bool {
    let n = buf.len().min(sig.len());
    n > 0 && buf[..n] == sig[..n]
}

/// `PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n`
fn parse_v1(buf: &[u8]) -> Result<Parsed, Invalid> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err(Invalid("v1 line longer than 107 bytes"));
        }
        return Ok(Parsed::Incomplete);
    };
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| Invalid("v1 line is not ASCII"))?;
    let used = end + 2;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        // proxy-protocol.txt 2.1: the receiver ignores the rest and uses
        // the connection's real addresses.
        return Ok(Parsed::Header(None, used));
    }
    let fields: Vec<&str> = line.split(' ').collect();
    let [proto, src, dst, sport, dport] = fields[..] else {
        return Err(Invalid("v1 line needs 6 space-separated fields"));
    };
    let (protocol, client_addr, proxy_addr) = match proto {
        "TCP4" => (
            "TCP4",
            v1_addr::<Ipv4Addr>(src, "bad IPv4 source")?,
            v1_addr::<Ipv4Addr>(dst, "bad IPv4 destination")?,
        ),
        "TCP6" => (
            "TCP6",
            v1_addr::<Ipv6Addr>(src, "bad IPv6 source")?,
            v1_addr::<Ipv6Addr>(dst, "bad IPv6 destination")?,
        ),
        _ => return Err(Invalid("v1 protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Parsed::Header(
        Some(ProxyInfo {
            protocol,
            client_addr,
            client_port: port(sport)?,
            proxy_addr,
            proxy_port: port(dport)?,
        }),
        used,
    ))
}

/// A v1 address of the family its protocol names (A: Ipv4Addr or Ipv6Addr).
fn v1_addr<A: std::str::FromStr + Into<IpAddr>>(
    s: &str,
    why: &'static str,
) -> Result<IpAddr, Invalid> {
    s.parse::<A>().map(Into::into).map_err(|_| Invalid(why))
}

/// A v1 port: 1-5 decimal digits, no sign, no leading zero, <= 65535.
fn port(s: &str) -> Result<u16, Invalid> {
    let ok = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !ok {
        return Err(Invalid("bad port"));
    }
    s.parse().map_err(|_| Invalid("port out of range"))
}

/// Signature, version/command, family/transport, 16-bit length, addresses
/// (then TLVs, which we skip).
fn parse_v2(buf: &[u8]) -> Result<Parsed, Invalid> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let ver_cmd = buf[12];
    let fam = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err(Invalid("v2 version is not 2"));
    }
    let total = 16 + len;
    if buf.len() < total {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[16..total];
    match ver_cmd & 0x0f {
        // LOCAL: the balancer's own health check; real addresses stand.
        0 => return Ok(Parsed::Header(None, total)),
        1 => {}
        _ => return Err(Invalid("v2 command is not LOCAL or PROXY")),
    }
    let info = match fam {
        // TCP over IPv4 / IPv6: the two addresses, then the two ports.
        0x11 => Some(v2_addresses(body, 4, "TCP4")?),
        0x21 => Some(v2_addresses(body, 16, "TCP6")?),
        // UDP: an HTTP server's clients come over a stream.
        0x12 | 0x22 => return Err(Invalid("v2 header for a datagram connection")),
        // UNSPEC, or a unix socket on the balancer's side: no IP to give.
        0x00 | 0x31 | 0x32 => None,
        _ => return Err(Invalid("v2 address family unknown")),
    };
    Ok(Parsed::Header(info, total))
}

/// A v2 address block: source and destination address (`n` bytes each),
/// source and destination port (2 bytes each, network order).
fn v2_addresses(body: &[u8], n: usize, protocol: &'static str) -> Result<ProxyInfo, Invalid> {
    if body.len() < 2 * n + 4 {
        return Err(Invalid("v2 address block too short"));
    }
    let addr = |o: usize| -> IpAddr {
        if n == 4 {
            <[u8; 4]>::try_from(&body[o..o + 4]).unwrap().into()
        } else {
            <[u8; 16]>::try_from(&body[o..o + 16]).unwrap().into()
        }
    };
    let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
    Ok(ProxyInfo {
        protocol,
        client_addr: addr(0),
        proxy_addr: addr(n),
        client_port: port(2 * n),
        proxy_port: port(2 * n + 2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1(s: &str) -> Result<Parsed, Invalid> {
        parse(s.as_bytes())
    }

    #[test]
    fn a_version_not_accepted_is_not_looked_for() {
        let one = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n";
        let two = v2(
            1,
            0x11,
            &[192, 0, 2, 1, 198, 51, 100, 7, 0xDC, 0x04, 1, 187],
        );
        assert_eq!(parse_accepting(one, false, true), Ok(Parsed::Absent));
        assert_eq!(parse_accepting(&two, true, false), Ok(Parsed::Absent));
        assert!(matches!(
            parse_accepting(one, true, false),
            Ok(Parsed::Header(Some(_), _))
        ));
        assert!(matches!(
            parse_accepting(&two, false, true),
            Ok(Parsed::Header(Some(_), _))
        ));
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let h = "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\nGET / HTTP/1.1\r\n";
        let Ok(Parsed::Header(Some(i), n)) = v1(h) else {
            panic!("{:?}", v1(h))
        };
        assert_eq!(n, h.find("GET").unwrap());
        assert_eq!(i.protocol, "TCP4");
        assert_eq!(i.client_addr.to_string(), "192.0.2.1");
        assert_eq!((i.client_port, i.proxy_port), (56324, 443));
        assert_eq!(i.proxy_addr.to_string(), "198.51.100.7");
        let Ok(Parsed::Header(Some(i), _)) = v1("PROXY TCP6 2001:db8::1 ::1 1 65535\r\n") else {
            panic!()
        };
        assert_eq!(
            (i.protocol, i.client_addr.to_string()),
            ("TCP6", "2001:db8::1".into())
        );
        assert_eq!(
            v1("PROXY UNKNOWN ff 1 2 3\r\nGET"),
            Ok(Parsed::Header(None, 24))
        );
    }

    #[test]
    fn v1_partial_absent_and_bad() {
        assert_eq!(v1("PRO"), Ok(Parsed::Incomplete));
        assert_eq!(v1("PROXY TCP4 1.2.3.4"), Ok(Parsed::Incomplete));
        assert_eq!(v1("GET / HTTP/1.1\r\n"), Ok(Parsed::Absent));
        assert_eq!(v1("POST / HTTP/1.1\r\n"), Ok(Parsed::Absent));
        for bad in [
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
            "PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            "PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(v1(bad).is_err(), "{bad:?}");
        }
        let long = format!("PROXY TCP4 {}", "1".repeat(120));
        assert!(v1(&long).is_err());
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn v2_ipv4_ipv6_local() {
        let mut body = vec![10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0, 80];
        body.extend_from_slice(&[3, 0, 1, 7]); // a TLV, skipped
        let h = v2(1, 0x11, &body);
        let Ok(Parsed::Header(Some(i), n)) = parse(&h) else {
            panic!()
        };
        assert_eq!(n, h.len());
        assert_eq!(i.client_addr.to_string(), "10.0.0.1");
        assert_eq!((i.client_port, i.proxy_port), (8080, 80));
        let mut b6 = vec![0u8; 36];
        b6[15] = 1; // ::1
        b6[16] = 0x20;
        b6[17] = 0x01;
        b6[33] = 9;
        let Ok(Parsed::Header(Some(i), _)) = parse(&v2(1, 0x21, &b6)) else {
            panic!()
        };
        assert_eq!(
            (i.protocol, i.client_addr.to_string(), i.client_port),
            ("TCP6", "::1".into(), 9)
        );
        assert_eq!(parse(&v2(0, 0x00, &[])), Ok(Parsed::Header(None, 16)));
        for cut in [5, 12, 15, h.len() - 1] {
            assert_eq!(parse(&h[..cut]), Ok(Parsed::Incomplete), "{cut}");
        }
        assert!(parse(&v2(1, 0x12, &body)).is_err());
        assert!(parse(&v2(1, 0x11, &[1, 2, 3])).is_err());
        assert!(parse(&v2(2, 0x11, &body)).is_err());
        let mut bad_version = h.clone();
        bad_version[12] = 0x11;
        assert!(parse(&bad_version).is_err());
    }
}
