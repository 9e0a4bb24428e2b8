//! Lists against a real Redis: each filter alone and together, per source and across
//! sources, and paging over 10,000 records that returns each exactly once while new
//! records arrive.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::{TestStore, batch, mail, source, synthetic};
use threatmail_parse::IndicatorKind;
use threatmail_store::{ListQuery, MessageRef, Store, time::parse_rfc3339_ms};

/// Every item of `query`, following cursors.
async fn all(store: &Store, query: &ListQuery) -> anyhow::Result<Vec<MessageRef>> {
    let mut query = query.clone();
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let page = store.list(&query).await?;
        out.extend(page.items.into_iter().map(|i| i.message));
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => return Ok(out),
        }
    }
    anyhow::bail!("the list did not end")
}

fn q() -> ListQuery {
    ListQuery {
        page_size: 3,
        ..ListQuery::default()
    }
}

struct Fixture {
    t: TestStore,
    /// Subject → record.
    by_subject: HashMap<&'static str, MessageRef>,
}

impl Fixture {
    fn refs(&self, subjects: &[&str]) -> Vec<MessageRef> {
        subjects
            .iter()
            .map(|s| self.by_subject[s].clone())
            .collect()
    }
}

/// Two sources, three folders, four senders, dates a day apart, assorted indicators.
async fn fixture() -> anyhow::Result<Fixture> {
    let t = TestStore::start().await?;
    let a = source("src-a");
    let b = source("src-b");
    #[rustfmt::skip]
    let mails = [
        // (source, folder, subject, date, from, body)
        (&a, "INBOX", "Invoice overdue", "Mon, 1 Apr 2024 09:00:00 +0000", "billing@evil.example", "Pay at hxxp://pay[.]evil[.]example[.]com/now or call"),
        (&a, "INBOX", "Password expiry", "Tue, 2 Apr 2024 09:00:00 +0000", "it-support@phish.example", "Reset at https://login.phish.example.net/reset and see CVE-2024-3400"),
        (&a, "Phish Reports", "FW: Invoice", "Wed, 3 Apr 2024 09:00:00 +0000", "alice@corp.example", "Forwarding: http://pay.evil.example.com/now from 203.0.113.7"),
        (&a, "Phish Reports", "Shared document", "Thu, 4 Apr 2024 09:00:00 +0000", "bob@corp.example", "File hash 44d88612fea8a8f36de82e1278abb02f attached"),
        (&b, "INBOX", "Invoice 2", "Fri, 5 Apr 2024 09:00:00 +0000", "billing@evil.example", "Second request http://pay.evil.example.com/now"),
        (&b, "Junk", "Weekly newsletter", "Sat, 6 Apr 2024 09:00:00 +0000", "news@legit.example", "Read at https://news.legit.example.org/issue/12"),
    ];
    let mut by_subject = HashMap::new();
    for (n, (src, folder, subject, date, from, body)) in mails.into_iter().enumerate() {
        let message = mail(
            n as u32 + 1,
            &format!("m{n}@test.example"),
            date,
            from,
            subject,
            body,
        );
        let outcome = t.store.write(&batch(src, folder, 1, vec![message])).await?;
        by_subject.insert(
            subject,
            outcome.items[0].message().cloned().expect("stored"),
        );
    }
    // One of them also in a second folder.
    let again = mail(
        1,
        "m0@test.example",
        "Mon, 1 Apr 2024 09:00:00 +0000",
        "billing@evil.example",
        "Invoice overdue",
        "Pay at hxxp://pay[.]evil[.]example[.]com/now or call",
    );
    t.store.write(&batch(&a, "Archive", 1, vec![again])).await?;
    Ok(Fixture { t, by_subject })
}

#[tokio::test]
async fn each_filter_selects_its_messages_newest_first() -> anyhow::Result<()> {
    let f = fixture().await?;
    let store = &f.t.store;
    let a = source("src-a");
    let b = source("src-b");

    // Source.
    let got = all(
        store,
        &ListQuery {
            source: Some(a.clone()),
            ..q()
        },
    )
    .await?;
    assert_eq!(
        got,
        f.refs(&[
            "Shared document",
            "FW: Invoice",
            "Password expiry",
            "Invoice overdue"
        ])
    );
    // Every source (the cross-source index the outbox drain writes).
    let got = all(store, &q()).await?;
    assert_eq!(got.len(), 6);
    assert_eq!(got[0], f.by_subject["Weekly newsletter"]);

    // Folder, with and without a source.
    let got = all(
        store,
        &ListQuery {
            source: Some(a.clone()),
            folder: Some("Phish Reports".into()),
            ..q()
        },
    )
    .await?;
    assert_eq!(got, f.refs(&["Shared document", "FW: Invoice"]));
    let got = all(
        store,
        &ListQuery {
            source: Some(a.clone()),
            folder: Some("Archive".into()),
            ..q()
        },
    )
    .await?;
    assert_eq!(got, f.refs(&["Invoice overdue"]));
    let got = all(
        store,
        &ListQuery {
            folder: Some("INBOX".into()),
            ..q()
        },
    )
    .await?;
    assert_eq!(
        got,
        f.refs(&["Invoice 2", "Password expiry", "Invoice overdue"])
    );

    // Time range: since inclusive, until exclusive.
    let since = parse_rfc3339_ms("2024-04-02T09:00:00Z");
    let until = parse_rfc3339_ms("2024-04-05T09:00:00Z");
    let got = all(
        store,
        &ListQuery {
            since_ms: since,
            until_ms: until,
            ..q()
        },
    )
    .await?;
    assert_eq!(
        got,
        f.refs(&["Shared document", "FW: Invoice", "Password expiry"])
    );
    let got = all(
        store,
        &ListQuery {
            source: Some(b.clone()),
            since_ms: since,
            ..q()
        },
    )
    .await?;
    assert_eq!(got, f.refs(&["Weekly newsletter", "Invoice 2"]));
    let got = all(
        store,
        &ListQuery {
            since_ms: until,
            until_ms: since,
            ..q()
        },
    )
    .await?;
    assert!(got.is_empty());

    // Sender: an address (any case), a domain.
    let got = all(
        store,
        &ListQuery {
            sender: Some("Billing@Evil.Example".into()),
            ..q()
        },
    )
    .await?;
    assert_eq!(got, f.refs(&["Invoice 2", "Invoice overdue"]));
    let got = all(
        store,
        &ListQuery {
            source: Some(a.clone()),
            sender: Some("@corp.example".into()),
            ..q()
        },
    )
    .await?;
    assert_eq!(got, f.refs(&["Shared document", "FW: Invoice"]));
    let got = all(
        store,
        &ListQuery {
            sender: Some("corp.example".into()),
            ..q()
        },
    )
    .await?;
    assert_eq!(got.len(), 2);
    let got = all(
        store,
        &ListQuery {
            sender: Some("nobody@nowhere.example".into()),
            ..q()
        },
    )
    .await?;
    assert!(got.is_empty());

    // Indicator value: defanged and plain forms find the same records.
    let got = all(
        store,
        &ListQuery {
            indicator_value: Some("hxxp://pay[.]evil[.]example[.]com/now".into()),
            ..q()
        },
    )
    .await?;
    assert_eq!(
        got,
        f.refs(&["Invoice 2", "FW: Invoice", "Invoice overdue"])
    );
    let got = all(
        store,
        &ListQuery {
            source: Some(a.clone()),
            indicator_value: Some("http://pay.evil.example.com/now".into()),
            ..q()
        },
    )
    .await?;
    assert_eq!(got, f.refs(&["FW: Invoice", "Invoice overdue"]));
    let got = all(
        store,
        &ListQuery {
            indicator_value: Some("203.0.113.7".into()),
            ..q()
        },
    )
    .await?;
    assert_eq!(got, f.refs(&["FW: Invoice"]));
    let got = all(
        store,
        &ListQuery {
            indicator_value: Some("pay.evil.example.com".into()),
            indicator_kind: Some(IndicatorKind::Domain),
            ..q()
        },
    )
    .await?;
    assert_eq!(
        got,
        f.refs(&["Invoice 2", "FW: Invoice", "Invoice overdue"])
    );

    // Indicator type alone.
    let got = all(
        store,
        &ListQuery {
            indicator_kind: Some(IndicatorKind::Cve),
            ..q()
        },
    )
    .await?;
    assert_eq!(got, f.refs(&["Password expiry"]));
    let got = all(
        store,
        &ListQuery {
            indicator_kind: Some(IndicatorKind::Md5),
            ..q()
        },
    )
    .await?;
    assert_eq!(got, f.refs(&["Shared document"]));
    let got = all(
        store,
        &ListQuery {
            indicator_kind: Some(IndicatorKind::Ipv4),
            ..q()
        },
    )
    .await?;
    assert_eq!(got, f.refs(&["FW: Invoice"]));

    // Text in the subject, case-insensitive.
    let got = all(
        store,
        &ListQuery {
            subject_contains: Some("INVOICE".into()),
            ..q()
        },
    )
    .await?;
    assert_eq!(
        got,
        f.refs(&["Invoice 2", "FW: Invoice", "Invoice overdue"])
    );

    // Together: every filter must match.
    let got = all(
        store,
        &ListQuery {
            source: Some(a.clone()),
            indicator_value: Some("http://pay.evil.example.com/now".into()),
            sender: Some("@corp.example".into()),
            subject_contains: Some("fw".into()),
            since_ms: since,
            ..q()
        },
    )
    .await?;
    assert_eq!(got, f.refs(&["FW: Invoice"]));

    // Listed items carry their locations and summaries.
    let page = store
        .list(&ListQuery {
            subject_contains: Some("overdue".into()),
            ..q()
        })
        .await?;
    let folders: BTreeSet<&str> = page.items[0]
        .locations
        .iter()
        .map(|l| l.folder.as_str())
        .collect();
    assert_eq!(folders, BTreeSet::from(["Archive", "INBOX"]));
    assert_eq!(
        page.items[0].summary.subject.as_deref(),
        Some("Invoice overdue")
    );
    assert_eq!(
        page.items[0].summary.senders,
        vec!["billing@evil.example".to_owned()]
    );
    Ok(())
}

#[tokio::test]
async fn paging_over_10000_records_returns_each_once_while_new_ones_arrive() -> anyhow::Result<()> {
    let t = TestStore::start_with_memory_blobs().await?;
    let src = source("bulk");
    let base = 1_700_000_000_000_i64;
    // Four records share each sort time, so the cursor must also order by record id. Later
    // records get times spread over the first ones', so some sort before the cursor of the
    // walk in progress and some after it.
    let write_range = |range: std::ops::Range<usize>| {
        let store = t.store.clone();
        let src = src.clone();
        async move {
            let messages: Vec<_> = range
                .map(|n| {
                    let slot = if n < 10_000 { n } else { (n * 7919) % 10_000 };
                    synthetic(n as u32 + 1, n, base + (slot as i64 / 4) * 1000)
                })
                .collect();
            let batches: Vec<_> = messages
                .chunks(250)
                .map(|chunk| batch(&src, "INBOX", 1, chunk.to_vec()))
                .collect();
            // Two writes in flight: pipelined, and within the connection's reply timeout.
            use futures::StreamExt as _;
            futures::stream::iter(batches.iter().map(|b| store.write(b)))
                .buffer_unordered(2)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
        }
    };
    write_range(0..10_000).await?;
    assert_eq!(t.store.count(&src).await?, 10_000);
    let originals: BTreeSet<MessageRef> = all(
        &t.store,
        &ListQuery {
            source: Some(src.clone()),
            page_size: 1000,
            ..q()
        },
    )
    .await?
    .into_iter()
    .collect();
    assert_eq!(originals.len(), 10_000);

    for query in [
        ListQuery {
            source: Some(src.clone()),
            page_size: 97,
            ..q()
        },
        ListQuery {
            page_size: 250,
            ..q()
        },
    ] {
        let mut seen: Vec<MessageRef> = Vec::new();
        let mut query = query.clone();
        let mut added = 10_000 + if query.source.is_some() { 0 } else { 5_000 };
        loop {
            let page = t.store.list(&query).await?;
            seen.extend(page.items.into_iter().map(|i| i.message));
            // New mail arrives between pages: older and newer than the cursor.
            write_range(added..added + 40).await?;
            added += 40;
            match page.next {
                Some(next) => query.cursor = Some(next),
                None => break,
            }
        }
        let unique: BTreeSet<&MessageRef> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "a record was returned twice");
        let missing = originals.iter().filter(|m| !unique.contains(m)).count();
        assert_eq!(
            missing, 0,
            "{missing} of the first 10,000 records not returned"
        );
    }
    Ok(())
}
