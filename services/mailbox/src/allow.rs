//! A source's sender allow-list: mail from other senders is stored but left out of exports.
//!
//! An entry is an address (`alice@corp.example`), a domain (`@corp.example` or
//! `corp.example`: that domain exactly) or a domain with its subdomains (`*.corp.example`);
//! case does not matter. An empty list allows everyone. The sender is the message's `From`
//! (its `Sender` when it has no `From`); a message with neither is allowed only by an empty
//! list.

use threatmail_parse::MessageRecord;
use threatmail_store::identity::{normalise_address, normalise_addresses};

/// Whether `address` (normalised) matches `entry`.
fn matches(entry: &str, address: &str) -> bool {
    let Some(entry) = normalise_address(entry) else {
        return false;
    };
    let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
    if let Some(parent) = entry.strip_prefix("*.") {
        return domain == parent || domain.ends_with(&format!(".{parent}"));
    }
    if let Some(exact) = entry.strip_prefix('@') {
        return domain == exact;
    }
    if entry.contains('@') {
        entry == address
    } else {
        domain == entry
    }
}

/// Whether `message` is from a sender `allow_list` allows.
pub fn sender_allowed(allow_list: &[String], message: &MessageRecord) -> bool {
    if allow_list.iter().all(|e| e.trim().is_empty()) {
        return true;
    }
    let mut senders = normalise_addresses(&message.from);
    if senders.is_empty() {
        senders = normalise_addresses(&message.sender);
    }
    senders
        .iter()
        .any(|address| allow_list.iter().any(|entry| matches(entry, address)))
}

#[cfg(test)]
mod tests {
    use threatmail_parse::Address;

    use super::*;

    fn from(addresses: &[&str]) -> MessageRecord {
        MessageRecord {
            from: addresses
                .iter()
                .map(|a| Address {
                    name: None,
                    address: Some((*a).to_owned()),
                })
                .collect(),
            ..MessageRecord::default()
        }
    }

    #[test]
    fn entries_match_addresses_domains_and_subdomains() {
        let list = |entries: &[&str]| entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>();
        // (allow-list, From, allowed)
        let table: &[(&[&str], &[&str], bool)] = &[
            (&[], &["anyone@anywhere.example"], true),
            (&["Alice@Corp.Example"], &["alice@corp.example"], true),
            (&["alice@corp.example"], &["bob@corp.example"], false),
            (&["@corp.example"], &["bob@CORP.example"], true),
            (&["corp.example"], &["bob@mail.corp.example"], false),
            (&["*.corp.example"], &["bob@mail.corp.example"], true),
            (&["*.corp.example"], &["bob@corp.example"], true),
            (&["*.corp.example"], &["bob@evilcorp.example"], false),
            (
                &["corp.example"],
                &["x@evil.example", "y@corp.example"],
                true,
            ),
            (&["corp.example"], &[], false),
        ];
        for (entries, senders, allowed) in table {
            assert_eq!(
                sender_allowed(&list(entries), &from(senders)),
                *allowed,
                "{entries:?} {senders:?}"
            );
        }
        let by_sender = MessageRecord {
            sender: from(&["ops@corp.example"]).from,
            ..MessageRecord::default()
        };
        assert!(sender_allowed(&list(&["corp.example"]), &by_sender));
    }
}
