//! Revocation: which sessions, access tokens, users' older tokens and API keys are refused,
//! checked in memory on every request (no database round trip).
//!
//! A revocation is written to `revocation_events` in the same transaction as the change that
//! causes it (logout, password change, deactivation…). After commit the node applies it at
//! once and publishes it on Redis when configured, so other nodes learn it immediately;
//! every node also polls the table (`auth.revocation_poll_ms`), so a node without Redis, or
//! one that missed a message, still learns it within the poll interval. Entries are kept only
//! until the tokens they refuse would have expired anyway.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sea_query::{Expr, ExprTrait, Query};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::tokens::AccessClaims;
use crate::store::{Db, StoreError, Tx, now};

pub const REDIS_CHANNEL: &str = "keel:revocations";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationKind {
    /// Every access token of a session.
    Session,
    /// One access token (`jti`).
    Token,
    /// Every access token of a user issued before `not_before` (role change, deactivation).
    UserBefore,
    /// An API key.
    ApiKey,
}

impl RevocationKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Token => "token",
            Self::UserBefore => "user_before",
            Self::ApiKey => "api_key",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "session" => Self::Session,
            "token" => Self::Token,
            "user_before" => Self::UserBefore,
            "api_key" => Self::ApiKey,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub kind: RevocationKind,
    pub subject: Uuid,
    pub not_before: Option<DateTime<Utc>>,
    /// After this, the entry is no longer needed (what it refuses has expired).
    pub until: DateTime<Utc>,
}

#[derive(sqlx::FromRow, serde::Deserialize)]
struct Row {
    kind: String,
    subject: Uuid,
    not_before: Option<DateTime<Utc>>,
    until: DateTime<Utc>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<Uuid, i64>,
    tokens: HashMap<Uuid, i64>,
    /// user → (tokens issued before this unix millisecond are refused, until)
    users: HashMap<Uuid, (i64, i64)>,
    api_keys: HashMap<Uuid, i64>,
}

/// The in-memory revocation set of this node.
pub struct Revocations {
    state: RwLock<State>,
    last_poll: Mutex<Option<DateTime<Utc>>>,
    /// How long API keys are cached: an API-key revocation must outlive the cache.
    pub api_key_cache_ttl: Duration,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").finish_non_exhaustive()
    }
}

impl Default for Revocations {
    fn default() -> Self {
        Self {
            state: RwLock::new(State::default()),
            last_poll: Mutex::new(None),
            api_key_cache_ttl: Duration::from_secs(60),
        }
    }
}

impl Revocations {
    /// True when this access token must be refused.
    pub fn refuses(&self, claims: &AccessClaims) -> bool {
        let Ok(state) = self.state.read() else {
            return true;
        };
        state.sessions.contains_key(&claims.sid)
            || state.tokens.contains_key(&claims.jti)
            || state
                .users
                .get(&claims.sub)
                .is_some_and(|(before, _)| claims.ims.unwrap_or(claims.iat * 1000) < *before)
    }

    /// Whether a session or one of its access tokens was revoked: long-lived connections
    /// (realtime streams) ask again while they stay open.
    pub fn refuses_session(&self, session_id: Uuid, jti: Uuid) -> bool {
        self.state.read().map_or(true, |s| {
            s.sessions.contains_key(&session_id) || s.tokens.contains_key(&jti)
        })
    }

    pub fn refuses_api_key(&self, id: Uuid) -> bool {
        self.state
            .read()
            .map_or(true, |s| s.api_keys.contains_key(&id))
    }

    pub fn apply(&self, r: &Revocation) {
        let Ok(mut state) = self.state.write() else {
            return;
        };
        let until = r.until.timestamp();
        match r.kind {
            RevocationKind::Session => {
                state.sessions.insert(r.subject, until);
            }
            RevocationKind::Token => {
                state.tokens.insert(r.subject, until);
            }
            RevocationKind::UserBefore => {
                let before = r.not_before.map_or(until * 1000, |t| t.timestamp_millis());
                let entry = state.users.entry(r.subject).or_insert((before, until));
                entry.0 = std::cmp::max(entry.0, before);
                entry.1 = std::cmp::max(entry.1, until);
            }
            RevocationKind::ApiKey => {
                state.api_keys.insert(r.subject, until);
            }
        }
    }

    /// Drops entries whose tokens have expired anyway.
    pub fn prune(&self) {
        let now = Utc::now().timestamp();
        if let Ok(mut state) = self.state.write() {
            state.sessions.retain(|_, until| *until > now);
            state.tokens.retain(|_, until| *until > now);
            state.users.retain(|_, (_, until)| *until > now);
            state.api_keys.retain(|_, until| *until > now);
        }
    }

    /// Loads every revocation still in force (start-up).
    pub async fn load(&self, db: &Db) -> Result<(), StoreError> {
        let started = now();
        let rows: Vec<Row> = db
            .fetch_all(
                &Query::select()
                    .columns(["kind", "subject", "not_before", "until"])
                    .from("revocation_events")
                    .and_where(Expr::col("until").gt(started))
                    .to_owned(),
            )
            .await?;
        self.apply_rows(rows);
        if let Ok(mut last) = self.last_poll.lock() {
            *last = Some(started);
        }
        Ok(())
    }

    /// Reads what other nodes revoked since the last poll. Rows are read with an overlap
    /// (commit order is not insertion order), and applying one twice is harmless.
    pub async fn poll(&self, db: &Db) -> Result<(), StoreError> {
        let started = now();
        let since = self
            .last_poll
            .lock()
            .ok()
            .and_then(|l| *l)
            .map_or(started - TimeDelta::minutes(30), |t| {
                t - TimeDelta::seconds(10)
            });
        let rows: Vec<Row> = db
            .fetch_all(
                &Query::select()
                    .columns(["kind", "subject", "not_before", "until"])
                    .from("revocation_events")
                    .and_where(Expr::col("created_at").gte(since))
                    .to_owned(),
            )
            .await?;
        self.apply_rows(rows);
        if let Ok(mut last) = self.last_poll.lock() {
            *last = Some(started);
        }
        Ok(())
    }

    fn apply_rows(&self, rows: Vec<Row>) {
        for row in rows {
            if let Some(kind) = RevocationKind::parse(&row.kind) {
                self.apply(&Revocation {
                    kind,
                    subject: row.subject,
                    not_before: row.not_before,
                    until: row.until,
                });
            }
        }
    }
}

/// Records revocations inside the caller's transaction.
pub async fn record(tx: &mut Tx, revocations: &[Revocation]) -> Result<(), StoreError> {
    if revocations.is_empty() {
        return Ok(());
    }
    let mut insert = Query::insert()
        .into_table("revocation_events")
        .columns(["kind", "subject", "not_before", "until", "created_at"])
        .to_owned();
    let at = now();
    for r in revocations {
        insert.values_panic([
            r.kind.as_str().into(),
            r.subject.into(),
            r.not_before.into(),
            r.until.into(),
            at.into(),
        ]);
    }
    tx.execute(&insert).await?;
    Ok(())
}

/// After commit: apply here and tell the other nodes through Redis (best effort; polling
/// covers a lost message).
pub async fn broadcast(
    revocations: &Revocations,
    redis: Option<&redis::aio::ConnectionManager>,
    list: &[Revocation],
) {
    for r in list {
        revocations.apply(r);
    }
    let Some(redis) = redis else { return };
    if list.is_empty() {
        return;
    }
    let Ok(payload) = serde_json::to_string(list) else {
        return;
    };
    let mut conn = redis.clone();
    let published: Result<i64, _> = redis::cmd("PUBLISH")
        .arg(REDIS_CHANNEL)
        .arg(payload)
        .query_async(&mut conn)
        .await;
    if let Err(e) = published {
        tracing::warn!(error = %e, "could not publish revocations; other nodes will read them from the database");
    }
}

/// Keeps this node's set current: listens on Redis (when configured) and polls the table.
pub async fn sync_forever(
    revocations: std::sync::Arc<Revocations>,
    db: Db,
    redis_url: Option<String>,
    poll: Duration,
) {
    if let Some(url) = redis_url {
        let revs = revocations.clone();
        tokio::spawn(async move { listen_redis(revs, url).await });
    }
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pruned = std::time::Instant::now();
    loop {
        ticker.tick().await;
        if let Err(e) = revocations.poll(&db).await {
            tracing::warn!(error = %e, "could not read revocations");
        }
        if pruned.elapsed() > Duration::from_secs(60) {
            revocations.prune();
            pruned = std::time::Instant::now();
        }
    }
}

async fn listen_redis(revocations: std::sync::Arc<Revocations>, url: String) {
    use futures::StreamExt;
    loop {
        let subscribed = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(REDIS_CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        match subscribed {
            Ok(mut pubsub) => {
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    if let Ok(list) = serde_json::from_str::<Vec<Revocation>>(&payload) {
                        for r in &list {
                            revocations.apply(r);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "revocation subscription unavailable; retrying");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: Uuid, sid: Uuid, jti: Uuid, iat: i64) -> AccessClaims {
        AccessClaims {
            sub,
            org: Uuid::now_v7(),
            role: "member".into(),
            sid,
            jti,
            iat,
            ims: None,
            exp: iat + 900,
            iss: "keel".into(),
            aud: "keel-api".into(),
            pid: None,
            enr: false,
        }
    }

    #[test]
    fn each_kind_refuses_exactly_what_it_names() {
        let revs = Revocations::default();
        let (u, s, j) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let now = Utc::now();
        let c = claims(u, s, j, now.timestamp() - 10);
        assert!(!revs.refuses(&c));
        revs.apply(&Revocation {
            kind: RevocationKind::Token,
            subject: j,
            not_before: None,
            until: now + TimeDelta::minutes(15),
        });
        assert!(revs.refuses(&c));
        assert!(!revs.refuses(&claims(u, s, Uuid::now_v7(), now.timestamp() - 10)));
        revs.apply(&Revocation {
            kind: RevocationKind::UserBefore,
            subject: u,
            not_before: Some(now),
            until: now + TimeDelta::minutes(15),
        });
        assert!(revs.refuses(&claims(
            u,
            Uuid::now_v7(),
            Uuid::now_v7(),
            now.timestamp() - 1
        )));
        let mut later = claims(u, Uuid::now_v7(), Uuid::now_v7(), now.timestamp());
        later.ims = Some(now.timestamp_millis() + 1);
        assert!(!revs.refuses(&later));
    }

    #[test]
    fn expired_entries_are_pruned() {
        let revs = Revocations::default();
        let sid = Uuid::now_v7();
        revs.apply(&Revocation {
            kind: RevocationKind::Session,
            subject: sid,
            not_before: None,
            until: Utc::now() - TimeDelta::seconds(1),
        });
        revs.prune();
        assert!(!revs.refuses(&claims(Uuid::now_v7(), sid, Uuid::now_v7(), 0)));
    }
}
