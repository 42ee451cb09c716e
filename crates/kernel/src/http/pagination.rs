//! List pages as the API conventions describe them: `page` (≥ 1), `page_size` (1–100,
//! default 20), `sort` (a whitelisted field, `-` for descending) and the
//! `{"data": […], "pagination": {…}}` envelope with exact totals; and the
//! `created_from` / `created_to` date range every list may take.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, FieldError};

pub const DEFAULT_PAGE_SIZE: u64 = 20;
pub const MAX_PAGE_SIZE: u64 = 100;

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page number, from 1.
    pub page: Option<u64>,
    /// Items per page, 1–100 (default 20).
    pub page_size: Option<u64>,
    /// A sort field, `-` prefixed for descending (e.g. `-created_at`).
    pub sort: Option<String>,
}

/// A validated page request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub page: u64,
    pub page_size: u64,
    pub sort: String,
    pub descending: bool,
}

impl PageRequest {
    pub fn offset(&self) -> u64 {
        (self.page - 1) * self.page_size
    }
}

impl PageParams {
    /// Validates against the sortable fields (`allowed`); `default` applies when unsorted.
    pub fn resolve(&self, allowed: &[&str], default: &str) -> Result<PageRequest, ApiError> {
        let mut errors = Vec::new();
        let page = self.page.unwrap_or(1);
        if page == 0 || page > 1_000_000 {
            errors.push(FieldError::new("page", "must be between 1 and 1000000"));
        }
        let page_size = self.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&page_size) {
            errors.push(FieldError::new("page_size", "must be between 1 and 100"));
        }
        let raw = self.sort.as_deref().unwrap_or(default);
        let (descending, field) = match raw.strip_prefix('-') {
            Some(f) => (true, f),
            None => (false, raw),
        };
        if !allowed.contains(&field) {
            errors.push(FieldError::new(
                "sort",
                format!(
                    "must be one of {} (prefix - for descending)",
                    allowed.join(", ")
                ),
            ));
        }
        if !errors.is_empty() {
            return Err(ApiError::validation(errors));
        }
        Ok(PageRequest {
            page,
            page_size,
            sort: field.to_string(),
            descending,
        })
    }
}

/// `created_from` / `created_to`: a half-open time range, each bound RFC 3339
/// (`2025-03-01T10:00:00Z`) or a date (`2025-03-01`, midnight UTC).
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreatedRangeParams {
    /// Created at or after (RFC 3339 or `YYYY-MM-DD`).
    pub created_from: Option<String>,
    /// Created before (RFC 3339 or `YYYY-MM-DD`).
    pub created_to: Option<String>,
}

/// A validated half-open range `[from, to)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreatedRange {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl CreatedRangeParams {
    pub fn resolve(&self) -> Result<CreatedRange, ApiError> {
        let mut errors = Vec::new();
        let mut parse = |field: &str, v: &Option<String>| match v.as_deref().map(parse_instant) {
            Some(Some(t)) => Some(t),
            Some(None) => {
                errors.push(FieldError::new(
                    field,
                    "must be an RFC 3339 time (2025-03-01T10:00:00Z) or a date (2025-03-01)",
                ));
                None
            }
            None => None,
        };
        let from = parse("created_from", &self.created_from);
        let to = parse("created_to", &self.created_to);
        if let (Some(f), Some(t)) = (from, to)
            && f > t
        {
            errors.push(FieldError::new(
                "created_to",
                "must not be before created_from",
            ));
        }
        if !errors.is_empty() {
            return Err(ApiError::validation(errors));
        }
        Ok(CreatedRange { from, to })
    }
}

/// An instant from RFC 3339 or a `YYYY-MM-DD` date (its midnight, UTC).
pub fn parse_instant(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc())
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PageInfo {
    pub page: Option<u64>,
    pub page_size: u64,
    pub total: Option<u64>,
    pub total_pages: Option<u64>,
    pub total_exact: bool,
    pub next_cursor: Option<String>,
}

/// A page of a list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Paged<T> {
    pub data: Vec<T>,
    pub pagination: PageInfo,
}

impl<T> Paged<T> {
    pub fn new(data: Vec<T>, request: &PageRequest, total: u64) -> Self {
        Self {
            data,
            pagination: PageInfo {
                page: Some(request.page),
                page_size: request.page_size,
                total: Some(total),
                total_pages: Some(total.div_ceil(request.page_size)),
                total_exact: true,
                next_cursor: None,
            },
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Paged<U> {
        Paged {
            data: self.data.into_iter().map(f).collect(),
            pagination: self.pagination,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_ranges_take_rfc3339_or_dates_and_must_be_ordered() {
        let r = CreatedRangeParams {
            created_from: Some("2025-03-01".into()),
            created_to: Some("2025-03-02T12:00:00+02:00".into()),
        }
        .resolve()
        .expect("valid");
        assert_eq!(
            r.from.map(|t| t.to_rfc3339()),
            Some("2025-03-01T00:00:00+00:00".into())
        );
        assert_eq!(
            r.to.map(|t| t.to_rfc3339()),
            Some("2025-03-02T10:00:00+00:00".into())
        );
        assert!(
            CreatedRangeParams {
                created_from: Some("yesterday".into()),
                created_to: None
            }
            .resolve()
            .is_err()
        );
        assert!(
            CreatedRangeParams {
                created_from: Some("2025-03-02".into()),
                created_to: Some("2025-03-01".into())
            }
            .resolve()
            .is_err()
        );
    }

    #[test]
    fn bounds_and_sort_whitelist_are_enforced() {
        let ok = PageParams {
            page: Some(2),
            page_size: Some(50),
            sort: Some("-email".into()),
        }
        .resolve(&["email", "created_at"], "created_at")
        .expect("valid");
        assert_eq!(
            (ok.offset(), ok.descending, ok.sort.as_str()),
            (50, true, "email")
        );
        let err = PageParams {
            page: Some(0),
            page_size: Some(101),
            sort: Some("password_hash".into()),
        }
        .resolve(&["email"], "email")
        .expect_err("invalid");
        let fields: Vec<_> = err
            .problem
            .errors
            .iter()
            .map(|e| e.field.as_str())
            .collect();
        assert_eq!(fields, ["page", "page_size", "sort"]);
    }
}
