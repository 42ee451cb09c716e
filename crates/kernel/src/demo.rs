//! Demo data: `keel demo seed` (or `keel serve --demo`) creates a demo organization with a
//! user for each role and a business partner, then asks every enabled module with demo data
//! ([`Module::demo`](crate::module::Module::demo)) to fill it, so a newcomer can click around
//! and load tests have realistic volumes.
//!
//! Passwords are generated and printed once (never stored anywhere but as Argon2 hashes)
//! unless one is given. Running it again adds another batch of module data to the same
//! organization and leaves the users as they are.

use std::sync::Arc;

use futures::future::BoxFuture;
use rand::Rng;
use serde::Serialize;
use uuid::Uuid;

use crate::audit::{AuditContext, EventActor, NewEvent};
use crate::auth::access::{ADMIN, MEMBER, PARTNER};
use crate::auth::domain::Email;
use crate::auth::password;
use crate::auth::store::UserStatus;
use crate::auth::store::{self, UserRow};
use crate::state::AppState;
use crate::store::now;
use crate::tenancy::TenantScope;

/// The demo organization's name.
pub const ORG_NAME: &str = "Demo Exports Pvt Ltd";

/// The demo users: (role, email, name).
pub const USERS: [(&str, &str, &str); 3] = [
    (ADMIN, "admin@demo-exports.example.com", "Asha Admin"),
    (MEMBER, "member@demo-exports.example.com", "Manoj Member"),
    (PARTNER, "buyer@demo-exports.example.com", "Britta Buyer"),
];

/// What the seed was asked for.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// How many of each module's main resource to create (e.g. shipments).
    pub size: u64,
    /// A password for the demo users (must pass the password policy); generated when absent.
    pub password: Option<String>,
}

/// Given to each module's demo seeder.
#[derive(Debug, Clone)]
pub struct DemoContext {
    pub state: AppState,
    /// The demo organization, acting as the demo admin.
    pub scope: TenantScope,
    /// The demo business partner (the partner user is tied to it).
    pub partner_id: Uuid,
    pub size: u64,
    /// Distinguishes this run's records from an earlier run's (e.g. in references).
    pub batch: String,
}

pub type DemoFn =
    Arc<dyn Fn(DemoContext) -> BoxFuture<'static, anyhow::Result<String>> + Send + Sync>;

#[derive(Debug, Clone, Serialize)]
pub struct DemoAccount {
    pub role: String,
    pub email: String,
    /// Only when created by this run.
    pub password: Option<String>,
}

/// What the seed did, printed as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub org_id: Uuid,
    pub organization: String,
    pub accounts: Vec<DemoAccount>,
    /// One line per module: what it created.
    pub modules: Vec<(String, String)>,
}

fn generated_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// Creates (or reuses) the demo organization and users, then runs every module's seeder.
pub async fn seed(state: &AppState, options: &DemoOptions) -> anyhow::Result<DemoReport> {
    let password = options.password.clone().unwrap_or_else(generated_password);
    if let Err(problem) =
        password::check_policy(&password, USERS[0].1, state.config.auth.password_min_length)
    {
        anyhow::bail!("--password: {problem}");
    }
    let admin_email = USERS[0].1;
    let (org_id, admin_id, partner_id, created) =
        match store::user_by_email(&state.db, admin_email).await? {
            Some(admin) => {
                let partner = existing_partner(state, admin.org_id).await?;
                (admin.org_id, admin.id, partner, false)
            }
            None => {
                let (org, admin, partner) = create_accounts(state, &password).await?;
                (org, admin, partner, true)
            }
        };
    let scope = TenantScope::for_user(org_id, None, admin_id);
    let batch = format!("{:04X}", rand::rng().random_range(0..0x10000u32));
    let mut modules = Vec::new();
    for m in state.registry.modules() {
        if let Some(f) = m.demo() {
            let ctx = DemoContext {
                state: state.clone(),
                scope: scope.clone(),
                partner_id,
                size: options.size,
                batch: batch.clone(),
            };
            let summary = f(ctx).await?;
            modules.push((m.name().to_string(), summary));
        }
    }
    Ok(DemoReport {
        org_id,
        organization: ORG_NAME.to_string(),
        accounts: USERS
            .iter()
            .map(|(role, email, _)| DemoAccount {
                role: role.to_string(),
                email: email.to_string(),
                password: created.then(|| password.clone()),
            })
            .collect(),
        modules,
    })
}

async fn existing_partner(state: &AppState, org: Uuid) -> anyhow::Result<Uuid> {
    match store::user_by_email(&state.db, USERS[2].1).await? {
        Some(u) if u.org_id == org => u
            .partner_id
            .ok_or_else(|| anyhow::anyhow!("the demo buyer user has no partner")),
        _ => anyhow::bail!("the demo organization is incomplete; seed a fresh data directory"),
    }
}

async fn create_accounts(state: &AppState, password: &str) -> anyhow::Result<(Uuid, Uuid, Uuid)> {
    let hash = state.auth.hasher.hash(password).await?;
    let mut tx = state.db.begin().await?;
    let org = store::new_org(ORG_NAME.to_string());
    store::insert_org(&mut tx, &org).await?;
    let system = TenantScope::system(org.id, "demo");
    let partner =
        crate::partners::store::insert(&mut tx, &system, "Hamburg Imports GmbH", "buyer").await?;
    let ctx = AuditContext::system("demo");
    let mut admin_id = Uuid::nil();
    for (role, email, name) in USERS {
        let email = Email::parse("email", email)
            .map_err(|e| anyhow::anyhow!("demo email: {}", e.message))?;
        let at = now();
        let user = UserRow {
            id: Uuid::now_v7(),
            org_id: org.id,
            email: email.into_inner(),
            name: name.to_string(),
            password_hash: hash.clone(),
            role: role.to_string(),
            status: UserStatus::Active.as_str().to_string(),
            partner_id: (role == PARTNER).then_some(partner.id),
            email_verified_at: Some(at),
            totp_secret: None,
            totp_enabled: false,
            totp_last_step: None,
            created_at: at,
            updated_at: at,
            version: 1,
        };
        store::insert_user(&mut tx, &user).await?;
        crate::audit::record_as(
            &mut tx,
            Some(org.id),
            &EventActor::system("demo"),
            &ctx,
            NewEvent::new("auth.registered", "user", Some(user.id))
                .detail("role", role)
                .detail("demo", true),
        )
        .await?;
        if role == ADMIN {
            admin_id = user.id;
        }
    }
    tx.commit().await?;
    Ok((org.id, admin_id, partner.id))
}
