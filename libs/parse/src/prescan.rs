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
//! the limits the caller does not hand the message to mail-parser at all.
//!
//! Linear: one forward walk over the lines of each buffer; decoded buffers are each smaller
//! than the text they came from, and at most three levels are decoded.

use std::borrow::Cow;

use mail_parser::parsers::MessageStream;

/// How many levels of encoded attached messages mail-parser parses (its `MAX_NESTED_ENCODED`).
const ENCODED_LEVELS: usize = 3;
/// Most messages allowed inside encoded attached messages (bounds mail-parser's recursion).
const MAX_ENCODED_NESTED: usize = 256;
/// Most bytes mail-parser may copy converting encoded attached messages, beyond 8× the input.
const MAX_COPY_SLACK: usize = 64 << 20;

/// What the pass concluded.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Safe to parse with mail-parser.
    Safe,
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
    // Work list of decoded buffers to scan, with their encoded level (`raw` is level 0).
    let top = scan(raw);
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
    Verdict::Safe
}

/// What one buffer holds.
struct Scan {
    /// Header blocks that declare an attached message (or a digest entry).
    messages: usize,
    /// Decoded bodies of attached messages in base64 or quoted-printable.
    encoded: Vec<Vec<u8>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Cte {
    Identity,
    Base64,
    QuotedPrintable,
}

fn scan(data: &[u8]) -> Scan {
    let mut out = Scan {
        messages: 0,
        encoded: Vec::new(),
    };
    let mut in_header = true;
    let mut block_is_message = false;
    let mut block_has_type = false;
    let mut block_cte = Cte::Identity;
    let mut seen_digest = false;
    // Which header the current (possibly folded) line belongs to.
    let mut current = Field::Other;
    let mut pos = 0;
    // Start of an encoded body being skipped, if any.
    let mut encoded_start: Option<(usize, Cte)> = None;
    while pos < data.len() {
        let end = data[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(data.len(), |i| pos + i + 1);
        let line = trim_eol(&data[pos..end]);
        let is_boundary = line.starts_with(b"--");
        if in_header {
            if line.is_empty() {
                // End of a header block.
                let digest_entry = !block_has_type && seen_digest;
                if block_is_message || digest_entry {
                    out.messages += 1;
                }
                if block_is_message && block_cte != Cte::Identity {
                    encoded_start = Some((end, block_cte));
                    in_header = false;
                } else {
                    // A 7bit attached message: its own header block follows at once.
                    in_header = block_is_message;
                }
                block_is_message = false;
                block_has_type = false;
                block_cte = Cte::Identity;
                current = Field::Other;
            } else if line[0] == b' ' || line[0] == b'\t' {
                inspect(
                    current,
                    line,
                    &mut block_is_message,
                    &mut block_cte,
                    &mut seen_digest,
                );
            } else {
                current = if starts_with_ignore_case(line, b"content-type:") {
                    block_has_type = true;
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
        } else if is_boundary {
            if let Some((start, cte)) = encoded_start.take() {
                out.encoded.push(decode(&data[start..pos], cte));
            }
            in_header = true;
        }
        pos = end;
    }
    if let Some((start, cte)) = encoded_start {
        out.encoded.push(decode(&data[start..], cte));
    }
    out
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

fn starts_with_ignore_case(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Case-insensitive substring test.
fn contains_ignore_case(line: &[u8], needle: &[u8]) -> bool {
    // Header lines can be long in hostile mail: only the first few KB of a line are inspected,
    // which keeps this linear in the input.
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
        assert!(matches!(check(chain(20).as_bytes()), Verdict::Safe));
        assert!(matches!(check(&wrapped(&chain(3))), Verdict::Safe));
        assert!(matches!(check(b""), Verdict::Safe));
    }

    #[test]
    fn deep_chain_inside_base64_is_hostile() {
        match check(&wrapped(&chain(5000))) {
            Verdict::Hostile { decoded, .. } => assert_eq!(decoded.len(), 1),
            Verdict::Safe => panic!("expected hostile"),
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
