//! The shared cache: typed get-or-load with a TTL, invalidation by key and by tag, on two
//! levels — in process (`moka`) and Redis when configured — kept coherent across nodes.
//!
//! - **Tenant-keyed by construction.** A [`TenantCache`] takes only [`CacheKey`]s and
//!   [`Tag`]s, and both are made from a [`TenantScope`]: a key cannot be formed without its
//!   organization, so one organization's entry is never served to another. A cache of data
//!   that belongs to no organization (reference data such as HS code rates) is declared as
//!   such with [`Caches::global`] and takes [`GlobalKey`]s.
//! - **Single flight.** Concurrent misses for one key on one node run the loader once; the
//!   others wait for its result (`moka`'s entry API). A loader's error is returned to every
//!   waiter and nothing is cached.
//! - **Two levels.** A miss in process reads Redis (`keel:cache:<cache>:<key>`, JSON, with the
//!   cache's TTL) before loading, and a load writes Redis, so nodes share loaded values. Redis
//!   is an optimisation: when it fails, values are loaded from the source and the failure is
//!   logged, never returned.
//! - **Invalidation reaches every node.** Invalidating deletes the entry in process and in
//!   Redis, and publishes on the kernel channel `keel:cache:invalidate`; every node drops its
//!   copy. A node that loses its subscription clears its in-process caches when it
//!   resubscribes (it may have missed messages). Invalidate after the write commits
//!   ([`TenantCache::invalidate_after_commit`]) so no node reloads the old value.
//! - **Metrics**: `keel_cache_requests_total{cache, result="hit"|"remote_hit"|"miss"}`.
//!
//! ```ignore
//! let stats = state.cache.tenant::<Dashboard>("dashboard", Duration::from_secs(300))?;
//! let key = CacheKey::org(&scope, &["summary", &period]);
//! let value = stats
//!     .get_or_load(&key, &[Tag::org(&scope, "dashboard")], || load_dashboard(&state, &scope))
//!     .await?;
//! stats.invalidate_tag(&Tag::org(&scope, "dashboard")).await; // after a write
//! ```

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::tenancy::TenantScope;

/// The Redis channel every node listens on for invalidations.
pub const INVALIDATION_CHANNEL: &str = "keel:cache:invalidate";
const REDIS_PREFIX: &str = "keel:cache";

/// `[cache]`: in-process capacity and the Redis level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Entries kept in process per cache (least recently used go first).
    pub max_entries: u64,
    /// Share cached values through Redis when `redis_url` is set (invalidations always
    /// travel through Redis when it is configured).
    pub redis: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            redis: true,
        }
    }
}

impl CacheConfig {
    pub fn value_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.max_entries == 0 {
            out.push("cache.max_entries: must be at least 1".into());
        }
        out
    }
}

fn escape(part: &str) -> String {
    part.replace('%', "%25").replace(':', "%3A")
}

fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| escape(p))
        .collect::<Vec<_>>()
        .join(":")
}

/// A key of a tenant cache: `org:<org id>:<parts…>`. Made only from a scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// The key `parts` inside the scope's organization.
    pub fn org(scope: &TenantScope, parts: &[&str]) -> Self {
        Self(format!("org:{}:{}", scope.org_id(), join(parts)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A tag of a tenant cache's entries (e.g. all of one organization's dashboard entries).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag(String);

impl Tag {
    pub fn org(scope: &TenantScope, name: &str) -> Self {
        Self(format!("org:{}:{}", scope.org_id(), escape(name)))
    }
}

/// A key of a global cache (data that belongs to no organization).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GlobalKey(String);

impl GlobalKey {
    pub fn new(parts: &[&str]) -> Self {
        Self(format!("global:{}", join(parts)))
    }
}

/// A tag of a global cache's entries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GlobalTag(String);

impl GlobalTag {
    pub fn new(name: &str) -> Self {
        Self(format!("global:{}", escape(name)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache `{0}` is already declared with another value type or kind")]
    TypeMismatch(String),
    #[error("cache name `{0}` must be lowercase letters, digits, _ - .")]
    BadName(String),
}

/// A cache's counters since start-up (also exported as metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub remote_hits: u64,
    pub misses: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    remote_hits: AtomicU64,
    misses: AtomicU64,
}

/// An invalidation as published between nodes.
#[derive(Debug, Serialize, Deserialize)]
struct Invalidation {
    node: Uuid,
    cache: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
}

/// What the listener needs from a cache, whatever its value type.
trait LocalCache: Send + Sync {
    fn drop_key<'a>(&'a self, key: &'a str) -> futures::future::BoxFuture<'a, ()>;
    fn drop_tag<'a>(&'a self, tag: &'a str) -> futures::future::BoxFuture<'a, ()>;
    fn clear(&self);
}

struct Entry<V> {
    value: V,
    /// Distinguishes this value from earlier and later ones under the same key (for the tag
    /// index).
    id: u64,
    tags: Box<[String]>,
    /// How long this node keeps it: the cache's TTL, or what is left of it in Redis for a
    /// value another node loaded (so no node serves a value longer than the TTL).
    ttl: Duration,
}

struct EntryExpiry;

impl<V> moka::Expiry<String, Arc<Entry<V>>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Entry<V>>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

struct Core<V> {
    name: String,
    ttl: Duration,
    global: bool,
    local: moka::future::Cache<String, Arc<Entry<V>>>,
    shared: Arc<Shared>,
    counters: Counters,
    /// Loads in flight: one whose key or tag is invalidated before it lands (it may have read
    /// the old value) is dropped once it lands instead of being served for a TTL.
    in_flight: InFlight,
    /// Which keys carry each tag, so dropping a tag drops exactly those keys.
    tagged: Arc<TagIndex>,
    next_id: AtomicU64,
}

/// Tag → the keys of this node's entries carrying it, each with its entry's id.
///
/// Why not `moka`'s `invalidate_entries_if`: it registers a predicate per call that is kept
/// until the cache's housekeeping has scanned every older entry, and a cache that writes
/// invalidate often but few requests read runs no housekeeping, so the predicates piled up
/// without bound (one per write: 30 MiB over a 30-minute soak). The index holds only what
/// is cached: a key joins its tags just before its value is inserted and leaves them when
/// that value is removed for any reason (the eviction listener, matched by id so the removal
/// of an older value never unlists a newer one).
#[derive(Default)]
struct TagIndex {
    tags: Mutex<HashMap<String, HashMap<String, u64>>>,
}

impl TagIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, u64>>> {
        self.tags
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn add(&self, key: &str, id: u64, tags: &[String]) {
        let mut map = self.lock();
        for tag in tags {
            map.entry(tag.clone())
                .or_default()
                .insert(key.to_string(), id);
        }
    }

    fn remove(&self, key: &str, id: u64, tags: &[String]) {
        let mut map = self.lock();
        for tag in tags {
            if let Some(keys) = map.get_mut(tag.as_str()) {
                if keys.get(key) == Some(&id) {
                    keys.remove(key);
                }
                if keys.is_empty() {
                    map.remove(tag.as_str());
                }
            }
        }
    }

    fn keys(&self, tag: &str) -> Vec<String> {
        self.lock()
            .get(tag)
            .map(|keys| keys.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn clear(&self) {
        self.lock().clear();
    }

    /// Tags indexed (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The keys and tags of the loads running on this node, with how often each was invalidated
/// since. A load is dropped when it lands only if its own key or one of its own tags (or the
/// whole cache) was invalidated meanwhile — not on any invalidation in the cache, which
/// under writes from many organizations would drop nearly every load. Only names with a
/// load in flight are held, so the map stays as small as the number of concurrent misses.
#[derive(Default)]
struct InFlight {
    /// Name (`k:<key>` or `t:<tag>`) → (loads in flight, invalidations seen).
    names: Mutex<HashMap<String, (usize, u64)>>,
    /// Whole-cache clears.
    all: AtomicU64,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (usize, u64)>> {
        self.names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn names(key: &str, tags: &[String]) -> Vec<String> {
        std::iter::once(format!("k:{key}"))
            .chain(tags.iter().map(|t| format!("t:{t}")))
            .collect()
    }

    /// Registers a load of `key` tagged `tags`; the guard says whether it went stale.
    fn begin(&self, key: &str, tags: &[String]) -> LoadGuard<'_> {
        let names = Self::names(key, tags);
        let all = self.all.load(Ordering::SeqCst);
        let mut map = self.lock();
        for n in &names {
            map.entry(n.clone()).or_insert((0, 0)).0 += 1;
        }
        let seen = names.iter().map(|n| map.get(n).map_or(0, |e| e.1)).sum();
        LoadGuard {
            flight: self,
            names,
            all,
            seen,
        }
    }

    fn bump(&self, name: String) {
        if let Some(e) = self.lock().get_mut(&name) {
            e.1 += 1;
        }
    }

    fn bump_all(&self) {
        self.all.fetch_add(1, Ordering::SeqCst);
    }
}

/// One load in flight; unregisters itself when dropped (also when the load is cancelled).
struct LoadGuard<'a> {
    flight: &'a InFlight,
    names: Vec<String>,
    all: u64,
    seen: u64,
}

impl LoadGuard<'_> {
    /// Whether the load's key or one of its tags was invalidated since it began.
    fn stale(&self) -> bool {
        if self.flight.all.load(Ordering::SeqCst) != self.all {
            return true;
        }
        let map = self.flight.lock();
        let now: u64 = self
            .names
            .iter()
            .map(|n| map.get(n).map_or(0, |e| e.1))
            .sum();
        now != self.seen
    }
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.flight.lock();
        for n in &self.names {
            if let Some(e) = map.get_mut(n) {
                e.0 -= 1;
                if e.0 == 0 {
                    map.remove(n);
                }
            }
        }
    }
}

impl<V: Clone + Send + Sync + 'static> LocalCache for Core<V> {
    fn drop_key<'a>(&'a self, key: &'a str) -> futures::future::BoxFuture<'a, ()> {
        self.in_flight.bump(format!("k:{key}"));
        Box::pin(self.local.invalidate(key))
    }

    fn drop_tag<'a>(&'a self, tag: &'a str) -> futures::future::BoxFuture<'a, ()> {
        self.in_flight.bump(format!("t:{tag}"));
        Box::pin(async move {
            for key in self.tagged.keys(tag) {
                self.local.invalidate(&key).await;
            }
        })
    }

    fn clear(&self) {
        self.in_flight.bump_all();
        self.local.invalidate_all();
        self.tagged.clear();
    }
}

/// A declared cache: for invalidations, and as itself (to hand it out again by name).
type Registered = (Arc<dyn LocalCache>, Arc<dyn Any + Send + Sync>);

/// Shared between the caches of one process and the invalidation listener.
struct Shared {
    node: Uuid,
    max_entries: u64,
    /// Redis for the second level and invalidations (`None` without Redis).
    redis: Option<redis::aio::ConnectionManager>,
    /// Whether values are stored in Redis (invalidations use it whenever it is configured).
    redis_values: bool,
    caches: Mutex<HashMap<String, Registered>>,
    listening: AtomicBool,
}

/// Every cache of this process (`state.cache`).
#[derive(Clone)]
pub struct Caches {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("redis", &self.shared.redis.is_some())
            .finish_non_exhaustive()
    }
}

impl Caches {
    pub fn new(
        config: &CacheConfig,
        redis: Option<redis::aio::ConnectionManager>,
        node: Uuid,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                node,
                max_entries: config.max_entries.max(1),
                redis_values: config.redis && redis.is_some(),
                redis,
                caches: Mutex::new(HashMap::new()),
                listening: AtomicBool::new(false),
            }),
        }
    }

    /// The cache `name` of values that belong to one organization each, with entries kept
    /// for `ttl`. Declaring it again returns the same cache (the first TTL holds).
    pub fn tenant<V>(&self, name: &str, ttl: Duration) -> Result<TenantCache<V>, CacheError>
    where
        V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
    {
        Ok(TenantCache(self.core(name, ttl, false)?))
    }

    /// The cache `name` of data that belongs to no organization (reference data).
    pub fn global<V>(&self, name: &str, ttl: Duration) -> Result<GlobalCache<V>, CacheError>
    where
        V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
    {
        Ok(GlobalCache(self.core(name, ttl, true)?))
    }

    fn core<V>(&self, name: &str, ttl: Duration, global: bool) -> Result<Arc<Core<V>>, CacheError>
    where
        V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
    {
        if !crate::config::is_queue_name(name) {
            return Err(CacheError::BadName(name.into()));
        }
        let mut caches = self
            .shared
            .caches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, any)) = caches.get(name) {
            return any
                .clone()
                .downcast::<Core<V>>()
                .ok()
                .filter(|c| c.global == global)
                .ok_or_else(|| CacheError::TypeMismatch(name.into()));
        }
        let tagged = Arc::new(TagIndex::default());
        let unlist = tagged.clone();
        let core = Arc::new(Core {
            name: name.to_string(),
            ttl,
            global,
            local: moka::future::Cache::builder()
                .max_capacity(self.shared.max_entries)
                .expire_after(EntryExpiry)
                .eviction_listener(move |key: Arc<String>, entry: Arc<Entry<V>>, _cause| {
                    unlist.remove(&key, entry.id, &entry.tags);
                })
                .build(),
            shared: self.shared.clone(),
            counters: Counters::default(),
            in_flight: InFlight::default(),
            tagged,
            next_id: AtomicU64::new(0),
        });
        caches.insert(
            name.to_string(),
            (
                core.clone() as Arc<dyn LocalCache>,
                core.clone() as Arc<dyn Any + Send + Sync>,
            ),
        );
        Ok(core)
    }

    /// Whether this node receives other nodes' invalidations (always true without Redis:
    /// there are no other nodes to hear from).
    pub fn is_listening(&self) -> bool {
        self.shared.redis.is_none() || self.shared.listening.load(Ordering::Acquire)
    }

    async fn apply(&self, msg: &Invalidation) {
        if msg.node == self.shared.node {
            return;
        }
        let cache = {
            let caches = self
                .shared
                .caches
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            caches.get(&msg.cache).map(|(c, _)| c.clone())
        };
        if let Some(cache) = cache {
            if let Some(k) = &msg.key {
                cache.drop_key(k).await;
            }
            if let Some(t) = &msg.tag {
                cache.drop_tag(t).await;
            }
        }
    }

    fn clear_all(&self) {
        let caches: Vec<Arc<dyn LocalCache>> = self
            .shared
            .caches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .map(|(c, _)| c.clone())
            .collect();
        for c in caches {
            c.clear();
        }
    }

    /// Listens for other nodes' invalidations until the task is dropped (started by the
    /// server when Redis is configured). Resubscribes after a lost connection, clearing the
    /// in-process caches first since messages may have been missed.
    pub async fn listen(self, redis_url: String) {
        use futures::StreamExt;
        let mut first = true;
        loop {
            let subscribed = async {
                let client = redis::Client::open(redis_url.as_str())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(INVALIDATION_CHANNEL).await?;
                Ok::<_, redis::RedisError>(pubsub)
            }
            .await;
            match subscribed {
                Ok(mut pubsub) => {
                    if !first {
                        self.clear_all();
                    }
                    first = false;
                    self.shared.listening.store(true, Ordering::Release);
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let Ok(payload) = msg.get_payload::<String>() else {
                            continue;
                        };
                        if let Ok(inv) = serde_json::from_str::<Invalidation>(&payload) {
                            self.apply(&inv).await;
                        }
                    }
                    self.shared.listening.store(false, Ordering::Release);
                    tracing::warn!("cache invalidation subscription lost; resubscribing");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cache invalidation subscription unavailable; retrying");
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

impl<V> Core<V>
where
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
{
    fn redis_key(&self, key: &str) -> String {
        format!("{REDIS_PREFIX}:{}:{key}", self.name)
    }

    fn redis_tag(&self, tag: &str) -> String {
        format!("{REDIS_PREFIX}:{}:tag:{tag}", self.name)
    }

    fn count(&self, result: &'static str) {
        let c = match result {
            "hit" => &self.counters.hits,
            "remote_hit" => &self.counters.remote_hits,
            _ => &self.counters.misses,
        };
        c.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("keel_cache_requests_total", "cache" => self.name.clone(), "result" => result)
            .increment(1);
    }

    async fn get_or_load<F, Fut, E>(
        self: &Arc<Self>,
        key: &str,
        tags: Vec<String>,
        load: F,
    ) -> Result<V, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        let mut source = "miss";
        // Registered when this call loads (a miss), before it reads anything.
        let mut guard = None;
        let entry = self
            .local
            .entry(key.to_string())
            .or_try_insert_with(async {
                guard = Some(self.in_flight.begin(key, &tags));
                let (value, ttl) = match self.remote_get(key).await {
                    Some((value, left)) => {
                        source = "remote_hit";
                        (value, left.min(self.ttl))
                    }
                    None => {
                        let value = load().await?;
                        self.remote_put(key, &tags, &value).await;
                        (value, self.ttl)
                    }
                };
                // Listed under its tags before it is inserted: a tag dropped from here on
                // finds the key (one dropped earlier marks this load stale, below).
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                self.tagged.add(key, id, &tags);
                Ok(Arc::new(Entry {
                    value,
                    id,
                    tags: tags.into_boxed_slice(),
                    ttl,
                }))
            })
            .await?;
        self.count(if entry.is_fresh() { source } else { "hit" });
        if entry.is_fresh() && guard.as_ref().is_some_and(LoadGuard::stale) {
            // An invalidation ran while this value was loading: it may predate the write that
            // caused it. This caller gets it (its read began first); nobody else will.
            self.local.invalidate(key).await;
            self.remote_forget(key).await;
        }
        Ok(entry.into_value().value.clone())
    }

    /// The value in Redis and how long it has left.
    async fn remote_get(&self, key: &str) -> Option<(V, Duration)> {
        if !self.shared.redis_values {
            return None;
        }
        let mut conn = self.shared.redis.clone()?;
        let redis_key = self.redis_key(key);
        let (raw, left_ms): (Option<String>, i64) = match redis::pipe()
            .cmd("GET")
            .arg(&redis_key)
            .cmd("PTTL")
            .arg(&redis_key)
            .query_async(&mut conn)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(cache = %self.name, error = %e, "cache: Redis read failed; loading from the source");
                return None;
            }
        };
        // PTTL is negative when the key is gone or has no expiry (never set by Keel).
        let left = Duration::from_millis(u64::try_from(left_ms).ok().filter(|ms| *ms > 0)?);
        let value = serde_json::from_str(&raw?).ok()?;
        Some((value, left))
    }

    async fn remote_put(&self, key: &str, tags: &[String], value: &V) {
        if !self.shared.redis_values {
            return;
        }
        let Some(mut conn) = self.shared.redis.clone() else {
            return;
        };
        let Ok(json) = serde_json::to_string(value) else {
            return;
        };
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.redis_key(key))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
        for t in tags {
            let set = self.redis_tag(t);
            pipe.cmd("SADD").arg(&set).arg(key).ignore();
            pipe.cmd("PEXPIRE").arg(&set).arg(ttl_ms).ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(cache = %self.name, error = %e, "cache: Redis write failed");
        }
    }

    /// Deletes a value this node stored in Redis, without telling other nodes.
    async fn remote_forget(&self, key: &str) {
        if !self.shared.redis_values {
            return;
        }
        if let Some(mut conn) = self.shared.redis.clone()
            && let Err(e) = redis::cmd("DEL")
                .arg(self.redis_key(key))
                .query_async::<()>(&mut conn)
                .await
        {
            tracing::warn!(cache = %self.name, error = %e, "cache: Redis delete failed");
        }
    }

    async fn invalidate_key(&self, key: &str) {
        self.drop_key(key).await;
        self.broadcast(Some(key), None, vec![self.redis_key(key)])
            .await;
    }

    async fn invalidate_tag(&self, tag: &str) {
        self.drop_tag(tag).await;
        let mut doomed = vec![self.redis_tag(tag)];
        if self.shared.redis_values
            && let Some(mut conn) = self.shared.redis.clone()
        {
            match redis::cmd("SMEMBERS")
                .arg(self.redis_tag(tag))
                .query_async::<Vec<String>>(&mut conn)
                .await
            {
                Ok(keys) => doomed.extend(keys.iter().map(|k| self.redis_key(k))),
                Err(e) => {
                    tracing::warn!(cache = %self.name, error = %e, "cache: Redis tag read failed")
                }
            }
        }
        self.broadcast(None, Some(tag), doomed).await;
    }

    /// Deletes `doomed` from Redis (when values live there) and tells the other nodes.
    async fn broadcast(&self, key: Option<&str>, tag: Option<&str>, doomed: Vec<String>) {
        let Some(mut conn) = self.shared.redis.clone() else {
            return;
        };
        let msg = Invalidation {
            node: self.shared.node,
            cache: self.name.clone(),
            key: key.map(String::from),
            tag: tag.map(String::from),
        };
        let Ok(payload) = serde_json::to_string(&msg) else {
            return;
        };
        let mut pipe = redis::pipe();
        if self.shared.redis_values && !doomed.is_empty() {
            pipe.cmd("DEL").arg(doomed).ignore();
        }
        pipe.cmd("PUBLISH")
            .arg(INVALIDATION_CHANNEL)
            .arg(payload)
            .ignore();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(cache = %self.name, error = %e, "cache: invalidation could not reach Redis; other nodes keep their copy until it expires");
        }
    }

    fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            remote_hits: self.counters.remote_hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
        }
    }
}

/// A cache of values that each belong to one organization. Cheap to clone.
pub struct TenantCache<V>(Arc<Core<V>>);

impl<V> Clone for TenantCache<V> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<V> TenantCache<V>
where
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
{
    /// The cached value of `key`, or the value `load` gives (cached under `tags`). Concurrent
    /// misses on this node run `load` once.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: &CacheKey,
        tags: &[Tag],
        load: F,
    ) -> Result<V, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        let tags = tags.iter().map(|t| t.0.clone()).collect();
        self.0.get_or_load(&key.0, tags, load).await
    }

    /// Drops `key` on every node.
    pub async fn invalidate(&self, key: &CacheKey) {
        self.0.invalidate_key(&key.0).await;
    }

    /// Drops every entry tagged `tag` on every node.
    pub async fn invalidate_tag(&self, tag: &Tag) {
        self.0.invalidate_tag(&tag.0).await;
    }

    /// Drops `key` once `tx` commits (never if it rolls back).
    pub fn invalidate_after_commit(&self, tx: &mut crate::store::Tx, key: &CacheKey) {
        let core = self.0.clone();
        let key = key.0.clone();
        tx.after_commit(move || {
            tokio::spawn(async move { core.invalidate_key(&key).await });
        });
    }

    /// Drops every entry tagged `tag` once `tx` commits.
    pub fn invalidate_tag_after_commit(&self, tx: &mut crate::store::Tx, tag: &Tag) {
        let core = self.0.clone();
        let tag = tag.0.clone();
        tx.after_commit(move || {
            tokio::spawn(async move { core.invalidate_tag(&tag).await });
        });
    }

    pub fn stats(&self) -> CacheStats {
        self.0.stats()
    }
}

/// A cache of data that belongs to no organization. Cheap to clone.
pub struct GlobalCache<V>(Arc<Core<V>>);

impl<V> Clone for GlobalCache<V> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<V> GlobalCache<V>
where
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
{
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: &GlobalKey,
        tags: &[GlobalTag],
        load: F,
    ) -> Result<V, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        let tags = tags.iter().map(|t| t.0.clone()).collect();
        self.0.get_or_load(&key.0, tags, load).await
    }

    pub async fn invalidate(&self, key: &GlobalKey) {
        self.0.invalidate_key(&key.0).await;
    }

    pub async fn invalidate_tag(&self, tag: &GlobalTag) {
        self.0.invalidate_tag(&tag.0).await;
    }

    pub fn stats(&self) -> CacheStats {
        self.0.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(org: Uuid) -> TenantScope {
        TenantScope::system(org, "test")
    }

    #[test]
    fn keys_carry_their_org_and_cannot_collide_through_separators() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_ne!(
            CacheKey::org(&scope(a), &["stats"]),
            CacheKey::org(&scope(b), &["stats"])
        );
        assert_ne!(
            CacheKey::org(&scope(a), &["a:b", "c"]),
            CacheKey::org(&scope(a), &["a", "b:c"])
        );
        assert!(
            CacheKey::org(&scope(a), &["x"])
                .as_str()
                .contains(&a.to_string())
        );
        assert_ne!(GlobalKey::new(&["x"]).0, CacheKey::org(&scope(a), &["x"]).0);
    }

    #[tokio::test]
    async fn a_name_keeps_its_type_and_kind() {
        let caches = Caches::new(&CacheConfig::default(), None, Uuid::now_v7());
        let a = caches
            .tenant::<String>("names", Duration::from_secs(60))
            .expect("declare");
        let again = caches
            .tenant::<String>("names", Duration::from_secs(60))
            .expect("same");
        let s = scope(Uuid::now_v7());
        let key = CacheKey::org(&s, &["k"]);
        let v = a
            .get_or_load(&key, &[], || async { Ok::<_, ()>("x".to_string()) })
            .await
            .expect("load");
        assert_eq!(v, "x");
        let v = again
            .get_or_load(&key, &[], || async { Ok::<_, ()>("y".to_string()) })
            .await
            .expect("hit");
        assert_eq!(v, "x", "the same cache serves the same entry");
        assert!(matches!(
            caches.tenant::<u64>("names", Duration::from_secs(60)),
            Err(CacheError::TypeMismatch(_))
        ));
        assert!(matches!(
            caches.global::<String>("names", Duration::from_secs(60)),
            Err(CacheError::TypeMismatch(_))
        ));
        assert!(matches!(
            caches.tenant::<String>("Bad Name", Duration::from_secs(60)),
            Err(CacheError::BadName(_))
        ));
    }

    /// Loads `key` (tagged `tags`) and says whether the loader ran.
    async fn loads(cache: &TenantCache<u64>, key: &CacheKey, tags: &[Tag]) -> bool {
        let ran = std::sync::atomic::AtomicBool::new(false);
        cache
            .get_or_load(key, tags, || async {
                ran.store(true, Ordering::SeqCst);
                Ok::<_, ()>(1)
            })
            .await
            .expect("load");
        ran.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_tag_drops_exactly_its_keys_and_invalidating_often_holds_no_memory() {
        let caches = Caches::new(&CacheConfig::default(), None, Uuid::now_v7());
        let cache = caches
            .tenant::<u64>("tagged", Duration::from_secs(60))
            .expect("declare");
        let s = scope(Uuid::now_v7());
        let (a, b) = (Tag::org(&s, "a"), Tag::org(&s, "b"));
        let (k1, k2, k3) = (
            CacheKey::org(&s, &["1"]),
            CacheKey::org(&s, &["2"]),
            CacheKey::org(&s, &["3"]),
        );
        assert!(loads(&cache, &k1, std::slice::from_ref(&a)).await);
        assert!(loads(&cache, &k2, &[a.clone(), b.clone()]).await);
        assert!(loads(&cache, &k3, std::slice::from_ref(&b)).await);
        assert!(
            !loads(&cache, &k1, std::slice::from_ref(&a)).await,
            "cached"
        );

        cache.invalidate_tag(&a).await;
        assert!(
            loads(&cache, &k1, std::slice::from_ref(&a)).await,
            "dropped by its tag"
        );
        assert!(
            loads(&cache, &k2, &[a.clone(), b.clone()]).await,
            "dropped by one of its tags"
        );
        assert!(
            !loads(&cache, &k3, std::slice::from_ref(&b)).await,
            "another tag's key stays"
        );

        // A write path invalidates its tag on every write, read or not: the cache must not
        // hold anything per invalidation (it once kept a predicate for each).
        let quiet = Tag::org(&s, "quiet");
        for _ in 0..10_000 {
            cache.invalidate_tag(&quiet).await;
        }
        cache.0.local.run_pending_tasks().await;
        assert_eq!(
            cache.0.tagged.len(),
            2,
            "only the tags of cached entries are indexed"
        );

        // Once its entries are gone, a tag is no longer held either.
        cache.invalidate_tag(&a).await;
        cache.invalidate_tag(&b).await;
        cache.0.local.run_pending_tasks().await;
        assert_eq!(cache.0.tagged.len(), 0);
        assert!(
            loads(&cache, &k3, std::slice::from_ref(&b)).await,
            "dropped by its tag"
        );
    }

    #[test]
    fn removing_an_older_value_keeps_the_newer_one_listed() {
        let index = TagIndex::default();
        let tags = ["t".to_string()];
        index.add("k", 1, &tags);
        // The key is loaded again before the listener hears of the first value's removal.
        index.add("k", 2, &tags);
        index.remove("k", 1, &tags);
        assert_eq!(index.keys("t"), vec!["k".to_string()]);
        index.remove("k", 2, &tags);
        assert!(index.keys("t").is_empty());
        assert_eq!(index.len(), 0);
    }
}
