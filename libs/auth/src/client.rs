//! The client side: a tonic interceptor that presents a service credential.

use tonic::metadata::{AsciiMetadataValue, MetadataValue};

use crate::credential::{CredentialError, ServiceCredential};

/// Adds `authorization: Bearer <credential>` to every request, marked sensitive so HTTP/2
/// never indexes it.
#[derive(Clone)]
pub struct CredentialInterceptor {
    value: AsciiMetadataValue,
}

impl std::fmt::Debug for CredentialInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialInterceptor")
            .finish_non_exhaustive()
    }
}

impl CredentialInterceptor {
    /// Presents `credential`.
    pub fn new(credential: &ServiceCredential) -> Result<Self, CredentialError> {
        Self::bearer(credential.expose())
    }

    /// Presents any bearer credential (an API key, for the CLI).
    pub fn bearer(credential: &str) -> Result<Self, CredentialError> {
        let mut value: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {credential}"))
            .map_err(|_| CredentialError::BadCredential)?;
        value.set_sensitive(true);
        Ok(CredentialInterceptor { value })
    }
}

impl tonic::service::Interceptor for CredentialInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.value.clone());
        Ok(request)
    }
}
