//! What an audit event is: the event an app writes ([`NewEvent`], with [`Changes`]), the
//! stored row, the event as the API and subscribers see it ([`AuditEvent`]), and the
//! canonical form its hash is computed over.
//!
//! The canonical form is a JSON document with a fixed field order, built from the values
//! exactly as stored (JSON columns are hashed as their stored text, timestamps in RFC 3339
//! with microseconds), so a hash computed at append time and one recomputed from a row read
//! back on either engine agree byte for byte.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::tenancy::Actor;

/// The previous hash of an organization's first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Fields every update touches, left out of diffs (they are noise, not changes).
const DIFF_IGNORED: &[&str] = &["updated_at", "version"];

/// What is written into `changes` for a field whose values must not be kept.
pub const CHANGED: &str = "changed";

/// Who did it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A signed-in user (or an API key, which acts as its creator).
    User,
    /// The kernel or an app acting on its own (jobs, the scheduler, retention).
    System,
    /// Nobody signed in (a failed sign-in, a replayed refresh token).
    Anonymous,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::System => "system",
            Self::Anonymous => "anonymous",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "user" => Self::User,
            "system" => Self::System,
            _ => Self::Anonymous,
        }
    }
}

/// The actor of an event: `{"type": "user", "id": "<user id>"}`,
/// `{"type": "system", "id": "scheduler"}` or `{"type": "anonymous", "id": null}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventActor {
    #[serde(rename = "type")]
    pub kind: ActorKind,
    /// The user id, or the system actor's name.
    pub id: Option<String>,
}

impl EventActor {
    pub fn user(id: Uuid) -> Self {
        Self {
            kind: ActorKind::User,
            id: Some(id.to_string()),
        }
    }

    pub fn system(name: &str) -> Self {
        Self {
            kind: ActorKind::System,
            id: Some(name.to_string()),
        }
    }

    pub fn anonymous() -> Self {
        Self {
            kind: ActorKind::Anonymous,
            id: None,
        }
    }

    /// The user id, for a user actor.
    pub fn user_id(&self) -> Option<Uuid> {
        match self.kind {
            ActorKind::User => self.id.as_deref().and_then(|s| Uuid::parse_str(s).ok()),
            _ => None,
        }
    }
}

impl From<&Actor> for EventActor {
    fn from(a: &Actor) -> Self {
        match a {
            Actor::User(id) => Self::user(*id),
            Actor::System(name) => Self::system(name),
        }
    }
}

/// How the action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// One field's change.
#[derive(Debug, Clone, PartialEq)]
enum FieldChange {
    Values {
        before: Value,
        after: Value,
    },
    /// An encrypted or secret field: only the fact that it changed is kept.
    Redacted,
}

/// The fields an action changed, as `{"field": {"before": …, "after": …}}`; a field marked
/// encrypted (or secret) appears only as `{"field": "changed"}`, so neither its plaintext
/// nor its ciphertext ever reaches the audit trail.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes(BTreeMap<String, FieldChange>);

impl Changes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a field if its value changed.
    pub fn field(mut self, name: &str, before: impl Serialize, after: impl Serialize) -> Self {
        let before = serde_json::to_value(before).unwrap_or(Value::Null);
        let after = serde_json::to_value(after).unwrap_or(Value::Null);
        if before != after {
            self.0
                .insert(name.to_string(), FieldChange::Values { before, after });
        }
        self
    }

    /// Records that an encrypted or secret field changed, without its values.
    pub fn secret(mut self, name: &str) -> Self {
        self.0.insert(name.to_string(), FieldChange::Redacted);
        self
    }

    /// The top-level fields that differ between two serialisations of a resource (structs
    /// that serialise to JSON objects). Fields named in `encrypted` appear only as
    /// `"changed"`; `updated_at` and `version` are left out.
    pub fn diff(before: &impl Serialize, after: &impl Serialize, encrypted: &[&str]) -> Self {
        let before = object_of(before);
        let after = object_of(after);
        let mut out = Self::new();
        let names: std::collections::BTreeSet<&String> =
            before.keys().chain(after.keys()).collect();
        for name in names {
            if DIFF_IGNORED.contains(&name.as_str()) {
                continue;
            }
            let b = before.get(name).cloned().unwrap_or(Value::Null);
            let a = after.get(name).cloned().unwrap_or(Value::Null);
            if b == a {
                continue;
            }
            if encrypted.contains(&name.as_str()) {
                out = out.secret(name);
            } else {
                out.0.insert(
                    name.clone(),
                    FieldChange::Values {
                        before: b,
                        after: a,
                    },
                );
            }
        }
        out
    }

    /// A new resource: every field it was created with (`before` is null).
    pub fn created(after: &impl Serialize, encrypted: &[&str]) -> Self {
        Self::diff(&Value::Object(Map::new()), after, encrypted)
    }

    /// A deleted resource: every field it had (`after` is null).
    pub fn deleted(before: &impl Serialize, encrypted: &[&str]) -> Self {
        Self::diff(before, &Value::Object(Map::new()), encrypted)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The names of the changed fields.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        FieldChange::Values { before, after } => {
                            serde_json::json!({ "before": before, "after": after })
                        }
                        FieldChange::Redacted => Value::String(CHANGED.into()),
                    };
                    (k.clone(), v)
                })
                .collect(),
        )
    }
}

fn object_of(value: &impl Serialize) -> Map<String, Value> {
    match serde_json::to_value(value) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// An event to record. Build it with [`NewEvent::new`] and the setters, then hand it to
/// [`crate::audit::record`] inside the transaction that makes the change.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub(crate) action: Cow<'static, str>,
    pub(crate) resource_type: Cow<'static, str>,
    pub(crate) resource_id: Option<String>,
    pub(crate) changes: Option<Changes>,
    pub(crate) detail: Map<String, Value>,
    pub(crate) outcome: Outcome,
    pub(crate) error_code: Option<String>,
}

impl NewEvent {
    /// `action` is `<resource>.<verb>` in the past tense (`partner.created`,
    /// `shipment.booked`, `auth.login_failed`); `resource_type` the kind of thing acted on.
    pub fn new(
        action: impl Into<Cow<'static, str>>,
        resource_type: impl Into<Cow<'static, str>>,
        resource_id: Option<impl ToString>,
    ) -> Self {
        Self {
            action: action.into(),
            resource_type: resource_type.into(),
            resource_id: resource_id.map(|id| id.to_string()),
            changes: None,
            detail: Map::new(),
            outcome: Outcome::Success,
            error_code: None,
        }
    }

    pub fn changes(mut self, changes: Changes) -> Self {
        self.changes = (!changes.is_empty()).then_some(changes);
        self
    }

    /// Adds a detail (anything the event should carry that is not a field change). Never put
    /// secrets or plaintext of encrypted fields here.
    pub fn detail(mut self, key: &str, value: impl Serialize) -> Self {
        self.detail.insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
        self
    }

    /// Adds every entry of a JSON object as details (other values are kept under `value`).
    pub fn details(mut self, value: Value) -> Self {
        match value {
            Value::Object(m) => self.detail.extend(m),
            Value::Null => {}
            other => {
                self.detail.insert("value".into(), other);
            }
        }
        self
    }

    /// Marks the action as refused or failed, with a stable error code (`invalid_credentials`).
    pub fn failure(mut self, error_code: impl Into<String>) -> Self {
        self.outcome = Outcome::Failure;
        self.error_code = Some(error_code.into());
        self
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        };
        if !name_ok(&self.action) {
            return Err(format!(
                "audit action `{}` must be 1 to 100 of a-z 0-9 . _ -",
                self.action
            ));
        }
        if !name_ok(&self.resource_type) {
            return Err(format!(
                "audit resource type `{}` must be 1 to 100 of a-z 0-9 . _ -",
                self.resource_type
            ));
        }
        if self.resource_id.as_ref().is_some_and(|id| id.len() > 200) {
            return Err("audit resource id longer than 200 characters".into());
        }
        Ok(())
    }
}

/// Where the action came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventContext {
    pub request_id: Option<String>,
    /// Masked: the network part only (`203.0.x.x`).
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub method: Option<String>,
    /// The route template (`/api/v1/partners/{id}`), never the concrete path.
    pub route: Option<String>,
}

/// An audit event as stored: one link of its organization's hash chain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    pub id: Uuid,
    /// The organization; the nil UUID for the platform chain (events with no organization,
    /// such as a failed sign-in for an unknown address).
    pub org_id: Uuid,
    /// The event's place in its organization's chain, from 1.
    pub seq: i64,
    pub actor: EventActor,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    /// `{"field": {"before": …, "after": …}}`; encrypted fields as `"changed"`.
    #[schema(value_type = Option<Object>)]
    pub changes: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub detail: Option<Value>,
    pub context: EventContext,
    pub outcome: Outcome,
    pub error_code: Option<String>,
    pub duration_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
    /// SHA-256 (hex) of the previous event's hash and this event's canonical content.
    pub hash: String,
    pub prev_hash: String,
}

/// The stored row (and, as JSON, a pending event's payload).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub(crate) struct EventRow {
    pub id: Uuid,
    pub org_id: Uuid,
    pub seq: i64,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub changes: Option<String>,
    pub detail: Option<String>,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub method: Option<String>,
    pub route: Option<String>,
    pub outcome: String,
    pub error_code: Option<String>,
    pub duration_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub prev_hash: String,
    pub hash: String,
}

pub(crate) const EVENT_COLUMNS: [&str; 21] = [
    "id",
    "org_id",
    "seq",
    "actor_type",
    "actor_id",
    "action",
    "resource_type",
    "resource_id",
    "changes",
    "detail",
    "request_id",
    "ip",
    "user_agent",
    "method",
    "route",
    "outcome",
    "error_code",
    "duration_ms",
    "created_at",
    "prev_hash",
    "hash",
];

/// The canonical content of an event (version 1). Field order is part of the format.
#[derive(Serialize)]
struct Canonical<'a> {
    v: u8,
    id: String,
    org_id: String,
    seq: i64,
    actor_type: &'a str,
    actor_id: Option<&'a str>,
    action: &'a str,
    resource_type: &'a str,
    resource_id: Option<&'a str>,
    changes: Option<&'a str>,
    detail: Option<&'a str>,
    request_id: Option<&'a str>,
    ip: Option<&'a str>,
    user_agent: Option<&'a str>,
    method: Option<&'a str>,
    route: Option<&'a str>,
    outcome: &'a str,
    error_code: Option<&'a str>,
    duration_ms: Option<i64>,
    created_at: String,
}

impl EventRow {
    /// SHA-256 over a domain label, the previous hash and the canonical content.
    pub(crate) fn compute_hash(&self) -> String {
        let canonical = Canonical {
            v: 1,
            id: self.id.hyphenated().to_string(),
            org_id: self.org_id.hyphenated().to_string(),
            seq: self.seq,
            actor_type: &self.actor_type,
            actor_id: self.actor_id.as_deref(),
            action: &self.action,
            resource_type: &self.resource_type,
            resource_id: self.resource_id.as_deref(),
            changes: self.changes.as_deref(),
            detail: self.detail.as_deref(),
            request_id: self.request_id.as_deref(),
            ip: self.ip.as_deref(),
            user_agent: self.user_agent.as_deref(),
            method: self.method.as_deref(),
            route: self.route.as_deref(),
            outcome: &self.outcome,
            error_code: self.error_code.as_deref(),
            duration_ms: self.duration_ms,
            created_at: self.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        };
        // Serialising a struct of strings and integers cannot fail; an empty body would
        // still be bound to the id through the previous hash, and never match on verify.
        let body = serde_json::to_vec(&canonical).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(b"keel/audit/v1\n");
        h.update(self.prev_hash.as_bytes());
        h.update(b"\n");
        h.update(&body);
        hex::encode(h.finalize())
    }

    pub(crate) fn into_event(self) -> AuditEvent {
        let parse = |s: Option<String>| s.and_then(|t| serde_json::from_str::<Value>(&t).ok());
        AuditEvent {
            id: self.id,
            org_id: self.org_id,
            seq: self.seq,
            actor: EventActor {
                kind: ActorKind::parse(&self.actor_type),
                id: self.actor_id,
            },
            action: self.action,
            resource_type: self.resource_type,
            resource_id: self.resource_id,
            changes: parse(self.changes),
            detail: parse(self.detail),
            context: EventContext {
                request_id: self.request_id,
                ip: self.ip,
                user_agent: self.user_agent,
                method: self.method,
                route: self.route,
            },
            outcome: if self.outcome == "failure" {
                Outcome::Failure
            } else {
                Outcome::Success
            },
            error_code: self.error_code,
            duration_ms: self.duration_ms,
            created_at: self.created_at,
            hash: self.hash,
            prev_hash: self.prev_hash,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Serialize)]
    struct Profile {
        name: String,
        tax_id: Option<String>,
        updated_at: i64,
        version: i64,
    }

    #[test]
    fn a_diff_keeps_changed_fields_and_hides_encrypted_ones() {
        let before = Profile {
            name: "Old".into(),
            tax_id: Some("v1.k.ciphertext-one".into()),
            updated_at: 1,
            version: 1,
        };
        let after = Profile {
            name: "New".into(),
            tax_id: Some("v1.k.ciphertext-two".into()),
            updated_at: 2,
            version: 2,
        };
        let c = Changes::diff(&before, &after, &["tax_id"]).to_json();
        assert_eq!(
            c,
            json!({"name": {"before": "Old", "after": "New"}, "tax_id": "changed"})
        );
        assert!(!c.to_string().contains("ciphertext"));
        let same = Changes::diff(&before, &before, &["tax_id"]);
        assert!(same.is_empty());
        let created = Changes::created(&after, &["tax_id"]).to_json();
        assert_eq!(created["name"], json!({"before": null, "after": "New"}));
        assert_eq!(created["tax_id"], json!("changed"));
    }

    #[test]
    fn actions_are_checked() {
        assert!(
            NewEvent::new("partner.created", "partner", Some(1))
                .validate()
                .is_ok()
        );
        assert!(
            NewEvent::new("Partner Created", "partner", None::<String>)
                .validate()
                .is_err()
        );
        assert!(
            NewEvent::new("", "partner", None::<String>)
                .validate()
                .is_err()
        );
    }

    fn row() -> EventRow {
        EventRow {
            id: Uuid::nil(),
            org_id: Uuid::nil(),
            seq: 1,
            actor_type: "system".into(),
            actor_id: Some("test".into()),
            action: "thing.done".into(),
            resource_type: "thing".into(),
            resource_id: None,
            changes: None,
            detail: Some("{\"a\":1}".into()),
            request_id: None,
            ip: None,
            user_agent: None,
            method: None,
            route: None,
            outcome: "success".into(),
            error_code: None,
            duration_ms: Some(3),
            created_at: DateTime::<Utc>::from_timestamp_micros(1_700_000_000_123_456)
                .unwrap_or_default(),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        }
    }

    #[test]
    fn the_hash_covers_content_and_the_previous_link() {
        let r = row();
        let h = r.compute_hash();
        assert_eq!(h.len(), 64);
        assert_eq!(h, row().compute_hash(), "deterministic");
        let mut edited = row();
        edited.detail = Some("{\"a\":2}".into());
        assert_ne!(edited.compute_hash(), h);
        let mut relinked = row();
        relinked.prev_hash = "1".repeat(64);
        assert_ne!(relinked.compute_hash(), h);
    }
}

crate::keyed!(AuditEvent { "seq" => Int(seq), "created_at" => Time(created_at) });
