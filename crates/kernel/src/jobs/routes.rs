//! `/api/v1/jobs`: the status of asynchronous work, and its management by admins.
//!
//! Anyone signed in (but partner users, whose view is limited to their partner's rows) may
//! read a job of their own organization (async endpoints hand out job ids); listing, retrying and cancelling are for organization admins, and for the platform's
//! super admin across every organization (including platform jobs).

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;
use uuid::Uuid;

use super::store::{self, Job, JobAccess, JobActionError, JobFilter, JobPage, JobState};
use crate::auth::access::perms;
use crate::auth::{Authorized, Principal, SignedIn};
use crate::http::pagination::{Cursor, PageInfo, PageParams, Paged, SortValue};
use crate::http::{ApiError, ApiResult, Json, Path, Query};
use crate::module::ModuleRouter;
use crate::state::AppState;
use crate::tenancy::TenantScope;

pub fn router() -> ModuleRouter {
    ModuleRouter::new()
        .routes(utoipa_axum::routes!(list_jobs))
        .routes(utoipa_axum::routes!(list_schedule_runs))
        .routes(utoipa_axum::routes!(get_job))
        .routes(utoipa_axum::routes!(retry_job))
        .routes(utoipa_axum::routes!(cancel_job))
}

/// The platform's super admin, not acting inside a named organization, sees every job.
fn access<'a>(principal: &Principal, scope: &'a TenantScope) -> JobAccess<'a> {
    if principal.is_super_admin() && principal.org_id == principal.home_org {
        JobAccess::Platform
    } else {
        JobAccess::Org(scope)
    }
}

fn action_error(e: JobActionError) -> ApiError {
    match e {
        JobActionError::NotFound => ApiError::not_found(),
        JobActionError::InvalidState { state, action } => {
            ApiError::conflict(format!("a {state} job cannot be {action}"))
        }
        JobActionError::Store(e) => e.into(),
    }
}

/// A job: `status` (`queued`, `running`, `succeeded`, `failed`, `dead`, `cancelled`),
/// `attempts`, `result`, `error`.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Object), (status = 404, description = "No such job in this organization")))]
pub async fn get_job(
    State(state): State<AppState>,
    SignedIn(me): SignedIn,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Job>> {
    // Jobs are not linked to business partners, so partner users see none of them.
    if me.partner_id.is_some() {
        return Err(ApiError::not_found());
    }
    let scope = me.scope();
    store::get(&state.db, access(&me, &scope), id)
        .await?
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    pub queue: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed`, `dead` or `cancelled`.
    pub status: Option<String>,
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub job_type: Option<String>,
}

/// Lists jobs, newest first (admins).
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs",
    security(("bearer" = ["jobs.manage"])),
    params(JobQuery, PageParams),
    responses((status = 200, body = Object)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    auth: Authorized<perms::JobsManage>,
    Query(query): Query<JobQuery>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Paged<Job>>> {
    let page = page.resolve(&["created_at"], "-created_at")?;
    if !page.descending {
        return Err(ApiError::invalid_field(
            "sort",
            "jobs are listed newest first: -created_at",
        ));
    }
    let state_filter = match &query.status {
        Some(s) => Some(s.parse::<JobState>().map_err(|_| {
            ApiError::invalid_field(
                "status",
                "must be queued, running, succeeded, failed, dead or cancelled",
            )
        })?),
        None => None,
    };
    let filter = JobFilter {
        queue: query.queue,
        state: state_filter,
        job_type: query.job_type,
    };
    let scope = auth.scope();
    let list = store::list(
        &state.db,
        access(&auth, &scope),
        &filter,
        match &page.after {
            Some(Cursor {
                value: SortValue::Time(created_at),
                id,
                ..
            }) => JobPage::After {
                cursor: store::JobCursor {
                    created_at: *created_at,
                    id: *id,
                },
                page_size: u32::try_from(page.page_size).unwrap_or(100),
            },
            Some(_) => return Err(ApiError::invalid_field("cursor", "is not a job cursor")),
            None => JobPage::Number {
                page: u32::try_from(page.page).unwrap_or(u32::MAX),
                page_size: u32::try_from(page.page_size).unwrap_or(100),
            },
        },
    )
    .await?;
    let cursor_mode = page.after.is_some();
    Ok(Json(Paged {
        data: list.jobs,
        pagination: PageInfo {
            page: (!cursor_mode).then_some(page.page),
            page_size: page.page_size,
            total: list.total,
            total_pages: list.total.map(|t| t.div_ceil(page.page_size)),
            total_exact: true,
            next_cursor: list.next_cursor.map(|c| {
                Cursor {
                    sort: "created_at".into(),
                    descending: true,
                    value: SortValue::Time(c.created_at),
                    id: c.id,
                }
                .encode()
            }),
        },
    }))
}

/// Runs a `dead` or `failed` job again with fresh attempts (admins).
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retry", tag = "jobs",
    security(("bearer" = ["jobs.manage"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Object), (status = 404, description = "No such job"), (status = 409, description = "Not retryable in its state")))]
pub async fn retry_job(
    State(state): State<AppState>,
    auth: Authorized<perms::JobsManage>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Job>> {
    let scope = auth.scope();
    let job = store::retry(&state.db, access(&auth, &scope), id)
        .await
        .map_err(action_error)?;
    state.jobs.wake(&job.queue);
    Ok(Json(job))
}

/// Cancels a queued or running job (admins).
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    security(("bearer" = ["jobs.manage"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Object), (status = 404, description = "No such job"), (status = 409, description = "Already finished")))]
pub async fn cancel_job(
    State(state): State<AppState>,
    auth: Authorized<perms::JobsManage>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Job>> {
    let scope = auth.scope();
    Ok(Json(
        store::cancel(&state.db, access(&auth, &scope), id)
            .await
            .map_err(action_error)?,
    ))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    /// One schedule's runs only.
    pub schedule: Option<String>,
    /// At most this many (1–1000, default 100).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct RunList {
    pub data: Vec<super::scheduler::ScheduleRun>,
    pub leader: Option<super::scheduler::SchedulerLeader>,
}

/// Recorded runs of scheduled tasks, newest first, and the current scheduler leader
/// (platform super admin).
#[utoipa::path(get, path = "/api/v1/jobs/schedule-runs", tag = "jobs",
    security(("bearer" = ["jobs.manage"])),
    params(RunQuery),
    responses((status = 200, body = Object), (status = 403, description = "Not the platform super admin")))]
pub async fn list_schedule_runs(
    State(state): State<AppState>,
    auth: Authorized<perms::JobsManage>,
    Query(query): Query<RunQuery>,
) -> ApiResult<Json<RunList>> {
    if !auth.is_super_admin() {
        return Err(ApiError::forbidden(
            "scheduled runs are platform data: platform super admins only",
        ));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            "must be between 1 and 1000",
        ));
    }
    Ok(Json(RunList {
        data: super::scheduler::runs(&state.db, query.schedule.as_deref(), limit).await?,
        leader: super::scheduler::leader(&state.db).await?,
    }))
}
