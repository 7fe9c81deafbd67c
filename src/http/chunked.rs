//! Incremental decoder for `Transfer-Encoding: chunked` request bodies
//! (RFC 9112 §7.1).
//!
//! CONTRACT: `ChunkedDecoder::decode(input, out)` consumes a prefix of
//! `input`, appends decoded payload bytes to `out`, and returns
//! `Ok(Progress { consumed, done })`. It can be fed arbitrarily small pieces
//! (one byte at a time must work). `done` is true once the last chunk and the
//! trailer section (ignored, but bounded) have been consumed; bytes after that
//! belong to the next pipelined request and are not consumed.
//! Errors (bad hex size, size overflow, missing CRLF, over-long chunk-ext or
//! trailers) are `HttpError::BadRequest`.
//!
//! Why a hand-written state machine: the decoder must never buffer (the
//! worker streams bodies into `wsgi.input`), so it keeps only a few counters
//! between calls and copies chunk data straight through. It is strict where
//! leniency has enabled request smuggling elsewhere: CRLF only (no bare LF or
//! CR), no whitespace before the size, whitespace after the size only when a
//! `;` extension follows (as the grammar's BWS allows), and bounded
//! extensions and trailers. Extensions are ignored but must match the
//! grammar (RFC 9112 §7.1.1): `*( BWS ";" BWS token [ BWS "=" BWS ( token /
//! quoted-string ) ] )`, so `3;`, `3;=x`, `3;a@b` or an unterminated quote
//! are errors; whitespace before the CRLF is not allowed (the grammar has
//! none there). The checks are states of the same byte-at-a-time machine,
//! so an extension split across reads is handled like any other byte.
//! After an error the decoder stays failed.
use super::request::HttpError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub consumed: usize,
    pub done: bool,
}

/// Longest chunk-size accepted, in hex digits (leading zeros included).
const MAX_SIZE_DIGITS: u8 = 32;
/// Bytes allowed between the chunk size and its CRLF (BWS + extensions).
pub const MAX_CHUNK_EXT: usize = 4096;
/// Bytes allowed in the whole trailer section, final CRLF included.
pub const MAX_TRAILERS: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Expecting the first hex digit of a chunk-size.
    #[default]
    SizeStart,
    /// Inside the hex digits.
    Size,
    /// Whitespace after the size: only `;` (or more whitespace) may follow.
    SizeWs,
    /// After a `;` (and any BWS): the extension name must start.
    ExtNameStart,
    /// Inside an extension name.
    ExtName,
    /// BWS after a name: `=` or `;` must follow.
    ExtNameWs,
    /// After `=` (and any BWS): a token or a quoted-string must start.
    ExtValueStart,
    /// Inside a token value.
    ExtToken,
    /// Inside a quoted-string value.
    ExtQuoted,
    /// After a backslash in a quoted-string.
    ExtQuotedEscape,
    /// Just after the closing quote: `;`, BWS or CR.
    ExtQuotedEnd,
    /// BWS after a value: only `;` may follow.
    ExtValueWs,
    /// Saw the CR ending the size line.
    SizeLf,
    /// Copying `remaining` payload bytes.
    Data,
    /// Expecting the CRLF after chunk data.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerName,
    TrailerValue,
    /// Saw the CR ending a trailer field line.
    TrailerLf,
    /// Saw the CR of the final empty line.
    FinalLf,
    Done,
    Failed,
}

#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: State,
    /// Size of the chunk being read (while in the size line).
    size: u64,
    digits: u8,
    ext_len: usize,
    /// Payload bytes left in the current chunk.
    remaining: u64,
    trailer_len: usize,
}

#[inline]
fn hex_value(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

#[inline]
fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
}

/// Bytes allowed in extensions and field values: HTAB, SP, VCHAR, obs-text.
#[inline]
fn is_text(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// True once the whole chunked body, trailers included, has been read.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Progress, HttpError> {
        match self.run(input, out) {
            Ok(consumed) => Ok(Progress {
                consumed,
                done: self.state == State::Done,
            }),
            Err(msg) => {
                self.state = State::Failed;
                Err(HttpError::BadRequest(msg))
            }
        }
    }

    fn run(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Data {
                // Bulk copy: the hot path for large bodies.
                let take =
                    (input.len() - i).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                out.extend_from_slice(&input[i..i + take]);
                i += take;
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = input[i];
            self.state = match self.state {
                State::SizeStart => {
                    let d = hex_value(b).ok_or("invalid chunk size")?;
                    self.size = d;
                    self.digits = 1;
                    self.ext_len = 0;
                    State::Size
                }
                State::Size => match b {
                    b'\r' => State::SizeLf,
                    b';' => self.ext_byte(State::ExtNameStart)?,
                    b' ' | b'\t' => self.ext_byte(State::SizeWs)?,
                    _ => {
                        let d = hex_value(b).ok_or("invalid chunk size")?;
                        self.digits += 1;
                        if self.digits > MAX_SIZE_DIGITS || self.size > u64::MAX >> 4 {
                            return Err("chunk size too large");
                        }
                        self.size = self.size << 4 | d;
                        State::Size
                    }
                },
                State::SizeWs => match b {
                    b' ' | b'\t' => self.ext_byte(State::SizeWs)?,
                    b';' => self.ext_byte(State::ExtNameStart)?,
                    _ => return Err("invalid chunk size line"),
                },
                State::ExtNameStart
                | State::ExtName
                | State::ExtNameWs
                | State::ExtValueStart
                | State::ExtToken
                | State::ExtQuoted
                | State::ExtQuotedEscape
                | State::ExtQuotedEnd
                | State::ExtValueWs => match self.ext_next(b)? {
                    State::SizeLf => State::SizeLf,
                    next => self.ext_byte(next)?,
                },
                State::SizeLf => match b {
                    b'\n' if self.size == 0 => {
                        self.trailer_len = 0;
                        State::TrailerStart
                    }
                    b'\n' => {
                        self.remaining = self.size;
                        State::Data
                    }
                    _ => return Err("chunk size line not ended by CRLF"),
                },
                State::Data => unreachable!("handled above"),
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::SizeStart,
                State::DataCr | State::DataLf => return Err("chunk data not followed by CRLF"),
                State::TrailerStart
                | State::TrailerName
                | State::TrailerValue
                | State::TrailerLf
                | State::FinalLf => {
                    self.trailer_len += 1;
                    if self.trailer_len > MAX_TRAILERS {
                        return Err("trailer section too large");
                    }
                    self.trailer_byte(b)?
                }
                State::Done => break,
                State::Failed => return Err("chunked body already failed"),
            };
            i += 1;
        }
        if self.state == State::Failed {
            return Err("chunked body already failed");
        }
        Ok(i)
    }

    /// Counts one byte of the size line after the digits.
    #[inline]
    fn ext_byte(&mut self, next: State) -> Result<State, &'static str> {
        self.ext_len += 1;
        if self.ext_len > MAX_CHUNK_EXT {
            return Err("chunk extension too long");
        }
        Ok(next)
    }

    /// The state after byte `b` of a chunk extension (RFC 9112 §7.1.1);
    /// `SizeLf` at the CR ending the size line.
    #[inline]
    fn ext_next(&self, b: u8) -> Result<State, &'static str> {
        let ws = b == b' ' || b == b'\t';
        Ok(match self.state {
            State::ExtNameStart if ws => State::ExtNameStart,
            State::ExtNameStart if is_tchar(b) => State::ExtName,
            State::ExtNameStart => return Err("invalid chunk extension name"),
            State::ExtName if is_tchar(b) => State::ExtName,
            State::ExtName | State::ExtNameWs if ws => State::ExtNameWs,
            State::ExtName | State::ExtNameWs if b == b'=' => State::ExtValueStart,
            State::ExtName | State::ExtNameWs if b == b';' => State::ExtNameStart,
            State::ExtName if b == b'\r' => State::SizeLf,
            State::ExtName | State::ExtNameWs => return Err("invalid chunk extension"),
            State::ExtValueStart if ws => State::ExtValueStart,
            State::ExtValueStart if is_tchar(b) => State::ExtToken,
            State::ExtValueStart if b == b'"' => State::ExtQuoted,
            State::ExtValueStart => return Err("invalid chunk extension value"),
            State::ExtToken if is_tchar(b) => State::ExtToken,
            State::ExtQuoted => match b {
                b'"' => State::ExtQuotedEnd,
                b'\\' => State::ExtQuotedEscape,
                // qdtext; CR/LF cannot appear: an unterminated quote.
                _ if is_text(b) => State::ExtQuoted,
                _ => return Err("unterminated quoted string in chunk extension"),
            },
            State::ExtQuotedEscape if is_text(b) => State::ExtQuoted,
            State::ExtQuotedEscape => {
                return Err("invalid quoted-pair in chunk extension");
            }
            State::ExtToken | State::ExtQuotedEnd | State::ExtValueWs if b == b';' => {
                State::ExtNameStart
            }
            State::ExtToken | State::ExtQuotedEnd | State::ExtValueWs if ws => State::ExtValueWs,
            State::ExtToken | State::ExtQuotedEnd if b == b'\r' => State::SizeLf,
            _ => return Err("invalid chunk extension"),
        })
    }

    /// Trailer fields are read only to find their end: each must look like
    /// a field line (`token ":" text CRLF`), no obs-fold, then an empty line.
    #[inline]
    fn trailer_byte(&self, b: u8) -> Result<State, &'static str> {
        Ok(match (self.state, b) {
            (State::TrailerStart, b'\r') => State::FinalLf,
            (State::TrailerStart, _) if is_tchar(b) => State::TrailerName,
            (State::TrailerName, b':') => State::TrailerValue,
            (State::TrailerName, _) if is_tchar(b) => State::TrailerName,
            (State::TrailerValue, b'\r') => State::TrailerLf,
            (State::TrailerValue, _) if is_text(b) => State::TrailerValue,
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::FinalLf, b'\n') => State::Done,
            (State::TrailerLf | State::FinalLf, _) => return Err("trailer line not ended by CRLF"),
            _ => return Err("invalid trailer field"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` in one call; returns (payload, consumed, done).
    fn whole(input: &[u8]) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let p = d.decode(input, &mut out)?;
        Ok((out, p.consumed, p.done))
    }

    /// Decodes `input` fed in pieces of `step` bytes, stopping at `done`.
    fn stepwise(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + step).min(input.len());
            let p = d.decode(&input[pos..end], &mut out)?;
            if !p.done {
                assert_eq!(p.consumed, end - pos, "must consume everything until done");
            }
            pos += p.consumed;
            if p.done {
                return Ok((out, pos, true));
            }
        }
        Ok((out, pos, d.is_done()))
    }

    /// Asserts every feeding strategy gives the same result as a single call.
    fn all_ways(input: &[u8]) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let expected = whole(input);
        for step in [1, 2, 3, 7] {
            assert_eq!(stepwise(input, step), expected, "step {step}");
        }
        for split in 0..=input.len() {
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            let got = d.decode(&input[..split], &mut out).and_then(|p| {
                if p.done {
                    return Ok((out.clone(), p.consumed, true));
                }
                assert_eq!(p.consumed, split);
                let q = d.decode(&input[split..], &mut out)?;
                Ok((out.clone(), split + q.consumed, q.done))
            });
            assert_eq!(got, expected, "split at {split}");
        }
        expected
    }

    fn bad(input: &[u8]) {
        assert!(
            whole(input).is_err(),
            "should reject {:?}",
            String::from_utf8_lossy(input)
        );
        assert!(
            stepwise(input, 1).is_err(),
            "should reject bytewise {:?}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn simple() {
        let input = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        assert_eq!(
            all_ways(input).unwrap(),
            (b"hello world".to_vec(), input.len(), true)
        );
    }

    #[test]
    fn empty_body() {
        assert_eq!(all_ways(b"0\r\n\r\n").unwrap(), (vec![], 5, true));
    }

    #[test]
    fn bytes_after_done_not_consumed() {
        let input = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        assert_eq!(all_ways(input).unwrap(), (b"abc".to_vec(), 13, true));
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        assert_eq!(
            d.decode(input, &mut out).unwrap(),
            Progress {
                consumed: 13,
                done: true
            }
        );
        assert_eq!(
            d.decode(b"more", &mut out).unwrap(),
            Progress {
                consumed: 0,
                done: true
            }
        );
        assert!(d.is_done());
    }

    #[test]
    fn incomplete_is_not_done() {
        let input = b"5\r\nhello\r\n0\r\n\r\n";
        for i in 0..input.len() {
            let (_, consumed, done) = whole(&input[..i]).unwrap();
            assert_eq!((consumed, done), (i, false), "prefix {i}");
        }
        assert_eq!(whole(b"").unwrap(), (vec![], 0, false));
    }

    #[test]
    fn hex_sizes() {
        let body = vec![b'x'; 26];
        for size in ["1a", "1A", "01a", "00000000000000000000000000001A"] {
            let mut input = format!("{size}\r\n").into_bytes();
            input.extend_from_slice(&body);
            input.extend_from_slice(b"\r\n0\r\n\r\n");
            assert_eq!(whole(&input).unwrap().0, body, "{size}");
        }
        assert!(all_ways(b"000\r\n\r\n").unwrap().2);
    }

    #[test]
    fn large_chunk_across_calls() {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        assert_eq!(d.decode(b"10000\r\n", &mut out).unwrap().consumed, 7);
        let data = vec![7u8; 0x10000];
        for piece in data.chunks(1000) {
            assert_eq!(
                d.decode(piece, &mut out).unwrap(),
                Progress {
                    consumed: piece.len(),
                    done: false
                }
            );
        }
        assert_eq!(
            d.decode(b"\r\n0\r\n\r\n", &mut out).unwrap(),
            Progress {
                consumed: 7,
                done: true
            }
        );
        assert_eq!(out, data);
    }

    #[test]
    fn max_size_accepted_as_size() {
        // 2^64 - 1 is a valid size (the worker's own body limit applies).
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        assert_eq!(
            d.decode(b"ffffffffffffffff\r\nab", &mut out).unwrap(),
            Progress {
                consumed: 20,
                done: false
            }
        );
        assert_eq!(out, b"ab");
    }

    #[test]
    fn bad_sizes() {
        for input in [
            &b"\r\n\r\n"[..],
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5\t\r\nhello\r\n0\r\n\r\n",
            b"g\r\n",
            b"5g\r\n",
            b"5,5\r\n",
            b"10000000000000000\r\n",                 // 2^64
            b"fffffffffffffffff\r\n",                 // 17 f's
            b"000000000000000000000000000000001\r\n", // 33 digits
            b";ext\r\n",
        ] {
            bad(input);
        }
    }

    #[test]
    fn extensions() {
        for input in [
            &b"5;foo=bar\r\nhello\r\n0\r\n\r\n"[..],
            b"5;foo\r\nhello\r\n0;last\r\n\r\n",
            b"5 ; foo = bar\r\nhello\r\n0\r\n\r\n",
            b"5\t;foo=\"b a;r\"\r\nhello\r\n0\r\n\r\n",
            b"5;a=1;b=2\r\nhello\r\n0\r\n\r\n",
            b"5;x=\"\xff\"\r\nhello\r\n0\r\n\r\n",
            b"5;a;b=c\r\nhello\r\n0\r\n\r\n",
            b"5; a = \"x;y\"\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"\"\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"q\\\"\\\\\\x\" ;b\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"x\"\t; b\r\nhello\r\n0\r\n\r\n",
            b"5;!#$%&'*+-.^_`|~09AZaz=!#$%&'*+-.^_`|~\r\nhello\r\n0\r\n\r\n",
            b"5 \t; \ta\t =\t b ;c\r\nhello\r\n0;z=\"1\"\r\n\r\n",
        ] {
            assert_eq!(
                all_ways(input).unwrap().0,
                b"hello",
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        for input in [
            &b"5;a\x00b\r\nhello\r\n0\r\n\r\n"[..],
            b"5;a\x7f\r\n",
            b"5;a\x0b\r\n",
            b"5;a\rb\r\n",
            b"5;a\nhello",
            // RFC 9112 §7.1.1 grammar.
            b"3;\r\nabc\r\n0\r\n\r\n",
            b"3; \r\nabc\r\n0\r\n\r\n",
            b"3;=x\r\nabc\r\n0\r\n\r\n",
            b"3;a@b\r\nabc\r\n0\r\n\r\n",
            b"3;a=\"b\r\nabc\r\n0\r\n\r\n",
            b"3;a=\"b\\\"\r\nabc\r\n0\r\n\r\n",
            b"3;a=\"b\\\r\nabc\r\n0\r\n\r\n",
            b"3;a=\r\nabc\r\n0\r\n\r\n",
            b"3;a= \r\nabc\r\n0\r\n\r\n",
            b"3;a==b\r\nabc\r\n0\r\n\r\n",
            b"3;a=b=c\r\nabc\r\n0\r\n\r\n",
            b"3;a=b c\r\nabc\r\n0\r\n\r\n",
            b"3;a b\r\nabc\r\n0\r\n\r\n",
            b"3;a=\"b\"c\r\nabc\r\n0\r\n\r\n",
            b"3;a=\"b\" c\r\nabc\r\n0\r\n\r\n",
            b"3;a=b\"c\"\r\nabc\r\n0\r\n\r\n",
            b"3;a=(b)\r\nabc\r\n0\r\n\r\n",
            b"3;a/b\r\nabc\r\n0\r\n\r\n",
            b"3;a;\r\nabc\r\n0\r\n\r\n",
            b"3;a;;b\r\nabc\r\n0\r\n\r\n",
            b"3;;a\r\nabc\r\n0\r\n\r\n",
            b"3;a,b\r\nabc\r\n0\r\n\r\n",
            b"3;x=\xff\r\nabc\r\n0\r\n\r\n", // obs-text only inside quotes
            b"3;\xffa\r\nabc\r\n0\r\n\r\n",
            b"3;a=\"\x7f\"\r\nabc\r\n0\r\n\r\n",
            b"3;a=\"\x01\"\r\nabc\r\n0\r\n\r\n",
            // No whitespace before the CRLF (the grammar has none there).
            b"3;a \r\nabc\r\n0\r\n\r\n",
            b"3;a=b\t\r\nabc\r\n0\r\n\r\n",
            b"3;a=\"b\" \r\nabc\r\n0\r\n\r\n",
            // On the last chunk too.
            b"3\r\nabc\r\n0;\r\n\r\n",
            b"3\r\nabc\r\n0;a=\"\r\n\r\n",
        ] {
            bad(input);
        }
    }

    #[test]
    fn extension_errors_at_every_split() {
        // The decoder is fed arbitrary pieces: an invalid extension is an
        // error wherever the reads split it, and never before its bad byte.
        for input in [
            &b"3;a=\"b\r\nabc\r\n0\r\n\r\n"[..],
            b"3;=x\r\nabc\r\n0\r\n\r\n",
            b"3;a@b\r\nabc\r\n0\r\n\r\n",
            b"3;\r\nabc\r\n0\r\n\r\n",
        ] {
            for split in 0..=input.len() {
                let mut d = ChunkedDecoder::new();
                let mut out = Vec::new();
                let first = d.decode(&input[..split], &mut out);
                let second = first
                    .clone()
                    .and_then(|_| d.decode(&input[split..], &mut out));
                assert!(second.is_err(), "split at {split}: {input:?}");
                assert!(out.is_empty(), "no payload before the bad line");
            }
        }
        // A valid one split inside a quoted-string, then an escape.
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        for piece in [
            &b"3; a = \"x"[..],
            b";",
            b"\\",
            b"\"",
            b"y\"",
            b" ;b",
            b"\r",
            b"\nabc\r\n0\r\n\r\n",
        ] {
            assert_eq!(d.decode(piece, &mut out).unwrap().consumed, piece.len());
        }
        assert!(d.is_done());
        assert_eq!(out, b"abc");
    }

    #[test]
    fn extension_length_bound() {
        let ok_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(MAX_CHUNK_EXT - 1));
        assert_eq!(whole(ok_ext.as_bytes()).unwrap().0, b"hello");
        let long = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(MAX_CHUNK_EXT));
        bad(long.as_bytes());
        // The bound is per chunk.
        let ext = "a".repeat(MAX_CHUNK_EXT - 1);
        let many = format!("1;{ext}\r\nx\r\n1;{ext}\r\ny\r\n0;{ext}\r\n\r\n");
        assert_eq!(whole(many.as_bytes()).unwrap().0, b"xy");
        // Whitespace before `;` counts too.
        let ws = format!("5{};a\r\n", " ".repeat(MAX_CHUNK_EXT));
        bad(ws.as_bytes());
    }

    #[test]
    fn crlf_required() {
        for input in [
            &b"5\r\nhelloX\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r0\r\n\r\n",
            b"5\r\nhello\r\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\rhello\r\n",
            b"5\r\nhello\r\n0\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\r\nhello\r\n0\r\n\rX",
            b"5\r\nhello\r\n\r\n",
            b"3\r\nhello\r\n0\r\n\r\n",
        ] {
            bad(input);
        }
    }

    #[test]
    fn trailers() {
        let input =
            b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other:\t v \xff\r\nEmpty:\r\n\r\nNEXT";
        assert_eq!(
            all_ways(input).unwrap(),
            (b"hello".to_vec(), input.len() - 4, true)
        );
        for input in [
            &b"0\r\n X: v\r\n\r\n"[..], // obs-fold / leading space
            b"0\r\nX: v\r\n\tmore\r\n\r\n",
            b"0\r\n: v\r\n\r\n",
            b"0\r\nX v\r\n\r\n",
            b"0\r\nX : v\r\n\r\n",
            b"0\r\nX\r\n\r\n",
            b"0\r\nX: a\x00b\r\n\r\n",
            b"0\r\nX: a\x01\r\n\r\n",
            b"0\r\nX: a\rb\r\n\r\n",
            b"0\r\nX: v\n\r\n",
            b"0\r\nX: v\r\n\n",
            b"0\r\n\n",
        ] {
            bad(input);
        }
    }

    #[test]
    fn trailer_size_bound() {
        // Exactly at the bound (final CRLF included) is fine, one more is not.
        let value = "v".repeat(MAX_TRAILERS - "X: \r\n\r\n".len());
        let at = format!("0\r\nX: {value}\r\n\r\n");
        assert!(whole(at.as_bytes()).unwrap().2);
        let over = format!("0\r\nX: {value}v\r\n\r\n");
        bad(over.as_bytes());
        // Many small trailers add up.
        let many = format!("0\r\n{}\r\n", "A: b\r\n".repeat(MAX_TRAILERS / 6 + 1));
        bad(many.as_bytes());
    }

    #[test]
    fn failure_is_sticky() {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        assert!(d.decode(b"z", &mut out).is_err());
        assert!(d.decode(b"0\r\n\r\n", &mut out).is_err());
        assert!(d.decode(b"", &mut out).is_err());
        assert!(!d.is_done());
        assert_eq!(d.decode(b"", &mut out).unwrap_err().status(), 400);
    }
}
