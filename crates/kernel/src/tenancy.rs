//! Tenant scope: the only key to tenant-owned rows.
//!
//! A [`TenantScope`] names an organization (and, for partner users, the business partner they
//! are tied to). Only the kernel makes one: from a verified principal for requests, or from
//! the organization recorded on a job, a schedule or a verified webhook (a system actor).
//! Store functions for tenant-owned tables take a scope, so code without one has nothing to
//! query with.

use uuid::Uuid;

/// Who acts inside a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    User(Uuid),
    /// Kernel or app work on the organization's behalf (jobs, schedules, webhooks).
    System(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantScope {
    org_id: Uuid,
    partner_id: Option<Uuid>,
    actor: Actor,
}

impl TenantScope {
    /// A system actor's scope inside an organization. Kernel-only: jobs, the scheduler and
    /// webhook verification make these from an organization id they recorded or verified.
    pub(crate) fn system(org_id: Uuid, actor: &'static str) -> Self {
        Self {
            org_id,
            partner_id: None,
            actor: Actor::System(actor),
        }
    }

    /// A signed-in user's scope (made by the kernel's `Principal` extractor only).
    pub(crate) fn for_user(org_id: Uuid, partner_id: Option<Uuid>, user: Uuid) -> Self {
        Self {
            org_id,
            partner_id,
            actor: Actor::User(user),
        }
    }

    /// A scope inside `org_id` for tests, which have no verified principal to make one from.
    /// Only in builds with the `testing` feature (enabled by the test kit).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn for_tests(org_id: Uuid) -> Self {
        Self::system(org_id, "test")
    }

    pub fn org_id(&self) -> Uuid {
        self.org_id
    }

    /// Set for partner (external) users: they see only rows linked to this partner.
    pub fn partner_id(&self) -> Option<Uuid> {
        self.partner_id
    }

    pub fn actor(&self) -> &Actor {
        &self.actor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_scope_has_no_partner_restriction() {
        let org = Uuid::now_v7();
        let scope = TenantScope::system(org, "scheduler");
        assert_eq!(scope.org_id(), org);
        assert_eq!(scope.partner_id(), None);
        assert_eq!(scope.actor(), &Actor::System("scheduler"));
    }
}
