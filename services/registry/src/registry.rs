//! The registry's operations on sources: create, update, read, list, delete, folder
//! selection and status. The gRPC layer ([`crate::grpc`]) is a thin face over these;
//! "Save and Continue" lives in [`crate::test_source`] and live folder lists in
//! [`crate::folders`].

use std::sync::Arc;

use threatmail_proto::v1 as pb;
use threatmail_source::record::AfterProcessing;
use threatmail_source::status::FolderStatus;
use threatmail_source::{
    Fleet, FolderSelection, Keyring, SECRET_EXPIRY_WARNING, SourceId, SourceRecord, SourceStore,
};

use crate::error::{RegistryError, Result};
use crate::spec::{self, Stored, format_time, now_secs, problem};
use crate::upstream::Upstreams;

/// Everything the registry's operations need.
#[derive(Clone)]
pub struct Registry {
    pub(crate) store: SourceStore,
    pub(crate) keyring: Arc<Keyring>,
    pub(crate) upstreams: Upstreams,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// A source id from a request; one that cannot be an id names no source.
pub fn parse_id(id: &str) -> Result<SourceId> {
    SourceId::parse(id.trim()).map_err(|_| RegistryError::NotFound {
        source_id: id.to_owned(),
    })
}

impl Registry {
    /// The registry over `store`, sealing with `keyring`, testing through `upstreams`.
    pub fn new(store: SourceStore, keyring: Arc<Keyring>, upstreams: Upstreams) -> Self {
        Registry {
            store,
            keyring,
            upstreams,
        }
    }

    /// A source and its selection, or NotFound.
    pub(crate) async fn load(&self, id: &SourceId) -> Result<(SourceRecord, Vec<FolderSelection>)> {
        self.store
            .get_with_folders(id)
            .await?
            .ok_or_else(|| RegistryError::NotFound {
                source_id: id.to_string(),
            })
    }

    /// Creates a source from the form.
    pub async fn create(&self, spec: &pb::SourceSpec) -> Result<pb::Source> {
        let now = now_secs();
        let outcome = spec::check(spec, Stored::default(), now);
        let checked = outcome.checked.ok_or(RegistryError::Invalid {
            problems: outcome.problems,
        })?;
        self.refuse_another_sources_id(&checked.name, None).await?;
        let record = spec::new_record(SourceId::new_random(), checked, &self.keyring, now)?;
        let stored = self.store.create(&record).await?;
        tracing::info!(source_id = %stored.id, "source created");
        Ok(spec::to_proto(&stored, &[]))
    }

    /// Replaces a source's fields if it is still at `expected_version`.
    pub async fn update(
        &self,
        id: &str,
        expected_version: u64,
        spec: &pb::SourceSpec,
        clear_next_secret: bool,
    ) -> Result<pb::Source> {
        let id = parse_id(id)?;
        let (mut record, folders) = self.load(&id).await?;
        if record.version != expected_version {
            return Err(RegistryError::Conflict {
                source_id: id,
                expected: expected_version,
                current: record.version,
            });
        }
        let now = now_secs();
        let stored = Stored {
            secret: record.secret.is_some(),
            next_secret: record.next_secret.is_some() && !clear_next_secret,
        };
        // The next secret's expiry date goes with it: the spec a client read back still
        // carries the date, and would otherwise be refused as a date without a secret.
        let without_next;
        let spec = if clear_next_secret && spec.next_secret_key.is_empty() {
            without_next = pb::SourceSpec {
                next_secret_expires: String::new(),
                ..spec.clone()
            };
            &without_next
        } else {
            spec
        };
        let outcome = spec::check(spec, stored, now);
        let mut problems = outcome.problems;
        if let AfterProcessing::MoveTo { folder } = &record_after(&outcome.checked)
            && let Some(selected) = folders
                .iter()
                .find(|f| f.fetch && (f.raw_name == *folder || f.display_name == *folder))
        {
            problems.push(move_target_synced(&selected.display_name));
        }
        let checked = match outcome.checked {
            Some(checked) if problems.is_empty() => checked,
            _ => return Err(RegistryError::Invalid { problems }),
        };
        self.refuse_another_sources_id(&checked.name, Some(&id))
            .await?;
        let tokens_from = token_inputs(&record);
        spec::apply(&mut record, checked, &self.keyring, now, clear_next_secret)?;
        let stored = self.store.update(&record, expected_version).await?;
        tracing::info!(source_id = %stored.id, version = stored.version, "source updated");
        if token_inputs(&stored) != tokens_from {
            self.tell_broker(&stored.id).await;
        }
        Ok(spec::to_proto(&stored, &folders))
    }

    /// Refuses a name that is another source's id: commands take a source by id or by
    /// name, so `source rm NAME` could otherwise remove the other source.
    async fn refuse_another_sources_id(&self, name: &str, own: Option<&SourceId>) -> Result<()> {
        let Ok(other) = SourceId::parse(name.trim()) else {
            return Ok(());
        };
        if own == Some(&other) || self.store.get(&other).await?.is_none() {
            return Ok(());
        }
        Err(RegistryError::Invalid {
            problems: vec![problem(
                "validation.invalid",
                "name",
                format!(
                    "is the id of another source ({other}): commands take a source by id or \
                     name, so choose a name that is not an id"
                ),
            )],
        })
    }

    /// Has the broker drop what it holds of `id` (it keeps an opened source for
    /// `cache.source_ttl`), so a fixed secret is used at once, not reported wrong for a few
    /// seconds more. Best effort: another broker replica sees the change within that time.
    async fn tell_broker(&self, id: &SourceId) {
        // A deleted source is unknown to the broker too: what it held is dropped all the same.
        if let Err(status) = self.upstreams.invalidate(id.as_str()).await
            && status.code() != tonic::Code::NotFound
        {
            tracing::warn!(source_id = %id, code = ?status.code(), message = status.message(), "could not tell the token broker that the source changed; it reads it again within cache.source_ttl");
        }
    }

    /// One source, without secrets.
    pub async fn get(&self, id: &str) -> Result<pb::Source> {
        let id = parse_id(id)?;
        let (record, folders) = self.load(&id).await?;
        Ok(spec::to_proto(&record, &folders))
    }

    /// Every source, by name, without secrets.
    pub async fn list(&self) -> Result<Vec<pb::Source>> {
        let mut sources = Vec::new();
        for record in self.store.list().await? {
            // Read with its selection; one deleted meanwhile is left out.
            if let Some((record, folders)) = self.store.get_with_folders(&record.id).await? {
                sources.push(spec::to_proto(&record, &folders));
            }
        }
        Ok(sources)
    }

    /// Deletes a source with its selection and status.
    pub async fn delete(&self, id: &str) -> Result<bool> {
        let id = parse_id(id)?;
        let deleted = self.store.delete(&id).await?;
        if deleted {
            tracing::info!(source_id = %id, "source deleted");
            self.tell_broker(&id).await;
        }
        Ok(deleted)
    }

    /// The per-folder status of the selected folders, and the secrets expiring soon.
    pub async fn status(&self, id: &str) -> Result<pb::SourceStatus> {
        let id = parse_id(id)?;
        let (record, folders) = self.load(&id).await?;
        let raw_names: Vec<String> = folders.iter().map(|f| f.raw_name.clone()).collect();
        let statuses = self.store.folder_statuses(&id, &raw_names).await?;
        let now = now_secs();
        let expiring = record.expiring_secrets(now, SECRET_EXPIRY_WARNING);
        let mut warnings: Vec<pb::Problem> = expiring
            .iter()
            .map(|secret| {
                let when = format_time(secret.expires_at);
                if secret.expired {
                    problem(
                        "source.secret_expired",
                        "secret_expires",
                        format!(
                            "the {} client secret expired on {when}: create a new one and \
                             update the source (setup step 3)",
                            secret.slot
                        ),
                    )
                } else {
                    let days = (secret.expires_at - now) / 86_400;
                    problem(
                        "source.secret_expiring",
                        "secret_expires",
                        format!(
                            "the {} client secret expires on {when} (in {days} days): create a \
                             new one and enter it as the next secret (setup step 3)",
                            secret.slot
                        ),
                    )
                }
            })
            .collect();
        if record.enabled && folders.iter().any(|f| f.fetch) {
            warnings.extend(no_fetcher_warning(&self.store.fleet().await?));
        }
        Ok(pb::SourceStatus {
            id: id.to_string(),
            folders: folders
                .iter()
                .zip(statuses)
                .map(|(selection, status)| folder_status(selection, status))
                .collect(),
            warnings,
            expiring_secrets: expiring
                .iter()
                .map(|s| pb::SecretExpiry {
                    slot: s.slot.to_string(),
                    expires_at: s.expires_at,
                    expired: s.expired,
                })
                .collect(),
            enabled: record.enabled,
        })
    }
}

/// The warning that nothing syncs because no fetcher reports as running (the folders'
/// states are then the last ones written, not what is happening), if none does.
fn no_fetcher_warning(fleet: &Fleet) -> Option<pb::Problem> {
    if !fleet.running.is_empty() {
        return None;
    }
    let last = match &fleet.last_lapsed {
        Some((instance, at_ms)) => format!(
            "the last one, {instance:?}, stopped reporting at {}",
            format_time(at_ms / 1000)
        ),
        None => "none has reported to this Redis".to_owned(),
    };
    Some(problem(
        "fetcher.none_running",
        "",
        format!(
            "no fetcher is running, so nothing is being synced and the states below are the \
             last ones written ({last}): start one (threatmail serve --target fetcher, or \
             --target all) with this redis_url"
        ),
    ))
}

/// What of a source the token broker reads: its tokens (app, tenant, secrets, cloud), whether
/// it hands any out, and the Object ID its token warnings compare with.
#[derive(PartialEq)]
struct TokenInputs {
    auth_type: threatmail_source::record::AuthType,
    app_id: String,
    tenant_id: String,
    object_id: Option<String>,
    secret: Option<threatmail_source::record::StoredSecret>,
    next_secret: Option<threatmail_source::record::StoredSecret>,
    cloud: threatmail_source::Cloud,
    enabled: bool,
}

fn token_inputs(record: &SourceRecord) -> TokenInputs {
    TokenInputs {
        auth_type: record.auth_type,
        app_id: record.app_id.clone(),
        tenant_id: record.tenant_id.clone(),
        object_id: record.object_id.clone(),
        secret: record.secret.clone(),
        next_secret: record.next_secret.clone(),
        cloud: record.cloud,
        enabled: record.enabled,
    }
}

fn record_after(checked: &Option<spec::Checked>) -> AfterProcessing {
    checked
        .as_ref()
        .map(|c| c.after_processing.clone())
        .unwrap_or_default()
}

/// The problem of a move target that is also synced (DESIGN §4: it must not be).
pub fn move_target_synced(display_name: &str) -> pb::Problem {
    problem(
        "validation.move_target_synced",
        "move_to_folder",
        format!(
            "{display_name:?} is the folder processed messages move to, so it cannot be synced \
             too: choose another target or stop fetching it"
        ),
    )
}

fn folder_status(selection: &FolderSelection, status: FolderStatus) -> pb::FolderStatus {
    let (last_error, checklist, at) = match status.last_error {
        Some(error) => (
            Some(pb::Problem {
                reason: error.reason,
                message: error.message,
                field: String::new(),
                upstream_code: error.upstream_code,
            }),
            error.checklist,
            error.at,
        ),
        None => (None, Vec::new(), 0),
    };
    pb::FolderStatus {
        display_name: selection.display_name.clone(),
        last_poll: status.last_poll.unwrap_or_default(),
        uidvalidity: status.uidvalidity.unwrap_or_default(),
        last_uid: status.last_uid.unwrap_or_default(),
        messages_synced: status.messages_synced,
        messages_skipped: status.messages_skipped,
        last_error,
        retry_count: status.retry_count,
        connection_state: status.connection_state.to_string(),
        raw_name: selection.raw_name.as_bytes().to_vec(),
        last_error_checklist: checklist,
        last_error_at: at,
        fetch: selection.fetch,
    }
}
