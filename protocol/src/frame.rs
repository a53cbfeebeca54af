//! Line framing: newline-delimited requests with a length cap.
//!
//! A request is one line. Two things make a plain "split at `\n`" not
//! enough:
//! - A line longer than `max_frame_bytes` must be refused *before* it is
//!   buffered whole, so the framer checks the cap as bytes arrive.
//! - GMQ's own client writes one JSON object **without** a newline and then
//!   waits for the reply. So when the buffered bytes hold no newline but form
//!   one complete JSON object, that object is a request too. Completeness is
//!   tracked by a small brace/string scanner that sees each byte once, so a
//!   hostile client cannot make the check quadratic.
//!
//! A `\r` before the `\n` is dropped; blank lines are skipped.

use bytes::{Bytes, BytesMut};

/// A line longer than the cap. The stream cannot be resynchronised: close it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTooLarge {
    /// The cap, in bytes.
    pub max: usize,
}

impl std::fmt::Display for FrameTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request line longer than max_frame_bytes ({} bytes)", self.max)
    }
}

impl std::error::Error for FrameTooLarge {}

/// Tracks whether the bytes of an unterminated line form one complete JSON
/// object (strings and escapes respected; validity is left to the parser).
#[derive(Debug, Default, Clone, Copy)]
struct ObjectScan {
    depth: u32,
    in_string: bool,
    escape: bool,
    /// The first non-blank byte was `{`.
    started: bool,
    /// Something other than an object was seen: no completion.
    off: bool,
    /// Bytes up to here form a complete object.
    complete_at: Option<usize>,
}

impl ObjectScan {
    fn feed(&mut self, bytes: &[u8], base: usize) {
        for (i, &b) in bytes.iter().enumerate() {
            if self.off {
                return;
            }
            if self.complete_at.is_some() {
                // Only blanks may follow a complete object.
                if !b.is_ascii_whitespace() {
                    self.off = true;
                }
                continue;
            }
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            if !self.started {
                match b {
                    b'{' => {
                        self.started = true;
                        self.depth = 1;
                    }
                    b if b.is_ascii_whitespace() => {}
                    _ => self.off = true,
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth = self.depth.saturating_add(1),
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.complete_at = Some(base + i + 1);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Splits a byte stream into request lines.
#[derive(Debug)]
pub struct LineFramer {
    buf: BytesMut,
    max: usize,
    /// Bytes of `buf` already searched for a newline (and scanned).
    scanned: usize,
    scan: ObjectScan,
}

impl LineFramer {
    /// A framer refusing lines longer than `max` bytes (without the newline).
    pub fn new(max: usize) -> Self {
        LineFramer { buf: BytesMut::new(), max, scanned: 0, scan: ObjectScan::default() }
    }

    /// The buffer to read into (for `AsyncReadExt::read_buf`).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes of a line started but not yet complete.
    pub fn partial(&self) -> usize {
        self.buf.len()
    }

    /// The next complete line, without its line ending; `Ok(None)` if more
    /// bytes are needed. Blank lines are skipped.
    pub fn next_line(&mut self) -> Result<Option<Bytes>, FrameTooLarge> {
        loop {
            let Some(line) = self.take_line()? else { return Ok(None) };
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Ok(Some(line));
            }
        }
    }

    fn take_line(&mut self) -> Result<Option<Bytes>, FrameTooLarge> {
        let fresh = &self.buf[self.scanned..];
        if let Some(i) = memchr::memchr(b'\n', fresh) {
            let end = self.scanned + i;
            if end > self.max {
                return Err(FrameTooLarge { max: self.max });
            }
            let mut line = self.buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            self.scanned = 0;
            self.scan = ObjectScan::default();
            return Ok(Some(line.freeze()));
        }
        let len = self.buf.len();
        if len > self.max {
            return Err(FrameTooLarge { max: self.max });
        }
        self.scan.feed(&self.buf[self.scanned..], self.scanned);
        self.scanned = len;
        if let (Some(end), false) = (self.scan.complete_at, self.scan.off) {
            let line = self.buf.split_to(end).freeze();
            // What followed the object (blanks) is scanned again as a new line.
            self.scanned = 0;
            self.scan = ObjectScan::default();
            return Ok(Some(line));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(f: &mut LineFramer) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(l) = f.next_line().unwrap() {
            out.push(String::from_utf8(l.to_vec()).unwrap());
        }
        out
    }

    #[test]
    fn splits_lines_across_chunks() {
        let mut f = LineFramer::new(100);
        f.extend(b"{\"op\":\"ping\"}\n{\"op\":");
        assert_eq!(lines(&mut f), ["{\"op\":\"ping\"}"]);
        f.extend(b"\"ping\",\"id\":1}\r\n\n  \n[1");
        assert_eq!(lines(&mut f), ["{\"op\":\"ping\",\"id\":1}"]);
        f.extend(b"]\n");
        assert_eq!(lines(&mut f), ["[1]"]);
    }

    #[test]
    fn a_complete_object_without_newline_is_a_line() {
        let mut f = LineFramer::new(1000);
        f.extend(br#"{"operation":"P","queue":"q","payload":"e30=","x":"}\"{"#);
        assert!(lines(&mut f).is_empty(), "object still open inside a string");
        f.extend(br#""}"#);
        assert_eq!(lines(&mut f), [r#"{"operation":"P","queue":"q","payload":"e30=","x":"}\"{"}"#]);
        // The newline a line-based client sends after it is a blank line.
        f.extend(b"\n{\"a\":{\"b\":[{}]}}");
        assert_eq!(lines(&mut f), ["{\"a\":{\"b\":[{}]}}"]);
        // Not an object, or trailing bytes: wait for the newline.
        f.extend(b"{} x");
        assert!(lines(&mut f).is_empty());
        f.extend(b"\n");
        assert_eq!(lines(&mut f), ["{} x"]);
        f.extend(b"42");
        assert!(lines(&mut f).is_empty());
    }

    #[test]
    fn long_lines_are_refused_before_the_newline() {
        let mut f = LineFramer::new(10);
        f.extend(b"0123456789\n");
        assert_eq!(lines(&mut f), ["0123456789"]);
        f.extend(b"0123456789");
        assert_eq!(f.next_line(), Ok(None));
        f.extend(b"0");
        assert_eq!(f.next_line(), Err(FrameTooLarge { max: 10 }));
        let mut f = LineFramer::new(10);
        f.extend(b"0123456789ab\n");
        assert_eq!(f.next_line(), Err(FrameTooLarge { max: 10 }));
    }

    #[test]
    fn byte_at_a_time_matches_whole() {
        let input = b"{\"op\":\"ping\"}\n\r\n{\"s\":\"a\\\\\"}\n{\"x\":[1,{\"y\":\"}\"}]}";
        let mut whole = LineFramer::new(1000);
        whole.extend(input);
        let expect = lines(&mut whole);
        let mut f = LineFramer::new(1000);
        let mut got = Vec::new();
        for b in input {
            f.extend(&[*b]);
            got.extend(lines(&mut f));
        }
        assert_eq!(got, expect);
        assert_eq!(expect.len(), 3);
    }
}
