//! IMAP framing for the fault proxy: lines and literals, in either direction.
//!
//! IMAP is line-based except for literals (RFC 3501 §4.3, RFC 9051 §4.3): a line ending in
//! `{n}` (synchronizing), `{n+}` (non-synchronizing, RFC 7888) or `~{n}` (literal8,
//! RFC 3516) is followed by exactly `n` bytes that are not lines, then the rest of the same
//! command or response continues. [`Framer`] cuts a byte stream into [`Piece`]s so the proxy
//! only ever looks at (and rewrites) whole lines and streams literal bytes as they come,
//! without holding a whole message. Parsing here does no I/O.

/// A literal announced at the end of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Literal {
    /// Its length in bytes.
    pub(crate) len: u64,
    /// `{n}`: the client waits for a `+` continuation before sending the bytes.
    pub(crate) sync: bool,
}

/// The literal announced at the end of `line` (which ends with LF or CRLF), if any.
pub(crate) fn literal_marker(line: &[u8]) -> Option<Literal> {
    let body = strip_eol(line);
    let body = body.strip_suffix(b"}")?;
    let open = body.iter().rposition(|&b| b == b'{')?;
    let inside = &body[open + 1..];
    let (digits, sync) = match inside.strip_suffix(b"+") {
        Some(digits) => (digits, false),
        None => (inside, true),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let len = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(Literal { len, sync })
}

/// `line` without its final LF or CRLF.
pub(crate) fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// One cut of the stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// A line segment up to and including its LF (it may end in a literal marker).
    Line(Vec<u8>),
    /// Bytes of the literal being read.
    Data(Vec<u8>),
}

/// The longest line segment the proxy holds before giving up on the connection; Dovecot's
/// lines (a SEARCH of every UID included) stay far below it.
pub(crate) const MAX_LINE: usize = 16 * 1024 * 1024;

/// A line grew past [`MAX_LINE`] without an LF.
#[derive(Debug, thiserror::Error)]
#[error("failed to frame the stream: a line is longer than {MAX_LINE} bytes")]
pub(crate) struct LineTooLong;

/// Cuts bytes pushed in into lines and literal data.
#[derive(Debug, Default)]
pub(crate) struct Framer {
    buf: Vec<u8>,
    /// Bytes before this offset are consumed.
    start: usize,
    /// Bytes from `start` up to here hold no LF (so the search resumes there).
    scanned: usize,
    /// Literal bytes still to come.
    literal_left: u64,
    /// While set, nothing is cut (a client waiting for `+` before its literal).
    held: bool,
}

impl Framer {
    /// Appends bytes read from the socket.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next piece, if a whole one is buffered; literal data comes in chunks of at most
    /// `data_limit` bytes (so a fault can act at an exact offset).
    pub(crate) fn next(&mut self, data_limit: u64) -> Result<Option<Piece>, LineTooLong> {
        if self.held {
            return Ok(None);
        }
        let available = self.buf.len() - self.start;
        if self.literal_left > 0 {
            let take = self.literal_left.min(data_limit);
            let take = usize::try_from(take).unwrap_or(usize::MAX).min(available);
            if take == 0 {
                return Ok(None);
            }
            let data = self.buf[self.start..self.start + take].to_vec();
            self.start += take;
            self.scanned = self.scanned.max(self.start);
            self.literal_left -= take as u64;
            return Ok(Some(Piece::Data(data)));
        }
        let from = self.scanned.max(self.start);
        match self.buf[from..].iter().position(|&b| b == b'\n') {
            Some(at) => {
                let end = from + at + 1;
                let line = self.buf[self.start..end].to_vec();
                self.start = end;
                self.scanned = end;
                Ok(Some(Piece::Line(line)))
            }
            None => {
                self.scanned = self.buf.len();
                if available > MAX_LINE {
                    Err(LineTooLong)
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// The next `len` bytes are literal data.
    pub(crate) fn begin_literal(&mut self, len: u64) {
        self.literal_left = len;
    }

    /// Literal bytes still expected.
    #[cfg(test)]
    pub(crate) fn literal_left(&self) -> u64 {
        self.literal_left
    }

    /// Stops or resumes cutting.
    pub(crate) fn hold(&mut self, held: bool) {
        self.held = held;
    }

    /// Forgets everything buffered (the stream is no longer read).
    pub(crate) fn clear(&mut self) {
        *self = Framer::default();
    }
}

/// A client command's first line: tag, command name and the rest.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CommandLine<'a> {
    pub(crate) tag: &'a str,
    /// Upper case; `UID FETCH` style for UID commands.
    pub(crate) name: String,
    /// What follows the name (without the line end), e.g. the SASL initial response.
    pub(crate) args: &'a [u8],
}

/// Splits a command line into tag, name and arguments; `None` for an empty line or one
/// without a name.
pub(crate) fn parse_command(line: &[u8]) -> Option<CommandLine<'_>> {
    let text = strip_eol(line);
    let (tag, rest) = split_word(text);
    let (name, mut args) = split_word(rest);
    if tag.is_empty() || name.is_empty() {
        return None;
    }
    let tag = std::str::from_utf8(tag).ok()?;
    let mut name = String::from_utf8_lossy(name).to_ascii_uppercase();
    if name == "UID" {
        let (sub, sub_args) = split_word(args);
        if !sub.is_empty() {
            name.push(' ');
            name.push_str(&String::from_utf8_lossy(sub).to_ascii_uppercase());
            args = sub_args;
        }
    }
    Some(CommandLine { tag, name, args })
}

/// The first space-separated word and what follows the space.
fn split_word(text: &[u8]) -> (&[u8], &[u8]) {
    match text.iter().position(|&b| b == b' ') {
        Some(at) => (&text[..at], &text[at + 1..]),
        None => (text, &[]),
    }
}

/// How a server response begins.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ResponseStart<'a> {
    /// `+ text`: a continuation request; the text (possibly empty).
    Continuation(&'a [u8]),
    /// `* …`: untagged; what follows `* `.
    Untagged(&'a [u8]),
    /// `<tag> <status> …`.
    Tagged {
        tag: &'a str,
        /// `OK`, `NO` or `BAD` (upper case), or whatever word came.
        status: String,
    },
}

/// Classifies the first line segment of a server response.
pub(crate) fn classify_response(line: &[u8]) -> ResponseStart<'_> {
    let text = strip_eol(line);
    if let Some(rest) = text.strip_prefix(b"+") {
        return ResponseStart::Continuation(rest.strip_prefix(b" ").unwrap_or(rest));
    }
    if let Some(rest) = text.strip_prefix(b"* ") {
        return ResponseStart::Untagged(rest);
    }
    let (tag, rest) = split_word(text);
    let (status, _) = split_word(rest);
    ResponseStart::Tagged {
        tag: std::str::from_utf8(tag).unwrap_or(""),
        status: String::from_utf8_lossy(status).to_ascii_uppercase(),
    }
}

/// The first argument of a command (`LOGIN`'s user name): an atom, a quoted string, or,
/// when the arguments start with a literal marker, `literal` (the literal's bytes).
pub(crate) fn first_argument(args: &[u8], literal: Option<&[u8]>) -> Option<String> {
    let args = strip_eol(args);
    if let Some(quoted) = args.strip_prefix(b"\"") {
        let mut out = Vec::new();
        let mut escaped = false;
        for &b in quoted {
            match (escaped, b) {
                (false, b'\\') => escaped = true,
                (false, b'"') => return String::from_utf8(out).ok(),
                _ => {
                    out.push(b);
                    escaped = false;
                }
            }
        }
        return None;
    }
    if args.starts_with(b"{") || args.starts_with(b"~{") {
        return literal.and_then(|bytes| String::from_utf8(bytes.to_vec()).ok());
    }
    let (atom, _) = split_word(args);
    (!atom.is_empty())
        .then(|| String::from_utf8(atom.to_vec()).ok())
        .flatten()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn literal_markers() {
        let cases: &[(&[u8], Option<Literal>)] = &[
            (
                b"* 1 FETCH (BODY[] {123}\r\n",
                Some(Literal {
                    len: 123,
                    sync: true,
                }),
            ),
            (
                b"a APPEND INBOX {5+}\r\n",
                Some(Literal {
                    len: 5,
                    sync: false,
                }),
            ),
            (
                b"* 1 FETCH (BINARY[] ~{7}\r\n",
                Some(Literal { len: 7, sync: true }),
            ),
            (
                b"a APPEND INBOX ~{7+}\n",
                Some(Literal {
                    len: 7,
                    sync: false,
                }),
            ),
            (
                b"* 1 FETCH (BODY[] {0}\r\n",
                Some(Literal { len: 0, sync: true }),
            ),
            (b"a LOGIN {}\r\n", None),
            (b"a LOGIN {x}\r\n", None),
            (b"a LOGIN {+}\r\n", None),
            (b"* OK done\r\n", None),
            (b"* OK {12} \r\n", None),
            (b"a LOGIN {99999999999999999999}\r\n", None),
        ];
        for (line, expected) in cases {
            assert_eq!(
                literal_marker(line),
                *expected,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn frames_lines_and_literals_across_chunks() {
        let mut framer = Framer::default();
        framer.push(b"* 1 FETCH (BODY[] {1");
        assert_eq!(framer.next(u64::MAX).unwrap(), None);
        framer.push(b"0}\r\na1 OK\r\n");
        let Some(Piece::Line(line)) = framer.next(u64::MAX).unwrap() else {
            panic!("expected a line");
        };
        assert_eq!(line, b"* 1 FETCH (BODY[] {10}\r\n");
        framer.begin_literal(literal_marker(&line).unwrap().len);
        // The literal's bytes are data even though they look like a line.
        assert_eq!(framer.next(4).unwrap(), Some(Piece::Data(b"a1 O".to_vec())));
        assert_eq!(
            framer.next(u64::MAX).unwrap(),
            Some(Piece::Data(b"K\r\n".to_vec()))
        );
        assert_eq!(framer.literal_left(), 3);
        assert_eq!(framer.next(u64::MAX).unwrap(), None);
        framer.push(b"xyz)\r\n");
        assert_eq!(
            framer.next(u64::MAX).unwrap(),
            Some(Piece::Data(b"xyz".to_vec()))
        );
        assert_eq!(
            framer.next(u64::MAX).unwrap(),
            Some(Piece::Line(b")\r\n".to_vec()))
        );
        framer.hold(true);
        framer.push(b"b NOOP\r\n");
        assert_eq!(framer.next(u64::MAX).unwrap(), None);
        framer.hold(false);
        assert_eq!(
            framer.next(u64::MAX).unwrap(),
            Some(Piece::Line(b"b NOOP\r\n".to_vec()))
        );
    }

    #[test]
    fn commands() {
        let c = parse_command(b"A0001 AUTHENTICATE XOAUTH2 dXNlcj0=\r\n").unwrap();
        assert_eq!((c.tag, c.name.as_str()), ("A0001", "AUTHENTICATE"));
        assert_eq!(c.args, b"XOAUTH2 dXNlcj0=");
        let c = parse_command(b"7 uid fetch 1:* (BODY.PEEK[])\r\n").unwrap();
        assert_eq!((c.tag, c.name.as_str()), ("7", "UID FETCH"));
        assert_eq!(c.args, b"1:* (BODY.PEEK[])");
        let c = parse_command(b"a noop\n").unwrap();
        assert_eq!(c.name, "NOOP");
        assert!(c.args.is_empty());
        assert_eq!(parse_command(b"\r\n"), None);
        assert_eq!(parse_command(b"DONE\r\n"), None);
    }

    #[test]
    fn responses() {
        assert_eq!(
            classify_response(b"+ \r\n"),
            ResponseStart::Continuation(b"")
        );
        assert_eq!(
            classify_response(b"+\r\n"),
            ResponseStart::Continuation(b"")
        );
        assert_eq!(
            classify_response(b"+ eyJ9\r\n"),
            ResponseStart::Continuation(b"eyJ9")
        );
        assert_eq!(
            classify_response(b"* CAPABILITY IMAP4rev1\r\n"),
            ResponseStart::Untagged(b"CAPABILITY IMAP4rev1")
        );
        assert_eq!(
            classify_response(b"a1 ok [READ-ONLY] done\r\n"),
            ResponseStart::Tagged {
                tag: "a1",
                status: "OK".to_owned()
            }
        );
    }

    #[test]
    fn login_user_names() {
        assert_eq!(
            first_argument(b"bob@corp.test secret\r\n", None).as_deref(),
            Some("bob@corp.test")
        );
        assert_eq!(
            first_argument(br#""b\"o b" "pw""#, None).as_deref(),
            Some("b\"o b")
        );
        assert_eq!(
            first_argument(b"{13}", Some(b"bob@corp.test")).as_deref(),
            Some("bob@corp.test")
        );
        assert_eq!(first_argument(b"{13}", None), None);
        assert_eq!(first_argument(b"\"open", None), None);
        assert_eq!(first_argument(b"", None), None);
    }
}
