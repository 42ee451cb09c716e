//! Identity queries, written once with the query builder for both engines.
//!
//! Organization-owned rows (users, partners, invitations, API keys) are read and changed
//! only through functions that take a [`TenantScope`]; the few cross-tenant lookups that
//! sign-in needs (a user by email, a session by refresh-token hash) are by unguessable or
//! user-supplied credentials and return the owner's organization with the row.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sea_query::{Asterisk, Cond, Expr, ExprTrait, Func, Order, Query, SelectStatement};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::ApiKeyRecord;
use crate::audit::store::EventFilter;
use crate::audit::{AuditContext, Changes, EventActor, NewEvent};
use crate::http::pagination::PageRequest;
use crate::store::{Db, StoreError, Tx, now};
use crate::tenancy::TenantScope;

// ---------------------------------------------------------------------------------------
// Organizations

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Organization {
    pub id: Uuid,
    pub name: String,
    /// IANA time zone, e.g. `Asia/Kolkata`.
    pub time_zone: String,
    /// BCP 47 locale, e.g. `en-IN`.
    pub locale: String,
    /// ISO 4217, e.g. `INR`.
    pub default_currency: String,
    /// New members stay `pending_approval` until an admin approves them.
    pub require_approval: bool,
    /// Admins must use two-factor sign-in.
    pub require_admin_2fa: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

const ORG_COLUMNS: [&str; 10] = [
    "id",
    "name",
    "time_zone",
    "locale",
    "default_currency",
    "require_approval",
    "require_admin_2fa",
    "created_at",
    "updated_at",
    "version",
];

pub async fn insert_org(tx: &mut Tx, org: &Organization) -> Result<(), StoreError> {
    tx.execute(
        &Query::insert()
            .into_table("organizations")
            .columns(ORG_COLUMNS)
            .values_panic([
                org.id.into(),
                org.name.clone().into(),
                org.time_zone.clone().into(),
                org.locale.clone().into(),
                org.default_currency.clone().into(),
                org.require_approval.into(),
                org.require_admin_2fa.into(),
                org.created_at.into(),
                org.updated_at.into(),
                org.version.into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(())
}

pub fn new_org(name: String) -> Organization {
    let at = now();
    Organization {
        id: Uuid::now_v7(),
        name,
        time_zone: "UTC".into(),
        locale: "en".into(),
        default_currency: "USD".into(),
        require_approval: false,
        require_admin_2fa: false,
        created_at: at,
        updated_at: at,
        version: 1,
    }
}

pub async fn get_org(db: &Db, scope: &TenantScope) -> Result<Organization, StoreError> {
    db.fetch_one(
        &Query::select()
            .columns(ORG_COLUMNS)
            .from("organizations")
            .and_where(Expr::col("id").eq(scope.org_id()))
            .to_owned(),
    )
    .await
}

pub async fn get_org_tx(tx: &mut Tx, id: Uuid) -> Result<Organization, StoreError> {
    tx.fetch_one(
        &Query::select()
            .columns(ORG_COLUMNS)
            .from("organizations")
            .and_where(Expr::col("id").eq(id))
            .to_owned(),
    )
    .await
}

pub async fn org_exists(db: &Db, id: Uuid) -> Result<bool, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct One {
        #[allow(dead_code)]
        id: Uuid,
    }
    Ok(db
        .fetch_optional::<One>(
            &Query::select()
                .column("id")
                .from("organizations")
                .and_where(Expr::col("id").eq(id))
                .to_owned(),
        )
        .await?
        .is_some())
}

/// Writes new settings if `expected_version` (when given) still matches; returns the row.
pub async fn update_org(
    tx: &mut Tx,
    scope: &TenantScope,
    org: &Organization,
    expected_version: Option<i64>,
) -> Result<Option<Organization>, StoreError> {
    let mut update = Query::update()
        .table("organizations")
        .values([
            ("name", org.name.clone().into()),
            ("time_zone", org.time_zone.clone().into()),
            ("locale", org.locale.clone().into()),
            ("default_currency", org.default_currency.clone().into()),
            ("require_approval", org.require_approval.into()),
            ("require_admin_2fa", org.require_admin_2fa.into()),
            ("updated_at", now().into()),
            ("version", Expr::col("version").add(1)),
        ])
        .and_where(Expr::col("id").eq(scope.org_id()))
        .to_owned();
    if let Some(v) = expected_version {
        update.and_where(Expr::col("version").eq(v));
    }
    if tx.execute(&update).await? == 0 {
        return Ok(None);
    }
    Ok(Some(get_org_tx(tx, scope.org_id()).await?))
}

// ---------------------------------------------------------------------------------------
// Users

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    PendingApproval,
    Deactivated,
}

impl UserStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::PendingApproval => "pending_approval",
            Self::Deactivated => "deactivated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => Self::Active,
            "pending_approval" => Self::PendingApproval,
            "deactivated" => Self::Deactivated,
            _ => return None,
        })
    }
}

/// A user row, with the secrets that never leave the store layer.
#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct UserRow {
    pub id: Uuid,
    pub org_id: Uuid,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub role: String,
    pub status: String,
    pub partner_id: Option<Uuid>,
    pub email_verified_at: Option<DateTime<Utc>>,
    pub totp_secret: Option<String>,
    pub totp_enabled: bool,
    pub totp_last_step: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

const USER_COLUMNS: [&str; 15] = [
    "id",
    "org_id",
    "email",
    "name",
    "password_hash",
    "role",
    "status",
    "partner_id",
    "email_verified_at",
    "totp_secret",
    "totp_enabled",
    "totp_last_step",
    "created_at",
    "updated_at",
    "version",
];

/// What the API shows of a user.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub org_id: Uuid,
    pub email: String,
    pub name: String,
    pub role: String,
    /// `active`, `pending_approval` or `deactivated`.
    pub status: String,
    pub partner_id: Option<Uuid>,
    pub email_verified: bool,
    pub totp_enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl From<UserRow> for User {
    fn from(u: UserRow) -> Self {
        Self {
            id: u.id,
            org_id: u.org_id,
            email: u.email,
            name: u.name,
            role: u.role,
            status: u.status,
            partner_id: u.partner_id,
            email_verified: u.email_verified_at.is_some(),
            totp_enabled: u.totp_enabled,
            created_at: u.created_at,
            updated_at: u.updated_at,
            version: u.version,
        }
    }
}

pub async fn insert_user(tx: &mut Tx, u: &UserRow) -> Result<(), StoreError> {
    tx.execute(
        &Query::insert()
            .into_table("users")
            .columns(USER_COLUMNS)
            .values_panic([
                u.id.into(),
                u.org_id.into(),
                u.email.clone().into(),
                u.name.clone().into(),
                u.password_hash.clone().into(),
                u.role.clone().into(),
                u.status.clone().into(),
                u.partner_id.into(),
                u.email_verified_at.into(),
                u.totp_secret.clone().into(),
                u.totp_enabled.into(),
                u.totp_last_step.into(),
                u.created_at.into(),
                u.updated_at.into(),
                u.version.into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(())
}

fn select_users() -> SelectStatement {
    Query::select()
        .columns(USER_COLUMNS)
        .from("users")
        .to_owned()
}

pub async fn count_users(db: &Db) -> Result<i64, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Count {
        n: i64,
    }
    let row: Count = db
        .fetch_one(
            &Query::select()
                .expr_as(Func::count(Expr::col(Asterisk)), "n")
                .from("users")
                .to_owned(),
        )
        .await?;
    Ok(row.n)
}

/// Sign-in lookup: by email, across organizations (emails are unique on the platform).
pub async fn user_by_email(db: &Db, email: &str) -> Result<Option<UserRow>, StoreError> {
    db.fetch_optional(
        &select_users()
            .and_where(Expr::col("email").eq(email))
            .to_owned(),
    )
    .await
}

pub async fn user_by_email_tx(tx: &mut Tx, email: &str) -> Result<Option<UserRow>, StoreError> {
    tx.fetch_optional(
        &select_users()
            .and_where(Expr::col("email").eq(email))
            .to_owned(),
    )
    .await
}

/// The signed-in user's own row.
pub async fn user_by_id(db: &Db, id: Uuid) -> Result<UserRow, StoreError> {
    db.fetch_one(&select_users().and_where(Expr::col("id").eq(id)).to_owned())
        .await
}

pub async fn user_by_id_tx(tx: &mut Tx, id: Uuid) -> Result<UserRow, StoreError> {
    tx.fetch_one(&select_users().and_where(Expr::col("id").eq(id)).to_owned())
        .await
}

/// A user of the scope's organization (another organization's answers NotFound).
pub async fn scoped_user(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
) -> Result<UserRow, StoreError> {
    tx.fetch_one(
        &select_users()
            .and_where(Expr::col("id").eq(id))
            .and_where(Expr::col("org_id").eq(scope.org_id()))
            .to_owned(),
    )
    .await
}

#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    pub status: Option<String>,
    pub role: Option<String>,
    pub q: Option<String>,
}

pub async fn list_users(
    db: &Db,
    scope: &TenantScope,
    filter: &UserFilter,
    page: &PageRequest,
) -> Result<(Vec<UserRow>, Option<u64>), StoreError> {
    let mut cond = Cond::all().add(Expr::col("org_id").eq(scope.org_id()));
    if let Some(s) = &filter.status {
        cond = cond.add(Expr::col("status").eq(s.as_str()));
    }
    if let Some(r) = &filter.role {
        cond = cond.add(Expr::col("role").eq(r.as_str()));
    }
    if let Some(q) = &filter.q {
        let pattern = format!("%{}%", escape_like(&q.to_lowercase()));
        cond = cond.add(
            Cond::any()
                .add(
                    Expr::col("email").like(sea_query::LikeExpr::new(pattern.clone()).escape('\\')),
                )
                .add(
                    Func::lower(Expr::col("name"))
                        .like(sea_query::LikeExpr::new(pattern).escape('\\')),
                ),
        );
    }
    let mut select = select_users().cond_where(cond.clone()).to_owned();
    crate::store::paginate(&mut select, page);
    let rows = db.fetch_all(&select).await?;
    let total = match page.wants_total() {
        true => Some(count_where(db, "users", cond).await?),
        false => None,
    };
    Ok((rows, total))
}

/// Escapes `%`, `_` and `\` for a LIKE pattern with `\` as the escape character.
pub fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

pub async fn count_where(db: &Db, table: &'static str, cond: Cond) -> Result<u64, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Count {
        n: i64,
    }
    let row: Count = db
        .fetch_one(
            &Query::select()
                .expr_as(Func::count(Expr::col(Asterisk)), "n")
                .from(table)
                .cond_where(cond)
                .to_owned(),
        )
        .await?;
    Ok(u64::try_from(row.n).unwrap_or(0))
}

/// Applies column changes to a user of the scope, bumping its version; `expected_version`
/// guards against lost updates. Returns false when nothing matched.
pub async fn update_user(
    tx: &mut Tx,
    org_id: Uuid,
    id: Uuid,
    changes: Vec<(&'static str, sea_query::SimpleExpr)>,
    expected_version: Option<i64>,
) -> Result<bool, StoreError> {
    let mut values = changes;
    values.push(("updated_at", now().into()));
    values.push(("version", Expr::col("version").add(1)));
    let mut update = Query::update()
        .table("users")
        .values(values)
        .and_where(Expr::col("id").eq(id))
        .and_where(Expr::col("org_id").eq(org_id))
        .to_owned();
    if let Some(v) = expected_version {
        update.and_where(Expr::col("version").eq(v));
    }
    Ok(tx.execute(&update).await? > 0)
}

// ---------------------------------------------------------------------------------------
// Sessions

#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct SessionRow {
    pub id: Uuid,
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub refresh_hash: String,
    pub previous_refresh_hash: Option<String>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub absolute_expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
}

const SESSION_COLUMNS: [&str; 14] = [
    "id",
    "org_id",
    "user_id",
    "refresh_hash",
    "previous_refresh_hash",
    "rotated_at",
    "ip",
    "user_agent",
    "created_at",
    "last_used_at",
    "expires_at",
    "absolute_expires_at",
    "revoked_at",
    "revoked_reason",
];

pub async fn insert_session(tx: &mut Tx, s: &SessionRow) -> Result<(), StoreError> {
    tx.execute(
        &Query::insert()
            .into_table("sessions")
            .columns(SESSION_COLUMNS)
            .values_panic([
                s.id.into(),
                s.org_id.into(),
                s.user_id.into(),
                s.refresh_hash.clone().into(),
                s.previous_refresh_hash.clone().into(),
                s.rotated_at.into(),
                s.ip.clone().into(),
                s.user_agent.clone().into(),
                s.created_at.into(),
                s.last_used_at.into(),
                s.expires_at.into(),
                s.absolute_expires_at.into(),
                s.revoked_at.into(),
                s.revoked_reason.clone().into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(())
}

fn select_sessions() -> SelectStatement {
    Query::select()
        .columns(SESSION_COLUMNS)
        .from("sessions")
        .to_owned()
}

/// Locks the session row (PostgreSQL `FOR UPDATE`; SQLite's transaction already holds the
/// write lock), so two concurrent refreshes of one token are serialised: the second then
/// finds the token rotated and takes the grace-window path.
pub async fn session_by_refresh_hash(
    tx: &mut Tx,
    hash: &str,
) -> Result<Option<SessionRow>, StoreError> {
    tx.fetch_optional(
        &select_sessions()
            .and_where(Expr::col("refresh_hash").eq(hash))
            .lock(sea_query::LockType::Update)
            .to_owned(),
    )
    .await
}

/// The session a refresh token (current or rotated away) belongs to, without locking.
pub async fn session_of_refresh_hash(db: &Db, hash: &str) -> Result<Option<Uuid>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Id {
        id: Uuid,
    }
    if let Some(s) = db
        .fetch_optional::<Id>(
            &Query::select()
                .column("id")
                .from("sessions")
                .and_where(Expr::col("refresh_hash").eq(hash))
                .to_owned(),
        )
        .await?
    {
        return Ok(Some(s.id));
    }
    Ok(db
        .fetch_optional::<Id>(
            &Query::select()
                .expr_as(Expr::col("session_id"), "id")
                .from("refresh_history")
                .and_where(Expr::col("hash").eq(hash))
                .to_owned(),
        )
        .await?
        .map(|s| s.id))
}

/// The session a rotated-away refresh token belonged to.
pub async fn session_by_old_refresh_hash(
    tx: &mut Tx,
    hash: &str,
) -> Result<Option<SessionRow>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Hist {
        session_id: Uuid,
    }
    let Some(h) = tx
        .fetch_optional::<Hist>(
            &Query::select()
                .column("session_id")
                .from("refresh_history")
                .and_where(Expr::col("hash").eq(hash))
                .to_owned(),
        )
        .await?
    else {
        return Ok(None);
    };
    tx.fetch_optional(
        &select_sessions()
            .and_where(Expr::col("id").eq(h.session_id))
            .to_owned(),
    )
    .await
}

/// Moves a session to its next refresh token (only if it is still at `from_hash`).
pub async fn rotate_session(
    tx: &mut Tx,
    id: Uuid,
    from_hash: &str,
    to_hash: &str,
    expires_at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let at = now();
    let changed = tx
        .execute(
            &Query::update()
                .table("sessions")
                .values([
                    ("refresh_hash", to_hash.into()),
                    ("previous_refresh_hash", from_hash.into()),
                    ("rotated_at", at.into()),
                    ("last_used_at", at.into()),
                    ("expires_at", expires_at.into()),
                ])
                .and_where(Expr::col("id").eq(id))
                .and_where(Expr::col("refresh_hash").eq(from_hash))
                .and_where(Expr::col("revoked_at").is_null())
                .to_owned(),
        )
        .await?;
    if changed == 0 {
        return Ok(false);
    }
    tx.execute(
        &Query::insert()
            .into_table("refresh_history")
            .columns(["hash", "session_id", "created_at"])
            .values_panic([from_hash.into(), id.into(), at.into()])
            .to_owned(),
    )
    .await?;
    Ok(true)
}

/// Revokes sessions (those of `user_id`, optionally only `session_id`, optionally keeping
/// one); returns the ids revoked.
pub async fn revoke_sessions(
    tx: &mut Tx,
    user_id: Uuid,
    only: Option<Uuid>,
    keep: Option<Uuid>,
    reason: &str,
) -> Result<Vec<Uuid>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Id {
        id: Uuid,
    }
    let mut cond = Cond::all()
        .add(Expr::col("user_id").eq(user_id))
        .add(Expr::col("revoked_at").is_null());
    if let Some(id) = only {
        cond = cond.add(Expr::col("id").eq(id));
    }
    if let Some(id) = keep {
        cond = cond.add(Expr::col("id").ne(id));
    }
    let ids: Vec<Id> = tx
        .fetch_all(
            &Query::select()
                .column("id")
                .from("sessions")
                .cond_where(cond.clone())
                .to_owned(),
        )
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    tx.execute(
        &Query::update()
            .table("sessions")
            .values([
                ("revoked_at", now().into()),
                ("revoked_reason", reason.into()),
            ])
            .cond_where(cond)
            .to_owned(),
    )
    .await?;
    Ok(ids.into_iter().map(|i| i.id).collect())
}

pub async fn active_sessions(db: &Db, user_id: Uuid) -> Result<Vec<SessionRow>, StoreError> {
    db.fetch_all(
        &select_sessions()
            .and_where(Expr::col("user_id").eq(user_id))
            .and_where(Expr::col("revoked_at").is_null())
            .and_where(Expr::col("expires_at").gt(now()))
            .order_by("created_at", Order::Desc)
            .to_owned(),
    )
    .await
}

// ---------------------------------------------------------------------------------------
// One-time tokens (email verification, password reset)

pub async fn insert_email_token(
    tx: &mut Tx,
    user_id: Uuid,
    purpose: &str,
    token_hash: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        &Query::insert()
            .into_table("email_tokens")
            .columns([
                "id",
                "user_id",
                "purpose",
                "token_hash",
                "expires_at",
                "created_at",
            ])
            .values_panic([
                Uuid::now_v7().into(),
                user_id.into(),
                purpose.into(),
                token_hash.into(),
                expires_at.into(),
                now().into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(())
}

/// Marks a token used and returns its user — once, and only before it expires.
pub async fn consume_email_token(
    tx: &mut Tx,
    purpose: &str,
    token_hash: &str,
) -> Result<Option<Uuid>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Tok {
        id: Uuid,
        user_id: Uuid,
    }
    let at = now();
    let Some(tok) = tx
        .fetch_optional::<Tok>(
            &Query::select()
                .columns(["id", "user_id"])
                .from("email_tokens")
                .and_where(Expr::col("token_hash").eq(token_hash))
                .and_where(Expr::col("purpose").eq(purpose))
                .and_where(Expr::col("used_at").is_null())
                .and_where(Expr::col("expires_at").gt(at))
                .to_owned(),
        )
        .await?
    else {
        return Ok(None);
    };
    let used = tx
        .execute(
            &Query::update()
                .table("email_tokens")
                .value("used_at", at)
                .and_where(Expr::col("id").eq(tok.id))
                .and_where(Expr::col("used_at").is_null())
                .to_owned(),
        )
        .await?;
    Ok((used == 1).then_some(tok.user_id))
}

// ---------------------------------------------------------------------------------------
// Invitations

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Invitation {
    pub id: Uuid,
    pub org_id: Uuid,
    pub email: String,
    pub role: String,
    pub partner_id: Option<Uuid>,
    pub invited_by: Uuid,
    pub expires_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

const INVITATION_COLUMNS: [&str; 10] = [
    "id",
    "org_id",
    "email",
    "role",
    "partner_id",
    "invited_by",
    "expires_at",
    "accepted_at",
    "revoked_at",
    "created_at",
];

pub async fn insert_invitation(
    tx: &mut Tx,
    inv: &Invitation,
    token_hash: &str,
) -> Result<(), StoreError> {
    tx.execute(
        &Query::insert()
            .into_table("invitations")
            .columns(INVITATION_COLUMNS.iter().copied().chain(["token_hash"]))
            .values_panic([
                inv.id.into(),
                inv.org_id.into(),
                inv.email.clone().into(),
                inv.role.clone().into(),
                inv.partner_id.into(),
                inv.invited_by.into(),
                inv.expires_at.into(),
                inv.accepted_at.into(),
                inv.revoked_at.into(),
                inv.created_at.into(),
                token_hash.into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(())
}

/// An open invitation by its token (unexpired, not accepted, not revoked).
pub async fn open_invitation(
    tx: &mut Tx,
    token_hash: &str,
) -> Result<Option<Invitation>, StoreError> {
    tx.fetch_optional(
        &Query::select()
            .columns(INVITATION_COLUMNS)
            .from("invitations")
            .and_where(Expr::col("token_hash").eq(token_hash))
            .and_where(Expr::col("accepted_at").is_null())
            .and_where(Expr::col("revoked_at").is_null())
            .and_where(Expr::col("expires_at").gt(now()))
            .to_owned(),
    )
    .await
}

pub async fn accept_invitation(tx: &mut Tx, id: Uuid) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            &Query::update()
                .table("invitations")
                .value("accepted_at", now())
                .and_where(Expr::col("id").eq(id))
                .and_where(Expr::col("accepted_at").is_null())
                .to_owned(),
        )
        .await?
        == 1)
}

pub async fn list_invitations(
    db: &Db,
    scope: &TenantScope,
    page: &PageRequest,
) -> Result<(Vec<Invitation>, Option<u64>), StoreError> {
    let cond = Cond::all().add(Expr::col("org_id").eq(scope.org_id()));
    let mut select = Query::select()
        .columns(INVITATION_COLUMNS)
        .from("invitations")
        .cond_where(cond.clone())
        .to_owned();
    crate::store::paginate(&mut select, page);
    let rows = db.fetch_all(&select).await?;
    let total = match page.wants_total() {
        true => Some(count_where(db, "invitations", cond).await?),
        false => None,
    };
    Ok((rows, total))
}

pub async fn revoke_invitation(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            &Query::update()
                .table("invitations")
                .value("revoked_at", now())
                .and_where(Expr::col("id").eq(id))
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("accepted_at").is_null())
                .and_where(Expr::col("revoked_at").is_null())
                .to_owned(),
        )
        .await?
        == 1)
}

// ---------------------------------------------------------------------------------------
// API keys

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub permissions: Vec<String>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, sqlx::FromRow, serde::Deserialize)]
struct ApiKeyRow {
    id: Uuid,
    name: String,
    prefix: String,
    permissions: String,
    created_by: Uuid,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRow> for ApiKey {
    fn from(r: ApiKeyRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            prefix: r.prefix,
            permissions: serde_json::from_str(&r.permissions).unwrap_or_default(),
            created_by: r.created_by,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        }
    }
}

const API_KEY_COLUMNS: [&str; 8] = [
    "id",
    "name",
    "prefix",
    "permissions",
    "created_by",
    "created_at",
    "last_used_at",
    "revoked_at",
];

#[allow(clippy::too_many_arguments)]
pub async fn insert_api_key(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
    created_by: Uuid,
    name: &str,
    prefix: &str,
    key_hash: &str,
    permissions: &[String],
) -> Result<ApiKey, StoreError> {
    let at = now();
    let perms = serde_json::to_string(permissions).map_err(|e| StoreError::Other(e.into()))?;
    tx.execute(
        &Query::insert()
            .into_table("api_keys")
            .columns([
                "id",
                "org_id",
                "created_by",
                "name",
                "prefix",
                "key_hash",
                "permissions",
                "created_at",
            ])
            .values_panic([
                id.into(),
                scope.org_id().into(),
                created_by.into(),
                name.into(),
                prefix.into(),
                key_hash.into(),
                perms.into(),
                at.into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(ApiKey {
        id,
        name: name.to_string(),
        prefix: prefix.to_string(),
        permissions: permissions.to_vec(),
        created_by,
        created_at: at,
        last_used_at: None,
        revoked_at: None,
    })
}

pub async fn list_api_keys(
    db: &Db,
    scope: &TenantScope,
    page: &PageRequest,
) -> Result<(Vec<ApiKey>, Option<u64>), StoreError> {
    let cond = Cond::all().add(Expr::col("org_id").eq(scope.org_id()));
    let mut select = Query::select()
        .columns(API_KEY_COLUMNS)
        .from("api_keys")
        .cond_where(cond.clone())
        .to_owned();
    crate::store::paginate(&mut select, page);
    let rows: Vec<ApiKeyRow> = db.fetch_all(&select).await?;
    let total = match page.wants_total() {
        true => Some(count_where(db, "api_keys", cond).await?),
        false => None,
    };
    Ok((rows.into_iter().map(ApiKey::from).collect(), total))
}

pub async fn get_api_key(db: &Db, scope: &TenantScope, id: Uuid) -> Result<ApiKey, StoreError> {
    let row: ApiKeyRow = db
        .fetch_one(
            &Query::select()
                .columns(API_KEY_COLUMNS)
                .from("api_keys")
                .and_where(Expr::col("id").eq(id))
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .to_owned(),
        )
        .await?;
    Ok(row.into())
}

/// Revokes a key of the scope; returns its hash (to drop it from caches) if it was live.
pub async fn revoke_api_key(
    tx: &mut Tx,
    scope: &TenantScope,
    id: Uuid,
) -> Result<Option<String>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct H {
        key_hash: String,
    }
    let Some(h) = tx
        .fetch_optional::<H>(
            &Query::select()
                .column("key_hash")
                .from("api_keys")
                .and_where(Expr::col("id").eq(id))
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("revoked_at").is_null())
                .to_owned(),
        )
        .await?
    else {
        return Ok(None);
    };
    tx.execute(
        &Query::update()
            .table("api_keys")
            .value("revoked_at", now())
            .and_where(Expr::col("id").eq(id))
            .to_owned(),
    )
    .await?;
    Ok(Some(h.key_hash))
}

/// Live API keys a user created (to revoke them when the user is deactivated).
pub async fn api_keys_of_user(tx: &mut Tx, user_id: Uuid) -> Result<Vec<Uuid>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Id {
        id: Uuid,
    }
    let rows: Vec<Id> = tx
        .fetch_all(
            &Query::select()
                .column("id")
                .from("api_keys")
                .and_where(Expr::col("created_by").eq(user_id))
                .and_where(Expr::col("revoked_at").is_null())
                .to_owned(),
        )
        .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

pub async fn api_key_by_hash(db: &Db, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Row {
        id: Uuid,
        org_id: Uuid,
        created_by: Uuid,
        permissions: String,
        revoked_at: Option<DateTime<Utc>>,
        last_used_at: Option<DateTime<Utc>>,
        role: String,
        status: String,
        partner_id: Option<Uuid>,
    }
    let row: Option<Row> = db
        .fetch_optional(
            &Query::select()
                .expr_as(Expr::col(("k", "id")), "id")
                .expr_as(Expr::col(("k", "org_id")), "org_id")
                .expr_as(Expr::col(("k", "created_by")), "created_by")
                .expr_as(Expr::col(("k", "permissions")), "permissions")
                .expr_as(Expr::col(("k", "revoked_at")), "revoked_at")
                .expr_as(Expr::col(("k", "last_used_at")), "last_used_at")
                .expr_as(Expr::col(("u", "role")), "role")
                .expr_as(Expr::col(("u", "status")), "status")
                .expr_as(Expr::col(("u", "partner_id")), "partner_id")
                .from_as("api_keys", "k")
                .join_as(
                    sea_query::JoinType::InnerJoin,
                    "users",
                    "u",
                    Expr::col(("u", "id")).equals(("k", "created_by")),
                )
                .and_where(Expr::col(("k", "key_hash")).eq(hash))
                .to_owned(),
        )
        .await?;
    Ok(row.map(|r| {
        let permissions: BTreeSet<String> =
            serde_json::from_str(&r.permissions).unwrap_or_default();
        ApiKeyRecord {
            id: r.id,
            org_id: r.org_id,
            created_by: r.created_by,
            creator_role: r.role,
            creator_active: r.status == "active",
            creator_partner: r.partner_id,
            permissions: std::sync::Arc::new(permissions),
            revoked: r.revoked_at.is_some(),
            last_touched: std::sync::Arc::new(std::sync::atomic::AtomicI64::new(
                r.last_used_at.map_or(0, |t| t.timestamp()),
            )),
        }
    }))
}

pub async fn touch_api_key(db: &Db, id: Uuid) -> Result<(), StoreError> {
    db.execute(
        &Query::update()
            .table("api_keys")
            .value("last_used_at", now())
            .and_where(Expr::col("id").eq(id))
            .to_owned(),
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Brute-force counters

#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct FailureRow {
    pub subject: String,
    pub failures: i64,
    pub window_started_at: DateTime<Utc>,
    pub locked_until: Option<DateTime<Utc>>,
}

pub async fn failures(db: &Db, subject: &str) -> Result<Option<FailureRow>, StoreError> {
    db.fetch_optional(
        &Query::select()
            .columns(["subject", "failures", "window_started_at", "locked_until"])
            .from("login_failures")
            .and_where(Expr::col("subject").eq(subject))
            .to_owned(),
    )
    .await
}

pub async fn put_failures(tx: &mut Tx, row: &FailureRow) -> Result<(), StoreError> {
    tx.execute(
        &Query::delete()
            .from_table("login_failures")
            .and_where(Expr::col("subject").eq(row.subject.as_str()))
            .to_owned(),
    )
    .await?;
    tx.execute(
        &Query::insert()
            .into_table("login_failures")
            .columns(["subject", "failures", "window_started_at", "locked_until"])
            .values_panic([
                row.subject.clone().into(),
                row.failures.into(),
                row.window_started_at.into(),
                row.locked_until.into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(())
}

pub async fn clear_failures(tx: &mut Tx, subject: &str) -> Result<(), StoreError> {
    tx.execute(
        &Query::delete()
            .from_table("login_failures")
            .and_where(Expr::col("subject").eq(subject))
            .to_owned(),
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Two-factor material

pub async fn insert_mfa_challenge(
    tx: &mut Tx,
    user_id: Uuid,
    token_hash: &str,
    expires_at: DateTime<Utc>,
    ip: Option<&str>,
    user_agent: Option<&str>,
) -> Result<(), StoreError> {
    tx.execute(
        &Query::insert()
            .into_table("mfa_challenges")
            .columns([
                "id",
                "user_id",
                "token_hash",
                "attempts",
                "expires_at",
                "ip",
                "user_agent",
                "created_at",
            ])
            .values_panic([
                Uuid::now_v7().into(),
                user_id.into(),
                token_hash.into(),
                0i64.into(),
                expires_at.into(),
                ip.map(str::to_string).into(),
                user_agent.map(str::to_string).into(),
                now().into(),
            ])
            .to_owned(),
    )
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct MfaChallenge {
    pub id: Uuid,
    pub user_id: Uuid,
    pub attempts: i64,
}

pub async fn open_mfa_challenge(
    tx: &mut Tx,
    token_hash: &str,
) -> Result<Option<MfaChallenge>, StoreError> {
    tx.fetch_optional(
        &Query::select()
            .columns(["id", "user_id", "attempts"])
            .from("mfa_challenges")
            .and_where(Expr::col("token_hash").eq(token_hash))
            .and_where(Expr::col("used_at").is_null())
            .and_where(Expr::col("expires_at").gt(now()))
            .to_owned(),
    )
    .await
}

pub async fn mfa_attempt(tx: &mut Tx, id: Uuid, succeeded: bool) -> Result<(), StoreError> {
    let mut values = vec![("attempts", Expr::col("attempts").add(1))];
    if succeeded {
        values.push(("used_at", now().into()));
    }
    tx.execute(
        &Query::update()
            .table("mfa_challenges")
            .values(values)
            .and_where(Expr::col("id").eq(id))
            .to_owned(),
    )
    .await?;
    Ok(())
}

pub async fn replace_recovery_codes(
    tx: &mut Tx,
    user_id: Uuid,
    hashes: &[String],
) -> Result<(), StoreError> {
    tx.execute(
        &Query::delete()
            .from_table("recovery_codes")
            .and_where(Expr::col("user_id").eq(user_id))
            .to_owned(),
    )
    .await?;
    if hashes.is_empty() {
        return Ok(());
    }
    let mut insert = Query::insert()
        .into_table("recovery_codes")
        .columns(["id", "user_id", "code_hash", "created_at"])
        .to_owned();
    let at = now();
    for h in hashes {
        insert.values_panic([
            Uuid::now_v7().into(),
            user_id.into(),
            h.clone().into(),
            at.into(),
        ]);
    }
    tx.execute(&insert).await?;
    Ok(())
}

/// Uses up a recovery code; true when it was valid and unused.
pub async fn use_recovery_code(
    tx: &mut Tx,
    user_id: Uuid,
    code_hash: &str,
) -> Result<bool, StoreError> {
    Ok(tx
        .execute(
            &Query::update()
                .table("recovery_codes")
                .value("used_at", now())
                .and_where(Expr::col("user_id").eq(user_id))
                .and_where(Expr::col("code_hash").eq(code_hash))
                .and_where(Expr::col("used_at").is_null())
                .to_owned(),
        )
        .await?
        == 1)
}

// ---------------------------------------------------------------------------------------
// Security events: audit events with `auth.*` actions
//
// Failed sign-ins, lockouts, blocked addresses, refresh-token reuse, super-admin access to
// another organization and credential changes are written to the audit trail (in the
// caller's transaction) and read back as a filtered view of it. An event about no known
// account (a failed sign-in for an unknown address, a blocked IP) goes to the platform chain.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecurityEventKind {
    LoginFailed,
    AccountLocked,
    IpBlocked,
    RefreshReuse,
    OrgOverride,
    PasswordChanged,
    PasswordReset,
    TotpEnabled,
    TotpDisabled,
    RecoveryCodeUsed,
}

impl SecurityEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoginFailed => "login_failed",
            Self::AccountLocked => "account_locked",
            Self::IpBlocked => "ip_blocked",
            Self::RefreshReuse => "refresh_reuse",
            Self::OrgOverride => "org_override",
            Self::PasswordChanged => "password_changed",
            Self::PasswordReset => "password_reset",
            Self::TotpEnabled => "totp_enabled",
            Self::TotpDisabled => "totp_disabled",
            Self::RecoveryCodeUsed => "recovery_code_used",
        }
    }

    /// The audit action: `auth.<kind>`.
    pub fn action(self) -> &'static str {
        match self {
            Self::LoginFailed => "auth.login_failed",
            Self::AccountLocked => "auth.account_locked",
            Self::IpBlocked => "auth.ip_blocked",
            Self::RefreshReuse => "auth.refresh_reuse",
            Self::OrgOverride => "auth.org_override",
            Self::PasswordChanged => "auth.password_changed",
            Self::PasswordReset => "auth.password_reset",
            Self::TotpEnabled => "auth.totp_enabled",
            Self::TotpDisabled => "auth.totp_disabled",
            Self::RecoveryCodeUsed => "auth.recovery_code_used",
        }
    }

    /// Refusals are failures with a stable code; the rest succeeded.
    fn failure_code(self) -> Option<&'static str> {
        match self {
            Self::LoginFailed => Some("invalid_credentials"),
            Self::AccountLocked => Some("account_locked"),
            Self::IpBlocked => Some("ip_blocked"),
            Self::RefreshReuse => Some("refresh_token_reused"),
            _ => None,
        }
    }

    /// Whether the user named is the one acting (rather than the account someone tried).
    fn user_acts(self) -> bool {
        matches!(
            self,
            Self::OrgOverride
                | Self::PasswordChanged
                | Self::PasswordReset
                | Self::TotpEnabled
                | Self::TotpDisabled
                | Self::RecoveryCodeUsed
        )
    }

    /// The fields the event changed; credentials and second-factor material only as
    /// "changed".
    fn changes(self) -> Changes {
        match self {
            Self::PasswordChanged | Self::PasswordReset => Changes::new().secret("password_hash"),
            Self::TotpEnabled => Changes::new()
                .field("totp_enabled", false, true)
                .secret("recovery_codes"),
            Self::TotpDisabled => Changes::new()
                .field("totp_enabled", true, false)
                .secret("totp_secret")
                .secret("recovery_codes"),
            Self::RecoveryCodeUsed => Changes::new().secret("recovery_codes"),
            _ => Changes::new(),
        }
    }
}

/// Records a security event in its own transaction.
pub async fn security_event(
    db: &Db,
    org_id: Option<Uuid>,
    user_id: Option<Uuid>,
    kind: SecurityEventKind,
    ctx: &AuditContext,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    let detail = &detail;
    db.transaction(|tx| {
        Box::pin(
            async move { security_event_tx(tx, org_id, user_id, kind, ctx, detail.clone()).await },
        )
    })
    .await
}

/// Records a security event in the caller's transaction: an audit event with action
/// `auth.<kind>` in the organization's chain (the platform chain when there is none).
pub async fn security_event_tx(
    tx: &mut Tx,
    org_id: Option<Uuid>,
    user_id: Option<Uuid>,
    kind: SecurityEventKind,
    ctx: &AuditContext,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    let actor = match user_id {
        Some(u) if kind.user_acts() => EventActor::user(u),
        _ => EventActor::anonymous(),
    };
    let mut event = match kind {
        SecurityEventKind::IpBlocked => NewEvent::new(kind.action(), "client_ip", None::<Uuid>),
        SecurityEventKind::OrgOverride => NewEvent::new(kind.action(), "organization", org_id),
        _ => NewEvent::new(kind.action(), "user", user_id),
    }
    .changes(kind.changes())
    .details(detail);
    if let Some(code) = kind.failure_code() {
        event = event.failure(code);
    }
    crate::audit::record_as(tx, org_id, &actor, ctx, event).await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecurityEvent {
    pub id: Uuid,
    /// The account concerned (the one acting, or the one someone tried to sign in to).
    pub user_id: Option<Uuid>,
    pub kind: String,
    /// Masked (`203.0.x.x`).
    pub ip: Option<String>,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// The organization's security events: its audit events with an `auth.` action.
pub async fn list_security_events(
    db: &Db,
    scope: &TenantScope,
    kind: Option<&str>,
    page: &PageRequest,
) -> Result<(Vec<SecurityEvent>, Option<u64>), StoreError> {
    let filter = EventFilter {
        action: Some(match kind {
            Some(k) => format!("auth.{k}"),
            None => "auth.*".into(),
        }),
        ..EventFilter::default()
    };
    let (events, total) = crate::audit::store::list(db, scope.org_id(), &filter, page).await?;
    Ok((
        events
            .into_iter()
            .map(|e| SecurityEvent {
                id: e.id,
                user_id: e.actor.user_id().or_else(|| {
                    (e.resource_type == "user")
                        .then(|| {
                            e.resource_id
                                .as_deref()
                                .and_then(|s| Uuid::parse_str(s).ok())
                        })
                        .flatten()
                }),
                kind: e.action.trim_start_matches("auth.").to_string(),
                ip: e.context.ip,
                detail: e.detail.unwrap_or_else(|| serde_json::json!({})),
                created_at: e.created_at,
            })
            .collect(),
        total,
    ))
}

crate::keyed!(User { "created_at" => Time(created_at), "email" => Text(email), "name" => Text(name) });
crate::keyed!(Invitation { "created_at" => Time(created_at) });
crate::keyed!(ApiKey { "created_at" => Time(created_at) });
crate::keyed!(SecurityEvent { "created_at" => Time(created_at) });
