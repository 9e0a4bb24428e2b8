//! The Mailbox API over gRPC against a real Redis and blob directory: who may call what,
//! each ListMessages filter field, paging tokens, GetMessage, GetRaw, analyst state, and
//! the outbox drain the service runs for crashed writers.

mod common;

use std::collections::BTreeSet;

use common::{Stack, mail};
use threatmail_proto::v1 as pb;
use threatmail_store::CrashPoint;
use tonic::Code;

fn reason(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("threatmail-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn subjects(
    client: &mut common::Client,
    request: pb::ListMessagesRequest,
) -> anyhow::Result<Vec<String>> {
    let mut request = pb::ListMessagesRequest {
        page_size: 2,
        ..request
    };
    let mut out = Vec::new();
    loop {
        let reply = client.list_messages(request.clone()).await?.into_inner();
        out.extend(reply.messages.into_iter().map(|m| m.subject));
        if reply.next_page_token.is_empty() {
            return Ok(out);
        }
        request.page_token = reply.next_page_token;
    }
}

#[tokio::test]
async fn callers_need_view_to_read_and_update_to_change_state() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let src = stack.add_source("s1", "Phishing", &[], &[], None).await?;
    let outcome = stack
        .write(
            &src,
            "INBOX",
            vec![mail(1, "a@test", "x@evil.example", "hello", "body")],
        )
        .await?;
    let id = outcome.items[0].message().expect("stored").to_string();

    let denied = stack
        .anonymous()
        .await?
        .list_messages(pb::ListMessagesRequest::default())
        .await
        .expect_err("no credential");
    assert_eq!(denied.code(), Code::Unauthenticated);
    let mut creator = stack.client(&stack.nobody).await?;
    let denied = creator
        .get_message(pb::GetMessageRequest { id: id.clone() })
        .await
        .expect_err("no view");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let mut bogus = stack.client("tmk1.0000000000000000.wrong").await?;
    assert_eq!(
        bogus
            .list_messages(pb::ListMessagesRequest::default())
            .await
            .expect_err("bad key")
            .code(),
        Code::Unauthenticated
    );

    let mut viewer = stack.client(&stack.viewer).await?;
    assert_eq!(
        viewer
            .list_messages(pb::ListMessagesRequest::default())
            .await?
            .into_inner()
            .messages
            .len(),
        1
    );
    let change = pb::SetAnalystStateRequest {
        id: id.clone(),
        read: Some(true),
        starred: Some(true),
        reviewed: Some(true),
        comment: Some("confirmed phish".into()),
    };
    let denied = viewer
        .set_analyst_state(change.clone())
        .await
        .expect_err("view only");
    assert_eq!(denied.code(), Code::PermissionDenied);

    let mut updater = stack.client(&stack.updater).await?;
    let state = updater.set_analyst_state(change).await?.into_inner();
    assert!(state.read && state.starred && state.reviewed);
    assert_eq!(state.comment, "confirmed phish");
    assert!(
        state.updated_by.starts_with("API key "),
        "{}",
        state.updated_by
    );
    // Re-ingest never erases it; it shows in lists and in the message.
    stack
        .write(
            &src,
            "INBOX",
            vec![mail(1, "a@test", "x@evil.example", "hello", "body")],
        )
        .await?;
    stack
        .write(
            &src,
            "Other",
            vec![mail(9, "a@test", "x@evil.example", "hello", "body")],
        )
        .await?;
    let listed = viewer
        .list_messages(pb::ListMessagesRequest::default())
        .await?
        .into_inner();
    assert_eq!(
        listed.messages[0]
            .state
            .as_ref()
            .map(|s| s.comment.as_str()),
        Some("confirmed phish")
    );
    let message = viewer
        .get_message(pb::GetMessageRequest { id: id.clone() })
        .await?
        .into_inner();
    assert_eq!(
        message.summary.and_then(|s| s.state).map(|s| s.starred),
        Some(true)
    );
    assert_eq!(message.locations.len(), 2);
    let unknown = updater
        .set_analyst_state(pb::SetAnalystStateRequest {
            id: format!("s1/{}", "0".repeat(32)),
            read: Some(true),
            ..Default::default()
        })
        .await
        .expect_err("no such message");
    assert_eq!(unknown.code(), Code::NotFound);
    stack.stop().await
}

#[tokio::test]
async fn every_list_filter_field_reaches_the_store() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let a = stack.add_source("src-a", "A", &[], &[], None).await?;
    let b = stack.add_source("src-b", "B", &[], &[], None).await?;
    let dated = |uid: u32, id: &str, date: &str, from: &str, subject: &str, body: &str| {
        let raw = format!(
            "Message-ID: <{id}>\r\nDate: {date}\r\nFrom: {from}\r\nSubject: {subject}\r\n\r\n{body}\r\n"
        );
        threatmail_store::IncomingMessage::parse(uid, raw.into_bytes())
    };
    stack
        .write(
            &a,
            "INBOX",
            vec![
                dated(
                    1,
                    "1@t",
                    "Mon, 1 Apr 2024 09:00:00 +0000",
                    "billing@evil.example",
                    "Invoice overdue",
                    "pay at hxxps://pay[.]evil-invoices[.]com/x",
                ),
                dated(
                    2,
                    "2@t",
                    "Tue, 2 Apr 2024 09:00:00 +0000",
                    "it@phish.example",
                    "Password expiry",
                    "see CVE-2023-23397",
                ),
            ],
        )
        .await?;
    stack
        .write(
            &a,
            "Reports",
            vec![dated(
                3,
                "3@t",
                "Wed, 3 Apr 2024 09:00:00 +0000",
                "alice@corp.example",
                "FW: Invoice",
                "https://pay.evil-invoices.com/x",
            )],
        )
        .await?;
    stack
        .write(
            &b,
            "INBOX",
            vec![dated(
                4,
                "4@t",
                "Thu, 4 Apr 2024 09:00:00 +0000",
                "billing@evil.example",
                "Invoice again",
                "nothing here",
            )],
        )
        .await?;
    let mut client = stack.client(&stack.viewer).await?;
    let all = || pb::ListMessagesRequest::default();

    assert_eq!(
        subjects(&mut client, all()).await?,
        [
            "Invoice again",
            "FW: Invoice",
            "Password expiry",
            "Invoice overdue"
        ]
    );
    assert_eq!(
        subjects(
            &mut client,
            pb::ListMessagesRequest {
                source_id: "src-b".into(),
                ..all()
            }
        )
        .await?,
        ["Invoice again"]
    );
    assert_eq!(
        subjects(
            &mut client,
            pb::ListMessagesRequest {
                source_id: "src-a".into(),
                folder: "Reports".into(),
                ..all()
            }
        )
        .await?,
        ["FW: Invoice"]
    );
    assert_eq!(
        subjects(
            &mut client,
            pb::ListMessagesRequest {
                since: 1_712_048_400,
                until: 1_712_221_200,
                ..all()
            }
        )
        .await?,
        ["FW: Invoice", "Password expiry"]
    );
    assert_eq!(
        subjects(
            &mut client,
            pb::ListMessagesRequest {
                sender: "billing@evil.example".into(),
                ..all()
            }
        )
        .await?,
        ["Invoice again", "Invoice overdue"]
    );
    assert_eq!(
        subjects(
            &mut client,
            pb::ListMessagesRequest {
                indicator_value: "https://pay.evil-invoices.com/x".into(),
                ..all()
            }
        )
        .await?,
        ["FW: Invoice", "Invoice overdue"]
    );
    assert_eq!(
        subjects(
            &mut client,
            pb::ListMessagesRequest {
                indicator_type: "cve".into(),
                ..all()
            }
        )
        .await?,
        ["Password expiry"]
    );
    assert_eq!(
        subjects(
            &mut client,
            pb::ListMessagesRequest {
                subject_contains: "invoice".into(),
                source_id: "src-a".into(),
                ..all()
            }
        )
        .await?,
        ["FW: Invoice", "Invoice overdue"]
    );

    for (request, field) in [
        (
            pb::ListMessagesRequest {
                indicator_type: "bitcoin".into(),
                ..all()
            },
            "indicator_type",
        ),
        (
            pb::ListMessagesRequest {
                source_id: "no spaces".into(),
                ..all()
            },
            "source_id",
        ),
        (
            pb::ListMessagesRequest {
                page_token: "garbage!".into(),
                ..all()
            },
            "page_token",
        ),
        (pb::ListMessagesRequest { since: -5, ..all() }, "since"),
    ] {
        let status = client.list_messages(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(status.message().contains(field), "{}", status.message());
        assert_eq!(reason(&status), "request.invalid_argument");
    }
    stack.stop().await
}

#[tokio::test]
async fn a_message_comes_back_whole_and_raw() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let src = stack.add_source("s1", "Phishing", &[], &[], None).await?;
    let raw = concat!(
        "Message-ID: <whole@test.example>\r\n",
        "Date: Wed, 1 May 2024 10:00:00 +0200\r\n",
        "From: \"IT Desk\" <it@phish.example>\r\n",
        "Reply-To: collect@evil.example\r\n",
        "To: victim@corp.example\r\n",
        "Subject: Mailbox quota TLP:AMBER\r\n",
        "MIME-Version: 1.0\r\n",
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n",
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nLog in at hxxps://quota[.]evil-mail[.]com/login now.\r\n",
        "--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<a href=\"https://quota.evil-mail.com/login\">https://outlook.office.com</a>\r\n",
        "--b\r\nContent-Type: application/pdf; name=quota.pdf\r\nContent-Disposition: attachment; filename=quota.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n",
        "--b--\r\n"
    )
    .as_bytes()
    .to_vec();
    let message = threatmail_store::IncomingMessage::parse(7, raw.clone());
    let outcome = stack.write(&src, "INBOX", vec![message]).await?;
    let id = outcome.items[0].message().expect("stored").to_string();
    let mut client = stack.client(&stack.viewer).await?;

    let got = client
        .get_message(pb::GetMessageRequest { id: id.clone() })
        .await?
        .into_inner();
    let summary = got.summary.clone().expect("summary");
    assert_eq!(summary.id, id);
    assert_eq!(summary.subject, "Mailbox quota TLP:AMBER");
    assert_eq!(summary.from, "IT Desk <it@phish.example>");
    assert_eq!(summary.tlp, "TLP:AMBER");
    assert_eq!(summary.folders, ["INBOX"]);
    assert_eq!(got.message_id, "whole@test.example");
    assert_eq!(got.reply_to[0].address, "collect@evil.example");
    assert_eq!(got.to[0].address, "victim@corp.example");
    assert!(got.text_body.contains("Log in at"));
    assert!(got.html_body.contains("<a href"));
    assert_eq!(got.attachments.len(), 1);
    assert_eq!(got.attachments[0].file_name, "quota.pdf");
    assert_eq!(got.attachments[0].sha256.len(), 64);
    let url = got
        .indicators
        .iter()
        .find(|i| i.r#type == "url" && i.value.starts_with("https://quota.evil-mail.com/login"))
        .expect("the url");
    assert!(url.defanged);
    let places: BTreeSet<&str> = url.locations.iter().map(|l| l.source.as_str()).collect();
    assert!(
        places.contains("text") && places.contains("html_attribute"),
        "{places:?}"
    );
    assert_eq!(got.locations[0].uid, 7);
    assert!(got.structure.starts_with("multipart/mixed"));
    assert!(!got.link_mismatches.is_empty());

    let mut stream = client
        .get_raw(pb::GetMessageRequest { id: id.clone() })
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    let mut first = None;
    while let Some(chunk) = stream.message().await? {
        first.get_or_insert((chunk.size, chunk.sha256.clone()));
        bytes.extend(chunk.raw);
    }
    assert_eq!(bytes, raw);
    assert_eq!(
        first,
        Some((
            raw.len() as u64,
            threatmail_store::identity::sha256_hex(&raw)
        ))
    );

    for (bad, code) in [
        ("nope", Code::InvalidArgument),
        (&*format!("s1/{}", "f".repeat(32)), Code::NotFound),
    ] {
        let status = client
            .get_message(pb::GetMessageRequest { id: bad.to_owned() })
            .await
            .expect_err(bad);
        assert_eq!(status.code(), code, "{bad}");
        let status = client
            .get_raw(pb::GetMessageRequest { id: bad.to_owned() })
            .await
            .expect_err(bad);
        assert_eq!(status.code(), code, "{bad}");
    }
    stack.stop().await
}

#[tokio::test]
async fn the_service_drains_what_a_crashed_writer_left_in_the_outbox() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let src = stack.add_source("s1", "Phishing", &[], &[], None).await?;
    stack.store.inject_crash(CrashPoint::AfterCommit);
    let crashed = stack
        .write(
            &src,
            "INBOX",
            vec![mail(1, "c@test", "x@evil.example", "left behind", "b")],
        )
        .await;
    assert!(crashed.is_err());
    // Only the cross-source index (the drain's) serves a list without a source.
    let store = stack.store.clone();
    let drained = threatmail_testkit::net::wait_for(
        "the service's drain",
        std::time::Duration::from_secs(30),
        || {
            let store = store.clone();
            let src = src.clone();
            async move { (store.outbox_len(&src).await.ok()? == 0).then_some(()) }
        },
    )
    .await;
    drained?;
    let events = stack.store.events("0", 10).await?;
    assert_eq!(events.len(), 1);
    let mut client = stack.client(&stack.viewer).await?;
    assert_eq!(
        subjects(&mut client, pb::ListMessagesRequest::default()).await?,
        ["left behind"]
    );
    stack.stop().await
}
