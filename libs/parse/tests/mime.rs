//! MIME structure, attached messages of every kind and attachment hashes, on messages built
//! for the purpose.

use sha2::{Digest, Sha256};
use threatmail_parse::{Source, parse_message};

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    encoded
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned() + "\r\n")
        .collect()
}

const INNER: &str = "From: \"Billing\" <billing@invoice.example.net>\r\nReply-To: pay@remit.example.org\r\nTo: victim@example.com\r\nSubject: [TLP:RED] Invoice overdue\r\nMessage-ID: <x@mta.example.net>\r\nContent-Type: multipart/mixed; boundary=\"in\"\r\n\r\n--in\r\nContent-Type: text/plain\r\n\r\nPay at https://pay.example.net/now\r\n--in\r\nContent-Type: application/zip; name=\"inv.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\nUEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==\r\n--in--\r\n";

#[test]
fn eml_attachment_of_another_declared_type_is_parsed_as_a_message() {
    let raw = format!(
        "From: reporter@example.com\r\nSubject: FW: phish\r\nContent-Type: multipart/mixed; boundary=\"out\"\r\n\r\n--out\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--out\r\nContent-Type: application/octet-stream; name=\"phish.eml\"\r\nContent-Disposition: attachment; filename=\"phish.eml\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}--out--\r\n",
        b64(INNER.as_bytes())
    );
    let parsed = parse_message(raw.as_bytes());
    assert_eq!(
        parsed.structure,
        "multipart/mixed(text/plain, application/octet-stream;eml[multipart/mixed(text/plain, application/zip)])"
    );
    let summary = parsed.summary();
    // Originator addresses of the attached message are in scope; its To and Message-ID not.
    assert_eq!(
        summary.emails,
        ["billing@invoice.example.net", "pay@remit.example.org"]
    );
    assert_eq!(summary.urls, ["https://pay.example.net/now"]);
    assert_eq!(summary.tlp.as_deref(), Some("TLP:RED"));
    let names: Vec<(&str, u32)> = summary
        .attachments
        .iter()
        .map(|a| (a.filename.as_str(), a.depth))
        .collect();
    assert_eq!(names, [("phish.eml", 0), ("inv.zip", 1)]);
    assert_eq!(summary.attachments[0].size, INNER.len() as u64);
    assert_eq!(
        summary.attachments[0].sha256,
        hex::encode(Sha256::digest(INNER.as_bytes()))
    );
    let nested = parsed.message.attachments[0]
        .message
        .as_deref()
        .expect("nested record");
    assert_eq!(nested.subject.as_deref(), Some("[TLP:RED] Invoice overdue"));
    assert!(!summary.domains.contains(&"mta.example.net".to_string()));
    assert!(!summary.emails.contains(&"victim@example.com".to_string()));
}

#[test]
fn eight_bit_rfc822_and_text_attachments_of_any_type() {
    let raw = format!(
        "From: reporter@example.com\r\nSubject: two\r\nContent-Type: multipart/mixed; boundary=\"out\"\r\n\r\n--out\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{INNER}\r\n--out\r\nContent-Type: application/octet-stream; name=\"feed.txt\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}--out--\r\n",
        b64("\u{feff}hxxp://feed.example[.]org/x\r\n198.51.100[.]9\r\n".as_bytes())
    );
    let parsed = parse_message(raw.as_bytes());
    assert_eq!(
        parsed.structure,
        "multipart/mixed(message/rfc822[multipart/mixed(text/plain, application/zip)], application/octet-stream)"
    );
    let summary = parsed.summary();
    assert_eq!(
        summary.urls,
        ["http://feed.example.org/x", "https://pay.example.net/now"]
    );
    assert_eq!(summary.ipv4, ["198.51.100.9"]);
    let feed = parsed
        .indicators
        .iter()
        .find(|i| i.value == "http://feed.example.org/x")
        .expect("feed URL");
    assert!(feed.defanged);
    assert_eq!(
        feed.locations[0].source,
        Source::Attachment {
            file_name: "feed.txt".to_string()
        }
    );
}

#[test]
fn record_has_headers_bodies_and_warnings() {
    let raw = b"Message-ID: <abc@example.com>\r\nDate: Tue, 01 Dec 2026 08:14:01 +0000\r\nFrom: \"A\" <a@example.com>\r\nReply-To: b@example.org\r\nReturn-Path: <bounce@example.net>\r\nTo: c@example.com, d@example.com\r\nSubject: =?utf-8?B?SGFsbG8gV2VsdA==?=\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html</p>\r\n--b--\r\n";
    let parsed = parse_message(raw);
    let m = &parsed.message;
    assert_eq!(m.message_id.as_deref(), Some("abc@example.com"));
    assert_eq!(m.date.as_deref(), Some("2026-12-01T08:14:01Z"));
    assert_eq!(m.from[0].address.as_deref(), Some("a@example.com"));
    assert_eq!(m.reply_to[0].address.as_deref(), Some("b@example.org"));
    assert_eq!(m.return_path.as_deref(), Some("bounce@example.net"));
    // Without a Return-Path there is none (not the From address), nor with the null path.
    for without in [&b""[..], b"Return-Path: <>\r\n"] {
        let raw = [
            without,
            b"From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n",
        ]
        .concat();
        assert_eq!(parse_message(&raw).message.return_path, None);
    }
    assert_eq!(m.to.len(), 2);
    assert_eq!(m.subject.as_deref(), Some("Hallo Welt"));
    assert_eq!(m.text_bodies[0].text, "plain");
    assert_eq!(m.html_bodies[0].text, "<p>html</p>");
    assert!(parsed.warnings.is_empty());
    // Top-level originator addresses are recorded (as header indicators) but not in scope.
    assert!(parsed.indicators.iter().any(|i| i.value == "a@example.com"));
    assert!(parsed.summary().emails.is_empty());
}

/// Message and part identifiers look like addresses but name no mailbox: no indicator comes
/// from them, while the relay a `Received` header names still does.
#[test]
fn identifiers_are_not_addresses() {
    let raw = b"Received: from mx.relay.example.net (mx.relay.example.net [198.51.100.7])\r\n\tby mail.example.com; Tue, 01 Dec 2026 08:14:01 +0000\r\nMessage-ID: <GV1PR05MB6688.0D3A@eurprd05.prod.example.org>\r\nIn-Reply-To: <prev.1@chain.example.org>\r\nReferences: <first.0@chain.example.org> <prev.1@chain.example.org>\r\nFrom: a@example.com\r\nSubject: re\r\nContent-Type: multipart/related; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee the image\r\n--b\r\nContent-Type: image/png\r\nContent-ID: <image001.png@01DA2B3C.4D5E6F70>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--b--\r\n";
    let parsed = parse_message(raw);
    let values: Vec<&str> = parsed.indicators.iter().map(|i| i.value.as_str()).collect();
    for identifier in [
        "eurprd05.prod.example.org",
        "chain.example.org",
        "01da2b3c.4d5e6f70",
        "image001.png",
    ] {
        assert!(
            !values
                .iter()
                .any(|v| v.to_ascii_lowercase().contains(identifier)),
            "{identifier} from an identifier header: {values:?}"
        );
    }
    assert!(values.contains(&"198.51.100.7"), "{values:?}");
    assert!(values.contains(&"a@example.com"), "{values:?}");
    assert_eq!(
        parsed.message.message_id.as_deref(),
        Some("GV1PR05MB6688.0D3A@eurprd05.prod.example.org")
    );
}

/// An invisible character inside a bare domain or address is read past, as in HTML and URLs,
/// instead of cutting the value where it stands.
#[test]
fn invisible_characters_do_not_split_indicators() {
    let raw = "From: a@example.com\r\nSubject: s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nvisit ev\u{200b}il.example.com or write to pay\u{ad}ments@remit.example.org\r\n";
    let parsed = parse_message(raw.as_bytes());
    let values: Vec<&str> = parsed.indicators.iter().map(|i| i.value.as_str()).collect();
    assert!(values.contains(&"evil.example.com"), "{values:?}");
    assert!(values.contains(&"payments@remit.example.org"), "{values:?}");
    assert!(!values.contains(&"il.example.com"), "{values:?}");
    assert!(!values.contains(&"ments@remit.example.org"), "{values:?}");
}
