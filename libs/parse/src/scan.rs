//! Indicator extraction from decoded text: URLs, domains, IPv4/IPv6 addresses, CIDRs, email
//! addresses, MD5/SHA-1/SHA-256/SHA-512 hashes and CVE ids, refanged and normalised by the
//! labelled README's rules; file names written in the text; TLP markings; and, for HTML, link
//! text/target mismatches.
//!
//! # Linearity
//! Text is cut into chunks of at most [`CHUNK`] bytes at line (or space) boundaries and each
//! chunk is processed independently, so memory beyond the input is bounded by the chunk size.
//! Within a chunk every scanner is a `regex` crate search (finite automata: `O(m·n)` per
//! search, no backtracking). The match iterators resume at the end of the previous match, and
//! the patterns are built so that a search never reads far past the match it reports: a
//! match ends where its character class stops matching (URLs, hex runs, CVE digits), or where
//! a bounded suffix (a 63-letter top-level label) ends; an unbounded label run after a match
//! is read again by the next search only once, because a later dot would have extended the
//! first match instead. Every check done on a match reads a bounded window around it
//! ([`TOKEN_WINDOW`], [`NAME_WINDOW`]). So the work is proportional to the text, whatever
//! it contains; [`ScanStats`] counts it, and the tests hold a 100 KB run of base64 followed
//! by `@` or `.` to the cost of 100 KB of prose.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;
use regex::bytes::Regex as BytesRegex;
use serde::{Deserialize, Serialize};

use crate::hosts::{self, DomainName, Host};
use crate::html;
use crate::names;
use crate::record::{
    FileNameMention, Indicator, IndicatorKind, LinkMismatch, Location, Source, Tlp, TlpMarking,
};
use crate::refang::{self, Refanged};
use crate::tlp;
use crate::urls::{self, NormalUrl};

/// Largest piece of text scanned at once.
pub(crate) const CHUNK: usize = 64 * 1024;
/// How far around a domain candidate the enclosing word is read (AV-name check).
const TOKEN_WINDOW: usize = 64;
/// How far before `<url>` a plain-text link label is read.
const NAME_WINDOW: usize = 200;
/// End of an index chain.
const NO_INDICATOR: u32 = u32::MAX;
/// Default for the most distinct indicators kept per message.
pub(crate) const MAX_INDICATORS: usize = 100_000;
/// Most locations kept per indicator.
const MAX_LOCATIONS: usize = 16;
/// Most file-name mentions, TLP markings or link mismatches kept per message.
const MAX_MENTIONS: usize = 10_000;

// All patterns are constants: a typo would fail every test, so `unwrap` cannot fail at run time.
#[allow(clippy::unwrap_used)]
static URL: LazyLock<Regex> = LazyLock::new(|| {
    // A URL ends at whitespace, `<`, `>`, quotes, a backtick, a comma, guillemets, curly quotes
    // and CJK brackets (README rule 3); trailing punctuation is trimmed afterwards.
    Regex::new(
        r#"(?i)https?://[^\s<>"'`,«»‘’“”„‚‹›「」『』（）【】〈〉《》。、，：；！？\x00-\x1f\x7f]+"#,
    )
    .unwrap()
});

#[allow(clippy::unwrap_used)]
static EMAIL: LazyLock<BytesRegex> = LazyLock::new(|| {
    BytesRegex::new(&format!(r"[\p{{L}}\p{{N}}_.%+\-]+@{DOMAIN_PATTERN}")).unwrap()
});

#[allow(clippy::unwrap_used)]
static DOMAIN: LazyLock<BytesRegex> = LazyLock::new(|| BytesRegex::new(DOMAIN_PATTERN).unwrap());

/// Dotted labels of letters, marks and digits (hyphens inside), ending in an ASCII top-level
/// label: text glued after the TLD in another script is not part of the name.
const DOMAIN_PATTERN: &str = r"(?:[\p{L}\p{M}\p{N}](?:[\p{L}\p{M}\p{N}\-]*[\p{L}\p{M}\p{N}])?\.)+(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9\-]+)";

#[allow(clippy::unwrap_used)]
static IPV4: LazyLock<BytesRegex> =
    LazyLock::new(|| BytesRegex::new(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}").unwrap());

#[allow(clippy::unwrap_used)]
static IPV6: LazyLock<BytesRegex> = LazyLock::new(|| {
    BytesRegex::new(r"[0-9A-Fa-f:]*:[0-9A-Fa-f]*:[0-9A-Fa-f:]*(?:\.[0-9]{1,3}){0,3}").unwrap()
});

#[allow(clippy::unwrap_used)]
static HEX: LazyLock<BytesRegex> = LazyLock::new(|| BytesRegex::new(r"[0-9A-Fa-f]{32,}").unwrap());

#[allow(clippy::unwrap_used)]
static CVE: LazyLock<BytesRegex> = LazyLock::new(|| {
    BytesRegex::new(
        r"(?i)cve[\-\x{2010}\x{2011}\x{2013}]([0-9]{4})[\-\x{2010}\x{2011}\x{2013}]([0-9]{4,})",
    )
    .unwrap()
});

#[allow(clippy::unwrap_used)]
static FILE_NAME: LazyLock<BytesRegex> = LazyLock::new(|| {
    BytesRegex::new(&format!(
        r"[\p{{L}}\p{{N}}_\-~+]+(?:\.[\p{{L}}\p{{N}}_\-~+]+)*\.(?i:{})",
        names::extension_alternation()
    ))
    .unwrap()
});

/// Counts of the work done, for linearity checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanStats {
    /// Texts scanned.
    pub texts: u64,
    /// Bytes of text scanned.
    pub bytes: u64,
    /// Chunks scanned.
    pub chunks: u64,
    /// Regex matches examined.
    pub candidates: u64,
    /// Bytes read by the checks on those matches (windows, validation).
    pub checked_bytes: u64,
}

/// Where a piece of text came from.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub(crate) depth: u32,
    pub(crate) part: String,
    pub(crate) source: Source,
}

impl Origin {
    fn location(&self, defanged: bool, derived_from: Option<IndicatorKind>) -> Location {
        Location {
            depth: self.depth,
            part: self.part.clone(),
            source: self.source.clone(),
            defanged,
            derived_from,
        }
    }

    fn with_source(&self, source: Source) -> Origin {
        Origin {
            depth: self.depth,
            part: self.part.clone(),
            source,
        }
    }
}

/// Everything found in one message, accumulated over its texts.
#[derive(Debug)]
pub(crate) struct Collector {
    /// Hash of (kind, value) to the first indicator with that hash; `chain` links the rest, so
    /// values are stored once.
    index: HashMap<u64, u32>,
    chain: Vec<u32>,
    hasher: std::hash::RandomState,
    /// Most distinct indicators kept; new ones past it are counted in `dropped`.
    pub(crate) max_indicators: usize,
    pub(crate) dropped: u64,
    pub(crate) indicators: Vec<Indicator>,
    pub(crate) tlp: Vec<TlpMarking>,
    pub(crate) file_names: Vec<FileNameMention>,
    pub(crate) links: Vec<LinkMismatch>,
    pub(crate) stats: ScanStats,
    /// When set, every scanned text is kept here too (for comparisons with other extractors).
    pub(crate) texts: Option<Vec<ScannedText>>,
}

impl Default for Collector {
    fn default() -> Self {
        Collector {
            index: HashMap::new(),
            chain: Vec::new(),
            hasher: std::hash::RandomState::new(),
            max_indicators: MAX_INDICATORS,
            dropped: 0,
            indicators: Vec::new(),
            tlp: Vec::new(),
            file_names: Vec::new(),
            links: Vec::new(),
            stats: ScanStats::default(),
            texts: None,
        }
    }
}

/// A text the scanners read, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScannedText {
    /// Where the text came from (`defanged` and `derived_from` are unused).
    pub location: Location,
    /// The decoded text.
    pub text: String,
}

impl Collector {
    fn add(
        &mut self,
        kind: IndicatorKind,
        value: String,
        unicode: Option<String>,
        location: Location,
    ) {
        let defanged = location.defanged;
        let hash = std::hash::BuildHasher::hash_one(&self.hasher, (kind, value.as_str()));
        let mut next = self.index.get(&hash).copied().unwrap_or(NO_INDICATOR);
        while next != NO_INDICATOR {
            let i = next as usize;
            let indicator = &mut self.indicators[i];
            if indicator.kind == kind && indicator.value == value {
                indicator.occurrences = indicator.occurrences.saturating_add(1);
                indicator.defanged |= defanged;
                if indicator.unicode.is_none() {
                    indicator.unicode = unicode;
                }
                if indicator.locations.len() < MAX_LOCATIONS
                    && !indicator.locations.contains(&location)
                {
                    indicator.locations.push(location);
                }
                return;
            }
            next = self.chain[i];
        }
        if self.indicators.len() >= self.max_indicators {
            self.dropped += 1;
            return;
        }
        let new = u32::try_from(self.indicators.len()).unwrap_or(NO_INDICATOR);
        self.chain
            .push(self.index.insert(hash, new).unwrap_or(NO_INDICATOR));
        self.indicators.push(Indicator {
            kind,
            value,
            unicode,
            defanged,
            occurrences: 1,
            locations: vec![location],
        });
    }

    fn add_domain(&mut self, domain: DomainName, location: Location) {
        self.add(
            IndicatorKind::Domain,
            domain.ascii,
            domain.unicode,
            location,
        );
    }

    fn add_host(&mut self, host: &Host, origin: &Origin, defanged: bool, via: IndicatorKind) {
        let location = origin.location(defanged, Some(via));
        match host {
            Host::Domain(d) => self.add_domain(d.clone(), location),
            Host::Ip(IpAddr::V4(ip)) => {
                self.add(IndicatorKind::Ipv4, ip.to_string(), None, location)
            }
            Host::Ip(IpAddr::V6(ip)) => {
                self.add(IndicatorKind::Ipv6, ip.to_string(), None, location)
            }
        }
    }

    fn add_url(&mut self, url: NormalUrl, origin: &Origin, defanged: bool) {
        self.add_host(&url.host, origin, defanged, IndicatorKind::Url);
        self.add(
            IndicatorKind::Url,
            url.url,
            url.unicode,
            origin.location(defanged, None),
        );
    }

    /// Adds an email address given as a whole (a header address); ignored if not valid.
    pub(crate) fn add_email_address(&mut self, address: &str, origin: &Origin) {
        if let Some((local, domain)) = address.trim().rsplit_once('@')
            && let Some(email) = email(local, domain)
        {
            self.add_email(email, origin, false);
        }
    }

    fn add_email(&mut self, email: Email, origin: &Origin, defanged: bool) {
        let unicode = email
            .domain
            .unicode
            .as_ref()
            .map(|u| format!("{}@{u}", email.local));
        let value = format!("{}@{}", email.local, email.domain.ascii);
        self.add(
            IndicatorKind::Domain,
            email.domain.ascii.clone(),
            email.domain.unicode.clone(),
            origin.location(defanged, Some(IndicatorKind::Email)),
        );
        self.add(
            IndicatorKind::Email,
            value,
            unicode,
            origin.location(defanged, None),
        );
    }

    pub(crate) fn add_file_name(&mut self, name: &str, location: Location) {
        if self.file_names.len() >= MAX_MENTIONS {
            return;
        }
        let mention = FileNameMention {
            name: name.to_string(),
            location,
        };
        if !self.file_names.contains(&mention) {
            self.file_names.push(mention);
        }
    }

    fn add_tlp(&mut self, level: Tlp, location: Location) {
        if self.tlp.len() < MAX_MENTIONS {
            self.tlp.push(TlpMarking { level, location });
        }
    }
}

/// Scans a plain text (a `text/*` body, a subject, a header value, a text attachment).
pub(crate) fn scan_text(text: &str, origin: &Origin, out: &mut Collector) {
    record_text(text, origin, out);
    for chunk in chunks(text) {
        out.stats.chunks += 1;
        let refanged = refang::refang(chunk);
        scan_refanged(&refanged, origin, out);
    }
}

fn record_text(text: &str, origin: &Origin, out: &mut Collector) {
    if let Some(texts) = &mut out.texts {
        texts.push(ScannedText {
            location: origin.location(false, None),
            text: text.to_string(),
        });
    }
    out.stats.texts += 1;
    out.stats.bytes += text.len() as u64;
}

/// Scans many short texts (header values, HTML attribute values) as one: they are refanged one
/// by one and joined by newlines (no indicator crosses a newline), so the scanners run once per
/// [`CHUNK`] rather than once per text; each match is credited to the text it lies in.
pub(crate) fn scan_texts<'t>(
    texts: impl IntoIterator<Item = (Origin, &'t str)>,
    out: &mut Collector,
) {
    let mut batch = Batch::default();
    for (origin, text) in texts {
        if text.len() >= CHUNK {
            batch.flush(out);
            scan_text(text, &origin, out);
            continue;
        }
        if batch.text.len() + text.len() + 1 > CHUNK {
            batch.flush(out);
        }
        record_text(text, &origin, out);
        let refanged = refang::refang(text);
        let base = batch.text.len();
        batch.starts.push(base);
        batch.origins.push(origin);
        batch.text.push_str(&refanged.text);
        batch
            .spans
            .extend(refanged.spans.iter().map(|s| s.start + base..s.end + base));
        batch.text.push('\n');
    }
    batch.flush(out);
}

/// Texts joined for one scan.
#[derive(Default)]
struct Batch {
    text: String,
    spans: Vec<Range<usize>>,
    starts: Vec<usize>,
    origins: Vec<Origin>,
}

impl Batch {
    fn flush(&mut self, out: &mut Collector) {
        if self.origins.is_empty() {
            return;
        }
        out.stats.chunks += 1;
        let batch = std::mem::take(self);
        let refanged = Refanged {
            text: std::borrow::Cow::Borrowed(&batch.text),
            spans: batch.spans,
        };
        let segments = Segments {
            starts: batch.starts,
            origins: batch.origins,
        };
        scan_refanged(&refanged, &segments, out);
    }
}

/// Which text a position of scanned text came from.
trait OriginAt {
    fn at(&self, pos: usize) -> &Origin;
}

impl OriginAt for Origin {
    fn at(&self, _pos: usize) -> &Origin {
        self
    }
}

/// The origins of the texts of a [`Batch`], by start offset.
struct Segments {
    starts: Vec<usize>,
    origins: Vec<Origin>,
}

impl OriginAt for Segments {
    fn at(&self, pos: usize) -> &Origin {
        let i = self.starts.partition_point(|&s| s <= pos).saturating_sub(1);
        &self.origins[i.min(self.origins.len() - 1)]
    }
}

/// Scans an HTML document: visible text, `href`/`src`/`action` values, and its links.
/// `origin.source` is the source used for the visible text (`Html`, or `Attachment` for a named
/// HTML attachment).
pub(crate) fn scan_html(document: &str, origin: &Origin, out: &mut Collector) {
    let content = html::content(document);
    scan_text(&content.text, origin, out);
    let attributes = content
        .attributes
        .iter()
        .filter(|a| {
            !starts_with_ignore_case(&a.value, "cid:")
                && !starts_with_ignore_case(&a.value, "data:")
        })
        .map(|a| {
            let attr_origin = origin.with_source(Source::HtmlAttribute {
                attribute: a.name.to_string(),
            });
            (attr_origin, a.value.as_str())
        });
    scan_texts(attributes, out);
    for link in &content.links {
        check_link(link, origin, out);
    }
}

/// Flags a link whose visible text shows another host than its target (README rule 6), and
/// records a link text that is a whole file name (`Q4 budget review.xlsx`).
fn check_link(link: &html::Link, origin: &Origin, out: &mut Collector) {
    if link.text.is_empty() {
        return;
    }
    if let Some(name) = whole_file_name(&link.text) {
        out.add_file_name(name, origin.location(false, None));
    }
    let Some(shown) = text_host(&link.text) else {
        return;
    };
    let href: String = link
        .href
        .chars()
        .filter(|c| !matches!(c, '\t' | '\r' | '\n'))
        .collect();
    let refanged = refang::refang(href.trim());
    let Some(target) = urls::normalize(&refanged.text) else {
        return;
    };
    if target.host.key() != shown.key() && out.links.len() < MAX_MENTIONS {
        let mismatch = LinkMismatch {
            href: target.url,
            text: link.text.clone(),
            location: origin.location(false, None),
        };
        if !out
            .links
            .iter()
            .any(|l| l.href == mismatch.href && l.text == mismatch.text)
        {
            out.links.push(mismatch);
        }
    }
}

/// The host a link's visible text shows: its first URL's host, else its first domain name.
fn text_host(text: &str) -> Option<Host> {
    let refanged = refang::refang(text);
    let text = refanged.text.as_ref();
    for m in URL.find_iter(text) {
        let candidate = &text[m.start()..m.start() + urls::trim_end(m.as_str())];
        if let Some(url) = urls::normalize(candidate) {
            return Some(url.host);
        }
    }
    let bytes = text.as_bytes();
    for m in DOMAIN.find_iter(bytes) {
        if let Some(domain) = domain_at(bytes, m.range(), &refanged, &mut ScanStats::default()) {
            return Some(Host::Domain(domain));
        }
    }
    for m in EMAIL.find_iter(bytes) {
        if let Some(found) = email_at(bytes, m.range()) {
            return Some(Host::Domain(found.domain));
        }
    }
    for m in IPV4.find_iter(bytes) {
        if let Some(ip) = std::str::from_utf8(m.as_bytes()).ok().and_then(hosts::ipv4) {
            return Some(Host::Ip(IpAddr::V4(ip)));
        }
    }
    None
}

/// Words that start a link label describing an action on a file rather than naming it.
const LABEL_VERBS: &[&str] = &[
    "download",
    "open",
    "view",
    "click",
    "see",
    "get",
    "attached",
    "attachment",
    "file",
    "here",
    "read",
    "review",
];

/// A link label or plain-text label that is a whole file name with spaces in it
/// (`Q4 budget review.xlsx`).
fn whole_file_name(label: &str) -> Option<&str> {
    let label = label.trim();
    let (stem, ext) = label.rsplit_once('.')?;
    let words: Vec<&str> = label.split_whitespace().collect();
    let starts_with_verb = words
        .first()
        .is_some_and(|w| LABEL_VERBS.iter().any(|v| v.eq_ignore_ascii_case(w)));
    let plausible = words.len() > 1
        && words.len() <= 6
        && !starts_with_verb
        && !stem.trim().is_empty()
        && label.chars().count() <= NAME_WINDOW
        && names::is_file_extension(ext)
        && !label.contains("://")
        && !label.contains(['<', '>', '@', '/', '\\', ':']);
    plausible.then_some(label)
}

/// Splits `text` into pieces of at most [`CHUNK`] bytes, cut after a newline (else after a
/// space, else at a character boundary).
fn chunks(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() <= CHUNK {
            let piece = rest;
            rest = "";
            return Some(piece);
        }
        let mut limit = CHUNK;
        while !rest.is_char_boundary(limit) {
            limit -= 1;
        }
        let window = &rest[..limit];
        let cut = window
            .rfind('\n')
            .or_else(|| window.rfind(' '))
            .map_or(limit, |i| i + 1);
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

/// Blanks `range` of the working buffer so later scanners do not see it again.
fn mask(buf: &mut [u8], range: Range<usize>) {
    if let Some(slice) = buf.get_mut(range) {
        slice.fill(b' ');
    }
}

fn scan_refanged(refanged: &Refanged<'_>, origins: &dyn OriginAt, out: &mut Collector) {
    let text = refanged.text.as_ref();
    let mut buf = text.as_bytes().to_vec();
    // Cheap tests that let whole passes be skipped.
    let has_at = memchr_contains(text, b'@');
    let has_dot = memchr_contains(text, b'.');
    let has_colon = memchr_contains(text, b':');

    // 1. URLs: everything inside one is part of it, except its host (README rule 3).
    let mut from = 0;
    while let Some(m) = URL.find_at(text, from) {
        out.stats.candidates += 1;
        let start = m.start();
        // A match running on past a line break written out (`\n`) holds another URL after
        // it, perhaps: the rest is searched again.
        from = urls::escape_at(m.as_str()).map_or(m.end(), |cut| start + cut + 2);
        if char_before(text.as_bytes(), start).is_some_and(|c| c.is_ascii_alphanumeric())
            && !urls::ends_with_escape(&text[..start])
        {
            continue;
        }
        let end = start + urls::trim_end(m.as_str());
        out.stats.checked_bytes += (end - start) as u64;
        let range = start..end;
        if let Some(url) = urls::normalize(&text[range.clone()]) {
            let origin = origins.at(start);
            out.add_url(url, origin, refanged.touches(&range));
            let plain = matches!(origin.source, Source::Text | Source::Attachment { .. });
            if plain && text[..start].ends_with('<') {
                plain_link_label(text, start - 1, origin, out);
            }
        }
        mask(&mut buf, range);
    }

    // 2. Email addresses (a local part such as `cfo.office` is never a domain).
    let mut email_ranges = Vec::new();
    for m in EMAIL.find_iter(if has_at { &buf[..] } else { &[] }) {
        out.stats.candidates += 1;
        out.stats.checked_bytes += m.len() as u64;
        let range = m.range();
        if let Some(found) = email_at(&buf, range.clone()) {
            out.add_email(found, origins.at(range.start), refanged.touches(&range));
        }
        email_ranges.push(range);
    }
    for range in email_ranges {
        mask(&mut buf, range);
    }

    // TLP markings, outside URLs and addresses (`.../TLP-RED-report.pdf` is not a marking).
    for (level, at) in tlp::markings(text) {
        // Blanked in `buf`: inside a URL or an address.
        let masked = buf.get(at) == Some(&b' ') && text.as_bytes().get(at) != Some(&b' ');
        if !masked {
            out.add_tlp(level, origins.at(at).location(false, None));
        }
    }

    // 3. IPv6 addresses and networks (before IPv4, which they may embed).
    let mut v6_ranges = Vec::new();
    for m in IPV6.find_iter(if has_colon { &buf[..] } else { &[] }) {
        out.stats.candidates += 1;
        out.stats.checked_bytes += m.len() as u64;
        if let Some((found, range)) = ipv6_at(&buf, m.range()) {
            let location = origins
                .at(range.start)
                .location(refanged.touches(&range), None);
            match found {
                IpFound::Address(ip) => {
                    out.add(IndicatorKind::Ipv6, ip.to_string(), None, location)
                }
                IpFound::Network(net) => out.add(IndicatorKind::Cidr, net, None, location),
            }
            v6_ranges.push(range);
        }
    }
    for range in v6_ranges {
        mask(&mut buf, range);
    }

    // 4. IPv4 addresses and networks.
    for m in IPV4.find_iter(if has_dot { &buf[..] } else { &[] }) {
        out.stats.candidates += 1;
        out.stats.checked_bytes += TOKEN_WINDOW as u64;
        if let Some((found, range)) = ipv4_at(&buf, m.range()) {
            let location = origins
                .at(range.start)
                .location(refanged.touches(&range), None);
            match found {
                IpFound::Address(ip) => {
                    out.add(IndicatorKind::Ipv4, ip.to_string(), None, location)
                }
                IpFound::Network(net) => out.add(IndicatorKind::Cidr, net, None, location),
            }
        }
    }

    // 5. Hashes: a run of exactly 32/40/64/128 hex digits not touching a letter or digit.
    for m in HEX.find_iter(if buf.len() >= 32 { &buf[..] } else { &[] }) {
        out.stats.candidates += 1;
        let kind = match m.len() {
            32 => IndicatorKind::Md5,
            40 => IndicatorKind::Sha1,
            64 => IndicatorKind::Sha256,
            128 => IndicatorKind::Sha512,
            _ => continue,
        };
        if touches_alphanumeric(&buf, m.range()) || m.as_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let value = String::from_utf8_lossy(m.as_bytes()).to_ascii_lowercase();
        let location = origins
            .at(m.start())
            .location(refanged.touches(&m.range()), None);
        out.add(kind, value, None, location);
    }

    // 6. CVE ids.
    for caps in CVE.captures_iter(&buf) {
        out.stats.candidates += 1;
        let (Some(whole), Some(year), Some(number)) = (caps.get(0), caps.get(1), caps.get(2))
        else {
            continue;
        };
        if touches_alphanumeric(&buf, whole.range()) {
            continue;
        }
        let value = format!(
            "CVE-{}-{}",
            String::from_utf8_lossy(year.as_bytes()),
            String::from_utf8_lossy(number.as_bytes())
        );
        out.add(
            IndicatorKind::Cve,
            value,
            None,
            origins.at(whole.start()).location(false, None),
        );
    }

    // 7. Domains (not file names, AV verdicts or parts of longer dotted tokens).
    for m in DOMAIN.find_iter(if has_dot { &buf[..] } else { &[] }) {
        out.stats.candidates += 1;
        if let Some(domain) = domain_at(&buf, m.range(), refanged, &mut out.stats) {
            let location = origins
                .at(m.start())
                .location(refanged.touches(&m.range()), None);
            out.add_domain(domain, location);
        }
    }

    // 8. File names written in the text.
    for m in FILE_NAME.find_iter(if has_dot { &buf[..] } else { &[] }) {
        out.stats.candidates += 1;
        if let Some(name) = file_name_at(&buf, m.range(), refanged) {
            out.add_file_name(name, origins.at(m.start()).location(false, None));
        }
    }
}

/// Outlook's plain-text rendering of a link is `label<url>`: a label that is a whole file name
/// (with spaces) is a file name (the `<` is at `lt`).
fn plain_link_label(text: &str, lt: usize, origin: &Origin, out: &mut Collector) {
    let window_start = lt.saturating_sub(NAME_WINDOW);
    let mut start = window_start;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let before = &text[start..lt];
    let line = before.rsplit(['\n', '>']).next().unwrap_or(before);
    if let Some(name) = whole_file_name(line) {
        out.add_file_name(name, origin.location(false, None));
    }
}

/// Whether `text` holds byte `b` (a SIMD `memchr` underneath).
fn memchr_contains(text: &str, b: u8) -> bool {
    text.as_bytes().contains(&b)
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len()
        && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// The character just before byte `i` (which must be a char boundary), if any.
fn char_before(buf: &[u8], i: usize) -> Option<char> {
    let start = i.saturating_sub(4);
    let window = buf.get(start..i)?;
    // Find the last complete UTF-8 sequence in the window.
    (0..window.len()).rev().find_map(|j| {
        std::str::from_utf8(&window[j..])
            .ok()
            .and_then(|s| s.chars().next())
    })
}

/// The character starting at byte `i`, if any.
fn char_at(buf: &[u8], i: usize) -> Option<char> {
    let window = buf.get(i..(i + 4).min(buf.len()))?;
    (1..=window.len())
        .find_map(|j| std::str::from_utf8(&window[..j]).ok())
        .and_then(|s| s.chars().next())
}

fn touches_alphanumeric(buf: &[u8], range: Range<usize>) -> bool {
    char_before(buf, range.start).is_some_and(char::is_alphanumeric)
        || char_at(buf, range.end).is_some_and(char::is_alphanumeric)
}

/// An email address split into its local part and validated domain.
struct Email {
    local: String,
    domain: DomainName,
}

fn email(local: &str, domain: &str) -> Option<Email> {
    let local = local.trim_start_matches('.');
    let valid_local =
        !local.is_empty() && local.len() <= 64 && !local.ends_with('.') && !local.contains("..");
    if !valid_local {
        return None;
    }
    Some(Email {
        local: local.to_string(),
        domain: hosts::domain(domain)?,
    })
}

fn email_at(buf: &[u8], range: Range<usize>) -> Option<Email> {
    let text = std::str::from_utf8(buf.get(range.clone())?).ok()?;
    // `cid:image001.png@01DB4A2C.9F3E8D10` is a content-id reference, not an address.
    let before = &buf[range.start.saturating_sub(4)..range.start];
    if before.eq_ignore_ascii_case(b"cid:") {
        return None;
    }
    if !domain_end_ok(buf, range.end) {
        return None;
    }
    let (local, domain) = text.rsplit_once('@')?;
    email(local, domain)
}

/// Whether a host name may end at `end`: not glued to ASCII letters, digits, `-`, `_` or `@`,
/// and not followed by `.` and more of a dotted token.
fn domain_end_ok(buf: &[u8], end: usize) -> bool {
    match buf.get(end) {
        None => true,
        Some(b) if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'@') => false,
        Some(b'.') => !buf
            .get(end + 1)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b >= 0x80),
        Some(_) => true,
    }
}

enum IpFound<A> {
    Address(A),
    Network(String),
}

/// A `/prefix` right after `end`, at most `max`, not followed by more digits or letters;
/// returns the prefix and the end of it.
fn prefix_after(buf: &[u8], end: usize, max: u8) -> Option<(u8, usize)> {
    if buf.get(end) != Some(&b'/') {
        return None;
    }
    let digits = buf[end + 1..]
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || digits > 3 {
        return None;
    }
    let stop = end + 1 + digits;
    if buf
        .get(stop)
        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'.')
    {
        return None;
    }
    let prefix: u8 = std::str::from_utf8(&buf[end + 1..stop])
        .ok()?
        .parse()
        .ok()?;
    (prefix <= max).then_some((prefix, stop))
}

fn ipv4_at(buf: &[u8], range: Range<usize>) -> Option<(IpFound<Ipv4Addr>, Range<usize>)> {
    let before = char_before(buf, range.start);
    if before.is_some_and(|c| c.is_alphanumeric() || matches!(c, '.' | '_')) {
        return None;
    }
    match buf.get(range.end) {
        Some(b) if b.is_ascii_alphanumeric() || *b == b'_' => return None,
        Some(b'.') if buf.get(range.end + 1).is_some_and(u8::is_ascii_digit) => return None,
        _ => {}
    }
    if after_version_word(buf, range.start) {
        return None;
    }
    let ip = hosts::ipv4(std::str::from_utf8(buf.get(range.clone())?).ok()?)?;
    if let Some((prefix, stop)) = prefix_after(buf, range.end, 32) {
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        let net = Ipv4Addr::from(u32::from(ip) & mask);
        return Some((
            IpFound::Network(format!("{net}/{prefix}")),
            range.start..stop,
        ));
    }
    Some((IpFound::Address(ip), range))
}

/// Whether the dotted quad at `start` follows `v`, `version`, `ver` or `build` (a version
/// number, README rule 3).
fn after_version_word(buf: &[u8], start: usize) -> bool {
    let window = &buf[start.saturating_sub(TOKEN_WINDOW)..start];
    let trimmed_len = window
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b':' | b'#' | b'=' | b'.' | b'('))
        .map_or(0, |i| i + 1);
    let head = &window[..trimmed_len];
    let word_start = head
        .iter()
        .rposition(|b| !b.is_ascii_alphabetic())
        .map_or(0, |i| i + 1);
    let word = &head[word_start..];
    [b"v".as_slice(), b"ver", b"version", b"build"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w))
}

fn ipv6_at(buf: &[u8], range: Range<usize>) -> Option<(IpFound<Ipv6Addr>, Range<usize>)> {
    let mut end = range.end;
    // A sentence may end right after the address.
    while end > range.start && buf[end - 1] == b'.' {
        end -= 1;
    }
    if end >= range.start + 2 && buf[end - 1] == b':' && buf[end - 2] != b':' {
        end -= 1;
    }
    let start = range.start;
    let text = std::str::from_utf8(buf.get(start..end)?).ok()?;
    let before = char_before(buf, start);
    if before.is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | ':')) {
        return None;
    }
    if buf
        .get(end)
        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
    {
        return None;
    }
    let bracketed = before == Some('[') && buf.get(end) == Some(&b']');
    let groups = text.split(':').filter(|g| !g.is_empty()).count();
    let hex_digits = text.bytes().filter(u8::is_ascii_hexdigit).count();
    if groups < 2 || (hex_digits < 5 && !bracketed) {
        return None;
    }
    let ip = hosts::ipv6(text)?;
    if let Some((prefix, stop)) = prefix_after(buf, end, 128) {
        let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
        let net = Ipv6Addr::from(u128::from(ip) & mask);
        return Some((IpFound::Network(format!("{net}/{prefix}")), start..stop));
    }
    Some((IpFound::Address(ip), start..end))
}

/// Validates a domain candidate at `range` of the working buffer.
/// Whether `buf[..start]` ends with a URL scheme other than http(s) and its `://`
/// (`ftp://`, `tcp://`, `smb://`): that host is a domain though the value is no URL (an
/// http(s) URL was masked before the domains are looked for).
fn after_other_scheme(buf: &[u8], start: usize) -> bool {
    let Some(before) = buf[..start].strip_suffix(b"://") else {
        return false;
    };
    let scheme_start = before
        .iter()
        .rposition(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))
        .map_or(0, |i| i + 1);
    let scheme = &before[scheme_start..];
    // RFC 3986: a letter, then letters, digits, `+`, `-`, `.`.
    scheme.first().is_some_and(u8::is_ascii_alphabetic) && scheme.len() <= 16
}

fn domain_at(
    buf: &[u8],
    range: Range<usize>,
    refanged: &Refanged<'_>,
    stats: &mut ScanStats,
) -> Option<DomainName> {
    stats.checked_bytes += (range.len() + 2 * TOKEN_WINDOW) as u64;
    let mut start = range.start;
    let end = range.end;
    // Prose in a script without spaces (Japanese, Chinese, Korean) may run into an ASCII name:
    // the name starts where the script changes.
    let first_label_end = buf[start..end]
        .iter()
        .position(|&b| b == b'.')
        .map_or(end, |i| start + i);
    let first_label = std::str::from_utf8(&buf[start..first_label_end]).ok()?;
    let mut after_script_change = false;
    if let Some((i, c)) = first_label.char_indices().rev().find(|(_, c)| is_cjk(*c))
        && first_label[i + c.len_utf8()..]
            .bytes()
            .any(|b| b.is_ascii_alphanumeric())
    {
        start += i + c.len_utf8();
        after_script_change = true;
    }
    let after_scheme = after_other_scheme(buf, start);
    if !after_script_change
        && !after_scheme
        && let Some(c) = char_before(buf, start)
        && (c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '/' | '\\' | '%' | '&'))
    {
        return None;
    }
    if !domain_end_ok(buf, end) {
        return None;
    }
    let candidate = std::str::from_utf8(&buf[start..end]).ok()?;
    let defanged = refanged.touches(&(start..end));
    let (window_start, window_end) = token_bounds(buf, start, end);
    let token = std::str::from_utf8(&buf[window_start..window_end]).ok()?;
    // `W32/Agent.CA` is a verdict; `tcp://c2.example.net` a host.
    if !defanged
        && !after_scheme
        && names::is_av_name(token, start - window_start, end - window_start)
    {
        return None;
    }
    let domain = hosts::domain(candidate)?;
    // A bare name ending in a file extension is a file (`update.py`), unless it was defanged or
    // is followed by a path (`docs-share.zip/get`).
    if !defanged && names::is_file_extension(domain.tld()) && buf.get(end) != Some(&b'/') {
        return None;
    }
    Some(domain)
}

/// The whitespace-delimited word around `start..end`, at most [`TOKEN_WINDOW`] bytes each side.
fn token_bounds(buf: &[u8], start: usize, end: usize) -> (usize, usize) {
    let lo = start.saturating_sub(TOKEN_WINDOW);
    let left = buf[lo..start]
        .iter()
        .rposition(|b| b.is_ascii_whitespace())
        .map_or(lo, |i| lo + i + 1);
    let hi = (end + TOKEN_WINDOW).min(buf.len());
    let right = buf[end..hi]
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .map_or(hi, |i| end + i);
    // Keep the window on character boundaries.
    let mut left = left;
    while left < start && (buf[left] & 0xC0) == 0x80 {
        left += 1;
    }
    let mut right = right;
    while right > end && right < buf.len() && (buf[right] & 0xC0) == 0x80 {
        right -= 1;
    }
    (left, right)
}

fn is_cjk(c: char) -> bool {
    matches!(c,
        '\u{3040}'..='\u{30ff}' // Hiragana, Katakana
        | '\u{3400}'..='\u{4dbf}' | '\u{4e00}'..='\u{9fff}' | '\u{f900}'..='\u{faff}' // Han
        | '\u{ac00}'..='\u{d7af}' | '\u{1100}'..='\u{11ff}' // Hangul
        | '\u{ff66}'..='\u{ff9f}') // half-width Katakana
}

/// Validates a file-name candidate.
fn file_name_at<'b>(
    buf: &'b [u8],
    range: Range<usize>,
    refanged: &Refanged<'_>,
) -> Option<&'b str> {
    if refanged.touches(&range) {
        return None;
    }
    if let Some(c) = char_before(buf, range.start)
        && matches!(c, '.' | '@' | '%')
    {
        return None;
    }
    if !domain_end_ok(buf, range.end) || buf.get(range.end) == Some(&b'/') {
        return None;
    }
    std::str::from_utf8(&buf[range]).ok()
}

/// Indicators, TLP markings and file names found in one text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextExtraction {
    /// The indicators, de-duplicated.
    pub indicators: Vec<Indicator>,
    /// The most restrictive TLP marking.
    pub tlp: Option<Tlp>,
    /// File names written in the text, in order of appearance.
    pub file_names: Vec<String>,
    /// Work counters.
    pub stats: ScanStats,
}

impl TextExtraction {
    /// The sorted values of one kind.
    pub fn values(&self, kind: IndicatorKind) -> Vec<&str> {
        let mut values: Vec<&str> = self
            .indicators
            .iter()
            .filter(|i| i.kind == kind)
            .map(|i| i.value.as_str())
            .collect();
        values.sort_unstable();
        values
    }
}

/// Extracts indicators from a text as if it were a `text/plain` body of the top-level message.
pub fn extract_text(text: &str) -> TextExtraction {
    let mut out = Collector::default();
    let origin = Origin {
        depth: 0,
        part: "1".to_string(),
        source: Source::Text,
    };
    scan_text(text, &origin, &mut out);
    TextExtraction {
        indicators: out.indicators,
        tlp: out.tlp.iter().map(|m| m.level).max(),
        file_names: out.file_names.into_iter().map(|m| m.name).collect(),
        stats: out.stats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str, kind: IndicatorKind) -> Vec<String> {
        extract_text(text)
            .values(kind)
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn urls_table() {
        let cases: &[(&str, &[&str])] = &[
            ("see https://a.example.com/x.", &["https://a.example.com/x"]),
            (
                "«hxxps://f.example[.]org/p/v»",
                &["https://f.example.org/p/v"],
            ),
            (
                "「hxxps://d.example[.]com/jp/r」",
                &["https://d.example.com/jp/r"],
            ),
            (
                "“hxxps://e.example(.)com/w/c”",
                &["https://e.example.com/w/c"],
            ),
            (
                "a,https://f.example.org/d/abc,Credential",
                &["https://f.example.org/d/abc"],
            ),
            (
                "x <https://t.example.com/x?id=42>.",
                &["https://t.example.com/x?id=42"],
            ),
            (
                "http://[2001:db8:4::15]:8080/c2/beacon",
                &["http://[2001:db8:4::15]:8080/c2/beacon"],
            ),
            ("xhttps://nope.example.com/", &[]),
            ("https://localhost/x", &[]),
            // Line breaks written out as escapes, as a broken template leaves them.
            (
                r"Join Now - https://criches.example.com/dcf8a9d06\n\nhttps://sirv.example.org/b?x=1\n",
                &[
                    "https://criches.example.com/dcf8a9d06",
                    "https://sirv.example.org/b?x=1",
                ],
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(values(text, IndicatorKind::Url), *expected, "{text}");
        }
    }

    #[test]
    fn nothing_inside_a_url_is_extracted_separately() {
        let e = extract_text(
            "https://t.example.net/o/49bdfb3c68212eba0c5414fb6099e54e1eb29739189e4923b7cf0ac575c53368.gif?u=a@example.org",
        );
        assert!(e.values(IndicatorKind::Sha256).is_empty());
        assert!(e.values(IndicatorKind::Email).is_empty());
        assert_eq!(e.values(IndicatorKind::Domain), ["t.example.net"]);
    }

    #[test]
    fn domains_table() {
        let cases: &[(&str, &[&str])] = &[
            (
                "exec-payments.example(.)com’s cert",
                &["exec-payments.example.com"],
            ),
            ("www.example.com/help", &["www.example.com"]),
            ("W32/Agent.CA!tr", &[]),
            ("Trojan-Downloader.O97M.Agent.CA", &[]),
            ("PUA.Win32.Bundler.A and Trojan.GenericKD.4711", &[]),
            ("run update.py and readme.md then q3-statement.zip", &[]),
            ("payroll-update[.]zip", &["payroll-update.zip"]),
            (
                "・delivery-check.example[.]com",
                &["delivery-check.example.com"],
            ),
            ("添付ファイル（不在通知.zip）", &[]),
            (
                "status bar shows xn--exmple-4nf.com.",
                &["xn--exmple-4nf.com"],
            ),
            ("T1566.001 version 4.8.2", &[]),
            (
                "ceo.office[at]exec-mail.example[.]com",
                &["exec-mail.example.com"],
            ),
            // The host after another scheme than http(s) is a domain; a path's is not.
            ("tcp://c3.example.net", &["c3.example.net"]),
            ("C2: tcp://c3.example.net:4444", &["c3.example.net"]),
            ("ftp://files.example.org/x.zip", &["files.example.org"]),
            (
                "smb://share.example.com/ and ws://w.example.net",
                &["share.example.com", "w.example.net"],
            ),
            ("a.example.com/b.example.net/c", &["a.example.com"]),
            ("x/://b.example.net", &[]),
        ];
        for (text, expected) in cases {
            assert_eq!(values(text, IndicatorKind::Domain), *expected, "{text}");
        }
    }

    #[test]
    fn ips_and_cidrs_table() {
        type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);
        let cases: &[Case<'_>] = &[
            ("198.51.100[.]23:8443", &["198.51.100.23"], &[], &[]),
            (
                "Scan engine version 1.2.3.4, v1.2.3.4, build 10.0.0.1",
                &[],
                &[],
                &[],
            ),
            ("signatures 2026.12.01.03", &[], &[], &[]),
            (
                "203.0.113[.]0/24 and 198.51.100.0/24",
                &[],
                &[],
                &["198.51.100.0/24", "203.0.113.0/24"],
            ),
            (
                "2001:DB8:7C1:0:0:0:0:30 and [2001:db8:4::15]:8080",
                &[],
                &["2001:db8:4::15", "2001:db8:7c1::30"],
                &[],
            ),
            (
                "2001:db8:7c1::/48 and the /48",
                &[],
                &[],
                &["2001:db8:7c1::/48"],
            ),
            ("generated 2026-12-02T06:00:00Z", &[], &[], &[]),
            ("MAC 00:1A:2B:3C:4D:5E", &[], &[], &[]),
        ];
        for (text, v4, v6, cidrs) in cases {
            assert_eq!(values(text, IndicatorKind::Ipv4), *v4, "{text}");
            assert_eq!(values(text, IndicatorKind::Ipv6), *v6, "{text}");
            assert_eq!(values(text, IndicatorKind::Cidr), *cidrs, "{text}");
        }
    }

    #[test]
    fn emails_table() {
        let cases: &[(&str, &[&str])] = &[
            (
                "‘cfo.office@exec-payments.example(.)com’",
                &["cfo.office@exec-payments.example.com"],
            ),
            (
                "\"HR\" <hr-notice[at]secure.example[.]org>",
                &["hr-notice@secure.example.org"],
            ),
            (
                "payments(at)remit-advice[.]example[.]org",
                &["payments@remit-advice.example.org"],
            ),
            (
                "mailto:abuse@holding.example.org?subject=x",
                &["abuse@holding.example.org"],
            ),
            ("cid:image001.png@01DB4A2C.9F3E8D10", &[]),
            ("cid:psirt-logo@examplesoft.example.com", &[]),
            ("support@exаmple.com", &["support@xn--exmple-4nf.com"]),
            ("phishing@pot", &[]),
        ];
        for (text, expected) in cases {
            assert_eq!(values(text, IndicatorKind::Email), *expected, "{text}");
        }
    }

    #[test]
    fn hashes_and_cves_table() {
        let md5 = "e3551a7d989183cfe099b6cbb058d7fb";
        let e = extract_text(&format!(
            "MD5 {md5}\nSHA256:{}\nx{md5}\n{}\nCVE-2026-31337, cve-2026-20999 CVE-2026-123 CVE-2026-1000423 CWE-79",
            "C".repeat(64),
            "1".repeat(32)
        ));
        assert_eq!(e.values(IndicatorKind::Md5), [md5]);
        assert_eq!(e.values(IndicatorKind::Sha256), ["c".repeat(64).as_str()]);
        assert_eq!(
            e.values(IndicatorKind::Cve),
            ["CVE-2026-1000423", "CVE-2026-20999", "CVE-2026-31337"]
        );
    }

    #[test]
    fn file_names_table() {
        let e = extract_text(
            "Open q3-statement.zip, run update.py (see notes.md). „Rechnung_RE-1.html“ and glasswing.tar.gz; https://x.example.com/index.html",
        );
        assert_eq!(
            e.file_names,
            [
                "q3-statement.zip",
                "update.py",
                "notes.md",
                "Rechnung_RE-1.html",
                "glasswing.tar.gz"
            ]
        );
    }

    #[test]
    fn defanged_is_flagged() {
        let e = extract_text("hxxps://a.example[.]com/x and https://b.example.com/");
        let flagged: Vec<(&str, bool)> = e
            .indicators
            .iter()
            .filter(|i| i.kind == IndicatorKind::Url)
            .map(|i| (i.value.as_str(), i.defanged))
            .collect();
        assert_eq!(
            flagged,
            [
                ("https://a.example.com/x", true),
                ("https://b.example.com/", false)
            ]
        );
    }

    #[test]
    fn tlp_inside_a_url_is_not_a_marking() {
        let e = extract_text("report: https://x.example.com/TLP-RED-report.pdf (TLP:GREEN)");
        assert_eq!(e.tlp, Some(Tlp::Green));
        let e = extract_text("mail tlp-red@example.com");
        assert_eq!(e.tlp, None);
    }

    #[test]
    fn chunks_cover_the_text() {
        let text = format!("{}\n{}", "a".repeat(CHUNK), "b".repeat(CHUNK * 2 + 7));
        let joined: String = chunks(&text).collect();
        assert_eq!(joined, text);
        assert!(chunks(&text).all(|c| c.len() <= CHUNK));
    }
}
