//! Syncing one (source, folder) as DESIGN §4 lays it out, on a logged-in session and under
//! a held lease:
//!
//! 1. `EXAMINE` the folder (`SELECT` only when the source's action after processing changes
//!    the mailbox): UIDVALIDITY, UIDNEXT.
//! 2. Compare with the checkpoint (uidvalidity, last_uid). A changed UIDVALIDITY starts
//!    again from UID 1; the store's identity (content hash, and Message-ID + Date + From)
//!    keeps that from duplicating anything (case BR-06). So does a checkpoint made on
//!    another mailbox or server (the source's address was corrected): two mailboxes'
//!    folders may share a UIDVALIDITY, and their UIDs say nothing about each other.
//! 3. `UID FETCH last+1:* (UID RFC822.SIZE)`, then bodies in batches bounded by count and
//!    bytes with `BODY.PEEK[]` under a hard byte cap; oversized messages are recorded as
//!    skipped with their size, not fetched.
//! 4. Each batch is parsed and written together with the new checkpoint in one atomic
//!    step that checks the lease's fencing token, so a crash anywhere loses nothing and
//!    duplicates nothing, and a fetcher that lost its lease commits nothing.
//! 5. The action after processing (mark seen, or move) is applied to a batch's UIDs only
//!    after the batch has committed. A crash between the commit and the action leaves
//!    committed messages without their action, so the store keeps, beside the checkpoint,
//!    the last UID the action was applied through, and every sync first reconciles the
//!    committed messages after it: those still in the folder (for move) or still unseen
//!    (for seen) get their action then. Messages before it are left alone, so a message a
//!    person marked unread again stays unread. An action configured since (or another
//!    UIDVALIDITY) starts from UID 1. A failed action (e.g. a move target that does not
//!    exist) leaves the messages where they are, is reported, and is retried at the next
//!    sync; new mail is still stored. Messages skipped for their size have no record and
//!    get no action.

use std::time::Duration;

use threatmail_source::SourceId;
use threatmail_source::record::AfterProcessing;
use threatmail_store::{
    ActionsDone, BatchItem, Fence, IncomingMessage, Lease, Store, StoreError, WriteBatch,
    WriteOutcome,
};

use crate::connections::ConnectionSlots;
use crate::imap::actions::{MoveSupport, mark_seen, move_support, move_to, uid_search};
use crate::imap::fetch::{Announced, Body, announced_since, bodies};
use crate::imap::select_folder::{Access, open};
use crate::imap::{ImapError, Session};

/// Batch and size limits of a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncLimits {
    /// Messages per body fetch and per atomic write.
    pub batch_messages: usize,
    /// Announced bytes per body fetch.
    pub batch_bytes: u64,
    /// Messages larger than this are recorded as skipped, never fetched.
    pub max_message_bytes: u64,
    /// Every IMAP command's timeout.
    pub command_timeout: Duration,
    /// How long a lease is taken or renewed for.
    pub lease_ttl: Duration,
}

impl Default for SyncLimits {
    fn default() -> Self {
        Self {
            batch_messages: 50,
            batch_bytes: 16 * 1024 * 1024,
            max_message_bytes: 50 * 1024 * 1024,
            command_timeout: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(60),
        }
    }
}

/// Errors of a folder sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The IMAP session failed; the sync resumes from the last committed UID.
    #[error("failed to sync folder {folder:?} of source {source_id}")]
    Imap {
        source_id: String,
        folder: String,
        #[source]
        source: ImapError,
    },
    /// The lease was lost (expired or taken over): nothing more is written.
    #[error("lost the lease of folder {folder:?} of source {source_id}; another fetcher has it")]
    LeaseLost { source_id: String, folder: String },
    /// The store failed.
    #[error("failed to store folder {folder:?} of source {source_id}")]
    Store {
        source_id: String,
        folder: String,
        #[source]
        source: StoreError,
    },
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// UIDVALIDITY of the folder.
    pub uidvalidity: u32,
    /// The checkpoint's last UID after the sync.
    pub last_uid: u32,
    /// New records.
    pub stored: usize,
    /// Known records seen at a new place.
    pub locations_added: usize,
    /// Already known at this place.
    pub already_stored: usize,
    /// Recorded as skipped (over the size limit).
    pub skipped: usize,
    /// Whether UIDVALIDITY changed since the checkpoint.
    pub uidvalidity_changed: bool,
    /// Messages the action after processing was applied to (committed ones left pending
    /// by an earlier sync included).
    pub acted: usize,
    /// Why the action after processing could not be applied (the messages stay as they
    /// are and the action is retried at the next sync).
    pub action_error: Option<ActionError>,
    /// The sync ended early because the mailbox is held this much longer (see
    /// [`SyncContext::holds`]); the rest of the folder waits for a later sync.
    pub held: Option<Duration>,
}

/// An action after processing the server refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionError {
    /// The action, as the status names it.
    pub action: AfterProcessing,
    /// The server's words.
    pub text: String,
}

impl ActionError {
    /// What the folder's status says: what failed, that nothing was lost, what to do.
    pub fn message(&self, folder: &str) -> String {
        match &self.action {
            AfterProcessing::MoveTo { folder: target } => format!(
                "messages of {folder:?} could not be moved to {target:?} ({}): create the \
                 folder {target:?} in the mailbox, or change the source's move target \
                 (--move-to); the messages stay in {folder:?}, are stored all the same, \
                 and are moved at the next poll once the target exists",
                self.text
            ),
            _ => format!(
                "messages of {folder:?} could not be marked seen ({}); they are stored all \
                 the same and marking is retried at the next poll",
                self.text
            ),
        }
    }
}

/// What a folder sync works with: the session's server and mailbox, the store, the
/// source and the limits.
#[derive(Debug, Clone, Copy)]
pub struct SyncContext<'a> {
    /// `host:port`, for messages.
    pub server: &'a str,
    /// The mailbox logged in to.
    pub user: &'a str,
    /// Where records and checkpoints go.
    pub store: &'a Store,
    /// The source.
    pub source_id: &'a SourceId,
    /// EXAMINE, or SELECT when an action after processing changes the mailbox.
    pub access: Access,
    /// Batches, sizes, timeouts.
    pub limits: &'a SyncLimits,
    /// Where the fleet's throttling holds on `user`'s mailbox are read, before each batch
    /// after the first is fetched: a hold (Exchange throttled another session on the
    /// mailbox) ends the sync once what was fetched is written. `None` reads none.
    pub holds: Option<&'a ConnectionSlots>,
}

/// Syncs `folder` (its raw name) on `session`, holding `lease`, with no action after
/// processing.
pub async fn sync_folder(
    session: &mut Session,
    context: SyncContext<'_>,
    folder: &str,
    lease: &Lease,
) -> Result<SyncReport, SyncError> {
    sync_folder_with_action(session, context, &AfterProcessing::None, folder, lease).await
}

/// Syncs `folder` (its raw name) on `session`, holding `lease`, applying `action` to each
/// committed batch (and first to committed messages an earlier sync left pending). The
/// folder is opened with `SELECT` when the action changes the mailbox. A move into the
/// folder itself does nothing.
#[tracing::instrument(skip_all, fields(source_id = %context.source_id.as_str(), folder = %folder))]
pub async fn sync_folder_with_action(
    session: &mut Session,
    context: SyncContext<'_>,
    action: &AfterProcessing,
    folder: &str,
    lease: &Lease,
) -> Result<SyncReport, SyncError> {
    let action = match action {
        AfterProcessing::MoveTo { folder: target } if target == folder => &AfterProcessing::None,
        other => other,
    };
    let SyncContext {
        server,
        user,
        store,
        source_id,
        access,
        limits,
        holds,
    } = context;
    let imap = |source| SyncError::Imap {
        source_id: source_id.as_str().to_owned(),
        folder: folder.to_owned(),
        source,
    };
    let stored = |source| store_error(source_id, folder, source);
    let access = if *action == AfterProcessing::None {
        access
    } else {
        Access::ReadWrite
    };
    let state = open(
        session,
        server,
        user,
        folder,
        access,
        limits.command_timeout,
    )
    .await
    .map_err(imap)?;
    // A checkpoint says nothing about another mailbox (the source's address or server was
    // changed): the folder then syncs from its first UID.
    let mailbox = format!("{}@{}", user.to_lowercase(), server.to_lowercase());
    if store
        .claim_checkpoint(lease, &mailbox)
        .await
        .map_err(stored)?
    {
        tracing::warn!(
            mailbox = %mailbox,
            "the source now logs in to another mailbox or server; syncing the folder from its first message"
        );
    }
    let checkpoint = store.checkpoint(source_id, folder).await.map_err(stored)?;
    let uidvalidity_changed = checkpoint.is_some_and(|c| c.uidvalidity != state.uidvalidity);
    let last_uid = match checkpoint {
        Some(c) if c.uidvalidity == state.uidvalidity => c.last_uid,
        _ => 0,
    };
    let mut report = SyncReport {
        uidvalidity: state.uidvalidity,
        last_uid,
        uidvalidity_changed,
        ..SyncReport::default()
    };
    if uidvalidity_changed {
        tracing::warn!(
            old = checkpoint.map(|c| c.uidvalidity),
            new = state.uidvalidity,
            "uidvalidity changed; resyncing the folder from the start"
        );
    }
    let mut actor = Actor::new(action);
    if actor.is_active() {
        actor
            .support(session, server, user, limits)
            .await
            .map_err(imap)?;
        // Committed earlier but left without their action (a crash after the commit, a
        // refused move, or an action configured since): the UIDs after the last one the
        // action was applied through.
        let from = store
            .actions_done(source_id, folder)
            .await
            .map_err(stored)?
            .filter(|done| {
                done.uidvalidity == state.uidvalidity && Some(&done.action) == actor.key.as_ref()
            })
            .map_or(1, |done| done.through_uid.saturating_add(1));
        if last_uid > 0 && from <= last_uid {
            let criteria = match action {
                AfterProcessing::MarkSeen => format!("UNSEEN UID {from}:{last_uid}"),
                _ => format!("UID {from}:{last_uid}"),
            };
            let pending = uid_search(session, server, user, &criteria, limits.command_timeout)
                .await
                .map_err(imap)?;
            // Skipped messages (over the size limit) have no record: they stay as they are.
            let skipped: Vec<u32> = if pending.is_empty() {
                Vec::new()
            } else {
                store
                    .skipped(source_id, folder)
                    .await
                    .map_err(stored)?
                    .into_iter()
                    .filter(|(uidvalidity, ..)| *uidvalidity == state.uidvalidity)
                    .map(|(_, uid, ..)| uid)
                    .collect()
            };
            let pending: Vec<u32> = pending
                .into_iter()
                .filter(|uid| (from..=last_uid).contains(uid) && !skipped.contains(uid))
                .collect();
            if !pending.is_empty() {
                tracing::info!(
                    pending = pending.len(),
                    "applying the action after processing to committed messages"
                );
            }
            actor
                .apply(session, server, user, &pending, limits, &mut report)
                .await
                .map_err(imap)?;
            actor
                .record(store, lease, state.uidvalidity, last_uid)
                .await
                .map_err(stored)?;
        }
    }
    // UIDNEXT says there is nothing new: no FETCH at all.
    if state
        .uidnext
        .is_some_and(|next| next <= last_uid.saturating_add(1))
        || state.exists == 0
    {
        return Ok(report);
    }
    let announced = announced_since(
        session,
        server,
        user,
        last_uid.saturating_add(1),
        limits.command_timeout,
    )
    .await
    .map_err(imap)?;
    // A three-stage pipeline in lockstep: while batch n is written, batch n+1 is parsed
    // and batch n+2's bodies are fetched, so the connection, the parser and the store
    // (Redis round trips, blob fsyncs) work at the same time; at most three batches are
    // held. Writes (and their checkpoints) stay in UID order: a batch is written only
    // after the one before it has committed.
    let batches = batches(&announced, limits);
    let mut fetched: Option<Vec<(u32, Body)>> = None;
    let mut parsed: Option<Vec<BatchItem>> = None;
    for step in 0..batches.len() + 2 {
        let to_write = step
            .checked_sub(2)
            .and_then(|n| batches.get(n))
            .zip(parsed.take());
        let to_parse = step
            .checked_sub(1)
            .and_then(|n| batches.get(n))
            .zip(fetched.take());
        // The first batch follows the scheduler's own check of the hold.
        if step > 0 && step < batches.len() && report.held.is_none() {
            report.held = held(holds, user).await;
            if let Some(left) = report.held {
                tracing::info!(wait = ?left, "the mailbox is throttled (another session was told); writing what was fetched and stopping");
            }
        }
        let to_fetch = batches.get(step).filter(|_| report.held.is_none());
        let writes = to_write.is_some();
        let mut written_uids: Vec<u32> = to_write
            .as_ref()
            .map(|(batch, _)| batch.iter().map(|m| m.uid).collect())
            .unwrap_or_default();
        let connection = &mut *session;
        let write = async move {
            let (batch, items) = to_write?;
            let write = WriteBatch {
                source_id: source_id.clone(),
                folder: folder.to_owned(),
                uidvalidity: state.uidvalidity,
                fence: Fence::Token(lease.token),
                items,
                checkpoint_uid: batch.last().map(|m| m.uid),
            };
            Some(write_batch(store, lease, write, limits).await)
        };
        let parse = async move {
            let (batch, bodies) = to_parse?;
            Some(batch_items(batch, bodies, limits).await)
        };
        let fetch = async move {
            let batch = to_fetch?;
            Some(fetch_batch(connection, server, user, batch, limits).await)
        };
        let (written, items, bodies) = tokio::join!(write, parse, fetch);
        // The oldest batch first: what was written counts before a later failure.
        if let Some(written) = written {
            let (outcome, renewed) = written.map_err(stored)?;
            for item in &outcome.items {
                match item {
                    threatmail_store::ItemOutcome::Stored(_) => report.stored += 1,
                    threatmail_store::ItemOutcome::LocationAdded(_) => report.locations_added += 1,
                    threatmail_store::ItemOutcome::AlreadyStored(_) => report.already_stored += 1,
                    threatmail_store::ItemOutcome::Skipped { .. } => report.skipped += 1,
                }
            }
            // Skipped messages have no record, so no action either.
            written_uids.retain(|uid| {
                !outcome.items.iter().any(
                    |item| matches!(item, threatmail_store::ItemOutcome::Skipped { uid: s } if s == uid),
                )
            });
            if let Some(checkpoint) = outcome.checkpoint {
                report.last_uid = checkpoint.last_uid;
            }
            if !renewed {
                return Err(SyncError::LeaseLost {
                    source_id: source_id.as_str().to_owned(),
                    folder: folder.to_owned(),
                });
            }
        }
        parsed = items.transpose().map_err(stored)?;
        fetched = bodies.transpose().map_err(imap)?;
        // The batch has committed: now its action (never before).
        if actor.is_active() && writes {
            actor
                .apply(session, server, user, &written_uids, limits, &mut report)
                .await
                .map_err(imap)?;
            actor
                .record(store, lease, state.uidvalidity, report.last_uid)
                .await
                .map_err(stored)?;
        }
        if report.held.is_some() && fetched.is_none() && parsed.is_none() {
            break;
        }
    }
    tracing::info!(
        held = report.held.is_some(),
        stored = report.stored,
        locations_added = report.locations_added,
        skipped = report.skipped,
        last_uid = report.last_uid,
        "folder synced"
    );
    Ok(report)
}

/// How much longer `user`'s mailbox is held, as `holds` says (a failed read holds nothing).
async fn held(holds: Option<&ConnectionSlots>, user: &str) -> Option<Duration> {
    match holds?.mailbox_held(user).await {
        Ok(left) => left,
        Err(error) => {
            tracing::debug!(error = %threatmail_core::error::chain(&error), "could not read the fleet's throttling");
            None
        }
    }
}

/// UIDs per action command.
const ACTION_CHUNK: usize = 500;

/// Applies the action after processing; after a refusal it stops for the rest of the
/// sync (the messages stay as they are and the next sync reconciles them).
struct Actor<'a> {
    action: &'a AfterProcessing,
    /// The action's name in the store's record of how far it went.
    key: Option<String>,
    support: MoveSupport,
    refused: bool,
}

impl<'a> Actor<'a> {
    fn new(action: &'a AfterProcessing) -> Self {
        let key = match action {
            AfterProcessing::None => None,
            AfterProcessing::MarkSeen => Some("seen".to_owned()),
            AfterProcessing::MoveTo { folder } => Some(format!("move:{folder}")),
        };
        Self {
            action,
            key,
            support: MoveSupport::default(),
            refused: false,
        }
    }

    /// Records that the action was applied to every committed message through `uid`,
    /// unless it was refused in this sync (then the next sync tries those again). A lease
    /// lost meanwhile writes nothing; the next write finds that out.
    async fn record(
        &self,
        store: &Store,
        lease: &Lease,
        uidvalidity: u32,
        uid: u32,
    ) -> Result<(), StoreError> {
        let Some(action) = self.key.clone().filter(|_| self.is_active()) else {
            return Ok(());
        };
        let done = ActionsDone {
            uidvalidity,
            action,
            through_uid: uid,
        };
        if !store.record_actions_done(lease, &done).await? {
            tracing::debug!(uid, "lease lost before recording how far the action went");
        }
        Ok(())
    }

    fn is_active(&self) -> bool {
        *self.action != AfterProcessing::None && !self.refused
    }

    async fn support(
        &mut self,
        session: &mut Session,
        server: &str,
        user: &str,
        limits: &SyncLimits,
    ) -> Result<(), ImapError> {
        if matches!(self.action, AfterProcessing::MoveTo { .. }) {
            self.support = move_support(session, server, user, limits.command_timeout).await?;
        }
        Ok(())
    }

    /// Applies the action to `uids`; a refusal (`NO`, e.g. `[TRYCREATE]` for a missing
    /// target) goes into the report, anything else ends the sync.
    async fn apply(
        &mut self,
        session: &mut Session,
        server: &str,
        user: &str,
        uids: &[u32],
        limits: &SyncLimits,
        report: &mut SyncReport,
    ) -> Result<(), ImapError> {
        if !self.is_active() || uids.is_empty() {
            return Ok(());
        }
        let limit = limits.command_timeout;
        // Bounded command lines, however many (and however sparse) pending UIDs there are.
        let mut result = Ok(());
        for chunk in uids.chunks(ACTION_CHUNK) {
            result = match self.action {
                AfterProcessing::None => Ok(()),
                AfterProcessing::MarkSeen => mark_seen(session, server, user, chunk, limit).await,
                AfterProcessing::MoveTo { folder } => {
                    move_to(session, server, user, chunk, folder, self.support, limit).await
                }
            };
            if result.is_err() {
                break;
            }
            report.acted += chunk.len();
        }
        match result {
            Ok(()) => Ok(()),
            Err(ImapError::CommandFailed { text, .. }) => {
                tracing::warn!(
                    action = ?self.action,
                    text = %text,
                    "the server refused the action after processing; retried at the next sync"
                );
                self.refused = true;
                report.action_error = Some(ActionError {
                    action: self.action.clone(),
                    text,
                });
                Ok(())
            }
            Err(other) => Err(other),
        }
    }
}

/// Writes one batch with its checkpoint, then renews the lease; returns the outcome and
/// whether the lease is still held.
async fn write_batch(
    store: &Store,
    lease: &Lease,
    batch: WriteBatch,
    limits: &SyncLimits,
) -> Result<(WriteOutcome, bool), StoreError> {
    let outcome = store.write(&batch).await?;
    let renewed = store.renew_lease(lease, limits.lease_ttl).await?;
    Ok((outcome, renewed))
}

/// The bodies of one batch: those within the size limit, each under the byte cap.
async fn fetch_batch(
    session: &mut Session,
    server: &str,
    user: &str,
    batch: &[Announced],
    limits: &SyncLimits,
) -> Result<Vec<(u32, Body)>, ImapError> {
    let wanted: Vec<u32> = batch
        .iter()
        .filter(|m| m.size <= limits.max_message_bytes)
        .map(|m| m.uid)
        .collect();
    bodies(
        session,
        server,
        user,
        &wanted,
        limits.max_message_bytes,
        limits.command_timeout,
    )
    .await
}

/// The store items of one batch in UID order: oversized and over-cap messages as skipped,
/// fetched ones parsed. Parsing is CPU work bounded by the parser's own limits; it runs off
/// the async threads (so sessions and lease renewal stay responsive), on as many blocking
/// tasks as there are cores, each taking every n-th message.
async fn batch_items(
    batch: &[Announced],
    fetched: Vec<(u32, Body)>,
    limits: &SyncLimits,
) -> Result<Vec<BatchItem>, StoreError> {
    let mut items: Vec<Option<BatchItem>> = Vec::with_capacity(batch.len());
    let mut raws = Vec::new();
    let mut fetched = fetched.into_iter().peekable();
    for message in batch {
        if message.size > limits.max_message_bytes {
            items.push(Some(skipped(
                message.uid,
                message.size,
                limits.max_message_bytes,
            )));
            continue;
        }
        match fetched.next_if(|(uid, _)| *uid == message.uid) {
            Some((uid, Body::Complete(raw))) => {
                raws.push((items.len(), uid, raw));
                items.push(None);
            }
            Some((uid, Body::OverCap)) => {
                items.push(Some(skipped(uid, message.size, limits.max_message_bytes)))
            }
            // Expunged between the two FETCHes: nothing to store, and the checkpoint may
            // pass it.
            None => {}
        }
    }
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(raws.len())
        .max(1);
    let mut groups: Vec<Vec<(usize, u32, Vec<u8>)>> = (0..workers).map(|_| Vec::new()).collect();
    for (n, raw) in raws.into_iter().enumerate() {
        groups[n % workers].push(raw);
    }
    let tasks: Vec<_> = groups
        .into_iter()
        .map(|group| {
            tokio::task::spawn_blocking(move || {
                group
                    .into_iter()
                    .map(|(slot, uid, raw)| (slot, IncomingMessage::parse(uid, raw)))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for task in tasks {
        let parsed = task.await.map_err(|error| StoreError::InvalidArgument {
            field: "message",
            problem: format!("parser task failed: {error}"),
        })?;
        for (slot, incoming) in parsed {
            items[slot] = Some(BatchItem::Message(Box::new(incoming)));
        }
    }
    Ok(items.into_iter().flatten().collect())
}

fn skipped(uid: u32, size: u64, limit: u64) -> BatchItem {
    BatchItem::Skipped {
        uid,
        size,
        reason: format!("over the {limit}-byte message size limit"),
    }
}

fn store_error(source_id: &SourceId, folder: &str, source: StoreError) -> SyncError {
    if matches!(source, StoreError::StaleFence { .. }) {
        SyncError::LeaseLost {
            source_id: source_id.as_str().to_owned(),
            folder: folder.to_owned(),
        }
    } else {
        SyncError::Store {
            source_id: source_id.as_str().to_owned(),
            folder: folder.to_owned(),
            source,
        }
    }
}

/// Splits announced messages into batches of at most `batch_messages` messages and
/// `batch_bytes` announced bytes (a single larger message is a batch of its own).
fn batches<'a>(announced: &'a [Announced], limits: &SyncLimits) -> Vec<&'a [Announced]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (index, message) in announced.iter().enumerate() {
        let counted = if message.size > limits.max_message_bytes {
            0
        } else {
            message.size
        };
        let full = index - start >= limits.batch_messages.max(1)
            || (index > start && bytes.saturating_add(counted) > limits.batch_bytes);
        if full {
            out.push(&announced[start..index]);
            start = index;
            bytes = 0;
        }
        bytes = bytes.saturating_add(counted);
    }
    if start < announced.len() {
        out.push(&announced[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announced(sizes: &[u64]) -> Vec<Announced> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, size)| Announced {
                uid: i as u32 + 1,
                size: *size,
            })
            .collect()
    }

    /// Items come out in UID order whatever worker parsed them: oversized ones skipped
    /// without a body, an over-cap body skipped, an expunged one (no body) left out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batch_items_keep_uid_order_and_skip_what_they_must() {
        let limits = SyncLimits {
            max_message_bytes: 1000,
            ..SyncLimits::default()
        };
        let raw = |uid: u32| {
            format!("Message-ID: <m{uid}@example.com>\r\nSubject: s{uid}\r\n\r\nbody {uid}\r\n")
                .into_bytes()
        };
        let mut batch = announced(&[10; 12]);
        batch[3].size = 5000;
        let fetched: Vec<(u32, Body)> = batch
            .iter()
            .filter(|m| m.size <= limits.max_message_bytes && m.uid != 8)
            .map(|m| {
                let body = if m.uid == 6 {
                    Body::OverCap
                } else {
                    Body::Complete(raw(m.uid))
                };
                (m.uid, body)
            })
            .collect();
        let items = batch_items(&batch, fetched, &limits).await.expect("parsed");
        let seen: Vec<(u32, bool)> = items
            .iter()
            .map(|item| match item {
                BatchItem::Message(m) => {
                    assert_eq!(
                        m.parsed.message.message_id.as_deref(),
                        Some(format!("m{}@example.com", m.uid).as_str()),
                        "the body parsed is the one of its UID"
                    );
                    (m.uid, true)
                }
                BatchItem::Skipped { uid, .. } => (*uid, false),
            })
            .collect();
        let expected: Vec<(u32, bool)> = (1..=12)
            .filter(|uid| *uid != 8)
            .map(|uid| (uid, uid != 4 && uid != 6))
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn batches_respect_count_and_bytes() {
        let limits = SyncLimits {
            batch_messages: 3,
            batch_bytes: 100,
            max_message_bytes: 1000,
            ..SyncLimits::default()
        };
        let lens = |sizes: &[u64]| {
            let a = announced(sizes);
            batches(&a, &limits)
                .iter()
                .map(|b| b.len())
                .collect::<Vec<_>>()
        };
        assert_eq!(lens(&[10, 10, 10, 10, 10, 10, 10]), [3, 3, 1]);
        assert_eq!(lens(&[60, 60, 60]), [1, 1, 1]);
        assert_eq!(
            lens(&[500, 10]),
            [1, 1],
            "a large message is a batch of its own"
        );
        assert_eq!(
            lens(&[5000, 10, 10]),
            [3],
            "oversized ones are skipped, not counted"
        );
        assert_eq!(lens(&[]), Vec::<usize>::new());
    }
}
