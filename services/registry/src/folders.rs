//! A stored source's folders, live from its server, and choosing which to sync.
//!
//! The registry asks the broker for the source's token with its own service credential
//! (`password` sources open their stored password instead) and has a fetcher log in and
//! list. Names come back twice (case BR-04): decoded for people, and raw exactly as the
//! server wrote them. A folder chosen by its display name is matched against the live list
//! and stored with the server's raw name, never with a re-encoding of the display name,
//! so a server's non-canonical modified UTF-7 still works for `EXAMINE`.

use secrecy::ExposeSecret as _;
use threatmail_core::mutf7;
use threatmail_proto::v1 as pb;
use threatmail_proto::v1::imap_connection::Auth;
use threatmail_source::folders::display_name_matches;
use threatmail_source::record::{AfterProcessing, AuthType};
use threatmail_source::{FolderSelection, SecretSlot, SourceRecord};

use crate::diagnosis::{
    self, AUTHENTICATE_FAILED, Context, NOT_CONNECTED, TokenFindings, checklist_text,
};
use crate::error::{RegistryError, Result, reason_of};
use crate::registry::{Registry, move_target_synced, parse_id};
use crate::spec::{self, problem};
use crate::upstream::upstream_error;

/// A token handed out has at least this long left, so the login cannot outlive it.
const MIN_TOKEN_VALIDITY_SECS: u32 = 120;

/// One listed folder, flattened out of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The server's name (the fetcher keeps it byte for byte).
    pub raw_name: String,
    /// Decoded.
    pub display_name: String,
    /// Not `\Noselect`.
    pub selectable: bool,
}

/// Every folder of a tree, parents first.
pub fn flatten(folders: &[pb::Folder]) -> Vec<Listed> {
    let mut out = Vec::new();
    for folder in folders {
        out.push(Listed {
            raw_name: String::from_utf8_lossy(&folder.raw_name).into_owned(),
            display_name: folder.display_name.clone(),
            selectable: folder.selectable,
        });
        out.extend(flatten(&folder.children));
    }
    out
}

fn connection(record: &SourceRecord) -> pb::ImapConnection {
    pb::ImapConnection {
        host: record.imap_host().to_owned(),
        port: u32::from(record.port),
        tls: record.tls,
        username: record.username.clone(),
        auth: None,
    }
}

impl Registry {
    /// The folder tree of the source with `id`, live.
    pub async fn list_folders(&self, id: &str) -> Result<pb::ListFoldersResponse> {
        let id = parse_id(id)?;
        let (record, _) = self.load(&id).await?;
        self.live_folders(&record).await
    }

    /// Logs in as `record` through a fetcher and lists its folders.
    #[tracing::instrument(skip_all, fields(source_id = %record.id))]
    pub(crate) async fn live_folders(
        &self,
        record: &SourceRecord,
    ) -> Result<pb::ListFoldersResponse> {
        match record.auth_type {
            AuthType::Password => {
                let password = spec::stored_secret(record, &self.keyring, SecretSlot::Current)?
                    .ok_or_else(|| RegistryError::SecretUnreadable {
                        source_id: record.id.clone(),
                        problem: "no password is stored: update the source with one".to_owned(),
                    })?;
                let mut connection = connection(record);
                connection.auth = Some(Auth::Password(password.expose_secret().to_owned()));
                self.upstreams
                    .list_folders(connection)
                    .await
                    .map_err(|status| {
                        let reason = reason_of(&status);
                        if reason == AUTHENTICATE_FAILED {
                            let p = diagnosis::refused_password(status.message(), &record.username);
                            RegistryError::Login {
                                code: status.code(),
                                reason,
                                message: p.message,
                            }
                        } else {
                            fetcher_failure(record, &status)
                        }
                    })
            }
            AuthType::MsOauth2 => {
                let mut force_refresh = false;
                loop {
                    let token = self
                        .upstreams
                        .get_token(pb::GetTokenRequest {
                            source_id: record.id.to_string(),
                            min_validity_seconds: MIN_TOKEN_VALIDITY_SECS,
                            force_refresh,
                        })
                        .await
                        .map_err(|status| broker_failure(&status))?;
                    let mut connection = connection(record);
                    connection.auth = Some(Auth::AccessToken(token.access_token.clone()));
                    match self.upstreams.list_folders(connection).await {
                        Ok(listed) => return Ok(listed),
                        // DESIGN §4: a refusal of a cached token gets one fresh token.
                        Err(status)
                            if reason_of(&status) == AUTHENTICATE_FAILED
                                && token.from_cache
                                && !force_refresh =>
                        {
                            tracing::info!("cached token refused; trying once with a fresh one");
                            force_refresh = true;
                        }
                        Err(status) => {
                            let reason = reason_of(&status);
                            if reason != AUTHENTICATE_FAILED && reason != NOT_CONNECTED {
                                return Err(fetcher_failure(record, &status));
                            }
                            let findings =
                                TokenFindings::from_broker(&token.warnings, token.claims.as_ref());
                            let found = diagnosis::refused_login(
                                &reason,
                                "",
                                &findings,
                                Context {
                                    mailbox: &record.username,
                                    app_id: &record.app_id,
                                    entered_object_id: record.object_id.as_deref(),
                                },
                            );
                            let checklist = found.checklist.as_ref();
                            let mut message: Vec<String> = found
                                .problems
                                .iter()
                                .filter(|p| checklist.is_none_or(|c| p.message != c.summary))
                                .map(|p| p.message.clone())
                                .collect();
                            message.extend(checklist.map(checklist_text));
                            return Err(RegistryError::Login {
                                code: status.code(),
                                reason,
                                message: message.join(" "),
                            });
                        }
                    }
                }
            }
        }
    }

    /// Replaces the folder selection of `id` if it is still at `expected_version`.
    pub async fn set_folders(
        &self,
        id: &str,
        expected_version: u64,
        entries: &[pb::FolderSelection],
    ) -> Result<pb::Source> {
        let id = parse_id(id)?;
        let (record, _) = self.load(&id).await?;
        if record.version != expected_version {
            return Err(RegistryError::Conflict {
                source_id: id,
                expected: expected_version,
                current: record.version,
            });
        }
        let listed = if entries.iter().any(|e| e.raw_name.is_empty()) {
            flatten(&self.live_folders(&record).await?.folders)
        } else {
            Vec::new()
        };
        let (selection, mut problems) = resolve(entries, &listed);
        if let AfterProcessing::MoveTo { folder } = &record.after_processing
            && let Some(target) = selection
                .iter()
                .find(|f| f.fetch && (f.raw_name == *folder || f.display_name == *folder))
        {
            problems.push(move_target_synced(&target.display_name));
        }
        if !problems.is_empty() {
            return Err(RegistryError::Invalid { problems });
        }
        let version = self
            .store
            .set_folders(&id, expected_version, &selection)
            .await?;
        tracing::info!(source_id = %id, version, folders = selection.len(), "folders selected");
        Ok(spec::to_proto(
            &SourceRecord { version, ..record },
            &selection,
        ))
    }
}

/// The selection for `entries`: raw names kept as given; a display name alone is looked up
/// in `listed`. Every problem is reported.
pub fn resolve(
    entries: &[pb::FolderSelection],
    listed: &[Listed],
) -> (Vec<FolderSelection>, Vec<pb::Problem>) {
    let mut selection: Vec<FolderSelection> = Vec::new();
    let mut problems = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let field = format!("folders[{i}]");
        let chosen = if entry.raw_name.is_empty() {
            let wanted = entry.display_name.trim();
            if wanted.is_empty() {
                problems.push(problem(
                    "validation.required",
                    &field,
                    "give the folder's raw name or its display name",
                ));
                continue;
            }
            let found: Vec<&Listed> = listed
                .iter()
                .filter(|f| display_name_matches(wanted, &f.display_name))
                .collect();
            match found.as_slice() {
                [one] if one.selectable => FolderSelection {
                    raw_name: one.raw_name.clone(),
                    display_name: one.display_name.clone(),
                    fetch: entry.fetch,
                },
                [one] => {
                    problems.push(problem(
                        "validation.folder_not_selectable",
                        &field,
                        format!(
                            "{:?} holds only other folders and cannot be synced",
                            one.display_name
                        ),
                    ));
                    continue;
                }
                [] => {
                    let names: Vec<&str> = listed.iter().map(|f| f.display_name.as_str()).collect();
                    problems.push(problem(
                        "validation.folder_not_found",
                        &field,
                        format!(
                            "the server has no folder {wanted:?}; it has: {}",
                            names.join(", ")
                        ),
                    ));
                    continue;
                }
                many => {
                    let raws: Vec<&str> = many.iter().map(|f| f.raw_name.as_str()).collect();
                    problems.push(problem(
                        "validation.folder_ambiguous",
                        &field,
                        format!(
                            "several folders display as {wanted:?} (raw names {}): choose one \
                             by its raw name",
                            raws.join(", ")
                        ),
                    ));
                    continue;
                }
            }
        } else {
            let Ok(raw) = String::from_utf8(entry.raw_name.clone()) else {
                problems.push(problem(
                    "validation.invalid",
                    &field,
                    "the raw name is not text: pass it as the folder list gave it",
                ));
                continue;
            };
            let display_name = if entry.display_name.trim().is_empty() {
                mutf7::decode_lenient(raw.as_bytes()).unwrap_or_else(|| raw.clone())
            } else {
                entry.display_name.clone()
            };
            FolderSelection {
                raw_name: raw,
                display_name,
                fetch: entry.fetch,
            }
        };
        if selection.iter().any(|f| f.raw_name == chosen.raw_name) {
            problems.push(problem(
                "validation.folder_repeated",
                &field,
                format!("{:?} is listed twice", chosen.display_name),
            ));
            continue;
        }
        selection.push(chosen);
    }
    (selection, problems)
}

/// A broker refusal while getting a source's token: setup problems (Entra's, the source's)
/// keep their reason and diagnosis; anything else is the broker's failure.
fn broker_failure(status: &tonic::Status) -> RegistryError {
    let reason = reason_of(status);
    if reason.starts_with("entra.") || reason.starts_with("source.") || reason.starts_with("token.")
    {
        RegistryError::Login {
            code: status.code(),
            reason,
            message: status.message().to_owned(),
        }
    } else {
        upstream_error("token broker", status)
    }
}

/// A fetcher failure other than a refused login.
fn fetcher_failure(record: &SourceRecord, status: &tonic::Status) -> RegistryError {
    let reason = reason_of(status);
    if reason.starts_with("imap.") {
        let p = diagnosis::connection_problem(
            &reason,
            status.message(),
            record.imap_host(),
            record.port,
        );
        RegistryError::Login {
            code: status.code(),
            reason,
            message: p.message,
        }
    } else {
        upstream_error("fetcher", status)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn listed() -> Vec<Listed> {
        // The BR-04 listing, as the fetcher returns it.
        [
            ("&BCQEOARIBDgEPQQzACYEIQQ,BDAEPA-", "Фишинг&Спам", true),
            ("&BBIERQQ+BDQETwRJBDgENQ-", "Входящие", true),
            (
                "&BBIERQQ+BDQETwRJBDgENQ-/&BCQEOARIBDgEPQQz-",
                "Входящие/Фишинг",
                true,
            ),
            ("R&-D", "R&D", true),
            ("[Gmail]", "[Gmail]", false),
        ]
        .into_iter()
        .map(|(raw, display, selectable)| Listed {
            raw_name: raw.to_owned(),
            display_name: display.to_owned(),
            selectable,
        })
        .collect()
    }

    fn by_display(name: &str, fetch: bool) -> pb::FolderSelection {
        pb::FolderSelection {
            raw_name: Vec::new(),
            display_name: name.to_owned(),
            fetch,
        }
    }

    #[test]
    fn br04_a_display_name_resolves_to_the_servers_raw_bytes() {
        let (selection, problems) = resolve(
            &[by_display("Фишинг&Спам", true), by_display("R&D", false)],
            &listed(),
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(selection[0].raw_name, "&BCQEOARIBDgEPQQzACYEIQQ,BDAEPA-");
        // Not the canonical re-encoding, which the server would not recognise.
        assert_ne!(selection[0].raw_name, mutf7::encode("Фишинг&Спам"));
        assert_eq!(selection[1].raw_name, "R&-D");
        assert!(!selection[1].fetch);
    }

    #[test]
    fn raw_names_are_kept_and_decoded_when_no_display_name_is_given() {
        let entry = pb::FolderSelection {
            raw_name: b"&BCQEOARIBDgEPQQzACYEIQQ,BDAEPA-".to_vec(),
            display_name: String::new(),
            fetch: true,
        };
        let (selection, problems) = resolve(&[entry], &[]);
        assert!(problems.is_empty());
        assert_eq!(selection[0].display_name, "Фишинг&Спам");
        assert_eq!(selection[0].raw_name, "&BCQEOARIBDgEPQQzACYEIQQ,BDAEPA-");
    }

    #[test]
    fn every_bad_entry_is_reported() {
        let entries = [
            by_display("Spam", true),
            by_display("[Gmail]", true),
            by_display("", true),
            by_display("R&D", true),
            pb::FolderSelection {
                raw_name: b"R&-D".to_vec(),
                display_name: String::new(),
                fetch: true,
            },
            pb::FolderSelection {
                raw_name: vec![0xff, 0xfe],
                display_name: String::new(),
                fetch: true,
            },
        ];
        let (selection, problems) = resolve(&entries, &listed());
        let reasons: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.field.as_str(), p.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("folders[0]", "validation.folder_not_found"),
                ("folders[1]", "validation.folder_not_selectable"),
                ("folders[2]", "validation.required"),
                ("folders[4]", "validation.folder_repeated"),
                ("folders[5]", "validation.invalid"),
            ]
        );
        assert_eq!(selection.len(), 1);
        assert!(problems[0].message.contains("Фишинг&Спам"));
    }

    #[test]
    fn flatten_walks_the_tree_parents_first() {
        let tree = vec![pb::Folder {
            raw_name: b"A".to_vec(),
            display_name: "A".into(),
            selectable: false,
            children: vec![pb::Folder {
                raw_name: b"A/B".to_vec(),
                display_name: "A/B".into(),
                selectable: true,
                ..Default::default()
            }],
            ..Default::default()
        }];
        let flat = flatten(&tree);
        assert_eq!(flat.len(), 2);
        assert_eq!(flat[1].raw_name, "A/B");
    }
}
