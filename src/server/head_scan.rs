//! Spots a `Content-Length` line in an HTTP/1 request head as its bytes are
//! read, so a request that also carries `Transfer-Encoding` can be answered
//! 400 as SPEC requires.
//!
//! hyper accepts such a request (Transfer-Encoding wins, Content-Length is
//! dropped from the header map, the connection is closed after the answer),
//! which is safe but leaves no trace for the handler to see. This scanner
//! runs in the connection's I/O wrapper over head bytes only: it stops at the
//! blank line that ends the head, is a few instructions per byte, carries its
//! state across reads and never allocates.

const PATTERN: &[u8] = b"\ncontent-length:";

#[derive(Default)]
pub(super) struct HeadScan {
    /// Bytes of `PATTERN` matched so far.
    matched: u8,
    /// 1 after a `\n`, 2 after `\n\r`: a following `\n` ends the head.
    blank: u8,
    /// A byte other than CR/LF was seen (blank lines before the request
    /// line don't end anything).
    started: bool,
    done: bool,
    found: bool,
}

impl HeadScan {
    /// Feeds head bytes; returns true once a Content-Length line was seen.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> bool {
        if self.done {
            return self.found;
        }
        for &b in bytes {
            self.blank = match (self.blank, b) {
                (1 | 2, b'\n') if self.started => {
                    self.done = true;
                    return self.found;
                }
                (1, b'\r') => 2,
                (_, b'\n') => 1,
                (_, b'\r') => 0,
                _ => {
                    self.started = true;
                    0
                }
            };
            if b.to_ascii_lowercase() == PATTERN[self.matched as usize] {
                self.matched += 1;
                if self.matched as usize == PATTERN.len() {
                    self.found = true;
                    self.matched = 0;
                }
            } else {
                self.matched = u8::from(b == b'\n');
            }
        }
        self.found
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
}
