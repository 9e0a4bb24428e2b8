//! A reader between the connection and async-imap that mends capability lists with extra
//! spaces (case BR-01) before the parser sees them.
//!
//! Some servers put two spaces between capability atoms (`* CAPABILITY IMAP4rev1  SASL-IR`)
//! or one before the end. RFC 3501's grammar allows exactly one, imap-proto follows it, and
//! async-imap keeps the bytes it failed to parse at the head of its buffer, so one such
//! line makes the whole connection unusable. The reader rewrites only capability lists —
//! a `* CAPABILITY` response and a `[CAPABILITY …]` response code at the start of a status
//! response — to single spaces; every other byte passes unchanged.
//!
//! It follows the response grammar just far enough to know where a response begins: a
//! line ending in a literal's length (`{N}`, `{N+}`, `~{N}`) is followed by exactly N bytes
//! of the literal (a message body, which may hold any text) and then by the rest of the same
//! response, so neither is ever taken for the start of a response.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Response lines longer than this are passed on as they come (a capability list is far
/// shorter); only their end is kept back, to see whether a literal follows.
const MAX_LINE: usize = 64 * 1024;

/// The longest literal length marker at a line's end: `~{4294967295+}\r\n`.
const MARKER: usize = 16;

/// A stream whose responses reach the reader with their capability lists mended.
#[derive(Debug)]
pub struct Tolerant<S> {
    inner: S,
    /// Read from `inner`, not processed yet.
    pending: Vec<u8>,
    /// Processed, not handed out yet (from `ready_at`).
    ready: Vec<u8>,
    ready_at: usize,
    /// Bytes of a literal still to pass through unchanged.
    literal: u64,
    /// Whether the next line starts a response (and not the rest of one after a literal).
    at_response: bool,
    /// Whether the line being read is too long to mend and is being passed on.
    passing: bool,
    /// The inner stream ended.
    eof: bool,
}

impl<S> Tolerant<S> {
    /// Reads through `inner`.
    pub fn new(inner: S) -> Self {
        Tolerant {
            inner,
            pending: Vec::new(),
            ready: Vec::new(),
            ready_at: 0,
            literal: 0,
            at_response: true,
            passing: false,
            eof: false,
        }
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Moves what `pending` holds, as far as it can be processed, into `ready`.
    fn process(&mut self) {
        loop {
            if self.literal > 0 {
                let take = usize::try_from(self.literal)
                    .unwrap_or(usize::MAX)
                    .min(self.pending.len());
                if take == 0 {
                    return;
                }
                self.ready.extend_from_slice(&self.pending[..take]);
                self.pending.drain(..take);
                self.literal -= take as u64;
                continue;
            }
            match self.pending.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    let line: Vec<u8> = self.pending.drain(..=end).collect();
                    self.line(&line);
                }
                None if self.pending.len() > MAX_LINE || (self.eof && !self.pending.is_empty()) => {
                    // Pass the line on unmended, keeping back what may be a literal marker.
                    let keep = if self.eof { 0 } else { MARKER };
                    let pass = self.pending.len() - keep;
                    self.ready.extend_from_slice(&self.pending[..pass]);
                    self.pending.drain(..pass);
                    self.passing = true;
                    return;
                }
                None => return,
            }
        }
    }

    /// One line (through its `\n`): mended if it is a capability list, then handed on; what
    /// follows it depends on whether it ends in a literal's length.
    fn line(&mut self, line: &[u8]) {
        let mended = if self.at_response && !self.passing {
            mend(line)
        } else {
            None
        };
        self.ready
            .extend_from_slice(mended.as_deref().unwrap_or(line));
        self.passing = false;
        match literal_length(line) {
            Some(length) => {
                self.literal = length;
                self.at_response = false;
            }
            None => self.at_response = true,
        }
    }
}

/// A capability line with its spaces mended, or `None` if `line` is not one (or needs
/// nothing).
fn mend(line: &[u8]) -> Option<Vec<u8>> {
    let (body, ending) = split_ending(line);
    let upper = |b: &[u8]| b.to_ascii_uppercase();
    if upper(body.get(..13)?).starts_with(b"* CAPABILITY ") {
        let mut out = collapse(body);
        while out.last() == Some(&b' ') {
            out.pop();
        }
        return changed(line, out, ending);
    }
    // `<tag or *> <OK|NO|BAD|PREAUTH|BYE> [CAPABILITY …] text`
    let mut words = body.splitn(3, |b| *b == b' ');
    let (_tag, status, rest) = (words.next()?, words.next()?, words.next()?);
    if !matches!(
        upper(status).as_slice(),
        b"OK" | b"NO" | b"BAD" | b"PREAUTH" | b"BYE"
    ) || !upper(rest.get(..12)?).starts_with(b"[CAPABILITY ")
    {
        return None;
    }
    let close = rest.iter().position(|b| *b == b']')?;
    let mut code = collapse(&rest[..close]);
    while code.last() == Some(&b' ') {
        code.pop();
    }
    let prefix = body.len() - rest.len();
    let mut out = body[..prefix].to_vec();
    out.extend_from_slice(&code);
    out.extend_from_slice(&rest[close..]);
    changed(line, out, ending)
}

fn changed(line: &[u8], mut body: Vec<u8>, ending: &[u8]) -> Option<Vec<u8>> {
    body.extend_from_slice(ending);
    (body != line).then_some(body)
}

/// `line` without its `\r\n` (or `\n`), and that ending.
fn split_ending(line: &[u8]) -> (&[u8], &[u8]) {
    let cut = if line.ends_with(b"\r\n") {
        2
    } else {
        usize::from(line.ends_with(b"\n"))
    };
    line.split_at(line.len() - cut)
}

/// `text` with every run of spaces made one space.
fn collapse(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for &byte in text {
        if !(byte == b' ' && out.last() == Some(&b' ')) {
            out.push(byte);
        }
    }
    out
}

/// The length N of the literal announced at the end of `line` (`{N}`, `{N+}`, `~{N}`).
fn literal_length(line: &[u8]) -> Option<u64> {
    let (body, _) = split_ending(line);
    let inner = body.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|b| *b == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl<S: AsyncRead + Unpin> AsyncRead for Tolerant<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_at < this.ready.len() {
                let n = (this.ready.len() - this.ready_at).min(buf.remaining());
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + n]);
                this.ready_at += n;
                if this.ready_at == this.ready.len() {
                    this.ready.clear();
                    this.ready_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Inside a literal with nothing held back: read straight into the caller's buffer
            // (message bodies are most of what a sync reads), and keep back whatever came
            // after the literal's end.
            if this.literal > 0 && this.pending.is_empty() {
                let before = buf.filled().len();
                std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let n = buf.filled().len() - before;
                if n == 0 {
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
                let in_literal = usize::try_from(this.literal).unwrap_or(usize::MAX).min(n);
                this.literal -= in_literal as u64;
                if in_literal < n {
                    this.pending
                        .extend_from_slice(&buf.filled()[before + in_literal..]);
                    buf.set_filled(before + in_literal);
                    this.process();
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
            } else {
                this.pending.extend_from_slice(read.filled());
            }
            this.process();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tolerant<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// What a reader gets through [`Tolerant`] when the server's bytes arrive in pieces of
    /// `piece` bytes.
    async fn through(server: &[u8], piece: usize) -> Vec<u8> {
        let mut builder = tokio_test_reader(server, piece);
        let mut out = Vec::new();
        Tolerant::new(&mut builder)
            .read_to_end(&mut out)
            .await
            .expect("read");
        out
    }

    /// A reader handing out `bytes` at most `piece` at a time.
    fn tokio_test_reader(bytes: &[u8], piece: usize) -> Pieces {
        Pieces {
            bytes: bytes.to_vec(),
            at: 0,
            piece,
        }
    }

    struct Pieces {
        bytes: Vec<u8>,
        at: usize,
        piece: usize,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self
                .piece
                .min(buf.remaining())
                .min(self.bytes.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.bytes[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    const BR01: &[u8] = b"* OK [CAPABILITY IMAP4rev1  SASL-IR AUTH=PLAIN AUTH=XOAUTH2 ] mail.example.net  ready.\r\n\
a1 OK done\r\n\
* CAPABILITY IMAP4rev1  SASL-IR AUTH=XOAUTH2 ID ENABLE IDLE UIDPLUS LITERAL+ SPECIAL-USE \r\n\
a2 OK [CAPABILITY IMAP4rev1   MOVE] Logged in\r\n";

    const MENDED: &[u8] =
        b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=XOAUTH2] mail.example.net  ready.\r\n\
a1 OK done\r\n\
* CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 ID ENABLE IDLE UIDPLUS LITERAL+ SPECIAL-USE\r\n\
a2 OK [CAPABILITY IMAP4rev1 MOVE] Logged in\r\n";

    #[tokio::test]
    async fn capability_lists_get_single_spaces_however_the_bytes_arrive() {
        for piece in [1, 2, 3, 7, 64, 1 << 20] {
            assert_eq!(
                String::from_utf8_lossy(&through(BR01, piece).await),
                String::from_utf8_lossy(MENDED),
                "pieces of {piece}"
            );
        }
        // And imap-proto parses every mended line.
        let mut rest = MENDED;
        while !rest.is_empty() {
            let (after, _) = imap_proto::Response::parse(rest).expect("parses");
            rest = after;
        }
        // Which the lines as sent are not (what makes BR-01 fatal without the mending).
        assert!(
            imap_proto::Response::parse(b"* CAPABILITY IMAP4rev1  SASL-IR AUTH=XOAUTH2\r\n")
                .is_err()
        );
    }

    /// A message body that holds capability-like lines, announced as a literal, passes
    /// byte for byte, and so does the rest of its response; the next response is mended.
    #[tokio::test]
    async fn literals_pass_unchanged_whatever_they_hold() {
        let body = b"* CAPABILITY A  B\r\nx OK [CAPABILITY A  B] text\r\n{5}\r\n";
        let mut server = format!("* 1 FETCH (UID 7 BODY[] {{{}}}\r\n", body.len()).into_bytes();
        server.extend_from_slice(body);
        server.extend_from_slice(b" FLAGS (\\Seen))\r\n* CAPABILITY A  B\r\na1 OK  done\r\n");
        let mut expected = server.clone();
        let tail = b"* CAPABILITY A  B\r\na1 OK  done\r\n";
        expected.truncate(expected.len() - tail.len());
        expected.extend_from_slice(b"* CAPABILITY A B\r\na1 OK  done\r\n");
        for piece in [1, 5, 13, 4096] {
            assert_eq!(
                String::from_utf8_lossy(&through(&server, piece).await),
                String::from_utf8_lossy(&expected),
                "pieces of {piece}"
            );
        }
    }

    #[tokio::test]
    async fn other_lines_and_a_cut_off_stream_pass_as_they_are() {
        let server: &[u8] =
            b"* LIST (\\HasNoChildren) \"/\" \"[CAPABILITY  x]\"\r\n* 3 EXISTS\r\nno line end";
        assert_eq!(through(server, 3).await, server);
        let long = [
            vec![b'a'; MAX_LINE * 2],
            b"\r\n* CAPABILITY A  B\r\n".to_vec(),
        ]
        .concat();
        let mut expected = long.clone();
        expected.truncate(MAX_LINE * 2 + 2);
        expected.extend_from_slice(b"* CAPABILITY A B\r\n");
        assert_eq!(through(&long, 1000).await, expected);
    }

    #[test]
    fn literal_lengths_are_read_from_line_ends() {
        assert_eq!(literal_length(b"* 1 FETCH (BODY[] {1234}\r\n"), Some(1234));
        assert_eq!(literal_length(b"a APPEND x {12+}\r\n"), Some(12));
        assert_eq!(literal_length(b"* 1 FETCH (BINARY[] ~{9}\r\n"), Some(9));
        assert_eq!(literal_length(b"* OK {not}\r\n"), None);
        assert_eq!(literal_length(b"* OK {}\r\n"), None);
        assert_eq!(literal_length(b"* OK {99999999999}\r\n"), None);
        assert_eq!(literal_length(b"* OK done\r\n"), None);
    }
}
