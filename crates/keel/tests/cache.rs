//! The shared cache on a running server: concurrent misses load once; entries expire after
//! their TTL; a tag drops exactly its organization's tagged entries; the same key parts in two
//! organizations are two entries; hits and misses reach the metrics endpoint; and with Redis
//! (`TEST_REDIS_URL`) two nodes share loaded values and each one's invalidation (by key and by
//! tag) reaches the other.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use keel_kernel::cache::{CacheKey, Tag, TenantCache};
use keel_kernel::tenancy::TenantScope;
use keel_testkit::TestApp;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(15);

/// A loader that counts its calls and answers `<prefix>#<call number>`.
#[derive(Clone, Default)]
struct Loader(Arc<AtomicU32>);

impl Loader {
    async fn load(&self, prefix: &str) -> Result<String, std::convert::Infallible> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(format!("{prefix}#{n}"))
    }

    fn calls(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

fn cache(app: &TestApp, name: &str, ttl: Duration) -> TenantCache<String> {
    app.state.cache.tenant::<String>(name, ttl).expect("cache")
}

async fn get(
    c: &TenantCache<String>,
    key: &CacheKey,
    tags: &[Tag],
    loader: &Loader,
    prefix: &str,
) -> String {
    let l = loader.clone();
    let p = prefix.to_string();
    c.get_or_load(key, tags, || async move { l.load(&p).await })
        .await
        .expect("load")
}

/// A unique cache name per test run (nodes of other tests share the Redis).
fn name(base: &str) -> String {
    format!("{base}-{}", Uuid::now_v7().simple())
}

#[tokio::test]
async fn concurrent_misses_for_one_key_load_once() {
    let app = TestApp::spawn().await;
    let c = cache(&app, &name("flight"), Duration::from_secs(60));
    let scope = TenantScope::for_tests(Uuid::now_v7());
    let key = CacheKey::org(&scope, &["stats"]);
    let calls = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let c = c.clone();
        let key = key.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            c.get_or_load(&key, &[], || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                // Slow enough that the other requests arrive while it runs.
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok::<_, std::convert::Infallible>("loaded".to_string())
            })
            .await
            .expect("load")
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), "loaded");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one load for 32 concurrent misses"
    );
    let stats = c.stats();
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.hits + stats.remote_hits, 31);

    // A failing load is returned to the caller and not cached.
    let failing = CacheKey::org(&scope, &["failing"]);
    let err = c
        .get_or_load(&failing, &[], || async { Err::<String, _>("source down") })
        .await
        .expect_err("the error is returned");
    assert_eq!(*err, "source down");
    let loader = Loader::default();
    assert_eq!(get(&c, &failing, &[], &loader, "ok").await, "ok#1");
}

/// A write's invalidation that lands while a reader is still loading the old value: the
/// reader gets what it read, but the value is not kept — the next read loads again.
#[tokio::test]
async fn an_invalidation_during_a_load_is_not_undone_by_it() {
    let app = TestApp::spawn().await;
    let c = cache(&app, &name("race"), Duration::from_secs(300));
    let scope = TenantScope::for_tests(Uuid::now_v7());
    let key = CacheKey::org(&scope, &["dashboard"]);
    let (read_tx, read_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let slow = {
        let (c, key) = (c.clone(), key.clone());
        tokio::spawn(async move {
            c.get_or_load(&key, &[], || async move {
                let _ = read_tx.send(());
                let _ = go_rx.await;
                Ok::<_, std::convert::Infallible>("before the write".to_string())
            })
            .await
            .expect("load")
        })
    };
    read_rx.await.expect("the load started");
    c.invalidate(&key).await; // the write commits and invalidates
    let _ = go_tx.send(());
    assert_eq!(slow.await.expect("task"), "before the write");
    let loader = Loader::default();
    assert_eq!(get(&c, &key, &[], &loader, "after").await, "after#1");
    assert_eq!(
        get(&c, &key, &[], &loader, "after").await,
        "after#1",
        "then cached"
    );
}

/// Loads `key` (tagged `tags`) slowly, running `meanwhile` while the load is in flight, and
/// says whether the loaded value was kept (the next read is a hit).
async fn kept_after<F: Future<Output = ()>>(
    c: &TenantCache<String>,
    key: &CacheKey,
    tags: &[Tag],
    meanwhile: F,
) -> bool {
    let (read_tx, read_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let slow = {
        let (c, key, tags) = (c.clone(), key.clone(), tags.to_vec());
        tokio::spawn(async move {
            c.get_or_load(&key, &tags, || async move {
                let _ = read_tx.send(());
                let _ = go_rx.await;
                Ok::<_, std::convert::Infallible>("slow".to_string())
            })
            .await
            .expect("load")
        })
    };
    read_rx.await.expect("the load started");
    meanwhile.await;
    let _ = go_tx.send(());
    assert_eq!(slow.await.expect("task"), "slow");
    let loader = Loader::default();
    get(c, key, tags, &loader, "again").await == "slow"
}

/// A load is dropped by an invalidation of its own key or tag while it runs, not by other
/// organizations' invalidations in the same cache (under writes from many organizations,
/// those would otherwise drop nearly every load).
#[tokio::test]
async fn only_its_own_invalidations_drop_a_load() {
    let app = TestApp::spawn().await;
    let c = cache(&app, &name("own"), Duration::from_secs(300));
    let mine = TenantScope::for_tests(Uuid::now_v7());
    let other = TenantScope::for_tests(Uuid::now_v7());
    let tag = Tag::org(&mine, "dashboard");

    let key = CacheKey::org(&mine, &["a"]);
    assert!(
        !kept_after(&c, &key, std::slice::from_ref(&tag), c.invalidate_tag(&tag)).await,
        "its tag was invalidated during the load"
    );

    let key = CacheKey::org(&mine, &["b"]);
    let others = async {
        for i in 0..50 {
            c.invalidate_tag(&Tag::org(&other, "dashboard")).await;
            c.invalidate(&CacheKey::org(&other, &["b", &i.to_string()]))
                .await;
        }
    };
    assert!(
        kept_after(&c, &key, std::slice::from_ref(&tag), others).await,
        "another organization's invalidations leave the load in place"
    );
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let app = TestApp::spawn().await;
    let c = cache(&app, &name("ttl"), Duration::from_millis(300));
    let scope = TenantScope::for_tests(Uuid::now_v7());
    let key = CacheKey::org(&scope, &["rates"]);
    let loader = Loader::default();
    assert_eq!(get(&c, &key, &[], &loader, "v").await, "v#1");
    let start = Instant::now();
    loop {
        let v = get(&c, &key, &[], &loader, "v").await;
        if v != "v#1" {
            assert_eq!(v, "v#2");
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the entry never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "not reloaded before its TTL"
    );
}

#[tokio::test]
async fn a_tag_drops_its_organizations_tagged_entries_only() {
    let app = TestApp::spawn().await;
    // The server is up (and the process's metrics recorder installed) before counting.
    assert!(app.get("/metrics").await.status().is_success());
    let c = cache(&app, &name("dash"), Duration::from_secs(60));
    let (a, b) = (
        TenantScope::for_tests(Uuid::now_v7()),
        TenantScope::for_tests(Uuid::now_v7()),
    );
    let loader = Loader::default();
    let a_dash = Tag::org(&a, "dashboard");
    let b_dash = Tag::org(&b, "dashboard");
    let a1 = CacheKey::org(&a, &["dashboard", "today"]);
    let a2 = CacheKey::org(&a, &["dashboard", "month"]);
    let a_other = CacheKey::org(&a, &["profile"]);
    let b1 = CacheKey::org(&b, &["dashboard", "today"]);
    assert_eq!(
        get(&c, &a1, std::slice::from_ref(&a_dash), &loader, "a1").await,
        "a1#1"
    );
    assert_eq!(
        get(&c, &a2, std::slice::from_ref(&a_dash), &loader, "a2").await,
        "a2#2"
    );
    assert_eq!(get(&c, &a_other, &[], &loader, "ao").await, "ao#3");
    assert_eq!(
        get(&c, &b1, std::slice::from_ref(&b_dash), &loader, "b1").await,
        "b1#4",
        "the same key parts in another organization are another entry"
    );
    c.invalidate_tag(&a_dash).await;
    assert_eq!(
        get(&c, &a1, std::slice::from_ref(&a_dash), &loader, "a1").await,
        "a1#5"
    );
    assert_eq!(
        get(&c, &a2, std::slice::from_ref(&a_dash), &loader, "a2").await,
        "a2#6"
    );
    assert_eq!(
        get(&c, &a_other, &[], &loader, "ao").await,
        "ao#3",
        "untagged entry kept"
    );
    assert_eq!(
        get(&c, &b1, &[b_dash], &loader, "b1").await,
        "b1#4",
        "other org kept"
    );
    c.invalidate(&a_other).await;
    assert_eq!(get(&c, &a_other, &[], &loader, "ao").await, "ao#7");

    // Hits and misses per cache reach the metrics endpoint.
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains("keel_cache_requests_total"),
        "{}",
        &metrics[..metrics.len().min(2000)]
    );
}

#[tokio::test]
async fn two_nodes_share_values_and_invalidations_through_redis() {
    if keel_testkit::redis_url().is_none() {
        eprintln!("skipped: set TEST_REDIS_URL to run the two-node cache test");
        return;
    }
    let a = TestApp::spawn().await;
    let b = TestApp::builder()
        .database(a.db.clone())
        .spawn()
        .await
        .expect("second node");
    let start = Instant::now();
    while !(a.state.cache.is_listening() && b.state.cache.is_listening()) {
        assert!(start.elapsed() < DEADLINE, "nodes never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cache_name = name("shared");
    let (ca, cb) = (
        cache(&a, &cache_name, Duration::from_secs(60)),
        cache(&b, &cache_name, Duration::from_secs(60)),
    );
    let scope = TenantScope::for_tests(Uuid::now_v7());
    let key = CacheKey::org(&scope, &["forex", "latest"]);
    let tag = Tag::org(&scope, "forex");
    let (la, lb) = (Loader::default(), Loader::default());
    assert_eq!(
        get(&ca, &key, std::slice::from_ref(&tag), &la, "a").await,
        "a#1"
    );
    assert_eq!(
        get(&cb, &key, std::slice::from_ref(&tag), &lb, "b").await,
        "a#1",
        "node B is served what node A loaded"
    );
    assert_eq!(lb.calls(), 0);
    assert_eq!(cb.stats().remote_hits, 1);

    // Invalidation by key on A reaches B's in-process copy.
    ca.invalidate(&key).await;
    let start = Instant::now();
    loop {
        let v = get(&cb, &key, std::slice::from_ref(&tag), &lb, "b").await;
        if v != "a#1" {
            assert_eq!(v, "b#1");
            break;
        }
        assert!(start.elapsed() < DEADLINE, "B kept the invalidated value");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A reads B's new value from Redis once its own copy is gone.
    assert_eq!(
        get(&ca, &key, std::slice::from_ref(&tag), &la, "a").await,
        "b#1"
    );

    // Invalidation by tag on B reaches A.
    cb.invalidate_tag(&tag).await;
    let start = Instant::now();
    loop {
        let v = get(&ca, &key, std::slice::from_ref(&tag), &la, "a").await;
        if v != "b#1" {
            assert_eq!(v, "a#2");
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "A kept the value of an invalidated tag"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.stop().await;
}
