//! Reading the audit trail: filtered, paginated lists, one event, and keyset-paged batches
//! for streaming exports. Every query names the organization (the chain) it reads; there are
//! no update or delete queries here at all.

use chrono::{DateTime, Utc};
use sea_query::{Cond, Expr, ExprTrait, LikeExpr, Order, Query, SelectStatement};
use uuid::Uuid;

use super::event::{AuditEvent, EVENT_COLUMNS, EventRow};
use crate::auth::store::{count_where, escape_like};
use crate::http::pagination::PageRequest;
use crate::store::{Db, StoreError};

/// Filters on the audit trail of one organization.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// A user id, or a system actor's name.
    pub actor: Option<String>,
    /// An exact action, or a prefix ending in `*` (`auth.*`).
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// Inclusive.
    pub created_from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub created_to: Option<DateTime<Utc>>,
}

impl EventFilter {
    pub(crate) fn condition(&self, org_id: Uuid) -> Cond {
        let mut cond = Cond::all().add(Expr::col("org_id").eq(org_id));
        if let Some(a) = &self.actor {
            cond = cond.add(Expr::col("actor_id").eq(a.as_str()));
        }
        if let Some(a) = &self.action {
            cond = match a.strip_suffix('*') {
                Some(prefix) => cond.add(
                    Expr::col("action")
                        .like(LikeExpr::new(format!("{}%", escape_like(prefix))).escape('\\')),
                ),
                None => cond.add(Expr::col("action").eq(a.as_str())),
            };
        }
        if let Some(t) = &self.resource_type {
            cond = cond.add(Expr::col("resource_type").eq(t.as_str()));
        }
        if let Some(id) = &self.resource_id {
            cond = cond.add(Expr::col("resource_id").eq(id.as_str()));
        }
        if let Some(t) = self.created_from {
            cond = cond.add(Expr::col("created_at").gte(t));
        }
        if let Some(t) = self.created_to {
            cond = cond.add(Expr::col("created_at").lt(t));
        }
        cond
    }
}

fn select_events() -> SelectStatement {
    Query::select()
        .columns(EVENT_COLUMNS)
        .from("audit_events")
        .to_owned()
}

/// A page of an organization's events. Sorting by `seq` or `created_at` both follow the
/// chain's order (events are timestamped under the chain lock).
pub async fn list(
    db: &Db,
    org_id: Uuid,
    filter: &EventFilter,
    page: &PageRequest,
) -> Result<(Vec<AuditEvent>, Option<u64>), StoreError> {
    let cond = filter.condition(org_id);
    let mut select = select_events().cond_where(cond.clone()).to_owned();
    crate::store::paginate(&mut select, page);
    let rows: Vec<EventRow> = db.fetch_all(&select).await?;
    let total = match page.wants_total() {
        true => Some(count_where(db, "audit_events", cond).await?),
        false => None,
    };
    Ok((rows.into_iter().map(EventRow::into_event).collect(), total))
}

pub async fn count(db: &Db, org_id: Uuid, filter: &EventFilter) -> Result<u64, StoreError> {
    count_where(db, "audit_events", filter.condition(org_id)).await
}

/// One event of the organization (another organization's id answers NotFound).
pub async fn get(db: &Db, org_id: Uuid, id: Uuid) -> Result<AuditEvent, StoreError> {
    let row: EventRow = db
        .fetch_one(
            &select_events()
                .and_where(Expr::col("org_id").eq(org_id))
                .and_where(Expr::col("id").eq(id))
                .to_owned(),
        )
        .await?;
    Ok(row.into_event())
}

/// The next batch of matching events after `after_seq`, oldest first (exports).
pub async fn batch_after(
    db: &Db,
    org_id: Uuid,
    filter: &EventFilter,
    after_seq: i64,
    limit: u64,
) -> Result<Vec<AuditEvent>, StoreError> {
    let rows: Vec<EventRow> = db
        .fetch_all(
            &select_events()
                .cond_where(filter.condition(org_id))
                .and_where(Expr::col("seq").gt(after_seq))
                .order_by("seq", Order::Asc)
                .limit(limit)
                .to_owned(),
        )
        .await?;
    Ok(rows.into_iter().map(EventRow::into_event).collect())
}
