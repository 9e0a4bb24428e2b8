//! Reads what the proxy needs out of a client's SASL response: the mailbox it logs in to
//! and, for a bearer token, the token's `exp`. The token itself is never kept.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::jwt::decode_unverified;

/// The mailbox and token expiry of one SASL response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SaslLogin {
    /// `user=` of XOAUTH2, `a=` of OAUTHBEARER, the authorization (or else authentication)
    /// identity of PLAIN.
    pub(crate) mailbox: Option<String>,
    /// The bearer token's `exp` (seconds since the epoch), when it is a JWT that has one.
    pub(crate) token_exp: Option<u64>,
}

/// Decodes the base64 SASL response `response` of `mechanism` (upper case).
pub(crate) fn read_response(mechanism: &str, response: &[u8]) -> Option<SaslLogin> {
    let response = super::framing::strip_eol(response);
    let raw = STANDARD.decode(response.trim_ascii()).ok()?;
    match mechanism {
        "XOAUTH2" => Some(bearer(&raw, |field| {
            field.strip_prefix(b"user=").map(<[u8]>::to_vec)
        })),
        "OAUTHBEARER" => Some(bearer(&raw, |field| {
            // The GS2 header `n,a=<user>,` opens the first field (RFC 7628 §3.1).
            let authzid = field
                .split(|&b| b == b',')
                .find_map(|p| p.strip_prefix(b"a="))?;
            Some(authzid.to_vec())
        })),
        "PLAIN" => {
            // authzid NUL authcid NUL password (RFC 4616); the password is not looked at.
            let mut parts = raw.split(|&b| b == 0);
            let authzid = parts.next()?;
            let authcid = parts.next()?;
            let user = if authzid.is_empty() { authcid } else { authzid };
            Some(SaslLogin {
                mailbox: String::from_utf8(user.to_vec()).ok(),
                token_exp: None,
            })
        }
        _ => None,
    }
}

/// XOAUTH2 and OAUTHBEARER: `^A`-separated fields, one of them `auth=Bearer <token>`.
fn bearer(raw: &[u8], user_of: impl Fn(&[u8]) -> Option<Vec<u8>>) -> SaslLogin {
    let mut login = SaslLogin::default();
    for field in raw.split(|&b| b == 0x01) {
        if let Some(token) = field.strip_prefix(b"auth=Bearer ") {
            login.token_exp = std::str::from_utf8(token)
                .ok()
                .and_then(|token| decode_unverified(token).ok())
                .and_then(|(_, claims)| claims.get("exp")?.as_u64());
        } else if login.mailbox.is_none()
            && let Some(user) = user_of(field)
        {
            login.mailbox = String::from_utf8(user).ok();
        }
    }
    login
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn sasl_responses() {
        let token = jwt(r#"{"exp":1700000000,"aud":"https://outlook.office365.com"}"#);
        let xoauth2 = STANDARD.encode(format!(
            "user=soc@corp.example\x01auth=Bearer {token}\x01\x01"
        ));
        let oauthbearer = STANDARD.encode(format!(
            "n,a=soc@corp.example,\x01host=x\x01auth=Bearer {token}\x01\x01"
        ));
        let cases: Vec<(&str, String, Option<SaslLogin>)> = vec![
            (
                "XOAUTH2",
                format!("{xoauth2}\r\n"),
                Some(SaslLogin {
                    mailbox: Some("soc@corp.example".to_owned()),
                    token_exp: Some(1_700_000_000),
                }),
            ),
            (
                "OAUTHBEARER",
                oauthbearer,
                Some(SaslLogin {
                    mailbox: Some("soc@corp.example".to_owned()),
                    token_exp: Some(1_700_000_000),
                }),
            ),
            (
                // Not a JWT: the mailbox is still known, the expiry is not.
                "XOAUTH2",
                STANDARD.encode("user=a@b\x01auth=Bearer opaque\x01\x01"),
                Some(SaslLogin {
                    mailbox: Some("a@b".to_owned()),
                    token_exp: None,
                }),
            ),
            (
                "PLAIN",
                STANDARD.encode("\0bob@corp.test\0secret"),
                Some(SaslLogin {
                    mailbox: Some("bob@corp.test".to_owned()),
                    token_exp: None,
                }),
            ),
            ("XOAUTH2", "not base64!".to_owned(), None),
            ("CRAM-MD5", STANDARD.encode("x"), None),
        ];
        for (mechanism, response, expected) in cases {
            assert_eq!(
                read_response(mechanism, response.as_bytes()),
                expected,
                "{mechanism} {response}"
            );
        }
    }
}
