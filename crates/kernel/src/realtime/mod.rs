//! The realtime hub: live messages to WebSocket, Server-Sent Events and long-poll clients.
//!
//! # Channels
//!
//! `user:<id>` (one user), `org:<id>` (an organization's internal users) and resource
//! channels that modules declare ([`ChannelDefinition`], e.g. `partners:<id>`), each with an
//! authorization check through the subscriber's tenant scope. A channel the caller may not
//! read answers 404, exactly like one that does not exist.
//!
//! # Delivery
//!
//! [`Realtime::publish`] writes the message in the caller's transaction
//! (`realtime_messages`), numbered per organization without gaps: taking a number locks the
//! organization's counter row until commit, so numbers become visible in order. After
//! commit, a *signal* (the organization and number, plus the message when it is small)
//! reaches every node: through Redis pub/sub when Redis is configured, else PostgreSQL
//! `NOTIFY` (sent inside the transaction, so only on commit), else in process (SQLite). Each
//! node's [`hub::Hub`] delivers in order to its local subscribers; a signal that skips a
//! number (lost on the wire, too large, or a listener reconnect) makes the node read the
//! missing messages from the table. A periodic catch-up compares each watched organization's
//! counter with what the node delivered, so a lost signal only delays delivery.
//!
//! Pub/sub carries no durable state: the table is the truth, so a reconnecting client
//! resumes with its last message id (`Last-Event-ID`, `after`) and gets every message it
//! missed within the retention window (`realtime.retention_secs`, pruned by housekeeping).
//!
//! Sources: direct publication ([`Realtime::publish`]) and the audit outbox relay: a module
//! maps committed audit events to channels with
//! [`Module::realtime_channels_for`](crate::module::Module::realtime_channels_for).
//!
//! Each connection has a bounded buffer; a consumer that falls behind by more than
//! `realtime.buffer` messages (or whose socket does not take a write within
//! `realtime.send_timeout_ms`) is cut off without slowing anyone else, and resumes from its
//! last id when it reconnects.

mod fanout;
pub mod hub;
pub mod routes;
pub mod store;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::{AuditEvent, Subscriber};
use crate::module::Registry;
use crate::state::AppState;
use crate::store::{Db, StoreError, Tx, now};
use crate::tenancy::TenantScope;

use fanout::Fanout;
pub use hub::Hub;

/// `[realtime]`: connections, buffers, heartbeats and the resume window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RealtimeConfig {
    /// How long published messages stay available for resuming (seconds).
    pub retention_secs: u64,
    /// Heartbeat interval: WebSocket pings and SSE comments (seconds).
    pub heartbeat_secs: u64,
    /// A WebSocket client that sends nothing (not even a pong) this long is disconnected.
    pub idle_timeout_secs: u64,
    /// Messages a connection may fall behind before it is cut off as a slow consumer.
    pub buffer: usize,
    /// Longest wait for one WebSocket write before the connection is cut off.
    pub send_timeout_ms: u64,
    /// Channels one connection may subscribe to.
    pub max_channels: usize,
    /// Realtime connections one node holds at most (0 = no cap); beyond, 503.
    pub max_connections: usize,
    /// How long a ticket from `POST /api/v1/realtime/ticket` stays valid (seconds).
    pub ticket_ttl_secs: u64,
    /// How often each node checks for messages whose signal it missed.
    pub catch_up_interval_ms: u64,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            retention_secs: 3600,
            heartbeat_secs: 25,
            idle_timeout_secs: 90,
            buffer: 256,
            send_timeout_ms: 5000,
            max_channels: 32,
            max_connections: 20_000,
            ticket_ttl_secs: 30,
            catch_up_interval_ms: 1000,
        }
    }
}

impl RealtimeConfig {
    /// Problems with the values, one message each.
    pub fn value_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in [
            ("realtime.retention_secs", self.retention_secs),
            ("realtime.heartbeat_secs", self.heartbeat_secs),
            ("realtime.send_timeout_ms", self.send_timeout_ms),
            ("realtime.ticket_ttl_secs", self.ticket_ttl_secs),
            ("realtime.catch_up_interval_ms", self.catch_up_interval_ms),
        ] {
            if value == 0 {
                problems.push(format!("{name}: must be greater than 0"));
            }
        }
        if self.idle_timeout_secs <= self.heartbeat_secs {
            problems.push(
                "realtime.idle_timeout_secs: must be greater than realtime.heartbeat_secs".into(),
            );
        }
        if !(1..=100_000).contains(&self.buffer) {
            problems.push("realtime.buffer: must be between 1 and 100000".into());
        }
        if !(1..=1000).contains(&self.max_channels) {
            problems.push("realtime.max_channels: must be between 1 and 1000".into());
        }
        if self.ticket_ttl_secs > 600 {
            problems.push("realtime.ticket_ttl_secs: must be at most 600".into());
        }
        problems
    }
}

/// A validated channel name: `<prefix>:<id>`, e.g. `user:<uuid>`, `org:<uuid>`,
/// `partners:<uuid>` or `trade:shipments:<uuid>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(String);

/// The longest channel name.
pub const MAX_CHANNEL_LEN: usize = 200;

impl Channel {
    /// One user's channel (their notifications, for instance).
    pub fn user(user_id: Uuid) -> Self {
        Self(format!("user:{user_id}"))
    }

    /// An organization's channel (its internal users).
    pub fn org(org_id: Uuid) -> Self {
        Self(format!("org:{org_id}"))
    }

    /// A resource channel of a prefix a module declared, e.g. `("partners", id)`.
    pub fn resource(prefix: &str, id: impl std::fmt::Display) -> Result<Self, String> {
        Self::parse(&format!("{prefix}:{id}"))
    }

    /// Checks the shape: a lowercase prefix, `:`, then letters, digits and `_ - . :`.
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() || name.len() > MAX_CHANNEL_LEN {
            return Err(format!(
                "a channel name has 1 to {MAX_CHANNEL_LEN} characters"
            ));
        }
        let Some((prefix, rest)) = name.split_once(':') else {
            return Err(format!(
                "`{name}` is not a channel like user:<id> or org:<id>"
            ));
        };
        let prefix_ok = prefix
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase())
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        let rest_ok = !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
        if prefix_ok && rest_ok {
            Ok(Self(name.to_string()))
        } else {
            Err(format!("`{name}` is not a valid channel name"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One message as clients receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    /// Increasing within an organization (so within each channel); pass the last one seen as
    /// `Last-Event-ID` or `after` to resume.
    pub id: String,
    pub channel: String,
    /// What happened, e.g. `notification.created` or `partner.updated`.
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub ts: DateTime<Utc>,
    /// The number behind `id`.
    #[serde(skip)]
    pub(crate) seq: i64,
    /// The message as JSON text, made once however many subscribers it goes to.
    #[serde(skip)]
    pub(crate) text: Text,
}

impl Message {
    /// The message as its subscribers receive it (JSON), serialized on first use and then
    /// shared: a cheap clone for each of the organization's sockets.
    pub(crate) fn text(&self) -> axum::extract::ws::Utf8Bytes {
        self.text
            .0
            .get_or_init(|| serde_json::to_string(self).unwrap_or_default().into())
            .clone()
    }
}

/// A message's serialized form, once made. Not part of what a message is: two messages
/// are equal whether or not either was serialized yet.
#[derive(Debug, Clone, Default)]
pub(crate) struct Text(std::sync::OnceLock<axum::extract::ws::Utf8Bytes>);

impl PartialEq for Text {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

type AuthorizeFn = Arc<
    dyn Fn(AppState, TenantScope, String) -> BoxFuture<'static, anyhow::Result<bool>> + Send + Sync,
>;

/// A resource channel family a module declares, e.g. `partners:<id>`: who may subscribe.
#[derive(Clone)]
pub struct ChannelDefinition {
    /// The part before the id, e.g. `partners` or `trade:shipments`.
    pub prefix: &'static str,
    /// A permission the subscriber must hold, if any.
    pub permission: Option<&'static str>,
    /// Whether the resource with this id is visible in the subscriber's scope (usually a
    /// scoped store read). `false` answers 404, like an unknown channel.
    pub authorize: AuthorizeFn,
}

impl std::fmt::Debug for ChannelDefinition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelDefinition")
            .field("prefix", &self.prefix)
            .field("permission", &self.permission)
            .finish()
    }
}

impl ChannelDefinition {
    pub fn new<F, Fut>(prefix: &'static str, authorize: F) -> Self
    where
        F: Fn(AppState, TenantScope, String) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = anyhow::Result<bool>> + Send + 'static,
    {
        Self {
            prefix,
            permission: None,
            authorize: Arc::new(move |s, scope, id| Box::pin(authorize(s, scope, id))),
        }
    }

    pub fn permission(mut self, permission: &'static str) -> Self {
        self.permission = Some(permission);
        self
    }
}

/// Who listens: the caller of a realtime route (from a bearer token, cookie or ticket).
#[derive(Debug, Clone)]
pub struct Listener {
    pub org_id: Uuid,
    pub user_id: Uuid,
    pub partner_id: Option<Uuid>,
    pub permissions: BTreeSet<String>,
    /// What the caller signed in with (directly or behind a ticket): an open connection
    /// ends when it expires or is revoked.
    pub credential: Option<crate::auth::Credential>,
}

impl Listener {
    pub fn scope(&self) -> TenantScope {
        TenantScope::for_user(self.org_id, self.partner_id, self.user_id)
    }

    /// Whether the credential behind this connection still holds (checked on every
    /// heartbeat, so a sign-out or an expired token ends the stream).
    pub fn still_valid(&self, state: &AppState) -> bool {
        let revocations = &state.auth.revocations;
        match &self.credential {
            Some(crate::auth::Credential::Session {
                session_id,
                jti,
                exp,
            }) => Utc::now().timestamp() < *exp && !revocations.refuses_session(*session_id, *jti),
            Some(crate::auth::Credential::ApiKey { id }) => !revocations.refuses_api_key(*id),
            None => false,
        }
    }
}

/// The realtime hub's handle on `AppState::realtime`.
pub struct Realtime {
    pub(crate) config: RealtimeConfig,
    pub(crate) hub: Arc<Hub>,
    pub(crate) fanout: Fanout,
    channels: Vec<ChannelDefinition>,
    connections: AtomicUsize,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for Realtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Realtime")
            .field("fanout", &self.fanout.name())
            .field("connections", &self.connections.load(Ordering::Relaxed))
            .finish()
    }
}

impl Realtime {
    pub fn new(
        config: &crate::config::Config,
        db: &Db,
        registry: &Registry,
        redis: Option<redis::aio::ConnectionManager>,
        installation_id: Uuid,
    ) -> Self {
        let fanout = Fanout::choose(config, db, redis, installation_id);
        Self {
            config: config.realtime.clone(),
            hub: Arc::new(Hub::new(db.clone())),
            fanout,
            channels: registry.realtime_channels(),
            connections: AtomicUsize::new(0),
            shutdown: watch::channel(false).0,
        }
    }

    /// How signals reach other nodes: `redis`, `postgres` or `in_process`.
    pub fn fanout_name(&self) -> &'static str {
        self.fanout.name()
    }

    /// Publishes `data` as a message of type `kind` on `channel` in the scope's
    /// organization, inside `tx`: it exists, and subscribers see it, only if `tx` commits.
    pub async fn publish(
        &self,
        tx: &mut Tx,
        scope: &TenantScope,
        channel: &Channel,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<Message, StoreError> {
        self.publish_from(tx, scope.org_id(), channel, kind, data, None)
            .await
    }

    /// [`Realtime::publish`] in a transaction of its own, for messages that accompany no
    /// write (a progress report, a presence change).
    pub async fn publish_now(
        &self,
        db: &Db,
        scope: &TenantScope,
        channel: &Channel,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<Message, StoreError> {
        let mut tx = db.begin().await?;
        let message = self.publish(&mut tx, scope, channel, kind, data).await?;
        tx.commit().await?;
        Ok(message)
    }

    pub(crate) async fn publish_from(
        &self,
        tx: &mut Tx,
        org_id: Uuid,
        channel: &Channel,
        kind: &str,
        data: serde_json::Value,
        source: Option<Uuid>,
    ) -> Result<Message, StoreError> {
        let seq = store::next_seq(tx, org_id).await?;
        let ts = now();
        store::insert_message(tx, org_id, seq, channel.as_str(), kind, &data, source, ts).await?;
        let message = Message {
            id: seq.to_string(),
            channel: channel.as_str().to_string(),
            kind: kind.to_string(),
            data,
            ts,
            seq,
            text: Text::default(),
        };
        let signal = hub::Signal {
            org_id,
            seq,
            message: Some(Arc::new(message.clone())),
        };
        self.fanout.announce(tx, &signal).await?;
        let hub = self.hub.clone();
        let fanout = self.fanout.clone();
        tx.after_commit(move || {
            hub.signal(signal.clone());
            fanout.after_commit(signal);
        });
        Ok(message)
    }

    /// Starts the node's delivery tasks: the dispatcher, the cross-node listener and the
    /// periodic catch-up. They stop when the returned handles are dropped.
    pub fn start(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![
            tokio::spawn(self.hub.clone().dispatch_forever()),
            tokio::spawn(
                self.hub
                    .clone()
                    .catch_up_forever(Duration::from_millis(self.config.catch_up_interval_ms)),
            ),
        ];
        if let Some(listener) = self.fanout.listen(self.hub.clone()) {
            tasks.push(tokio::spawn(listener));
        }
        tasks
    }

    /// Asks every open connection to close (at shutdown, so draining does not wait for
    /// long-lived streams).
    pub fn close_all(&self) {
        let _ = self.shutdown.send(true);
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(crate) fn definition(&self, channel: &str) -> Option<(&ChannelDefinition, String)> {
        self.channels
            .iter()
            .filter_map(|d| {
                channel
                    .strip_prefix(d.prefix)
                    .and_then(|r| r.strip_prefix(':'))
                    .filter(|r| !r.is_empty())
                    .map(|r| (d, r.to_string()))
            })
            .max_by_key(|(d, _)| d.prefix.len())
    }

    /// Counts a connection in; `None` when the node is at `realtime.max_connections`.
    pub(crate) fn admit(self: &Arc<Self>, transport: &'static str) -> Option<ConnectionGuard> {
        let max = self.config.max_connections;
        let n = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        if max > 0 && n > max {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        metrics::gauge!("keel_realtime_connections", "transport" => transport).increment(1.0);
        Some(ConnectionGuard {
            realtime: self.clone(),
            transport,
        })
    }

    /// Open realtime connections on this node.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// One open connection; counted out when dropped.
pub(crate) struct ConnectionGuard {
    realtime: Arc<Realtime>,
    transport: &'static str,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.realtime.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("keel_realtime_connections", "transport" => self.transport).decrement(1.0);
    }
}

/// Publishes committed audit events on the channels modules map them to (the audit outbox
/// relay calls it at least once per event; a redelivered event is recognised by its id).
pub(crate) struct AuditToRealtime {
    pub db: Db,
    pub registry: Registry,
    pub realtime: Arc<Realtime>,
}

#[async_trait::async_trait]
impl Subscriber for AuditToRealtime {
    fn name(&self) -> &'static str {
        "realtime"
    }

    async fn deliver(&self, event: &AuditEvent) -> anyhow::Result<()> {
        if event.org_id == crate::audit::PLATFORM_ORG {
            return Ok(());
        }
        let mut channels: Vec<Channel> = self.registry.realtime_channels_for(event);
        channels.sort();
        channels.dedup();
        if channels.is_empty() {
            return Ok(());
        }
        let data = serde_json::json!({
            "event_id": event.id,
            "resource_type": event.resource_type,
            "resource_id": event.resource_id,
        });
        let (channels, data) = (&channels, &data);
        let realtime = &self.realtime;
        self.db
            .transaction(|tx| {
                Box::pin(async move {
                    for channel in channels {
                        if store::published_from(tx, event.org_id, event.id, channel.as_str())
                            .await?
                        {
                            continue;
                        }
                        realtime
                            .publish_from(
                                tx,
                                event.org_id,
                                channel,
                                &event.action,
                                data.clone(),
                                Some(event.id),
                            )
                            .await?;
                    }
                    Ok::<_, StoreError>(())
                })
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_checked() {
        assert!(Channel::parse("user:0191f7a0-0000-7000-8000-000000000000").is_ok());
        assert!(Channel::parse("trade:shipments:abc").is_ok());
        for bad in [
            "",
            "user",
            "user:",
            ":x",
            "User:x",
            "user:a b",
            "org:x,y",
            "x:<script>",
        ] {
            assert!(Channel::parse(bad).is_err(), "{bad}");
        }
        assert!(Channel::parse(&format!("a:{}", "x".repeat(MAX_CHANNEL_LEN))).is_err());
    }

    #[test]
    fn the_defaults_are_valid() {
        assert!(RealtimeConfig::default().value_problems().is_empty());
    }
}
