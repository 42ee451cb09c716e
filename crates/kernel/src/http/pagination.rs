//! List pages as the API conventions describe them: `page` (≥ 1), `page_size` (1–100,
//! default 20), `sort` (a whitelisted field, `-` for descending) and the
//! `{"data": […], "pagination": {…}}` envelope with exact totals; keyset pagination with
//! `cursor` for deep pages; and the `created_from` / `created_to` date range every list may
//! take.
//!
//! Keyset pagination: every page carries the `next_cursor` of the page after it (null on the
//! last), so a client can switch from numbered pages to cursors at any point. A cursor is an
//! opaque token naming the sort, its direction, and the sort value and id of the last row
//! seen; the next page is the rows strictly after that `(value, id)` pair in the sort order,
//! read from the index with no `OFFSET`, so page 10,000 costs what page 1 costs. In cursor
//! mode `page`, `total` and `total_pages` are null.
//!
//! A store function supports both modes by adding [`PageRequest::keyset`] to its condition,
//! fetching [`PageRequest::fetch_limit`] rows at [`PageRequest::offset`], counting only
//! when [`PageRequest::wants_total`]; the route builds the page with [`Paged::from_rows`]
//! for rows that implement [`Keyed`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, NaiveDate, Utc};
use sea_query::{Expr, ExprTrait};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

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
    /// The `next_cursor` of a previous page: continue after it (instead of `page`).
    pub cursor: Option<String>,
}

/// The value of a row's sort field, as a cursor records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortValue {
    Time(DateTime<Utc>),
    Text(String),
    Int(i64),
}

impl SortValue {
    fn into_value(self) -> sea_query::Value {
        match self {
            SortValue::Time(t) => t.into(),
            SortValue::Text(s) => s.into(),
            SortValue::Int(i) => i.into(),
        }
    }
}

/// Where a cursor-mode page starts: after the row with this sort value and id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(rename = "s")]
    pub sort: String,
    #[serde(rename = "d")]
    pub descending: bool,
    #[serde(rename = "v")]
    pub value: SortValue,
    #[serde(rename = "i")]
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(token: &str) -> Option<Self> {
        if token.len() > 1024 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Implements [`Keyed`] for a row type: its `id` field and each sortable field with its kind.
///
/// ```ignore
/// keel_kernel::keyed!(Partner { "created_at" => Time(created_at), "name" => Text(name) });
/// ```
#[macro_export]
macro_rules! keyed {
    ($ty:ty { $($field:literal => $kind:ident($member:ident)),* $(,)? }) => {
        impl $crate::http::pagination::Keyed for $ty {
            fn key_id(&self) -> ::uuid::Uuid {
                self.id
            }

            fn sort_value(&self, field: &str) -> Option<$crate::http::pagination::SortValue> {
                match field {
                    $($field => Some($crate::keyed!(@value $kind, self.$member)),)*
                    _ => None,
                }
            }
        }
    };
    (@value Time, $e:expr) => { $crate::http::pagination::SortValue::Time($e) };
    (@value Text, $e:expr) => { $crate::http::pagination::SortValue::Text($e.clone()) };
    (@value Int, $e:expr) => { $crate::http::pagination::SortValue::Int($e) };
}

/// A row a cursor can point at: its id (the tie-breaker of every sort) and the value of each
/// sortable field.
pub trait Keyed {
    fn key_id(&self) -> Uuid;
    /// The value of sort field `field` (one of the list's whitelisted fields).
    fn sort_value(&self, field: &str) -> Option<SortValue>;
}

/// A validated page request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub page: u64,
    pub page_size: u64,
    pub sort: String,
    pub descending: bool,
    /// Cursor mode: continue after this row.
    pub after: Option<Cursor>,
}

impl PageRequest {
    /// Rows to skip: none in cursor mode.
    pub fn offset(&self) -> u64 {
        if self.after.is_some() {
            0
        } else {
            (self.page - 1) * self.page_size
        }
    }

    /// Rows to fetch: one more than a page tells whether a next page exists.
    pub fn fetch_limit(&self) -> u64 {
        self.page_size + 1
    }

    /// Whether the list should count its rows (numbered pages; not in cursor mode).
    pub fn wants_total(&self) -> bool {
        self.after.is_none()
    }

    /// In cursor mode, the condition selecting rows strictly after the cursor in the sort
    /// order: `(sort, id) < (value, id)` descending, `>` ascending.
    pub fn keyset(&self) -> Option<sea_query::Condition> {
        let c = self.after.as_ref()?;
        let col = || Expr::col(sea_query::Alias::new(self.sort.clone()));
        let value = c.value.clone().into_value();
        let (beyond, tie) = if c.descending {
            (
                col().lt(value.clone()),
                col().eq(value).and(Expr::col("id").lt(c.id)),
            )
        } else {
            (
                col().gt(value.clone()),
                col().eq(value).and(Expr::col("id").gt(c.id)),
            )
        };
        Some(sea_query::Cond::any().add(beyond).add(tie))
    }

    /// The sort as `ORDER BY` terms: the field, then the id in the same direction.
    pub fn order(&self) -> sea_query::Order {
        if self.descending {
            sea_query::Order::Desc
        } else {
            sea_query::Order::Asc
        }
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
        let after = match self.cursor.as_deref() {
            None => None,
            Some(token) => match Cursor::decode(token) {
                Some(c) if allowed.contains(&c.sort.as_str()) => Some(c),
                _ => {
                    errors.push(FieldError::new(
                        "cursor",
                        "is not a cursor this list issued (use a next_cursor as it was given)",
                    ));
                    None
                }
            },
        };
        if after.is_some() && self.page.is_some() {
            errors.push(FieldError::new("page", "use page or cursor, not both"));
        }
        // A cursor carries its sort; a sort given with it must be the same one.
        let cursor_sort = after
            .as_ref()
            .map(|c| format!("{}{}", if c.descending { "-" } else { "" }, c.sort));
        if let (Some(cs), Some(given)) = (&cursor_sort, &self.sort)
            && cs != given
        {
            errors.push(FieldError::new(
                "sort",
                "must be the sort the cursor was issued for (or left out)",
            ));
        }
        let raw = cursor_sort
            .as_deref()
            .or(self.sort.as_deref())
            .unwrap_or(default);
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
            after,
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

    /// A page from rows fetched with [`PageRequest::fetch_limit`] (one more than a page, to
    /// learn whether another follows) and, for numbered pages, the total. Carries the
    /// `next_cursor` of the following page, or null on the last.
    pub fn from_rows(mut rows: Vec<T>, request: &PageRequest, total: Option<u64>) -> Self
    where
        T: Keyed,
    {
        let size = usize::try_from(request.page_size).unwrap_or(usize::MAX);
        let next_cursor = if rows.len() > size {
            rows.truncate(size);
            rows.last().and_then(|last| {
                Some(
                    Cursor {
                        sort: request.sort.clone(),
                        descending: request.descending,
                        value: last.sort_value(&request.sort)?,
                        id: last.key_id(),
                    }
                    .encode(),
                )
            })
        } else {
            None
        };
        let cursor_mode = request.after.is_some();
        let total = if cursor_mode { None } else { total };
        Self {
            data: rows,
            pagination: PageInfo {
                page: (!cursor_mode).then_some(request.page),
                page_size: request.page_size,
                total,
                total_pages: total.map(|t| t.div_ceil(request.page_size)),
                total_exact: true,
                next_cursor,
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
            cursor: None,
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
            cursor: None,
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

    #[test]
    fn a_cursor_round_trips_and_carries_its_sort() {
        let c = Cursor {
            sort: "created_at".into(),
            descending: true,
            value: SortValue::Time(
                DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
                    .expect("time")
                    .with_timezone(&Utc),
            ),
            id: Uuid::now_v7(),
        };
        let token = c.encode();
        assert_eq!(Cursor::decode(&token), Some(c.clone()));
        let req = PageParams {
            cursor: Some(token.clone()),
            ..Default::default()
        }
        .resolve(&["created_at", "name"], "name")
        .expect("valid");
        assert_eq!((req.sort.as_str(), req.descending), ("created_at", true));
        assert_eq!(req.offset(), 0);
        assert!(!req.wants_total());
        assert!(req.keyset().is_some());

        // A cursor with a page, a different sort, or for a field this list does not sort by.
        for (params, field) in [
            (
                PageParams {
                    cursor: Some(token.clone()),
                    page: Some(2),
                    ..Default::default()
                },
                "page",
            ),
            (
                PageParams {
                    cursor: Some(token.clone()),
                    sort: Some("name".into()),
                    ..Default::default()
                },
                "sort",
            ),
            (
                PageParams {
                    cursor: Some("not-a-cursor".into()),
                    ..Default::default()
                },
                "cursor",
            ),
        ] {
            let err = params
                .resolve(&["created_at", "name"], "name")
                .expect_err("refused");
            assert!(
                err.problem.errors.iter().any(|e| e.field == field),
                "{field}: {:?}",
                err.problem.errors
            );
        }
        let foreign = PageParams {
            cursor: Some(token),
            ..Default::default()
        }
        .resolve(&["name"], "name");
        assert!(
            foreign.is_err(),
            "a cursor for a field this list does not sort by"
        );
    }
}
