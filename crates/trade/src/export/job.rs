//! The `trade.export_shipments` job (queue `export`): writes a large export into the kernel's
//! storage for the organization. Idempotent: a ready export is left as it is, and writing the
//! same rows again stores the same object (objects are addressed by checksum).

use keel_kernel::jobs::{JobContext, JobDefinition, JobError, JobPayload};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::rows::{self, Xlsx};
use super::{Format, store};

/// The job's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportShipments {
    pub export_id: Uuid,
}

impl JobPayload for ExportShipments {
    const JOB_TYPE: &'static str = "trade.export_shipments";
}

/// The queue export jobs run on (`keel worker --queues export` runs them apart).
pub const QUEUE: &str = "export";

pub fn job() -> JobDefinition {
    JobDefinition::new(run)
        .queue(QUEUE)
        .max_attempts(3)
        .time_limit(std::time::Duration::from_secs(1800))
}

fn permanent(e: impl std::fmt::Display) -> JobError {
    JobError::Permanent(anyhow::anyhow!("{e}"))
}

/// Writes the export; when it fails for good (a permanent error, or the last attempt) the
/// export is marked `failed` (the job's `error` says why).
async fn run(ctx: JobContext, job: ExportShipments) -> Result<serde_json::Value, JobError> {
    let result = write(&ctx, &job).await;
    if let (Err(e), Some(scope)) = (&result, &ctx.scope) {
        let last = matches!(e, JobError::Permanent(_)) || ctx.attempt >= ctx.max_attempts;
        if last && let Err(store_error) = store::fail(&ctx.state.db, scope, job.export_id).await {
            tracing::warn!(error = %store_error, export_id = %job.export_id, "could not mark an export failed");
        }
    }
    result
}

async fn write(ctx: &JobContext, job: &ExportShipments) -> Result<serde_json::Value, JobError> {
    let scope = ctx
        .scope
        .clone()
        .ok_or_else(|| permanent("an export job runs for an organization"))?;
    let db = &ctx.state.db;
    let export = match store::get_db(db, &scope, job.export_id).await {
        Ok(e) => e,
        Err(keel_kernel::store::StoreError::NotFound) => {
            return Err(permanent("the export no longer exists"));
        }
        Err(e) => return Err(JobError::Retry(e.into())),
    };
    if export.export.status == "ready" {
        return Ok(result(
            job.export_id,
            export.export.row_count.unwrap_or_default(),
            export.export.size_bytes.unwrap_or_default(),
        ));
    }
    let format = Format::parse(&export.export.format).ok_or_else(|| permanent("unknown format"))?;
    let stored: store::StoredFilter = serde_json::from_str(&export.filter).map_err(permanent)?;
    let filter = stored.filter();
    let sort = stored
        .sort()
        .map_err(|e| permanent(format!("the export's sort: {e}")))?;
    let mut csv = rows::csv_header();
    let mut xlsx = match format {
        Format::Xlsx => Some(Xlsx::new().map_err(permanent)?),
        Format::Csv => None,
    };
    let mut count = 0u64;
    let mut after = None;
    loop {
        let (batch, next) = rows::batch(db, &scope, &filter, export.partner_id, &sort, after)
            .await
            .map_err(|e| JobError::Retry(e.into()))?;
        for s in &batch {
            let cells = rows::cells(s);
            match xlsx.as_mut() {
                Some(x) => x.push(&cells).map_err(permanent)?,
                None => rows::csv_record(&mut csv, &cells),
            }
        }
        count += batch.len() as u64;
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let bytes = match xlsx {
        Some(x) => x.finish().map_err(permanent)?,
        None => csv,
    };
    let size = bytes.len() as u64;
    let sha256 = ctx
        .state
        .files
        .put_object(&scope, bytes.into())
        .await
        .map_err(|e| JobError::Retry(anyhow::anyhow!("{e}")))?;
    store::complete(db, &scope, job.export_id, &sha256, count, size)
        .await
        .map_err(|e| JobError::Retry(e.into()))?;
    Ok(result(
        job.export_id,
        i64::try_from(count).unwrap_or(i64::MAX),
        i64::try_from(size).unwrap_or(i64::MAX),
    ))
}

/// The job's result (`GET /api/v1/jobs/{id}`): the export and where its file is.
fn result(export_id: Uuid, rows: i64, size_bytes: i64) -> serde_json::Value {
    serde_json::json!({
        "export_id": export_id,
        "rows": rows,
        "size_bytes": size_bytes,
        "export_url": super::routes::export_url(export_id),
        "download_url": super::routes::download_url(export_id),
    })
}
