//! API keys for people and scripts (admin only): made, listed, revoked. The key itself is
//! returned once, when it is made; Redis holds only its hash (`threatmail_auth::api_key`).

use secrecy::ExposeSecret as _;
use threatmail_auth::api_key::StoredApiKey;
use threatmail_auth::{RedisApiKeys, Role, RoleSet};
use threatmail_proto::v1 as pb;

use crate::error::{RegistryError, Result};
use crate::spec::now_secs;

fn role_of(role: pb::Role) -> Option<Role> {
    match role {
        pb::Role::Unspecified => None,
        pb::Role::View => Some(Role::View),
        pb::Role::Create => Some(Role::Create),
        pb::Role::Update => Some(Role::Update),
        pb::Role::Admin => Some(Role::Admin),
    }
}

fn proto_role(role: Role) -> i32 {
    (match role {
        Role::View => pb::Role::View,
        Role::Create => pb::Role::Create,
        Role::Update => pb::Role::Update,
        Role::Admin => pb::Role::Admin,
    }) as i32
}

fn proto_key(key: &StoredApiKey) -> pb::ApiKey {
    pb::ApiKey {
        id: key.id.clone(),
        label: key.label.clone(),
        roles: key.roles.roles().into_iter().map(proto_role).collect(),
        created_at: key.created_at,
        revoked: key.revoked,
    }
}

/// Makes a key with `roles`.
pub async fn create(
    keys: &RedisApiKeys,
    request: &pb::CreateApiKeyRequest,
) -> Result<pb::CreateApiKeyResponse> {
    let label = request.label.trim();
    if label.is_empty() || label.chars().count() > 100 || label.chars().any(char::is_control) {
        return Err(RegistryError::BadArgument {
            field: "label",
            problem: "say what the key is for, in at most 100 characters".to_owned(),
        });
    }
    let mut roles = Vec::new();
    for value in &request.roles {
        match pb::Role::try_from(*value).ok().and_then(role_of) {
            Some(role) => roles.push(role),
            None => {
                return Err(RegistryError::BadArgument {
                    field: "roles",
                    problem: format!("{value} is not a role: use view, create, update or admin"),
                });
            }
        }
    }
    if roles.is_empty() {
        return Err(RegistryError::BadArgument {
            field: "roles",
            problem: "give the key at least one role (view, create, update or admin)".to_owned(),
        });
    }
    let roles = RoleSet::of(&roles);
    let made = keys
        .create(label, roles, now_secs())
        .await
        .map_err(|e| RegistryError::ApiKeys(e.to_string()))?;
    tracing::info!(key_id = %made.id, roles = %roles.to_list(), "API key created");
    Ok(pb::CreateApiKeyResponse {
        id: made.id,
        key: made.key.expose_secret().to_owned(),
        roles: roles.roles().into_iter().map(proto_role).collect(),
    })
}

/// Every key (never a key itself).
pub async fn list(keys: &RedisApiKeys) -> Result<pb::ListApiKeysResponse> {
    let stored = keys
        .list()
        .await
        .map_err(|e| RegistryError::ApiKeys(e.to_string()))?;
    Ok(pb::ListApiKeysResponse {
        keys: stored.iter().map(proto_key).collect(),
    })
}

/// Revokes key `id`.
pub async fn revoke(keys: &RedisApiKeys, id: &str) -> Result<pb::RevokeApiKeyResponse> {
    let id = id.trim();
    // The last admin key stays: without one, only a bootstrap in Redis gives keys again.
    let listed = keys
        .list()
        .await
        .map_err(|e| RegistryError::ApiKeys(e.to_string()))?;
    let admins: Vec<&str> = listed
        .iter()
        .filter(|k| !k.revoked && k.roles.grants(threatmail_auth::Role::Admin))
        .map(|k| k.id.as_str())
        .collect();
    if admins == [id] {
        return Err(RegistryError::LastAdminKey { id: id.to_owned() });
    }
    let revoked = keys
        .revoke(id)
        .await
        .map_err(|e| RegistryError::ApiKeys(e.to_string()))?;
    if !revoked {
        return Err(RegistryError::ApiKeyNotFound { id: id.to_owned() });
    }
    tracing::info!(key_id = %id, "API key revoked");
    Ok(pb::RevokeApiKeyResponse { revoked })
}
