//! The registry of encrypted columns, and the key operations over it: `keel keys status`
//! (which key encrypted how many values of each column) and `keel keys rotate` (re-encrypt
//! every registered column under the active key).
//!
//! Modules register their encrypted columns with [`crate::Module::encrypted_columns`]: the
//! table, its id and organization columns, and each encrypted column (with its blind-index
//! column, if searchable). Rotation walks each column in id order, in batches; each batch
//! re-encrypts its rows and records its progress in one transaction (`key_rotation_progress`),
//! so an interrupted run resumes where it stopped. A row is rewritten only if it still holds
//! the ciphertext that was read (a concurrent write, already under the active key, wins).
//! Running it again when everything is current changes nothing. Each run is recorded in the
//! platform audit chain (`keys.rotation_started`, `keys.rotation_finished`).

use chrono::{DateTime, Utc};
use sea_query::{Expr, ExprTrait, Func, Order, Query};
use serde::Serialize;
use uuid::Uuid;

use super::field::FieldRef;
use super::{CryptoError, KeyRing, ciphertext_kid};
use crate::audit::{AuditContext, EventActor, NewEvent};
use crate::store::{Db, StoreError, now};

/// How an encrypted column binds its associated data.
#[derive(Clone, Copy)]
enum Aad {
    /// `org|table|column|row id` ([`FieldRef::context`]): every new column.
    Field,
    /// A context made before [`FieldRef`] existed (the kernel's TOTP secrets).
    Custom(fn(org: Uuid, row: Uuid) -> String),
}

/// One encrypted column of a table.
#[derive(Clone)]
pub struct EncryptedColumn {
    pub name: &'static str,
    /// The column holding the blind index of this one (searchable fields).
    pub blind_index: Option<&'static str>,
    /// The column may still hold plaintext written before it was encrypted: reads use
    /// [`KeyRing::open_legacy`] and rotation encrypts such values.
    pub legacy_plaintext: bool,
    aad: Aad,
}

impl std::fmt::Debug for EncryptedColumn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedColumn")
            .field("name", &self.name)
            .field("blind_index", &self.blind_index)
            .field("legacy_plaintext", &self.legacy_plaintext)
            .finish()
    }
}

impl EncryptedColumn {
    /// A column sealed with [`FieldRef`] (`org|table|column|row id`).
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            blind_index: None,
            legacy_plaintext: false,
            aad: Aad::Field,
        }
    }

    /// Names the column that holds this one's blind index (recomputed on rotation).
    pub fn with_blind_index(mut self, column: &'static str) -> Self {
        self.blind_index = Some(column);
        self
    }

    /// Accepts legacy plaintext values (read through, encrypted by `keel keys rotate`).
    pub fn allow_legacy_plaintext(mut self) -> Self {
        self.legacy_plaintext = true;
        self
    }

    pub(crate) fn with_custom_context(mut self, f: fn(Uuid, Uuid) -> String) -> Self {
        self.aad = Aad::Custom(f);
        self
    }

    fn context(&self, table: &str, org: Uuid, row: Uuid) -> String {
        match self.aad {
            Aad::Field => FieldRef::raw(org, table, self.name, row).context(),
            Aad::Custom(f) => f(org, row),
        }
    }
}

/// A table with encrypted columns. Its id column is a UUID primary key.
#[derive(Debug, Clone)]
pub struct EncryptedTable {
    pub table: &'static str,
    pub id_column: &'static str,
    pub org_column: &'static str,
    pub columns: Vec<EncryptedColumn>,
}

impl EncryptedTable {
    /// A table whose rows are identified by `id` and belong to `org_id`.
    pub fn new(table: &'static str, columns: Vec<EncryptedColumn>) -> Self {
        Self {
            table,
            id_column: "id",
            org_column: "org_id",
            columns,
        }
    }

    /// Registration problems (names that are not plain SQL identifiers, no column).
    pub(crate) fn problems(&self, module: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut names = vec![self.table, self.id_column, self.org_column];
        for c in &self.columns {
            names.push(c.name);
            names.extend(c.blind_index);
        }
        for n in names {
            if !is_identifier(n) {
                out.push(format!(
                    "module `{module}`: encrypted table `{}`: `{n}` is not a plain identifier",
                    self.table
                ));
            }
        }
        if self.columns.is_empty() {
            out.push(format!(
                "module `{module}`: encrypted table `{}` names no column",
                self.table
            ));
        }
        out
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_lowercase() || (i > 0 && b.is_ascii_digit()))
}

/// The kernel's own encrypted columns.
pub(crate) fn kernel_encrypted_columns() -> Vec<EncryptedTable> {
    vec![EncryptedTable::new(
        "users",
        vec![
            EncryptedColumn::new("totp_secret")
                .with_custom_context(|_, id| crate::auth::totp::secret_context(id)),
        ],
    )]
}

// ---------------------------------------------------------------------------------------
// Status

/// How many values of one column each key encrypted.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnStatus {
    pub table: String,
    pub column: String,
    /// `(kid, rows)`, `kid` = `plaintext` for values not yet encrypted.
    pub by_key: Vec<(String, i64)>,
}

/// One row of `key_rotation_progress`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, serde::Deserialize)]
pub struct Progress {
    pub target_kid: String,
    pub table_name: String,
    pub column_name: String,
    pub last_id: Option<Uuid>,
    pub rows_rotated: i64,
    pub rows_failed: i64,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyStatus {
    pub active_kid: String,
    pub known_kids: Vec<String>,
    pub columns: Vec<ColumnStatus>,
    pub rotations: Vec<Progress>,
}

impl KeyStatus {
    /// Values under a key other than the active one (or plaintext): what a rotation has left.
    pub fn outstanding(&self) -> i64 {
        self.columns
            .iter()
            .flat_map(|c| c.by_key.iter())
            .filter(|(k, _)| *k != self.active_kid)
            .map(|(_, n)| *n)
            .sum()
    }
}

#[derive(sqlx::FromRow, serde::Deserialize)]
struct KidCount {
    kid: String,
    n: i64,
}

/// Counts every registered column's values per key.
pub async fn status(
    db: &Db,
    ring: &KeyRing,
    tables: &[EncryptedTable],
) -> Result<KeyStatus, StoreError> {
    let mut columns = Vec::new();
    for t in tables {
        for c in &t.columns {
            let kid = Expr::case(
                Expr::col(c.name).like("v1.%"),
                Func::cust("substr").arg(Expr::col(c.name)).arg(4).arg(16),
            )
            .finally("plaintext");
            let q = Query::select()
                .expr_as(kid, "kid")
                .expr_as(Expr::cust("COUNT(*)"), "n")
                .from(t.table)
                .and_where(Expr::col(c.name).is_not_null())
                .add_group_by([Expr::cust("1")])
                .order_by_expr(Expr::cust("1"), Order::Asc)
                .to_owned();
            let rows: Vec<KidCount> = db.fetch_all(&q).await?;
            columns.push(ColumnStatus {
                table: t.table.into(),
                column: c.name.into(),
                by_key: rows.into_iter().map(|r| (r.kid, r.n)).collect(),
            });
        }
    }
    let rotations = db
        .fetch_all(
            &Query::select()
                .columns([
                    "target_kid",
                    "table_name",
                    "column_name",
                    "last_id",
                    "rows_rotated",
                    "rows_failed",
                    "started_at",
                    "updated_at",
                    "finished_at",
                ])
                .from("key_rotation_progress")
                .order_by("started_at", Order::Asc)
                .order_by("table_name", Order::Asc)
                .order_by("column_name", Order::Asc)
                .to_owned(),
        )
        .await?;
    Ok(KeyStatus {
        active_kid: ring.active_kid().into(),
        known_kids: ring.kids().into_iter().map(String::from).collect(),
        columns,
        rotations,
    })
}

// ---------------------------------------------------------------------------------------
// Rotation

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// A value names a key the ring does not hold: its key must be listed in
    /// `previous_encryption_keys` until the rotation is done. Progress so far is kept.
    #[error(
        "{table}.{column} row {row}: encrypted with key {kid}, which is not configured; add it to previous_encryption_keys and run `keel keys rotate` again (progress is kept)"
    )]
    MissingKey {
        table: String,
        column: String,
        row: Uuid,
        kid: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A value that could not be re-encrypted (tampered, moved from another row, or plaintext in
/// a column that does not accept it). It is left as it is.
#[derive(Debug, Clone, Serialize)]
pub struct RotateFailure {
    pub table: String,
    pub column: String,
    pub row: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColumnRotation {
    pub table: String,
    pub column: String,
    /// Rows re-encrypted by this run.
    pub rotated: u64,
    pub failed: u64,
    /// This run continued an interrupted one.
    pub resumed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RotateReport {
    pub target_kid: String,
    pub columns: Vec<ColumnRotation>,
    /// The first failures (at most 100).
    pub failures: Vec<RotateFailure>,
}

impl RotateReport {
    pub fn rotated(&self) -> u64 {
        self.columns.iter().map(|c| c.rotated).sum()
    }

    pub fn failed(&self) -> u64 {
        self.columns.iter().map(|c| c.failed).sum()
    }
}

#[derive(sqlx::FromRow, serde::Deserialize)]
struct RotRow {
    id: Uuid,
    org: Uuid,
    value: String,
}

const MAX_FAILURES_LISTED: usize = 100;

/// Re-encrypts every value of every registered column that is not under the active key,
/// `batch_size` rows per transaction. Resumes an interrupted run for the same active key;
/// a finished one is checked again from the start (cheap when nothing is left).
pub async fn rotate(
    db: &Db,
    ring: &KeyRing,
    tables: &[EncryptedTable],
    batch_size: u32,
) -> Result<RotateReport, RotateError> {
    let target = ring.active_kid().to_string();
    let batch_size = u64::from(std::cmp::Ord::max(batch_size, 1));
    audit_platform(
        db,
        NewEvent::new("keys.rotation_started", "encryption_key", Some(&target))
            .detail("known_kids", ring.kids()),
    )
    .await?;
    let mut report = RotateReport {
        target_kid: target.clone(),
        columns: Vec::new(),
        failures: Vec::new(),
    };
    for t in tables {
        for c in &t.columns {
            let outcome = rotate_column(db, ring, t, c, &target, batch_size, &mut report).await;
            if let Err(e) = outcome {
                let _ = audit_platform(
                    db,
                    NewEvent::new("keys.rotation_finished", "encryption_key", Some(&target))
                        .detail("rows_rotated", report.rotated())
                        .detail("rows_failed", report.failed())
                        .failure("rotation_interrupted"),
                )
                .await;
                return Err(e);
            }
        }
    }
    let mut done = NewEvent::new("keys.rotation_finished", "encryption_key", Some(&target))
        .detail("rows_rotated", report.rotated())
        .detail("rows_failed", report.failed())
        .detail(
            "columns",
            report
                .columns
                .iter()
                .map(|c| format!("{}.{}", c.table, c.column))
                .collect::<Vec<_>>(),
        );
    if report.failed() > 0 {
        done = done.failure("undecryptable_values");
    }
    audit_platform(db, done).await?;
    Ok(report)
}

async fn audit_platform(db: &Db, event: NewEvent) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    crate::audit::record_as(
        &mut tx,
        None,
        &EventActor::system("keys"),
        &AuditContext::system("keys"),
        event,
    )
    .await?;
    tx.commit().await
}

fn progress_key(target: &str, t: &EncryptedTable, c: &EncryptedColumn) -> sea_query::Condition {
    sea_query::Condition::all()
        .add(Expr::col("target_kid").eq(target))
        .add(Expr::col("table_name").eq(t.table))
        .add(Expr::col("column_name").eq(c.name))
}

async fn rotate_column(
    db: &Db,
    ring: &KeyRing,
    t: &EncryptedTable,
    c: &EncryptedColumn,
    target: &str,
    batch_size: u64,
    report: &mut RotateReport,
) -> Result<(), RotateError> {
    let existing: Option<Progress> = db
        .fetch_optional(
            &Query::select()
                .columns([
                    "target_kid",
                    "table_name",
                    "column_name",
                    "last_id",
                    "rows_rotated",
                    "rows_failed",
                    "started_at",
                    "updated_at",
                    "finished_at",
                ])
                .from("key_rotation_progress")
                .cond_where(progress_key(target, t, c))
                .to_owned(),
        )
        .await?;
    let at = now();
    let (mut last_id, resumed) = match &existing {
        None => {
            db.execute(
                &Query::insert()
                    .into_table("key_rotation_progress")
                    .columns([
                        "target_kid",
                        "table_name",
                        "column_name",
                        "rows_rotated",
                        "rows_failed",
                        "started_at",
                        "updated_at",
                    ])
                    .values_panic([
                        target.into(),
                        t.table.into(),
                        c.name.into(),
                        0i64.into(),
                        0i64.into(),
                        at.into(),
                        at.into(),
                    ])
                    .to_owned(),
            )
            .await?;
            (None, false)
        }
        Some(p) if p.finished_at.is_some() => {
            // Checked again from the start: a node still running with the old key may have
            // written since.
            db.execute(
                &Query::update()
                    .table("key_rotation_progress")
                    .values([
                        ("last_id", Option::<Uuid>::None.into()),
                        ("finished_at", Option::<DateTime<Utc>>::None.into()),
                        ("updated_at", at.into()),
                    ])
                    .cond_where(progress_key(target, t, c))
                    .to_owned(),
            )
            .await?;
            (None, false)
        }
        Some(p) => (p.last_id, true),
    };
    let mut col = ColumnRotation {
        table: t.table.into(),
        column: c.name.into(),
        rotated: 0,
        failed: 0,
        resumed,
    };
    let current = format!("v1.{target}.%");
    loop {
        let mut q = Query::select()
            .expr_as(Expr::col(t.id_column), "id")
            .expr_as(Expr::col(t.org_column), "org")
            .expr_as(Expr::col(c.name), "value")
            .from(t.table)
            .and_where(Expr::col(c.name).is_not_null())
            .and_where(Expr::col(c.name).not_like(current.as_str()))
            .order_by(t.id_column, Order::Asc)
            .limit(batch_size)
            .to_owned();
        if let Some(last) = last_id {
            q.and_where(Expr::col(t.id_column).gt(last));
        }
        let rows: Vec<RotRow> = db.fetch_all(&q).await?;
        let Some(batch_last) = rows.last().map(|r| r.id) else {
            break;
        };
        let mut tx = db.begin().await?;
        let (mut rotated, mut failed) = (0i64, 0i64);
        for row in &rows {
            let ctx = c.context(t.table, row.org, row.id);
            let plain = match ciphertext_kid(&row.value) {
                None if c.legacy_plaintext => Ok(row.value.clone().into_bytes()),
                None => Err(CryptoError::Malformed),
                // Bytes, not text: some columns hold binary secrets (TOTP).
                Some(_) => ring.decrypt(&row.value, &ctx),
            };
            let plain = match plain {
                Ok(p) => p,
                Err(CryptoError::UnknownKey(kid)) => {
                    return Err(RotateError::MissingKey {
                        table: t.table.into(),
                        column: c.name.into(),
                        row: row.id,
                        kid,
                    });
                }
                Err(e) => {
                    failed += 1;
                    if report.failures.len() < MAX_FAILURES_LISTED {
                        report.failures.push(RotateFailure {
                            table: t.table.into(),
                            column: c.name.into(),
                            row: row.id,
                            reason: e.to_string(),
                        });
                    }
                    continue;
                }
            };
            let sealed = ring
                .encrypt(&plain, &ctx)
                .map_err(|e| StoreError::Other(anyhow::anyhow!("cannot encrypt: {e}")))?;
            let mut values = vec![(c.name, sealed.into())];
            if let Some(index) = c.blind_index {
                values.push((
                    index,
                    ring.blind_index_raw(
                        row.org,
                        t.table,
                        c.name,
                        &String::from_utf8_lossy(&plain),
                    )
                    .into(),
                ));
            }
            let changed = tx
                .execute(
                    &Query::update()
                        .table(t.table)
                        .values(values)
                        .and_where(Expr::col(t.id_column).eq(row.id))
                        .and_where(Expr::col(c.name).eq(row.value.as_str()))
                        .to_owned(),
                )
                .await?;
            rotated += i64::try_from(changed).unwrap_or(0);
        }
        tx.execute(
            &Query::update()
                .table("key_rotation_progress")
                .values([
                    ("last_id", batch_last.into()),
                    ("rows_rotated", Expr::col("rows_rotated").add(rotated)),
                    ("rows_failed", Expr::col("rows_failed").add(failed)),
                    ("updated_at", now().into()),
                ])
                .cond_where(progress_key(target, t, c))
                .to_owned(),
        )
        .await?;
        tx.commit().await?;
        col.rotated += u64::try_from(rotated).unwrap_or(0);
        col.failed += u64::try_from(failed).unwrap_or(0);
        last_id = Some(batch_last);
        if (rows.len() as u64) < batch_size {
            break;
        }
    }
    db.execute(
        &Query::update()
            .table("key_rotation_progress")
            .values([("finished_at", now().into()), ("updated_at", now().into())])
            .cond_where(progress_key(target, t, c))
            .to_owned(),
    )
    .await?;
    if col.failed > 0 {
        tracing::warn!(
            table = t.table,
            column = c.name,
            failed = col.failed,
            "some values could not be re-encrypted"
        );
    }
    report.columns.push(col);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_need_plain_identifiers() {
        let ok = EncryptedTable::new("bank_accounts", vec![EncryptedColumn::new("iban")]);
        assert!(ok.problems("m").is_empty());
        let bad = EncryptedTable::new("x; drop", vec![]);
        let p = bad.problems("m");
        assert_eq!(p.len(), 2, "{p:?}");
    }
}
