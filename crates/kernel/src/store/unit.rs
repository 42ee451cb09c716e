//! Units of work: a transaction that is run again when the engine reports contention, and
//! savepoints for nested units that may fail on their own.
//!
//! Why retry at all: on PostgreSQL, two transactions that lock rows in opposite orders
//! deadlock, and one is chosen to fail (40P01); under SERIALIZABLE, a transaction whose reads
//! another one invalidated fails (40001). On SQLite, a writer that waited longer than the busy
//! timeout fails with SQLITE_BUSY. In each case nothing was written and running the whole
//! unit again is the fix — so the retry wraps the *closure*, not a statement.
//!
//! A retry is decided by what the transaction saw ([`Tx::saw_contention`]), not by the error
//! the closure returns, so closures may convert store errors into their own error types
//! (`ApiError`, `anyhow::Error`) freely.
//!
//! The closure returns a boxed future (`|tx| Box::pin(async move { … })`) rather than being
//! an async closure: handler futures must be `Send`, and the compiler cannot yet prove that
//! of an async closure's future for every lifetime it is called with. The
//! [`UnitOfWork`] argument carries the caller's lifetime, so the future may borrow what was
//! borrowed before the call.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use futures::future::BoxFuture;
use rand::Rng as _;

use super::{Db, StoreError, Tx};

/// How [`Db::transaction_with`] retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Runs of the closure at most (the first included).
    pub max_attempts: u32,
    /// The first backoff's upper bound; each later one doubles, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(500),
        }
    }
}

impl RetryPolicy {
    /// "Full jitter": a random delay up to the exponential bound, so transactions that
    /// collided once do not collide again in lockstep.
    fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let bound = exp.min(self.max_delay);
        let micros = u64::try_from(bound.as_micros()).unwrap_or(u64::MAX).max(1);
        Duration::from_micros(rand::rng().random_range(0..=micros))
    }
}

/// The transaction a [`Db::transaction`] closure works in: a [`Tx`] (it dereferences to one,
/// so store functions taking `&mut Tx` take it as is) that cannot be committed or rolled
/// back by the closure. The lifetime lets the closure's future borrow what the caller
/// borrowed before the call.
pub struct UnitOfWork<'env> {
    tx: Tx,
    _env: PhantomData<&'env ()>,
}

impl std::fmt::Debug for UnitOfWork<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.tx.fmt(f)
    }
}

impl Deref for UnitOfWork<'_> {
    type Target = Tx;

    fn deref(&self) -> &Tx {
        &self.tx
    }
}

impl DerefMut for UnitOfWork<'_> {
    fn deref_mut(&mut self) -> &mut Tx {
        &mut self.tx
    }
}

impl Db {
    /// Runs `work` in a transaction and commits it; runs it again (in a new transaction) when
    /// the engine reports contention, up to [`RetryPolicy::default`]'s attempts with jittered
    /// backoff. Any error `work` returns rolls the transaction back.
    ///
    /// `work` may run more than once: it must not have effects outside the transaction (send
    /// mail after it returns, or signal with [`Tx::after_commit`]), and it borrows what it
    /// needs rather than moving it in:
    ///
    /// ```ignore
    /// let (scope, ctx, name) = (&scope, &ctx, &name);
    /// let partner = state.db.transaction(|tx| Box::pin(async move {
    ///     let p = partners::store::insert(tx, scope, name, kind).await?;
    ///     audit::record(tx, scope, ctx, NewEvent::new("partner.created", "partner", Some(p.id))).await?;
    ///     Ok::<_, ApiError>(p)
    /// })).await?;
    /// ```
    pub async fn transaction<'env, T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: for<'t> FnMut(&'t mut UnitOfWork<'env>) -> BoxFuture<'t, Result<T, E>>,
        E: From<StoreError>,
    {
        self.transaction_with(RetryPolicy::default(), work).await
    }

    /// [`Db::transaction`] with an explicit retry policy.
    pub async fn transaction_with<'env, T, E, F>(
        &self,
        policy: RetryPolicy,
        mut work: F,
    ) -> Result<T, E>
    where
        F: for<'t> FnMut(&'t mut UnitOfWork<'env>) -> BoxFuture<'t, Result<T, E>>,
        E: From<StoreError>,
    {
        let max = policy.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let retry = match self.begin().await {
                Err(e) if e.is_contention() && attempt < max => e,
                Err(e) => return Err(e.into()),
                Ok(tx) => {
                    let mut unit = UnitOfWork {
                        tx,
                        _env: PhantomData,
                    };
                    match work(&mut unit).await {
                        Ok(value) => match unit.tx.commit().await {
                            Ok(()) => return Ok(value),
                            Err(e) if e.is_contention() && attempt < max => e,
                            Err(e) => return Err(e.into()),
                        },
                        Err(e) => {
                            let contended = unit.tx.saw_contention();
                            // An explicit rollback returns the connection at once; a failed
                            // rollback only means the connection is discarded.
                            let _ = unit.tx.rollback().await;
                            if !(contended && attempt < max) {
                                return Err(e);
                            }
                            StoreError::Other(anyhow::anyhow!("contention inside the transaction"))
                        }
                    }
                }
            };
            let delay = policy.delay(attempt);
            tracing::debug!(attempt, delay_ms = delay.as_millis() as u64, error = %retry, "transaction contended; running it again");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

/// A savepoint of an open transaction, from [`Tx::savepoint`]: end it with
/// [`Tx::release`] (keep what was written since) or [`Tx::rollback_to`] (undo it). One left
/// open ends with its transaction.
#[derive(Debug)]
#[must_use = "release the savepoint or roll back to it"]
pub struct Savepoint {
    name: String,
    hooks: usize,
    work: usize,
}

impl Tx {
    /// Starts a nested unit of work. If it fails, [`Tx::rollback_to`] undoes what it wrote
    /// (and drops the [`Tx::after_commit`] hooks and work it added) while the outer transaction
    /// carries on; if it succeeds, [`Tx::release`] makes its writes part of the outer
    /// transaction. Savepoints nest.
    ///
    /// On PostgreSQL this is also how to survive an expected failure (a unique violation
    /// taken to mean "already exists"): without a savepoint it aborts the whole transaction.
    ///
    /// ```ignore
    /// let sp = tx.savepoint().await?;
    /// match store::insert(tx, &row).await {
    ///     Ok(()) => tx.release(sp).await?,
    ///     Err(StoreError::Conflict { .. }) => tx.rollback_to(sp).await?,
    ///     Err(e) => return Err(e.into()),
    /// }
    /// ```
    pub async fn savepoint(&mut self) -> Result<Savepoint, StoreError> {
        self.savepoints += 1;
        let sp = Savepoint {
            name: format!("keel_sp_{}", self.savepoints),
            hooks: self.after_commit.len(),
            work: self.after_commit_work.len(),
        };
        self.execute_script(&format!("SAVEPOINT {}", sp.name))
            .await?;
        Ok(sp)
    }

    /// Ends a savepoint, keeping what was written since it.
    pub async fn release(&mut self, sp: Savepoint) -> Result<(), StoreError> {
        self.execute_script(&format!("RELEASE SAVEPOINT {}", sp.name))
            .await
    }

    /// Undoes what was written since the savepoint, and ends it.
    pub async fn rollback_to(&mut self, sp: Savepoint) -> Result<(), StoreError> {
        self.after_commit.truncate(sp.hooks);
        self.after_commit_work.truncate(sp.work);
        self.execute_script(&format!("ROLLBACK TO SAVEPOINT {}", sp.name))
            .await?;
        self.execute_script(&format!("RELEASE SAVEPOINT {}", sp.name))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
        };
        for attempt in 1..40 {
            assert!(p.delay(attempt) <= Duration::from_millis(100));
        }
        assert!(p.delay(1) <= Duration::from_millis(10));
    }

    #[test]
    fn a_server_shutting_down_or_unreachable_is_unavailable_not_a_bug() {
        use super::super::is_unavailable_code;
        // Fast shutdown, crash, start-up, database dropped, gone, lost connection, no slot.
        for code in [
            "57P01", "57P02", "57P03", "57P04", "3D000", "08006", "08003", "53300",
        ] {
            assert!(is_unavailable_code(Some(code)), "{code}");
        }
        // A statement's own errors stay what they are.
        for code in ["42P01", "22021", "23505", "40001", "57014"] {
            assert!(!is_unavailable_code(Some(code)), "{code}");
        }
        assert!(!is_unavailable_code(None));
    }

    #[test]
    fn contention_codes_are_recognised_on_both_engines() {
        use super::super::is_contention_code;
        assert!(is_contention_code(Some("40001")));
        assert!(is_contention_code(Some("40P01")));
        assert!(!is_contention_code(Some("22021")));
        assert!(!is_contention_code(Some("23505")));
        assert!(!is_contention_code(None));
        // SQLite: busy and locked, extended codes included; a constraint is not contention.
        let sqlite =
            |code: i32| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        for code in [5, 517, 6, 262] {
            assert!(StoreError::from(sqlite(code)).is_contention(), "{code}");
        }
        assert!(!StoreError::from(sqlite(2067)).is_contention());
    }
}
