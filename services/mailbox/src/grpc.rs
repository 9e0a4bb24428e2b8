//! The Mailbox gRPC API over the store: lists, one message, its raw bytes, STIX export and
//! the analyst's state. Every RPC is behind the auth layer ([`policy`]).

use std::pin::Pin;

use futures::Stream;
use threatmail_auth::{Policy, Requirement, Role};
use threatmail_parse::{Address, Source, Tlp};
use threatmail_proto::v1 as pb;
use threatmail_proto::v1::mailbox_server::Mailbox;
use threatmail_source::{SourceId, SourceRecord, SourceStore};
use threatmail_store::query::MAX_PAGE;
use threatmail_store::write::{kind_from_name, kind_name};
use threatmail_store::{
    AnalystState, Cursor, ListQuery, Listed, Location, MessageRef, StateChange, Store,
    StoredMessage, Summary,
};
use tonic::{Request, Response, Status};

use crate::allow::sender_allowed;
use crate::error::MailboxError;
use crate::stix::{self, ExportItem};

/// The service name in the proto.
pub const SERVICE: &str = "threatmail.v1.Mailbox";

/// Bytes per `GetRaw` chunk.
const RAW_CHUNK: usize = 1 << 20;

/// What each RPC requires: View Threat Mailbox to read, Update to change analyst state
/// (or a service credential).
pub fn policy() -> Policy {
    let view = Requirement::ServiceOrRole(Role::View);
    Policy::new()
        .rpc(SERVICE, "ListMessages", view)
        .rpc(SERVICE, "GetMessage", view)
        .rpc(SERVICE, "GetRaw", view)
        .rpc(SERVICE, "ExportStix", view)
        .rpc(
            SERVICE,
            "SetAnalystState",
            Requirement::ServiceOrRole(Role::Update),
        )
}

/// The Mailbox API.
#[derive(Debug, Clone)]
pub struct MailboxService {
    store: Store,
    sources: SourceStore,
    default_tlp: Tlp,
    max_export: u32,
}

impl MailboxService {
    /// Serves `store`, reading sources (tags, allow-lists, default TLP) from `sources`.
    pub fn new(store: Store, sources: SourceStore, default_tlp: Tlp, max_export: u32) -> Self {
        MailboxService {
            store,
            sources,
            default_tlp,
            max_export,
        }
    }
}

fn invalid(field: &'static str, problem: impl Into<String>) -> MailboxError {
    MailboxError::InvalidArgument {
        field,
        problem: problem.into(),
    }
}

fn seconds(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// The store query of a request.
pub fn list_query(request: &pb::ListMessagesRequest) -> Result<ListQuery, MailboxError> {
    let text = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let source = match text(&request.source_id) {
        Some(id) => Some(SourceId::parse(&id).map_err(|e| invalid("source_id", e.to_string()))?),
        None => None,
    };
    let time = |field: &'static str, value: i64| -> Result<Option<i64>, MailboxError> {
        match value {
            0 => Ok(None),
            v if v < 0 => Err(invalid(field, "must be Unix seconds, not negative")),
            v => v
                .checked_mul(1000)
                .map(Some)
                .ok_or_else(|| invalid(field, "too large")),
        }
    };
    let indicator_kind = match text(&request.indicator_type) {
        Some(name) => Some(kind_from_name(&name).ok_or_else(|| {
            invalid(
                "indicator_type",
                format!("{name:?} is not one of url, domain, ipv4, ipv6, cidr, email, md5, sha1, sha256, sha512, cve"),
            )
        })?),
        None => None,
    };
    let page_size = match request.page_size {
        0 => 50,
        n => (n as usize).min(MAX_PAGE),
    };
    let cursor = match text(&request.page_token) {
        Some(token) => Some(Cursor::from_token(&token)?),
        None => None,
    };
    Ok(ListQuery {
        source,
        // Folder names are kept exactly (IMAP names may carry spaces).
        folder: Some(request.folder.clone()).filter(|f| !f.is_empty()),
        since_ms: time("since", request.since)?,
        until_ms: time("until", request.until)?,
        sender: text(&request.sender),
        indicator_value: text(&request.indicator_value),
        indicator_kind,
        subject_contains: text(&request.subject_contains),
        page_size,
        cursor,
    })
}

fn state_pb(state: &AnalystState) -> pb::AnalystState {
    pb::AnalystState {
        read: state.read,
        starred: state.starred,
        reviewed: state.reviewed,
        comment: state.comment.clone().unwrap_or_default(),
        updated_at: seconds(state.updated_at_ms),
        updated_by: state.updated_by.clone(),
    }
}

fn summary_pb(
    message: &MessageRef,
    summary: &Summary,
    locations: &[Location],
    state: &AnalystState,
) -> pb::MessageSummary {
    let mut folders: Vec<String> = Vec::new();
    for location in locations {
        if !folders.contains(&location.folder) {
            folders.push(location.folder.clone());
        }
    }
    pb::MessageSummary {
        id: message.to_string(),
        source_id: message.source_id.to_string(),
        subject: summary.subject.clone().unwrap_or_default(),
        from: summary.from_display.clone().unwrap_or_default(),
        date: seconds(summary.sort_ms),
        indicator_count: summary.indicator_count,
        folders,
        ingested_at: seconds(summary.ingested_at_ms),
        tlp: summary
            .tlp
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        size: summary.size,
        attachment_count: summary.attachment_count,
        warning_count: summary.warning_count,
        sha256: summary.sha256.clone(),
        indicator_types: summary
            .indicator_kinds
            .iter()
            .map(|k| kind_name(*k).to_owned())
            .collect(),
        state: Some(state_pb(state)),
    }
}

fn addresses_pb(addresses: &[Address]) -> Vec<pb::MailAddress> {
    addresses
        .iter()
        .map(|a| pb::MailAddress {
            name: a.name.clone().unwrap_or_default(),
            address: a.address.clone().unwrap_or_default(),
        })
        .collect()
}

fn found_at_pb(location: &threatmail_parse::Location) -> pb::FoundAt {
    let (source, detail) = match &location.source {
        Source::Header { name } => ("header", name.clone()),
        Source::Subject => ("subject", String::new()),
        Source::Text => ("text", String::new()),
        Source::Html => ("html", String::new()),
        Source::HtmlAttribute { attribute } => ("html_attribute", attribute.clone()),
        Source::Attachment { file_name } => ("attachment", file_name.clone()),
        Source::RawFallback => ("raw_fallback", String::new()),
    };
    pb::FoundAt {
        depth: location.depth,
        part: location.part.clone(),
        source: source.to_owned(),
        detail,
        defanged: location.defanged,
        derived_from: location
            .derived_from
            .map(|k| kind_name(k).to_owned())
            .unwrap_or_default(),
    }
}

/// The full message of a record.
pub fn message_pb(stored: &StoredMessage) -> pb::Message {
    let parsed = &stored.record.parsed;
    let mail = &parsed.message;
    let body = |parts: &[threatmail_parse::BodyPart]| {
        parts
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let parts_pb = |parts: &[threatmail_parse::BodyPart]| {
        parts
            .iter()
            .map(|p| pb::MailBodyPart {
                part: p.part.clone(),
                content_type: p.content_type.clone(),
                charset: p.charset.clone().unwrap_or_default(),
                text: p.text.clone(),
            })
            .collect()
    };
    pb::Message {
        summary: Some(summary_pb(
            &stored.message,
            &stored.summary,
            &stored.locations,
            &stored.state,
        )),
        message_id: mail.message_id.clone().unwrap_or_default(),
        text_body: body(&mail.text_bodies),
        html_body: body(&mail.html_bodies),
        indicators: parsed
            .indicators
            .iter()
            .map(|i| {
                let locations: Vec<pb::FoundAt> = i.locations.iter().map(found_at_pb).collect();
                pb::Indicator {
                    r#type: kind_name(i.kind).to_owned(),
                    value: i.value.clone(),
                    defanged: i.defanged,
                    found_in: locations
                        .first()
                        .map(|l| {
                            if l.detail.is_empty() {
                                l.source.clone()
                            } else {
                                format!("{}:{}", l.source, l.detail)
                            }
                        })
                        .unwrap_or_default(),
                    unicode: i.unicode.clone().unwrap_or_default(),
                    occurrences: i.occurrences,
                    locations,
                    in_content: i.in_key_scope(),
                }
            })
            .collect(),
        warnings: parsed
            .warnings
            .iter()
            .map(|w| pb::ParseWarning {
                kind: w.kind.to_string(),
                part: w.part.clone().unwrap_or_default(),
                detail: w.detail.clone(),
            })
            .collect(),
        date: mail.date.clone().unwrap_or_default(),
        from: addresses_pb(&mail.from),
        sender: addresses_pb(&mail.sender),
        reply_to: addresses_pb(&mail.reply_to),
        return_path: mail.return_path.clone().unwrap_or_default(),
        to: addresses_pb(&mail.to),
        cc: addresses_pb(&mail.cc),
        text_bodies: parts_pb(&mail.text_bodies),
        html_bodies: parts_pb(&mail.html_bodies),
        attachments: mail
            .attachments
            .iter()
            .map(|a| pb::MailAttachment {
                part: a.part.clone(),
                depth: a.depth,
                file_name: a.file_name.clone().unwrap_or_default(),
                content_type: a.content_type.clone(),
                disposition: a.disposition.clone().unwrap_or_default(),
                size: a.size,
                md5: a.md5.clone(),
                sha1: a.sha1.clone(),
                sha256: a.sha256.clone(),
                nested_subject: a
                    .message
                    .as_ref()
                    .and_then(|m| m.subject.clone())
                    .unwrap_or_default(),
                nested_from: a
                    .message
                    .as_ref()
                    .and_then(|m| m.from.first())
                    .and_then(|f| f.address.clone())
                    .unwrap_or_default(),
                nested_message_id: a
                    .message
                    .as_ref()
                    .and_then(|m| m.message_id.clone())
                    .unwrap_or_default(),
            })
            .collect(),
        locations: stored
            .locations
            .iter()
            .map(|l| pb::MessageLocation {
                folder: l.folder.clone(),
                uidvalidity: l.uidvalidity,
                uid: l.uid,
                sha256: l.sha256.clone(),
                seen_at: seconds(l.seen_at_ms),
            })
            .collect(),
        structure: parsed.structure.clone(),
        link_mismatches: parsed
            .link_mismatches
            .iter()
            .map(|m| pb::LinkMismatch {
                href: m.href.clone(),
                text: m.text.clone(),
            })
            .collect(),
    }
}

fn message_ref(id: &str) -> Result<MessageRef, MailboxError> {
    MessageRef::parse(id.trim()).map_err(|e| invalid("id", e.to_string()))
}

impl MailboxService {
    async fn fetch(&self, id: &str) -> Result<StoredMessage, MailboxError> {
        let message = message_ref(id)?;
        self.store
            .get(&message)
            .await?
            .ok_or_else(|| MailboxError::NotFound { id: id.to_owned() })
    }

    async fn source(&self, id: &SourceId) -> Result<Option<SourceRecord>, MailboxError> {
        self.sources.get(id).await.map_err(|error| match error {
            threatmail_source::store::StoreError::Corrupt { .. } => {
                MailboxError::Internal(error.to_string())
            }
            other => MailboxError::Unavailable(other.to_string()),
        })
    }

    /// The export of a selection: a bundle of at most `limit` allowed messages.
    pub async fn export(
        &self,
        request: &pb::ExportStixRequest,
    ) -> Result<pb::ExportStixResponse, MailboxError> {
        let selection = request.selection.clone().unwrap_or_default();
        let mut query = list_query(&selection)?;
        let limit = match request.max_messages {
            0 => self.max_export,
            n => n.min(self.max_export),
        } as usize;
        query.page_size = query.page_size.clamp(1, MAX_PAGE).min(limit).max(1);
        let mut sources: std::collections::BTreeMap<SourceId, Option<SourceRecord>> =
            std::collections::BTreeMap::new();
        let mut chosen: Vec<(StoredMessage, Tlp)> = Vec::new();
        let mut excluded = 0u32;
        let mut next: Option<Cursor> = None;
        'pages: loop {
            let page = self.store.list(&query).await?;
            for Listed { message, .. } in page.items {
                let Some(stored) = self.store.get(&message).await? else {
                    continue;
                };
                if !sources.contains_key(&message.source_id) {
                    let record = self.source(&message.source_id).await?;
                    sources.insert(message.source_id.clone(), record);
                }
                let source = sources.get(&message.source_id).and_then(Option::as_ref);
                let allow_list = source
                    .map(|s| s.sender_allow_list.as_slice())
                    .unwrap_or(&[]);
                if !sender_allowed(allow_list, &stored.record.parsed.message) {
                    excluded += 1;
                    continue;
                }
                let source_tlp = source
                    .and_then(|s| s.default_tlp.as_deref())
                    .and_then(|t| serde_json::from_value::<Tlp>(serde_json::Value::from(t)).ok());
                let tlp = stored
                    .record
                    .parsed
                    .tlp
                    .or(source_tlp)
                    .unwrap_or(self.default_tlp);
                chosen.push((stored, tlp));
                if chosen.len() == limit {
                    // Go on after this message next time.
                    next = chosen.last().map(|(stored, _)| Cursor::at(&stored.record));
                    break 'pages;
                }
            }
            match page.next {
                Some(cursor) => query.cursor = Some(cursor),
                None => break,
            }
        }
        let items: Vec<ExportItem<'_>> = chosen
            .iter()
            .map(|(stored, tlp)| {
                let source = sources
                    .get(&stored.message.source_id)
                    .and_then(Option::as_ref);
                ExportItem {
                    message: stored,
                    tlp: *tlp,
                    tags: source.map(|s| s.tags.as_slice()).unwrap_or(&[]),
                    source_name: source
                        .map_or(stored.message.source_id.as_str(), |s| s.name.as_str()),
                }
            })
            .collect();
        let bundle = stix::bundle(&items);
        Ok(pb::ExportStixResponse {
            bundle_json: serde_json::to_string(&bundle)
                .map_err(|e| MailboxError::Internal(e.to_string()))?,
            message_count: u32::try_from(items.len()).unwrap_or(u32::MAX),
            excluded_count: excluded,
            next_page_token: next.map(|c| c.to_token()).unwrap_or_default(),
        })
    }
}

type RawStream = Pin<Box<dyn Stream<Item = Result<pb::RawMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Mailbox for MailboxService {
    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let query = list_query(request.get_ref())?;
        let page = self.store.list(&query).await.map_err(MailboxError::from)?;
        Ok(Response::new(pb::ListMessagesResponse {
            messages: page
                .items
                .iter()
                .map(|l| summary_pb(&l.message, &l.summary, &l.locations, &l.state))
                .collect(),
            next_page_token: page.next.map(|c| c.to_token()).unwrap_or_default(),
        }))
    }

    async fn get_message(
        &self,
        request: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let id = &request.get_ref().id;
        let message = message_ref(id)?;
        let (stored, raw_missing) = self
            .store
            .get_with_bodies(&message)
            .await
            .map_err(MailboxError::from)?
            .ok_or_else(|| MailboxError::NotFound { id: id.clone() })?;
        let mut reply = message_pb(&stored);
        if raw_missing {
            reply.warnings.push(pb::ParseWarning {
                kind: "raw message missing".to_owned(),
                part: String::new(),
                detail: format!(
                    "blob {} is not in the blob store; bodies cannot be shown",
                    stored.record.sha256
                ),
            });
        }
        Ok(Response::new(reply))
    }

    type GetRawStream = RawStream;

    async fn get_raw(
        &self,
        request: Request<pb::GetMessageRequest>,
    ) -> Result<Response<Self::GetRawStream>, Status> {
        let id = request.get_ref().id.clone();
        let stored = self.fetch(&id).await?;
        let sha256 = stored.record.sha256.clone();
        let raw = self
            .store
            .blobs()
            .get(&sha256)
            .await
            .map_err(|e| MailboxError::from(threatmail_store::StoreError::from(e)))?
            .ok_or_else(|| MailboxError::BlobMissing {
                id,
                sha256: sha256.clone(),
            })?;
        let size = raw.len() as u64;
        let chunks: Vec<Result<pb::RawMessage, Status>> = if raw.is_empty() {
            vec![Ok(pb::RawMessage {
                raw: Vec::new(),
                size,
                sha256,
            })]
        } else {
            raw.chunks(RAW_CHUNK)
                .enumerate()
                .map(|(n, chunk)| {
                    Ok(pb::RawMessage {
                        raw: chunk.to_vec(),
                        size: if n == 0 { size } else { 0 },
                        sha256: if n == 0 {
                            sha256.clone()
                        } else {
                            String::new()
                        },
                    })
                })
                .collect()
        };
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn export_stix(
        &self,
        request: Request<pb::ExportStixRequest>,
    ) -> Result<Response<pb::ExportStixResponse>, Status> {
        Ok(Response::new(self.export(request.get_ref()).await?))
    }

    async fn set_analyst_state(
        &self,
        request: Request<pb::SetAnalystStateRequest>,
    ) -> Result<Response<pb::AnalystState>, Status> {
        let who = threatmail_auth::caller(&request)
            .map(ToString::to_string)
            .unwrap_or_else(|| "unknown".to_owned());
        let body = request.into_inner();
        let message = message_ref(&body.id)?;
        let change = StateChange {
            read: body.read,
            starred: body.starred,
            reviewed: body.reviewed,
            comment: body.comment,
        };
        let state = self
            .store
            .set_analyst_state(&message, &change, &who)
            .await
            .map_err(MailboxError::from)?
            .ok_or_else(|| MailboxError::NotFound {
                id: body.id.clone(),
            })?;
        Ok(Response::new(state_pb(&state)))
    }
}
