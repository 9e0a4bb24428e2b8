//! Charset labels and decoding (case BR-14). mail-parser knows most labels; those it does not
//! (`unicode-1-1-utf-8`, and others of stalwartlabs/mail-parser#123) are resolved through the
//! WHATWG label table of `encoding_rs`, and a label nobody knows is decoded as UTF-8 when the
//! bytes are valid UTF-8, else as Latin-1, and flagged.

use std::borrow::Cow;

use encoding_rs::Encoding;
use mail_parser::decoders::charsets::map::charset_decoder;

/// How a charset label resolves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Resolution {
    /// mail-parser decodes it (its text can be used as is).
    MailParser,
    /// A WHATWG label mail-parser lacks.
    Whatwg(&'static Encoding),
    /// Nobody knows this label.
    Unknown,
}

/// Resolves a charset label.
pub(crate) fn resolve(label: &str) -> Resolution {
    let label = label.trim().trim_matches(['"', '\'']).trim();
    if label.is_empty() {
        return Resolution::MailParser;
    }
    if charset_decoder(label.as_bytes()).is_some() {
        return Resolution::MailParser;
    }
    match Encoding::for_label(label.as_bytes()) {
        // mail-parser decodes labels it does not know as UTF-8 (lossy), which is right here.
        Some(encoding) if encoding == encoding_rs::UTF_8 => Resolution::MailParser,
        Some(encoding) => Resolution::Whatwg(encoding),
        None => Resolution::Unknown,
    }
}

/// The WHATWG encoding for a label, if it has one.
pub(crate) fn whatwg(label: &str) -> Option<&'static Encoding> {
    Encoding::for_label(label.trim().trim_matches(['"', '\'']).trim().as_bytes())
}

/// Decodes `bytes` with a known encoding (replacement characters for invalid sequences).
pub(crate) fn decode_with(encoding: &'static Encoding, bytes: &[u8]) -> String {
    encoding.decode_without_bom_handling(bytes).0.into_owned()
}

/// Decodes bytes in an unknown charset: UTF-8 if they are valid UTF-8, else Latin-1 (every
/// byte is the code point of the same value).
pub(crate) fn decode_unknown(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
    }
}

/// Decodes bytes with an optional declared charset: the declared one if known (mail-parser's
/// decoders first, then the WHATWG labels), else UTF-8 or Latin-1. The flag is set when the
/// label is unknown.
pub(crate) fn decode_label<'a>(bytes: &'a [u8], label: Option<&str>) -> (Cow<'a, str>, bool) {
    let Some(label) = label.map(|l| l.trim().trim_matches(['"', '\'']).trim()) else {
        return (String::from_utf8_lossy(bytes), false);
    };
    if let Some(decoder) = charset_decoder(label.as_bytes()) {
        return (Cow::Owned(decoder(bytes)), false);
    }
    match whatwg(label) {
        Some(encoding) if encoding == encoding_rs::UTF_8 => (String::from_utf8_lossy(bytes), false),
        Some(encoding) => (Cow::Owned(decode_with(encoding, bytes)), false),
        None => (decode_unknown(bytes), true),
    }
}

/// Decodes bytes of a text attachment (see [`decode_label`]); a leading UTF-8 BOM is not
/// content.
pub(crate) fn decode_attachment<'a>(bytes: &'a [u8], label: Option<&str>) -> (Cow<'a, str>, bool) {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match label {
        Some(_) => decode_label(bytes, label),
        None => (decode_unknown(bytes), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve_to_whatwg_encodings() {
        let cases = [
            ("cp1252", encoding_rs::WINDOWS_1252),
            ("x-sjis", encoding_rs::SHIFT_JIS),
            ("ms932", encoding_rs::SHIFT_JIS),
            ("windows-31j", encoding_rs::SHIFT_JIS),
            ("x-gbk", encoding_rs::GBK),
            ("cn-big5", encoding_rs::BIG5),
            ("ksc5601", encoding_rs::EUC_KR),
            ("ks_c_5601-1987", encoding_rs::EUC_KR),
            ("unicode-1-1-utf-8", encoding_rs::UTF_8),
            ("\"UTF-8\"", encoding_rs::UTF_8),
        ];
        for (label, expected) in cases {
            assert_eq!(whatwg(label), Some(expected), "{label}");
            assert_ne!(resolve(label), Resolution::Unknown, "{label}");
        }
        assert_eq!(resolve("x-unknown-8bit"), Resolution::Unknown);
    }

    #[test]
    fn unknown_bytes_fall_back_to_latin1() {
        assert_eq!(decode_unknown(b"caf\xE9"), "café");
        assert_eq!(decode_unknown("café".as_bytes()), "café");
    }

    #[test]
    fn attachment_bom_is_dropped() {
        let (text, unknown) = decode_attachment(b"\xEF\xBB\xBFurl,https://a.example.com/", None);
        assert_eq!(text, "url,https://a.example.com/");
        assert!(!unknown);
    }
}
