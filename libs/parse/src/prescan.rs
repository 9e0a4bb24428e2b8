//! A cheap pass over raw bytes before they reach mail-parser, to keep hostile nesting from
//! costing unbounded stack or memory.
//!
//! mail-parser walks multiparts and 7bit attached messages with an explicit stack, so deep
//! nesting of those is safe (the walker in `mime` stops at its own depth limit and tears the
//! tree down iteratively). But an attached message in base64 or quoted-printable is parsed by a
//! recursive call, and its result is converted with `into_owned`, which recurses once per
//! message nested inside it and copies the whole decoded buffer for each of them: a small
//! base64 attachment holding a chain of a few thousand 7bit messages overflows the stack, and
//! a long one costs (messages × size) bytes. This pass finds encoded attached messages (up to
//! mail-parser's three encoded levels), decodes them, and counts the messages inside; past
//! the limits the caller does not hand the message to mail-parser at all. It also tracks the
//! depth of 7bit chains (with the multipart boundaries that close them), since mail-parser
//! builds a full `Message` per level: past [`MAX_CHAIN`] levels only the bytes before are
//! parsed and the rest is scanned as raw text.
//!
//! Linear: one forward walk over the lines of each buffer; decoded buffers are each smaller
//! than the text they came from, and at most three levels are decoded.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;

use mail_parser::parsers::MessageStream;
use regex::bytes::Regex;

/// How many levels of encoded attached messages mail-parser parses (its `MAX_NESTED_ENCODED`).
const ENCODED_LEVELS: usize = 3;
/// Most messages allowed inside encoded attached messages (bounds mail-parser's recursion).
const MAX_ENCODED_NESTED: usize = 256;
/// Most bytes mail-parser may copy converting encoded attached messages, beyond 8× the input.
const MAX_COPY_SLACK: usize = 64 << 20;

/// Deepest chain of 7bit attached messages handed to mail-parser; the rest of the input is
/// scanned as raw text. (mail-parser builds one `Message` per level, about 3 KB each, however
/// small the level is in bytes.)
const MAX_CHAIN: usize = 64;

/// What the pass concluded.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Safe to parse with mail-parser; when `cut` is set, only the bytes before it (the chain
    /// of attached messages is deeper than [`MAX_CHAIN`] there).
    Safe { cut: Option<usize> },
    /// Not safe; `decoded` holds the decoded encoded messages, for a raw-text scan.
    Hostile {
        detail: String,
        decoded: Vec<Vec<u8>>,
    },
}

/// Checks `raw` (a whole message).
pub(crate) fn check(raw: &[u8]) -> Verdict {
    let mut nested_total = 0usize;
    let mut copy_cost = 0usize;
    let budget = raw.len().saturating_mul(8).saturating_add(MAX_COPY_SLACK);
    let top = scan(raw);
    // Work list of decoded buffers to scan, with their encoded level (`raw` is level 0).
    let mut pending: Vec<(Vec<u8>, usize)> =
        top.encoded.into_iter().map(|body| (body, 1)).collect();
    while let Some((decoded, level)) = pending.pop() {
        let inner = scan(&decoded);
        // mail-parser copies this decoded buffer once per message nested in it.
        nested_total = nested_total.saturating_add(inner.messages);
        copy_cost = copy_cost.saturating_add(inner.messages.saturating_mul(decoded.len()));
        if nested_total > MAX_ENCODED_NESTED || copy_cost > budget {
            let mut decoded_all = vec![decoded];
            decoded_all.extend(pending.into_iter().map(|(d, _)| d));
            return Verdict::Hostile {
                detail: format!(
                    "{nested_total} messages nested in encoded attached messages, \
                     {copy_cost} bytes to copy"
                ),
                decoded: decoded_all,
            };
        }
        if level < ENCODED_LEVELS {
            pending.extend(inner.encoded.into_iter().map(|body| (body, level + 1)));
        }
    }
    Verdict::Safe { cut: top.cut }
}

/// What one buffer holds.
struct Scan {
    /// Header blocks that declare an attached message (or a digest entry).
    messages: usize,
    /// Decoded bodies of attached messages in base64 or quoted-printable.
    encoded: Vec<Vec<u8>>,
    /// Where the chain of 7bit attached messages gets deeper than [`MAX_CHAIN`].
    cut: Option<usize>,
}

#[derive(Clone, Copy, PartialEq)]
enum Cte {
    Identity,
    Base64,
    QuotedPrintable,
}

/// The open multiparts, innermost last, with an index by boundary so a boundary line is
/// matched in constant time however deep the stack.
#[derive(Default)]
struct Multiparts {
    /// (boundary, message depth of the message the multipart belongs to)
    frames: Vec<(Vec<u8>, usize)>,
    by_boundary: HashMap<Vec<u8>, Vec<usize>>,
}

impl Multiparts {
    fn push(&mut self, boundary: Vec<u8>, depth: usize) {
        self.by_boundary
            .entry(boundary.clone())
            .or_default()
            .push(self.frames.len());
        self.frames.push((boundary, depth));
    }

    fn find(&self, boundary: &[u8]) -> Option<usize> {
        match self.frames.last() {
            Some((top, _)) if top == boundary => Some(self.frames.len() - 1),
            _ => self
                .by_boundary
                .get(boundary)
                .and_then(|v| v.last().copied()),
        }
    }

    /// Pops frames until `len` remain.
    fn truncate(&mut self, len: usize) {
        while self.frames.len() > len {
            if let Some((boundary, _)) = self.frames.pop()
                && let Some(indices) = self.by_boundary.get_mut(&boundary)
            {
                indices.pop();
                if indices.is_empty() {
                    self.by_boundary.remove(&boundary);
                }
            }
        }
    }
}

/// A line starting with `--` (a literal search, so bodies are skipped at memory speed).
static LINE_DASHES: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // a constant pattern, checked by every test
    Regex::new(r"(?m)^--").unwrap()
});

/// Most bytes of a `Content-Type` value kept (boundaries of 28 KB occur in real mail).
const MAX_CONTENT_TYPE: usize = 64 << 10;

fn scan(data: &[u8]) -> Scan {
    let mut out = Scan {
        messages: 0,
        encoded: Vec::new(),
        cut: None,
    };
    let mut in_header = true;
    let mut block_is_message = false;
    let mut block_has_type = false;
    let mut block_cte = Cte::Identity;
    let mut content_type: Vec<u8> = Vec::new();
    let mut seen_digest = false;
    let mut multiparts = Multiparts::default();
    // Depth of the message whose header block or body is being read.
    let mut depth = 0usize;
    // Which header the current (possibly folded) line belongs to.
    let mut current = Field::Other;
    let mut pos = 0;
    // Start of an encoded body being skipped, if any.
    let mut encoded_start: Option<(usize, Cte)> = None;
    while pos < data.len() {
        if !in_header {
            // In a body only lines starting with `--` matter: jump to the next one.
            match LINE_DASHES.find_at(data, pos) {
                Some(m) => pos = m.start(),
                None => break,
            }
        }
        let end = data[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(data.len(), |i| pos + i + 1);
        let line = trim_eol(&data[pos..end]);
        if in_header {
            if line.is_empty() {
                // End of a header block.
                let digest_entry = !block_has_type && seen_digest;
                if block_is_message || digest_entry {
                    out.messages += 1;
                }
                let boundary = multipart_boundary(&content_type);
                if let Some(boundary) = boundary {
                    multiparts.push(boundary, depth);
                    in_header = false;
                } else if block_is_message && block_cte != Cte::Identity {
                    encoded_start = Some((end, block_cte));
                    in_header = false;
                } else if block_is_message {
                    // A 7bit attached message: its own header block follows at once.
                    depth += 1;
                    if depth > MAX_CHAIN && out.cut.is_none() {
                        out.cut = Some(end);
                    }
                } else {
                    in_header = false;
                }
                block_is_message = false;
                block_has_type = false;
                block_cte = Cte::Identity;
                content_type.clear();
                current = Field::Other;
            } else if line[0] == b' ' || line[0] == b'\t' {
                inspect(
                    current,
                    line,
                    &mut block_is_message,
                    &mut block_cte,
                    &mut seen_digest,
                );
                if matches!(current, Field::ContentType) {
                    keep(&mut content_type, line);
                }
            } else {
                current = if starts_with_ignore_case(line, b"content-type:") {
                    block_has_type = true;
                    keep(&mut content_type, &line[b"content-type:".len()..]);
                    Field::ContentType
                } else if starts_with_ignore_case(line, b"content-transfer-encoding:") {
                    Field::Encoding
                } else {
                    Field::Other
                };
                inspect(
                    current,
                    line,
                    &mut block_is_message,
                    &mut block_cte,
                    &mut seen_digest,
                );
            }
        } else if let Some(rest) = line.strip_prefix(b"--") {
            let rest = trim_trailing_space(rest);
            let (name, closing) = match multiparts.find(rest) {
                Some(i) => (Some(i), false),
                None => match rest.strip_suffix(b"--") {
                    Some(name) => (multiparts.find(name), true),
                    None => (None, false),
                },
            };
            if let Some(i) = name {
                if let Some((start, cte)) = encoded_start.take() {
                    out.encoded.push(decode(&data[start..pos], cte));
                }
                depth = multiparts.frames[i].1;
                multiparts.truncate(if closing { i } else { i + 1 });
                in_header = !closing;
            }
        }
        pos = end;
    }
    if let Some((start, cte)) = encoded_start {
        out.encoded.push(decode(&data[start..], cte));
    }
    out
}

/// Appends a piece of a `Content-Type` value, up to [`MAX_CONTENT_TYPE`] bytes.
fn keep(value: &mut Vec<u8>, piece: &[u8]) {
    let room = MAX_CONTENT_TYPE.saturating_sub(value.len());
    value.extend_from_slice(&piece[..piece.len().min(room)]);
    value.push(b' ');
}

/// The `boundary` parameter of a `multipart/*` Content-Type value.
fn multipart_boundary(value: &[u8]) -> Option<Vec<u8>> {
    let value = trim_leading_space(value);
    if !starts_with_ignore_case(value, b"multipart/") {
        return None;
    }
    let at = find_ignore_case(value, b"boundary=")?;
    let rest = &value[at + b"boundary=".len()..];
    let boundary = match rest.first() {
        Some(b'"') => {
            let inner = &rest[1..];
            &inner[..inner.iter().position(|&b| b == b'"').unwrap_or(inner.len())]
        }
        _ => {
            let len = rest
                .iter()
                .position(|b| b.is_ascii_whitespace() || *b == b';')
                .unwrap_or(rest.len());
            &rest[..len]
        }
    };
    (!boundary.is_empty()).then(|| boundary.to_vec())
}

#[derive(Clone, Copy)]
enum Field {
    ContentType,
    Encoding,
    Other,
}

fn inspect(field: Field, line: &[u8], is_message: &mut bool, cte: &mut Cte, digest: &mut bool) {
    match field {
        Field::ContentType => {
            if contains_ignore_case(line, b"message/rfc822")
                || contains_ignore_case(line, b"message/global")
            {
                *is_message = true;
            }
            if contains_ignore_case(line, b"multipart/digest") {
                *digest = true;
            }
        }
        Field::Encoding => {
            if contains_ignore_case(line, b"base64") {
                *cte = Cte::Base64;
            } else if contains_ignore_case(line, b"quoted-printable") {
                *cte = Cte::QuotedPrintable;
            }
        }
        Field::Other => {}
    }
}

fn decode(body: &[u8], cte: Cte) -> Vec<u8> {
    let mut stream = MessageStream::new(body);
    let (end, bytes): (usize, Cow<'_, [u8]>) = match cte {
        Cte::Base64 => stream.decode_base64_mime(b""),
        Cte::QuotedPrintable => stream.decode_quoted_printable_mime(b""),
        Cte::Identity => (0, Cow::Borrowed(body)),
    };
    if end == usize::MAX {
        Vec::new()
    } else {
        bytes.into_owned()
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_trailing_space(bytes: &[u8]) -> &[u8] {
    let len = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(0, |i| i + 1);
    &bytes[..len]
}

fn trim_leading_space(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

fn starts_with_ignore_case(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn find_ignore_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// Case-insensitive substring test on the first few KB of a header line, which keeps this
/// linear on hostile mail with huge header lines.
fn contains_ignore_case(line: &[u8], needle: &[u8]) -> bool {
    let line = &line[..line.len().min(4096)];
    line.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn chain(levels: usize) -> String {
        let mut s = String::new();
        for i in 0..levels {
            s += &format!(
                "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=\"m{i}\"\r\n\r\n--m{i}\r\nContent-Type: message/rfc822\r\n\r\n"
            );
        }
        s += "From: b@example.com\r\n\r\nhttps://deep.example.org/landing\r\n";
        for i in (0..levels).rev() {
            s += &format!("--m{i}--\r\n");
        }
        s
    }

    fn wrapped(inner: &str) -> Vec<u8> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(inner);
        let mut s = String::from(
            "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=\"top\"\r\n\r\n--top\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n",
        );
        for line in encoded.as_bytes().chunks(76) {
            s += std::str::from_utf8(line).unwrap_or_default();
            s += "\r\n";
        }
        s += "--top--\r\n";
        s.into_bytes()
    }

    #[test]
    fn ordinary_mail_is_safe() {
        assert!(matches!(
            check(chain(20).as_bytes()),
            Verdict::Safe { cut: None }
        ));
        assert!(matches!(
            check(&wrapped(&chain(3))),
            Verdict::Safe { cut: None }
        ));
        assert!(matches!(check(b""), Verdict::Safe { cut: None }));
    }

    #[test]
    fn deep_7bit_chain_is_cut() {
        let raw = chain(1000);
        let Verdict::Safe { cut: Some(cut) } = check(raw.as_bytes()) else {
            panic!("expected a cut");
        };
        assert!(cut < raw.len() / 10, "{cut}");
        // Siblings do not add up: 200 attached messages side by side are not a chain.
        let mut siblings = String::from(
            "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=\"s\"\r\n\r\n",
        );
        for _ in 0..200 {
            siblings +=
                "--s\r\nContent-Type: message/rfc822\r\n\r\nFrom: b@example.com\r\n\r\nhi\r\n";
        }
        siblings += "--s--\r\n";
        assert!(matches!(
            check(siblings.as_bytes()),
            Verdict::Safe { cut: None }
        ));
    }

    #[test]
    fn deep_chain_inside_base64_is_hostile() {
        match check(&wrapped(&chain(5000))) {
            Verdict::Hostile { decoded, .. } => assert_eq!(decoded.len(), 1),
            Verdict::Safe { .. } => panic!("expected hostile"),
        }
    }

    #[test]
    fn counts_nested_messages() {
        let s = scan(chain(7).as_bytes());
        assert_eq!(s.messages, 7);
        let w = scan(&wrapped("From: x@example.com\r\n\r\nhi\r\n"));
        assert_eq!(w.messages, 1);
        assert_eq!(w.encoded.len(), 1);
        assert!(w.encoded[0].starts_with(b"From: x@example.com"));
    }
}
