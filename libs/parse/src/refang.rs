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

/// The defanged forms of the labelled README (rule 2) and a few common variants, and the
/// invisible characters that break an indicator up without showing (soft hyphen, zero-width
/// ones, bidi marks, embeddings, overrides and isolates, word joiner, BOM): `ev\u{200b}il.com`
/// reads as `evil.com` and is scanned as it reads.
static DEFANG: LazyLock<Regex> = LazyLock::new(|| {
    // Literal alternatives only; the regex crate compiles them into a linear-time matcher.
    #[allow(clippy::unwrap_used)] // a constant pattern, checked by every test
    Regex::new(
        r"(?i)\[\.\]|\(\.\)|\{\.\}|\[dot\]|\(dot\)|\{dot\}|\[at\]|\(at\)|\{at\}|\[@\]|\(@\)|\{@\}|\[:\]|\[://\]|\[/\]|hxxp|[\x{ad}\x{200b}-\x{200f}\x{202a}-\x{202e}\x{2060}\x{2066}-\x{2069}\x{feff}]",
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

/// Refangs `text`.
pub(crate) fn refang(text: &str) -> Refanged<'_> {
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
        // A dropped invisible character is no defanged form.
        if !replacement.is_empty() {
            spans.push(at..buf.len());
        }
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
    if !text[start..end].is_ascii() {
        // One of the invisible characters (every other form is ASCII): dropped.
        return Some(("", start, end));
    }
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
