//! `threatmail mailbox list|show|raw|summary|export --stix`: the Threat Mailbox from the
//! mailbox service, with an API key (View Threat Mailbox).
//!
//! The service address comes from `--url` or `TM_MAILBOX_URL` (default
//! `http://127.0.0.1:50054`), the API key from `--api-key-file`, `TM_API_KEY_FILE` or
//! `TM_API_KEY`; never from an argument, which other users see in the process list. These
//! variables do not start with `THREATMAIL_`, which services read as their own settings.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal as _, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{Value, json};
use threatmail_auth::CredentialInterceptor;
use threatmail_mailbox::stix as mailbox_stix;
use threatmail_proto::v1 as pb;
use threatmail_proto::v1::mailbox_client::MailboxClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::client::{self, rpc_error};
use super::secret_input::UsageError;
use super::terminal::{self, field};

type Client = MailboxClient<InterceptedService<Channel, CredentialInterceptor>>;

/// Arguments of `threatmail mailbox`.
#[derive(Debug, clap::Args)]
pub(crate) struct MailboxArgs {
    /// The mailbox service.
    #[arg(long, env = "TM_MAILBOX_URL", default_value = "http://127.0.0.1:50054")]
    url: String,
    /// A file holding the API key.
    #[arg(long, value_name = "FILE", env = "TM_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    // Boxed: the filters make the subcommand large, and `Command` holds every command's
    // arguments inline.
    #[command(subcommand)]
    command: Box<MailboxCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum MailboxCommand {
    /// List messages, newest first.
    List {
        #[command(flatten)]
        filters: Filters,
        /// At most this many (0: all).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one message: headers, where it was seen, indicators and where they were found,
    /// attachments, warnings, text.
    Show {
        /// `<source id>/<message id>`, as `list` prints it.
        id: String,
        /// The whole message as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a message's raw bytes (to stdout, or a file).
    Raw {
        /// `<source id>/<message id>`.
        id: String,
        /// Write here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// What the selection holds: messages per folder, indicators per type, the most
    /// frequent domains, TLP markings.
    Summary {
        #[command(flatten)]
        filters: Filters,
        /// How many of the most frequent domains to show.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// One JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Export a selection.
    Export {
        /// As a STIX 2.1 bundle (the only format so far).
        #[arg(long, required = true)]
        stix: bool,
        #[command(flatten)]
        filters: Filters,
        /// Reports per request (0: the service's limit); all pages are merged into one bundle.
        #[arg(long, default_value_t = 0)]
        page: u32,
        /// Write here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// The filters of `list` and `export`; every one given must match.
#[derive(Debug, Clone, Default, clap::Args)]
struct Filters {
    /// Only this source, by id (`threatmail source list` shows them).
    #[arg(long, value_name = "ID", value_parser = parse_source_id)]
    source: Option<String>,
    /// Only messages seen in this folder: its name as `source folders` shows it, or its raw
    /// IMAP (modified UTF-7) name; INBOX in any case.
    #[arg(long, value_parser = non_empty)]
    folder: Option<String>,
    /// From this time on: RFC 3339 (`2024-05-01T00:00:00Z`), a date (`2024-05-01`) or Unix seconds.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    since: Option<i64>,
    /// Before this time (same forms).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    until: Option<i64>,
    /// From or Sender: an address, or a domain (`@corp.example`).
    #[arg(long, value_parser = non_empty)]
    sender: Option<String>,
    /// Holds this indicator (defanged forms work: `hxxp://x[.]com`).
    #[arg(long, value_parser = non_empty)]
    indicator: Option<String>,
    /// Holds an indicator of this type.
    #[arg(long = "type", value_parser = [
        "url", "domain", "ipv4", "ipv6", "cidr", "email", "md5", "sha1", "sha256", "sha512", "cve",
    ])]
    indicator_type: Option<String>,
    /// Subject contains this text.
    #[arg(long, value_parser = non_empty)]
    subject: Option<String>,
}

/// A filter value: an empty one (`--sender ""`, an unset shell variable) would filter
/// nothing, so it is a usage error rather than every message.
fn non_empty(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("is empty: give a value, or leave the option out".to_owned());
    }
    Ok(text.to_owned())
}

/// A source id as the mailbox service takes it (names live in the registry).
fn parse_source_id(text: &str) -> Result<String, String> {
    threatmail_source::SourceId::parse(text.trim())
        .map(|id| id.as_str().to_owned())
        .map_err(|_| {
            "expected a source id (1-64 characters of A-Z a-z 0-9 - _; `threatmail source list` \
             shows each source's id); names are not taken here"
                .to_owned()
        })
}

/// Unix seconds of `text`: Unix seconds, RFC 3339, or a date (midnight UTC).
fn parse_time(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    threatmail_store::time::parse_rfc3339_ms(&full)
        .map(|ms| ms.div_euclid(1000))
        .ok_or_else(|| "expected Unix seconds, 2024-05-01 or 2024-05-01T10:00:00Z".to_owned())
}

impl Filters {
    /// A time range that can hold nothing is a mistake, not an empty answer.
    fn check(&self) -> anyhow::Result<()> {
        if let (Some(since), Some(until)) = (self.since, self.until)
            && since >= until
        {
            return Err(UsageError("--since must be before --until").into());
        }
        Ok(())
    }

    fn request(&self) -> pb::ListMessagesRequest {
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        // RFC 3501 §5.1: INBOX is case-insensitive; every other name is the server's own.
        let folder = match self.folder.as_deref() {
            Some(name) if name.eq_ignore_ascii_case("INBOX") => "INBOX".to_owned(),
            // Records name folders by their raw name (RFC 3501 §5.1.3's modified UTF-7): a
            // display name (`Signalé/Phish`, `R&D`) is encoded; a name that already reads as
            // modified UTF-7 (`Signal&AOk-/Phish`) is taken as the raw name it is.
            Some(name)
                if !name.is_ascii() || threatmail_core::mutf7::decode(name.as_bytes()).is_err() =>
            {
                threatmail_core::mutf7::encode(name)
            }
            other => other.unwrap_or_default().to_owned(),
        };
        pb::ListMessagesRequest {
            source_id: text(&self.source),
            folder,
            since: self.since.unwrap_or(0),
            until: self.until.unwrap_or(0),
            sender: text(&self.sender),
            indicator_value: text(&self.indicator),
            indicator_type: text(&self.indicator_type),
            subject_contains: text(&self.subject),
            page_size: 0,
            page_token: String::new(),
        }
    }
}

async fn connect(args: &MailboxArgs) -> anyhow::Result<Client> {
    // The key itself only from the environment: an argument would show in the process list.
    let inline = std::env::var("TM_API_KEY").ok();
    let key = client::api_key(
        args.api_key_file.as_deref(),
        inline.as_deref(),
        "View Threat Mailbox",
    )?;
    let interceptor = client::bearer(&key)?;
    let channel = client::channel(
        &args.url,
        "mailbox service",
        "start it (`threatmail serve --target mailbox`, or `all`) or point --url / \
         TM_MAILBOX_URL at it",
    )
    .await?;
    Ok(MailboxClient::with_interceptor(channel, interceptor).max_decoding_message_size(256 << 20))
}

fn summary_json(m: &pb::MessageSummary) -> Value {
    json!({
        "id": m.id,
        "source_id": m.source_id,
        "date": m.date,
        "ingested_at": m.ingested_at,
        "from": m.from,
        "subject": m.subject,
        "folders": m.folders,
        "indicator_count": m.indicator_count,
        "indicator_types": m.indicator_types,
        "tlp": m.tlp,
        "size": m.size,
        "attachment_count": m.attachment_count,
        "warning_count": m.warning_count,
        "sha256": m.sha256,
        "state": m.state.as_ref().map(|s| json!({
            "read": s.read, "starred": s.starred, "reviewed": s.reviewed,
            "comment": s.comment, "updated_at": s.updated_at, "updated_by": s.updated_by,
        })),
    })
}

fn when(seconds: i64) -> String {
    let text = threatmail_store::time::format_rfc3339_ms(seconds.saturating_mul(1000));
    // `2024-05-01T10:00:00.000Z` → `2024-05-01 10:00`
    format!("{} {}", &text[..10], &text[11..16])
}

fn one_line(text: &str, width: usize) -> String {
    let flat = field(text);
    if flat.chars().count() > width {
        let cut: String = flat.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        flat.into_owned()
    }
}

/// A message id: a source id (a UUID when the registry made it), `/`, 32 hex digits.
const ID_WIDTH: usize = 69;
const FROM_WIDTH: usize = 32;

/// The address of a `Name <address>` sender, which a column too narrow for both must keep:
/// the display name is what a phish fakes.
fn sender_address(from: &str) -> &str {
    from.rsplit_once('<')
        .and_then(|(_, rest)| rest.strip_suffix('>'))
        .filter(|address| !address.is_empty())
        .unwrap_or(from)
}

async fn list(
    client: &mut Client,
    filters: &Filters,
    limit: usize,
    as_json: bool,
) -> anyhow::Result<()> {
    let mut request = filters.request();
    request.page_size = if limit == 0 {
        1000
    } else {
        // One more than shown tells whether the list was cut.
        limit.saturating_add(1).min(1000) as u32
    };
    let mut out = std::io::stdout().lock();
    let mut printed = 0usize;
    loop {
        let reply = client
            .list_messages(request.clone())
            .await
            .map_err(|s| rpc_error("ListMessages", s))?
            .into_inner();
        // The header once the service has answered, so a refusal prints nothing else.
        if !as_json && printed == 0 && request.page_token.is_empty() {
            writeln!(
                out,
                "{:<ID_WIDTH$} {:<16} {:>4}  {:<FROM_WIDTH$} SUBJECT",
                "ID", "DATE (UTC)", "IOCS", "FROM"
            )?;
        }
        for message in &reply.messages {
            if limit != 0 && printed == limit {
                out.flush()?;
                eprintln!(
                    "the newest {limit} are shown and more match: --limit N for more, --limit 0 for all"
                );
                return Ok(());
            }
            if as_json {
                writeln!(out, "{}", summary_json(message))?;
            } else {
                let mark = match &message.state {
                    Some(s) if s.starred => "*",
                    Some(s) if s.reviewed => "✓",
                    _ => " ",
                };
                writeln!(
                    out,
                    "{:<ID_WIDTH$} {:<16} {:>4}  {:<FROM_WIDTH$} {mark}{}",
                    message.id,
                    when(message.date),
                    message.indicator_count,
                    one_line(sender_address(&message.from), FROM_WIDTH),
                    one_line(&message.subject, 80)
                )?;
            }
            printed += 1;
        }
        if reply.next_page_token.is_empty() {
            if printed == 0 {
                eprintln!("no message matches");
            }
            return Ok(());
        }
        request.page_token = reply.next_page_token;
    }
}

fn addresses(list: &[pb::MailAddress]) -> String {
    list.iter()
        .map(|a| match (a.name.is_empty(), a.address.is_empty()) {
            (false, false) => format!("{} <{}>", a.name, a.address),
            (true, _) => a.address.clone(),
            (false, true) => a.name.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn message_json(m: &pb::Message) -> Value {
    let addrs = |list: &[pb::MailAddress]| -> Value {
        list.iter()
            .map(|a| json!({ "name": a.name, "address": a.address }))
            .collect()
    };
    json!({
        "summary": m.summary.as_ref().map(summary_json),
        "message_id": m.message_id,
        "date": m.date,
        "from": addrs(&m.from),
        "sender": addrs(&m.sender),
        "reply_to": addrs(&m.reply_to),
        "return_path": m.return_path,
        "to": addrs(&m.to),
        "cc": addrs(&m.cc),
        "structure": m.structure,
        "locations": m.locations.iter().map(|l| json!({
            "folder": l.folder, "uidvalidity": l.uidvalidity, "uid": l.uid,
            "sha256": l.sha256, "seen_at": l.seen_at,
        })).collect::<Vec<_>>(),
        "indicators": m.indicators.iter().map(|i| json!({
            "type": i.r#type, "value": i.value, "unicode": i.unicode, "defanged": i.defanged,
            "occurrences": i.occurrences,
            "locations": i.locations.iter().map(|l| json!({
                "depth": l.depth, "part": l.part, "source": l.source, "detail": l.detail,
                "defanged": l.defanged, "derived_from": l.derived_from,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "attachments": m.attachments.iter().map(|a| json!({
            "part": a.part, "depth": a.depth, "file_name": a.file_name,
            "content_type": a.content_type, "disposition": a.disposition, "size": a.size,
            "md5": a.md5, "sha1": a.sha1, "sha256": a.sha256,
            "nested_subject": a.nested_subject, "nested_from": a.nested_from,
            "nested_message_id": a.nested_message_id,
        })).collect::<Vec<_>>(),
        "link_mismatches": m.link_mismatches.iter().map(|l| json!({ "href": l.href, "text": l.text })).collect::<Vec<_>>(),
        "warnings": m.warnings.iter().map(|w| json!({ "kind": w.kind, "part": w.part, "detail": w.detail })).collect::<Vec<_>>(),
        "text_bodies": m.text_bodies.iter().map(|b| json!({
            "part": b.part, "content_type": b.content_type, "charset": b.charset, "text": b.text,
        })).collect::<Vec<_>>(),
        "html_bodies": m.html_bodies.iter().map(|b| json!({
            "part": b.part, "content_type": b.content_type, "charset": b.charset, "text": b.text,
        })).collect::<Vec<_>>(),
    })
}

/// `m` as text; everything that came from the mail or the server is printed through
/// [`terminal`], so what a sender wrote cannot drive the analyst's terminal.
fn show_text(out: &mut impl Write, m: &pb::Message) -> anyhow::Result<()> {
    let summary = m.summary.clone().unwrap_or_default();
    writeln!(out, "Id:          {}", field(&summary.id))?;
    writeln!(out, "Subject:     {}", field(&summary.subject))?;
    writeln!(out, "From:        {}", field(&addresses(&m.from)))?;
    for (label, list) in [
        ("Sender:", &m.sender),
        ("Reply-To:", &m.reply_to),
        ("To:", &m.to),
        ("Cc:", &m.cc),
    ] {
        if !list.is_empty() {
            writeln!(out, "{label:<12} {}", field(&addresses(list)))?;
        }
    }
    if !m.return_path.is_empty() {
        writeln!(out, "Return-Path: {}", field(&m.return_path))?;
    }
    writeln!(out, "Date:        {}", field(&m.date))?;
    writeln!(out, "Message-ID:  {}", field(&m.message_id))?;
    if !summary.tlp.is_empty() {
        writeln!(out, "TLP:         {}", field(&summary.tlp))?;
    }
    writeln!(out, "Structure:   {}", field(&m.structure))?;
    writeln!(
        out,
        "Raw:         {} bytes, sha256 {}",
        summary.size,
        field(&summary.sha256)
    )?;
    if let Some(state) = &summary.state
        && (state.read || state.starred || state.reviewed || !state.comment.is_empty())
    {
        let flags: Vec<&str> = [
            (state.read, "read"),
            (state.starred, "starred"),
            (state.reviewed, "reviewed"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        writeln!(
            out,
            "Analyst:     {} {}",
            flags.join(", "),
            field(&state.comment)
        )?;
    }
    writeln!(out, "\nSeen in:")?;
    for l in &m.locations {
        writeln!(
            out,
            "  {} (UIDVALIDITY {}, UID {}) at {}",
            field(&shown_folder(&l.folder)),
            l.uidvalidity,
            l.uid,
            when(l.seen_at)
        )?;
    }
    let (content, headers): (Vec<&pb::Indicator>, Vec<&pb::Indicator>) =
        m.indicators.iter().partition(|i| i.in_content);
    writeln!(out, "\nIndicators ({}):", content.len())?;
    write_indicators(out, &content)?;
    if !headers.is_empty() {
        // Relays (ours among them) and authentication results: where the mail went, not
        // what it says.
        writeln!(out, "\nIn the transport headers only ({}):", headers.len())?;
        write_indicators(out, &headers)?;
    }
    if !m.attachments.is_empty() {
        writeln!(out, "\nAttachments:")?;
        for a in &m.attachments {
            writeln!(
                out,
                "  {} {} {} bytes sha256 {}",
                field(&a.part),
                if a.file_name.is_empty() {
                    "(no name)".into()
                } else {
                    field(&a.file_name)
                },
                a.size,
                field(&a.sha256)
            )?;
        }
    }
    if !m.link_mismatches.is_empty() {
        writeln!(out, "\nLinks whose text shows another host:")?;
        for l in &m.link_mismatches {
            writeln!(out, "  \"{}\" → {}", field(&l.text), field(&l.href))?;
        }
    }
    if !m.warnings.is_empty() {
        writeln!(out, "\nWarnings:")?;
        for w in &m.warnings {
            writeln!(
                out,
                "  {} {} {}",
                field(&w.kind),
                field(&w.part),
                field(&w.detail)
            )?;
        }
    }
    if !m.text_body.is_empty() {
        writeln!(out, "\n{}", terminal::lines(&m.text_body))?;
    }
    Ok(())
}

/// The raw bytes are the sender's, controls and all, so they go to a file or a pipe, not
/// straight to the analyst's terminal.
fn raw_destination_is_safe(
    output: Option<&PathBuf>,
    stdout_is_terminal: bool,
) -> anyhow::Result<()> {
    if output.is_none() && stdout_is_terminal {
        return Err(UsageError(
            "mailbox raw writes the message's bytes as the sender wrote them, terminal controls \
             and all: give -o FILE, or pipe it (`| less` shows controls as ^[)",
        )
        .into());
    }
    Ok(())
}

fn write_indicators(out: &mut impl Write, indicators: &[&pb::Indicator]) -> anyhow::Result<()> {
    for i in indicators {
        let places: BTreeSet<String> = i
            .locations
            .iter()
            .map(|l| {
                if l.detail.is_empty() {
                    field(&l.source).into_owned()
                } else {
                    field(&format!("{}:{}", l.source, l.detail)).into_owned()
                }
            })
            .collect();
        writeln!(
            out,
            "  {:<7} {}{}  [{}]",
            field(&i.r#type),
            field(&i.value),
            if i.defanged { " (defanged)" } else { "" },
            places.into_iter().collect::<Vec<_>>().join(", ")
        )?;
    }
    Ok(())
}

fn write_output(output: Option<&PathBuf>, bytes: &[u8]) -> anyhow::Result<()> {
    match output {
        Some(path) => std::fs::write(path, bytes)
            .with_context(|| format!("failed to write {}", path.display())),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)?;
            out.flush()?;
            Ok(())
        }
    }
}

/// Every page's bundle merged into one: each object once (by id). An observable shared by
/// reports of several pages carries the most restrictive of its copies' TLP markings, as
/// it would in one page, and the bundle gets the id one page of the same reports has.
async fn export(
    client: &mut Client,
    filters: &Filters,
    page: u32,
) -> anyhow::Result<(Value, u32, u32)> {
    let mut selection = filters.request();
    let mut merged = MergedBundle::default();
    let (mut reports, mut excluded) = (0u32, 0u32);
    loop {
        let reply = client
            .export_stix(pb::ExportStixRequest {
                selection: Some(selection.clone()),
                max_messages: page,
            })
            .await
            .map_err(|s| rpc_error("ExportStix", s))?
            .into_inner();
        let bundle: Value = serde_json::from_str(&reply.bundle_json)
            .context("the service sent a bundle that is not JSON")?;
        merged.add(&bundle);
        reports += reply.message_count;
        excluded += reply.excluded_count;
        if reply.next_page_token.is_empty() {
            break;
        }
        selection.page_token = reply.next_page_token;
    }
    Ok((merged.into_bundle(), reports, excluded))
}

/// The objects of page bundles, each id once, in the order first seen.
#[derive(Default)]
struct MergedBundle {
    objects: Vec<Value>,
    index: BTreeMap<String, usize>,
    report_ids: Vec<String>,
}

impl MergedBundle {
    fn add(&mut self, bundle: &Value) {
        for object in bundle["objects"].as_array().into_iter().flatten() {
            let id = object["id"].as_str().unwrap_or_default().to_owned();
            match self.index.get(&id) {
                Some(&at) => {
                    let kept = &mut self.objects[at];
                    if mailbox_stix::marking_tlp(object) > mailbox_stix::marking_tlp(kept) {
                        kept["object_marking_refs"] = object["object_marking_refs"].clone();
                    }
                }
                None => {
                    if object["type"] == "report" {
                        self.report_ids.push(id.clone());
                    }
                    self.index.insert(id, self.objects.len());
                    self.objects.push(object.clone());
                }
            }
        }
    }

    fn into_bundle(self) -> Value {
        json!({
            "type": "bundle",
            "id": mailbox_stix::bundle_id(&self.report_ids),
            "objects": self.objects,
        })
    }
}

/// How many GetMessage calls `summary` keeps in flight.
const SUMMARY_CONCURRENCY: usize = 8;

/// The totals `threatmail mailbox summary` shows.
#[derive(Debug, Default)]
struct Summary {
    messages: usize,
    sources: BTreeSet<String>,
    /// Messages seen in each folder (a message in two folders counts in both).
    folders: BTreeMap<String, usize>,
    /// Per indicator type: distinct values and messages holding at least one.
    types: BTreeMap<String, (BTreeSet<String>, usize)>,
    /// Messages naming each domain in their content (subject, bodies, attachments): the
    /// mail servers of transport headers (`Received`, `Authentication-Results`) would
    /// crowd out what a sender wrote.
    domains: BTreeMap<String, usize>,
    tlp: BTreeMap<String, usize>,
    defanged: usize,
    link_mismatches: usize,
    warnings: usize,
}

impl Summary {
    fn add(&mut self, message: &pb::Message) {
        let Some(summary) = &message.summary else {
            return;
        };
        self.messages += 1;
        self.sources.insert(summary.source_id.clone());
        let folders: BTreeSet<&str> = message
            .locations
            .iter()
            .map(|l| l.folder.as_str())
            .collect();
        for folder in folders {
            *self.folders.entry(folder.to_owned()).or_default() += 1;
        }
        let mut types_here = BTreeSet::new();
        // What the messages say: the relays of the transport headers would outnumber it.
        for indicator in message.indicators.iter().filter(|i| i.in_content) {
            let (values, _) = self.types.entry(indicator.r#type.clone()).or_default();
            values.insert(indicator.value.clone());
            types_here.insert(indicator.r#type.as_str());
            if indicator.r#type == "domain" {
                *self.domains.entry(indicator.value.clone()).or_default() += 1;
            }
            self.defanged += usize::from(indicator.defanged);
        }
        for kind in types_here {
            if let Some((_, messages)) = self.types.get_mut(kind) {
                *messages += 1;
            }
        }
        let tlp = if summary.tlp.is_empty() {
            "none"
        } else {
            summary.tlp.as_str()
        };
        *self.tlp.entry(tlp.to_owned()).or_default() += 1;
        self.link_mismatches += message.link_mismatches.len();
        self.warnings += message.warnings.len();
    }

    /// The `top` domains named by the most messages (ties by name).
    fn top_domains(&self, top: usize) -> Vec<(&str, usize)> {
        let mut domains: Vec<(&str, usize)> =
            self.domains.iter().map(|(d, n)| (d.as_str(), *n)).collect();
        domains.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        domains.truncate(top);
        domains
    }

    fn to_json(&self, top: usize) -> Value {
        json!({
            "messages": self.messages,
            "sources": self.sources.len(),
            "folders": self.folders,
            "indicators": self.types.iter().map(|(kind, (values, messages))| {
                (kind.clone(), json!({ "distinct": values.len(), "messages": messages }))
            }).collect::<serde_json::Map<_, _>>(),
            "top_domains": self.top_domains(top).iter()
                .map(|(domain, messages)| json!({ "domain": domain, "messages": messages }))
                .collect::<Vec<_>>(),
            "tlp": self.tlp,
            "defanged_indicators": self.defanged,
            "link_mismatches": self.link_mismatches,
            "parse_warnings": self.warnings,
        })
    }

    fn print(&self, top: usize) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "Threat Mailbox: {} message(s) from {} source(s)",
            self.messages,
            self.sources.len()
        )?;
        writeln!(out, "\n  {:<32} {:>9}", "FOLDER", "MESSAGES")?;
        for (folder, n) in &self.folders {
            writeln!(out, "  {:<32} {n:>9}", one_line(&shown_folder(folder), 32))?;
        }
        writeln!(
            out,
            "\n  {:<10} {:>9} {:>9}",
            "INDICATOR", "DISTINCT", "MESSAGES"
        )?;
        for (kind, (values, messages)) in &self.types {
            writeln!(out, "  {kind:<10} {:>9} {messages:>9}", values.len())?;
        }
        writeln!(
            out,
            "\n  {:<48} {:>9}",
            "MOST FREQUENT DOMAINS (IN CONTENT)", "MESSAGES"
        )?;
        for (domain, n) in self.top_domains(top) {
            writeln!(out, "  {:<48} {n:>9}", one_line(domain, 48))?;
        }
        let tlp: Vec<String> = self.tlp.iter().map(|(t, n)| format!("{t} {n}")).collect();
        writeln!(out, "\n  TLP: {}", tlp.join(", "))?;
        writeln!(
            out,
            "  {} indicator(s) were written defanged; {} link(s) show another host than they open; {} parse warning(s)",
            self.defanged, self.link_mismatches, self.warnings
        )?;
        Ok(())
    }
}

/// Lists the selection and reads each message (a few at a time) into a [`Summary`].
async fn summarize(client: &Client, filters: &Filters) -> anyhow::Result<Summary> {
    let mut request = filters.request();
    request.page_size = 1000;
    let mut ids = Vec::new();
    let mut lister = client.clone();
    loop {
        let reply = lister
            .list_messages(request.clone())
            .await
            .map_err(|s| rpc_error("ListMessages", s))?
            .into_inner();
        ids.extend(reply.messages.into_iter().map(|m| m.id));
        if reply.next_page_token.is_empty() {
            break;
        }
        request.page_token = reply.next_page_token;
    }
    let mut summary = Summary::default();
    let mut pending = tokio::task::JoinSet::new();
    let mut ids = ids.into_iter();
    loop {
        while pending.len() < SUMMARY_CONCURRENCY {
            let Some(id) = ids.next() else { break };
            let mut client = client.clone();
            pending.spawn(async move {
                client
                    .get_message(pb::GetMessageRequest { id })
                    .await
                    .map(tonic::Response::into_inner)
            });
        }
        let Some(done) = pending.join_next().await else {
            break;
        };
        let message = done
            .context("a GetMessage task failed")?
            .map_err(|s| rpc_error("GetMessage", s))?;
        summary.add(&message);
    }
    Ok(summary)
}

pub(crate) fn run(args: MailboxArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let json = args.command.json();
    match runtime.block_on(run_command(args)) {
        Err(error) if client::is_broken_pipe(&error) => Ok(ExitCode::SUCCESS),
        Err(error) if json => {
            println!("{}", client::error_json(&error));
            Err(error)
        }
        other => other,
    }
}

impl MailboxCommand {
    fn filters(&self) -> Option<&Filters> {
        match self {
            MailboxCommand::List { filters, .. }
            | MailboxCommand::Summary { filters, .. }
            | MailboxCommand::Export { filters, .. } => Some(filters),
            MailboxCommand::Show { .. } | MailboxCommand::Raw { .. } => None,
        }
    }

    /// Whether the output is JSON (`raw` and `export` write the message or the bundle).
    fn json(&self) -> bool {
        match self {
            MailboxCommand::List { json, .. }
            | MailboxCommand::Show { json, .. }
            | MailboxCommand::Summary { json, .. } => *json,
            MailboxCommand::Raw { .. } | MailboxCommand::Export { .. } => false,
        }
    }
}

async fn run_command(args: MailboxArgs) -> anyhow::Result<ExitCode> {
    if let Some(filters) = args.command.filters() {
        filters.check()?;
    }
    let mut client = connect(&args).await?;
    match args.command.as_ref() {
        MailboxCommand::List {
            filters,
            limit,
            json,
        } => list(&mut client, filters, *limit, *json).await?,
        MailboxCommand::Show { id, json } => {
            let message = client
                .get_message(pb::GetMessageRequest { id: id.clone() })
                .await
                .map_err(|s| rpc_error("GetMessage", s))?
                .into_inner();
            if *json {
                let mut document = message_json(&message);
                document["ok"] = Value::Bool(true);
                println!("{}", serde_json::to_string_pretty(&document)?);
            } else {
                show_text(&mut std::io::stdout().lock(), &message)?;
            }
        }
        MailboxCommand::Raw { id, output } => {
            raw_destination_is_safe(output.as_ref(), std::io::stdout().is_terminal())?;
            let mut stream = client
                .get_raw(pb::GetMessageRequest { id: id.clone() })
                .await
                .map_err(|s| rpc_error("GetRaw", s))?
                .into_inner();
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.message().await.map_err(|s| rpc_error("GetRaw", s))? {
                bytes.extend(chunk.raw);
            }
            write_output(output.as_ref(), &bytes)?;
        }
        MailboxCommand::Summary { filters, top, json } => {
            let summary = summarize(&client, filters).await?;
            if *json {
                let mut document = summary.to_json(*top);
                document["ok"] = Value::Bool(true);
                println!("{}", serde_json::to_string_pretty(&document)?);
            } else {
                summary.print(*top)?;
            }
        }
        MailboxCommand::Export {
            stix: _,
            filters,
            page,
            output,
        } => {
            let (bundle, reports, excluded) = export(&mut client, filters, *page).await?;
            let mut text = serde_json::to_vec_pretty(&bundle)?;
            text.push(b'\n');
            write_output(output.as_ref(), &text)?;
            eprintln!(
                "exported {reports} message(s) as STIX 2.1; {excluded} left out (senders outside their source's allow-list)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A folder's raw (modified UTF-7) name as `source folders` shows it (`Signal&AOk-/Phish`
/// is `Signalé/Phish`); a name that does not decode is shown raw.
fn shown_folder(raw: &str) -> String {
    threatmail_core::mutf7::decode_lenient(raw.as_bytes()).unwrap_or_else(|| raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_in_three_forms() {
        assert_eq!(parse_time("1714550400").ok(), Some(1_714_550_400));
        assert_eq!(parse_time("2024-05-01").ok(), Some(1_714_521_600));
        assert_eq!(
            parse_time("2024-05-01T10:00:00+02:00").ok(),
            Some(1_714_550_400)
        );
        assert!(parse_time("yesterday").is_err());
    }

    fn message(id: &str, folders: &[&str], indicators: &[(&str, &str)], tlp: &str) -> pb::Message {
        pb::Message {
            summary: Some(pb::MessageSummary {
                id: id.to_owned(),
                source_id: "s1".to_owned(),
                tlp: tlp.to_owned(),
                ..Default::default()
            }),
            locations: folders
                .iter()
                .map(|f| pb::MessageLocation {
                    folder: (*f).to_owned(),
                    ..Default::default()
                })
                .collect(),
            indicators: indicators
                .iter()
                .map(|(kind, value)| pb::Indicator {
                    r#type: (*kind).to_owned(),
                    value: (*value).to_owned(),
                    defanged: value.contains("bad"),
                    in_content: !value.starts_with("mx."),
                    locations: vec![pb::FoundAt {
                        source: if value.starts_with("mx.") {
                            "header"
                        } else {
                            "html"
                        }
                        .to_owned(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_summary_counts_folders_types_and_domains_per_message() {
        let mut summary = Summary::default();
        summary.add(&message(
            "s1/a",
            &["INBOX", "INBOX", "Phish Reports"],
            &[
                ("domain", "bad.example.com"),
                ("domain", "x.example.net"),
                ("domain", "mx.example.org"),
                ("ipv4", "192.0.2.1"),
            ],
            "TLP:AMBER",
        ));
        summary.add(&message(
            "s1/b",
            &["INBOX"],
            &[("domain", "bad.example.com")],
            "",
        ));
        assert_eq!(summary.messages, 2);
        assert_eq!(
            summary.folders["INBOX"], 2,
            "a message counts once per folder"
        );
        assert_eq!(summary.folders["Phish Reports"], 1);
        assert_eq!(
            summary.types["domain"].0.len(),
            2,
            "mx.example.org is only in the transport headers"
        );
        assert_eq!(summary.types["domain"].1, 2);
        assert_eq!(summary.types["ipv4"].1, 1);
        assert_eq!(
            summary.top_domains(1),
            vec![("bad.example.com", 2)],
            "the domain of both messages first"
        );
        assert_eq!(summary.tlp["TLP:AMBER"], 1);
        assert_eq!(summary.tlp["none"], 1);
        assert_eq!(summary.defanged, 2);
        let json = summary.to_json(10);
        assert_eq!(json["indicators"]["domain"]["distinct"], 2);
        assert_eq!(json["top_domains"][1]["domain"], "x.example.net");
        assert_eq!(
            json["top_domains"].as_array().map(Vec::len),
            Some(2),
            "a domain only in transport headers is not ranked"
        );
    }

    /// A message whose every field a sender chose carries terminal controls: none reaches
    /// the output, and no value starts a line of its own.
    #[test]
    fn what_a_sender_wrote_cannot_drive_the_terminal() -> anyhow::Result<()> {
        let hostile =
            "x\u{1b}]52;c;cm0gLXJmIH4K\u{7}\u{1b}[2J\rForged\u{202e}\u{9b}\nFrom: ceo@bank.example";
        let mut m = message("s1/a", &[hostile], &[("domain", hostile)], hostile);
        let summary = m.summary.as_mut().context("a summary")?;
        summary.subject = hostile.to_owned();
        m.from = vec![pb::MailAddress {
            name: hostile.to_owned(),
            address: "a@example.com".to_owned(),
        }];
        m.reply_to = m.from.clone();
        m.return_path = hostile.to_owned();
        m.date = hostile.to_owned();
        m.message_id = hostile.to_owned();
        m.structure = hostile.to_owned();
        m.indicators[0].locations[0].detail = hostile.to_owned();
        m.attachments = vec![pb::MailAttachment {
            file_name: hostile.to_owned(),
            ..Default::default()
        }];
        m.link_mismatches = vec![pb::LinkMismatch {
            text: hostile.to_owned(),
            href: hostile.to_owned(),
        }];
        m.warnings = vec![pb::ParseWarning {
            detail: hostile.to_owned(),
            ..Default::default()
        }];
        m.text_body = format!("{hostile}\nsecond line\tend");
        let mut out = Vec::new();
        show_text(&mut out, &m)?;
        let text = String::from_utf8(out)?;
        for c in ['\u{1b}', '\u{7}', '\r', '\u{202e}', '\u{9b}'] {
            assert!(!text.contains(c), "{c:?} printed in\n{text}");
        }
        let headers = text.split("\n\n").next().unwrap_or_default();
        assert_eq!(
            headers.lines().filter(|l| l.starts_with("From:")).count(),
            1,
            "{text}"
        );

        assert!(text.contains("\\u{1b}]52;c;"), "{text}");
        assert!(
            text.contains("\nsecond line\tend"),
            "the body keeps its lines: {text}"
        );
        Ok(())
    }

    #[test]
    fn raw_bytes_go_to_a_file_or_a_pipe() {
        assert!(raw_destination_is_safe(None, true).is_err());
        assert!(raw_destination_is_safe(None, false).is_ok());
        assert!(raw_destination_is_safe(Some(&PathBuf::from("m.eml")), true).is_ok());
    }

    /// An observable on two pages keeps the more restrictive marking of its two copies,
    /// whichever page came first.
    #[test]
    fn pages_merge_to_the_markings_and_id_of_one_bundle() {
        use threatmail_parse::Tlp;
        let marked = |id: &str, tlp: Tlp| {
            json!({ "type": "domain-name", "id": id,
                    "object_marking_refs": [mailbox_stix::tlp2_id(tlp), mailbox_stix::tlp1(tlp).0] })
        };
        let page = |report: &str, tlp: Tlp| {
            json!({ "objects": [
                { "type": "report", "id": report },
                marked("domain-name--shared", tlp),
                marked(&format!("domain-name--only-{report}"), tlp),
            ] })
        };
        for (first, second) in [(Tlp::Clear, Tlp::Red), (Tlp::Red, Tlp::Clear)] {
            let mut merged = MergedBundle::default();
            merged.add(&page("report--1", first));
            merged.add(&page("report--2", second));
            let bundle = merged.into_bundle();
            let objects = bundle["objects"].as_array().cloned().unwrap_or_default();
            assert_eq!(objects.len(), 5, "{bundle}");
            let tlp_of = |id: &str| {
                objects
                    .iter()
                    .find(|o| o["id"] == id)
                    .and_then(mailbox_stix::marking_tlp)
            };
            assert_eq!(tlp_of("domain-name--shared"), Some(Tlp::Red));
            assert_eq!(tlp_of("domain-name--only-report--1"), Some(first));
            assert_eq!(
                bundle["id"],
                mailbox_stix::bundle_id(&["report--1".to_owned(), "report--2".to_owned()])
            );
        }
    }

    #[test]
    fn show_puts_the_relays_apart() -> anyhow::Result<()> {
        let m = message(
            "s1/a",
            &["INBOX"],
            &[
                ("domain", "mx.relay.example.net"),
                ("url", "https://evil.example.org/x"),
            ],
            "",
        );
        let mut out = Vec::new();
        show_text(&mut out, &m)?;
        let text = String::from_utf8(out)?;
        let (said, relays) = text
            .split_once("In the transport headers only (1):")
            .context(text.clone())?;
        assert!(said.contains("Indicators (1):"), "{text}");
        assert!(said.contains("https://evil.example.org/x"), "{text}");
        assert!(!said.contains("mx.relay.example.net"), "{text}");
        assert!(relays.contains("mx.relay.example.net"), "{text}");
        Ok(())
    }

    #[test]
    fn the_sender_column_keeps_the_address() {
        assert_eq!(
            sender_address("Lena Fischer <lena.fischer@partner.example.com>"),
            "lena.fischer@partner.example.com"
        );
        assert_eq!(sender_address("a@example.com"), "a@example.com");
        assert_eq!(sender_address("Only A Name"), "Only A Name");
        assert_eq!(sender_address("Odd <>"), "Odd <>");
    }

    #[test]
    fn filters_say_what_cannot_match() {
        let filters = |since, until| Filters {
            since,
            until,
            ..Filters::default()
        };
        assert!(filters(Some(10), Some(5)).check().is_err());
        assert!(filters(Some(5), Some(5)).check().is_err());
        assert!(filters(Some(5), Some(10)).check().is_ok());
        assert!(filters(None, Some(10)).check().is_ok());
        let inbox = Filters {
            folder: Some("inbox".to_owned()),
            ..Filters::default()
        };
        assert_eq!(inbox.request().folder, "INBOX");
        let other = Filters {
            folder: Some("Phish Reports".to_owned()),
            ..Filters::default()
        };
        assert_eq!(other.request().folder, "Phish Reports");
        for (given, raw) in [
            ("Signalé/Phish", "Signal&AOk-/Phish"),
            ("Signal&AOk-/Phish", "Signal&AOk-/Phish"),
            ("R&D", "R&-D"),
            ("R&-D", "R&-D"),
        ] {
            let named = Filters {
                folder: Some(given.to_owned()),
                ..Filters::default()
            };
            assert_eq!(named.request().folder, raw, "{given}");
        }
        assert_eq!(shown_folder("Signal&AOk-/Phish"), "Signalé/Phish");
        assert_eq!(shown_folder("Phish Reports"), "Phish Reports");
        assert_eq!(shown_folder("bad&"), "bad&");
        assert!(parse_source_id("SOC phish").is_err());
        assert_eq!(
            parse_source_id("5f0c2b1e-0000-4000-8000-000000000001")
                .ok()
                .as_deref(),
            Some("5f0c2b1e-0000-4000-8000-000000000001")
        );
    }

    #[test]
    fn long_text_is_cut_on_one_line() {
        assert_eq!(one_line("a\r\nb", 10), "a\\r\\nb");
        assert_eq!(one_line("abcdef", 4), "abc…");
    }
}
