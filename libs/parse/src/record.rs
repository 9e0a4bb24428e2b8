//! The record a parsed message becomes (DESIGN §5): headers, bodies, attachments and nested
//! messages of every level, plus the indicators, TLP markings, link mismatches, file names and
//! warnings found anywhere in the tree, each with where it was found.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Everything `parse_message` learned about one raw message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParsedMessage {
    /// Size of the raw input in bytes.
    pub size: u64,
    /// The top-level message: headers, bodies, attachments and (inside those) nested messages.
    pub message: MessageRecord,
    /// The MIME tree in the answer keys' notation, e.g.
    /// `multipart/mixed(text/plain, message/rfc822[text/html])`.
    pub structure: String,
    /// Every indicator found at any depth, de-duplicated by kind and normalised value.
    pub indicators: Vec<Indicator>,
    /// The most restrictive TLP marking in scope (subjects and bodies at every depth).
    pub tlp: Option<Tlp>,
    /// Every TLP marking found, with where it was found.
    pub tlp_markings: Vec<TlpMarking>,
    /// HTML links whose visible text shows another host than the link goes to.
    pub link_mismatches: Vec<LinkMismatch>,
    /// File names written in text (outside URLs) and attachment names, with where they were found.
    pub file_names: Vec<FileNameMention>,
    /// What went wrong while parsing; the record still holds whatever could be extracted.
    pub warnings: Vec<Warning>,
}

/// Headers, bodies and attachments of one message (the top-level one or an attached one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// `Message-ID` without angle brackets.
    pub message_id: Option<String>,
    /// `Date` in RFC 3339 form.
    pub date: Option<String>,
    /// `From` addresses.
    pub from: Vec<Address>,
    /// `Sender` addresses.
    pub sender: Vec<Address>,
    /// `Reply-To` addresses.
    pub reply_to: Vec<Address>,
    /// The address in `Return-Path`.
    pub return_path: Option<String>,
    /// `To` addresses.
    pub to: Vec<Address>,
    /// `Cc` addresses.
    pub cc: Vec<Address>,
    /// `Subject`, RFC 2047 decoded.
    pub subject: Option<String>,
    /// Inline `text/plain` (and other non-HTML text) bodies, charset decoded.
    pub text_bodies: Vec<BodyPart>,
    /// Inline `text/html` bodies, charset decoded.
    pub html_bodies: Vec<BodyPart>,
    /// Every other part, in document order; attached messages carry their own record.
    pub attachments: Vec<Attachment>,
}

/// A mailbox from an address header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Display name, RFC 2047 decoded.
    pub name: Option<String>,
    /// The address as written.
    pub address: Option<String>,
}

/// One decoded body part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyPart {
    /// MIME part path (`1`, `2.1`, ...).
    pub part: String,
    /// `type/subtype`, lower case.
    pub content_type: String,
    /// The declared charset, if any.
    pub charset: Option<String>,
    /// The decoded text.
    pub text: String,
}

/// A part that is not an inline body: a file, an inline image, an attached message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// MIME part path.
    pub part: String,
    /// Message nesting depth of the message this part belongs to (0 = top level).
    pub depth: u32,
    /// File name from `Content-Disposition: filename=` or `Content-Type: name=`.
    pub file_name: Option<String>,
    /// `type/subtype`, lower case.
    pub content_type: String,
    /// `Content-Disposition` type (`attachment`, `inline`), lower case.
    pub disposition: Option<String>,
    /// `Content-Transfer-Encoding`, lower case and trimmed.
    pub transfer_encoding: Option<String>,
    /// Size of the decoded body in bytes.
    pub size: u64,
    /// MD5 of the decoded body, lower-case hex.
    pub md5: String,
    /// SHA-1 of the decoded body, lower-case hex.
    pub sha1: String,
    /// SHA-256 of the decoded body, lower-case hex.
    pub sha256: String,
    /// The parsed message, when this part is an attached message.
    pub message: Option<Box<MessageRecord>>,
}

/// The kinds of indicator of compromise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndicatorKind {
    /// An `http`/`https` URL.
    Url,
    /// A host name checked against the public suffix list.
    Domain,
    /// An IPv4 address.
    Ipv4,
    /// An IPv6 address.
    Ipv6,
    /// An IPv4 or IPv6 network in `address/prefix` form.
    Cidr,
    /// An email address.
    Email,
    /// An MD5 hash written in the text.
    Md5,
    /// A SHA-1 hash written in the text.
    Sha1,
    /// A SHA-256 hash written in the text.
    Sha256,
    /// A SHA-512 hash written in the text.
    Sha512,
    /// A CVE id.
    Cve,
}

impl IndicatorKind {
    /// Every kind, in the answer keys' order.
    pub const ALL: [IndicatorKind; 11] = [
        IndicatorKind::Url,
        IndicatorKind::Domain,
        IndicatorKind::Ipv4,
        IndicatorKind::Ipv6,
        IndicatorKind::Cidr,
        IndicatorKind::Email,
        IndicatorKind::Md5,
        IndicatorKind::Sha1,
        IndicatorKind::Sha256,
        IndicatorKind::Sha512,
        IndicatorKind::Cve,
    ];

    /// The name of this kind's set in an answer key (`urls`, `domains`, ...).
    pub fn key_field(self) -> &'static str {
        match self {
            IndicatorKind::Url => "urls",
            IndicatorKind::Domain => "domains",
            IndicatorKind::Ipv4 => "ipv4",
            IndicatorKind::Ipv6 => "ipv6",
            IndicatorKind::Cidr => "cidrs",
            IndicatorKind::Email => "emails",
            IndicatorKind::Md5 => "md5",
            IndicatorKind::Sha1 => "sha1",
            IndicatorKind::Sha256 => "sha256",
            IndicatorKind::Sha512 => "sha512",
            IndicatorKind::Cve => "cves",
        }
    }
}

impl fmt::Display for IndicatorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key_field())
    }
}

/// One indicator, de-duplicated by kind and normalised value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Indicator {
    /// What kind of indicator this is.
    pub kind: IndicatorKind,
    /// The refanged, normalised value (A-label form for IDN hosts).
    pub value: String,
    /// The Unicode (U-label) form, when the value holds an IDN host.
    pub unicode: Option<String>,
    /// Whether it was written defanged at least once (an author defanging it is a signal).
    pub defanged: bool,
    /// How many times it was found.
    pub occurrences: u32,
    /// Where it was found (the first few distinct places).
    pub locations: Vec<Location>,
}

impl Indicator {
    /// Whether any of its locations is in the answer keys' scope (labelled README, rule 1).
    pub fn in_key_scope(&self) -> bool {
        self.locations.iter().any(Location::in_key_scope)
    }
}

/// Where something was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Message nesting depth (0 = the top-level message).
    pub depth: u32,
    /// MIME part path; empty for the top-level header block.
    pub part: String,
    /// What kind of content it was in.
    pub source: Source,
    /// Whether this occurrence was written defanged.
    pub defanged: bool,
    /// Set when the indicator was derived from another one (a URL's host, an email's domain).
    pub derived_from: Option<IndicatorKind>,
}

impl Location {
    /// Whether this place is in the answer keys' scope: subjects, text parts, HTML visible text
    /// and `href`/`src`/`action`, text attachments, the originator headers of attached messages,
    /// and the raw-text fallback scan of mail that could not be parsed.
    pub fn in_key_scope(&self) -> bool {
        match &self.source {
            Source::Header { name } => self.depth > 0 && is_originator_header(name),
            Source::Subject
            | Source::Text
            | Source::Html
            | Source::HtmlAttribute { .. }
            | Source::Attachment { .. }
            | Source::RawFallback => true,
        }
    }
}

/// Whether `name` is one of the headers whose addresses identify who sent a message.
pub(crate) fn is_originator_header(name: &str) -> bool {
    ["from", "sender", "reply-to", "return-path"]
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// The kind of content an indicator was found in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A header other than `Subject`.
    Header {
        /// The header name as written.
        name: String,
    },
    /// The `Subject` header.
    Subject,
    /// A `text/plain` or other non-HTML text body.
    Text,
    /// The visible text of an HTML part.
    Html,
    /// An HTML attribute value.
    HtmlAttribute {
        /// `href`, `src` or `action`.
        attribute: String,
    },
    /// The text content of a named attachment (a `.csv`/`.txt` file or a `text/*` attachment).
    Attachment {
        /// The attachment's file name.
        file_name: String,
    },
    /// A scan of undecoded bytes, used when (part of) the message could not be parsed.
    RawFallback,
}

/// A Traffic Light Protocol level, least to most restrictive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Tlp {
    /// `TLP:CLEAR` (TLP 1.0 `TLP:WHITE`).
    #[serde(rename = "TLP:CLEAR")]
    Clear,
    /// `TLP:GREEN`.
    #[serde(rename = "TLP:GREEN")]
    Green,
    /// `TLP:AMBER`.
    #[serde(rename = "TLP:AMBER")]
    Amber,
    /// `TLP:AMBER+STRICT`.
    #[serde(rename = "TLP:AMBER+STRICT")]
    AmberStrict,
    /// `TLP:RED`.
    #[serde(rename = "TLP:RED")]
    Red,
}

impl Tlp {
    /// Every level, least to most restrictive.
    pub const ALL: [Tlp; 5] = [
        Tlp::Clear,
        Tlp::Green,
        Tlp::Amber,
        Tlp::AmberStrict,
        Tlp::Red,
    ];

    /// The canonical marking, e.g. `TLP:AMBER+STRICT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tlp::Clear => "TLP:CLEAR",
            Tlp::Green => "TLP:GREEN",
            Tlp::Amber => "TLP:AMBER",
            Tlp::AmberStrict => "TLP:AMBER+STRICT",
            Tlp::Red => "TLP:RED",
        }
    }
}

impl fmt::Display for Tlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One TLP marking and where it was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlpMarking {
    /// The level.
    pub level: Tlp,
    /// Where it was written.
    pub location: Location,
}

/// An HTML link whose visible text names another host than its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkMismatch {
    /// The canonical target URL (refanged, Safe Links unwrapped, normalised).
    pub href: String,
    /// The visible text, whitespace collapsed.
    pub text: String,
    /// Where the link was.
    pub location: Location,
}

/// A file name: an attachment's, or one written in the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileNameMention {
    /// The name as written.
    pub name: String,
    /// Where it was found (`Source::Attachment` for an attachment's own name).
    pub location: Location,
}

/// Something that went wrong while parsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// What went wrong.
    pub kind: WarningKind,
    /// The MIME part path it concerns, if any.
    pub part: Option<String>,
    /// Details for a person.
    pub detail: String,
}

/// The kinds of parse warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// The input has no header block; only a raw-text scan was possible.
    NoHeaders,
    /// MIME nesting limit exceeded: parts below the limit were scanned as raw text.
    NestingLimitExceeded,
    /// Too many parts: the rest were scanned as raw text.
    PartLimitExceeded,
    /// Nested messages inside encoded attached messages would cost too much to expand; the
    /// message was scanned as raw text.
    HostileNesting,
    /// A charset label no decoder knows; decoded as UTF-8, or Latin-1 if not valid UTF-8.
    UnknownCharset,
    /// A part whose encoding or structure was broken; its bytes were kept as text.
    EncodingProblem,
    /// An attached message that could not be parsed; scanned as raw text.
    NestedMessageUnparsable,
    /// More distinct indicators than the limit; the rest were counted, not kept.
    IndicatorLimitExceeded,
    /// The parser failed (a bug met by this input); the raw bytes were scanned as text.
    ParserFailed,
}

impl fmt::Display for WarningKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WarningKind::NoHeaders => "no header block",
            WarningKind::NestingLimitExceeded => "MIME nesting limit exceeded",
            WarningKind::PartLimitExceeded => "MIME part limit exceeded",
            WarningKind::HostileNesting => "hostile nesting of encoded messages",
            WarningKind::UnknownCharset => "unknown charset",
            WarningKind::EncodingProblem => "broken encoding or structure",
            WarningKind::NestedMessageUnparsable => "attached message could not be parsed",
            WarningKind::IndicatorLimitExceeded => "indicator limit exceeded",
            WarningKind::ParserFailed => "the parser failed",
        })
    }
}
