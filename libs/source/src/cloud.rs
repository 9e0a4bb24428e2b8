//! The Microsoft cloud a tenant lives in, which fixes the Entra authority, the Exchange
//! Online scope and the IMAP host together (DESIGN §3).
//!
//! Global is `login.microsoftonline.com` + `https://outlook.office365.com/.default` +
//! `outlook.office365.com` [MS-IMAP-OAUTH]. The national clouds follow Microsoft's
//! national-cloud endpoint tables: US Government (GCC High) `login.microsoftonline.us` and
//! `outlook.office365.us`; China (operated by 21Vianet) `login.chinacloudapi.cn` and
//! `partner.outlook.cn`. GCC (moderate) tenants use the Global endpoints. The national-cloud
//! values have not been checked against a live tenant; the broker lets each be overridden.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A Microsoft cloud.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Cloud {
    /// The worldwide cloud (also GCC).
    #[default]
    Global,
    /// Microsoft Cloud for US Government (GCC High).
    UsGovernment,
    /// Microsoft 365 operated by 21Vianet.
    China,
}

/// Every cloud, for tables and settings.
pub const ALL_CLOUDS: [Cloud; 3] = [Cloud::Global, Cloud::UsGovernment, Cloud::China];

impl Cloud {
    /// The settings name: `global`, `us-government`, `china`.
    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Global => "global",
            Cloud::UsGovernment => "us-government",
            Cloud::China => "china",
        }
    }

    /// The Entra ID authority, `https://<host>` without a trailing slash.
    pub fn authority(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::UsGovernment => "https://login.microsoftonline.us",
            Cloud::China => "https://login.chinacloudapi.cn",
        }
    }

    /// Exchange Online's resource identifier in this cloud (the token's `aud`).
    pub fn exchange_resource(self) -> &'static str {
        match self {
            Cloud::Global => "https://outlook.office365.com",
            Cloud::UsGovernment => "https://outlook.office365.us",
            Cloud::China => "https://partner.outlook.cn",
        }
    }

    /// The client-credentials scope for IMAP app-only access: `<resource>/.default`.
    pub fn scope(self) -> &'static str {
        match self {
            Cloud::Global => "https://outlook.office365.com/.default",
            Cloud::UsGovernment => "https://outlook.office365.us/.default",
            Cloud::China => "https://partner.outlook.cn/.default",
        }
    }

    /// The IMAP host (port 993, TLS).
    pub fn imap_host(self) -> &'static str {
        match self {
            Cloud::Global => "outlook.office365.com",
            Cloud::UsGovernment => "outlook.office365.us",
            Cloud::China => "partner.outlook.cn",
        }
    }

    /// Whether `audience` names Exchange Online in this cloud: the resource URL (any case,
    /// trailing `/` allowed), Exchange's well-known application id, and for Global also
    /// `https://ps.outlook.com` (the admin-consent scope's audience, whose tokens carry the
    /// IMAP role).
    pub fn is_exchange_audience(self, audience: &str) -> bool {
        let audience = audience.trim_end_matches('/');
        audience.eq_ignore_ascii_case(self.exchange_resource())
            || audience.eq_ignore_ascii_case(EXCHANGE_APP_ID)
            || (self == Cloud::Global && audience.eq_ignore_ascii_case("https://ps.outlook.com"))
    }

    /// Whether `scope` is an Exchange Online `/.default` scope of this cloud: exactly
    /// [`Cloud::scope`] (case of the host aside). An `…/IMAP.AccessAsApp` scope or a Graph
    /// scope is not (BR-09).
    pub fn is_exchange_scope(self, scope: &str) -> bool {
        scope.eq_ignore_ascii_case(self.scope())
    }
}

/// Office 365 Exchange Online's application id, which v2 tokens put in `aud`.
pub const EXCHANGE_APP_ID: &str = "00000002-0000-0ff1-ce00-000000000000";

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cloud name that is not one of `global`, `us-government`, `china`.
#[derive(Debug, thiserror::Error)]
#[error("failed to read cloud {0:?}: expected global, us-government or china")]
pub struct UnknownCloud(pub String);

impl FromStr for Cloud {
    type Err = UnknownCloud;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ALL_CLOUDS
            .into_iter()
            .find(|cloud| cloud.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| UnknownCloud(text.to_owned()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn global_gives_the_documented_authority_scope_and_imap_host() {
        let cloud = Cloud::default();
        assert_eq!(cloud, Cloud::Global);
        assert_eq!(cloud.authority(), "https://login.microsoftonline.com");
        assert_eq!(cloud.scope(), "https://outlook.office365.com/.default");
        assert_eq!(cloud.imap_host(), "outlook.office365.com");
    }

    #[test]
    fn every_cloud_is_consistent() {
        for cloud in ALL_CLOUDS {
            assert!(cloud.authority().starts_with("https://"));
            assert_eq!(
                cloud.scope(),
                format!("{}/.default", cloud.exchange_resource())
            );
            assert!(cloud.exchange_resource().ends_with(cloud.imap_host()));
            assert!(cloud.is_exchange_scope(cloud.scope()));
            assert!(cloud.is_exchange_audience(cloud.exchange_resource()));
            assert_eq!(cloud.as_str().parse::<Cloud>().unwrap(), cloud);
            let json = serde_json::to_string(&cloud).unwrap();
            assert_eq!(json, format!("\"{}\"", cloud.as_str()));
        }
    }

    #[test]
    fn scopes_that_are_not_exchange_default_are_refused() {
        for scope in [
            "https://outlook.office365.com/IMAP.AccessAsApp",
            "https://graph.microsoft.com/.default",
            "https://outlook.office365.us/.default",
            "https://outlook.office365.com/.default extra",
            ".default",
        ] {
            assert!(!Cloud::Global.is_exchange_scope(scope), "{scope}");
        }
        assert!(!Cloud::Global.is_exchange_audience("https://graph.microsoft.com"));
        assert!(Cloud::Global.is_exchange_audience("https://ps.outlook.com/"));
        assert!(Cloud::China.is_exchange_audience(EXCHANGE_APP_ID));
        assert!("moon".parse::<Cloud>().is_err());
    }
}
