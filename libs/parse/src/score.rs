//! Scoring summaries against answer keys (labelled README rule 7): per indicator type, true
//! positives, false positives and misses; trap hits (`not_iocs` found in any set); and exact
//! matches of `tlp`, `file_names`, `link_mismatches` and `attachments` per message.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::record::IndicatorKind;
use crate::summary::{Summary, SummaryAttachment, SummaryLink};

/// An answer key (`NAME.expected.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AnswerKey {
    /// The `.eml` file name.
    pub message: String,
    /// Expected URLs.
    pub urls: Vec<String>,
    /// Expected domains.
    pub domains: Vec<String>,
    /// Expected IPv4 addresses.
    pub ipv4: Vec<String>,
    /// Expected IPv6 addresses.
    pub ipv6: Vec<String>,
    /// Expected CIDRs.
    pub cidrs: Vec<String>,
    /// Expected emails.
    pub emails: Vec<String>,
    /// Expected MD5 hashes.
    pub md5: Vec<String>,
    /// Expected SHA-1 hashes.
    pub sha1: Vec<String>,
    /// Expected SHA-256 hashes.
    pub sha256: Vec<String>,
    /// Expected SHA-512 hashes.
    pub sha512: Vec<String>,
    /// Expected CVE ids.
    pub cves: Vec<String>,
    /// Expected TLP marking.
    pub tlp: Option<String>,
    /// Expected file names.
    pub file_names: Vec<String>,
    /// Strings that must not appear in any set.
    pub not_iocs: Vec<String>,
    /// Expected link mismatches.
    pub link_mismatches: Vec<SummaryLink>,
    /// Expected attachments.
    pub attachments: Vec<SummaryAttachment>,
    /// The intended MIME tree.
    pub structure: String,
}

impl AnswerKey {
    /// The expected set of one kind.
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
}

/// True positives, false positives and misses of one type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// In both sets.
    pub tp: u64,
    /// Only in the product's set.
    pub fp: u64,
    /// Only in the key.
    pub fn_: u64,
}

impl Counts {
    /// `tp / (tp + fp)`, 1 when nothing was reported.
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// `tp / (tp + fn)`, 1 when nothing was expected.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    fn add(&mut self, other: Counts) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.fn_ += other.fn_;
    }
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        1.0
    } else {
        num as f64 / den as f64
    }
}

/// How one message scored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageScore {
    /// The message file name.
    pub message: String,
    /// Values reported but not expected, per type.
    pub false_positives: BTreeMap<IndicatorKind, Vec<String>>,
    /// Values expected but not reported, per type.
    pub misses: BTreeMap<IndicatorKind, Vec<String>>,
    /// `not_iocs` entries found in a set.
    pub trap_hits: Vec<String>,
    /// Whether `tlp` matched.
    pub tlp_ok: bool,
    /// Whether `file_names` matched as a set.
    pub file_names_ok: bool,
    /// Whether `link_mismatches` matched as a set.
    pub link_mismatches_ok: bool,
    /// Whether `attachments` matched, in order.
    pub attachments_ok: bool,
}

/// Figures over a set of messages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scorecard {
    /// Per type.
    pub per_type: BTreeMap<IndicatorKind, Counts>,
    /// Per message.
    pub messages: Vec<MessageScore>,
}

impl Scorecard {
    /// Scores one message and adds it.
    pub fn add(&mut self, key: &AnswerKey, summary: &Summary) {
        let mut score = MessageScore {
            message: key.message.clone(),
            ..MessageScore::default()
        };
        for kind in IndicatorKind::ALL {
            let expected = key.set(kind);
            let found = summary.set(kind);
            let counts = Counts {
                tp: found.iter().filter(|v| expected.contains(v)).count() as u64,
                fp: found.iter().filter(|v| !expected.contains(v)).count() as u64,
                fn_: expected.iter().filter(|v| !found.contains(v)).count() as u64,
            };
            self.per_type.entry(kind).or_default().add(counts);
            let fps: Vec<String> = found
                .iter()
                .filter(|v| !expected.contains(v))
                .cloned()
                .collect();
            let misses: Vec<String> = expected
                .iter()
                .filter(|v| !found.contains(v))
                .cloned()
                .collect();
            if !fps.is_empty() {
                score.false_positives.insert(kind, fps);
            }
            if !misses.is_empty() {
                score.misses.insert(kind, misses);
            }
        }
        score.trap_hits = key
            .not_iocs
            .iter()
            .filter(|trap| {
                IndicatorKind::ALL
                    .iter()
                    .any(|&k| trap_in(trap, k, summary.set(k)))
            })
            .cloned()
            .collect();
        score.tlp_ok = key.tlp == summary.tlp;
        score.file_names_ok = same_set(&key.file_names, &summary.file_names);
        score.link_mismatches_ok = same_set(&key.link_mismatches, &summary.link_mismatches);
        score.attachments_ok = key.attachments == summary.attachments;
        self.messages.push(score);
    }

    /// All types together.
    pub fn overall(&self) -> Counts {
        let mut total = Counts::default();
        for counts in self.per_type.values() {
            total.add(*counts);
        }
        total
    }

    /// How many `not_iocs` entries were found.
    pub fn trap_hits(&self) -> usize {
        self.messages.iter().map(|m| m.trap_hits.len()).sum()
    }

    /// Messages whose TLP matched, out of all.
    pub fn tlp_accuracy(&self) -> (usize, usize) {
        (
            self.messages.iter().filter(|m| m.tlp_ok).count(),
            self.messages.len(),
        )
    }
}

/// Whether a trap equals a value of a set, after that set's normalisation: case-insensitive,
/// except that a URL keeps the case of its path and query.
fn trap_in(trap: &str, kind: IndicatorKind, set: &[String]) -> bool {
    if kind == IndicatorKind::Url {
        let trap = url_case_key(trap);
        return set.iter().any(|v| url_case_key(v) == trap);
    }
    set.iter().any(|v| v.eq_ignore_ascii_case(trap))
}

/// A URL with scheme and authority lower-cased and the rest kept (no other normalisation, so a
/// Safe Links wrapper stays a wrapper).
fn url_case_key(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            format!(
                "{}://{}{}",
                scheme.to_ascii_lowercase(),
                rest[..end].to_ascii_lowercase(),
                &rest[end..]
            )
        }
        None => url.to_string(),
    }
}

fn same_set<T: Ord + Clone>(a: &[T], b: &[T]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_traps() {
        let key = AnswerKey {
            message: "m.eml".into(),
            domains: vec!["a.example.com".into(), "b.example.com".into()],
            not_iocs: vec![
                "Agent.CA".into(),
                "https://X.example.com/P".into(),
                "https://x.example.com/p".into(),
                "https://eur01.safelinks.protection.outlook.com/?url=https%3A%2F%2Fa.example.com"
                    .into(),
            ],
            tlp: Some("TLP:RED".into()),
            ..AnswerKey::default()
        };
        let summary = Summary {
            domains: vec!["a.example.com".into(), "agent.ca".into()],
            urls: vec![
                "https://x.example.com/P".into(),
                "https://a.example.com".into(),
            ],
            tlp: Some("TLP:RED".into()),
            ..Summary::default()
        };
        let mut card = Scorecard::default();
        card.add(&key, &summary);
        let domains = card.per_type[&IndicatorKind::Domain];
        assert_eq!((domains.tp, domains.fp, domains.fn_), (1, 1, 1));
        assert_eq!(card.trap_hits(), 2);
        assert_eq!(card.tlp_accuracy(), (1, 1));
        let overall = card.overall();
        assert_eq!((overall.tp, overall.fp, overall.fn_), (1, 3, 1));
    }
}
