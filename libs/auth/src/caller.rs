//! Who is calling, what they may do, and what each RPC requires.

use std::fmt;
use std::str::FromStr;

/// A permission an API key can hold (DESIGN §1: creating a source needs Create Threat
/// Mailbox, changing one Update, reading View; admin holds all and manages keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// View Threat Mailbox.
    View,
    /// Create Threat Mailbox.
    Create,
    /// Update Threat Mailbox.
    Update,
    /// Everything, including API keys.
    Admin,
}

/// Every role, in order.
pub const ALL_ROLES: [Role; 4] = [Role::View, Role::Create, Role::Update, Role::Admin];

impl Role {
    /// `view`, `create`, `update`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::View => "view",
            Role::Create => "create",
            Role::Update => "update",
            Role::Admin => "admin",
        }
    }

    /// The permission's name as people see it.
    pub fn title(self) -> &'static str {
        match self {
            Role::View => "View Threat Mailbox",
            Role::Create => "Create Threat Mailbox",
            Role::Update => "Update Threat Mailbox",
            Role::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Role::View => 1,
            Role::Create => 2,
            Role::Update => 4,
            Role::Admin => 8,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of `view`, `create`, `update`, `admin`.
#[derive(Debug, thiserror::Error)]
#[error("failed to read role {0:?}: expected view, create, update or admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ALL_ROLES
            .into_iter()
            .find(|role| role.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| UnknownRole(text.to_owned()))
    }
}

/// A set of roles.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RoleSet(u8);

impl RoleSet {
    /// No role.
    pub const EMPTY: RoleSet = RoleSet(0);

    /// The set of `roles`.
    pub fn of(roles: &[Role]) -> Self {
        RoleSet(roles.iter().fold(0, |bits, role| bits | role.bit()))
    }

    /// Whether `role` is granted (admin grants every role).
    pub fn grants(self, role: Role) -> bool {
        self.0 & (role.bit() | Role::Admin.bit()) != 0
    }

    /// The roles held, in order.
    pub fn roles(self) -> Vec<Role> {
        ALL_ROLES
            .into_iter()
            .filter(|r| self.0 & r.bit() != 0)
            .collect()
    }

    /// `view,update` style, for storage.
    pub fn to_list(self) -> String {
        self.roles()
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Reads `view,update` style.
    pub fn parse_list(text: &str) -> Result<Self, UnknownRole> {
        let roles = text
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Role>, _>>()?;
        Ok(RoleSet::of(&roles))
    }
}

impl fmt::Debug for RoleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.roles()).finish()
    }
}

/// An authenticated caller, put in each request's extensions by the auth layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Another threatmail service, by its service credential.
    Service {
        /// The service's name (`fetcher`, `registry`, …).
        name: String,
    },
    /// A person or script, by API key.
    ApiKey {
        /// The key's id (not secret).
        id: String,
        /// What the key is for, as given when it was made.
        label: String,
        /// Its roles.
        roles: RoleSet,
    },
}

impl Caller {
    /// Whether it is a service.
    pub fn is_service(&self) -> bool {
        matches!(self, Caller::Service { .. })
    }

    /// Whether it meets `requirement`.
    pub fn meets(&self, requirement: Requirement) -> bool {
        match (requirement, self) {
            (Requirement::Public, _) => true,
            (Requirement::Service, caller) => caller.is_service(),
            (Requirement::Role(_), Caller::Service { .. }) => false,
            (Requirement::Role(role), Caller::ApiKey { roles, .. })
            | (Requirement::ServiceOrRole(role), Caller::ApiKey { roles, .. }) => {
                roles.grants(role)
            }
            (Requirement::ServiceOrRole(_), Caller::Service { .. }) => true,
            (Requirement::EitherRole(..), Caller::Service { .. }) => false,
            (Requirement::EitherRole(a, b), Caller::ApiKey { roles, .. }) => {
                roles.grants(a) || roles.grants(b)
            }
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Service { name } => write!(f, "service {name}"),
            Caller::ApiKey { id, .. } => write!(f, "API key {id}"),
        }
    }
}

/// What an RPC requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Anyone, without a credential (health checks).
    Public,
    /// A service credential.
    Service,
    /// An API key with this role (or admin).
    Role(Role),
    /// A service, or an API key with this role.
    ServiceOrRole(Role),
    /// An API key with either role (the handler may ask for one of them in particular).
    EitherRole(Role, Role),
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Public => f.write_str("nothing"),
            Requirement::Service => f.write_str("a service credential"),
            Requirement::Role(role) => write!(f, "the {} permission", role.title()),
            Requirement::ServiceOrRole(role) => {
                write!(f, "a service credential or the {} permission", role.title())
            }
            Requirement::EitherRole(a, b) => {
                write!(f, "the {} or the {} permission", a.title(), b.title())
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requirements_against_callers() {
        let service = Caller::Service {
            name: "fetcher".into(),
        };
        let viewer = Caller::ApiKey {
            id: "k".into(),
            label: "analyst".into(),
            roles: RoleSet::of(&[Role::View]),
        };
        let admin = Caller::ApiKey {
            id: "a".into(),
            label: "ops".into(),
            roles: RoleSet::of(&[Role::Admin]),
        };
        // (requirement, service, viewer, admin)
        let table = [
            (Requirement::Public, true, true, true),
            (Requirement::Service, true, false, false),
            (Requirement::Role(Role::View), false, true, true),
            (Requirement::Role(Role::Update), false, false, true),
            (Requirement::ServiceOrRole(Role::View), true, true, true),
            (Requirement::ServiceOrRole(Role::Create), true, false, true),
            (
                Requirement::EitherRole(Role::Create, Role::View),
                false,
                true,
                true,
            ),
            (
                Requirement::EitherRole(Role::Create, Role::Update),
                false,
                false,
                true,
            ),
        ];
        for (requirement, s, v, a) in table {
            assert_eq!(service.meets(requirement), s, "{requirement:?} service");
            assert_eq!(viewer.meets(requirement), v, "{requirement:?} viewer");
            assert_eq!(admin.meets(requirement), a, "{requirement:?} admin");
        }
    }

    #[test]
    fn role_lists_round_trip() {
        let set = RoleSet::parse_list("update, view").unwrap();
        assert_eq!(set.to_list(), "view,update");
        assert_eq!(RoleSet::parse_list("").unwrap(), RoleSet::EMPTY);
        assert!(RoleSet::parse_list("view,root").is_err());
        assert!(set.grants(Role::View) && !set.grants(Role::Create));
    }
}
