//! Raw messages, content-addressed by SHA-256 (DESIGN §6): a directory by default, or an
//! S3-compatible object store through `object_store` when several machines share it.
//!
//! A blob's name is its hash, so writing one is idempotent and two writers of the same
//! mail never conflict. The store writes a message's blob before its record, so a record
//! never names a missing blob; a crash in between leaves only an unreferenced blob.
//!
//! Directory layout: `<root>/sha256/<h0h1>/<hash>`, each file written to a `.tmp-…` file
//! beside it, synced, renamed into place and its folder synced, so a blob is either whole or
//! absent after a crash; a folder made for it is synced into its parent too. One level of 256
//! folders: a second level (65,536 folders) made a new folder, an inode allocation and its
//! sync for almost every message of a first sync, a third of the blob store's cost, and
//! ext4 indexes large folders anyway. Reads check the hash.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStoreExt as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

use crate::identity::sha256_hex;

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A file operation failed.
    #[error("failed to {action} blob {sha256} in {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The blob.
        sha256: String,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The object store failed.
    #[error("failed to {action} blob {sha256} in the object store")]
    ObjectStore {
        /// What was being done.
        action: &'static str,
        /// The blob.
        sha256: String,
        /// Why.
        #[source]
        source: object_store::Error,
    },
    /// Stored bytes do not hash to their name.
    #[error("blob {sha256} is corrupt: its bytes hash to {actual}")]
    Corrupt {
        /// The blob.
        sha256: String,
        /// What they hash to.
        actual: String,
    },
    /// Not a SHA-256 in hex.
    #[error("failed to read blob name {0:?}: expected 64 lower-case hex digits")]
    InvalidName(String),
    /// The configuration does not make a store.
    #[error("failed to set up the blob store: {0}")]
    Config(String),
    /// A blocking file task did not finish.
    #[error("failed to run a blob file task")]
    Task(#[source] tokio::task::JoinError),
}

/// Result alias of this module.
pub type Result<T, E = BlobError> = std::result::Result<T, E>;

/// Where raw messages go (the `blobs` section of a service's configuration).
///
/// ```toml
/// [blobs]
/// kind = "directory"
/// path = "/var/lib/threatmail/blobs"
/// ```
///
/// ```toml
/// [blobs]
/// kind = "s3"
/// bucket = "threatmail-raw"
/// region = "eu-west-1"
/// endpoint = "https://s3.example.internal"   # any S3-compatible store; omit for AWS
/// access_key_id = "AKIA…"
/// secret_access_key_file = "/run/secrets/s3-secret"
/// prefix = "prod/"
/// ```
///
/// `kind` may be left out, meaning `directory`, so that `THREATMAIL_BLOBS__PATH` alone
/// (with no file) names the folder; `path` defaults to `data/blobs`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BlobSettings")]
pub enum BlobStoreConfig {
    /// A local (or mounted) directory.
    Directory {
        /// The root folder, created if missing.
        path: PathBuf,
    },
    /// An S3-compatible object store.
    S3 {
        /// The bucket.
        bucket: String,
        /// The region (`us-east-1` if unset).
        region: Option<String>,
        /// The endpoint URL, for stores other than AWS.
        endpoint: Option<String>,
        /// The access key id; unset: from the environment or instance metadata.
        access_key_id: Option<String>,
        /// The secret access key (prefer `secret_access_key_file`).
        secret_access_key: Option<SecretStringEq>,
        /// A file holding the secret access key.
        secret_access_key_file: Option<PathBuf>,
        /// Allow `http://` endpoints (a local test store only).
        allow_http: bool,
        /// A key prefix inside the bucket.
        prefix: String,
    },
}

/// The `blobs` section as written: every setting of either kind, checked against `kind`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobSettings {
    #[serde(default)]
    kind: BlobKind,
    path: Option<PathBuf>,
    bucket: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<SecretStringEq>,
    secret_access_key_file: Option<PathBuf>,
    allow_http: Option<bool>,
    prefix: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
enum BlobKind {
    #[default]
    Directory,
    S3,
}

impl TryFrom<BlobSettings> for BlobStoreConfig {
    type Error = String;

    fn try_from(settings: BlobSettings) -> std::result::Result<Self, String> {
        let BlobSettings {
            kind,
            path,
            bucket,
            region,
            endpoint,
            access_key_id,
            secret_access_key,
            secret_access_key_file,
            allow_http,
            prefix,
        } = settings;
        match kind {
            BlobKind::Directory => {
                let s3_settings = [
                    ("bucket", bucket.is_some()),
                    ("region", region.is_some()),
                    ("endpoint", endpoint.is_some()),
                    ("access_key_id", access_key_id.is_some()),
                    ("secret_access_key", secret_access_key.is_some()),
                    ("secret_access_key_file", secret_access_key_file.is_some()),
                    ("allow_http", allow_http.is_some()),
                    ("prefix", prefix.is_some()),
                ];
                if let Some((name, _)) = s3_settings.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "`{name}` is a setting of kind = \"s3\"; a directory store takes only `path`"
                    ));
                }
                Ok(BlobStoreConfig::Directory {
                    path: path.unwrap_or_else(|| PathBuf::from("data/blobs")),
                })
            }
            BlobKind::S3 => {
                if path.is_some() {
                    return Err(
                        "`path` is a setting of kind = \"directory\"; an s3 store takes `bucket` and `prefix`"
                            .to_owned(),
                    );
                }
                Ok(BlobStoreConfig::S3 {
                    bucket: bucket.ok_or("missing field `bucket` (kind = \"s3\")")?,
                    region,
                    endpoint,
                    access_key_id,
                    secret_access_key,
                    secret_access_key_file,
                    allow_http: allow_http.unwrap_or(false),
                    prefix: prefix.unwrap_or_default(),
                })
            }
        }
    }
}

impl Default for BlobStoreConfig {
    fn default() -> Self {
        BlobStoreConfig::Directory {
            path: PathBuf::from("data/blobs"),
        }
    }
}

/// A secret string that compares equal to nothing but itself by value and never prints.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SecretStringEq(SecretString);

impl std::fmt::Debug for SecretStringEq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl PartialEq for SecretStringEq {
    fn eq(&self, other: &Self) -> bool {
        self.0.expose_secret() == other.0.expose_secret()
    }
}

impl Eq for SecretStringEq {}

/// The blob store.
#[derive(Clone)]
pub struct BlobStore {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Directory(Arc<PathBuf>),
    Object {
        store: Arc<dyn object_store::ObjectStore>,
        prefix: String,
    },
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Directory(root) => f.debug_tuple("BlobStore::Directory").field(root).finish(),
            Backend::Object { store, prefix } => f
                .debug_struct("BlobStore::Object")
                .field("store", &store.to_string())
                .field("prefix", prefix)
                .finish(),
        }
    }
}

impl BlobStore {
    /// Blobs under the folder `root`.
    pub fn directory(root: impl Into<PathBuf>) -> Self {
        BlobStore {
            backend: Backend::Directory(Arc::new(root.into())),
        }
    }

    /// Blobs in `store`, their names prefixed with `prefix`.
    pub fn object_store(store: Arc<dyn object_store::ObjectStore>, prefix: &str) -> Self {
        BlobStore {
            backend: Backend::Object {
                store,
                prefix: prefix.to_owned(),
            },
        }
    }

    /// The store `config` describes.
    pub fn from_config(config: &BlobStoreConfig) -> Result<Self> {
        match config {
            BlobStoreConfig::Directory { path } => Ok(BlobStore::directory(path.clone())),
            BlobStoreConfig::S3 {
                bucket,
                region,
                endpoint,
                access_key_id,
                secret_access_key,
                secret_access_key_file,
                allow_http,
                prefix,
            } => {
                // reqwest is built with rustls but no bundled provider; ring is the
                // workspace's one. Installing fails only when one is installed already.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_allow_http(*allow_http);
                if let Some(region) = region {
                    builder = builder.with_region(region);
                }
                if let Some(endpoint) = endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(id) = access_key_id {
                    builder = builder.with_access_key_id(id);
                }
                let secret = match (secret_access_key, secret_access_key_file) {
                    (Some(secret), _) => Some(secret.0.expose_secret().to_owned()),
                    (None, Some(path)) => Some(
                        std::fs::read_to_string(path)
                            .map_err(|error| {
                                BlobError::Config(format!(
                                    "failed to read blobs.secret_access_key_file {}: {error}",
                                    path.display()
                                ))
                            })?
                            .trim()
                            .to_owned(),
                    ),
                    (None, None) => None,
                };
                if let Some(secret) = secret {
                    builder = builder.with_secret_access_key(secret);
                }
                // The builder's error names the setting but never a secret's value.
                let store = builder
                    .build()
                    .map_err(|error| BlobError::Config(error.to_string()))?;
                Ok(BlobStore::object_store(Arc::new(store), prefix))
            }
        }
    }

    /// Stores `raw` under `sha256` (its hash, which the caller computed) unless it is there.
    pub async fn put(&self, sha256: &str, raw: &[u8]) -> Result<()> {
        check_name(sha256)?;
        match &self.backend {
            Backend::Directory(root) => {
                let root = Arc::clone(root);
                let sha256 = sha256.to_owned();
                let raw = raw.to_vec();
                tokio::task::spawn_blocking(move || put_file(&root, &sha256, &raw))
                    .await
                    .map_err(BlobError::Task)?
            }
            Backend::Object { store, prefix } => {
                let path = object_path(prefix, sha256);
                match store.head(&path).await {
                    Ok(_) => return Ok(()),
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(source) => {
                        return Err(BlobError::ObjectStore {
                            action: "look up",
                            sha256: sha256.to_owned(),
                            source,
                        });
                    }
                }
                // Content-addressed: a racing writer puts the very same bytes, so an
                // overwrite is harmless.
                store
                    .put(&path, raw.to_vec().into())
                    .await
                    .map(|_| ())
                    .map_err(|source| BlobError::ObjectStore {
                        action: "write",
                        sha256: sha256.to_owned(),
                        source,
                    })
            }
        }
    }

    /// The bytes stored under `sha256`, checked against it; `None` if absent.
    pub async fn get(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        check_name(sha256)?;
        let bytes = match &self.backend {
            Backend::Directory(root) => {
                let path = file_path(root, sha256);
                match tokio::fs::read(&path).await {
                    Ok(bytes) => bytes,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(source) => {
                        return Err(BlobError::Io {
                            action: "read",
                            sha256: sha256.to_owned(),
                            path,
                            source,
                        });
                    }
                }
            }
            Backend::Object { store, prefix } => {
                let fetched = match store.get(&object_path(prefix, sha256)).await {
                    Ok(result) => result.bytes().await,
                    Err(error) => Err(error),
                };
                match fetched {
                    Ok(bytes) => bytes.to_vec(),
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(source) => {
                        return Err(BlobError::ObjectStore {
                            action: "read",
                            sha256: sha256.to_owned(),
                            source,
                        });
                    }
                }
            }
        };
        let actual = sha256_hex(&bytes);
        if actual != sha256 {
            return Err(BlobError::Corrupt {
                sha256: sha256.to_owned(),
                actual,
            });
        }
        Ok(Some(bytes))
    }
}

fn check_name(sha256: &str) -> Result<()> {
    if sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(BlobError::InvalidName(sha256.to_owned()))
    }
}

fn object_path(prefix: &str, sha256: &str) -> object_store::path::Path {
    object_store::path::Path::from(format!(
        "{prefix}sha256/{}/{}/{sha256}",
        &sha256[..2],
        &sha256[2..4]
    ))
}

fn file_path(root: &Path, sha256: &str) -> PathBuf {
    root.join("sha256").join(&sha256[..2]).join(sha256)
}

/// Makes `folder` and any missing parents up to `root`, syncing each new one into its
/// parent, so a blob's path survives a crash as its bytes do.
fn create_synced_dirs(root: &Path, folder: &Path) -> std::io::Result<()> {
    if folder.is_dir() {
        return Ok(());
    }
    let parent = folder.parent().unwrap_or(root);
    if parent != folder && parent.starts_with(root) && parent != root {
        create_synced_dirs(root, parent)?;
    } else {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::create_dir(folder) {
        Ok(()) => std::fs::File::open(parent)?.sync_all(),
        // Another writer made it meanwhile.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

/// How the names of files being written start; never a blob's name (64 hex digits), so no
/// read finds one, and one left by a crash is safe to delete.
const TEMP_PREFIX: &str = ".tmp-";

/// Writes one blob file atomically: temp file, sync, rename, sync the folder.
fn put_file(root: &Path, sha256: &str, raw: &[u8]) -> Result<()> {
    use std::io::Write as _;

    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        let sha256 = sha256.to_owned();
        move |source| BlobError::Io {
            action,
            sha256,
            path,
            source,
        }
    };
    let target = file_path(root, sha256);
    if target.is_file() {
        return Ok(());
    }
    let folder = target.parent().unwrap_or(root);
    create_synced_dirs(root, folder).map_err(io("create the folder of", folder))?;
    // The temp file goes into the blob's own folder: creating it takes that folder's lock
    // only, where a shared temp folder had every writer of a batch wait on its lock (and
    // spin: a tenth of a sync's CPU), and the rename stays within the folder.
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(folder)
        .map_err(io("create", folder))?;
    tmp.write_all(raw).map_err(io("write", &target))?;
    tmp.as_file().sync_all().map_err(io("sync", &target))?;
    // Another writer may have put the same bytes meanwhile; renaming over it is harmless.
    tmp.persist(&target)
        .map_err(|error| io("move into place", &target)(error.error))?;
    std::fs::File::open(folder)
        .and_then(|dir| dir.sync_all())
        .map_err(io("sync the folder of", folder))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_both_kinds_and_refuses_unknown_settings() {
        let directory: BlobStoreConfig =
            toml::from_str("kind = \"directory\"\npath = \"/srv/blobs\"").unwrap();
        assert_eq!(
            directory,
            BlobStoreConfig::Directory {
                path: PathBuf::from("/srv/blobs")
            }
        );
        let s3: BlobStoreConfig = toml::from_str(
            "kind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\nsecret_access_key = \"s3cr3t\"",
        )
        .unwrap();
        let BlobStoreConfig::S3 {
            bucket,
            allow_http,
            secret_access_key,
            ..
        } = &s3
        else {
            panic!("not s3: {s3:?}");
        };
        assert_eq!((bucket.as_str(), *allow_http), ("b", true));
        assert!(secret_access_key.is_some());
        assert!(!format!("{s3:?}").contains("s3cr3t"));
        assert!(
            toml::from_str::<BlobStoreConfig>("kind = \"directory\"\npath = \"x\"\nsize = 1")
                .is_err()
        );
        assert!(toml::from_str::<BlobStoreConfig>("kind = \"ftp\"").is_err());
        // `kind` defaults to a directory, as the environment sets only the path.
        let path_only: BlobStoreConfig = toml::from_str("path = \"/srv/blobs\"").unwrap();
        assert_eq!(path_only, directory);
        assert_eq!(
            toml::from_str::<BlobStoreConfig>("").unwrap(),
            BlobStoreConfig::default()
        );
        for (text, named) in [
            ("path = \"x\"\nbucket = \"b\"", "`bucket`"),
            ("kind = \"s3\"\nbucket = \"b\"\npath = \"x\"", "`path`"),
            ("kind = \"s3\"", "`bucket`"),
        ] {
            let error = toml::from_str::<BlobStoreConfig>(text)
                .unwrap_err()
                .to_string();
            assert!(error.contains(named), "{text}: {error}");
        }
    }

    #[test]
    fn an_s3_config_builds_a_store_without_contacting_it() {
        let config = BlobStoreConfig::S3 {
            bucket: "b".into(),
            region: Some("eu-west-1".into()),
            endpoint: Some("http://127.0.0.1:1".into()),
            access_key_id: Some("id".into()),
            secret_access_key: Some(SecretStringEq("secret".to_owned().into())),
            secret_access_key_file: None,
            allow_http: true,
            prefix: "p/".into(),
        };
        let store = BlobStore::from_config(&config).unwrap();
        assert!(format!("{store:?}").contains("BlobStore::Object"));
        assert!(!format!("{store:?}").contains("secret\""));
    }

    #[test]
    fn names_must_be_sha256_hex() {
        assert!(check_name(&"a".repeat(64)).is_ok());
        for bad in ["", "../etc/passwd", &"A".repeat(64), &"a".repeat(63)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
