//! How a signal reaches the other nodes: Redis pub/sub when Redis is configured, else
//! PostgreSQL `LISTEN/NOTIFY`, else nowhere (SQLite is one node; the periodic catch-up
//! covers a `keel worker` process beside it). The channel is named after the installation,
//! so deployments sharing a Redis or a PostgreSQL server never hear each other.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use sea_query::{Func, Query};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Message;
use super::hub::{Hub, Signal};
use crate::store::{Db, StoreError, Tx};

/// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; larger messages travel as a
/// bare signal and are read from the table.
const NOTIFY_MAX: usize = 7900;
/// Messages larger than this are not copied into Redis signals either.
const REDIS_MAX: usize = 64 * 1024;

#[derive(Clone)]
pub(crate) enum Fanout {
    Redis {
        url: crate::config::Secret,
        conn: redis::aio::ConnectionManager,
        channel: String,
    },
    Postgres {
        db: Db,
        channel: String,
    },
    InProcess,
}

/// A signal on the wire.
#[derive(Serialize, Deserialize)]
struct Wire {
    o: Uuid,
    s: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<Message>,
}

fn encode(signal: &Signal, max: usize) -> String {
    let with = Wire {
        o: signal.org_id,
        s: signal.seq,
        m: signal.message.as_deref().cloned(),
    };
    match serde_json::to_string(&with) {
        Ok(text) if text.len() <= max => text,
        _ => serde_json::json!({ "o": signal.org_id, "s": signal.seq }).to_string(),
    }
}

fn decode(payload: &[u8]) -> Option<Signal> {
    let wire: Wire = serde_json::from_slice(payload).ok()?;
    Some(Signal {
        org_id: wire.o,
        seq: wire.s,
        message: wire.m.map(|mut m| {
            m.seq = wire.s;
            Arc::new(m)
        }),
    })
}

impl Fanout {
    pub(crate) fn choose(
        config: &crate::config::Config,
        db: &Db,
        redis: Option<redis::aio::ConnectionManager>,
        installation_id: Uuid,
    ) -> Self {
        match (redis, &config.redis_url) {
            (Some(conn), Some(url)) => Fanout::Redis {
                url: url.clone(),
                conn,
                channel: format!("keel:{installation_id}:realtime"),
            },
            _ => match db {
                Db::Postgres(_) => Fanout::Postgres {
                    db: db.clone(),
                    channel: format!("keel_rt_{}", installation_id.simple()),
                },
                Db::Sqlite(_) => Fanout::InProcess,
            },
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Fanout::Redis { .. } => "redis",
            Fanout::Postgres { .. } => "postgres",
            Fanout::InProcess => "in_process",
        }
    }

    /// Inside the publishing transaction: PostgreSQL queues the NOTIFY, sent only on commit.
    pub(crate) async fn announce(&self, tx: &mut Tx, signal: &Signal) -> Result<(), StoreError> {
        if let Fanout::Postgres { channel, .. } = self {
            let payload = encode(signal, NOTIFY_MAX);
            tx.execute(
                &Query::select()
                    .expr(Func::cust("pg_notify").arg(channel.as_str()).arg(payload))
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    /// After commit: Redis publishes (in the background; a lost publish is caught up).
    pub(crate) fn after_commit(&self, signal: Signal) {
        if let Fanout::Redis { conn, channel, .. } = self {
            let mut conn = conn.clone();
            let channel = channel.clone();
            let payload = encode(&signal, REDIS_MAX);
            tokio::spawn(async move {
                let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(payload)
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = sent {
                    tracing::warn!(error = %e, "realtime: Redis publish failed; other nodes catch up from the table");
                }
            });
        }
    }

    /// The task that hears other nodes' signals, if this fan-out has one.
    pub(crate) fn listen(&self, hub: Arc<Hub>) -> Option<futures::future::BoxFuture<'static, ()>> {
        match self.clone() {
            Fanout::Redis { url, channel, .. } => Some(Box::pin(listen_redis(
                url.expose().to_string(),
                channel,
                hub,
            ))),
            Fanout::Postgres {
                db: Db::Postgres(pool),
                channel,
            } => Some(Box::pin(listen_postgres(pool.pool().clone(), channel, hub))),
            _ => None,
        }
    }
}

const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

async fn listen_redis(url: String, channel: String, hub: Arc<Hub>) {
    let mut delay = RECONNECT_MIN;
    loop {
        let subscribed = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            redis::RedisResult::Ok(pubsub)
        }
        .await;
        match subscribed {
            Ok(pubsub) => {
                delay = RECONNECT_MIN;
                // Whatever was published while we were not listening.
                hub.catch_up().await;
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    if let Some(signal) = decode(msg.get_payload_bytes()) {
                        hub.signal(signal);
                    }
                }
                tracing::warn!("realtime: Redis subscription ended; reconnecting");
            }
            Err(e) => {
                tracing::warn!(error = %e, "realtime: cannot subscribe to Redis; retrying");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

async fn listen_postgres(pool: sqlx::PgPool, channel: String, hub: Arc<Hub>) {
    let mut delay = RECONNECT_MIN;
    loop {
        let listener = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match listener {
            Ok(mut listener) => {
                delay = RECONNECT_MIN;
                hub.catch_up().await;
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) => {
                            if let Some(signal) = decode(n.payload().as_bytes()) {
                                hub.signal(signal);
                            }
                        }
                        // The connection was lost and re-established: signals may be missing.
                        Ok(None) => hub.catch_up().await,
                        Err(e) => {
                            tracing::warn!(error = %e, "realtime: PostgreSQL listener failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                if pool.is_closed() {
                    return;
                }
                tracing::warn!(error = %e, "realtime: cannot LISTEN on PostgreSQL; retrying");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_messages_travel_as_bare_signals() {
        let message = Message {
            id: "7".into(),
            channel: "org:x".into(),
            kind: "k".into(),
            data: serde_json::json!({ "text": "x".repeat(9000) }),
            ts: crate::store::now(),
            seq: 7,
            text: Default::default(),
        };
        let signal = Signal {
            org_id: Uuid::nil(),
            seq: 7,
            message: Some(Arc::new(message.clone())),
        };
        let bare = decode(encode(&signal, NOTIFY_MAX).as_bytes()).expect("decodes");
        assert_eq!((bare.seq, bare.message.is_none()), (7, true));
        let full = decode(encode(&signal, REDIS_MAX).as_bytes()).expect("decodes");
        assert_eq!(full.message.as_deref(), Some(&message));
    }
}
