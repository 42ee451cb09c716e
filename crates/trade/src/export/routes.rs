//! `GET /api/v1/trade/shipments/export`, `GET /api/v1/trade/exports/{id}` and
//! `GET /api/v1/trade/exports/{id}/download` (all `trade.shipments.read`). Every export is
//! audited (`trade.shipments.exported`).

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_kernel::audit::{self, AuditContext, NewEvent};
use keel_kernel::auth::Authorized;
use keel_kernel::http::pagination::CreatedRangeParams;
use keel_kernel::http::{ApiError, ApiResult, FieldError, Json, Path, Query};
use keel_kernel::module::ModuleRouter;
use keel_kernel::state::AppState;
use keel_kernel::tenancy::TenantScope;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::Format;
use super::job::ExportShipments;
use super::rows::{self, Sort, Xlsx};
use super::store::{self, Export, StoredFilter};
use crate::TradeSettings;
use crate::perms::ShipmentsRead;
use crate::shipments::routes::{ShipmentQuery, both};
use crate::shipments::store::Filter;

pub fn router() -> ModuleRouter {
    ModuleRouter::new()
        .limited(POLICY, utoipa_axum::routes!(export_shipments))
        .routes(utoipa_axum::routes!(get_export))
        .routes(utoipa_axum::routes!(download_export))
}

/// The export route's rate-limit policy: 60 exports an hour per organization (each reads up
/// to `export_async_rows` rows at once, or starts a job).
pub const POLICY: &str = "trade.export";

pub fn policy() -> keel_kernel::limits::Policy {
    keel_kernel::limits::Policy::new(
        POLICY,
        60,
        std::time::Duration::from_secs(3600),
        keel_kernel::limits::KeyKind::Org,
        keel_kernel::limits::FailMode::Local,
    )
}

#[derive(Debug, Default, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `csv` (default) or `xlsx`.
    pub format: Option<String>,
    /// As the list: `created_at` (default `-created_at`, newest first) or `reference`, `-`
    /// for descending. The file has the rows in the order the list's pages show them.
    pub sort: Option<String>,
}

/// The answer when an export runs as a job (`202`, `Location: /api/v1/jobs/<job_id>`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportQueued {
    /// The job writing the file: `GET /api/v1/jobs/{job_id}` (its `result` links the file
    /// once it succeeded).
    pub job_id: Uuid,
    /// `queued`.
    pub status: String,
    pub export_id: Uuid,
    /// Where the export's state is (`GET`; also for partner users, who do not read jobs).
    pub export_url: String,
    /// Where the file will be, once the export is `ready`.
    pub download_url: String,
}

/// Where an export's state is.
pub fn export_url(id: Uuid) -> String {
    format!("/api/v1/trade/exports/{id}")
}

/// Where an export's file is, once it is ready.
pub fn download_url(id: Uuid) -> String {
    format!("/api/v1/trade/exports/{id}/download")
}

/// An export with its links.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportView {
    #[serde(flatten)]
    pub export: Export,
    /// Set once the export is `ready`.
    pub download_url: Option<String>,
}

fn view(e: Export) -> ExportView {
    let download_url = (e.status == "ready").then(|| download_url(e.id));
    ExportView {
        export: e,
        download_url,
    }
}

fn file_name(format: Format) -> String {
    format!(
        "shipments-{}.{}",
        chrono::Utc::now().format("%Y%m%d-%H%M%S"),
        format.as_str()
    )
}

fn attachment(format: Format, name: &str) -> [(header::HeaderName, String); 3] {
    [
        (header::CONTENT_TYPE, format.content_type().to_string()),
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ),
        (header::CACHE_CONTROL, "no-store".to_string()),
    ]
}

/// Exports the shipments the list would show for the same filters and sort (all pages, in
/// the list's order) as CSV or XLSX. Up to `export_async_rows` rows (100,000 by default) the
/// answer is the file (CSV streamed); above it, 202 with `Location: /api/v1/jobs/<job_id>`
/// and a job writes the file (its result's `download_url`).
#[utoipa::path(get, path = "/api/v1/trade/shipments/export", tag = "trade",
    security(("bearer" = ["trade.shipments.read"])),
    params(ExportQuery, ShipmentQuery, CreatedRangeParams),
    responses(
        (status = 200, description = "The file, as an attachment", content(
            (String = "text/csv"),
            (String = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"))),
        (status = 202, body = ExportQueued, description = "Too many rows to answer at once: a job writes the file",
            headers(("Location" = String, description = "The job: /api/v1/jobs/<job_id>"))),
        (status = 422, description = "Invalid format, filter or sort")))]
pub async fn export_shipments(
    State(state): State<AppState>,
    auth: Authorized<ShipmentsRead>,
    ctx: AuditContext,
    Query(params): Query<ExportQuery>,
    Query(query): Query<ShipmentQuery>,
    Query(range): Query<CreatedRangeParams>,
) -> ApiResult<Response> {
    let format = match params.format.as_deref() {
        None => Ok(Format::Csv),
        Some(f) => Format::parse(f).ok_or_else(|| {
            ApiError::validation(vec![FieldError::new("format", "must be csv or xlsx")])
        }),
    };
    let ((format, filter), sort) = both(
        both(format, query.filter(&range)),
        Sort::parse(params.sort.as_deref()),
    )?;
    let scope = auth.scope();
    let threshold = TradeSettings::of(&state).export_async_rows;
    let n = rows::count_capped(&state.db, &scope, &filter, threshold).await?;
    let stored = StoredFilter::of(&filter, &sort);
    if n > threshold {
        let (scope, ctx, stored) = (&scope, &ctx, &stored);
        let jobs = &state.jobs;
        let queued = crate::dashboard::write(&state, scope, |tx| {
            Box::pin(async move {
                let e = store::insert(tx, scope, format, stored, crate::actor_id(scope)).await?;
                let job_id = jobs
                    .enqueue(tx, Some(scope), &ExportShipments { export_id: e.id })
                    .await?;
                store::set_job(tx, scope, e.id, job_id).await?;
                audit::record(
                    tx,
                    scope,
                    ctx,
                    NewEvent::new("trade.shipments.exported", "trade.export", Some(e.id))
                        .detail("format", format.as_str())
                        .detail("filter", stored)
                        .detail("async", true),
                )
                .await?;
                Ok::<_, ApiError>(ExportQueued {
                    job_id,
                    status: "queued".into(),
                    export_id: e.id,
                    export_url: export_url(e.id),
                    download_url: download_url(e.id),
                })
            })
        })
        .await?;
        let location = format!("/api/v1/jobs/{}", queued.job_id);
        return Ok((
            StatusCode::ACCEPTED,
            [(header::LOCATION, location)],
            Json(queued),
        )
            .into_response());
    }
    {
        let (scope, ctx, stored) = (&scope, &ctx, &stored);
        crate::dashboard::write(&state, scope, |tx| {
            Box::pin(async move {
                audit::record(
                    tx,
                    scope,
                    ctx,
                    NewEvent::new("trade.shipments.exported", "trade.export", None::<Uuid>)
                        .detail("format", format.as_str())
                        .detail("filter", stored)
                        .detail("rows", n),
                )
                .await?;
                Ok::<_, ApiError>(())
            })
        })
        .await?;
    }
    let name = file_name(format);
    match format {
        Format::Csv => {
            let body = Body::from_stream(csv_stream(state.db.clone(), scope, filter, sort));
            Ok((attachment(format, &name), body).into_response())
        }
        Format::Xlsx => {
            let mut x = Xlsx::new().map_err(ApiError::internal)?;
            let mut after = None;
            loop {
                let (batch, next) =
                    rows::batch(&state.db, &scope, &filter, None, &sort, after).await?;
                for s in &batch {
                    x.push(&rows::cells(s)).map_err(ApiError::internal)?;
                }
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            let bytes = x.finish().map_err(ApiError::internal)?;
            Ok((attachment(format, &name), bytes).into_response())
        }
    }
}

/// The CSV, one keyset batch at a time: the header first, then each batch as it is read.
fn csv_stream(
    db: keel_kernel::store::Db,
    scope: TenantScope,
    filter: Filter,
    sort: Sort,
) -> impl futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + 'static {
    enum Step {
        Header,
        After(rows::After),
        Done,
    }
    futures::stream::try_unfold(Step::Header, move |step| {
        let (db, scope, filter, sort) = (db.clone(), scope.clone(), filter.clone(), sort.clone());
        async move {
            let after = match step {
                Step::Done => return Ok(None),
                Step::Header => {
                    return Ok(Some((
                        axum::body::Bytes::from(rows::csv_header()),
                        Step::After(None),
                    )));
                }
                Step::After(a) => a,
            };
            let (batch, next) = rows::batch(&db, &scope, &filter, None, &sort, after)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "a CSV export stopped");
                    std::io::Error::other("the export could not be completed")
                })?;
            let mut out = Vec::with_capacity(batch.len() * 200);
            for s in &batch {
                rows::csv_record(&mut out, &rows::cells(s));
            }
            let step = match next {
                Some(n) => Step::After(Some(n)),
                None => Step::Done,
            };
            Ok::<_, std::io::Error>(Some((axum::body::Bytes::from(out), step)))
        }
    })
}

/// An export's state (`queued`, `ready` with its `download_url`, or `failed`).
#[utoipa::path(get, path = "/api/v1/trade/exports/{id}", tag = "trade",
    security(("bearer" = ["trade.shipments.read"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ExportView), (status = 404, description = "No such export")))]
pub async fn get_export(
    State(state): State<AppState>,
    auth: Authorized<ShipmentsRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ExportView>> {
    let e = store::get_db(&state.db, &auth.scope(), id).await?;
    Ok(Json(view(e.export)))
}

/// Downloads a ready export (same organization only; a partner user only their own).
#[utoipa::path(get, path = "/api/v1/trade/exports/{id}/download", tag = "trade",
    security(("bearer" = ["trade.shipments.read"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, description = "The file, as an attachment", content(
            (String = "text/csv"),
            (String = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"))),
        (status = 404, description = "No such export"),
        (status = 409, description = "Not ready yet, or failed")))]
pub async fn download_export(
    State(state): State<AppState>,
    auth: Authorized<ShipmentsRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let scope = auth.scope();
    let e = store::get_db(&state.db, &scope, id).await?;
    let (Some(sha), "ready") = (e.sha256.as_deref(), e.export.status.as_str()) else {
        let why = if e.export.status == "failed" {
            "the export failed (its job's error says why); request it again"
        } else {
            "the export is not ready yet"
        };
        return Err(ApiError::conflict(why).with_extra("status", e.export.status.clone()));
    };
    let format = Format::parse(&e.export.format)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("export {id} has an unknown format")))?;
    let bytes = state.files.get_object(&scope, sha).await?;
    let name = format!(
        "shipments-{}.{}",
        e.export.created_at.format("%Y%m%d-%H%M%S"),
        format.as_str()
    );
    Ok((attachment(format, &name), bytes).into_response())
}
