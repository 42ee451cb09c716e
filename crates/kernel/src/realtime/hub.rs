//! One node's subscribers and the in-order delivery to them.
//!
//! Signals (from this node's commits, from other nodes through pub/sub, or from the periodic
//! catch-up) go through one dispatcher task, so each organization's messages are delivered
//! in number order. The hub remembers, per organization with local subscribers, the last
//! number it delivered: a signal for the next number that carries its message is delivered
//! as is; any other gap is filled from the table. Delivery never waits on a subscriber: each
//! has a bounded buffer, and one that is full is cut off.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Message, store};
use crate::store::{Db, StoreError};

/// "Message `seq` of `org_id` committed" (with the message itself when it is small).
#[derive(Debug, Clone)]
pub struct Signal {
    pub org_id: Uuid,
    pub seq: i64,
    pub message: Option<Arc<Message>>,
}

/// Messages read from the table per query while filling a gap or resuming.
pub(crate) const PAGE: u64 = 500;

struct Sub {
    channels: HashSet<String>,
    tx: mpsc::Sender<Arc<Message>>,
    cut: Arc<AtomicBool>,
}

struct OrgSubs {
    /// The last message number delivered to this node's subscribers.
    last_seq: i64,
    subs: HashMap<u64, Sub>,
}

#[derive(Default)]
struct HubState {
    orgs: HashMap<Uuid, OrgSubs>,
}

pub struct Hub {
    db: Db,
    state: Mutex<HubState>,
    signals: mpsc::UnboundedSender<Signal>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Signal>>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// A live subscription; unsubscribes when dropped.
pub struct Subscription {
    hub: Arc<Hub>,
    org_id: Uuid,
    id: u64,
    pub(crate) rx: mpsc::Receiver<Arc<Message>>,
    cut: Arc<AtomicBool>,
    /// Messages up to this number were delivered before the subscription started: a resume
    /// reads them from the table, everything after arrives live.
    pub(crate) start_seq: i64,
    pub(crate) channels: Vec<String>,
}

impl Subscription {
    /// Whether the hub cut this subscription off for falling behind.
    pub fn was_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }

    pub fn org_id(&self) -> Uuid {
        self.org_id
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        if let Some(org) = state.orgs.get_mut(&self.org_id) {
            org.subs.remove(&self.id);
            if org.subs.is_empty() {
                state.orgs.remove(&self.org_id);
            }
        }
    }
}

impl Hub {
    pub fn new(db: Db) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            db,
            state: Mutex::new(HubState::default()),
            signals: tx,
            receiver: Mutex::new(Some(rx)),
            next_id: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Queues a signal for the dispatcher; ignored when no local subscriber is in its
    /// organization (a node without listeners keeps nothing).
    pub fn signal(&self, signal: Signal) {
        let watched = self.lock().orgs.contains_key(&signal.org_id);
        if watched {
            let _ = self.signals.send(signal);
        }
    }

    /// Subscribes to `channels` of an organization with a buffer of `buffer` messages.
    pub async fn subscribe(
        self: &Arc<Self>,
        org_id: Uuid,
        channels: Vec<String>,
        buffer: usize,
    ) -> Result<Subscription, StoreError> {
        let watched = self.lock().orgs.contains_key(&org_id);
        // The first subscriber of an organization starts from what is committed now.
        let current = if watched {
            0
        } else {
            store::current_seq(&self.db, org_id).await?
        };
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let cut = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        let org = state.orgs.entry(org_id).or_insert_with(|| OrgSubs {
            last_seq: current,
            subs: HashMap::new(),
        });
        let start_seq = org.last_seq;
        org.subs.insert(
            id,
            Sub {
                channels: channels.iter().cloned().collect(),
                tx,
                cut: cut.clone(),
            },
        );
        drop(state);
        Ok(Subscription {
            hub: self.clone(),
            org_id,
            id,
            rx,
            cut,
            start_seq,
            channels,
        })
    }

    /// Hands one message to the organization's subscribers of its channel, if it is the
    /// next one; cuts off subscribers whose buffer is full.
    fn deliver(&self, org_id: Uuid, message: Arc<Message>) {
        let mut state = self.lock();
        let Some(org) = state.orgs.get_mut(&org_id) else {
            return;
        };
        if message.seq <= org.last_seq {
            return;
        }
        org.last_seq = message.seq;
        let mut gone = Vec::new();
        let (mut delivered, mut cut) = (0u64, 0u64);
        for (id, sub) in &org.subs {
            if !sub.channels.contains(&message.channel) {
                continue;
            }
            match sub.tx.try_send(message.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sub.cut.store(true, Ordering::Relaxed);
                    cut += 1;
                    gone.push(*id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push(*id),
            }
        }
        // Counted once per message, not once per subscriber: with thousands of sockets
        // the per-call lookup of the counter would cost more than the delivery.
        metrics::counter!("keel_realtime_messages_delivered_total").increment(delivered);
        if cut > 0 {
            metrics::counter!("keel_realtime_messages_dropped_total").increment(cut);
            metrics::counter!("keel_realtime_slow_consumers_total").increment(cut);
        }
        // Dropping the sender ends the subscriber's stream once it drained its buffer.
        for id in gone {
            org.subs.remove(&id);
        }
    }

    fn last_seq(&self, org_id: Uuid) -> Option<i64> {
        self.lock().orgs.get(&org_id).map(|o| o.last_seq)
    }

    /// The dispatcher: runs until the process ends (one per node).
    pub(crate) async fn dispatch_forever(self: Arc<Self>) {
        let Some(mut rx) = self.receiver.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        while let Some(signal) = rx.recv().await {
            let Some(last) = self.last_seq(signal.org_id) else {
                continue;
            };
            if signal.seq <= last {
                continue;
            }
            if signal.seq == last + 1
                && let Some(message) = signal.message
            {
                self.deliver(signal.org_id, message);
                continue;
            }
            if let Err(e) = self.fill(signal.org_id, last, signal.seq).await {
                // The periodic catch-up tries again.
                tracing::warn!(error = %e, org = %signal.org_id, "realtime: cannot read missed messages");
            }
        }
    }

    /// Delivers the organization's messages after `last` up to `upto` from the table.
    async fn fill(&self, org_id: Uuid, mut last: i64, upto: i64) -> Result<(), StoreError> {
        while last < upto {
            let rows = store::messages_after(&self.db, org_id, None, last, upto, PAGE).await?;
            let Some(tail) = rows.last() else {
                break;
            };
            let tail = tail.seq;
            for m in rows {
                self.deliver(org_id, Arc::new(m));
            }
            last = tail;
        }
        Ok(())
    }

    /// Every interval, compares each watched organization's counter with what this node
    /// delivered, and fills any gap (a signal lost on the wire, a pub/sub reconnect, or a
    /// commit by a process without a listener, such as `keel worker` on SQLite).
    pub(crate) async fn catch_up_forever(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.catch_up().await;
        }
    }

    /// Checks every watched organization once (also after a pub/sub reconnect).
    pub(crate) async fn catch_up(&self) {
        let watched: Vec<(Uuid, i64)> = self
            .lock()
            .orgs
            .iter()
            .map(|(org, o)| (*org, o.last_seq))
            .collect();
        if watched.is_empty() {
            return;
        }
        let orgs: Vec<Uuid> = watched.iter().map(|(o, _)| *o).collect();
        match store::current_seqs(&self.db, &orgs).await {
            Ok(current) => {
                for (org, last) in watched {
                    if let Some(&seq) = current.get(&org)
                        && seq > last
                    {
                        let _ = self.signals.send(Signal {
                            org_id: org,
                            seq,
                            message: None,
                        });
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "realtime: catch-up check failed"),
        }
    }
}
