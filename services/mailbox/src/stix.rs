//! STIX 2.1 export: one bundle per selection, a `report` per message holding its indicators
//! (STIX patterns), its observables (the email message, addresses, attachments, and an
//! observable per indicator), its CVEs as `vulnerability` objects, the source's tags as
//! labels, and its TLP marking.
//!
//! TLP: every report, indicator and vulnerability carries the TLP 2.0 marking definition
//! (the OASIS TLP 2.0 extension's objects, ids fixed by the extension) and, where TLP 1.0 has
//! a level for it, the STIX 2.1 spec's TLP 1.0 marking too, for consumers that know only
//! those: CLEAR → WHITE, GREEN → GREEN, AMBER and AMBER+STRICT → AMBER (1.0's AMBER already
//! kept sharing within the recipient's organisation), RED → RED. An observable shared by
//! several reports carries the most restrictive of their markings.
//!
//! Indicators are those found in what the message says (subject, bodies, attachments, the
//! senders of attached messages): the top-level transport headers name relays, our own
//! among them, and are left out (`GetMessage` still shows them). An observable whose value
//! the STIX schema would refuse (mail is full of `user@host` addresses and URLs with
//! `[placeholders]`) is not made; its indicator's pattern still carries the value.
//!
//! Ids are deterministic, so exporting the same messages again gives the same objects:
//! observables use the STIX namespace and their ID-contributing properties (spec §2.9), as
//! other producers do; other objects are UUIDv5 in threatmail's namespace over the source,
//! record id and what the object stands for. Timestamps are the record's, never "now". The
//! validator's best-practice check `uuid-check` prefers UUIDv4 for domain objects; v5 is
//! allowed by the spec, and is the price of stable re-exports.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use threatmail_parse::{Address, IndicatorKind, Tlp};
use threatmail_store::time::{format_rfc3339_ms, parse_rfc3339_ms};
use threatmail_store::{StoredMessage, identity::normalise_address};
use uuid::Uuid;

/// The STIX 2.1 namespace for observable ids (spec §2.9).
const SCO_NAMESPACE: Uuid = Uuid::from_u128(0x00ab_edb4_aa42_466c_9c01_fed2_3315_a9b7);

/// The TLP 2.0 extension definition (OASIS cti-stix-common-objects).
pub const TLP2_EXTENSION: &str = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d";

/// threatmail's namespace for the ids of the objects it makes.
fn namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, b"https://threatmail.invalid/stix/2.1")
}

/// The TLP 2.0 marking definition id of `tlp`.
pub fn tlp2_id(tlp: Tlp) -> &'static str {
    match tlp {
        Tlp::Clear => "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
        Tlp::Green => "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
        Tlp::Amber => "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
        Tlp::AmberStrict => "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
        Tlp::Red => "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
    }
}

/// The TLP 1.0 marking definition (STIX 2.1 spec §7.2.1.4) standing for `tlp`:
/// (id, level name).
pub fn tlp1(tlp: Tlp) -> (&'static str, &'static str) {
    match tlp {
        Tlp::Clear => (
            "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
            "white",
        ),
        Tlp::Green => (
            "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
            "green",
        ),
        Tlp::Amber | Tlp::AmberStrict => (
            "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82",
            "amber",
        ),
        Tlp::Red => (
            "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed",
            "red",
        ),
    }
}

fn tlp2_level(tlp: Tlp) -> &'static str {
    match tlp {
        Tlp::Clear => "clear",
        Tlp::Green => "green",
        Tlp::Amber => "amber",
        Tlp::AmberStrict => "amber+strict",
        Tlp::Red => "red",
    }
}

/// The marking refs an object of level `tlp` carries.
fn marking_refs(tlp: Tlp) -> Vec<&'static str> {
    vec![tlp2_id(tlp), tlp1(tlp).0]
}

/// The TLP 2.0 marking definition object, as the extension publishes it.
fn tlp2_object(tlp: Tlp) -> Value {
    json!({
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": tlp2_id(tlp),
        "created": "2022-10-01T00:00:00.000Z",
        "name": tlp.as_str(),
        "extensions": {
            TLP2_EXTENSION: {
                "extension_type": "property-extension",
                "tlp_2_0": tlp2_level(tlp),
            }
        }
    })
}

/// The TLP 1.0 marking definition object, as the STIX 2.1 spec defines it.
fn tlp1_object(tlp: Tlp) -> Value {
    let (id, level) = tlp1(tlp);
    json!({
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": id,
        "created": "2017-01-20T00:00:00.000Z",
        "definition_type": "tlp",
        "name": format!("TLP:{}", level.to_uppercase()),
        "definition": { "tlp": level },
    })
}

/// The TLP 2.0 extension definition object.
fn tlp2_extension_object() -> Value {
    json!({
        "type": "extension-definition",
        "spec_version": "2.1",
        "id": TLP2_EXTENSION,
        "created": "2022-10-01T00:00:00.000Z",
        "modified": "2022-10-01T00:00:00.000Z",
        "created_by_ref": "identity--b3bca3c2-1f3d-4b54-b44f-dac42c3a8f01",
        "name": "TLP 2.0",
        "description": "This defines TLP 2.0 as a STIX extension",
        "schema": "https://github.com/oasis-open/cti-stix-common-objects/tree/master/extension-definition-specifications/tlp-2.0",
        "version": "1.0.0",
        "extension_types": ["property-extension"],
    })
}

/// The identity of threatmail as the producer.
fn producer_identity() -> (String, Value) {
    let id = format!(
        "identity--{}",
        Uuid::new_v5(&namespace(), b"identity|threatmail")
    );
    let object = json!({
        "type": "identity",
        "spec_version": "2.1",
        "id": id,
        "created": "2024-01-01T00:00:00.000Z",
        "modified": "2024-01-01T00:00:00.000Z",
        "name": "threatmail",
        "identity_class": "system",
    });
    (id, object)
}

/// An observable id: UUIDv5 in the STIX namespace over the canonical JSON (keys sorted, no
/// white space, RFC 8785) of its ID-contributing properties.
fn sco_id(kind: &str, contributing: &BTreeMap<&str, Value>) -> String {
    // serde_json writes a map in its iteration order: a BTreeMap's, sorted, as JCS wants.
    let canonical = serde_json::to_string(contributing)
        .unwrap_or_else(|_| unreachable!("strings and maps of strings serialise"));
    format!(
        "{kind}--{}",
        Uuid::new_v5(&SCO_NAMESPACE, canonical.as_bytes())
    )
}

/// An id in threatmail's namespace.
fn sdo_id(kind: &str, basis: &str) -> String {
    format!("{kind}--{}", Uuid::new_v5(&namespace(), basis.as_bytes()))
}

/// A string inside a STIX pattern's single quotes.
fn pattern_literal(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "\\'")
}

/// Whether `mime` has the form the validator accepts offline (IANA top-level type).
fn plausible_mime(mime: &str) -> bool {
    let Some((top, sub)) = mime.split_once('/') else {
        return false;
    };
    matches!(
        top,
        "application"
            | "audio"
            | "font"
            | "image"
            | "message"
            | "model"
            | "multipart"
            | "text"
            | "video"
    ) && !sub.is_empty()
        && sub
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '_' | '-'))
}

/// Whether `value` is an address the STIX schema's `email` format takes (the validator's
/// rule: `[A-Za-z0-9_.+-]+@[A-Za-z0-9-]+\.[A-Za-z0-9-.]+`). Phishing headers hold many that
/// are not (`user@host`, `a@b@c`, `x=y@z`); those get no `email-addr` object.
fn stix_email(value: &str) -> bool {
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    let Some((first, rest)) = domain.split_once('.') else {
        return false;
    };
    !local.is_empty()
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-'))
        && !first.is_empty()
        && first.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
}

/// Whether `value` is an RFC 3986 URI (what the schema's `uri` format takes): a scheme,
/// then only characters a URI may hold, each `%` starting a hex pair, brackets only around
/// an IP literal host, one `#` at most. A URL as written in mail may break these rules
/// (`[unsub]` placeholders, bad escapes); it keeps its indicator but gets no `url` object.
pub fn rfc3986_uri(value: &str) -> bool {
    let Some((scheme, rest)) = value.split_once(':') else {
        return false;
    };
    let mut scheme_chars = scheme.chars();
    if !scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !scheme_chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
    {
        return false;
    }
    let unreserved_or_sub = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '.'
                    | '_'
                    | '~'
                    | '!'
                    | '$'
                    | '&'
                    | '\''
                    | '('
                    | ')'
                    | '*'
                    | '+'
                    | ','
                    | ';'
                    | '='
            )
    };
    let escapes_ok = |text: &str| {
        let bytes = text.as_bytes();
        bytes.iter().enumerate().all(|(i, b)| {
            *b != b'%'
                || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        })
    };
    let (before_fragment, fragment) = match rest.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (rest, None),
    };
    let (hier, query) = match before_fragment.split_once('?') {
        Some((hier, query)) => (hier, Some(query)),
        None => (before_fragment, None),
    };
    let tail_ok = |text: &str| {
        escapes_ok(text)
            && text
                .chars()
                .all(|c| unreserved_or_sub(c) || matches!(c, '%' | ':' | '@' | '/' | '?'))
    };
    if !query.is_none_or(tail_ok) || !fragment.is_none_or(tail_ok) {
        return false;
    }
    let path = match hier.strip_prefix("//") {
        Some(after) => {
            let (authority, path) = match after.find('/') {
                Some(at) => after.split_at(at),
                None => (after, ""),
            };
            let host_port = match authority.rsplit_once('@') {
                Some((userinfo, host_port)) => {
                    if !escapes_ok(userinfo)
                        || !userinfo
                            .chars()
                            .all(|c| unreserved_or_sub(c) || matches!(c, '%' | ':'))
                    {
                        return false;
                    }
                    host_port
                }
                None => authority,
            };
            let (host, port) = if let Some(literal) = host_port.strip_prefix('[') {
                let Some((inside, after)) = literal.split_once(']') else {
                    return false;
                };
                if inside.is_empty()
                    || !inside
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.'))
                {
                    return false;
                }
                ("", after.strip_prefix(':'))
            } else {
                match host_port.rsplit_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (host_port, None),
                }
            };
            if !escapes_ok(host) || !host.chars().all(|c| unreserved_or_sub(c) || c == '%') {
                return false;
            }
            if !port.is_none_or(|p| p.chars().all(|c| c.is_ascii_digit())) {
                return false;
            }
            path
        }
        None => hier,
    };
    escapes_ok(path)
        && path
            .chars()
            .all(|c| unreserved_or_sub(c) || matches!(c, '%' | ':' | '@' | '/'))
}

/// One message to export.
#[derive(Debug)]
pub struct ExportItem<'a> {
    /// The message.
    pub message: &'a StoredMessage,
    /// Its TLP (from the message, else the source's default, else the service's).
    pub tlp: Tlp,
    /// The source's tags.
    pub tags: &'a [String],
    /// The source's display name, for the description.
    pub source_name: &'a str,
}

/// Collects observables shared between reports, each once, with the most restrictive TLP.
#[derive(Default)]
struct Observables {
    objects: BTreeMap<String, (Value, Tlp)>,
}

impl Observables {
    /// Adds `object` (with id `id`) at level `tlp`; the first copy of an id is kept.
    fn add(&mut self, id: String, object: Value, tlp: Tlp) -> String {
        self.objects
            .entry(id.clone())
            .and_modify(|(_, level)| *level = (*level).max(tlp))
            .or_insert((object, tlp));
        id
    }

    fn email_addr(&mut self, address: &Address, tlp: Tlp) -> Option<String> {
        let value = normalise_address(address.address.as_deref()?)?;
        if !stix_email(&value) {
            return None;
        }
        let id = sco_id("email-addr", &BTreeMap::from([("value", json!(value))]));
        let mut object = json!({
            "type": "email-addr",
            "spec_version": "2.1",
            "id": id,
            "value": value,
        });
        if let Some(name) = address.name.as_deref().filter(|n| !n.trim().is_empty()) {
            object["display_name"] = json!(name.trim());
        }
        Some(self.add(id, object, tlp))
    }

    fn value_object(&mut self, kind: &str, value: &str, tlp: Tlp) -> Option<String> {
        let valid = match kind {
            "url" => rfc3986_uri(value),
            "email-addr" => stix_email(value),
            _ => true,
        };
        if !valid {
            return None;
        }
        let id = sco_id(kind, &BTreeMap::from([("value", json!(value))]));
        let object = json!({ "type": kind, "spec_version": "2.1", "id": id, "value": value });
        Some(self.add(id, object, tlp))
    }

    fn file(
        &mut self,
        name: Option<&str>,
        hashes: BTreeMap<&str, &str>,
        extra: Value,
        tlp: Tlp,
    ) -> String {
        // Spec §2.9: of the hashes, only one contributes, MD5 first, then SHA-1, SHA-256, SHA-512.
        let chosen = ["MD5", "SHA-1", "SHA-256", "SHA-512"]
            .into_iter()
            .find_map(|algo| hashes.get(algo).map(|v| (algo, *v)));
        let mut contributing = BTreeMap::new();
        if let Some((algo, value)) = chosen {
            contributing.insert("hashes", json!({ algo: value }));
        }
        if let Some(name) = name {
            contributing.insert("name", json!(name));
        }
        let id = sco_id("file", &contributing);
        let mut object = json!({ "type": "file", "spec_version": "2.1", "id": id });
        if !hashes.is_empty() {
            object["hashes"] = json!(hashes);
        }
        if let Some(name) = name {
            object["name"] = json!(name);
        }
        if let (Value::Object(target), Value::Object(more)) = (&mut object, extra) {
            target.extend(more);
        }
        self.add(id, object, tlp)
    }
}

/// The pattern and the observable of an indicator, or `None` for a kind without one (CVE).
fn indicator_pattern(
    kind: IndicatorKind,
    value: &str,
    tlp: Tlp,
    observables: &mut Observables,
) -> Option<(String, Option<String>)> {
    let literal = pattern_literal(value);
    let ip_kind = |v: &str| {
        if v.contains(':') {
            "ipv6-addr"
        } else {
            "ipv4-addr"
        }
    };
    let hash = |algo: &'static str, path: &str, observables: &mut Observables| {
        let sco = observables.file(None, BTreeMap::from([(algo, value)]), json!({}), tlp);
        (format!("[file:hashes.{path} = '{literal}']"), Some(sco))
    };
    Some(match kind {
        IndicatorKind::Url => (
            format!("[url:value = '{literal}']"),
            observables.value_object("url", value, tlp),
        ),
        IndicatorKind::Domain => (
            format!("[domain-name:value = '{literal}']"),
            observables.value_object("domain-name", value, tlp),
        ),
        IndicatorKind::Ipv4 | IndicatorKind::Ipv6 | IndicatorKind::Cidr => {
            let sco_kind = ip_kind(value);
            (
                format!("[{sco_kind}:value = '{literal}']"),
                observables.value_object(sco_kind, value, tlp),
            )
        }
        IndicatorKind::Email => (
            format!("[email-addr:value = '{literal}']"),
            observables.value_object("email-addr", value, tlp),
        ),
        IndicatorKind::Md5 => hash("MD5", "MD5", observables),
        IndicatorKind::Sha1 => hash("SHA-1", "'SHA-1'", observables),
        IndicatorKind::Sha256 => hash("SHA-256", "'SHA-256'", observables),
        IndicatorKind::Sha512 => hash("SHA-512", "'SHA-512'", observables),
        IndicatorKind::Cve => return None,
    })
}

/// Where an indicator was found, for its description.
fn found_in(location: &threatmail_parse::Location) -> String {
    use threatmail_parse::Source;
    let place = match &location.source {
        Source::Header { name } => format!("the {name} header"),
        Source::Subject => "the subject".to_owned(),
        Source::Text => "a text body".to_owned(),
        Source::Html => "an HTML body".to_owned(),
        Source::HtmlAttribute { attribute } => format!("an HTML {attribute} attribute"),
        Source::Attachment { file_name } => format!("attachment {file_name}"),
        Source::RawFallback => "undecodable content".to_owned(),
    };
    if location.depth > 0 {
        format!("{place} of an attached message (depth {})", location.depth)
    } else {
        place
    }
}

/// The bundle of `items`, in their order.
pub fn bundle(items: &[ExportItem<'_>]) -> Value {
    let (identity_id, identity) = producer_identity();
    let mut observables = Observables::default();
    let mut levels: BTreeSet<Tlp> = BTreeSet::new();
    let mut domain_objects: Vec<Value> = Vec::new();
    let mut report_ids: Vec<String> = Vec::new();

    for item in items {
        let stored = item.message;
        let record = &stored.record;
        let parsed = &record.parsed;
        let mail = &parsed.message;
        let tlp = item.tlp;
        levels.insert(tlp);
        let markings = marking_refs(tlp);
        let reference = stored.message.to_string();
        let created = format_rfc3339_ms(record.ingested_at_ms);
        let basis = |what: &str| format!("{reference}|{what}");
        let mut refs: Vec<String> = Vec::new();

        // The message itself.
        let from_ref = mail
            .from
            .first()
            .and_then(|a| observables.email_addr(a, tlp));
        let to_refs: Vec<String> = mail
            .to
            .iter()
            .filter_map(|a| observables.email_addr(a, tlp))
            .collect();
        let cc_refs: Vec<String> = mail
            .cc
            .iter()
            .filter_map(|a| observables.email_addr(a, tlp))
            .collect();
        let subject = mail.subject.clone();
        let mut contributing: BTreeMap<&str, Value> = BTreeMap::new();
        if let Some(from) = &from_ref {
            contributing.insert("from_ref", json!(from));
        }
        // With neither From nor Subject there is no contributing property, and the spec
        // then wants a random id; an empty subject keeps the id deterministic.
        contributing.insert("subject", json!(subject.clone().unwrap_or_default()));
        if from_ref.is_some() && subject.is_none() {
            contributing.remove("subject");
        }
        let email_id = sco_id("email-message", &contributing);
        let mut email = json!({
            "type": "email-message",
            "spec_version": "2.1",
            "id": email_id,
            "is_multipart": parsed.structure.starts_with("multipart/"),
        });
        for (key, value) in &contributing {
            email[*key] = value.clone();
        }
        if let Some(ms) = mail.date.as_deref().and_then(parse_rfc3339_ms) {
            email["date"] = json!(format_rfc3339_ms(ms));
        }
        if !to_refs.is_empty() {
            email["to_refs"] = json!(to_refs);
        }
        if !cc_refs.is_empty() {
            email["cc_refs"] = json!(cc_refs);
        }
        if let Some(message_id) = &mail.message_id {
            email["message_id"] = json!(message_id);
        }
        refs.push(observables.add(email_id, email, tlp));
        refs.extend(from_ref.iter().cloned());
        refs.extend(to_refs);
        refs.extend(cc_refs);

        // Attachments.
        for attachment in &mail.attachments {
            let mut extra = json!({ "size": attachment.size });
            if plausible_mime(&attachment.content_type) {
                extra["mime_type"] = json!(attachment.content_type);
            }
            let hashes = BTreeMap::from([
                ("MD5", attachment.md5.as_str()),
                ("SHA-1", attachment.sha1.as_str()),
                ("SHA-256", attachment.sha256.as_str()),
            ]);
            refs.push(observables.file(attachment.file_name.as_deref(), hashes, extra, tlp));
        }

        // Indicators and CVEs found in what the message says: subject, bodies, attachments
        // and attached messages' senders. The top-level transport headers (Received,
        // DKIM, …) name relays, our own among them, so they are left out.
        for indicator in parsed.indicators.iter().filter(|i| i.in_key_scope()) {
            let kind_name = threatmail_store::write::kind_name(indicator.kind);
            let places: Vec<String> = {
                let mut seen = Vec::new();
                for location in &indicator.locations {
                    let place = found_in(location);
                    if !seen.contains(&place) {
                        seen.push(place);
                    }
                }
                seen
            };
            let description = format!(
                "Found {} time(s) in {}{}",
                indicator.occurrences,
                places.join(", "),
                if indicator.defanged {
                    "; written defanged"
                } else {
                    ""
                }
            );
            if indicator.kind == IndicatorKind::Cve {
                let name = indicator.value.to_uppercase();
                let id = sdo_id("vulnerability", &basis(&format!("vulnerability|{name}")));
                domain_objects.push(json!({
                    "type": "vulnerability",
                    "spec_version": "2.1",
                    "id": id,
                    "created": created,
                    "modified": created,
                    "created_by_ref": identity_id,
                    "name": name,
                    "description": description,
                    "external_references": [{ "source_name": "cve", "external_id": name }],
                    "object_marking_refs": markings,
                }));
                refs.push(id);
                continue;
            }
            let Some((pattern, sco)) =
                indicator_pattern(indicator.kind, &indicator.value, tlp, &mut observables)
            else {
                continue;
            };
            let id = sdo_id(
                "indicator",
                &basis(&format!("indicator|{kind_name}|{}", indicator.value)),
            );
            domain_objects.push(json!({
                "type": "indicator",
                "spec_version": "2.1",
                "id": id,
                "created": created,
                "modified": created,
                "created_by_ref": identity_id,
                "name": indicator.value,
                "description": description,
                "indicator_types": ["unknown"],
                "pattern": pattern,
                "pattern_type": "stix",
                "pattern_version": "2.1",
                "valid_from": created,
                "labels": [kind_name],
                "object_marking_refs": markings,
            }));
            refs.push(id);
            refs.extend(sco);
        }

        // The report.
        let mut seen = BTreeSet::new();
        refs.retain(|r| seen.insert(r.clone()));
        let folders: BTreeSet<&str> = stored.locations.iter().map(|l| l.folder.as_str()).collect();
        let description = format!(
            "Mail stored by threatmail from source {} (folders: {}). From: {}. Date: {}. Message-ID: {}.",
            item.source_name,
            folders.into_iter().collect::<Vec<_>>().join(", "),
            stored.summary.from_display.as_deref().unwrap_or("(none)"),
            mail.date.as_deref().unwrap_or("(none)"),
            mail.message_id.as_deref().unwrap_or("(none)"),
        );
        let id = sdo_id("report", &basis("report"));
        let mut report = json!({
            "type": "report",
            "spec_version": "2.1",
            "id": id,
            "created": created,
            "modified": created,
            "created_by_ref": identity_id,
            "name": mail.subject.as_deref().filter(|s| !s.trim().is_empty()).unwrap_or("(no subject)"),
            "description": description,
            "report_types": ["threat-report"],
            "published": created,
            "object_refs": refs,
            "object_marking_refs": markings,
            "external_references": [{ "source_name": "threatmail", "external_id": reference }],
        });
        let labels: Vec<&String> = item.tags.iter().filter(|t| !t.trim().is_empty()).collect();
        if !labels.is_empty() {
            report["labels"] = json!(labels);
        }
        report_ids.push(id);
        domain_objects.insert(domain_objects.len(), report);
    }

    let mut objects = vec![identity];
    if !levels.is_empty() {
        objects.push(tlp2_extension_object());
    }
    let mut tlp1_done = BTreeSet::new();
    for level in observables
        .objects
        .values()
        .map(|(_, t)| *t)
        .chain(levels.iter().copied())
        .collect::<BTreeSet<_>>()
    {
        objects.push(tlp2_object(level));
        if tlp1_done.insert(tlp1(level).0) {
            objects.push(tlp1_object(level));
        }
    }
    objects.extend(domain_objects);
    for (_, (mut object, tlp)) in observables.objects {
        object["object_marking_refs"] = json!(marking_refs(tlp));
        objects.push(object);
    }
    json!({ "type": "bundle", "id": bundle_id(&report_ids), "objects": objects })
}

/// The id of the bundle of the reports `report_ids`, in their order: a bundle merged from
/// pages gets the id one page of the same reports would have.
pub fn bundle_id(report_ids: &[String]) -> String {
    sdo_id("bundle", &format!("bundle|{}", report_ids.join(",")))
}

/// The TLP level of `object`'s TLP 2.0 marking, the most restrictive if it has several.
pub fn marking_tlp(object: &Value) -> Option<Tlp> {
    let refs = object["object_marking_refs"].as_array()?;
    Tlp::ALL
        .into_iter()
        .filter(|tlp| refs.iter().any(|r| r.as_str() == Some(tlp2_id(*tlp))))
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observable_ids_follow_the_spec() {
        // STIX 2.1 §2.9's worked example style: an email-addr's id is UUIDv5 of
        // {"value":"…"} in the STIX namespace; the python stix2 library agrees.
        let id = sco_id("email-addr", &BTreeMap::from([("value", json!("a@b.com"))]));
        let expected = Uuid::new_v5(&SCO_NAMESPACE, br#"{"value":"a@b.com"}"#);
        assert_eq!(id, format!("email-addr--{expected}"));
        assert_eq!(
            Uuid::parse_str(&id["email-addr--".len()..])
                .ok()
                .map(|u| u.get_version_num()),
            Some(5)
        );
    }

    #[test]
    fn patterns_quote_values() {
        assert_eq!(pattern_literal(r"http://x/a'b\c"), r"http://x/a\'b\\c");
        assert!(plausible_mime("application/vnd.ms-excel"));
        assert!(!plausible_mime("x-unknown/thing"));
        assert!(!plausible_mime("text/"));
    }

    #[test]
    fn only_values_the_schema_takes_become_observables() {
        for good in [
            "https://evil.example.com/a/b?c=d&e=%20#top",
            "http://198.51.100.7:8080/x",
            "http://[2001:db8::1]/x",
            "http://user:pw@host.example.com/",
            "https://evil.example.com",
        ] {
            assert!(rfc3986_uri(good), "{good}");
        }
        for bad in [
            "http://quibusdam.sa.com/[unsub]",
            "https://x.example.com/a%Uyr",
            "https://criches.net/dcf8a9d06\\n",
            "https://x.example.com/a{n",
            "https://x.example.com/a#b#c",
            "no-scheme",
            "1http://x",
        ] {
            assert!(!rfc3986_uri(bad), "{bad}");
        }
        assert!(stix_email("alice.b+tag@mail.corp.example"));
        for bad in [
            "phish@pot",
            "a@b@c.com",
            "bounces+x=y@z.com",
            "noreply@info,boots,com",
            "@x.com",
        ] {
            assert!(!stix_email(bad), "{bad}");
        }
    }

    #[test]
    fn every_level_has_its_markings() {
        for tlp in [
            Tlp::Clear,
            Tlp::Green,
            Tlp::Amber,
            Tlp::AmberStrict,
            Tlp::Red,
        ] {
            let object = tlp2_object(tlp);
            assert_eq!(object["name"], tlp.as_str());
            assert_eq!(
                object["extensions"][TLP2_EXTENSION]["tlp_2_0"],
                tlp2_level(tlp)
            );
            assert_eq!(marking_refs(tlp).len(), 2);
        }
        assert_eq!(tlp1(Tlp::Clear).1, "white");
        assert_eq!(tlp1(Tlp::AmberStrict), tlp1(Tlp::Amber));
    }
}
