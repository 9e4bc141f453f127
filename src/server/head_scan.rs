//! Spots a `Content-Length` line in an HTTP/1 request head as its bytes are
//! read, so a request that also carries `Transfer-Encoding` can be answered
//! 400 as SPEC requires.
//!
//! hyper accepts such a request (Transfer-Encoding wins, Content-Length is
//! dropped from the header map, the connection is closed after the answer),
//! which is safe but leaves no trace for the handler to see. This scanner
//! runs in the connection's I/O wrapper over head bytes only: it stops at the
//! blank line that ends the head, skips most of each line with `memchr`, carries
//! its state across reads and never allocates.

/// A header line that starts with this (any case) is a Content-Length.
const NAME: &[u8] = b"content-length:";

/// Scanner state, carried across reads.
#[derive(Default)]
pub(super) struct HeadScan {
    /// Bytes of the current line so far (saturating).
    line_len: u32,
    /// The current line so far is not a prefix of `NAME` (so the rest of
    /// the line can be skipped with `memchr`).
    mismatch: bool,
    /// The current line began with `\r` (a `\r\n` line is blank).
    first_cr: bool,
    /// A non-blank line (the request line) was seen: blank lines before it
    /// don't end anything, and it can't be a header.
    started: bool,
    done: bool,
    found: bool,
}

impl HeadScan {
    /// Feeds head bytes; returns true once a Content-Length line was seen.
    /// Only a line's first few bytes are looked at one by one; the rest is
    /// skipped with `memchr`, so a typical head costs a few hundred
    /// instructions.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut i = 0;
        while i < bytes.len() && !self.done {
            if !self.mismatch && (self.line_len as usize) < NAME.len() {
                let b = bytes[i];
                i += 1;
                if b == b'\n' {
                    self.end_line();
                    continue;
                }
                let k = self.line_len as usize;
                self.first_cr |= k == 0 && b == b'\r';
                self.mismatch = b.to_ascii_lowercase() != NAME[k];
                self.line_len += 1;
                if !self.mismatch && self.started && self.line_len as usize == NAME.len() {
                    self.found = true;
                }
                continue;
            }
            match memchr::memchr(b'\n', &bytes[i..]) {
                None => {
                    self.line_len = self.line_len.saturating_add((bytes.len() - i) as u32);
                    i = bytes.len();
                }
                Some(p) => {
                    self.line_len = self.line_len.saturating_add(p as u32);
                    i += p + 1;
                    self.end_line();
                }
            }
        }
        self.found
    }

    fn end_line(&mut self) {
        let blank = self.line_len == 0 || (self.line_len == 1 && self.first_cr);
        if blank {
            self.done = self.started;
        } else {
            self.started = true;
        }
        self.line_len = 0;
        self.mismatch = false;
        self.first_cr = false;
    }

    pub(super) fn done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(parts: &[&[u8]]) -> bool {
        let mut s = HeadScan::default();
        parts.iter().fold(false, |_, p| s.feed(p))
    }

    #[test]
    fn finds_content_length_in_any_case_and_split() {
        assert!(scan(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
        ]));
        assert!(scan(&[b"POST / HTTP/1.1\r\nCONTENT-LENGTH: 5\r\n\r\n"]));
        assert!(scan(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nConte",
            b"nt-Length: 5\r\n\r\n"
        ]));
        assert!(scan(&[b"POST / HTTP/1.1\r", b"\ncontent-length:1\r\n\r\n"]));
    }

    #[test]
    fn ignores_body_and_other_headers() {
        assert!(!scan(&[b"POST / HTTP/1.1\r\nX-Content-Length: 5\r\n\r\n"]));
        assert!(!scan(&[
            b"GET /content-length: HTTP/1.1\r\nHost: a\r\n\r\n"
        ]));
        // After the blank line it is body, not head.
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"10\r\n\ncontent-length: 1\r\n0\r\n\r\n"
        ]));
        assert!(!scan(&[
            b"GET / HTTP/1.1\nHost: a\n\n\ncontent-length: 1\n"
        ]));
        assert!(scan(&[
            b"\r\n\r\nPOST / HTTP/1.1\r\ncontent-length: 1\r\n\r\n"
        ]));
    }

    #[test]
    fn any_split_gives_the_same_answer() {
        let heads: [(&[u8], bool); 5] = [
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nbody",
                true,
            ),
            (
                b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nContent-Type: x\r\n\r\n",
                false,
            ),
            (b"\r\nPOST / HTTP/1.1\ncontent-length:1\n\n", true),
            (b"content-length: 1\r\nHost: a\r\n\r\n", false),
            (
                b"GET / HTTP/1.1\r\nX: y\r\n\r\ncontent-length: 1\r\n",
                false,
            ),
        ];
        for (head, want) in heads {
            assert_eq!(scan(&[head]), want, "{}", String::from_utf8_lossy(head));
            for a in 0..head.len() {
                for b in a..head.len() {
                    let got = scan(&[&head[..a], &head[a..b], &head[b..]]);
                    assert_eq!(
                        got,
                        want,
                        "split {a}/{b} of {}",
                        String::from_utf8_lossy(head)
                    );
                }
            }
        }
    }
}
