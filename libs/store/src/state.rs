//! The analyst's state of a message (read, starred, reviewed with a comment), in its own
//! hash `tm:{<source>}:state:<id>` that ingest never writes, so re-ingesting a message can
//! never erase it.

use crate::error::{Result, StoreError, redis_error};
use crate::keys;
use crate::record::{AnalystState, MessageRef, StateChange};
use crate::store::Store;
use crate::time::now_ms;

/// Reads a state hash's fields.
pub(crate) fn state_from_fields(fields: &[(String, String)]) -> AnalystState {
    let mut state = AnalystState::default();
    for (field, value) in fields {
        match field.as_str() {
            "read" => state.read = value == "1",
            "starred" => state.starred = value == "1",
            "reviewed" => state.reviewed = value == "1",
            "comment" if !value.is_empty() => state.comment = Some(value.clone()),
            "updated_at" => state.updated_at_ms = value.parse().unwrap_or(0),
            "updated_by" => state.updated_by = value.clone(),
            _ => {}
        }
    }
    state
}

/// The longest review comment kept.
pub const MAX_COMMENT_CHARS: usize = 4000;

impl Store {
    /// The analyst state of `message` (all off if never set).
    pub async fn analyst_state(&self, message: &MessageRef) -> Result<AnalystState> {
        let mut conn = self.conn.clone();
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(keys::state_key(&message.source_id, &message.id))
            .query_async(&mut conn)
            .await
            .map_err(redis_error(
                "read analyst state",
                message.source_id.as_str(),
            ))?;
        Ok(state_from_fields(&fields))
    }

    /// Applies `change` to the analyst state of `message`, by `who`; `None` if there is
    /// no such message.
    pub async fn set_analyst_state(
        &self,
        message: &MessageRef,
        change: &StateChange,
        who: &str,
    ) -> Result<Option<AnalystState>> {
        if let Some(comment) = &change.comment
            && comment.chars().count() > MAX_COMMENT_CHARS
        {
            return Err(StoreError::InvalidArgument {
                field: "comment",
                problem: format!("longer than {MAX_COMMENT_CHARS} characters"),
            });
        }
        let flag = |on: bool| if on { "1" } else { "0" };
        let mut fields: Vec<(&str, String)> = Vec::new();
        if let Some(read) = change.read {
            fields.push(("read", flag(read).to_owned()));
        }
        if let Some(starred) = change.starred {
            fields.push(("starred", flag(starred).to_owned()));
        }
        if let Some(reviewed) = change.reviewed {
            fields.push(("reviewed", flag(reviewed).to_owned()));
        }
        if let Some(comment) = &change.comment {
            fields.push(("comment", comment.clone()));
        }
        fields.push(("updated_at", now_ms().to_string()));
        fields.push(("updated_by", who.to_owned()));
        let mut conn = self.conn.clone();
        // Only an existing record gets a state (one script: the check and the write
        // together, in the source's slot).
        let written: i64 = redis::Script::new(SET_STATE_SCRIPT)
            .key(keys::message_key(&message.source_id, &message.id))
            .key(keys::state_key(&message.source_id, &message.id))
            .arg(
                fields
                    .iter()
                    .flat_map(|(k, v)| [(*k).to_owned(), v.clone()])
                    .collect::<Vec<_>>(),
            )
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error(
                "write analyst state",
                message.source_id.as_str(),
            ))?;
        if written == 0 {
            return Ok(None);
        }
        self.analyst_state(message).await.map(Some)
    }
}

/// `KEYS`: 1 the record, 2 its state. `ARGV`: field, value, … Returns 0 without a record.
const SET_STATE_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[2], unpack(ARGV))
return 1
";
