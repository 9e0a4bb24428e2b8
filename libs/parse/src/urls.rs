//! URL boundaries and normalisation: where a URL written in text ends, the canonical form
//! (scheme and host lower case, IDN host in A-label form, the rest exactly as written), and
//! Microsoft Safe Links unwrapping.

use crate::hosts::{self, Host};

/// A normalised `http`/`https` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NormalUrl {
    /// The canonical form.
    pub(crate) url: String,
    /// The same URL with the host in Unicode, when the host is an IDN.
    pub(crate) unicode: Option<String>,
    /// Its host.
    pub(crate) host: Host,
}

/// How many Safe Links wrappers inside each other are unwrapped.
const MAX_UNWRAP: usize = 3;

/// The end (exclusive byte offset) of a URL candidate once trailing punctuation is dropped:
/// `.`, `,`, `;`, `:`, `!`, `?`, `\`, and a `)`, `]` or `}` without its opening partner in
/// the URL. A line break or tab written out as an escape (`\n`, `\r`, `\t`, as templates
/// and JSON strings leave them in mail) ends the URL like the whitespace it stands for.
/// Linear: bracket counts are taken once, then updated as characters are dropped.
pub(crate) fn trim_end(candidate: &str) -> usize {
    let bytes = &candidate.as_bytes()[..escape_at(candidate).unwrap_or(candidate.len())];
    let count = |b: u8| bytes.iter().filter(|&&c| c == b).count();
    let open = [count(b'('), count(b'['), count(b'{')];
    let mut close = [count(b')'), count(b']'), count(b'}')];
    let mut end = bytes.len();
    while end > 0 {
        let b = bytes[end - 1];
        let pair = match b {
            b')' => Some(0),
            b']' => Some(1),
            b'}' => Some(2),
            _ => None,
        };
        let drop = match pair {
            Some(i) => close[i] > open[i],
            None => matches!(b, b'.' | b',' | b';' | b':' | b'!' | b'?' | b'\\'),
        };
        if !drop {
            break;
        }
        if let Some(i) = pair {
            close[i] -= 1;
        }
        end -= 1;
    }
    end
}

/// Where the first line break or tab written out as an escape (`\n`, `\r`, `\t`) starts.
pub(crate) fn escape_at(text: &str) -> Option<usize> {
    text.as_bytes()
        .windows(2)
        .position(|pair| is_escape(pair[0], pair[1]))
}

/// Whether `text` ends with such an escape.
pub(crate) fn ends_with_escape(text: &str) -> bool {
    matches!(text.as_bytes(), [.., a, b] if is_escape(*a, *b))
}

fn is_escape(backslash: u8, letter: u8) -> bool {
    backslash == b'\\' && matches!(letter, b'n' | b'r' | b't')
}

/// Normalises a URL written in text (already refanged and trimmed); unwraps Safe Links.
/// `None` when it is not an `http`/`https` URL with a valid host, or is a Safe Links wrapper
/// without a usable `url` parameter.
pub(crate) fn normalize(raw: &str) -> Option<NormalUrl> {
    normalize_at(raw, 0)
}

fn normalize_at(raw: &str, unwraps: usize) -> Option<NormalUrl> {
    let (scheme, rest) = raw.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority_end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let (host_text, port) = split_port(hostport)?;
    let host = hosts::url_host(host_text)?;
    if let Host::Domain(d) = &host
        && is_safelinks(&d.ascii)
    {
        if unwraps >= MAX_UNWRAP {
            return None;
        }
        let target = query_param(tail, "url")?;
        return normalize_at(&percent_decode(target), unwraps + 1);
    }
    let build = |host: &str| {
        let mut url = String::with_capacity(raw.len());
        url.push_str(&scheme);
        url.push_str("://");
        if let Some(userinfo) = userinfo {
            url.push_str(userinfo);
            url.push('@');
        }
        url.push_str(host);
        if let Some(port) = port {
            url.push(':');
            url.push_str(port);
        }
        url.push_str(tail);
        url
    };
    let (url, unicode) = match &host {
        Host::Domain(d) => (build(&d.ascii), d.unicode.as_deref().map(build)),
        Host::Ip(std::net::IpAddr::V6(ip)) => (build(&format!("[{ip}]")), None),
        Host::Ip(ip) => (build(&ip.to_string()), None),
    };
    Some(NormalUrl { url, unicode, host })
}

/// Splits `host[:port]` (the host may be a bracketed IPv6 address); the port must be digits.
fn split_port(hostport: &str) -> Option<(&str, Option<&str>)> {
    let (host, port) = if hostport.starts_with('[') {
        let close = hostport.find(']')?;
        let after = &hostport[close + 1..];
        match after.strip_prefix(':') {
            Some(port) => (&hostport[..=close], Some(port)),
            None if after.is_empty() => (hostport, None),
            None => return None,
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    match port {
        Some(port) if !port.bytes().all(|b| b.is_ascii_digit()) => None,
        Some("") => Some((host, None)),
        _ => Some((host, port)),
    }
}

/// Whether `host` is a Microsoft Safe Links wrapper (`<region>.safelinks.protection.outlook.com`).
pub(crate) fn is_safelinks(host: &str) -> bool {
    host == "safelinks.protection.outlook.com"
        || host.ends_with(".safelinks.protection.outlook.com")
}

/// The raw (still percent-encoded) value of query parameter `name` in `tail` (`/path?query#f`).
fn query_param<'a>(tail: &'a str, name: &str) -> Option<&'a str> {
    let query = tail.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.eq_ignore_ascii_case(name).then_some(value)
    })
}

/// Percent-decodes once (`%XX` only; `+` stays), invalid UTF-8 replaced.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| hex_value(*b)),
                bytes.get(i + 2).and_then(|b| hex_value(*b)),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_trailing_punctuation() {
        let cases = [
            (
                "https://portal.example.net/reset/)",
                "https://portal.example.net/reset/",
            ),
            (
                "https://wiki.example.org/wiki/Lure_(phishing)",
                "https://wiki.example.org/wiki/Lure_(phishing)",
            ),
            ("https://a.example.com/x.", "https://a.example.com/x"),
            ("https://a.example.com/x?!;:", "https://a.example.com/x"),
            ("https://a.example.com/[x]]", "https://a.example.com/[x]"),
            ("https://a.example.com/)))", "https://a.example.com/"),
            // Escapes written out: the URL ends where the line break would be.
            (
                r"https://criches.example/dcf8a9d06\n\nJoin",
                "https://criches.example/dcf8a9d06",
            ),
            (r"https://a.example.com/x\r\n", "https://a.example.com/x"),
            (r"https://a.example.com/x\tnext", "https://a.example.com/x"),
            (r"https://a.example.com/x\", "https://a.example.com/x"),
            (r"https://a.example.com/a\b", r"https://a.example.com/a\b"),
        ];
        for (input, expected) in cases {
            assert_eq!(&input[..trim_end(input)], expected, "{input}");
        }
    }

    #[test]
    fn normalises() {
        let cases = [
            (
                "HTTPS://Payments.Example.ORG/Invoice/8841?ref=mail",
                Some("https://payments.example.org/Invoice/8841?ref=mail"),
            ),
            (
                "http://[2001:DB8:4::15]:8080/c2/beacon",
                Some("http://[2001:db8:4::15]:8080/c2/beacon"),
            ),
            (
                "https://203.0.113.7:8443/api/checkin",
                Some("https://203.0.113.7:8443/api/checkin"),
            ),
            (
                "https://secure-login.exаmple.com/verify?case=55120",
                Some("https://secure-login.xn--exmple-4nf.com/verify?case=55120"),
            ),
            (
                "https://intel-digest.example.com/issues/49#drainer",
                Some("https://intel-digest.example.com/issues/49#drainer"),
            ),
            ("https://example.com", Some("https://example.com")),
            ("ftp://example.com/x", None),
            ("https://localhost/x", None),
            ("https://a.example.com:abc/", None),
        ];
        for (input, expected) in cases {
            assert_eq!(
                normalize(input).map(|u| u.url).as_deref(),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn unwraps_safe_links_decoding_once() {
        let wrapped = "https://nam12.safelinks.protection.outlook.com/?url=http%3A%2F%2F192.0.2.200%3A8080%2Fpay%2Findex.html&data=05%7C02%7Cx%40example.com&sdata=abc&reserved=0";
        assert_eq!(
            normalize(wrapped).map(|u| u.url).as_deref(),
            Some("http://192.0.2.200:8080/pay/index.html")
        );
        let double = "https://eur01.safelinks.protection.outlook.com/?url=https%3A%2F%2Fa.example.com%2Fq%3Fm%3Dx%2540y&data=0";
        assert_eq!(
            normalize(double).map(|u| u.url).as_deref(),
            Some("https://a.example.com/q?m=x%40y")
        );
        assert_eq!(
            normalize("https://eur01.safelinks.protection.outlook.com/?data=1"),
            None
        );
    }
}
