//! From raw bytes to a [`ParsedMessage`]: mail-parser does the MIME parsing; this walk turns
//! its tree into records, decodes what mail-parser leaves undecoded (charset labels it does not
//! know), hashes attachments, recurses into attached messages (`message/rfc822` in any transfer
//! encoding, and `.eml` files of any declared type) up to a depth limit, and feeds every
//! in-scope text to the scanners.
//!
//! Hostile mail is bounded: [`prescan`](crate::prescan) keeps mail-parser away from encoded
//! nesting it would recurse on; the walk recurses at most `max_depth` levels and counts parts;
//! what lies past a limit is scanned as raw text (a parse error never means no indicators);
//! mail-parser's tree is torn down iteratively so even a 100 000-level chain of attached
//! messages does not overflow the stack when dropped.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::LazyLock;

use mail_parser::parsers::MessageStream;
use mail_parser::{
    Address as MpAddress, Encoding, HeaderName, HeaderValue, Message, MessageParser, MimeHeaders,
    PartType,
};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::ParseOptions;
use crate::charset::{self, Resolution};
use crate::prescan::{self, Verdict};
use crate::record::{
    Address, Attachment, BodyPart, MessageRecord, ParsedMessage, Source, Warning, WarningKind,
    is_originator_header,
};
use crate::scan::{self, Collector, Origin, ScannedText};

/// Headers whose values are signatures or opaque blobs, not text worth scanning.
const OPAQUE_HEADERS: &[&str] = &[
    "dkim-signature",
    "arc-seal",
    "arc-message-signature",
    "x-google-dkim-signature",
    "domainkey-signature",
    "x-microsoft-antispam-message-info",
    // The same encrypted blob as it was before the message was forwarded.
    "x-microsoft-antispam-message-info-original",
    "x-gm-message-state",
    "x-google-smtp-source",
    "x-incomingtopheadermarker",
    "x-ms-incomingtopheadermarker",
];

/// Headers whose values are message or part identifiers (RFC 5322 §3.6.4 msg-id, RFC 2045
/// Content-ID): `<local@host>` in form, but no mailbox anyone can write to, so scanning
/// them made "email" indicators of every Message-ID and reply chain.
const IDENTIFIER_HEADERS: &[&str] = &[
    "message-id",
    "in-reply-to",
    "references",
    "resent-message-id",
    "original-message-id",
    "content-id",
    "x-ms-exchange-crosstenant-network-message-id",
    "x-ms-exchange-organization-network-message-id",
];

/// Whether a header holds a signature, an opaque blob or an identifier (skipped by the
/// scanners).
fn is_opaque_header(name: &str) -> bool {
    OPAQUE_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
        || IDENTIFIER_HEADERS
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
        || {
            let prefix = "x-ms-exchange-antispam-messagedata";
            name.len() >= prefix.len()
                && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        }
}

/// mail-parser's default header parsers, except that headers the walk only scans as raw bytes
/// (`Received`, `List-*`, `References`, `Keywords`, ...) are kept raw instead of being parsed
/// into structures nobody reads: `Received` alone is several long fields per message. What
/// the record reads (originators, recipients, ids, date, subject, MIME headers) is parsed as
/// mail-parser's default does (`parsers/header.rs`, the match for an empty header map).
static PARSER: LazyLock<MessageParser> = LazyLock::new(|| {
    MessageParser::new()
        .header_text(HeaderName::Subject)
        .header_text(HeaderName::ContentDescription)
        .header_text(HeaderName::ContentLocation)
        .header_text(HeaderName::ContentTransferEncoding)
        .header_address(HeaderName::From)
        .header_address(HeaderName::To)
        .header_address(HeaderName::Cc)
        .header_address(HeaderName::Bcc)
        .header_address(HeaderName::ReplyTo)
        .header_address(HeaderName::Sender)
        .header_address(HeaderName::ResentTo)
        .header_address(HeaderName::ResentFrom)
        .header_address(HeaderName::ResentBcc)
        .header_address(HeaderName::ResentCc)
        .header_address(HeaderName::ResentSender)
        .header_date(HeaderName::Date)
        .header_date(HeaderName::ResentDate)
        .header_id(HeaderName::MessageId)
        .header_id(HeaderName::ReturnPath)
        .header_id(HeaderName::ContentId)
        .header_id(HeaderName::ResentMessageId)
        .header_content_type(HeaderName::ContentType)
        .header_content_type(HeaderName::ContentDisposition)
        .default_header_raw()
});

/// Parses a raw RFC 5322 message. Never panics; whatever goes wrong becomes a warning.
pub(crate) fn parse(raw: &[u8], options: &ParseOptions) -> ParsedMessage {
    parse_collecting(raw, options, false).0
}

/// Parses, and when `keep_texts` is set also returns every text the scanners read.
pub(crate) fn parse_collecting(
    raw: &[u8],
    options: &ParseOptions,
    keep_texts: bool,
) -> (ParsedMessage, Vec<ScannedText>) {
    contained(
        raw,
        || walked(raw, options, keep_texts),
        || raw_text_only(raw, options, keep_texts),
    )
}

/// The message parsed and walked.
fn walked(
    raw: &[u8],
    options: &ParseOptions,
    keep_texts: bool,
) -> (ParsedMessage, Vec<ScannedText>) {
    let mut walk = Walk::new(options, keep_texts);
    let mut structure = String::new();
    let message = walk.message_bytes(raw, 0, 0, "", &mut structure);
    let texts = walk.out.texts.take().unwrap_or_default();
    (walk.finish(raw.len(), message, structure), texts)
}

/// The message's bytes scanned as raw text, nothing parsed.
fn raw_text_only(
    raw: &[u8],
    options: &ParseOptions,
    keep_texts: bool,
) -> (ParsedMessage, Vec<ScannedText>) {
    let mut walk = Walk::new(options, keep_texts);
    walk.raw_fallback(raw, 0, "");
    let texts = walk.out.texts.take().unwrap_or_default();
    (
        walk.finish(raw.len(), MessageRecord::default(), "?".to_owned()),
        texts,
    )
}

/// The result of `parse`; should it panic (a bug in the parser, met by some hostile input),
/// the result of `fallback` (a raw-text scan) or, should that panic too, an empty record,
/// either with a [`WarningKind::ParserFailed`] warning. One message can then never stop a
/// sync: it is stored like any other, with its raw bytes and what the fallback found.
fn contained(
    raw: &[u8],
    parse: impl FnOnce() -> (ParsedMessage, Vec<ScannedText>),
    fallback: impl FnOnce() -> (ParsedMessage, Vec<ScannedText>),
) -> (ParsedMessage, Vec<ScannedText>) {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    // Nothing the closures borrow is used after a panic but `raw`, which they only read.
    let payload = match catch_unwind(AssertUnwindSafe(parse)) {
        Ok(parsed) => return parsed,
        Err(payload) => payload,
    };
    let reason = payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no reason given".to_owned());
    let (mut parsed, texts) = catch_unwind(AssertUnwindSafe(fallback)).unwrap_or_else(|_| {
        let options = ParseOptions::default();
        let walk = Walk::new(&options, false);
        (
            walk.finish(raw.len(), MessageRecord::default(), "?".to_owned()),
            Vec::new(),
        )
    });
    parsed.warnings.insert(
        0,
        Warning {
            kind: WarningKind::ParserFailed,
            part: None,
            // The reason may quote the message's bytes: escaped, and cut short.
            detail: format!(
                "the parser failed on this message (a bug; please report it): {:?}; its raw \
                 bytes are kept and were scanned as raw text",
                reason.chars().take(200).collect::<String>()
            ),
        },
    );
    (parsed, texts)
}

struct Walk<'o> {
    options: &'o ParseOptions,
    out: Collector,
    warnings: Vec<Warning>,
    parts: usize,
    part_limit_hit: bool,
}

impl<'o> Walk<'o> {
    fn new(options: &'o ParseOptions, keep_texts: bool) -> Self {
        let mut out = Collector::default();
        out.texts = keep_texts.then(Vec::new);
        out.max_indicators = options.max_indicators;
        Walk {
            options,
            out,
            warnings: Vec::new(),
            parts: 0,
            part_limit_hit: false,
        }
    }

    fn warn(&mut self, kind: WarningKind, part: &str, detail: impl Into<String>) {
        // A hostile message could make thousands of identical warnings: keep the first few.
        if self.warnings.len() >= 100 {
            return;
        }
        self.warnings.push(Warning {
            kind,
            part: (!part.is_empty()).then(|| part.to_string()),
            detail: detail.into(),
        });
    }

    /// Scans bytes that could not be parsed as raw text.
    fn raw_fallback(&mut self, bytes: &[u8], depth: u32, part: &str) {
        let text = String::from_utf8_lossy(bytes);
        let origin = Origin {
            depth,
            part: part.to_string(),
            source: Source::RawFallback,
        };
        scan::scan_text(&text, &origin, &mut self.out);
    }

    /// Parses `bytes` as a message at `depth` (held by a part at tree level `level`) and walks it.
    fn message_bytes(
        &mut self,
        bytes: &[u8],
        depth: u32,
        level: u32,
        path: &str,
        structure: &mut String,
    ) -> MessageRecord {
        let cut = match prescan::check(bytes) {
            Verdict::Safe { cut } => cut,
            Verdict::Hostile { detail, decoded } => {
                self.warn(WarningKind::HostileNesting, path, detail);
                let record = MessageParser::default()
                    .parse_headers(bytes)
                    .map(|m| headers_record(&m))
                    .unwrap_or_default();
                self.raw_fallback(bytes, depth, path);
                for inner in decoded {
                    self.raw_fallback(&inner, depth + 1, path);
                }
                structure.push('?');
                return record;
            }
        };
        let parse_len = match cut {
            Some(cut) => {
                self.warn(
                    WarningKind::NestingLimitExceeded,
                    path,
                    "MIME nesting limit exceeded (chain of attached messages); the rest scanned as raw text",
                );
                self.raw_fallback(&bytes[cut..], depth, path);
                cut
            }
            None => bytes.len(),
        };
        match PARSER.parse(&bytes[..parse_len]) {
            Some(message) => self.message(message, depth, level, path, structure),
            None => {
                let kind = if depth == 0 {
                    WarningKind::NoHeaders
                } else {
                    WarningKind::NestedMessageUnparsable
                };
                self.warn(kind, path, "no header block; scanned as raw text");
                self.raw_fallback(bytes, depth, path);
                structure.push('?');
                MessageRecord::default()
            }
        }
    }

    /// Walks a parsed message at `depth` whose parts are numbered under `path`; its root part is
    /// at tree level `level + 1`.
    fn message(
        &mut self,
        mut message: Message<'_>,
        depth: u32,
        level: u32,
        path: &str,
        structure: &mut String,
    ) -> MessageRecord {
        let mut record = headers_record(&message);
        self.scan_headers(&message, depth, path);
        if !message.parts.is_empty() {
            let root_path = match message.parts[0].body {
                PartType::Multipart(_) => path.to_string(),
                _ => child_path(path, 1),
            };
            let bodies: HashSet<u32> = message
                .text_body
                .iter()
                .chain(message.html_body.iter())
                .copied()
                .collect();
            let mut ctx = MessageCtx {
                depth,
                bodies,
                record: &mut record,
                limit_warned: false,
            };
            self.part(&mut message, 0, &root_path, level + 1, &mut ctx, structure);
        }
        teardown(message);
        record
    }

    fn scan_headers(&mut self, message: &Message<'_>, depth: u32, path: &str) {
        let raw = message.raw_message();
        let mut subject_done = false;
        let mut texts: Vec<(Origin, Cow<'_, str>)> = Vec::new();
        for header in message.headers() {
            let name = header.name();
            let origin = Origin {
                depth,
                part: path.to_string(),
                source: Source::Header {
                    name: name.to_string(),
                },
            };
            if name.eq_ignore_ascii_case("subject") {
                if !subject_done && let Some(subject) = message.subject() {
                    let origin = Origin {
                        source: Source::Subject,
                        ..origin
                    };
                    texts.push((origin, Cow::Borrowed(subject)));
                }
                subject_done = true;
            } else if is_originator_header(name) {
                for address in header_addresses(header.value()) {
                    self.out.add_email_address(&address, &origin);
                }
            } else if !is_opaque_header(name) {
                let start = header.offset_start() as usize;
                let end = (header.offset_end() as usize).min(raw.len());
                if let Some(value) = raw.get(start..end) {
                    texts.push((origin, String::from_utf8_lossy(value)));
                }
            }
        }
        // The origins move into the scan; only the texts stay borrowed.
        let (origins, values): (Vec<Origin>, Vec<Cow<'_, str>>) = texts.into_iter().unzip();
        scan::scan_texts(
            origins.into_iter().zip(values.iter().map(AsRef::as_ref)),
            &mut self.out,
        );
    }

    /// Walks part `id` of `message`, at tree level `level` (counting every multipart and
    /// attached message above it, across messages).
    fn part(
        &mut self,
        message: &mut Message<'_>,
        id: usize,
        path: &str,
        level: u32,
        ctx: &mut MessageCtx<'_>,
        structure: &mut String,
    ) {
        let Some(part) = message.parts.get(id) else {
            return;
        };
        self.parts += 1;
        if self.parts > self.options.max_parts {
            if !self.part_limit_hit {
                self.part_limit_hit = true;
                self.warn(
                    WarningKind::PartLimitExceeded,
                    path,
                    format!(
                        "more than {} parts; the rest scanned as raw text",
                        self.options.max_parts
                    ),
                );
                let start = (part.offset_header as usize).min(message.raw_message.len());
                self.raw_fallback(&message.raw_message[start..], ctx.depth, path);
            }
            structure.push('?');
            return;
        }
        if level > self.options.max_depth {
            if !ctx.limit_warned {
                ctx.limit_warned = true;
                self.warn(
                    WarningKind::NestingLimitExceeded,
                    path,
                    format!(
                        "MIME nesting limit exceeded (more than {} levels); the rest scanned as raw text",
                        self.options.max_depth
                    ),
                );
            }
            let len = message.raw_message.len();
            let start = (part.offset_header as usize).min(len);
            let end = (part.offset_end as usize).clamp(start, len);
            self.raw_fallback(&message.raw_message[start..end], ctx.depth, path);
            structure.push('?');
            return;
        }
        let info = PartInfo::of(part);
        if part.is_encoding_problem {
            self.warn(
                WarningKind::EncodingProblem,
                path,
                format!(
                    "{}: broken encoding or structure; bytes kept as text",
                    info.content_type
                ),
            );
        }
        let children = match &part.body {
            PartType::Multipart(children) => Some(children.clone()),
            _ => None,
        };
        let kind = match &part.body {
            PartType::Multipart(_) => Kind::Multipart,
            PartType::Message(_) => Kind::Message,
            PartType::Text(_) | PartType::Html(_) => Kind::Text,
            PartType::Binary(_) | PartType::InlineBinary(_) => Kind::Binary,
        };
        match kind {
            Kind::Multipart => {
                structure.push_str(&info.content_type);
                structure.push('(');
                let mut n = 0;
                for child in children.unwrap_or_default() {
                    let child = child as usize;
                    // Children always follow their parent in mail-parser's part list.
                    if child <= id {
                        continue;
                    }
                    if n > 0 {
                        structure.push_str(", ");
                    }
                    n += 1;
                    self.part(
                        message,
                        child,
                        &child_path(path, n),
                        level + 1,
                        ctx,
                        structure,
                    );
                }
                structure.push(')');
            }
            Kind::Message => self.attached_message(message, id, path, level, info, ctx, structure),
            Kind::Text => self.text_part(message, id, path, level, info, ctx, structure),
            Kind::Binary => self.binary_part(message, id, path, level, info, ctx, structure),
        }
    }

    /// A `message/rfc822` part mail-parser parsed (7bit/8bit, or base64/QP decoded).
    #[allow(clippy::too_many_arguments)]
    fn attached_message(
        &mut self,
        message: &mut Message<'_>,
        id: usize,
        path: &str,
        level: u32,
        info: PartInfo,
        ctx: &mut MessageCtx<'_>,
        structure: &mut String,
    ) {
        let len = message.raw_message.len();
        let part = &mut message.parts[id];
        let encoding = part.encoding;
        let start = (part.offset_body as usize).min(len);
        let end = (part.offset_end as usize).clamp(start, len);
        let PartType::Message(inner) = std::mem::take(&mut part.body) else {
            return;
        };
        // The decoded body: for 7bit/8bit the bytes between the header block and the CRLF
        // before the next boundary; for base64/QP what mail-parser decoded.
        let body: &[u8] = match encoding {
            Encoding::None => &message.raw_message[start..end],
            _ => &inner.raw_message,
        };
        let mut attachment = self.attachment(&info, path, ctx.depth, body);
        structure.push_str(&info.content_type);
        structure.push_str(encoding_tag(encoding));
        structure.push('[');
        if ctx.depth + 1 > self.options.max_message_depth {
            // For 7bit/8bit, mail-parser's nested raw_message is the whole outer buffer: scan
            // only this part's body.
            let body: &[u8] = match encoding {
                Encoding::None => &message.raw_message[start..end],
                _ => &inner.raw_message,
            };
            self.message_too_deep(path, ctx.depth, body, structure);
            teardown(inner);
        } else {
            let nested = self.message(inner, ctx.depth + 1, level, path, structure);
            attachment.message = Some(Box::new(nested));
        }
        structure.push(']');
        ctx.record.attachments.push(attachment);
    }

    fn message_too_deep(&mut self, path: &str, depth: u32, raw: &[u8], structure: &mut String) {
        self.warn(
            WarningKind::NestingLimitExceeded,
            path,
            format!(
                "attached message nesting limit exceeded (more than {} levels); scanned as raw text",
                self.options.max_message_depth
            ),
        );
        self.raw_fallback(raw, depth + 1, path);
        structure.push('?');
    }

    #[allow(clippy::too_many_arguments)]
    fn text_part(
        &mut self,
        message: &mut Message<'_>,
        id: usize,
        path: &str,
        level: u32,
        info: PartInfo,
        ctx: &mut MessageCtx<'_>,
        structure: &mut String,
    ) {
        let is_html = matches!(message.parts[id].body, PartType::Html(_));
        let recoded = self.recoded_text(message, id, path, &info);
        if info.is_eml() {
            // An attached message declared as text: parse its (transfer-decoded) bytes.
            let bytes = decoded_bytes(message, id).into_owned();
            let attachment = self.attachment(&info, path, ctx.depth, &bytes);
            self.eml_attachment(&bytes, attachment, path, level, info, ctx, structure);
            return;
        }
        structure.push_str(&info.content_type);
        let is_body = info.file_name.is_none()
            && !info.is_attachment_disposition
            && ctx.bodies.contains(&(id as u32));
        let source = match &info.file_name {
            Some(name) => Source::Attachment {
                file_name: name.clone(),
            },
            None if is_html => Source::Html,
            None => Source::Text,
        };
        let origin = Origin {
            depth: ctx.depth,
            part: path.to_string(),
            source,
        };
        {
            let text: &str = match &recoded {
                Some(text) => text,
                None => match &message.parts[id].body {
                    PartType::Text(t) | PartType::Html(t) => t,
                    _ => "",
                },
            };
            let content = text.strip_prefix('\u{feff}').unwrap_or(text);
            if is_html {
                scan::scan_html(content, &origin, &mut self.out);
            } else {
                scan::scan_text(content, &origin, &mut self.out);
            }
            if !is_body {
                // Hash the transfer-decoded bytes. mail-parser's text is those bytes exactly
                // when it was decoded as UTF-8 (or an ASCII-compatible charset, for ASCII text)
                // without replacement.
                let identity = recoded.is_none()
                    && ((info.charset_is_utf8() && !text.contains('\u{fffd}'))
                        || (info.charset_is_ascii_compatible() && text.is_ascii()));
                let attachment = if identity {
                    self.attachment(&info, path, ctx.depth, text.as_bytes())
                } else {
                    let bytes = decoded_bytes(message, id);
                    self.attachment(&info, path, ctx.depth, &bytes)
                };
                ctx.record.attachments.push(attachment);
                return;
            }
        }
        // The body moves into the record: mail-parser's decoded text is not copied.
        let text = match recoded {
            Some(text) => text,
            None => match std::mem::take(&mut message.parts[id].body) {
                PartType::Text(t) | PartType::Html(t) => t.into_owned(),
                _ => String::new(),
            },
        };
        let body = BodyPart {
            part: path.to_string(),
            content_type: info.content_type.clone(),
            charset: info.charset.clone(),
            text,
        };
        if is_html {
            ctx.record.html_bodies.push(body);
        } else {
            ctx.record.text_bodies.push(body);
        }
    }

    /// The text of a text part when it has to be re-decoded: mail-parser did not know its
    /// charset, or its quoted-printable body ends in a soft line break (mail-parser 0.11 then
    /// drops the last characters before the boundary). `None`: mail-parser's text is right.
    fn recoded_text(
        &mut self,
        message: &Message<'_>,
        id: usize,
        path: &str,
        info: &PartInfo,
    ) -> Option<String> {
        let resolution = info
            .charset
            .as_deref()
            .map_or(Resolution::MailParser, charset::resolve);
        let soft_break_at_end = message.parts[id].encoding == Encoding::QuotedPrintable
            && ends_with_soft_break(message, id);
        if resolution == Resolution::MailParser && !soft_break_at_end {
            return None;
        }
        let bytes = decoded_bytes(message, id);
        let (decoded, unknown) = charset::decode_label(&bytes, info.charset.as_deref());
        if unknown {
            self.warn(
                WarningKind::UnknownCharset,
                path,
                format!(
                    "unknown charset {:?}; decoded as UTF-8 or Latin-1",
                    info.charset.as_deref().unwrap_or_default()
                ),
            );
        }
        Some(decoded.into_owned())
    }

    #[allow(clippy::too_many_arguments)]
    fn binary_part(
        &mut self,
        message: &mut Message<'_>,
        id: usize,
        path: &str,
        level: u32,
        info: PartInfo,
        ctx: &mut MessageCtx<'_>,
        structure: &mut String,
    ) {
        // Take the bytes out of mail-parser's tree so they are freed as soon as they are hashed.
        let bytes = match std::mem::take(&mut message.parts[id].body) {
            PartType::Binary(b) | PartType::InlineBinary(b) => b,
            _ => Cow::Borrowed(&[][..]),
        };
        let attachment = self.attachment(&info, path, ctx.depth, &bytes);
        if info.is_eml() || info.is_message_type() {
            self.eml_attachment(&bytes, attachment, path, level, info, ctx, structure);
            return;
        }
        structure.push_str(&info.content_type);
        if info.is_text_file() {
            let (text, unknown) = charset::decode_attachment(&bytes, info.charset.as_deref());
            if unknown {
                self.warn(
                    WarningKind::UnknownCharset,
                    path,
                    "unknown charset in a text attachment; decoded as UTF-8 or Latin-1",
                );
            }
            let origin = Origin {
                depth: ctx.depth,
                part: path.to_string(),
                source: Source::Attachment {
                    file_name: info.file_name.clone().unwrap_or_default(),
                },
            };
            scan::scan_text(&text, &origin, &mut self.out);
        }
        ctx.record.attachments.push(attachment);
    }

    /// An attached message given as bytes (`.eml` of any type, or one mail-parser left alone).
    #[allow(clippy::too_many_arguments)]
    fn eml_attachment(
        &mut self,
        bytes: &[u8],
        mut attachment: Attachment,
        path: &str,
        level: u32,
        info: PartInfo,
        ctx: &mut MessageCtx<'_>,
        structure: &mut String,
    ) {
        structure.push_str(&info.content_type);
        structure.push_str(if info.is_eml() && !info.is_message_type() {
            ";eml"
        } else {
            ""
        });
        structure.push('[');
        if ctx.depth + 1 > self.options.max_message_depth {
            self.message_too_deep(path, ctx.depth, bytes, structure);
        } else {
            let nested = self.message_bytes(bytes, ctx.depth + 1, level, path, structure);
            attachment.message = Some(Box::new(nested));
        }
        structure.push(']');
        ctx.record.attachments.push(attachment);
    }

    fn attachment(&mut self, info: &PartInfo, path: &str, depth: u32, bytes: &[u8]) -> Attachment {
        if let Some(name) = &info.file_name {
            let location = crate::record::Location {
                depth,
                part: path.to_string(),
                source: Source::Attachment {
                    file_name: name.clone(),
                },
                defanged: false,
                derived_from: None,
            };
            self.out.add_file_name(name, location);
        }
        Attachment {
            part: path.to_string(),
            depth,
            file_name: info.file_name.clone(),
            content_type: info.content_type.clone(),
            disposition: info.disposition.clone(),
            transfer_encoding: info.transfer_encoding.clone(),
            size: bytes.len() as u64,
            md5: hex::encode(Md5::digest(bytes)),
            sha1: hex::encode(Sha1::digest(bytes)),
            sha256: hex::encode(Sha256::digest(bytes)),
            message: None,
        }
    }

    fn finish(self, size: usize, message: MessageRecord, structure: String) -> ParsedMessage {
        let Walk {
            out, mut warnings, ..
        } = self;
        if out.dropped > 0 {
            warnings.push(Warning {
                kind: WarningKind::IndicatorLimitExceeded,
                part: None,
                detail: format!(
                    "indicator limit exceeded: {} more distinct indicators beyond {} were not kept",
                    out.dropped,
                    out.indicators.len()
                ),
            });
        }
        let tlp = out
            .tlp
            .iter()
            .filter(|m| m.location.in_key_scope())
            .map(|m| m.level)
            .max();
        // A token-level mention (`review.xlsx`) inside a whole-label file name at the same
        // place (`Q4 budget review.xlsx`) is the same file.
        let mut file_names = out.file_names;
        let wholes: Vec<(String, crate::record::Location)> = file_names
            .iter()
            .filter(|m| m.name.contains(' '))
            .map(|m| (m.name.clone(), m.location.clone()))
            .collect();
        file_names.retain(|m| {
            !wholes.iter().any(|(whole, location)| {
                whole != &m.name
                    && whole.ends_with(&format!(" {}", m.name))
                    && location.depth == m.location.depth
                    && location.part == m.location.part
            })
        });
        warnings.dedup();
        ParsedMessage {
            size: size as u64,
            message,
            structure,
            indicators: out.indicators,
            tlp,
            tlp_markings: out.tlp,
            link_mismatches: out.links,
            file_names,
            warnings,
        }
    }
}

/// What a part's body is, read before the walk borrows the message mutably.
enum Kind {
    Multipart,
    Message,
    Text,
    Binary,
}

/// Per-message state of the part walk.
struct MessageCtx<'r> {
    depth: u32,
    bodies: HashSet<u32>,
    record: &'r mut MessageRecord,
    limit_warned: bool,
}

/// What the headers of one part say.
struct PartInfo {
    content_type: String,
    charset: Option<String>,
    file_name: Option<String>,
    disposition: Option<String>,
    is_attachment_disposition: bool,
    transfer_encoding: Option<String>,
}

impl PartInfo {
    fn of(part: &mail_parser::MessagePart<'_>) -> PartInfo {
        let content_type = match part.content_type() {
            Some(ct) => {
                let main = ct.ctype().to_ascii_lowercase();
                match ct.subtype() {
                    Some(sub) => format!("{main}/{}", sub.to_ascii_lowercase()),
                    None => main,
                }
            }
            None if matches!(part.body, PartType::Message(_)) => "message/rfc822".to_string(),
            None => "text/plain".to_string(),
        };
        let charset = part
            .content_type()
            .and_then(|ct| ct.attribute("charset"))
            .map(str::to_string);
        let disposition = part
            .content_disposition()
            .map(|d| d.ctype().to_ascii_lowercase());
        let file_name = part
            .attachment_name()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty());
        PartInfo {
            content_type,
            charset,
            file_name,
            is_attachment_disposition: disposition.as_deref() == Some("attachment"),
            disposition,
            transfer_encoding: part
                .content_transfer_encoding()
                .map(|e| e.trim().to_ascii_lowercase()),
        }
    }

    fn has_extension(&self, ext: &str) -> bool {
        self.file_name.as_deref().is_some_and(|n| {
            n.rsplit_once('.')
                .is_some_and(|(_, e)| e.trim().eq_ignore_ascii_case(ext))
        })
    }

    fn is_eml(&self) -> bool {
        self.has_extension("eml")
    }

    fn is_text_file(&self) -> bool {
        self.has_extension("csv")
            || self.has_extension("txt")
            || self.content_type.starts_with("text/")
    }

    fn is_message_type(&self) -> bool {
        self.content_type == "message/rfc822" || self.content_type == "message/global"
    }

    fn charset_is_utf8(&self) -> bool {
        match self.charset.as_deref() {
            None => true,
            Some(label) => charset::whatwg(label) == Some(encoding_rs::UTF_8),
        }
    }

    fn charset_is_ascii_compatible(&self) -> bool {
        match self.charset.as_deref() {
            None => true,
            Some(label) => charset::whatwg(label).is_some_and(|e| e.is_ascii_compatible()),
        }
    }
}

fn encoding_tag(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::None => "",
        Encoding::Base64 => ";base64",
        Encoding::QuotedPrintable => ";quoted-printable",
    }
}

fn child_path(path: &str, n: usize) -> String {
    if path.is_empty() {
        n.to_string()
    } else {
        format!("{path}.{n}")
    }
}

/// Whether the raw body of part `id` ends in a quoted-printable soft line break (`=`).
fn ends_with_soft_break(message: &Message<'_>, id: usize) -> bool {
    let raw = message.raw_message();
    let part = &message.parts[id];
    let start = (part.offset_body as usize).min(raw.len());
    let end = (part.offset_end as usize).clamp(start, raw.len());
    raw[start..end]
        .iter()
        .rev()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'=')
}

/// The transfer-decoded body bytes of part `id`, re-read from the raw message.
fn decoded_bytes<'m>(message: &'m Message<'_>, id: usize) -> Cow<'m, [u8]> {
    let raw = message.raw_message();
    let part = &message.parts[id];
    let start = (part.offset_body as usize).min(raw.len());
    let end = (part.offset_end as usize).clamp(start, raw.len());
    let body = &raw[start..end];
    let mut stream = MessageStream::new(body);
    let (status, bytes) = match part.encoding {
        Encoding::Base64 => stream.decode_base64_mime(b""),
        Encoding::QuotedPrintable => stream.decode_quoted_printable_mime(b""),
        Encoding::None => return Cow::Borrowed(body),
    };
    if status == usize::MAX {
        Cow::Borrowed(body)
    } else {
        Cow::Owned(bytes.into_owned())
    }
}

/// The header fields of a message's record.
fn headers_record(message: &Message<'_>) -> MessageRecord {
    MessageRecord {
        message_id: message.message_id().map(str::to_string),
        date: message.date().map(|d| d.to_rfc3339()),
        from: addresses(message.from()),
        sender: addresses(message.sender()),
        reply_to: addresses(message.reply_to()),
        return_path: return_path(message),
        to: addresses(message.to()),
        cc: addresses(message.cc()),
        subject: message.subject().map(str::to_string),
        ..MessageRecord::default()
    }
}

/// The `Return-Path` as written, or `None` without one (mail-parser's `return_address`
/// falls back to `From`, which would hide a Return-Path that differs from it, or its
/// absence, from an analyst). The null path `<>` is `None` too.
fn return_path(message: &Message<'_>) -> Option<String> {
    let path = match message.header(HeaderName::ReturnPath)? {
        HeaderValue::Text(text) => text.as_ref(),
        HeaderValue::TextList(list) => list.last()?.as_ref(),
        _ => return None,
    };
    Some(path.trim().to_owned()).filter(|path| !path.is_empty())
}

/// The addresses of an address header. An unquoted comma in a display name (`From: ACME
/// Support, Billing <x@example.com>`, common in phishing) splits it, and the parser then
/// sees a name without an address followed by the real mailbox: such names are put back in
/// front of the next entry's, so the mailbox keeps its whole display name and stays first.
fn addresses(address: Option<&MpAddress<'_>>) -> Vec<Address> {
    let Some(address) = address else {
        return Vec::new();
    };
    let mut out: Vec<Address> = Vec::new();
    let mut names_only: Vec<String> = Vec::new();
    for entry in address.iter() {
        let name = entry.name().map(str::trim).filter(|n| !n.is_empty());
        match entry.address() {
            None => names_only.extend(name.map(str::to_string)),
            Some(mailbox) => {
                let mut parts = std::mem::take(&mut names_only);
                parts.extend(name.map(str::to_string));
                out.push(Address {
                    name: (!parts.is_empty()).then(|| parts.join(", ")),
                    address: Some(mailbox.to_string()),
                });
            }
        }
    }
    // Names with no mailbox after them (an empty group, `undisclosed-recipients:;`).
    out.extend(names_only.into_iter().map(|name| Address {
        name: Some(name),
        address: None,
    }));
    out
}

/// The addresses written in an originator header's value.
fn header_addresses(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Address(address) => address
            .iter()
            .filter_map(|a| a.address().map(str::to_string))
            .collect(),
        HeaderValue::Text(text) => vec![text.trim().trim_matches(['<', '>']).to_string()],
        HeaderValue::TextList(list) => list
            .iter()
            .map(|t| t.trim().trim_matches(['<', '>']).to_string())
            .collect(),
        _ => Vec::new(),
    }
}

/// Drops a mail-parser message without recursion: attached messages are moved onto a work list
/// first, so a chain of any length is freed in constant stack.
fn teardown(message: Message<'_>) {
    let mut stack = vec![message];
    while let Some(mut message) = stack.pop() {
        for part in &mut message.parts {
            if matches!(part.body, PartType::Message(_))
                && let PartType::Message(inner) = std::mem::take(&mut part.body)
            {
                stack.push(inner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::IndicatorKind;

    const RAW: &[u8] = b"Subject: invoice\r\n\r\nPay at http://198.51.100.7/pay.php today\r\n";

    /// An unquoted comma in a display name does not cost the mailbox its place or its name.
    #[test]
    fn a_display_name_split_by_a_comma_stays_with_its_mailbox() {
        type Entry<'a> = (Option<&'a str>, Option<&'a str>);
        let cases: [(&str, &[Entry<'_>]); 4] = [
            (
                "ADT Medical Alert Systems       ,_<wprk@x.example>",
                &[(Some("ADT Medical Alert Systems, _"), Some("wprk@x.example"))],
            ),
            (
                "Support, Billing <billing@x.example>",
                &[(Some("Support, Billing"), Some("billing@x.example"))],
            ),
            (
                "\"Support, Billing\" <billing@x.example>",
                &[(Some("Support, Billing"), Some("billing@x.example"))],
            ),
            (
                "a@x.example, Bob <b@x.example>",
                &[
                    (None, Some("a@x.example")),
                    (Some("Bob"), Some("b@x.example")),
                ],
            ),
        ];
        for (from, expected) in cases {
            let raw = format!("From: {from}\r\nSubject: s\r\n\r\nbody\r\n");
            let parsed = crate::parse_message(raw.as_bytes());
            let got: Vec<Entry<'_>> = parsed
                .message
                .from
                .iter()
                .map(|a| (a.name.as_deref(), a.address.as_deref()))
                .collect();
            assert_eq!(got, expected, "From: {from}");
        }
    }

    fn failed_warning(parsed: &ParsedMessage) -> &Warning {
        parsed
            .warnings
            .iter()
            .find(|w| w.kind == WarningKind::ParserFailed)
            .expect("a parser-failed warning")
    }

    /// A panic while parsing: the message still comes out, scanned as raw text, with a
    /// warning whose reason (which may quote the input) is escaped.
    #[test]
    fn a_parser_panic_leaves_a_raw_text_record() {
        let options = ParseOptions::default();
        let (parsed, _) = contained(
            RAW,
            || panic!("byte index 3 is not a char boundary\nit is inside 'x'"),
            || raw_text_only(RAW, &options, false),
        );
        assert_eq!(parsed.size, RAW.len() as u64);
        assert!(
            parsed
                .indicators
                .iter()
                .any(|i| i.kind == IndicatorKind::Url && i.value.contains("198.51.100.7/pay.php")),
            "the raw-text scan ran: {:?}",
            parsed.indicators
        );
        let warning = failed_warning(&parsed);
        assert!(!warning.detail.contains('\n'), "{}", warning.detail);
        assert!(
            warning.detail.contains("not a char boundary"),
            "{}",
            warning.detail
        );
    }

    /// The raw-text scan panicking too: an empty record with the warning, never a panic.
    #[test]
    fn a_fallback_panic_leaves_an_empty_record() {
        let (parsed, texts) = contained(RAW, || panic!("first"), || panic!("second"));
        assert_eq!(parsed.size, RAW.len() as u64);
        assert!(parsed.indicators.is_empty());
        assert!(texts.is_empty());
        assert!(failed_warning(&parsed).detail.contains("first"));
    }

    /// No panic: the parse as it is, no warning added.
    #[test]
    fn a_parse_that_does_not_panic_is_passed_through() {
        let options = ParseOptions::default();
        let (parsed, _) = contained(
            RAW,
            || walked(RAW, &options, false),
            || panic!("the fallback is not run"),
        );
        assert_eq!(parsed, walked(RAW, &options, false).0);
        assert!(
            parsed
                .warnings
                .iter()
                .all(|w| w.kind != WarningKind::ParserFailed)
        );
    }
}
