//! Roles and permissions.
//!
//! Organization roles are `admin`, `member` (internal staff) and `partner` (an external user
//! tied to one business partner); `super_admin` is the platform role and holds every
//! permission. Modules add roles and permissions through the module seam; a permission names
//! the roles that hold it. Every route states the permission it needs with
//! [`Authorized<P>`](super::Authorized), where `P` is declared with [`crate::permission!`].

use std::collections::{BTreeMap, BTreeSet};

use crate::module::{Permission, Registry};

pub const SUPER_ADMIN: &str = "super_admin";
pub const ADMIN: &str = "admin";
pub const MEMBER: &str = "member";
pub const PARTNER: &str = "partner";

/// A role an organization can give its users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: &'static str,
    pub description: &'static str,
    /// External users: scoped to the business partner they are tied to.
    pub external: bool,
}

/// The kernel's organization roles.
pub fn kernel_roles() -> Vec<Role> {
    vec![
        Role {
            name: ADMIN,
            description: "Manages the organization: users, settings, API keys, partners",
            external: false,
        },
        Role {
            name: MEMBER,
            description: "Internal staff",
            external: false,
        },
        Role {
            name: PARTNER,
            description: "An external user who sees only what is linked to their business partner",
            external: true,
        },
    ]
}

/// Names a permission as a type, so handlers state it in their signature.
pub trait PermissionName: Send + Sync + 'static {
    const NAME: &'static str;
}

/// Declares a permission type: `permission!(pub UsersManage = "users.manage");`.
#[macro_export]
macro_rules! permission {
    ($vis:vis $ty:ident = $name:literal) => {
        #[derive(Debug, Clone, Copy)]
        $vis struct $ty;
        impl $crate::auth::access::PermissionName for $ty {
            const NAME: &'static str = $name;
        }
    };
}

/// The kernel's permissions.
pub mod perms {
    crate::permission!(pub OrgRead = "org.read");
    crate::permission!(pub OrgManage = "org.manage");
    crate::permission!(pub UsersRead = "users.read");
    crate::permission!(pub UsersManage = "users.manage");
    crate::permission!(pub PartnersRead = "partners.read");
    crate::permission!(pub PartnersManage = "partners.manage");
    crate::permission!(pub ApiKeysManage = "api_keys.manage");
    crate::permission!(pub SecurityRead = "security.read");
    crate::permission!(pub JobsManage = "jobs.manage");
    crate::permission!(pub AuditRead = "audit.read");
    crate::permission!(pub WebhooksManage = "webhooks.manage");
    crate::permission!(pub LlmRead = "llm.read");
    crate::permission!(pub FilesRead = "files.read");
    crate::permission!(pub FilesWrite = "files.write");
    crate::permission!(pub ExtractionReview = "extraction.review");
}

pub fn kernel_permissions() -> Vec<Permission> {
    vec![
        Permission {
            name: "org.read",
            description: "Read the organization and its settings",
            default_roles: &[ADMIN, MEMBER],
        },
        Permission {
            name: "org.manage",
            description: "Change settings, invite users",
            default_roles: &[ADMIN],
        },
        Permission {
            name: "users.read",
            description: "List the organization's users",
            default_roles: &[ADMIN],
        },
        Permission {
            name: "users.manage",
            description: "Approve, change roles, deactivate users",
            default_roles: &[ADMIN],
        },
        Permission {
            name: "partners.read",
            description: "Read business partners (partner users: only their own)",
            default_roles: &[ADMIN, MEMBER, PARTNER],
        },
        Permission {
            name: "partners.manage",
            description: "Create and change business partners",
            default_roles: &[ADMIN, MEMBER],
        },
        Permission {
            name: "api_keys.manage",
            description: "Create, list and revoke API keys",
            default_roles: &[ADMIN],
        },
        Permission {
            name: "files.read",
            description: "Read and download the organization's files and their extractions",
            default_roles: &[ADMIN, MEMBER],
        },
        Permission {
            name: "files.write",
            description: "Upload and delete files, start extractions",
            default_roles: &[ADMIN, MEMBER],
        },
        Permission {
            name: "extraction.review",
            description: "Correct extracted document fields",
            default_roles: &[ADMIN, MEMBER],
        },
        Permission {
            name: "jobs.manage",
            description: "List, retry and cancel the organization's background jobs",
            default_roles: &[ADMIN],
        },
        Permission {
            name: "security.read",
            description: "Read security events (failed sign-ins, lockouts, token reuse)",
            default_roles: &[ADMIN],
        },
        Permission {
            name: "audit.read",
            description: "Read, export and verify the organization's audit trail",
            default_roles: &[ADMIN],
        },
        Permission {
            name: "webhooks.manage",
            description: "Register webhook endpoints, read their deliveries, send test deliveries",
            default_roles: &[ADMIN],
        },
        Permission {
            name: "llm.read",
            description: "Read the organization's LLM cache statistics",
            default_roles: &[ADMIN],
        },
    ]
}

/// Who holds what, resolved once at start-up.
#[derive(Debug, Clone, Default)]
pub struct AccessControl {
    roles: BTreeMap<&'static str, Role>,
    by_role: BTreeMap<&'static str, BTreeSet<&'static str>>,
    all: BTreeSet<&'static str>,
}

impl AccessControl {
    pub fn new(registry: &Registry) -> Self {
        let mut roles = BTreeMap::new();
        for r in kernel_roles().into_iter().chain(registry.roles()) {
            roles.insert(r.name, r);
        }
        let mut by_role: BTreeMap<&'static str, BTreeSet<&'static str>> = BTreeMap::new();
        let mut all = BTreeSet::new();
        for p in kernel_permissions()
            .into_iter()
            .chain(registry.permissions())
        {
            all.insert(p.name);
            for role in p.default_roles {
                by_role.entry(role).or_default().insert(p.name);
            }
        }
        Self {
            roles,
            by_role,
            all,
        }
    }

    /// A role an organization admin may assign (not the platform role).
    pub fn is_org_role(&self, role: &str) -> bool {
        self.roles.contains_key(role)
    }

    pub fn is_external(&self, role: &str) -> bool {
        self.roles.get(role).is_some_and(|r| r.external)
    }

    pub fn org_roles(&self) -> Vec<&'static str> {
        self.roles.keys().copied().collect()
    }

    pub fn has(&self, role: &str, permission: &str) -> bool {
        role == SUPER_ADMIN
            || self
                .by_role
                .get(role)
                .is_some_and(|p| p.contains(permission))
    }

    pub fn permissions_of(&self, role: &str) -> BTreeSet<&'static str> {
        if role == SUPER_ADMIN {
            return self.all.clone();
        }
        self.by_role.get(role).cloned().unwrap_or_default()
    }

    pub fn is_permission(&self, name: &str) -> bool {
        self.all.contains(name)
    }
}
