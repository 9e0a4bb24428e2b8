//! Who is calling a threatmail service, and whether it may.
//!
//! Every RPC of every service checks its caller (DESIGN §2): services by a service
//! credential, people and scripts by an API key with roles (View, Create, Update Threat
//! Mailbox, admin). A service wraps each of its gRPC services in [`AuthLayer`] with a
//! [`Policy`] naming each RPC's [`Requirement`]; handlers read the [`Caller`] with
//! [`caller`]. Clients present their credential with [`CredentialInterceptor`].
//!
//! - [`caller`]: [`Caller`], [`Role`], [`RoleSet`], [`Requirement`].
//! - [`credential`]: the credential formats, hashing, [`ServiceCredentials`].
//! - [`api_key`]: API keys in Redis ([`RedisApiKeys`]) behind [`ApiKeyStore`].
//! - [`layer`]: the tower layer and [`Authenticator`].
//! - [`settings`]: the `auth` configuration section.
//! - [`client`]: the interceptor.

pub mod api_key;
pub mod caller;
pub mod client;
pub mod credential;
pub mod layer;
pub mod settings;

pub use api_key::{ApiKeyStore, RedisApiKeys};
pub use caller::{Caller, Requirement, Role, RoleSet};
pub use client::CredentialInterceptor;
pub use credential::{ServiceCredential, ServiceCredentials};
pub use layer::{AuthError, AuthLayer, Authenticated, Authenticator, Policy, caller};
pub use settings::AuthSettings;
