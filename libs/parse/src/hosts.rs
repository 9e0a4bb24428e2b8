//! Host names and addresses: public-suffix validation, IDN conversion (A-label and U-label),
//! and RFC 5952 / dotted-quad normalisation of IP addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A validated domain name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DomainName {
    /// Lower case, A-label (punycode) form.
    pub(crate) ascii: String,
    /// The U-label form, when it differs from `ascii`.
    pub(crate) unicode: Option<String>,
}

impl DomainName {
    /// The top-level label.
    pub(crate) fn tld(&self) -> &str {
        self.ascii.rsplit('.').next().unwrap_or_default()
    }
}

/// A URL host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    Domain(DomainName),
    Ip(IpAddr),
}

impl Host {
    /// The comparable form used for link-mismatch checks.
    pub(crate) fn key(&self) -> String {
        match self {
            Host::Domain(d) => d.ascii.clone(),
            Host::Ip(ip) => ip.to_string(),
        }
    }
}

/// Longest DNS name (RFC 1035 §2.3.4).
const MAX_NAME: usize = 253;
/// Longest DNS label.
const MAX_LABEL: usize = 63;

/// Validates and normalises a host name: every label LDH after IDNA mapping, at least two
/// labels, a top-level label in the public suffix list, and not itself an ICANN public suffix
/// (`co.uk`).
pub(crate) fn domain(candidate: &str) -> Option<DomainName> {
    let candidate = candidate.strip_suffix('.').unwrap_or(candidate);
    if candidate.is_empty() || candidate.len() > MAX_NAME * 4 {
        return None;
    }
    let needs_idna = !candidate.is_ascii() || contains_ignore_case(candidate, "xn--");
    let ascii = if needs_idna {
        idna::domain_to_ascii(candidate).ok()?
    } else {
        candidate.to_ascii_lowercase()
    };
    if ascii.len() > MAX_NAME || !ascii.contains('.') {
        return None;
    }
    for label in ascii.split('.') {
        let ok = !label.is_empty()
            && label.len() <= MAX_LABEL
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return None;
        }
    }
    let tld = ascii.rsplit('.').next()?;
    if tld.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !psl::suffix(tld.as_bytes()).is_some_and(|s| s.is_known()) {
        return None;
    }
    if let Some(suffix) = psl::suffix(ascii.as_bytes())
        && suffix.typ() == Some(psl::Type::Icann)
        && suffix.as_bytes() == ascii.as_bytes()
    {
        return None;
    }
    let unicode = if ascii.contains("xn--") {
        let (unicode, result) = idna::domain_to_unicode(&ascii);
        result.ok()?;
        (unicode != ascii).then_some(unicode)
    } else {
        None
    };
    Some(DomainName { ascii, unicode })
}

/// Parses a dotted quad (no leading zeros, each octet at most 255).
pub(crate) fn ipv4(text: &str) -> Option<Ipv4Addr> {
    text.parse().ok()
}

/// Parses an IPv6 address; `to_string` of the result is the RFC 5952 form.
pub(crate) fn ipv6(text: &str) -> Option<Ipv6Addr> {
    text.parse().ok()
}

/// Parses a URL host: `[v6]`, a dotted quad or a domain name.
pub(crate) fn url_host(text: &str) -> Option<Host> {
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return ipv6(inner).map(|ip| Host::Ip(IpAddr::V6(ip)));
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return ipv4(text).map(|ip| Host::Ip(IpAddr::V4(ip)));
    }
    domain(text).map(Host::Domain)
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_table() {
        type Case<'a> = (&'a str, Option<(&'a str, Option<&'a str>)>);
        let cases: &[Case<'_>] = &[
            ("Login.Example.COM", Some(("login.example.com", None))),
            (
                "payroll-update.example.com.",
                Some(("payroll-update.example.com", None)),
            ),
            ("docs-share.zip", Some(("docs-share.zip", None))),
            (
                "secure-login.exаmple.com",
                Some((
                    "secure-login.xn--exmple-4nf.com",
                    Some("secure-login.exаmple.com"),
                )),
            ),
            (
                "xn--exmple-4nf.com",
                Some(("xn--exmple-4nf.com", Some("exаmple.com"))),
            ),
            ("co.uk", None),
            ("example.invalidtld", None),
            ("agent.a", None),
            ("1.2.3.4", None),
            ("-bad.example.com", None),
            ("under_score.example.com", None),
            ("com", None),
        ];
        for (input, expected) in cases {
            let got = domain(input).map(|d| (d.ascii, d.unicode));
            let want = expected.map(|(a, u)| (a.to_string(), u.map(str::to_string)));
            assert_eq!(got, want, "{input}");
        }
    }

    #[test]
    fn ipv6_is_rfc5952() {
        let cases = [
            ("2001:DB8:7C1:0:0:0:0:30", "2001:db8:7c1::30"),
            ("2001:DB8:0:0:8:800:200C:417A", "2001:db8::8:800:200c:417a"),
            ("2001:db8:bad:c0de::1", "2001:db8:bad:c0de::1"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                ipv6(input).map(|ip| ip.to_string()).as_deref(),
                Some(expected)
            );
        }
    }

    #[test]
    fn url_hosts() {
        assert!(matches!(
            url_host("[2001:db8:4::15]"),
            Some(Host::Ip(IpAddr::V6(_)))
        ));
        assert!(matches!(
            url_host("203.0.113.7"),
            Some(Host::Ip(IpAddr::V4(_)))
        ));
        assert!(url_host("999.0.113.7").is_none());
        assert!(matches!(url_host("a.example.org"), Some(Host::Domain(_))));
    }
}
