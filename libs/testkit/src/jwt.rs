//! RS256 JSON Web Tokens shaped like Entra ID's v1 app-only access tokens for Exchange Online.
//!
//! [`SigningKey`] holds an RSA 2048 key made with the `openssl` CLI and signs compact JWTs
//! with ring; [`AccessTokenClaims`] builds the claim set Entra puts in a client-credentials
//! token (`aud`, `iss`, `appid`, `oid`, `roles`, …). The test Dovecot checks these tokens
//! locally: it needs `typ` in the header, finds the public key by `kid`, and has no clock-skew
//! leeway, which is why `iat`/`nbf` lie five minutes in the past exactly as Entra's do.
//! [`verify`] checks a token against a SPKI PEM, the same material Dovecot is given.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{self, RsaKeyPair};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
use serde_json::{Value, json};

use crate::tenant::SigningKeyFile;

/// The audience of tokens for `https://outlook.office365.com/.default` (IMAP, POP, SMTP).
pub const EXCHANGE_AUDIENCE: &str = "https://outlook.office365.com";
/// The application permission that lets an app open mailboxes over IMAP.
pub const IMAP_ROLE: &str = "IMAP.AccessAsApp";
/// The `wids` value Entra puts in app-only tokens (the well-known template id it uses for
/// service principals).
pub const APP_ONLY_WIDS: &str = "0997a1d0-0d1d-4acb-b408-d5ca73121e90";
/// How far before issue Entra dates `iat` and `nbf`.
pub const BACKDATE: Duration = Duration::from_secs(300);

/// Errors from reading or checking a token.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Not three dot-separated base64url parts.
    #[error("failed to split the token into header, claims and signature")]
    Malformed,
    /// A part is not base64url.
    #[error("failed to decode the token's {part} as base64url")]
    Base64 {
        /// `header`, `claims` or `signature`.
        part: &'static str,
        /// The decoding error.
        #[source]
        source: base64::DecodeError,
    },
    /// A part is not a JSON object.
    #[error("failed to parse the token's {part} as JSON")]
    Json {
        /// `header` or `claims`.
        part: &'static str,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The header does not say RS256.
    #[error("failed to verify the token: algorithm {alg:?} is not RS256")]
    Algorithm {
        /// The header's `alg`.
        alg: Option<String>,
    },
    /// The public key PEM could not be read.
    #[error("failed to read the RSA public key")]
    PublicKey,
    /// The signature does not match.
    #[error("failed to verify the token's signature")]
    Signature,
}

/// Result alias of this module.
pub type Result<T, E = JwtError> = std::result::Result<T, E>;

/// An RSA 2048 signing key with its key id.
pub struct SigningKey {
    kid: String,
    key_pair: RsaKeyPair,
    public_key_pem: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key is never printed.
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Makes a new RSA 2048 key with the `openssl` CLI (PKCS#8), kept in memory only.
    ///
    /// Blocking (key generation takes tens to hundreds of milliseconds); call it from
    /// `spawn_blocking` in async code.
    pub fn generate(kid: &str) -> anyhow::Result<SigningKey> {
        if kid.is_empty() || kid.contains(['/', '%']) {
            // Dovecot %-escapes these in key file names; keep kids plain.
            bail!("a kid must be non-empty and contain no '/' or '%': {kid:?}");
        }
        let private_pem = run_openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
            None,
        )?;
        let public_key_pem =
            String::from_utf8(run_openssl(&["pkey", "-pubout"], Some(&private_pem))?)
                .context("openssl printed a public key that is not UTF-8")?;
        let key_der = PrivateKeyDer::from_pem_slice(&private_pem)
            .context("failed to read the PKCS#8 key printed by openssl")?;
        let PrivateKeyDer::Pkcs8(pkcs8) = key_der else {
            bail!("openssl genpkey printed a key that is not PKCS#8");
        };
        let key_pair = RsaKeyPair::from_pkcs8(pkcs8.secret_pkcs8_der())
            .map_err(|e| anyhow::anyhow!("ring refused the RSA key: {e}"))?;
        Ok(SigningKey {
            kid: kid.to_owned(),
            key_pair,
            public_key_pem,
            rng: SystemRandom::new(),
        })
    }

    /// Makes a key with a random Entra-like kid (27 base64url characters).
    pub fn generate_random_kid() -> anyhow::Result<SigningKey> {
        Self::generate(&random_b64url(20))
    }

    /// The key id put in `kid` and `x5t`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as SPKI PEM (`openssl pkey -pubout`).
    pub fn public_key_pem(&self) -> &str {
        &self.public_key_pem
    }

    /// The kid and public key in the shape the test Dovecot takes.
    pub fn key_file(&self) -> SigningKeyFile {
        SigningKeyFile {
            kid: self.kid.clone(),
            public_key_pem: self.public_key_pem.clone(),
        }
    }

    /// Signs `claims` as a compact JWS with header
    /// `{"typ":"JWT","alg":"RS256","x5t":<kid>,"kid":<kid>}`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"typ": "JWT", "alg": "RS256", "x5t": self.kid, "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0u8; self.key_pair.public().modulus_len()];
        // Signing with a valid key into a buffer of the modulus length cannot fail except
        // when the system RNG fails, which ring treats as fatal too.
        #[allow(clippy::expect_used)]
        self.key_pair
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut sig,
            )
            .expect("RSA signing failed (system RNG unavailable)");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// Checks a token signed by this key and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Value> {
        verify(&self.public_key_pem, token)
    }
}

/// Runs `openssl` with `args`, feeding `stdin`, and returns its standard output.
fn run_openssl(args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "the openssl command was not found on PATH; install the Debian package \
                     `openssl` (apt-get install -y openssl)"
                )
            } else {
                anyhow::Error::new(e).context("failed to start openssl")
            }
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)
            .context("failed to write to openssl's standard input")?;
        // Dropping the pipe closes it so openssl sees end of input.
    }
    let output = child
        .wait_with_output()
        .context("failed to wait for openssl")?;
    if !output.status.success() {
        bail!(
            "openssl {} failed ({}): {}",
            args.first().copied().unwrap_or_default(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

/// `n` random bytes in base64url without padding.
pub(crate) fn random_b64url(n: usize) -> String {
    URL_SAFE_NO_PAD.encode(random_bytes(n))
}

/// `n` bytes from the system RNG.
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    // The OS RNG failing leaves nothing sensible to do in a test kit.
    #[allow(clippy::expect_used)]
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the system RNG failed");
    buf
}

/// Splits a compact JWT and decodes its header and claims without checking the signature.
pub fn decode_unverified(token: &str) -> Result<(Value, Value)> {
    let (header, claims, _, _) = split(token)?;
    Ok((header, claims))
}

/// Checks an RS256 token against a SPKI PEM public key and returns its claims.
///
/// Only the signature is checked, not `exp`/`nbf`/`iss`: tests look at those themselves.
pub fn verify(public_key_pem: &str, token: &str) -> Result<Value> {
    let (header, claims, signing_input, sig) = split(token)?;
    let alg = header.get("alg").and_then(Value::as_str);
    if alg != Some("RS256") {
        return Err(JwtError::Algorithm {
            alg: alg.map(str::to_owned),
        });
    }
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(public_key_pem.as_bytes())
        .map_err(|_| JwtError::PublicKey)?;
    let rsa_public_key = spki_rsa_public_key(spki.as_ref()).ok_or(JwtError::PublicKey)?;
    signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, rsa_public_key)
        .verify(signing_input.as_bytes(), &sig)
        .map_err(|_| JwtError::Signature)?;
    Ok(claims)
}

fn split(token: &str) -> Result<(Value, Value, &str, Vec<u8>)> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let decode = |part: &'static str, text: &str| {
        URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|source| JwtError::Base64 { part, source })
    };
    let parse = |part: &'static str, bytes: Vec<u8>| {
        serde_json::from_slice::<Value>(&bytes).map_err(|source| JwtError::Json { part, source })
    };
    let header = parse("header", decode("header", h)?)?;
    let claims = parse("claims", decode("claims", c)?)?;
    let sig = decode("signature", s)?;
    let signing_input = &token[..h.len() + 1 + c.len()];
    Ok((header, claims, signing_input, sig))
}

/// The PKCS#1 `RSAPublicKey` inside a DER `SubjectPublicKeyInfo`
/// (`SEQUENCE { AlgorithmIdentifier, BIT STRING { 0x00, RSAPublicKey } }`, RFC 5280 §4.1),
/// which is what ring's RSA verifier takes.
fn spki_rsa_public_key(der: &[u8]) -> Option<&[u8]> {
    let (tag, spki, _) = der_tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, _algorithm, rest) = der_tlv(spki)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, bits, _) = der_tlv(rest)?;
    match (tag, bits.split_first()) {
        (0x03, Some((0, key))) => Some(key),
        _ => None,
    }
}

/// One DER tag-length-value: (tag, value, the bytes after it).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The resource (and hence the token audience) of a `<resource>/.default` scope, e.g.
/// `https://outlook.office365.com` for `https://outlook.office365.com/.default`.
pub fn resource_of_scope(scope: &str) -> Option<&str> {
    scope
        .strip_suffix("/.default")
        .filter(|resource| !resource.is_empty())
}

/// The claims of an Entra v1 app-only access token (client-credentials grant).
///
/// Defaults follow a real Exchange Online token: `aud` Exchange, `ver` "1.0", `idtyp` "app",
/// `appidacr` "1" (client secret), `iat`/`nbf` five minutes before issue, lifetime 3599 s.
/// `roles` is present only when admin consent was granted; without it Entra still issues a
/// token, with no `roles` claim at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenClaims {
    /// `aud`: the resource of the requested scope.
    pub audience: String,
    /// `tid`, also inside `iss` and `idp`.
    pub tenant_id: String,
    /// `appid`: the application (client) id.
    pub app_id: String,
    /// `app_displayname`.
    pub app_display_name: String,
    /// `oid` and `sub`: the enterprise application's (service principal's) object id.
    pub object_id: String,
    /// `roles`; `None` leaves the claim out.
    pub roles: Option<Vec<String>>,
    /// When the token is issued; `iat`/`nbf` are [`BACKDATE`] earlier.
    pub issued_at: SystemTime,
    /// `exp` − issue time.
    pub lifetime: Duration,
    /// `sid`, absent from app-only tokens unless set.
    pub sid: Option<String>,
    /// `wids`.
    pub wids: Vec<String>,
    /// `aio`, `rh`, `uti`: opaque values Entra adds.
    pub aio: String,
    /// See `aio`.
    pub rh: String,
    /// See `aio`.
    pub uti: String,
}

impl AccessTokenClaims {
    /// Claims for an Exchange token issued now, with the default lifetime of 3599 s.
    pub fn new(tenant_id: &str, app_id: &str, object_id: &str) -> Self {
        AccessTokenClaims {
            audience: EXCHANGE_AUDIENCE.to_owned(),
            tenant_id: tenant_id.to_owned(),
            app_id: app_id.to_owned(),
            app_display_name: String::new(),
            object_id: object_id.to_owned(),
            roles: Some(vec![IMAP_ROLE.to_owned()]),
            issued_at: SystemTime::now(),
            lifetime: Duration::from_secs(3599),
            sid: None,
            wids: vec![APP_ONLY_WIDS.to_owned()],
            aio: STANDARD.encode(random_bytes(60)),
            rh: format!("0.{}.", random_b64url(48)),
            uti: random_b64url(16),
        }
    }

    /// Sets `aud`.
    pub fn audience(mut self, audience: &str) -> Self {
        self.audience = audience.to_owned();
        self
    }

    /// Sets `aud` from a `<resource>/.default` scope (unchanged if it is not one).
    pub fn scope(mut self, scope: &str) -> Self {
        if let Some(resource) = resource_of_scope(scope) {
            self.audience = resource.to_owned();
        }
        self
    }

    /// Sets `app_displayname`.
    pub fn app_display_name(mut self, name: &str) -> Self {
        self.app_display_name = name.to_owned();
        self
    }

    /// Sets `roles`; `None` leaves the claim out (no admin consent).
    pub fn roles(mut self, roles: Option<Vec<String>>) -> Self {
        self.roles = roles;
        self
    }

    /// Sets the issue time.
    pub fn issued_at(mut self, at: SystemTime) -> Self {
        self.issued_at = at;
        self
    }

    /// Sets the lifetime (`exp` − issue time).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Sets `sid`.
    pub fn sid(mut self, sid: Option<String>) -> Self {
        self.sid = sid;
        self
    }

    /// The issuer, `https://sts.windows.net/<tid>/`.
    pub fn issuer(&self) -> String {
        issuer_of(&self.tenant_id)
    }

    /// `exp` in seconds since the epoch.
    pub fn expires_at_unix(&self) -> u64 {
        unix(self.issued_at + self.lifetime)
    }

    /// The JSON claim set.
    pub fn to_json(&self) -> Value {
        let not_before = unix(self.issued_at.checked_sub(BACKDATE).unwrap_or(UNIX_EPOCH));
        let issuer = self.issuer();
        let mut claims = json!({
            "aud": self.audience,
            "iss": issuer,
            "iat": not_before,
            "nbf": not_before,
            "exp": self.expires_at_unix(),
            "aio": self.aio,
            "app_displayname": self.app_display_name,
            "appid": self.app_id,
            "appidacr": "1",
            "idp": issuer,
            "idtyp": "app",
            "oid": self.object_id,
            "rh": self.rh,
            "sub": self.object_id,
            "tid": self.tenant_id,
            "uti": self.uti,
            "ver": "1.0",
            "wids": self.wids,
        });
        if let Some(map) = claims.as_object_mut() {
            if let Some(roles) = &self.roles {
                map.insert("roles".to_owned(), json!(roles));
            }
            if let Some(sid) = &self.sid {
                map.insert("sid".to_owned(), json!(sid));
            }
        }
        claims
    }
}

/// The v1 token issuer of a tenant, `https://sts.windows.net/<tid>/`.
pub fn issuer_of(tenant_id: &str) -> String {
    format!("https://sts.windows.net/{tenant_id}/")
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::generate("kid-1").expect("openssl key generation")
    }

    #[test]
    fn signs_and_verifies_with_the_spki_pem() {
        let key = key();
        let claims = AccessTokenClaims::new("t", "a", "o").to_json();
        let token = key.sign(&claims);

        let (header, decoded) = decode_unverified(&token).unwrap();
        assert_eq!(
            header,
            json!({"typ": "JWT", "alg": "RS256", "x5t": "kid-1", "kid": "kid-1"})
        );
        assert_eq!(decoded, claims);
        assert_eq!(verify(key.public_key_pem(), &token).unwrap(), claims);
        assert!(
            key.public_key_pem()
                .starts_with("-----BEGIN PUBLIC KEY-----")
        );
    }

    #[test]
    fn ring_public_key_matches_the_pem_and_checks_the_signature() {
        use ring::signature::KeyPair as _;
        let key = key();
        let token = key.sign(&json!({"sub": "x"}));
        // The SPKI given to Dovecot wraps exactly the key ring signs with.
        let spki =
            SubjectPublicKeyInfoDer::from_pem_slice(key.public_key_pem().as_bytes()).unwrap();
        let pkcs1 = key.key_pair.public_key().as_ref();
        assert_eq!(spki_rsa_public_key(spki.as_ref()).unwrap(), pkcs1);

        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        let public =
            signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, pkcs1);
        public.verify(input.as_bytes(), &sig).unwrap();
        assert!(public.verify(b"tampered", &sig).is_err());
    }

    #[test]
    fn another_key_or_a_tampered_token_fails() {
        let key = key();
        let other = SigningKey::generate("kid-2").unwrap();
        let token = key.sign(&json!({"sub": "x"}));
        assert!(matches!(other.verify(&token), Err(JwtError::Signature)));

        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged = format!("{head}.{}.{sig}", URL_SAFE_NO_PAD.encode(r#"{"sub":"y"}"#));
        assert!(matches!(key.verify(&forged), Err(JwtError::Signature)));
        assert!(matches!(key.verify("a.b"), Err(JwtError::Malformed)));
    }

    #[test]
    fn claims_are_shaped_like_an_entra_v1_app_token() {
        let issued = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let claims = AccessTokenClaims::new("tid-1", "app-1", "sp-1")
            .app_display_name("threatmail")
            .issued_at(issued)
            .to_json();
        assert_eq!(claims["aud"], "https://outlook.office365.com");
        assert_eq!(claims["iss"], "https://sts.windows.net/tid-1/");
        assert_eq!(claims["idp"], "https://sts.windows.net/tid-1/");
        assert_eq!(claims["iat"], 1_700_000_000 - 300);
        assert_eq!(claims["nbf"], 1_700_000_000 - 300);
        assert_eq!(claims["exp"], 1_700_000_000 + 3599);
        assert_eq!(claims["appid"], "app-1");
        assert_eq!(claims["appidacr"], "1");
        assert_eq!(claims["idtyp"], "app");
        assert_eq!(claims["oid"], "sp-1");
        assert_eq!(claims["sub"], "sp-1");
        assert_eq!(claims["tid"], "tid-1");
        assert_eq!(claims["ver"], "1.0");
        assert_eq!(claims["roles"], json!(["IMAP.AccessAsApp"]));
        assert_eq!(claims["wids"], json!([APP_ONLY_WIDS]));
        assert_eq!(claims["app_displayname"], "threatmail");
        for opaque in ["aio", "rh", "uti"] {
            assert!(!claims[opaque].as_str().unwrap().is_empty(), "{opaque}");
        }
        assert!(claims.get("sid").is_none());
    }

    #[test]
    fn no_consent_means_no_roles_claim_and_scope_sets_the_audience() {
        let claims = AccessTokenClaims::new("t", "a", "o")
            .roles(None)
            .scope("https://graph.microsoft.com/.default")
            .to_json();
        assert!(claims.get("roles").is_none());
        assert_eq!(claims["aud"], "https://graph.microsoft.com");
        assert_eq!(
            resource_of_scope("https://ps.outlook.com/.default"),
            Some("https://ps.outlook.com")
        );
        assert_eq!(resource_of_scope("/.default"), None);
        assert_eq!(
            resource_of_scope("https://outlook.office365.com/IMAP.AccessAsApp"),
            None
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let key = key();
        let shown = format!("{key:?}");
        assert!(shown.contains("kid-1"));
        assert!(!shown.contains("PRIVATE") && !shown.contains("key_pair"));
    }

    #[test]
    fn kids_with_path_characters_are_refused() {
        assert!(SigningKey::generate("a/b").is_err());
        assert!(SigningKey::generate("").is_err());
    }
}
