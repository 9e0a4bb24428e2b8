//! Text from mail made safe to print on a terminal.
//!
//! A subject, a display name or a body is whatever the sender wrote, and a terminal acts on
//! the controls in it: ESC sequences clear the screen, set the window title, plant hidden
//! hyperlinks (OSC 8) or write the clipboard (OSC 52); a carriage return overwrites what was
//! shown; bidi overrides and zero-width characters make a name or a host read as another.
//! Every such character is printed as a visible escape (`\u{1b}`, `\r`) instead.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as itself: C0 and C1 controls, DEL, and the
/// invisible format characters that hide or reorder text (soft hyphen, zero-width ones,
/// bidi marks, embeddings, overrides and isolates, word joiners, the BOM, interlinear
/// annotation).
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{ad}'
                | '\u{61c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

fn escaped(text: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(|c| unsafe_char(c) && !keep(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            _ if !unsafe_char(c) || keep(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            _ => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        }
    }
    Cow::Owned(out)
}

/// `text` for one line of output: every unsafe character escaped, line ends too, so a
/// value cannot start a line of its own (a forged `From:` under the real one).
pub(crate) fn field(text: &str) -> Cow<'_, str> {
    escaped(text, |_| false)
}

/// `text` printed as lines (a message body): line feeds and tabs kept, every other unsafe
/// character escaped.
pub(crate) fn lines(text: &str) -> Cow<'_, str> {
    escaped(text, |c| c == '\n' || c == '\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_invisible_characters_are_written_out() {
        let hostile = "Invoice \u{1b}[2J\u{1b}]0;title\u{7} \u{1b}]52;c;cm0gLXJmIH4K\u{7}\u{9b}31m";
        assert_eq!(
            field(hostile),
            "Invoice \\u{1b}[2J\\u{1b}]0;title\\u{7} \\u{1b}]52;c;cm0gLXJmIH4K\\u{7}\\u{9b}31m"
        );
        assert_eq!(field("good\rbad"), "good\\rbad");
        assert_eq!(field("gpj\u{202e}.exe"), "gpj\\u{202e}.exe");
        assert_eq!(
            field("ev\u{200b}il\u{ad}.example"),
            "ev\\u{200b}il\\u{ad}.example"
        );
        assert_eq!(
            field("a\nFrom: ceo@bank.example"),
            "a\\nFrom: ceo@bank.example"
        );
        assert_eq!(field("nul\0"), "nul\\u{0}");
        assert_eq!(field("del\u{7f}"), "del\\u{7f}");
    }

    #[test]
    fn plain_text_and_other_scripts_pass_unchanged() {
        for text in [
            "Rechnung für Mai",
            "請求書",
            "שלום",
            "emoji 🎣",
            "tab\tand ~ ^",
        ] {
            assert!(matches!(lines(text), Cow::Borrowed(_)), "{text}");
        }
        assert_eq!(lines("one\ntwo\tthree\r\n"), "one\ntwo\tthree\\r\n");
        assert!(matches!(field("Rechnung für Mai"), Cow::Borrowed(_)));
    }
}
