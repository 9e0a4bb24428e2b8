//! Traffic Light Protocol markings (TLP 1.0 and 2.0 wording): `TLP:AMBER`, `TLP: RED`,
//! `tlp green`, `[TLP:CLEAR]`, `TLP:WHITE` (= CLEAR), `TLP:AMBER+STRICT`. `TLP` followed by a
//! word that is not a level is prose, and a legend (consecutive lines that each start with a
//! level followed by its definition) is not a marking (labelled README rule 5).
//!
//! Linear: one `regex` pass (the pattern is literal-led and bounded: a search never scans more
//! than a few bytes past a match) and one forward walk counting lines between matches.

use std::sync::LazyLock;

use regex::Regex;

use crate::record::Tlp;

static MARKING: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::unwrap_used)] // a constant pattern, checked by every test
    Regex::new(
        r"(?i)tlp[ \t\x{a0}]*[:\-]?[ \t\x{a0}]*(clear|white|green|amber(?:[ \t]*\+[ \t]*strict)?|red)",
    )
    .unwrap()
});

/// How far before a marking to look for the start of its line.
const LEAD_WINDOW: usize = 16;
/// How far after a marking to look for a definition.
const DEFINITION_WINDOW: usize = 64;

/// The markings in `text` with their byte offsets, legends excluded, in order of appearance.
pub(crate) fn markings(text: &str) -> Vec<(Tlp, usize)> {
    struct Found {
        level: Tlp,
        at: usize,
        line: usize,
        starts_definition: bool,
    }
    let mut found: Vec<Found> = Vec::new();
    let mut line = 0;
    let mut counted_to = 0;
    for caps in MARKING.captures_iter(text) {
        let (Some(whole), Some(level)) = (caps.get(0), caps.get(1)) else {
            continue;
        };
        let before = text[..whole.start()].chars().next_back();
        let after = text[whole.end()..].chars().next();
        if before.is_some_and(char::is_alphanumeric) || after.is_some_and(char::is_alphanumeric) {
            continue;
        }
        let level = match level.as_str().to_ascii_lowercase().as_str() {
            "clear" | "white" => Tlp::Clear,
            "green" => Tlp::Green,
            "red" => Tlp::Red,
            "amber" => Tlp::Amber,
            _ => Tlp::AmberStrict,
        };
        line += text[counted_to..whole.start()].matches('\n').count();
        counted_to = whole.start();
        // Bounded windows around the match keep this linear on huge single-line texts.
        let mut lead = text[..whole.start()]
            .chars()
            .rev()
            .take_while(|&c| c != '\n');
        let at_line_start = lead
            .by_ref()
            .take(LEAD_WINDOW)
            .all(|c| c.is_whitespace() || c.is_ascii_digit() || "[(*-•·|>.)".contains(c))
            && lead.next().is_none();
        let definition = text[whole.end()..]
            .chars()
            .take_while(|&c| c != '\n')
            .take(DEFINITION_WINDOW)
            .skip_while(|&c| c.is_whitespace() || "]):=-–—|".contains(c))
            .any(char::is_alphanumeric);
        found.push(Found {
            level,
            at: whole.start(),
            line,
            starts_definition: at_line_start && definition,
        });
    }
    // A legend: two or more adjacent lines, each starting with a level and its definition,
    // naming at least two different levels.
    let mut legend = vec![false; found.len()];
    let mut i = 0;
    while i < found.len() {
        if !found[i].starts_definition {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < found.len()
            && found[j].starts_definition
            && found[j].line == found[j - 1].line + 1
        {
            j += 1;
        }
        let distinct = found[i..j].iter().any(|f| f.level != found[i].level);
        if j - i >= 2 && distinct {
            legend[i..j].iter_mut().for_each(|l| *l = true);
        }
        i = j;
    }
    found
        .into_iter()
        .zip(legend)
        .filter(|(_, is_legend)| !is_legend)
        .map(|(f, _)| (f.level, f.at))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(text: &str) -> Vec<Tlp> {
        markings(text).into_iter().map(|(level, _)| level).collect()
    }

    #[test]
    fn markings_table() {
        let cases: &[(&str, &[Tlp])] = &[
            ("[TLP:AMBER] subject", &[Tlp::Amber]),
            ("TLP: RED", &[Tlp::Red]),
            ("TLP : AMBER", &[Tlp::Amber]),
            ("tlp green\n", &[Tlp::Green]),
            ("TLP:AMBER+STRICT", &[Tlp::AmberStrict]),
            ("TLP-WHITE", &[Tlp::Clear]),
            ("[TLP:CLEAR]", &[Tlp::Clear]),
            ("the TLP levels are explained", &[]),
            ("TLP:REDACTED", &[]),
            ("XTLP:RED", &[]),
            (
                "TLP:AMBER — limited disclosure, recipients may share.\n\nBody",
                &[Tlp::Amber],
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(levels(text), *expected, "{text}");
        }
    }

    #[test]
    fn legend_is_not_a_marking() {
        let text = "Marking: TLP:GREEN\n\nTLP definitions:\nTLP:RED = for the eyes of named recipients only\nTLP:AMBER = limited disclosure\nTLP:GREEN = community-wide\nTLP:CLEAR = no limit\n";
        assert_eq!(markings(text), vec![(Tlp::Green, 9)]);
        let html_rows = "TLP:RED\tnamed recipients only\nTLP:AMBER\tlimited disclosure\n";
        assert_eq!(levels(html_rows), Vec::<Tlp>::new());
        let numbered = "1. TLP:RED - named recipients only\n2. TLP:CLEAR - no limit\n";
        assert_eq!(levels(numbered), Vec::<Tlp>::new());
        assert_eq!(levels(html_rows), Vec::<Tlp>::new());
    }
}
