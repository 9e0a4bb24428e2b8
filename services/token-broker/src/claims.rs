//! What an access token says about itself, read without verifying it, and the setup faults
//! it reveals before any IMAP login is tried.
//!
//! Microsoft calls access tokens opaque to clients, so this is advisory (DESIGN §1): a token
//! that is not a JWT with a JSON payload is passed on unchecked. A decoded token whose
//! `roles` lack `IMAP.AccessAsApp`, or whose `aud` is not Exchange Online, means admin
//! consent for the permission is missing (Entra still issues the token, without roles
//! [MS-DOC-PR81503]); a token `oid` that differs from the Object ID the user entered means
//! `New-ServicePrincipal` was given the wrong object id (usually the app registration's).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use threatmail_source::Cloud;

/// The application permission IMAP app-only access needs.
pub const IMAP_ROLE: &str = "IMAP.AccessAsApp";

/// The claims the broker looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenClaims {
    /// `aud` (the first one when it is a list).
    pub audience: Option<String>,
    /// `tid`.
    pub tenant_id: Option<String>,
    /// `appid` (v1) or `azp` (v2).
    pub app_id: Option<String>,
    /// `oid`: the enterprise application's object id.
    pub object_id: Option<String>,
    /// `roles` (absent: empty).
    pub roles: Vec<String>,
    /// `exp`, Unix seconds.
    pub expires_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawClaims {
    aud: Option<OneOrMany>,
    tid: Option<String>,
    appid: Option<String>,
    azp: Option<String>,
    oid: Option<String>,
    roles: Option<OneOrMany>,
    exp: Option<i64>,
}

/// Decodes the payload of a compact JWT; `None` for an opaque token.
pub fn decode(token: &str) -> Option<TokenClaims> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let raw: RawClaims = serde_json::from_slice(&bytes).ok()?;
    let many = |value: Option<OneOrMany>| match value {
        Some(OneOrMany::One(one)) => vec![one],
        Some(OneOrMany::Many(many)) => many,
        None => Vec::new(),
    };
    Some(TokenClaims {
        audience: many(raw.aud).into_iter().next(),
        tenant_id: raw.tid,
        app_id: raw.appid.or(raw.azp),
        object_id: raw.oid,
        roles: many(raw.roles),
        expires_at: raw.exp,
    })
}

/// A setup fault a token shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimProblem {
    /// No `IMAP.AccessAsApp` role, or an audience other than Exchange Online.
    ConsentMissing {
        /// The roles the token has.
        roles: Vec<String>,
        /// Its audience.
        audience: Option<String>,
    },
    /// The token's `oid` is not the Object ID the user entered.
    ObjectIdMismatch {
        /// The token's `oid`.
        token_object_id: String,
        /// What the user entered.
        entered: String,
    },
}

/// The faults `claims` show for a source in `cloud` with the Object ID `entered` (if any).
pub fn check(claims: &TokenClaims, cloud: Cloud, entered: Option<&str>) -> Vec<ClaimProblem> {
    let mut problems = Vec::new();
    let has_role = claims.roles.iter().any(|role| role == IMAP_ROLE);
    let exchange = claims
        .audience
        .as_deref()
        .is_some_and(|aud| cloud.is_exchange_audience(aud));
    if !has_role || !exchange {
        problems.push(ClaimProblem::ConsentMissing {
            roles: claims.roles.clone(),
            audience: claims.audience.clone(),
        });
    }
    if let (Some(entered), Some(oid)) = (entered.map(str::trim), claims.object_id.as_deref())
        && !entered.is_empty()
        && !entered.eq_ignore_ascii_case(oid)
    {
        problems.push(ClaimProblem::ObjectIdMismatch {
            token_object_id: oid.to_owned(),
            entered: entered.to_owned(),
        });
    }
    problems
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn decodes_entra_v1_and_v2_shapes() {
        let v1 = decode(&jwt(json!({
            "aud": "https://outlook.office365.com", "tid": "t", "appid": "a", "oid": "o",
            "roles": ["IMAP.AccessAsApp"], "exp": 100
        })))
        .unwrap();
        assert_eq!(
            v1.audience.as_deref(),
            Some("https://outlook.office365.com")
        );
        assert_eq!(v1.app_id.as_deref(), Some("a"));
        assert_eq!(v1.roles, vec![IMAP_ROLE]);
        assert_eq!(v1.expires_at, Some(100));
        let v2 = decode(&jwt(json!({"aud": ["x", "y"], "azp": "b", "roles": "R"}))).unwrap();
        assert_eq!(v2.audience.as_deref(), Some("x"));
        assert_eq!(v2.app_id.as_deref(), Some("b"));
        assert_eq!(v2.roles, vec!["R"]);
    }

    #[test]
    fn opaque_tokens_are_not_decoded() {
        for token in ["", "opaque", "a.b", "a.b.c.d", "a.!!!.c", "a.bm90IGpzb24.c"] {
            assert_eq!(decode(token), None, "{token:?}");
        }
    }

    #[test]
    fn consent_and_object_id_checks() {
        let good = TokenClaims {
            audience: Some("https://outlook.office365.com".into()),
            object_id: Some("SP-OID".into()),
            roles: vec!["Mail.Read".into(), IMAP_ROLE.into()],
            ..TokenClaims::default()
        };
        assert!(check(&good, Cloud::Global, None).is_empty());
        assert!(check(&good, Cloud::Global, Some("sp-oid")).is_empty());
        assert!(check(&good, Cloud::Global, Some("  ")).is_empty());
        let cases = [
            TokenClaims {
                roles: Vec::new(),
                ..good.clone()
            },
            TokenClaims {
                roles: vec!["IMAP.AccessAsAppX".into()],
                ..good.clone()
            },
            TokenClaims {
                audience: Some("https://graph.microsoft.com".into()),
                ..good.clone()
            },
            TokenClaims {
                audience: None,
                ..good.clone()
            },
        ];
        for claims in cases {
            assert!(
                matches!(
                    check(&claims, Cloud::Global, None).as_slice(),
                    [ClaimProblem::ConsentMissing { .. }]
                ),
                "{claims:?}"
            );
        }
        assert_eq!(
            check(&good, Cloud::UsGovernment, None).len(),
            1,
            "a Global audience is not US Government's Exchange"
        );
        assert_eq!(
            check(&good, Cloud::Global, Some("app-registration-oid")),
            vec![ClaimProblem::ObjectIdMismatch {
                token_object_id: "SP-OID".into(),
                entered: "app-registration-oid".into()
            }]
        );
    }
}
