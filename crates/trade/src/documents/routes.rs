//! `/api/v1/trade/shipments/{id}/documents` and `/api/v1/trade/documents/{id}`: upload a
//! shipment's documents (multipart), read, download and delete them, extract their fields
//! (202 and a job, under the `trade.extract` rate limit) and review the extraction. Uploads
//! and deletions commit with their audit events (`trade.document.uploaded|deleted`).

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_kernel::audit::{self, AuditContext, NewEvent};
use keel_kernel::auth::Authorized;
use keel_kernel::extract::{ExtractError, Extraction};
use keel_kernel::http::concurrency::{expected_version, stale_for, version_of};
use keel_kernel::http::pagination::{PageParams, Paged};
use keel_kernel::http::{ApiError, ApiResult, FieldError, Json, Path, Query};
use keel_kernel::module::ModuleRouter;
use keel_kernel::state::AppState;
use keel_kernel::tenancy::TenantScope;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::multipart;
use super::store::{self, Document};
use super::{DocType, ExtractTradeDocument};
use crate::perms::{DocumentsRead, DocumentsWrite};
use crate::shipments::store as shipments;

/// The rate-limit policy of starting an extraction: 20 an hour per organization.
pub const EXTRACT_POLICY: &str = "trade.extract";

pub fn router() -> ModuleRouter {
    // Uploads are bounded by `files.max_bytes` (checked by the file storage) and by the
    // global `http.body_limit_bytes` layer, not by axum's default 2 MiB extractor limit.
    let (schemas, paths, method_router) = utoipa_axum::routes!(upload_document, list_documents);
    ModuleRouter::new()
        .routes((
            schemas,
            paths,
            method_router.layer(DefaultBodyLimit::disable()),
        ))
        .routes(utoipa_axum::routes!(get_document, delete_document))
        .routes(utoipa_axum::routes!(document_content))
        .routes(utoipa_axum::routes!(download_document))
        .limited(EXTRACT_POLICY, utoipa_axum::routes!(extract_document))
        .routes(utoipa_axum::routes!(
            get_document_extraction,
            correct_document_extraction
        ))
}

/// The form of an upload: the `document_type` and the `file`.
struct Upload {
    doc_type: DocType,
    file_name: Option<String>,
    content_type: Option<String>,
    bytes: Bytes,
}

fn read_form(headers: &HeaderMap, body: &Bytes) -> Result<Upload, ApiError> {
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(multipart::boundary)
        .ok_or_else(|| {
            ApiError::unsupported_media_type(
                "send the document as multipart/form-data with the parts `document_type` and `file`",
            )
        })?;
    let parts = multipart::parse(body, &boundary)
        .map_err(|why| ApiError::bad_request(format!("the form cannot be read: {why}")))?;
    let mut errors = Vec::new();
    let mut doc_type = None;
    let mut file = None;
    for part in parts {
        match part.name.as_str() {
            // `type` is accepted as another name for `document_type`.
            name @ ("document_type" | "type") => {
                let raw = String::from_utf8_lossy(&part.body);
                match DocType::parse(raw.trim()) {
                    Some(t) => doc_type = Some(t),
                    None => errors.push(FieldError::new(
                        name,
                        format!("must be one of {}", DocType::names()),
                    )),
                }
            }
            "file" => file = Some(part),
            other => errors.push(FieldError::new(
                other,
                "is not a field of a document upload",
            )),
        }
    }
    let type_named = errors
        .iter()
        .any(|e| e.field == "document_type" || e.field == "type");
    if doc_type.is_none() && !type_named {
        errors.push(FieldError::new(
            "document_type",
            format!("is required: one of {}", DocType::names()),
        ));
    }
    match &file {
        None => errors.push(FieldError::new("file", "is required (a file part)")),
        Some(f) if f.body.is_empty() => errors.push(FieldError::new("file", "must not be empty")),
        Some(f) if f.file_name.as_deref().is_some_and(|n| n.len() > 255) => errors.push(
            FieldError::new("file", "its file name must be at most 255 characters"),
        ),
        Some(_) => {}
    }
    match (doc_type, file) {
        (Some(doc_type), Some(file)) if errors.is_empty() => Ok(Upload {
            doc_type,
            file_name: file.file_name,
            content_type: file.content_type,
            bytes: file.body,
        }),
        _ => Err(ApiError::validation(errors)),
    }
}

/// Uploads a document of a shipment as `multipart/form-data`: a `document_type` part
/// (`commercial_invoice`, `packing_list`, `shipping_bill`, `bill_of_lading`,
/// `certificate_of_origin`, `bank_realisation_certificate` or `other`) and a `file` part (PDF,
/// PNG, JPEG, WebP or GIF, typed by its magic bytes, at most `files.max_bytes`).
#[utoipa::path(post, path = "/api/v1/trade/shipments/{id}/documents", tag = "trade",
    security(("bearer" = ["trade.documents.write"])),
    params(("id" = Uuid, Path, description = "The shipment")),
    request_body(content = Vec<u8>, content_type = "multipart/form-data",
        description = "Parts: `document_type` (text; `type` is accepted too) and `file` (the document)"),
    responses((status = 201, body = Document),
        (status = 400, description = "A malformed form"),
        (status = 404, description = "No such shipment"),
        (status = 413, description = "Larger than files.max_bytes"),
        (status = 415, description = "Not a form, or the file is not a PDF, PNG, JPEG, WebP or GIF"),
        (status = 422, description = "Unknown type, no file, or content that does not match its declared type or name")))]
pub async fn upload_document(
    State(state): State<AppState>,
    auth: Authorized<DocumentsWrite>,
    ctx: AuditContext,
    Path(shipment_id): Path<Uuid>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let scope = &auth.scope();
    shipments::get_db(&state.db, scope, shipment_id).await?;
    let upload = read_form(&headers, &body)?;
    let (file, _) = state
        .files
        .put(
            &state.db,
            scope,
            upload.file_name.as_deref(),
            upload.content_type.as_deref(),
            upload.bytes,
        )
        .await?;
    let (ctx, file, doc_type) = (&ctx, &file, upload.doc_type);
    let document = crate::dashboard::write(&state, scope, |tx| {
        Box::pin(async move {
            shipments::get(tx, scope, shipment_id).await?;
            let d = store::insert(
                tx,
                scope,
                shipment_id,
                doc_type,
                file,
                crate::actor_id(scope),
            )
            .await?;
            audit::record(
                tx,
                scope,
                ctx,
                NewEvent::new("trade.document.uploaded", "trade.document", Some(d.id))
                    .detail("shipment_id", shipment_id)
                    .detail("document_type", doc_type.as_str())
                    .detail("sha256", &d.sha256)
                    .detail("size", d.size),
            )
            .await?;
            Ok::<_, ApiError>(d)
        })
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        [(
            header::LOCATION,
            format!("/api/v1/trade/documents/{}", document.id),
        )],
        Json(document),
    )
        .into_response())
}

/// Lists a shipment's documents, newest first.
#[utoipa::path(get, path = "/api/v1/trade/shipments/{id}/documents", tag = "trade",
    security(("bearer" = ["trade.documents.read"])),
    params(("id" = Uuid, Path, description = "The shipment"), PageParams),
    responses((status = 200, body = Paged<Document>), (status = 404, description = "No such shipment"),
        (status = 422, description = "Invalid page")))]
pub async fn list_documents(
    State(state): State<AppState>,
    auth: Authorized<DocumentsRead>,
    Path(shipment_id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Paged<Document>>> {
    let scope = auth.scope();
    let page = page.resolve(&["created_at"], "-created_at")?;
    shipments::get_db(&state.db, &scope, shipment_id).await?;
    let (rows, total) = store::list(&state.db, &scope, shipment_id, &page).await?;
    Ok(Json(Paged::from_rows(rows, &page, total)))
}

/// Reads a document.
#[utoipa::path(get, path = "/api/v1/trade/documents/{id}", tag = "trade",
    security(("bearer" = ["trade.documents.read"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Document), (status = 404, description = "No such document")))]
pub async fn get_document(
    State(state): State<AppState>,
    auth: Authorized<DocumentsRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Document>> {
    Ok(Json(store::get_db(&state.db, &auth.scope(), id).await?))
}

/// Deletes a document (audited as `trade.document.deleted`). The content stays in the
/// organization's file storage, which is shared by checksum (`DELETE /api/v1/files/{sha256}`
/// removes it); its extractions stay too.
#[utoipa::path(delete, path = "/api/v1/trade/documents/{id}", tag = "trade",
    security(("bearer" = ["trade.documents.write"])),
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such document")))]
pub async fn delete_document(
    State(state): State<AppState>,
    auth: Authorized<DocumentsWrite>,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let (scope, ctx) = (&auth.scope(), &ctx);
    crate::dashboard::write(&state, scope, |tx| {
        Box::pin(async move {
            let before = store::get(tx, scope, id).await?;
            if !store::delete(tx, scope, id).await? {
                return Err(ApiError::not_found());
            }
            audit::record(
                tx,
                scope,
                ctx,
                NewEvent::new("trade.document.deleted", "trade.document", Some(id))
                    .detail("shipment_id", before.shipment_id)
                    .detail("document_type", &before.doc_type)
                    .detail("sha256", &before.sha256)
                    .detail("file_name", &before.file_name),
            )
            .await?;
            Ok::<_, ApiError>(())
        })
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Downloads a document's content (as an attachment, never rendered inline).
#[utoipa::path(get, path = "/api/v1/trade/documents/{id}/content", tag = "trade",
    security(("bearer" = ["trade.documents.read"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, description = "The file", content_type = "application/octet-stream"),
        (status = 404, description = "No such document")))]
pub async fn document_content(
    State(state): State<AppState>,
    auth: Authorized<DocumentsRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    content(&state, &auth.scope(), id).await
}

/// Downloads a document's content: the same as `GET …/{id}/content`.
#[utoipa::path(get, path = "/api/v1/trade/documents/{id}/download", tag = "trade",
    security(("bearer" = ["trade.documents.read"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, description = "The file", content_type = "application/octet-stream"),
        (status = 404, description = "No such document")))]
pub async fn download_document(
    State(state): State<AppState>,
    auth: Authorized<DocumentsRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    content(&state, &auth.scope(), id).await
}

async fn content(state: &AppState, scope: &TenantScope, id: Uuid) -> ApiResult<Response> {
    let doc = store::get_db(&state.db, scope, id).await?;
    let (file, bytes) = state.files.get(&state.db, scope, &doc.sha256).await?;
    let name: String = doc
        .file_name
        .as_deref()
        .unwrap_or("document")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut response = bytes.into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&file.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", file.sha256)) {
        h.insert(header::ETAG, v);
    }
    Ok(response)
}

/// What starting an extraction answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExtractionStarted {
    pub document_id: Uuid,
    pub extraction_id: Uuid,
    pub job_id: Uuid,
    /// Always `queued`.
    pub status: &'static str,
}

/// Starts extracting a document's fields: 202 with the job (`Location: /api/v1/jobs/<id>`);
/// the result is at
/// `GET …/extraction` and, when it finishes, `trade.document.extracted` reaches the
/// organization's realtime channel. Documents of type `other` are not extracted.
#[utoipa::path(post, path = "/api/v1/trade/documents/{id}/extract", tag = "trade",
    security(("bearer" = ["trade.documents.write"])),
    params(("id" = Uuid, Path)),
    responses((status = 202, body = ExtractionStarted),
        (status = 404, description = "No such document"),
        (status = 409, description = "An extraction of this document is still queued or running"),
        (status = 422, description = "The document's type is not extracted"),
        (status = 429, description = "The trade.extract rate limit (20 an hour per organization)")))]
pub async fn extract_document(
    State(state): State<AppState>,
    auth: Authorized<DocumentsWrite>,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let (state, scope, ctx) = (&state, &auth.scope(), &ctx);
    let started = crate::dashboard::write(state, scope, |tx| {
        Box::pin(async move {
            let doc = store::get(tx, scope, id).await?;
            let Some(extraction_type) =
                DocType::parse(&doc.doc_type).and_then(DocType::extraction_type)
            else {
                return Err(ApiError::invalid_field(
                    "document_type",
                    format!("documents of type {} are not extracted", doc.doc_type),
                ));
            };
            if let Some(current) = doc.extraction_id {
                // The kernel's record says whether it is still under way (the document's
                // own note may lag behind a job that gave up).
                match keel_kernel::extract::get(state, scope, current).await {
                    Ok(e) if matches!(e.status.as_str(), "queued" | "running") => {
                        return Err(ApiError::conflict(
                            "an extraction of this document is still under way",
                        )
                        .with_extra("extraction_id", current.to_string()));
                    }
                    Ok(_) | Err(ExtractError::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let started = keel_kernel::extract::start_with(
                state,
                tx,
                scope,
                &doc.sha256,
                extraction_type,
                |extraction_id| ExtractTradeDocument {
                    document_id: id,
                    extraction_id,
                },
            )
            .await
            .map_err(|e| match e {
                // The content was removed from file storage under the document.
                ExtractError::Invalid(_) => {
                    ApiError::conflict("the document's file is no longer stored")
                }
                other => other.into(),
            })?;
            if !store::set_extraction(tx, scope, &doc, started.extraction_id).await? {
                return Err(ApiError::conflict("the document changed meanwhile; retry"));
            }
            audit::record(
                tx,
                scope,
                ctx,
                NewEvent::new(
                    "trade.document.extraction_started",
                    "trade.document",
                    Some(id),
                )
                .detail("extraction_id", started.extraction_id)
                .detail("job_id", started.job_id),
            )
            .await?;
            Ok::<_, ApiError>(started)
        })
    })
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/api/v1/jobs/{}", started.job_id))],
        Json(ExtractionStarted {
            document_id: id,
            extraction_id: started.extraction_id,
            job_id: started.job_id,
            status: "queued",
        }),
    )
        .into_response())
}

async fn current_extraction(
    state: &AppState,
    scope: &TenantScope,
    id: Uuid,
) -> Result<(Document, Uuid), ApiError> {
    let doc = store::get_db(&state.db, scope, id).await?;
    let Some(extraction_id) = doc.extraction_id else {
        return Err(ApiError::not_found().with_errors(vec![FieldError::new(
            "extraction",
            "this document was not extracted yet (POST …/extract)",
        )]));
    };
    Ok((doc, extraction_id))
}

/// Reads the document's latest extraction: its status (`queued`, `running`, `completed`,
/// `review_required`, `failed`), the engine's fields with their confidence, the validation
/// issues, and any reviewer's correction beside the original.
#[utoipa::path(get, path = "/api/v1/trade/documents/{id}/extraction", tag = "trade",
    security(("bearer" = ["trade.documents.read"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Extraction),
        (status = 404, description = "No such document, or not extracted yet")))]
pub async fn get_document_extraction(
    State(state): State<AppState>,
    auth: Authorized<DocumentsRead>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Extraction>> {
    let scope = auth.scope();
    let (_, extraction_id) = current_extraction(&state, &scope, id).await?;
    Ok(Json(
        keel_kernel::extract::get(&state, &scope, extraction_id).await?,
    ))
}

/// Corrects the document's latest extraction: `fields` to set (`null` removes one) and
/// optionally all `line_items`. The correction is stored beside the engine's result,
/// re-validated and re-scored, and audited (`extraction.corrected`).
#[utoipa::path(patch, path = "/api/v1/trade/documents/{id}/extraction", tag = "trade",
    security(("bearer" = ["trade.documents.write"])),
    params(("id" = Uuid, Path)),
    request_body = keel_kernel::extract::routes::CorrectionInput,
    responses((status = 200, body = Extraction),
        (status = 404, description = "No such document, or not extracted yet"),
        (status = 409, description = "Not finished yet, or a stale version"),
        (status = 412, description = "Stale If-Match"),
        (status = 422, description = "Invalid corrections")))]
pub async fn correct_document_extraction(
    State(state): State<AppState>,
    auth: Authorized<DocumentsWrite>,
    ctx: AuditContext,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<keel_kernel::extract::routes::CorrectionInput>,
) -> ApiResult<Json<Extraction>> {
    let scope = &auth.scope();
    let expected = expected_version(&headers, body.version)?;
    let (_, extraction_id) = current_extraction(&state, scope, id).await?;
    let corrected = match keel_kernel::extract::correct(
        &state,
        scope,
        &ctx,
        extraction_id,
        &body.correction,
        version_of(expected),
    )
    .await
    {
        Err(ExtractError::Stale) => return Err(stale_for(expected)),
        other => other.map_err(ApiError::from)?,
    };
    let status = &corrected.status;
    crate::dashboard::write(&state, scope, |tx| {
        Box::pin(async move {
            store::note_correction(tx, scope, id, extraction_id, status).await?;
            Ok::<_, ApiError>(())
        })
    })
    .await?;
    Ok(Json(corrected))
}
