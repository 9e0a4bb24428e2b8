//! A source's folder selection: which folders the fetchers sync (DESIGN §1, "Select
//! folders").
//!
//! Each entry keeps the folder's name twice: `raw_name` exactly as the server listed it
//! (modified UTF-7, possibly in a server's non-canonical form, case BR-04), which is what
//! `EXAMINE`/`SELECT` must send byte for byte, and `display_name`, decoded for people. A
//! name is never re-encoded from its display form: a server that writes `&` inside a base64
//! run would not recognise the canonical encoding.

use serde::{Deserialize, Serialize};

/// One selected (or deselected) folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderSelection {
    /// The name exactly as the server listed it, for commands.
    pub raw_name: String,
    /// The decoded name, hierarchy joined with the server's delimiter.
    pub display_name: String,
    /// Whether the fetchers sync it.
    pub fetch: bool,
}

/// The JSON stored for a selection.
pub fn encode(folders: &[FolderSelection]) -> String {
    // Plain strings and booleans always serialise.
    serde_json::to_string(folders).unwrap_or_else(|_| unreachable!("folders serialise"))
}

/// A selection from its JSON.
pub fn decode(json: &str) -> Result<Vec<FolderSelection>, serde_json::Error> {
    serde_json::from_str(json)
}

/// Whether `wanted` (as a person typed it) names the folder displayed as `display_name`:
/// equal, or both INBOX in any case (RFC 3501 §5.1: INBOX is case-insensitive), with
/// surrounding spaces ignored.
pub fn display_name_matches(wanted: &str, display_name: &str) -> bool {
    let wanted = wanted.trim();
    let inbox = |name: &str| {
        name.eq_ignore_ascii_case("INBOX")
            || name
                .get(..6)
                .is_some_and(|head| head.eq_ignore_ascii_case("INBOX/"))
    };
    if inbox(wanted) && inbox(display_name) {
        wanted.get(5..) == display_name.get(5..) && wanted.len() == display_name.len()
    } else {
        wanted == display_name
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn selections_round_trip_with_raw_names_untouched() {
        let folders = vec![
            FolderSelection {
                raw_name: "&BCQEOARIBDgEPQQzACYEIQQ,BDAEPA-".to_owned(),
                display_name: "Фишинг&Спам".to_owned(),
                fetch: true,
            },
            FolderSelection {
                raw_name: "INBOX".to_owned(),
                display_name: "INBOX".to_owned(),
                fetch: false,
            },
        ];
        let json = encode(&folders);
        assert!(json.contains("&BCQEOARIBDgEPQQzACYEIQQ,BDAEPA-"), "{json}");
        assert_eq!(decode(&json).unwrap(), folders);
        assert!(decode(r#"[{"raw_name":"a","display_name":"a","fetch":true,"x":1}]"#).is_err());
    }

    #[test]
    fn display_names_match_exactly_except_inbox_case() {
        assert!(display_name_matches("Фишинг&Спам", "Фишинг&Спам"));
        assert!(display_name_matches(" Фишинг&Спам ", "Фишинг&Спам"));
        assert!(!display_name_matches("фишинг&спам", "Фишинг&Спам"));
        assert!(display_name_matches("inbox", "INBOX"));
        assert!(display_name_matches("Inbox/Phish", "INBOX/Phish"));
        assert!(!display_name_matches("Inbox/phish", "INBOX/Phish"));
        assert!(!display_name_matches("INBOXES", "INBOX"));
        assert!(!display_name_matches("Phish", "Phish Reports"));
    }
}
