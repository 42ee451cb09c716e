//! `/api/v1/files`: upload, read and delete the organization's files. Content is served only
//! here, to callers of the owning organization; another organization's checksum answers 404.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{StoredFile, is_sha256};
use crate::auth::Authorized;
use crate::auth::access::perms;
use crate::http::{ApiError, ApiResult, Json, Path, Query};
use crate::module::ModuleRouter;
use crate::state::AppState;

pub fn router() -> ModuleRouter {
    // Uploads are bounded by `files.max_bytes` (checked in the handler) and by the global
    // `http.body_limit_bytes` layer, not by axum's default 2 MiB extractor limit.
    let (schemas, paths, method_router) = utoipa_axum::routes!(upload_file);
    ModuleRouter::new()
        .routes((
            schemas,
            paths,
            method_router.layer(DefaultBodyLimit::disable()),
        ))
        .routes(utoipa_axum::routes!(get_file, delete_file))
        .routes(utoipa_axum::routes!(get_file_content))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The file's name; its extension must match the content.
    pub name: Option<String>,
}

/// Uploads a file: the request body is the file. Its type is read from the content (PDF,
/// PNG, JPEG, WebP, GIF); a declared `Content-Type` or name that says otherwise is refused.
/// The same content uploaded again answers 200 with the stored file.
#[utoipa::path(post, path = "/api/v1/files", tag = "files",
    security(("bearer" = ["files.write"])),
    params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, body = StoredFile, description = "Stored"),
        (status = 200, body = StoredFile, description = "Already stored"),
        (status = 413, description = "Larger than files.max_bytes"),
        (status = 415, description = "Not a supported document type"),
        (status = 422, description = "The content does not match the declared type or name")))]
pub async fn upload_file(
    State(state): State<AppState>,
    auth: Authorized<perms::FilesWrite>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if query.name.as_deref().is_some_and(|n| n.len() > 255) {
        return Err(ApiError::invalid_field(
            "name",
            "must be at most 255 characters",
        ));
    }
    let (file, created) = state
        .files
        .put(
            &state.db,
            &auth.scope(),
            query.name.as_deref(),
            content_type,
            body,
        )
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        [(header::LOCATION, format!("/api/v1/files/{}", file.sha256))],
        Json(file),
    )
        .into_response())
}

fn checksum(sha256: &str) -> Result<&str, ApiError> {
    if is_sha256(sha256) {
        Ok(sha256)
    } else {
        Err(ApiError::invalid_field(
            "sha256",
            "must be a SHA-256 in lowercase hex (64 digits)",
        ))
    }
}

/// Reads a file's details.
#[utoipa::path(get, path = "/api/v1/files/{sha256}", tag = "files",
    security(("bearer" = ["files.read"])),
    params(("sha256" = String, Path, description = "The content's SHA-256 (hex)")),
    responses((status = 200, body = StoredFile), (status = 404, description = "No such file")))]
pub async fn get_file(
    State(state): State<AppState>,
    auth: Authorized<perms::FilesRead>,
    Path(sha256): Path<String>,
) -> ApiResult<Json<StoredFile>> {
    let sha256 = checksum(&sha256)?;
    Ok(Json(
        state.files.info(&state.db, &auth.scope(), sha256).await?,
    ))
}

/// Downloads a file's content (as an attachment, never rendered inline).
#[utoipa::path(get, path = "/api/v1/files/{sha256}/content", tag = "files",
    security(("bearer" = ["files.read"])),
    params(("sha256" = String, Path, description = "The content's SHA-256 (hex)")),
    responses((status = 200, description = "The file", content_type = "application/octet-stream"),
        (status = 404, description = "No such file")))]
pub async fn get_file_content(
    State(state): State<AppState>,
    auth: Authorized<perms::FilesRead>,
    Path(sha256): Path<String>,
) -> ApiResult<Response> {
    let sha256 = checksum(&sha256)?;
    let (file, bytes) = state.files.get(&state.db, &auth.scope(), sha256).await?;
    let name: String = file
        .file_name
        .as_deref()
        .unwrap_or("file")
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
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", file.sha256)) {
        h.insert(header::ETAG, v);
    }
    Ok(response)
}

/// Deletes a file.
#[utoipa::path(delete, path = "/api/v1/files/{sha256}", tag = "files",
    security(("bearer" = ["files.write"])),
    params(("sha256" = String, Path, description = "The content's SHA-256 (hex)")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such file")))]
pub async fn delete_file(
    State(state): State<AppState>,
    auth: Authorized<perms::FilesWrite>,
    Path(sha256): Path<String>,
) -> ApiResult<StatusCode> {
    let sha256 = checksum(&sha256)?;
    if state.files.delete(&state.db, &auth.scope(), sha256).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}
