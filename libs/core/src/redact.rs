//! Text about configuration values that may hold secrets, made safe to print.

/// `url` with the password of its user part (`redis://user:password@host`) replaced by
/// `***`. The user part is everything before the last `@`, so a password holding `/` or
/// `@` is hidden whole; without `scheme://` (a typo such as `redis//user:pw@host`) the
/// user part cannot be told from the rest and is hidden whole.
pub fn url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((user, host)) => match user.split_once(':') {
                Some((name, _)) => format!("{scheme}://{name}:***@{host}"),
                None => url.to_owned(),
            },
            None => url.to_owned(),
        },
        None => match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_owned(),
        },
    }
}

/// A deserialiser's message with every quoted string value it echoes (`invalid type:
/// string "…"`) left out, as the value may be a key or a password.
pub fn values_in_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("string \"") {
        out.push_str(&rest[..at]);
        out.push_str("a string (not shown)");
        let quoted = &rest[at + "string \"".len()..];
        // The value is written with Rust's escapes: skip to the unescaped closing quote.
        let mut end = quoted.len();
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = i + 1;
                    break;
                }
                _ => escaped = false,
            }
        }
        rest = &quoted[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_in_urls_are_hidden() {
        for (given, shown) in [
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            (
                "redis://:s3cret@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            ("redis://user:hunter2@[bad", "redis://user:***@[bad"),
            ("rediss://user@host/", "rediss://user@host/"),
            ("user:pw@host", "***@host"),
            ("redis://a:b@c@host:1/", "redis://a:***@host:1/"),
            ("redis://u:pa/ss@host:1/0", "redis://u:***@host:1/0"),
            ("redis//default:p4ss@127.0.0.1:6379/", "***@127.0.0.1:6379/"),
            ("redis:/:p4ss@host/", "***@host/"),
        ] {
            assert_eq!(super::url(given), shown, "{given}");
        }
    }

    #[test]
    fn quoted_values_are_left_out_of_messages() {
        let message = r#"invalid type: string "k1:QxY7\"Dw8=", expected struct MasterKeySettings"#;
        let clean = super::values_in_message(message);
        assert_eq!(
            clean,
            "invalid type: a string (not shown), expected struct MasterKeySettings"
        );
        assert_eq!(
            super::values_in_message("missing field `kind`"),
            "missing field `kind`"
        );
        assert!(!super::values_in_message(r#"string "a" and string "b""#).contains('"'));
    }
}
