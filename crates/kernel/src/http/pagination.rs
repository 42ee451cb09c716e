//! List pages as the API conventions describe them: `page` (≥ 1), `page_size` (1–100,
//! default 20), `sort` (a whitelisted field, `-` for descending) and the
//! `{"data": […], "pagination": {…}}` envelope with exact totals.

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
