//! What the broker does for its three RPCs: a source's token (with secret rollover and the
//! token's own diagnosis), a draft credential test that caches nothing, and invalidation.
//!
//! A source's credentials come from its record in Redis ([`SourceStore`]), opened with the
//! master keyring and kept for `cache.source_ttl`. A source may hold a current and a next
//! secret: the current one is used while Entra takes it; when Entra says it has expired
//! (AADSTS7000222) the next one is used and the reply says so. Each secret has its own cache
//! key, so the expired one's remembered failure keeps later calls from asking Entra about it.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use secrecy::SecretString;
use threatmail_proto::v1 as pb;
use threatmail_source::record::RecordError;
use threatmail_source::store::StoreError as SourceStoreError;
use threatmail_source::{
    Cloud, CredentialSecret, Credentials, Keyring, SECRET_EXPIRY_WARNING, SecretSlot, SourceId,
    SourceStore,
};

use crate::cache::redis::RedisStore;
use crate::cache::{CacheError, CacheKey, Served, TokenCache, Want};
use crate::claims::{self, ClaimProblem, TokenClaims};
use crate::clock::{Clock, UnixMs, ms};
use crate::config::CloudEndpoints;
use crate::entra::{EntraClient, EntraError, EntraErrorKind, TokenRequest};
use crate::error::BrokerError;

/// The cache the broker runs on.
pub type BrokerCache = TokenCache<RedisStore, EntraError>;

/// A source's credentials, opened, with the cache key of each secret.
struct Resolved {
    source_id: SourceId,
    credentials: Credentials,
    endpoints: CloudEndpoints,
    keys: Vec<CacheKey>,
    loaded_at: UnixMs,
}

/// The broker.
pub struct Broker {
    sources: SourceStore,
    keyring: Arc<Keyring>,
    entra: EntraClient,
    clouds: HashMap<Cloud, CloudEndpoints>,
    cache: BrokerCache,
    clock: Arc<dyn Clock>,
    source_ttl: Duration,
    /// Opened sources by id (the id's text, so the hot path looks one up without parsing
    /// or copying the requested id).
    resolved: RwLock<HashMap<String, Arc<Resolved>>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

/// What [`Broker::new`] needs.
pub struct BrokerParts {
    /// Sources in Redis.
    pub sources: SourceStore,
    /// The master keys.
    pub keyring: Arc<Keyring>,
    /// The Entra client.
    pub entra: EntraClient,
    /// Each cloud's endpoints.
    pub clouds: Vec<CloudEndpoints>,
    /// The token cache.
    pub cache: BrokerCache,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// How long an opened source is reused.
    pub source_ttl: Duration,
}

impl Broker {
    /// A broker from its parts.
    pub fn new(parts: BrokerParts) -> Self {
        Broker {
            sources: parts.sources,
            keyring: parts.keyring,
            entra: parts.entra,
            clouds: parts
                .clouds
                .into_iter()
                .map(|endpoints| (endpoints.cloud, endpoints))
                .collect(),
            cache: parts.cache,
            clock: parts.clock,
            source_ttl: parts.source_ttl,
            resolved: RwLock::new(HashMap::new()),
        }
    }

    /// The token cache.
    pub fn cache(&self) -> &BrokerCache {
        &self.cache
    }

    fn endpoints(&self, cloud: Cloud) -> CloudEndpoints {
        match self.clouds.get(&cloud) {
            Some(endpoints) => endpoints.clone(),
            // Every cloud is resolved at start-up; this is only reached with a partial map
            // built by hand, where the built-in endpoints are the right answer.
            None => CloudEndpoints {
                cloud,
                authority: url::Url::parse(cloud.authority())
                    .unwrap_or_else(|_| unreachable!("built-in authorities parse")),
                authority_host: cloud.authority().trim_start_matches("https://").to_owned()
                    + ":443",
                scope: cloud.scope().to_owned(),
            },
        }
    }

    fn key_of(
        endpoints: &CloudEndpoints,
        credentials: &Credentials,
        secret: &CredentialSecret,
    ) -> CacheKey {
        CacheKey::new(
            &endpoints.authority_host,
            &credentials.tenant_id,
            &credentials.client_id,
            &endpoints.scope,
            &secret.fingerprint,
        )
    }

    /// The opened source `source_id` if it was opened less than `source_ttl` ago.
    fn recently_resolved(&self, source_id: &str, now: UnixMs) -> Option<Arc<Resolved>> {
        self.resolved
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(source_id)
            .filter(|resolved| now - resolved.loaded_at < ms(self.source_ttl))
            .cloned()
    }

    async fn resolve(
        &self,
        source_id: &SourceId,
        fresh: bool,
    ) -> Result<Arc<Resolved>, BrokerError> {
        let now = self.clock.now_ms();
        if !fresh && let Some(resolved) = self.recently_resolved(source_id.as_str(), now) {
            return Ok(resolved);
        }
        let record = match self.sources.get(source_id).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                return Err(BrokerError::SourceNotFound {
                    source_id: source_id.to_string(),
                });
            }
            Err(SourceStoreError::Corrupt { problem, .. }) => {
                return Err(BrokerError::SourceCorrupt {
                    source_id: source_id.clone(),
                    problem,
                });
            }
            Err(error) => {
                tracing::warn!(source_id = %source_id, error = %threatmail_core::error::chain(&error), "failed to read a source");
                return Err(BrokerError::Redis);
            }
        };
        let credentials = record
            .credentials(&self.keyring)
            .map_err(|error| match error {
                RecordError::NotOAuth { source_id, .. } => BrokerError::NotOAuth { source_id },
                RecordError::NoSecret { source_id } => BrokerError::NoSecret { source_id },
                RecordError::Crypto {
                    source_id, source, ..
                } => BrokerError::SecretUnreadable {
                    source_id,
                    problem: source.to_string(),
                },
                RecordError::InvalidId(id) => BrokerError::InvalidArgument {
                    field: "source_id",
                    problem: format!("{id:?} is not a source id"),
                },
            })?;
        let endpoints = self.endpoints(credentials.cloud);
        let keys = credentials
            .secrets
            .iter()
            .map(|secret| Self::key_of(&endpoints, &credentials, secret))
            .collect();
        let resolved = Arc::new(Resolved {
            source_id: source_id.clone(),
            credentials,
            endpoints,
            keys,
            loaded_at: now,
        });
        self.resolved
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(source_id.as_str().to_owned(), Arc::clone(&resolved));
        Ok(resolved)
    }

    fn parse_id(source_id: &str) -> Result<SourceId, BrokerError> {
        SourceId::parse(source_id.trim()).map_err(|_| BrokerError::InvalidArgument {
            field: "source_id",
            problem: format!("{source_id:?} is not a source id"),
        })
    }

    /// A token for source `source_id`.
    pub async fn get_token(
        &self,
        source_id: &str,
        want: Want,
    ) -> Result<pb::GetTokenResponse, BrokerError> {
        // Only an id that was opened before is in the map, so a hit needs no parsing.
        let resolved = match self.recently_resolved(source_id.trim(), self.clock.now_ms()) {
            Some(resolved) => resolved,
            None => self.resolve(&Self::parse_id(source_id)?, false).await?,
        };
        let credentials = &resolved.credentials;
        if !credentials.enabled {
            return Err(BrokerError::SourceDisabled {
                source_id: resolved.source_id.clone(),
            });
        }
        let mut expired_before: Option<SecretSlot> = None;
        let mut last_error = None;
        for (index, (secret, key)) in credentials.secrets.iter().zip(&resolved.keys).enumerate() {
            let fetch = self.fetcher(&resolved, index);
            match self.cache.get(key, want, fetch).await {
                Ok(served) => {
                    let mut warnings = Vec::new();
                    if let Some(expired) = expired_before {
                        warnings.push(rollover_warning(expired, secret.slot));
                    }
                    return Ok(self.reply(&resolved, served, warnings));
                }
                Err(CacheError::Fetch {
                    error, retry_at, ..
                }) => {
                    let expired = error.kind == EntraErrorKind::SecretExpired;
                    last_error = Some(BrokerError::Entra {
                        error: Box::new(error),
                        retry_at: Some(retry_at),
                        now: self.clock.now_ms(),
                    });
                    if expired {
                        // Rollover: the next secret, if the source has one.
                        expired_before.get_or_insert(secret.slot);
                        continue;
                    }
                    break;
                }
                Err(other) => return Err(self.cache_error(other)),
            }
        }
        Err(last_error.unwrap_or_else(|| BrokerError::NoSecret {
            source_id: resolved.source_id.clone(),
        }))
    }

    /// The request for the source's `index`th secret, made only if the cache needs it
    /// (built on every call, so it only clones two `Arc`s).
    fn fetcher(
        &self,
        resolved: &Arc<Resolved>,
        index: usize,
    ) -> impl FnOnce() -> futures::future::BoxFuture<
        'static,
        Result<crate::cache::Fetched, EntraError>,
    > + Send
    + 'static {
        let entra = self.entra.clone();
        let resolved = Arc::clone(resolved);
        move || {
            Box::pin(async move {
                let credentials = &resolved.credentials;
                let secret = &credentials.secrets[index];
                entra
                    .request_token(&TokenRequest {
                        authority: &resolved.endpoints.authority,
                        tenant: &credentials.tenant_id,
                        client_id: &credentials.client_id,
                        secret: &secret.value,
                        scope: &resolved.endpoints.scope,
                    })
                    .await
            })
        }
    }

    fn reply(
        &self,
        resolved: &Resolved,
        served: Served<EntraError>,
        mut warnings: Vec<pb::Problem>,
    ) -> pb::GetTokenResponse {
        let credentials = &resolved.credentials;
        let token = &served.token;
        if let Some(error) = &served.refresh_error {
            warnings.push(pb::Problem {
                reason: "broker.served_cached_token".to_owned(),
                message: format!(
                    "Entra ID failed to give a new token, so a cached one that is still valid was \
                     handed out: {}",
                    error.diagnosis()
                ),
                field: error.field().to_owned(),
                upstream_code: error.upstream_code(),
            });
        }
        if let Some(claims) = &token.claims {
            warnings.extend(
                claims::check(claims, credentials.cloud, credentials.object_id.as_deref())
                    .iter()
                    .map(claim_problem),
            );
        }
        let now_s = self.clock.now_ms() / 1000;
        for secret in &credentials.secrets {
            if let Some(expires_at) = secret.expires_at
                && expires_at - now_s
                    <= i64::try_from(SECRET_EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX)
            {
                warnings.push(expiry_warning(secret.slot, expires_at, now_s));
            }
        }
        pb::GetTokenResponse {
            access_token: token.stored.token.expose().to_owned(),
            expires_at: token.stored.expires_at / 1000,
            from_cache: served.from_cache,
            claims: Some(claims_reply(token.claims.as_ref())),
            warnings,
        }
    }

    /// "Save and Continue": asks Entra for a token with draft credentials, caching nothing.
    pub async fn test_credentials(
        &self,
        request: pb::TestCredentialsRequest,
    ) -> Result<pb::TestCredentialsResponse, BrokerError> {
        for (field, value) in [
            ("tenant_id", &request.tenant_id),
            ("client_id", &request.client_id),
            ("client_secret", &request.client_secret),
        ] {
            if value.trim().is_empty() {
                return Err(BrokerError::InvalidArgument {
                    field,
                    problem: "is empty".to_owned(),
                });
            }
        }
        let cloud = cloud_of(request.cloud());
        let endpoints = self.endpoints(cloud);
        let secret = SecretString::from(request.client_secret);
        let fingerprint = self.keyring.fingerprint(&secret);
        let key = CacheKey::new(
            &endpoints.authority_host,
            &request.tenant_id,
            &request.client_id,
            &endpoints.scope,
            &fingerprint,
        );
        // A throttle remembered for these very credentials still holds (never loop).
        if let Some(failure) = self
            .cache
            .blocking_failure(&key)
            .await
            .map_err(|_| BrokerError::Redis)?
            && failure.retry_after
        {
            return Err(BrokerError::Entra {
                error: Box::new(failure.error),
                retry_at: Some(failure.next_attempt_at),
                now: self.clock.now_ms(),
            });
        }
        let started = self.clock.now_ms();
        let result = self
            .entra
            .request_token(&TokenRequest {
                authority: &endpoints.authority,
                tenant: request.tenant_id.trim(),
                client_id: request.client_id.trim(),
                secret: &secret,
                scope: &endpoints.scope,
            })
            .await;
        match result {
            Ok(fetched) => {
                let decoded = claims::decode(fetched.token.expose());
                let object_id = Some(request.object_id.as_str()).filter(|o| !o.trim().is_empty());
                let problems: Vec<pb::Problem> = decoded
                    .as_ref()
                    .map(|c| claims::check(c, cloud, object_id))
                    .unwrap_or_default()
                    .iter()
                    .map(claim_problem)
                    .collect();
                Ok(pb::TestCredentialsResponse {
                    ok: problems.is_empty(),
                    expires_at: (started + ms(fetched.expires_in)) / 1000,
                    claims: Some(claims_reply(decoded.as_ref())),
                    problems,
                    access_token: fetched.token.expose().to_owned(),
                })
            }
            Err(error) if error.is_setup_problem() => {
                let problem = BrokerError::Entra {
                    error: Box::new(error),
                    retry_at: None,
                    now: started,
                }
                .problem();
                Ok(pb::TestCredentialsResponse {
                    ok: false,
                    problems: vec![problem],
                    ..Default::default()
                })
            }
            Err(error) => Err(BrokerError::Entra {
                error: Box::new(error),
                retry_at: None,
                now: started,
            }),
        }
    }

    /// Drops the cached tokens of source `source_id` (every secret's) here and in Redis.
    pub async fn invalidate(&self, source_id: &str) -> Result<bool, BrokerError> {
        let source_id = Self::parse_id(source_id)?;
        self.resolved
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(source_id.as_str());
        let resolved = self.resolve(&source_id, true).await?;
        let mut removed = false;
        for key in &resolved.keys {
            removed |= self
                .cache
                .invalidate(key)
                .await
                .map_err(|_| BrokerError::Redis)?;
        }
        tracing::info!(source_id = %source_id, removed, "invalidated a source's tokens");
        Ok(removed)
    }
}

impl Broker {
    fn cache_error(&self, error: CacheError<EntraError>) -> BrokerError {
        match error {
            CacheError::Fetch {
                error, retry_at, ..
            } => BrokerError::Entra {
                error: Box::new(error),
                retry_at: Some(retry_at),
                now: self.clock.now_ms(),
            },
            CacheError::Store(error) => {
                tracing::warn!(error = %threatmail_core::error::chain(&error), "the shared token cache failed");
                BrokerError::Redis
            }
            CacheError::LockWait => BrokerError::Busy,
            CacheError::Stopped => BrokerError::Stopping,
        }
    }
}

fn cloud_of(cloud: pb::Cloud) -> Cloud {
    match cloud {
        pb::Cloud::Unspecified | pb::Cloud::Global => Cloud::Global,
        pb::Cloud::UsGovernment => Cloud::UsGovernment,
        pb::Cloud::China => Cloud::China,
    }
}

fn claims_reply(claims: Option<&TokenClaims>) -> pb::TokenClaims {
    match claims {
        Some(c) => pb::TokenClaims {
            decoded: true,
            audience: c.audience.clone().unwrap_or_default(),
            tenant_id: c.tenant_id.clone().unwrap_or_default(),
            app_id: c.app_id.clone().unwrap_or_default(),
            object_id: c.object_id.clone().unwrap_or_default(),
            roles: c.roles.clone(),
        },
        None => pb::TokenClaims::default(),
    }
}

fn claim_problem(problem: &ClaimProblem) -> pb::Problem {
    match problem {
        ClaimProblem::ConsentMissing { roles, audience } => pb::Problem {
            reason: "token.imap_consent_missing".to_owned(),
            message: format!(
                "admin consent for IMAP.AccessAsApp missing: the token has roles [{}] and audience \
                 {}; add Office 365 Exchange Online > Application permissions > IMAP.AccessAsApp \
                 and grant admin consent (setup step 2)",
                roles.join(", "),
                audience.as_deref().unwrap_or("(none)")
            ),
            field: "app_id".to_owned(),
            upstream_code: "roles".to_owned(),
        },
        ClaimProblem::ObjectIdMismatch {
            token_object_id,
            entered,
        } => pb::Problem {
            reason: "token.object_id_mismatch".to_owned(),
            message: format!(
                "the token's oid {token_object_id} is not the Object ID entered ({entered}): \
                 New-ServicePrincipal and Add-MailboxPermission need the Enterprise \
                 application's Object ID, not the app registration's (setup steps 4 and 5)"
            ),
            field: "object_id".to_owned(),
            upstream_code: "oid".to_owned(),
        },
    }
}

fn rollover_warning(expired: SecretSlot, used: SecretSlot) -> pb::Problem {
    pb::Problem {
        reason: "source.secret_rolled_over".to_owned(),
        message: format!(
            "the {expired} client secret has expired (AADSTS7000222), so the {used} secret was \
             used: make it the current secret and add a new next one (setup step 3)"
        ),
        field: "secret_key".to_owned(),
        upstream_code: "AADSTS7000222".to_owned(),
    }
}

fn expiry_warning(slot: SecretSlot, expires_at: i64, now_s: i64) -> pb::Problem {
    let when = u64::try_from(expires_at)
        .map(|s| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s))
                .to_string()
        })
        .unwrap_or_default();
    let message = if expires_at <= now_s {
        format!("the {slot} client secret expired on {when}: create a new one (setup step 3)")
    } else {
        let days = (expires_at - now_s) / 86_400;
        format!(
            "the {slot} client secret expires on {when} (in {days} days): create a new one and \
             enter it as the next secret (setup step 3)"
        )
    };
    pb::Problem {
        reason: "source.secret_expiring".to_owned(),
        message,
        field: "secret_expires".to_owned(),
        upstream_code: String::new(),
    }
}
