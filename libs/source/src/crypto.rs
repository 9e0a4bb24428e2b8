//! Secrets at rest: AEAD envelopes under rotatable master keys, and credential
//! fingerprints.
//!
//! A [`Keyring`] holds master keys by key id; the first one is the primary, the others are
//! kept to open what they sealed until everything has been re-sealed (key rotation). Each
//! master key is never used directly: per purpose ([`Purpose`]) a sub-key is derived with
//! HMAC-SHA256, so a token-cache ciphertext can never be opened as a source secret. Sealing
//! uses XChaCha20-Poly1305 with a random 192-bit nonce (random nonces are safe at any
//! volume this system sees) and binds the ciphertext to where it is stored through the
//! associated data (e.g. the source id and secret slot), so a sealed value copied to another
//! record does not open.
//!
//! The envelope is one ASCII string, `tmenc1.<key id>.<nonce>.<ciphertext>` (base64url, no
//! padding), so it fits in a JSON field or a Redis value as is.
//!
//! A [`Fingerprint`] is HMAC-SHA256 of a secret under a key derived from the primary master
//! key: equal secrets give equal fingerprints (two sources with the same app and secret
//! share one cached token), a changed secret a different one, and it cannot be checked
//! against guesses without the master key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead as _, AeadCore as _, OsRng, Payload};
use chacha20poly1305::{KeyInit as _, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac as _};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::Sha256;

/// The envelope's format marker.
const ENVELOPE_PREFIX: &str = "tmenc1";
/// Master keys are 256 bits.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// Errors of this module. None of them carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A key line is not `<key id>:<base64 of 32 bytes>`.
    #[error("failed to read master key {position}: {problem}")]
    BadKey {
        /// Which key (e.g. "line 2 of /run/secrets/master-key", "the `key` setting").
        position: String,
        /// What is wrong, without the key itself.
        problem: String,
    },
    /// Two keys share an id.
    #[error("failed to build the keyring: key id {key_id:?} appears twice")]
    DuplicateKeyId {
        /// The repeated id.
        key_id: String,
    },
    /// No key at all.
    #[error("failed to build the keyring: no master key configured")]
    NoKey,
    /// A key file could not be read.
    #[error("failed to read the master key file {path}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The envelope is not `tmenc1.<id>.<nonce>.<ciphertext>`.
    #[error("failed to open a sealed value: not a threatmail envelope")]
    Malformed,
    /// Sealed under a key id this keyring does not have.
    #[error("failed to open a sealed value: master key {key_id:?} is not configured")]
    UnknownKey {
        /// The envelope's key id.
        key_id: String,
    },
    /// Wrong key, wrong associated data, or tampered ciphertext.
    #[error(
        "failed to open a sealed value sealed under master key {key_id:?}: authentication failed"
    )]
    Open {
        /// The envelope's key id.
        key_id: String,
    },
    /// Sealing failed (only for absurdly long plaintexts).
    #[error("failed to seal a value")]
    Seal,
}

/// Result alias of this module.
pub type Result<T, E = CryptoError> = std::result::Result<T, E>;

/// What a sealed value is for; each purpose has its own derived key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Purpose {
    /// A source's client secret or password.
    SourceSecret,
    /// A cached access token in Redis.
    TokenCache,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::SourceSecret => b"threatmail/v1/aead/source-secret",
            Purpose::TokenCache => b"threatmail/v1/aead/token-cache",
        }
    }
}

const FINGERPRINT_LABEL: &[u8] = b"threatmail/v1/fingerprint";

/// One master key with its id. `Debug` shows the id only.
pub struct MasterKey {
    id: String,
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A key from its id and 32 bytes. Ids are 1–32 characters of `A-Z a-z 0-9 _ -`.
    pub fn new(id: &str, bytes: [u8; KEY_LEN]) -> Result<Self> {
        check_key_id(id, "the key")?;
        Ok(MasterKey {
            id: id.to_owned(),
            bytes: Zeroizing::new(bytes),
        })
    }

    /// Reads `<key id>:<base64 of 32 bytes>`; `position` names where it came from in errors.
    pub fn parse(line: &str, position: &str) -> Result<Self> {
        let bad = |problem: &str| CryptoError::BadKey {
            position: position.to_owned(),
            problem: problem.to_owned(),
        };
        let (id, encoded) = line
            .trim()
            .split_once(':')
            .ok_or_else(|| bad("expected `<key id>:<base64 of 32 bytes>`"))?;
        check_key_id(id, position)?;
        let decoded = Zeroizing::new(
            STANDARD
                .decode(encoded.trim())
                .or_else(|_| URL_SAFE_NO_PAD.decode(encoded.trim()))
                .map_err(|_| bad("the part after `:` is not base64"))?,
        );
        let bytes: [u8; KEY_LEN] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| bad("the key must be exactly 32 bytes (44 base64 characters)"))?;
        MasterKey::new(id, bytes)
    }

    /// A fresh random key with id `id`.
    pub fn generate(id: &str) -> Result<Self> {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut bytes = [0u8; KEY_LEN];
        bytes.copy_from_slice(&key);
        MasterKey::new(id, bytes)
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key as a `<key id>:<base64>` line, for writing a key file.
    pub fn to_line(&self) -> SecretString {
        SecretString::from(format!("{}:{}", self.id, STANDARD.encode(*self.bytes)))
    }

    fn derive(&self, label: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        out.copy_from_slice(&hmac_sha256(self.bytes.as_slice(), label));
        out
    }
}

fn check_key_id(id: &str, position: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(CryptoError::BadKey {
            position: position.to_owned(),
            problem: "the key id must be 1-32 characters of A-Z a-z 0-9 _ -".to_owned(),
        })
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(message);
    mac.finalize().into_bytes().into()
}

struct DerivedKeys {
    source_secret: XChaCha20Poly1305,
    token_cache: XChaCha20Poly1305,
}

impl DerivedKeys {
    fn new(key: &MasterKey) -> Self {
        let cipher = |purpose: Purpose| {
            let derived = key.derive(purpose.label());
            XChaCha20Poly1305::new(derived.as_slice().into())
        };
        DerivedKeys {
            source_secret: cipher(Purpose::SourceSecret),
            token_cache: cipher(Purpose::TokenCache),
        }
    }

    fn cipher(&self, purpose: Purpose) -> &XChaCha20Poly1305 {
        match purpose {
            Purpose::SourceSecret => &self.source_secret,
            Purpose::TokenCache => &self.token_cache,
        }
    }
}

/// Master keys by id: the primary seals, every key opens what it sealed.
pub struct Keyring {
    primary: String,
    keys: BTreeMap<String, DerivedKeys>,
    fingerprint_key: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// A keyring sealing with `primary` and also opening with `previous`.
    pub fn new(primary: MasterKey, previous: Vec<MasterKey>) -> Result<Self> {
        let mut keys = BTreeMap::new();
        let fingerprint_key = primary.derive(FINGERPRINT_LABEL);
        let primary_id = primary.id.clone();
        for key in std::iter::once(primary).chain(previous) {
            if keys.contains_key(&key.id) {
                return Err(CryptoError::DuplicateKeyId { key_id: key.id });
            }
            keys.insert(key.id.clone(), DerivedKeys::new(&key));
        }
        Ok(Keyring {
            primary: primary_id,
            keys,
            fingerprint_key,
        })
    }

    /// Reads `<key id>:<base64>` lines (blank lines and `#` comments skipped); the first key
    /// is the primary. `origin` names the text in errors (e.g. a file name).
    pub fn from_lines(text: &str, origin: &str) -> Result<Self> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            keys.push(MasterKey::parse(
                line,
                &format!("on line {} of {origin}", n + 1),
            )?);
        }
        let mut keys = keys.into_iter();
        let primary = keys.next().ok_or(CryptoError::NoKey)?;
        Keyring::new(primary, keys.collect())
    }

    /// Reads a key file in the format of [`Keyring::from_lines`].
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            CryptoError::KeyFile {
                path: path.display().to_string(),
                source,
            }
        })?);
        Keyring::from_lines(&text, &path.display().to_string())
    }

    /// The id of the key new values are sealed with.
    pub fn primary_key_id(&self) -> &str {
        &self.primary
    }

    /// Whether `sealed` was sealed with another key than the primary (re-seal it).
    pub fn needs_reseal(&self, sealed: &Sealed) -> bool {
        sealed.key_id() != Some(self.primary.as_str())
    }

    /// Seals `plaintext` for `purpose`, bound to `aad` (where it is stored).
    pub fn seal(&self, purpose: Purpose, aad: &[u8], plaintext: &[u8]) -> Result<Sealed> {
        let keys = self
            .keys
            .get(&self.primary)
            .ok_or_else(|| CryptoError::UnknownKey {
                key_id: self.primary.clone(),
            })?;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = keys
            .cipher(purpose)
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        Ok(Sealed(format!(
            "{ENVELOPE_PREFIX}.{}.{}.{}",
            self.primary,
            URL_SAFE_NO_PAD.encode(nonce),
            URL_SAFE_NO_PAD.encode(ciphertext)
        )))
    }

    /// Seals a secret string.
    pub fn seal_secret(
        &self,
        purpose: Purpose,
        aad: &[u8],
        secret: &SecretString,
    ) -> Result<Sealed> {
        self.seal(purpose, aad, secret.expose_secret().as_bytes())
    }

    /// Opens `sealed` for `purpose` with the associated data it was sealed with.
    pub fn open(
        &self,
        purpose: Purpose,
        aad: &[u8],
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let mut parts = sealed.0.split('.');
        let (Some(ENVELOPE_PREFIX), Some(key_id), Some(nonce), Some(ciphertext), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(CryptoError::Malformed);
        };
        let keys = self
            .keys
            .get(key_id)
            .ok_or_else(|| CryptoError::UnknownKey {
                key_id: key_id.to_owned(),
            })?;
        let nonce = URL_SAFE_NO_PAD
            .decode(nonce)
            .map_err(|_| CryptoError::Malformed)?;
        if nonce.len() != NONCE_LEN {
            return Err(CryptoError::Malformed);
        }
        let ciphertext = URL_SAFE_NO_PAD
            .decode(ciphertext)
            .map_err(|_| CryptoError::Malformed)?;
        keys.cipher(purpose)
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Open {
                key_id: key_id.to_owned(),
            })
    }

    /// Opens a sealed secret string.
    pub fn open_secret(
        &self,
        purpose: Purpose,
        aad: &[u8],
        sealed: &Sealed,
    ) -> Result<SecretString> {
        let bytes = self.open(purpose, aad, sealed)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| CryptoError::Open {
            key_id: sealed.key_id().unwrap_or_default().to_owned(),
        })?;
        Ok(SecretString::from(text))
    }

    /// The keyed fingerprint of a secret.
    pub fn fingerprint(&self, secret: &SecretString) -> Fingerprint {
        Fingerprint(hmac_sha256(
            self.fingerprint_key.as_slice(),
            secret.expose_secret().as_bytes(),
        ))
    }
}

/// A sealed value: `tmenc1.<key id>.<nonce>.<ciphertext>`. `Debug` shows the key id only.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Sealed(String);

impl Sealed {
    /// Wraps an envelope read from storage (checked when opened).
    pub fn from_envelope(envelope: impl Into<String>) -> Self {
        Sealed(envelope.into())
    }

    /// The envelope, for storing.
    pub fn as_envelope(&self) -> &str {
        &self.0
    }

    /// The id of the master key it was sealed with, if the envelope is well-formed.
    pub fn key_id(&self) -> Option<&str> {
        let mut parts = self.0.split('.');
        match (parts.next(), parts.next()) {
            (Some(ENVELOPE_PREFIX), Some(id)) => Some(id),
            _ => None,
        }
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed(key_id={:?})", self.key_id().unwrap_or("?"))
    }
}

/// A keyed hash of a secret (HMAC-SHA256), shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A prefix is enough to tell two apart in logs.
        write!(f, "Fingerprint({}…)", &self.to_hex()[..12])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ring(ids: &[&str]) -> Keyring {
        let mut keys = ids.iter().map(|id| MasterKey::generate(id).unwrap());
        let primary = keys.next().unwrap();
        Keyring::new(primary, keys.collect()).unwrap()
    }

    #[test]
    fn seal_open_round_trip_and_bound_to_purpose_and_aad() {
        let keyring = ring(&["k1"]);
        let sealed = keyring
            .seal(Purpose::SourceSecret, b"src-1:current", b"s3cret value")
            .unwrap();
        assert!(sealed.as_envelope().starts_with("tmenc1.k1."));
        assert!(!sealed.as_envelope().contains("s3cret"));
        let opened = keyring
            .open(Purpose::SourceSecret, b"src-1:current", &sealed)
            .unwrap();
        assert_eq!(opened.as_slice(), b"s3cret value");
        assert!(matches!(
            keyring.open(Purpose::SourceSecret, b"src-2:current", &sealed),
            Err(CryptoError::Open { .. })
        ));
        assert!(matches!(
            keyring.open(Purpose::TokenCache, b"src-1:current", &sealed),
            Err(CryptoError::Open { .. })
        ));
        // Same plaintext, fresh nonce: different envelopes.
        let again = keyring
            .seal(Purpose::SourceSecret, b"src-1:current", b"s3cret value")
            .unwrap();
        assert_ne!(sealed, again);
    }

    #[test]
    fn rotation_keeps_old_values_readable_and_reseals_with_the_new_primary() {
        let old = MasterKey::generate("old").unwrap();
        let old_line = old.to_line();
        let before = Keyring::new(old, Vec::new()).unwrap();
        let sealed = before.seal(Purpose::SourceSecret, b"a", b"v").unwrap();

        let text = format!(
            "# rotated\n{}\n\n{}\n",
            MasterKey::generate("new")
                .unwrap()
                .to_line()
                .expose_secret(),
            old_line.expose_secret()
        );
        let after = Keyring::from_lines(&text, "test").unwrap();
        assert_eq!(after.primary_key_id(), "new");
        assert!(after.needs_reseal(&sealed));
        assert_eq!(
            after
                .open(Purpose::SourceSecret, b"a", &sealed)
                .unwrap()
                .as_slice(),
            b"v"
        );
        let resealed = after.seal(Purpose::SourceSecret, b"a", b"v").unwrap();
        assert!(!after.needs_reseal(&resealed));

        let without_old = ring(&["new2"]);
        assert!(matches!(
            without_old.open(Purpose::SourceSecret, b"a", &sealed),
            Err(CryptoError::UnknownKey { key_id }) if key_id == "old"
        ));
    }

    #[test]
    fn tampering_and_garbage_are_refused() {
        let keyring = ring(&["k"]);
        let sealed = keyring.seal(Purpose::TokenCache, b"x", b"token").unwrap();
        let mut envelope = sealed.as_envelope().to_owned();
        let last = envelope.pop().unwrap();
        envelope.push(if last == 'A' { 'B' } else { 'A' });
        assert!(
            keyring
                .open(Purpose::TokenCache, b"x", &Sealed::from_envelope(envelope))
                .is_err()
        );
        for garbage in [
            "",
            "tmenc1",
            "tmenc1.k.!!.??",
            "other.k.AA.AA",
            "tmenc1.k.AA.AA.AA",
        ] {
            assert!(
                keyring
                    .open(Purpose::TokenCache, b"x", &Sealed::from_envelope(garbage))
                    .is_err(),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn key_lines_are_checked_without_echoing_the_key() {
        let cases = ["no-colon", "bad id!:AAAA", "k:not base64 at all", "k:AAAA"];
        for line in cases {
            let error = MasterKey::parse(line, "the `key` setting").unwrap_err();
            let text = error.to_string();
            assert!(text.contains("the `key` setting"), "{text}");
            assert!(
                !text.contains("AAAA") && !text.contains("base64 at all"),
                "{text}"
            );
        }
        assert!(matches!(
            Keyring::from_lines("# nothing\n", "f"),
            Err(CryptoError::NoKey)
        ));
        let line = MasterKey::generate("dup").unwrap().to_line();
        let twice = format!("{}\n{}\n", line.expose_secret(), line.expose_secret());
        assert!(matches!(
            Keyring::from_lines(&twice, "f"),
            Err(CryptoError::DuplicateKeyId { .. })
        ));
    }

    #[test]
    fn fingerprints_are_keyed_and_debug_redacts() {
        let a = ring(&["a"]);
        let b = ring(&["b"]);
        let secret = SecretString::from("abc8Q~secret");
        assert_eq!(a.fingerprint(&secret), a.fingerprint(&secret));
        assert_ne!(
            a.fingerprint(&secret),
            a.fingerprint(&SecretString::from("other"))
        );
        assert_ne!(a.fingerprint(&secret), b.fingerprint(&secret));
        let key = MasterKey::generate("dbg").unwrap();
        let line = key.to_line();
        let printed = format!(
            "{key:?} {a:?} {:?}",
            a.seal(Purpose::SourceSecret, b"", b"p").unwrap()
        );
        let encoded = line.expose_secret().split_once(':').unwrap().1.to_owned();
        assert!(!printed.contains(&encoded), "{printed}");
        assert!(printed.contains("dbg"));
    }
}
