//! Hostile mail never panics and stays bounded: deep nesting of every kind, encoded nesting,
//! huge declared sizes, broken encodings, many parts, huge headers, garbage bytes; and the
//! scanners' work grows with the input only (op counts, not wall-clock).

use threatmail_parse::{
    ParseOptions, WarningKind, extract_text, parse_message, parse_message_with,
};

fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic or overflow")
}

/// `levels` attached messages, each inside a multipart of the one above (7bit).
fn message_chain(levels: usize) -> String {
    let mut s = String::new();
    for i in 0..levels {
        s += &format!(
            "From: a{i}@example.com\r\nSubject: level {i}\r\nContent-Type: multipart/mixed; boundary=\"m{i}\"\r\n\r\n--m{i}\r\nContent-Type: message/rfc822\r\n\r\n"
        );
    }
    s += "From: b@example.com\r\nSubject: inner\r\n\r\nhttps://deep.example.org/landing\r\n";
    for i in (0..levels).rev() {
        s += &format!("--m{i}--\r\n");
    }
    s
}

fn base64_lines(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    encoded
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned() + "\r\n")
        .collect()
}

fn has_warning(parsed: &threatmail_parse::ParsedMessage, kind: WarningKind) -> bool {
    parsed.warnings.iter().any(|w| w.kind == kind)
}

#[test]
fn long_chain_of_attached_messages_is_cut_and_freed_without_recursion() {
    // 60 000 levels: dropping such a tree recursively overflows a 2 MiB stack.
    for levels in [20, 60_000] {
        let parsed = on_small_stack(move || parse_message(message_chain(levels).as_bytes()));
        assert!(
            has_warning(&parsed, WarningKind::NestingLimitExceeded),
            "{levels}"
        );
        assert_eq!(
            parsed.summary().urls,
            ["https://deep.example.org/landing"],
            "{levels}"
        );
    }
}

#[test]
fn chain_hidden_in_a_base64_attached_message_is_not_expanded() {
    let inner = message_chain(5_000);
    let raw = format!(
        "From: a@example.com\r\nSubject: wrapped\r\nContent-Type: multipart/mixed; boundary=\"top\"\r\n\r\n--top\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n{}--top--\r\n",
        base64_lines(inner.as_bytes())
    );
    let parsed = on_small_stack(move || parse_message(raw.as_bytes()));
    assert!(
        has_warning(&parsed, WarningKind::HostileNesting),
        "{:?}",
        parsed.warnings
    );
    assert_eq!(parsed.summary().urls, ["https://deep.example.org/landing"]);
}

#[test]
fn a_few_base64_attached_messages_parse_normally() {
    let inner = message_chain(2);
    let raw = format!(
        "From: a@example.com\r\nSubject: wrapped\r\nContent-Type: multipart/mixed; boundary=\"top\"\r\n\r\n--top\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n{}--top--\r\n",
        base64_lines(inner.as_bytes())
    );
    let parsed = parse_message(raw.as_bytes());
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    assert_eq!(
        parsed.structure,
        "multipart/mixed(message/rfc822;base64[multipart/mixed(message/rfc822[multipart/mixed(message/rfc822[text/plain])])])"
    );
    assert_eq!(parsed.summary().urls, ["https://deep.example.org/landing"]);
}

#[test]
fn many_parts_are_capped() {
    let mut raw = String::from(
        "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n",
    );
    for i in 0..30_000 {
        raw += &format!("--b\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n");
    }
    raw += "--b\r\nContent-Type: text/plain\r\n\r\nhttps://last.example.org/x\r\n--b--\r\n";
    let options = ParseOptions {
        max_parts: 1_000,
        ..ParseOptions::default()
    };
    let parsed = parse_message_with(raw.as_bytes(), &options);
    assert!(has_warning(&parsed, WarningKind::PartLimitExceeded));
    // The part past the limit is still scanned, as raw text.
    assert_eq!(parsed.summary().urls, ["https://last.example.org/x"]);
}

#[test]
fn broken_encodings_keep_their_bytes_as_text() {
    let raw = b"From: a@example.com\r\nSubject: broken\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!! not base64 https://b64.example.org/x !!!\r\n--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nbad =ZZ escape https://qp.example.org/y =\r\n--b\r\nContent-Type: text/plain; charset=\"<html><body>\"\r\n\r\ngarbage charset https://cs.example.org/z\r\n";
    let parsed = parse_message(raw);
    let urls = parsed.summary().urls;
    for url in [
        "https://b64.example.org/x",
        "https://qp.example.org/y",
        "https://cs.example.org/z",
    ] {
        assert!(urls.iter().any(|u| u == url), "{url} not in {urls:?}");
    }
}

#[test]
fn huge_declared_sizes_and_headers_are_harmless() {
    let subject = "x".repeat(1 << 20);
    let raw = format!(
        "From: a@example.com\r\nSubject: {subject} https://subject.example.org/s\r\nContent-Length: 99999999999999999999\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: application/octet-stream; name=\"a.bin\"; size=18446744073709551615\r\nContent-Disposition: attachment; filename=\"a.bin\"; size=99999999999\r\n\r\nbegin 644 huge.bin\r\nend\r\n--b--\r\n"
    );
    let parsed = parse_message(raw.as_bytes());
    assert_eq!(parsed.summary().urls, ["https://subject.example.org/s"]);
    assert_eq!(parsed.summary().attachments[0].filename, "a.bin");
}

#[test]
fn garbage_never_panics() {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pieces: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"--b\r\n",
        b"--b--\r\n",
        b"Content-Type: multipart/mixed; boundary=b\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"=?utf-8?B?",
        b"?=",
        b"<a href=\"",
        b"https://",
        b"[.]",
        b"@",
        b"\x00\xff\xfe",
        b"=\r\n",
        b"From: x@example.com\r\n",
        b"<!--",
        b"<style>",
        b"&#x",
        b"hxxp",
        b"2001:db8::",
        b"TLP:",
        b"\xe3\x81",
    ];
    for _ in 0..300 {
        let mut raw = Vec::new();
        for _ in 0..(next() % 200) {
            raw.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
        }
        let parsed = parse_message(&raw);
        let _ = parsed.summary();
    }
    for raw in [
        &b""[..],
        b"\r\n\r\n",
        b"From: a@example.com",
        b"\xff\xfe\x00",
        b"--\r\n--",
    ] {
        let _ = parse_message(raw).summary();
    }
}

#[test]
fn hostile_html_is_bounded() {
    let mut html = String::from("<html><body>");
    html += &"<div>".repeat(100_000);
    html += "<a href=\"https://deep.example.net/a\">https://shown.example.org/</a>";
    html += "<!-- never closed <style> https://hidden.example.com/";
    let raw =
        format!("From: a@example.com\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n");
    let parsed = parse_message(raw.as_bytes());
    let summary = parsed.summary();
    assert_eq!(
        summary.urls,
        ["https://deep.example.net/a", "https://shown.example.org/"]
    );
    assert_eq!(summary.link_mismatches.len(), 1);
}

/// A 100 KB run of base64 followed by `@` or `.` costs no more than 100 KB of prose full of
/// indicators, and doubling the run doubles the work (at most).
#[test]
fn scanner_work_is_linear_in_the_input() {
    let run: String =
        "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3ODkrLw"
            .chars()
            .cycle()
            .take(100_000)
            .collect();
    let prose: String = "Block hxxps://login.example[.]com/a and 203.0.113.7, mail evil@example.net, hash e3551a7d989183cfe099b6cbb058d7fb, CVE-2026-1234. "
        .chars()
        .cycle()
        .take(100_000)
        .collect();
    let prose_stats = extract_text(&prose).stats;
    for tail in ["@", ".", "@example.com", ".com", "@a.b.c.d.e.f.g"] {
        let hostile = format!("{run}{tail}");
        let stats = extract_text(&hostile).stats;
        assert!(
            stats.candidates <= prose_stats.candidates
                && stats.checked_bytes <= prose_stats.checked_bytes,
            "tail {tail:?}: {stats:?} vs prose {prose_stats:?}"
        );
        let doubled = extract_text(&format!("{run}{run}{tail}")).stats;
        assert!(
            doubled.checked_bytes <= 2 * stats.checked_bytes + 1024,
            "tail {tail:?}: {doubled:?} vs {stats:?}"
        );
    }
    // Many candidates in one huge token: each check reads a bounded window.
    let glued = "x.example.com!".repeat(10_000);
    let stats = extract_text(&glued).stats;
    assert!(
        stats.checked_bytes <= 200 * glued.len() as u64 / 14 + 1024,
        "{stats:?}"
    );
}

/// mail-parser 0.11 drops the last characters of a quoted-printable part whose last line ends
/// in a soft line break; the walk re-decodes such parts.
#[test]
fn quoted_printable_soft_break_before_boundary_keeps_every_character() {
    let raw = b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nhttps://qp.example.org/y=\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nhttps://qp.example.org/abc =\r\n--b--\r\n";
    let parsed = parse_message(raw);
    let texts: Vec<&str> = parsed
        .message
        .text_bodies
        .iter()
        .map(|b| b.text.as_str())
        .collect();
    assert_eq!(
        texts,
        ["https://qp.example.org/y", "https://qp.example.org/abc "]
    );
    assert_eq!(
        parsed.summary().urls,
        ["https://qp.example.org/abc", "https://qp.example.org/y"]
    );
}

#[test]
fn distinct_indicators_are_capped() {
    let mut body = String::new();
    for i in 0..2_000 {
        body += &format!("https://h{i}.example.com/ ");
    }
    let raw = format!("From: a@example.com\r\nSubject: many\r\n\r\n{body}\r\n");
    let options = ParseOptions {
        max_indicators: 500,
        ..ParseOptions::default()
    };
    let parsed = parse_message_with(raw.as_bytes(), &options);
    assert_eq!(parsed.indicators.len(), 500);
    assert!(has_warning(&parsed, WarningKind::IndicatorLimitExceeded));
}
