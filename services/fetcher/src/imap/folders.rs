//! Listing folders into a tree: names decoded from modified UTF-7 for people (leniently,
//! case BR-04), the server's raw names kept byte for byte for commands.

use std::time::Duration;

use threatmail_core::mutf7;

use super::command::run_tagged;
use super::{ImapError, Session};

/// One LIST entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFolder {
    /// The name exactly as the server listed it, quoting undone.
    pub raw_name: String,
    /// The name for people; the raw name where it cannot be decoded.
    pub display_name: String,
    /// The hierarchy delimiter, if the server has one.
    pub delimiter: Option<String>,
    /// LIST attributes, e.g. `\HasChildren`, `\Junk`.
    pub attributes: Vec<String>,
    /// False for `\Noselect` and `\NonExistent`.
    pub selectable: bool,
}

/// `LIST "" "*"`, within `limit`.
///
/// async-imap's own `list()` ends its stream at the tagged reply without looking at its
/// status, so a `BAD User is authenticated but not connected.` (case BR-07) would read as
/// an empty folder list. The command is therefore run here and the tagged status checked.
pub async fn list(
    session: &mut Session,
    server: &str,
    user: &str,
    limit: Duration,
) -> Result<Vec<ListedFolder>, ImapError> {
    let mut folders = Vec::new();
    run_tagged(
        session,
        server,
        user,
        "LIST",
        "LIST \"\" \"*\"",
        limit,
        &mut |response| {
            if let imap_proto::Response::MailboxData(imap_proto::MailboxDatum::List(data)) =
                response
            {
                folders.push(listed_folder(data));
            }
        },
    )
    .await?;
    Ok(folders)
}

fn listed_folder(data: &imap_proto::MailboxListData<'_>) -> ListedFolder {
    let attributes: Vec<String> = data.name_attributes.iter().map(attribute_name).collect();
    let selectable = !attributes
        .iter()
        .any(|a| a.eq_ignore_ascii_case("\\Noselect") || a.eq_ignore_ascii_case("\\NonExistent"));
    let raw_name = unquote(&data.name);
    ListedFolder {
        display_name: mutf7::decode_lenient(raw_name.as_bytes())
            .unwrap_or_else(|| raw_name.clone()),
        raw_name,
        delimiter: data.delimiter.as_deref().map(str::to_owned),
        attributes,
        selectable,
    }
}

/// imap-proto hands quoted names over with their `\"` and `\\` escapes still in
/// (RFC 3501 §4.3 quoted strings); undo them so the name is the server's real name.
fn unquote(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(next @ ('"' | '\\')) => out.push(next),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn attribute_name(attribute: &imap_proto::NameAttribute<'_>) -> String {
    use imap_proto::NameAttribute as A;
    match attribute {
        A::NoInferiors => "\\Noinferiors".to_owned(),
        A::NoSelect => "\\Noselect".to_owned(),
        A::Marked => "\\Marked".to_owned(),
        A::Unmarked => "\\Unmarked".to_owned(),
        A::All => "\\All".to_owned(),
        A::Archive => "\\Archive".to_owned(),
        A::Drafts => "\\Drafts".to_owned(),
        A::Flagged => "\\Flagged".to_owned(),
        A::Junk => "\\Junk".to_owned(),
        A::Sent => "\\Sent".to_owned(),
        A::Trash => "\\Trash".to_owned(),
        A::Extension(name) => name.to_string(),
        _ => format!("{attribute:?}"),
    }
}

/// A folder and the folders below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderNode {
    /// The folder; levels the server did not list are filled in as not selectable.
    pub folder: ListedFolder,
    /// Sub-folders, sorted with INBOX first, then by display name.
    pub children: Vec<FolderNode>,
}

/// Builds the hierarchy from LIST entries by splitting raw names on their delimiter
/// (modified UTF-7 never encodes the delimiter, so splitting raw names is exact).
pub fn tree(folders: &[ListedFolder]) -> Vec<FolderNode> {
    let mut roots: Vec<FolderNode> = Vec::new();
    for folder in folders {
        let parts: Vec<&str> = match folder.delimiter.as_deref() {
            Some(delimiter) if !delimiter.is_empty() => folder.raw_name.split(delimiter).collect(),
            _ => vec![folder.raw_name.as_str()],
        };
        insert(&mut roots, &parts, 0, folder);
    }
    sort(&mut roots);
    roots
}

fn insert(level: &mut Vec<FolderNode>, parts: &[&str], depth: usize, folder: &ListedFolder) {
    let delimiter = folder.delimiter.clone().unwrap_or_default();
    let raw_prefix = parts[..=depth].join(&delimiter);
    let position = level
        .iter()
        .position(|node| node.folder.raw_name == raw_prefix);
    let index = match position {
        Some(index) => {
            if depth + 1 == parts.len() {
                // The listed entry replaces a filled-in placeholder.
                level[index].folder = folder.clone();
            }
            index
        }
        None => {
            let node_folder = if depth + 1 == parts.len() {
                folder.clone()
            } else {
                ListedFolder {
                    display_name: mutf7::decode_lenient(raw_prefix.as_bytes())
                        .unwrap_or_else(|| raw_prefix.clone()),
                    raw_name: raw_prefix,
                    delimiter: folder.delimiter.clone(),
                    attributes: vec!["\\Noselect".to_owned()],
                    selectable: false,
                }
            };
            level.push(FolderNode {
                folder: node_folder,
                children: Vec::new(),
            });
            level.len() - 1
        }
    };
    if depth + 1 < parts.len() {
        insert(&mut level[index].children, parts, depth + 1, folder);
    }
}

fn sort(level: &mut [FolderNode]) {
    level.sort_by(|a, b| {
        let a_inbox = a.folder.raw_name.eq_ignore_ascii_case("INBOX");
        let b_inbox = b.folder.raw_name.eq_ignore_ascii_case("INBOX");
        b_inbox
            .cmp(&a_inbox)
            .then_with(|| a.folder.display_name.cmp(&b.folder.display_name))
    });
    for node in level {
        sort(&mut node.children);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(raw: &str, delimiter: &str) -> ListedFolder {
        ListedFolder {
            raw_name: raw.to_owned(),
            display_name: mutf7::decode_lenient(raw.as_bytes()).unwrap_or_else(|| raw.to_owned()),
            delimiter: Some(delimiter.to_owned()),
            attributes: Vec::new(),
            selectable: true,
        }
    }

    #[test]
    fn unquote_undoes_quoted_string_escapes_only() {
        for (given, expected) in [
            (r#"Say \"hi\""#, r#"Say "hi""#),
            (r"back\\slash", r"back\slash"),
            (r"keep\n", r"keep\n"),
            ("plain", "plain"),
        ] {
            assert_eq!(unquote(given), expected, "{given}");
        }
    }

    #[test]
    fn br04_names_build_a_tree_with_raw_names_kept() {
        // The LIST of case BR-04 (a server's non-canonical encoding included).
        let folders = vec![
            listed("&BCQEOARIBDgEPQQzACYEIQQ,BDAEPA-", "|"),
            listed("&BBIERQQ+BDQETwRJBDgENQ-", "/"),
            listed("&BBIERQQ+BDQETwRJBDgENQ-/&BCQEOARIBDgEPQQz-", "/"),
            listed("R&-D", "/"),
            listed("INBOX", "/"),
        ];
        let roots = tree(&folders);
        let names: Vec<&str> = roots
            .iter()
            .map(|n| n.folder.display_name.as_str())
            .collect();
        assert_eq!(names, ["INBOX", "R&D", "Входящие", "Фишинг&Спам"]);
        let inbound = &roots[2];
        assert_eq!(inbound.folder.raw_name, "&BBIERQQ+BDQETwRJBDgENQ-");
        assert_eq!(inbound.children.len(), 1);
        assert_eq!(inbound.children[0].folder.display_name, "Входящие/Фишинг");
        assert_eq!(
            inbound.children[0].folder.raw_name, "&BBIERQQ+BDQETwRJBDgENQ-/&BCQEOARIBDgEPQQz-",
            "raw names are never re-encoded"
        );
        assert_eq!(roots[3].folder.raw_name, "&BCQEOARIBDgEPQQzACYEIQQ,BDAEPA-");
    }

    #[test]
    fn unlisted_parents_are_filled_in_as_not_selectable() {
        let roots = tree(&[listed("a/b/c", "/")]);
        assert_eq!(roots.len(), 1);
        assert!(!roots[0].folder.selectable);
        assert_eq!(roots[0].folder.raw_name, "a");
        let b = &roots[0].children[0];
        assert_eq!(b.folder.raw_name, "a/b");
        assert!(!b.folder.selectable);
        assert!(b.children[0].folder.selectable);
        // A parent listed after its child replaces the placeholder.
        let roots = tree(&[listed("a/b", "/"), listed("a", "/")]);
        assert!(roots[0].folder.selectable);
        assert_eq!(roots[0].children.len(), 1);
    }
}
