//! The answer-key view of a parsed message: exactly the fields of a key in
//! `../shared/corpus/labelled` (`urls` ... `cves` as sorted sets, `tlp`, `file_names`,
//! `link_mismatches`, `attachments`), holding only what was found in the keys' scope
//! (labelled README rule 1), so a person or a script can compare it with a key as it is.

use serde::{Deserialize, Serialize};

use crate::record::{Attachment, IndicatorKind, MessageRecord, ParsedMessage};

/// The answer-key fields of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// URLs, refanged and normalised, sorted.
    pub urls: Vec<String>,
    /// Domains (A-label), sorted.
    pub domains: Vec<String>,
    /// IPv4 addresses, sorted.
    pub ipv4: Vec<String>,
    /// IPv6 addresses (RFC 5952), sorted.
    pub ipv6: Vec<String>,
    /// CIDR networks, sorted.
    pub cidrs: Vec<String>,
    /// Email addresses, sorted.
    pub emails: Vec<String>,
    /// MD5 hashes written in the text, sorted.
    pub md5: Vec<String>,
    /// SHA-1 hashes written in the text, sorted.
    pub sha1: Vec<String>,
    /// SHA-256 hashes written in the text, sorted.
    pub sha256: Vec<String>,
    /// SHA-512 hashes written in the text, sorted.
    pub sha512: Vec<String>,
    /// CVE ids, sorted.
    pub cves: Vec<String>,
    /// The most restrictive TLP marking, e.g. `TLP:AMBER`.
    pub tlp: Option<String>,
    /// Attachment names at any depth and file names written in the text, sorted.
    pub file_names: Vec<String>,
    /// Link text/target host mismatches, in document order.
    pub link_mismatches: Vec<SummaryLink>,
    /// Every part with a file name, in document order.
    pub attachments: Vec<SummaryAttachment>,
}

/// A link mismatch as an answer key writes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SummaryLink {
    /// Canonical target URL.
    pub href: String,
    /// Visible text.
    pub text: String,
}

/// An attachment as an answer key writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryAttachment {
    /// File name.
    pub filename: String,
    /// `type/subtype`.
    pub content_type: String,
    /// 0 = attached to the top-level message, 1 = inside an attached message, ...
    pub depth: u32,
    /// Size of the decoded body.
    pub size: u64,
    /// MD5 of the decoded body.
    pub md5: String,
    /// SHA-1 of the decoded body.
    pub sha1: String,
    /// SHA-256 of the decoded body.
    pub sha256: String,
}

impl Summary {
    /// The set of one indicator kind.
    pub fn set(&self, kind: IndicatorKind) -> &[String] {
        match kind {
            IndicatorKind::Url => &self.urls,
            IndicatorKind::Domain => &self.domains,
            IndicatorKind::Ipv4 => &self.ipv4,
            IndicatorKind::Ipv6 => &self.ipv6,
            IndicatorKind::Cidr => &self.cidrs,
            IndicatorKind::Email => &self.emails,
            IndicatorKind::Md5 => &self.md5,
            IndicatorKind::Sha1 => &self.sha1,
            IndicatorKind::Sha256 => &self.sha256,
            IndicatorKind::Sha512 => &self.sha512,
            IndicatorKind::Cve => &self.cves,
        }
    }

    fn set_mut(&mut self, kind: IndicatorKind) -> &mut Vec<String> {
        match kind {
            IndicatorKind::Url => &mut self.urls,
            IndicatorKind::Domain => &mut self.domains,
            IndicatorKind::Ipv4 => &mut self.ipv4,
            IndicatorKind::Ipv6 => &mut self.ipv6,
            IndicatorKind::Cidr => &mut self.cidrs,
            IndicatorKind::Email => &mut self.emails,
            IndicatorKind::Md5 => &mut self.md5,
            IndicatorKind::Sha1 => &mut self.sha1,
            IndicatorKind::Sha256 => &mut self.sha256,
            IndicatorKind::Sha512 => &mut self.sha512,
            IndicatorKind::Cve => &mut self.cves,
        }
    }
}

impl ParsedMessage {
    /// The answer-key view of this message.
    pub fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        for indicator in self.indicators.iter().filter(|i| i.in_key_scope()) {
            summary
                .set_mut(indicator.kind)
                .push(indicator.value.clone());
        }
        for kind in IndicatorKind::ALL {
            let set = summary.set_mut(kind);
            set.sort();
            set.dedup();
        }
        summary.tlp = self.tlp.map(|t| t.as_str().to_string());
        let mut names: Vec<String> = self
            .file_names
            .iter()
            .filter(|m| m.location.in_key_scope())
            .map(|m| m.name.clone())
            .collect();
        names.sort();
        names.dedup();
        summary.file_names = names;
        for link in self
            .link_mismatches
            .iter()
            .filter(|l| l.location.in_key_scope())
        {
            let link = SummaryLink {
                href: link.href.clone(),
                text: link.text.clone(),
            };
            if !summary.link_mismatches.contains(&link) {
                summary.link_mismatches.push(link);
            }
        }
        collect_attachments(&self.message, &mut summary.attachments);
        summary
    }
}

/// Pre-order: each attachment, then (for an attached message) the attachments inside it. The
/// recursion is bounded by the parser's message depth limit.
fn collect_attachments(message: &MessageRecord, out: &mut Vec<SummaryAttachment>) {
    for attachment in &message.attachments {
        if let Some(entry) = summary_attachment(attachment) {
            out.push(entry);
        }
        if let Some(inner) = &attachment.message {
            collect_attachments(inner, out);
        }
    }
}

fn summary_attachment(attachment: &Attachment) -> Option<SummaryAttachment> {
    Some(SummaryAttachment {
        filename: attachment.file_name.clone()?,
        content_type: attachment.content_type.clone(),
        depth: attachment.depth,
        size: attachment.size,
        md5: attachment.md5.clone(),
        sha1: attachment.sha1.clone(),
        sha256: attachment.sha256.clone(),
    })
}
