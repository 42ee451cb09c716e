//! `/api/v1/audit/*`: the organization's audit trail for its admins — list with filters, one
//! event, a streaming export (CSV or JSON lines) and chain verification. A platform super
//! admin reads the platform chain with `platform=true`.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::routes;
use uuid::Uuid;

use super::event::AuditEvent;
use super::store::{self, EventFilter};
use super::{PLATFORM_ORG, VerifyReport};
use crate::auth::access::perms;
use crate::auth::{Authorized, Principal};
use crate::http::pagination::{CreatedRangeParams, PageParams, Paged};
use crate::http::{ApiError, ApiResult, FieldError, Json, Path, Query};
use crate::module::ModuleRouter;
use crate::state::AppState;

/// Events read per round trip while exporting.
const EXPORT_BATCH: u64 = 500;
const MAX_FILTER_LEN: usize = 200;

pub fn router() -> ModuleRouter {
    ModuleRouter::new()
        .routes(routes!(list_events))
        .routes(routes!(export_events))
        .routes(routes!(get_event))
        .routes(routes!(verify_chain))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// A user id, or a system actor's name (e.g. `retention`).
    pub actor: Option<String>,
    /// An action (`partner.created`), or a prefix ending in `*` (`auth.*`).
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChainQuery {
    /// Platform super admins only: the platform chain (events that belong to no
    /// organization, such as failed sign-ins for unknown addresses).
    pub platform: Option<bool>,
}

/// The chain the caller reads: their organization's, or the platform's.
fn chain_of(principal: &Principal, chain: &ChainQuery) -> Result<Uuid, ApiError> {
    if chain.platform == Some(true) {
        if !principal.is_super_admin() {
            return Err(ApiError::forbidden(
                "only platform super admins read the platform chain",
            ));
        }
        return Ok(PLATFORM_ORG);
    }
    Ok(principal.org_id)
}

fn filter_of(query: EventQuery, range: &CreatedRangeParams) -> Result<EventFilter, ApiError> {
    let range = range.resolve()?;
    let mut errors = Vec::new();
    for (name, v) in [
        ("actor", &query.actor),
        ("action", &query.action),
        ("resource_type", &query.resource_type),
        ("resource_id", &query.resource_id),
    ] {
        if v.as_ref()
            .is_some_and(|s| s.is_empty() || s.len() > MAX_FILTER_LEN)
        {
            errors.push(FieldError::new(name, "must be 1 to 200 characters"));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    Ok(EventFilter {
        actor: query.actor,
        action: query.action,
        resource_type: query.resource_type,
        resource_id: query.resource_id,
        created_from: range.from,
        created_to: range.to,
    })
}

/// Lists the organization's audit events, newest first by default.
#[utoipa::path(get, path = "/api/v1/audit/events", tag = "audit",
    security(("bearer" = ["audit.read"])),
    params(EventQuery, CreatedRangeParams, ChainQuery, PageParams),
    responses((status = 200, body = Paged<AuditEvent>), (status = 403, description = "Missing audit.read")))]
pub async fn list_events(
    State(state): State<AppState>,
    auth: Authorized<perms::AuditRead>,
    Query(query): Query<EventQuery>,
    Query(range): Query<CreatedRangeParams>,
    Query(chain): Query<ChainQuery>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Paged<AuditEvent>>> {
    let org = chain_of(&auth, &chain)?;
    let page = page.resolve(&["seq", "created_at"], "-seq")?;
    let filter = filter_of(query, &range)?;
    let (rows, total) = store::list(&state.db, org, &filter, &page).await?;
    Ok(Json(Paged::from_rows(rows, &page, total)))
}

/// Reads one audit event.
#[utoipa::path(get, path = "/api/v1/audit/events/{id}", tag = "audit",
    security(("bearer" = ["audit.read"])),
    params(("id" = Uuid, Path), ChainQuery),
    responses((status = 200, body = AuditEvent), (status = 404, description = "No such event in this organization")))]
pub async fn get_event(
    State(state): State<AppState>,
    auth: Authorized<perms::AuditRead>,
    Path(id): Path<Uuid>,
    Query(chain): Query<ChainQuery>,
) -> ApiResult<Json<AuditEvent>> {
    let org = chain_of(&auth, &chain)?;
    Ok(Json(store::get(&state.db, org, id).await?))
}

/// Walks the organization's hash chain and reports the first broken link, if any.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    security(("bearer" = ["audit.read"])),
    params(ChainQuery),
    responses((status = 200, body = VerifyReport, description = "The report; `ok` says whether every link holds")))]
pub async fn verify_chain(
    State(state): State<AppState>,
    auth: Authorized<perms::AuditRead>,
    Query(chain): Query<ChainQuery>,
) -> ApiResult<Json<VerifyReport>> {
    let org = chain_of(&auth, &chain)?;
    Ok(Json(super::verify(&state.db, org).await?))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `csv` (the default) or `jsonl` (one JSON event per line).
    pub format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Jsonl,
}

const CSV_COLUMNS: [&str; 20] = [
    "id",
    "seq",
    "created_at",
    "actor_type",
    "actor_id",
    "action",
    "resource_type",
    "resource_id",
    "outcome",
    "error_code",
    "changes",
    "detail",
    "request_id",
    "ip",
    "user_agent",
    "method",
    "route",
    "duration_ms",
    "prev_hash",
    "hash",
];

/// Streams the organization's events (same filters as the list), oldest first, as CSV or
/// JSON lines. At most `[audit] export_max_rows` events; a larger export is refused.
#[utoipa::path(get, path = "/api/v1/audit/events/export", tag = "audit",
    security(("bearer" = ["audit.read"])),
    params(ExportQuery, EventQuery, CreatedRangeParams, ChainQuery),
    responses(
        (status = 200, description = "The events", content_type = "text/csv"),
        (status = 422, description = "Unknown format, bad filters, or more events than one export may hold"),
    ))]
pub async fn export_events(
    State(state): State<AppState>,
    auth: Authorized<perms::AuditRead>,
    Query(export): Query<ExportQuery>,
    Query(query): Query<EventQuery>,
    Query(range): Query<CreatedRangeParams>,
    Query(chain): Query<ChainQuery>,
) -> ApiResult<Response> {
    let org = chain_of(&auth, &chain)?;
    let format = match export.format.as_deref().unwrap_or("csv") {
        "csv" => Format::Csv,
        "jsonl" => Format::Jsonl,
        _ => return Err(ApiError::invalid_field("format", "must be csv or jsonl")),
    };
    let filter = filter_of(query, &range)?;
    let max = state.config.audit.export_max_rows;
    let total = store::count(&state.db, org, &filter).await?;
    if total > max {
        return Err(ApiError::validation(vec![FieldError::new(
            "created_from",
            format!("{total} events match; one export holds at most {max}: narrow the filters"),
        )])
        .with_extra("max_rows", max));
    }
    let (content_type, extension) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::Jsonl => ("application/x-ndjson", "jsonl"),
    };
    let disposition = format!(
        "attachment; filename=\"audit-{org}-{}.{extension}\"",
        crate::store::now().format("%Y%m%d%H%M%S")
    );
    let stream = export_stream(state.db.clone(), org, filter, format, total.min(max));
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

struct ExportState {
    db: crate::store::Db,
    org: Uuid,
    filter: EventFilter,
    format: Format,
    after: i64,
    left: u64,
    header_sent: bool,
    done: bool,
}

fn export_stream(
    db: crate::store::Db,
    org: Uuid,
    filter: EventFilter,
    format: Format,
    max: u64,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let start = ExportState {
        db,
        org,
        filter,
        format,
        after: 0,
        left: max,
        header_sent: false,
        done: false,
    };
    // Fused: a body consumer (the compression layer) may poll once more after the end.
    futures::StreamExt::fuse(futures::stream::unfold(start, |mut st| async move {
        if st.done {
            return None;
        }
        if !st.header_sent {
            st.header_sent = true;
            if st.format == Format::Csv {
                let mut line = CSV_COLUMNS.join(",");
                line.push_str("\r\n");
                return Some((Ok(Bytes::from(line)), st));
            }
        }
        if st.left == 0 {
            return None;
        }
        let limit = EXPORT_BATCH.min(st.left);
        match store::batch_after(&st.db, st.org, &st.filter, st.after, limit).await {
            Ok(rows) if rows.is_empty() => None,
            Ok(rows) => {
                st.done = (rows.len() as u64) < limit;
                st.left = st.left.saturating_sub(rows.len() as u64);
                st.after = rows.last().map_or(st.after, |r| r.seq);
                let mut out = String::new();
                for e in &rows {
                    match st.format {
                        Format::Csv => csv_line(&mut out, e),
                        Format::Jsonl => {
                            out.push_str(&serde_json::to_string(e).unwrap_or_default());
                            out.push('\n');
                        }
                    }
                }
                Some((Ok(Bytes::from(out)), st))
            }
            Err(e) => {
                // Headers are gone already: all that is left is to cut the stream short.
                tracing::error!(error = %e, "audit export failed mid-stream");
                st.done = true;
                Some((Err(std::io::Error::other("audit export failed")), st))
            }
        }
    }))
}

fn csv_line(out: &mut String, e: &AuditEvent) {
    let text =
        |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_default();
    let fields: [String; 20] = [
        e.id.to_string(),
        e.seq.to_string(),
        e.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        e.actor.kind.as_str().to_string(),
        e.actor.id.clone().unwrap_or_default(),
        e.action.clone(),
        e.resource_type.clone(),
        e.resource_id.clone().unwrap_or_default(),
        e.outcome.as_str().to_string(),
        e.error_code.clone().unwrap_or_default(),
        text(&e.changes),
        text(&e.detail),
        e.context.request_id.clone().unwrap_or_default(),
        e.context.ip.clone().unwrap_or_default(),
        e.context.user_agent.clone().unwrap_or_default(),
        e.context.method.clone().unwrap_or_default(),
        e.context.route.clone().unwrap_or_default(),
        e.duration_ms.map(|d| d.to_string()).unwrap_or_default(),
        e.prev_hash.clone(),
        e.hash.clone(),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&csv_field(f));
    }
    out.push_str("\r\n");
}

/// One CSV field (RFC 4180 quoting). A value a spreadsheet would run as a formula (leading
/// `=`, `+`, `-`, `@`, tab or carriage return) is prefixed with `'`: the user agent and
/// details come from clients.
fn csv_field(value: &str) -> String {
    let guarded = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_string()
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_field("line\nbreak"), "\"line\nbreak\"");
    }
}
