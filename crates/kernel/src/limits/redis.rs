//! The shared backend: one atomic Lua script per decision in Redis, so every node of a
//! deployment draws on one allowance per key.
//!
//! The script (`gcra.lua`) reads the Redis server's clock, decides and writes in one step:
//! no read-then-write race between nodes, and no disagreement between nodes whose clocks
//! are skewed. `redis::Script` sends it by SHA (EVALSHA) and loads it on `NOSCRIPT`, so a
//! restarted or failed-over Redis needs nothing from us.

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::Verdict;

/// Prefix of every rate-limit key: `keel:rl:<policy>:<key>`.
pub(crate) const KEY_PREFIX: &str = "keel:rl:";

/// Why Redis gave no decision.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackendFailure {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis answered an unexpected reply: {0:?}")]
    Reply([i64; 4]),
}

pub(crate) struct RedisLimiter {
    connection: ConnectionManager,
    script: redis::Script,
    /// Bound on one decision: a Redis that stops answering must not hold requests.
    timeout: Duration,
}

impl RedisLimiter {
    pub(crate) fn new(connection: ConnectionManager, timeout: Duration) -> Self {
        Self {
            connection,
            script: redis::Script::new(include_str!("gcra.lua")),
            timeout,
        }
    }

    /// One decision. `interval_us` is the cost of one request in microseconds (≥ 1).
    pub(crate) async fn check(
        &self,
        policy: &str,
        key: &str,
        interval_us: u64,
        burst: u32,
    ) -> Result<Verdict, BackendFailure> {
        let redis_key = format!("{KEY_PREFIX}{policy}:{key}");
        let mut connection = self.connection.clone();
        let mut invocation = self.script.key(redis_key);
        invocation.arg(interval_us).arg(burst);
        let reply: (i64, i64, i64, i64) =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection))
                .await
                .map_err(|_| BackendFailure::Timeout(self.timeout))??;
        let (allowed, remaining, reset_us, retry_us) = reply;
        let bad = || BackendFailure::Reply([allowed, remaining, reset_us, retry_us]);
        let remaining = u32::try_from(remaining).map_err(|_| bad())?.min(burst);
        let reset_after = micros(reset_us).ok_or_else(bad)?;
        let retry_after = micros(retry_us).ok_or_else(bad)?;
        Ok(match allowed {
            1 => Verdict {
                allowed: true,
                remaining,
                reset_after,
                retry_after: None,
            },
            0 => Verdict {
                allowed: false,
                remaining: 0,
                reset_after,
                retry_after: Some(retry_after),
            },
            _ => return Err(bad()),
        })
    }
}

fn micros(value: i64) -> Option<Duration> {
    u64::try_from(value).ok().map(Duration::from_micros)
}
