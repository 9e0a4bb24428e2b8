//! Mail stored exactly once (DESIGN §4, §6): the write path the fetcher calls in its own
//! process, and the reads of the mailbox service.
//!
//! - [`write`]: a [`WriteBatch`] (one folder's messages, the folder's checkpoint and the
//!   writer's fencing token) committed in one script over the source's Redis slot. A
//!   message's identity is its content ([`identity`]): writing it again, a re-rendered copy
//!   of it, or the same mail in another folder adds a location, never a second record.
//! - [`outbox`]: each new record's outbox entry, drained idempotently by record id into the
//!   cross-source event stream and indexes.
//! - [`lease`]: folder leases whose fencing tokens the write checks.
//! - [`query`]: one message; lists with filters and stable paging.
//! - [`state`]: the analyst's state, kept apart from the ingested record.
//! - [`blob`]: raw bytes, content-addressed, in a directory or an S3-compatible store.
//! - [`keys`]: the Redis layout; [`record`]: what is stored; [`time`]: timestamps.

pub mod blob;
pub mod error;
pub mod identity;
pub mod keys;
pub mod lease;
pub mod outbox;
pub mod query;
pub mod record;
pub mod state;
mod store;
pub mod time;
pub mod write;

pub use blob::{BlobError, BlobStore, BlobStoreConfig};
pub use error::{Result, StoreError};
pub use identity::Identity;
pub use lease::Lease;
pub use outbox::{DrainReport, Event};
pub use query::{Cursor, ListPage, ListQuery, Listed};
pub use record::{
    AnalystState, Location, MessageId, MessageRef, StateChange, StoredMessage, StoredRecord,
    Summary,
};
pub use store::{CrashPoint, Store};
pub use write::{
    ActionsDone, BatchItem, Checkpoint, Fence, IncomingMessage, ItemOutcome, WriteBatch,
    WriteOutcome,
};
