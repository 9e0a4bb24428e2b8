//! Refanging: turn defanged indicators (`hxxp`, `[.]`, `(.)`, `[at]`, `[:]`, ...) back into
//! their live form before any scanner runs, remembering where a replacement happened so each
//! indicator can say it was written defanged.
//!
//! Linear: one `regex` search pass (each search resumes at the previous match end and the
//! pattern is a set of short literals, so no search scans past its match by more than a few
//! bytes) plus one copy of the text.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;

/// The defanged forms of the labelled README (rule 2) and a few common variants.
static DEFANG: LazyLock<Regex> = LazyLock::new(|| {
    // Literal alternatives only; the regex crate compiles them into a linear-time matcher.
    #[allow(clippy::unwrap_used)] // a constant pattern, checked by every test
    Regex::new(
        r"(?i)\[\.\]|\(\.\)|\{\.\}|\[dot\]|\(dot\)|\{dot\}|\[at\]|\(at\)|\{at\}|\[@\]|\(@\)|\{@\}|\[:\]|\[://\]|\[/\]|hxxp",
    )
    .unwrap()
});

/// Text with defanged forms replaced, and the byte ranges (in the new text) of every
/// replacement.
#[derive(Debug)]
pub(crate) struct Refanged<'a> {
    pub(crate) text: Cow<'a, str>,
    pub(crate) spans: Vec<Range<usize>>,
}

impl Refanged<'_> {
    /// Whether any replacement touches `range` (a range of the refanged text).
    pub(crate) fn touches(&self, range: &Range<usize>) -> bool {
        // `spans` is sorted and disjoint: find the first span ending after range.start.
        let i = self.spans.partition_point(|s| s.end <= range.start);
        self.spans.get(i).is_some_and(|s| s.start < range.end)
    }
}

/// Refangs `text`, first dropping the invisible characters that break an indicator up
/// without showing: `ev\u{200b}il.com` reads as `evil.com` and is scanned as it reads.
pub(crate) fn refang(text: &str) -> Refanged<'_> {
    match visible(text) {
        Cow::Borrowed(text) => refang_forms(text),
        Cow::Owned(text) => {
            let refanged = refang_forms(&text);
            Refanged {
                text: Cow::Owned(refanged.text.into_owned()),
                spans: refanged.spans,
            }
        }
    }
}

/// `text` without soft hyphens, zero-width characters and marks (U+200B–U+200F), bidi
/// embeddings and overrides (U+202A–U+202E), the word joiner, bidi isolates
/// (U+2066–U+2069) and the BOM; borrowed when it has none. A byte scan (the text is mostly
/// ASCII, and a regex alternative here would cost every text its literal prefilter).
fn visible(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let (mut copied, mut i) = (0, 0);
    while i < bytes.len() {
        let len = invisible_len(bytes, i);
        if len == 0 {
            i += 1;
            continue;
        }
        // A lead byte (C2, E2, EF) always starts a character.
        let buf = out.get_or_insert_with(|| String::with_capacity(text.len()));
        buf.push_str(&text[copied..i]);
        i += len;
        copied = i;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut buf) => {
            buf.push_str(&text[copied..]);
            Cow::Owned(buf)
        }
    }
}

/// The UTF-8 length of the invisible character at `bytes[i]`, or 0.
fn invisible_len(bytes: &[u8], i: usize) -> usize {
    let next = |k: usize| bytes.get(i + k).copied();
    match (bytes[i], next(1), next(2)) {
        (0xC2, Some(0xAD), _) => 2,
        (0xE2, Some(0x80), Some(0x8B..=0x8F | 0xAA..=0xAE)) => 3,
        (0xE2, Some(0x81), Some(0xA0 | 0xA6..=0xA9)) => 3,
        (0xEF, Some(0xBB), Some(0xBF)) => 3,
        _ => 0,
    }
}

/// Refangs the defanged forms of `text`.
fn refang_forms(text: &str) -> Refanged<'_> {
    let mut out: Option<String> = None;
    let mut spans = Vec::new();
    let mut copied = 0;
    for m in DEFANG.find_iter(text) {
        let Some((replacement, start, end)) = replacement(text, m.start(), m.end(), copied) else {
            continue;
        };
        let buf = out.get_or_insert_with(|| String::with_capacity(text.len()));
        buf.push_str(&text[copied..start]);
        let at = buf.len();
        buf.push_str(replacement);
        spans.push(at..buf.len());
        copied = end;
    }
    match out {
        None => Refanged {
            text: Cow::Borrowed(text),
            spans,
        },
        Some(mut buf) => {
            buf.push_str(&text[copied..]);
            Refanged {
                text: Cow::Owned(buf),
                spans,
            }
        }
    }
}

/// What the defanged form at `text[start..end]` stands for, and the range it replaces (a
/// bracket form written with one space on each side, `user [at] example [dot] com`, takes the
/// spaces with it); `None` when its context shows it is ordinary prose (`(at)` between
/// words, `hxxp` inside a word). `floor` is where the previous replacement ended.
fn replacement(
    text: &str,
    start: usize,
    end: usize,
    floor: usize,
) -> Option<(&'static str, usize, usize)> {
    let lower = text[start..end].to_ascii_lowercase();
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    let glued = |c: Option<char>| c.is_some_and(|c| !c.is_whitespace());
    if lower == "hxxp" {
        // `hxxp` starts a scheme: not inside a word, followed by `s`, `:` or `[`.
        let word_before = before.is_some_and(|c| c.is_alphanumeric());
        let scheme_follows = matches!(after, Some('s' | 'S' | ':' | '['));
        return (!word_before && scheme_follows).then_some(("http", start, end));
    }
    let (value, needs_neighbours) = match lower.as_str() {
        "[.]" | "{.}" => (".", false),
        "(.)" | "[dot]" | "(dot)" | "{dot}" => (".", true),
        "[at]" | "(at)" | "{at}" => ("@", true),
        "[@]" | "(@)" | "{@}" => ("@", false),
        "[:]" => (":", false),
        "[://]" => ("://", false),
        "[/]" => ("/", false),
        _ => return None,
    };
    if glued(before) && glued(after) {
        return Some((value, start, end));
    }
    // One space each side, then more of the indicator: `example [dot] com` (square or curly
    // brackets only; parentheses are too common in prose).
    let spaced = !lower.starts_with('(')
        && before == Some(' ')
        && after == Some(' ')
        && start > floor
        && glued(text[..start - 1].chars().next_back())
        && glued(text[end + 1..].chars().next());
    if spaced && matches!(value, "." | "@") {
        return Some((value, start - 1, end + 1));
    }
    (!needs_neighbours).then_some((value, start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refangs_every_listed_form() {
        let cases = [
            ("hxxp://a.example[.]com", "http://a.example.com"),
            ("hXXps[:]//b.example(.)net/x", "https://b.example.net/x"),
            ("hxxps[://]c.example{.}org", "https://c.example.org"),
            ("d[dot]example[DOT]com", "d.example.com"),
            ("e(dot)example{dot}com", "e.example.com"),
            ("user[at]example.com", "user@example.com"),
            ("user(at)example.com", "user@example.com"),
            ("user{at}example.com", "user@example.com"),
            ("user[@]example.com", "user@example.com"),
            ("user(@)example.com", "user@example.com"),
            (
                "https[:]//docs[.]example[.]org/s/abc",
                "https://docs.example.org/s/abc",
            ),
            ("203.0.113[.]7", "203.0.113.7"),
            ("user [at] example [dot] com", "user@example.com"),
            ("a [.] b", "a.b"),
            ("write to soc [at] example.com", "write to soc@example.com"),
        ];
        for (input, expected) in cases {
            let r = refang(input);
            assert_eq!(r.text, expected, "{input}");
            assert!(!r.spans.is_empty(), "{input}");
        }
    }

    #[test]
    fn leaves_prose_alone() {
        for input in [
            "meet me (at) noon",
            "a dot (.) here",
            "shxxp://nope",
            "hxxpfoo",
            "plain https://example.com/",
        ] {
            let r = refang(input);
            assert_eq!(r.text, input);
            assert!(r.spans.is_empty(), "{input}");
            assert!(matches!(r.text, Cow::Borrowed(_)));
        }
    }

    #[test]
    fn invisible_characters_are_dropped_without_a_defang_mark() {
        for input in [
            "ev\u{200b}il.example.com",
            "ev\u{ad}il.example.com",
            "ev\u{202e}il.example.com",
            "\u{feff}evil.exa\u{2060}mple.com",
        ] {
            let r = refang(input);
            assert_eq!(r.text, "evil.example.com", "{input:?}");
            assert!(r.spans.is_empty(), "{input:?}");
        }
        let r = refang("ev\u{200b}il[.]example.com");
        assert_eq!((r.text.as_ref(), r.spans.len()), ("evil.example.com", 1));
    }

    #[test]
    fn spans_locate_replacements() {
        let r = refang("x hxxps://a[.]example.com y");
        assert_eq!(r.text, "x https://a.example.com y");
        assert!(r.touches(&(2..23)));
        assert!(!r.touches(&(0..2)));
        assert!(!r.touches(&(24..25)));
    }
}
