//! Migrations: each module owns an ordered list; each migration runs in its own transaction
//! and is recorded with a SHA-384 checksum. A migration edited after it was applied stops
//! start-up, as does one the database knows but this build does not (a newer Keel ran on it).
//!
//! DDL differs between engines (types, triggers), so a migration carries one SQL script per
//! engine; queries elsewhere are written once through the query builder.
//!
//! Concurrency: on PostgreSQL each migration transaction first takes an advisory transaction
//! lock, so nodes starting together apply each migration once; on SQLite the transaction is
//! `BEGIN IMMEDIATE`, the database's single-writer lock.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use sea_query::{Expr, ExprTrait, Order, Query};
use sha2::{Digest, Sha384};

use super::{Db, StoreError, Tx, now};
use crate::config::DatabaseKind;

/// One migration of one module. Build it with [`crate::migration!`].
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

impl Migration {
    pub fn sql(&self, kind: DatabaseKind) -> &'static str {
        match kind {
            DatabaseKind::Sqlite => self.sqlite,
            DatabaseKind::Postgres => self.postgres,
        }
    }

    pub fn checksum(&self, kind: DatabaseKind) -> String {
        hex::encode(Sha384::digest(self.sql(kind).as_bytes()))
    }
}

/// Declares a migration from `<dir>/sqlite/<file>.sql` and `<dir>/postgres/<file>.sql`
/// relative to the calling crate's manifest, embedding both in the binary.
///
/// ```text
/// keel_kernel::migration!(1, "0001_identity", "migrations")
/// ```
#[macro_export]
macro_rules! migration {
    ($version:expr, $file:literal, $dir:literal) => {
        $crate::store::migrate::Migration {
            version: $version,
            name: $file,
            sqlite: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/",
                $dir,
                "/sqlite/",
                $file,
                ".sql"
            )),
            postgres: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/",
                $dir,
                "/postgres/",
                $file,
                ".sql"
            )),
        }
    };
}

/// A module's migrations, in order.
#[derive(Debug, Clone)]
pub struct ModuleMigrations {
    pub module: &'static str,
    pub migrations: Vec<Migration>,
}

/// Why the schema cannot be used by this build.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "migration {module}/{name} was edited after it was applied (checksum differs); restore the original file and add a new migration instead"
    )]
    Modified { module: String, name: String },
    #[error(
        "the database has migration {module}/{version} that this build does not know; was a newer Keel run against it?"
    )]
    Unknown { module: String, version: i64 },
    #[error("migration {module}/{name} failed: {source}")]
    Failed {
        module: String,
        name: String,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    Applied,
    Pending,
    /// Applied, but its file has changed since.
    Modified,
    /// Applied by another build; this one does not have it.
    Unknown,
}

/// One line of `keel migrate status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationStatus {
    pub module: String,
    pub version: i64,
    pub name: String,
    pub state: MigrationState,
    pub applied_at: Option<DateTime<Utc>>,
}

#[derive(Debug, sqlx::FromRow, serde::Deserialize)]
struct AppliedRow {
    module: String,
    version: i64,
    name: String,
    checksum: String,
    applied_at: DateTime<Utc>,
}

const TABLE: &str = "keel_migrations";
/// Advisory lock key for migrations on PostgreSQL ("keel" + "migr" as ASCII).
const PG_LOCK_KEY: i64 = 0x6b65_656c_6d69_6772;

const CREATE_SQLITE: &str = "CREATE TABLE IF NOT EXISTS keel_migrations (
    module TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (module, version)
)";

const CREATE_POSTGRES: &str = "CREATE TABLE IF NOT EXISTS keel_migrations (
    module TEXT NOT NULL,
    version BIGINT NOT NULL,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (module, version)
)";

async fn lock(tx: &mut Tx) -> Result<(), StoreError> {
    if tx.kind() == DatabaseKind::Postgres {
        tx.execute_script(&format!("SELECT pg_advisory_xact_lock({PG_LOCK_KEY})"))
            .await?;
    }
    Ok(())
}

async fn ensure_table(db: &Db) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    lock(&mut tx).await?;
    let ddl = match db.kind() {
        DatabaseKind::Sqlite => CREATE_SQLITE,
        DatabaseKind::Postgres => CREATE_POSTGRES,
    };
    tx.execute_script(ddl).await?;
    tx.commit().await
}

fn select_applied() -> sea_query::SelectStatement {
    Query::select()
        .columns(["module", "version", "name", "checksum", "applied_at"])
        .from(TABLE)
        .order_by("module", Order::Asc)
        .order_by("version", Order::Asc)
        .to_owned()
}

async fn applied(db: &Db) -> Result<Vec<AppliedRow>, StoreError> {
    db.fetch_all(&select_applied()).await
}

/// The state of every migration of the given modules (and of unknown ones in the database).
pub async fn status(
    db: &Db,
    modules: &[ModuleMigrations],
) -> Result<Vec<MigrationStatus>, StoreError> {
    // Read first: a status check (`keel migrate status`, `keel audit verify`) beside a running
    // node needs no write lock unless the table does not exist yet.
    let rows = match applied(db).await {
        Ok(rows) => rows,
        Err(_) => {
            ensure_table(db).await?;
            applied(db).await?
        }
    };
    let kind = db.kind();
    let mut by_key: HashMap<(String, i64), AppliedRow> = rows
        .into_iter()
        .map(|r| ((r.module.clone(), r.version), r))
        .collect();
    let mut out = Vec::new();
    for m in modules {
        for mig in &m.migrations {
            let key = (m.module.to_string(), mig.version);
            let (state, applied_at) = match by_key.remove(&key) {
                Some(row) if row.checksum == mig.checksum(kind) => {
                    (MigrationState::Applied, Some(row.applied_at))
                }
                Some(row) => (MigrationState::Modified, Some(row.applied_at)),
                None => (MigrationState::Pending, None),
            };
            out.push(MigrationStatus {
                module: m.module.to_string(),
                version: mig.version,
                name: mig.name.to_string(),
                state,
                applied_at,
            });
        }
    }
    // Rows left belong to modules this build has (unknown versions) or to disabled modules
    // (ignored: switching a module off must not stop start-up).
    let known_modules: Vec<&str> = modules.iter().map(|m| m.module).collect();
    let mut rest: Vec<AppliedRow> = by_key
        .into_values()
        .filter(|r| known_modules.contains(&r.module.as_str()))
        .collect();
    rest.sort_by(|a, b| (&a.module, a.version).cmp(&(&b.module, b.version)));
    out.extend(rest.into_iter().map(|r| MigrationStatus {
        module: r.module,
        version: r.version,
        name: r.name,
        state: MigrationState::Unknown,
        applied_at: Some(r.applied_at),
    }));
    Ok(out)
}

/// Checks every applied migration against this build; refuses edited or unknown ones.
pub async fn verify(
    db: &Db,
    modules: &[ModuleMigrations],
) -> Result<Vec<MigrationStatus>, MigrateError> {
    let all = status(db, modules).await?;
    for s in &all {
        match s.state {
            MigrationState::Modified => {
                return Err(MigrateError::Modified {
                    module: s.module.clone(),
                    name: s.name.clone(),
                });
            }
            MigrationState::Unknown => {
                return Err(MigrateError::Unknown {
                    module: s.module.clone(),
                    version: s.version,
                });
            }
            _ => {}
        }
    }
    Ok(all)
}

/// Applies every pending migration, module by module in the given order. Returns the names
/// applied. Refuses to run anything when an applied migration was edited.
pub async fn run(db: &Db, modules: &[ModuleMigrations]) -> Result<Vec<String>, MigrateError> {
    verify(db, modules).await?;
    let kind = db.kind();
    let mut done = Vec::new();
    for m in modules {
        let mut sorted = m.migrations.clone();
        sorted.sort_by_key(|x| x.version);
        for mig in sorted {
            let failed = |source: StoreError| MigrateError::Failed {
                module: m.module.to_string(),
                name: mig.name.to_string(),
                source,
            };
            let mut tx = db.begin().await?;
            lock(&mut tx).await.map_err(failed)?;
            // Checked inside the locked transaction: another node may have just applied it.
            let existing: Option<AppliedRow> = tx
                .fetch_optional(
                    &select_applied()
                        .and_where(Expr::col("module").eq(m.module))
                        .and_where(Expr::col("version").eq(mig.version))
                        .to_owned(),
                )
                .await
                .map_err(failed)?;
            if let Some(row) = existing {
                if row.checksum != mig.checksum(kind) {
                    return Err(MigrateError::Modified {
                        module: m.module.to_string(),
                        name: mig.name.to_string(),
                    });
                }
                continue;
            }
            let started = Instant::now();
            tx.execute_script(mig.sql(kind)).await.map_err(failed)?;
            let insert = Query::insert()
                .into_table(TABLE)
                .columns([
                    "module",
                    "version",
                    "name",
                    "checksum",
                    "applied_at",
                    "duration_ms",
                ])
                .values_panic([
                    m.module.into(),
                    mig.version.into(),
                    mig.name.into(),
                    mig.checksum(kind).into(),
                    now().into(),
                    (started.elapsed().as_millis() as i64).into(),
                ])
                .to_owned();
            tx.execute(&insert).await.map_err(failed)?;
            tx.commit().await.map_err(failed)?;
            tracing::info!(module = m.module, migration = mig.name, "migration applied");
            done.push(format!("{}/{}", m.module, mig.name));
        }
    }
    Ok(done)
}

/// Migrations not yet applied (for readiness).
pub async fn pending_count(db: &Db, modules: &[ModuleMigrations]) -> Result<usize, StoreError> {
    let rows = applied(db).await?;
    let kind = db.kind();
    let applied: HashMap<(String, i64), String> = rows
        .into_iter()
        .map(|r| ((r.module, r.version), r.checksum))
        .collect();
    Ok(modules
        .iter()
        .flat_map(|m| m.migrations.iter().map(move |mig| (m.module, mig)))
        .filter(|(module, mig)| {
            applied.get(&(module.to_string(), mig.version)) != Some(&mig.checksum(kind))
        })
        .count())
}
