//! MIME parsing and indicator extraction for threatmail (DESIGN §5). Raw message bytes become a
//! [`ParsedMessage`]: headers, bodies, attachments (with MD5/SHA-1/SHA-256) and attached
//! messages parsed recursively, plus the indicators of compromise found in them (URLs with
//! Safe Links unwrapped, domains checked against the public suffix list, IPv4/IPv6, CIDRs,
//! emails, hashes, CVE ids), each refanged, normalised and located; TLP markings; link
//! text/target mismatches; and parse warnings. [`ParsedMessage::summary`] gives the answer-key
//! view used for scoring (`../shared/corpus/labelled/README.md`).
//!
//! This crate does no I/O. Parsing never fails and never panics: malformed or hostile mail
//! (deep nesting, huge sizes, broken encodings, unknown charsets) yields warnings and whatever
//! could be extracted, with a raw-text scan where structure was lost. Every scanner runs in
//! time linear in its input.

mod charset;
mod hosts;
mod html;
mod mime;
mod names;
mod prescan;
pub mod record;
mod refang;
mod scan;
pub mod score;
pub mod summary;
mod tlp;
mod urls;

pub use record::{
    Address, Attachment, BodyPart, FileNameMention, Indicator, IndicatorKind, LinkMismatch,
    Location, MessageRecord, ParsedMessage, Source, Tlp, TlpMarking, Warning, WarningKind,
};
pub use scan::{ScanStats, ScannedText, TextExtraction, extract_text};
pub use score::{AnswerKey, Counts, MessageScore, Scorecard};
pub use summary::{Summary, SummaryAttachment, SummaryLink};

/// Limits that keep hostile mail bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseOptions {
    /// Deepest MIME tree level walked, counting every multipart and attached message from the
    /// top; deeper parts are scanned as raw text and flagged "MIME nesting limit exceeded".
    pub max_depth: u32,
    /// Deepest attached message parsed (0 = the top-level message).
    pub max_message_depth: u32,
    /// Most parts walked in one message; the rest are scanned as raw text.
    pub max_parts: usize,
    /// Most distinct indicators kept for one message (memory bound); more are counted in a
    /// warning.
    pub max_indicators: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            max_depth: 32,
            max_message_depth: 8,
            max_parts: 10_000,
            max_indicators: 100_000,
        }
    }
}

/// Parses a raw RFC 5322 message with the default limits.
pub fn parse_message(raw: &[u8]) -> ParsedMessage {
    parse_message_with(raw, &ParseOptions::default())
}

/// Parses a raw RFC 5322 message with the given limits.
pub fn parse_message_with(raw: &[u8], options: &ParseOptions) -> ParsedMessage {
    mime::parse(raw, options)
}

/// Parses a raw message and also returns every decoded text the scanners read (subjects,
/// bodies, HTML visible text and attribute values, text attachments, header values), each
/// with its location; [`Location::in_key_scope`] tells which are in the answer keys' scope.
/// Used to run other extractors over exactly the same text.
pub fn parse_message_with_texts(raw: &[u8]) -> (ParsedMessage, Vec<ScannedText>) {
    mime::parse_collecting(raw, &ParseOptions::default(), true)
}
