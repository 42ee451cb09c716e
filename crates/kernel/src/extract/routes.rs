//! `/api/v1/extractions`: start an extraction of a stored file (202, a job on the `ocr`
//! queue, under the `ocr` rate-limit policy), read it, correct it.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Correction, Extraction};
use crate::audit::AuditContext;
use crate::auth::Authorized;
use crate::auth::access::perms;
use crate::http::{ApiError, ApiResult, Json, Path, expected_version};
use crate::module::ModuleRouter;
use crate::state::AppState;

pub fn router() -> ModuleRouter {
    ModuleRouter::new()
        .limited("ocr", utoipa_axum::routes!(start_extraction))
        .routes(utoipa_axum::routes!(get_extraction, correct_extraction))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct StartExtraction {
    /// The stored file's SHA-256.
    pub file: String,
    /// `invoice`, or a document type an app registered.
    #[serde(default = "invoice")]
    pub document_type: String,
}

fn invoice() -> String {
    super::INVOICE.into()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExtractionStarted {
    pub job_id: Uuid,
    /// Always `queued`.
    pub status: &'static str,
    pub extraction_id: Uuid,
}

/// Starts extracting a stored file's fields; the work runs as a job on the `ocr` queue.
#[utoipa::path(post, path = "/api/v1/extractions", tag = "extraction",
    security(("bearer" = ["files.write"])),
    request_body = StartExtraction,
    responses((status = 202, body = ExtractionStarted),
        (status = 422, description = "Unknown file or document type"),
        (status = 429, description = "The ocr rate limit")))]
pub async fn start_extraction(
    State(state): State<AppState>,
    auth: Authorized<perms::FilesWrite>,
    Json(body): Json<StartExtraction>,
) -> ApiResult<Response> {
    let scope = auth.scope();
    let mut tx = state.db.begin().await?;
    let started = super::start(&state, &mut tx, &scope, &body.file, &body.document_type).await?;
    tx.commit().await?;
    Ok((
        StatusCode::ACCEPTED,
        [(
            header::LOCATION,
            format!("/api/v1/extractions/{}", started.extraction_id),
        )],
        Json(ExtractionStarted {
            job_id: started.job_id,
            status: "queued",
            extraction_id: started.extraction_id,
        }),
    )
        .into_response())
}

/// Reads an extraction: its status, the engine's result and any correction.
#[utoipa::path(get, path = "/api/v1/extractions/{id}", tag = "extraction",
    security(("bearer" = ["files.read"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Extraction), (status = 404, description = "No such extraction")))]
pub async fn get_extraction(
    State(state): State<AppState>,
    auth: Authorized<perms::FilesRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Extraction>> {
    Ok(Json(super::get(&state, &auth.scope(), id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CorrectionInput {
    #[serde(flatten)]
    pub correction: Correction,
    pub version: Option<i64>,
}

/// Corrects an extraction's fields; the corrected result is stored beside the original,
/// re-checked and audited (`extraction.corrected`).
#[utoipa::path(patch, path = "/api/v1/extractions/{id}", tag = "extraction",
    security(("bearer" = ["extraction.review"])),
    params(("id" = Uuid, Path)),
    request_body = CorrectionInput,
    responses((status = 200, body = Extraction), (status = 404, description = "No such extraction"),
        (status = 409, description = "Not extracted yet, or a stale version"),
        (status = 412, description = "Stale If-Match"),
        (status = 422, description = "Invalid corrections")))]
pub async fn correct_extraction(
    State(state): State<AppState>,
    auth: Authorized<perms::ExtractionReview>,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<CorrectionInput>,
) -> ApiResult<Json<Extraction>> {
    let expected = expected_version(&headers, body.version)?;
    let result = super::correct(
        &state,
        &auth.scope(),
        &ctx,
        id,
        &body.correction,
        expected.map(|e| e.version),
    )
    .await;
    match result {
        Err(super::ExtractError::Stale) => Err(expected
            .map(|e| e.stale())
            .unwrap_or_else(|| crate::http::stale(false))),
        other => Ok(Json(other.map_err(ApiError::from)?)),
    }
}
