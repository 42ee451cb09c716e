//! Optimistic concurrency, as the API conventions describe it: a resource carries an integer
//! `version`; an update names the version it read, in `If-Match` (a stale one answers 412) or
//! in the body's `"version"` (a stale one answers 409), and changes nothing when stale. An
//! update that names no version is accepted.
//!
//! The store side is one condition: `… WHERE id = ? AND version = ?` on the update, bumping
//! `version` by one; zero rows touched means stale (or gone — callers read the row first to
//! tell a 404 from a 409/412).

use axum::http::{HeaderMap, header};

use super::ApiError;

/// The version a client expects the resource to be at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedVersion {
    pub version: i64,
    /// Named in `If-Match` (a stale one answers 412) rather than in the body (409).
    pub via_header: bool,
}

impl ExpectedVersion {
    /// The error for a stale version.
    pub fn stale(&self) -> ApiError {
        stale(self.via_header)
    }
}

/// The version a client expects, from `If-Match` (which wins) or the body's `version`.
/// `If-Match` may be a bare number or an entity tag (`"3"`, `W/"3"`).
pub fn expected_version(
    headers: &HeaderMap,
    body: Option<i64>,
) -> Result<Option<ExpectedVersion>, ApiError> {
    if let Some(v) = headers.get(header::IF_MATCH) {
        let text = v
            .to_str()
            .unwrap_or("")
            .trim()
            .trim_start_matches("W/")
            .trim_matches('"');
        let version = text.parse::<i64>().map_err(|_| {
            ApiError::invalid_field("If-Match", "must be the resource's version number")
        })?;
        return Ok(Some(ExpectedVersion {
            version,
            via_header: true,
        }));
    }
    Ok(body.map(|version| ExpectedVersion {
        version,
        via_header: false,
    }))
}

/// The answer to a stale update: 412 when the version came in `If-Match`, else 409.
pub fn stale(via_header: bool) -> ApiError {
    if via_header {
        ApiError::precondition_failed("the resource changed since you read it (If-Match)")
    } else {
        ApiError::conflict("the resource changed since you read it (version)")
    }
}

/// The version to put in the update's condition, if any.
pub fn version_of(expected: Option<ExpectedVersion>) -> Option<i64> {
    expected.map(|e| e.version)
}

/// The answer to a stale update whatever the client sent (409 when it sent nothing, which
/// only happens when the row changed between the read and the write of one request).
pub fn stale_for(expected: Option<ExpectedVersion>) -> ApiError {
    stale(expected.is_some_and(|e| e.via_header))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn if_match_wins_over_the_body_and_accepts_entity_tags() {
        let mut h = HeaderMap::new();
        assert_eq!(expected_version(&h, None).ok().flatten(), None);
        assert_eq!(
            expected_version(&h, Some(3)).ok().flatten(),
            Some(ExpectedVersion {
                version: 3,
                via_header: false
            })
        );
        for v in ["7", "\"7\"", "W/\"7\""] {
            h.insert(header::IF_MATCH, HeaderValue::from_static(v));
            assert_eq!(
                expected_version(&h, Some(3)).ok().flatten(),
                Some(ExpectedVersion {
                    version: 7,
                    via_header: true
                }),
                "{v}"
            );
        }
        h.insert(header::IF_MATCH, HeaderValue::from_static("*"));
        assert!(expected_version(&h, None).is_err());
    }

    #[test]
    fn stale_answers_412_for_if_match_and_409_for_the_body() {
        assert_eq!(stale(true).status.as_u16(), 412);
        assert_eq!(stale(false).status.as_u16(), 409);
        assert_eq!(stale_for(None).status.as_u16(), 409);
    }
}
