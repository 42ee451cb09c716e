//! Micro-benchmarks of what every request, or every log line, pays for.
//!
//! ```text
//! cargo bench -p keel-kernel --bench hot_path
//! ```
//!
//! - `auth/*`: access-token verification and the in-memory revocation check, against a
//!   revocation set of 10,000 entries;
//! - `request/*`: requests through the real application (every layer, SQLite in a temporary
//!   directory) driven in process with `tower::ServiceExt::oneshot`, and the caller's
//!   authentication alone (`Principal` extraction);
//! - `rate_limit/*`: one decision in process over 10,000 keys and, when Redis answers on
//!   127.0.0.1:6379, one decision on Redis (one round trip);
//! - `redact/*`: log redaction of a JSON line, clean and with three personal values;
//! - `crypto/*`: field encryption and decryption of a 32-byte value, raw and as a sealed
//!   field (`FieldRef` associated data), and a blind index;
//! - `audit/*`: one mutation committed on a SQLite file, alone and with its audit event
//!   (hash chain + outbox message) in the same transaction.
//!
//! No tracing subscriber is installed, so request figures exclude writing the access log;
//! `redact/*` gives the redactor's share of a log line. Results and the figures of record
//! are in PERFORMANCE.md.

use std::hint::black_box;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::{Request, StatusCode, header};
use chrono::{TimeDelta, Utc};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use keel_kernel::Application;
use keel_kernel::audit::{self, AuditContext, Changes, NewEvent};
use keel_kernel::auth::Principal;
use keel_kernel::auth::revocation::{Revocation, RevocationKind, Revocations};
use keel_kernel::auth::tokens::{AccessClaims, TokenKeys};
use keel_kernel::config::{Config, Secret};
use keel_kernel::crypto::KeyRing;
use keel_kernel::crypto::field::FieldRef;
use keel_kernel::limits::{FailMode, KeyKind, Policy, PolicyOverride, RateLimiter};
use keel_kernel::redact::{RedactionConfig, Redactor};
use keel_kernel::store::{Db, migrate};
use keel_kernel::tenancy::TenantScope;
use sea_query::Query;
use tower::ServiceExt;
use uuid::Uuid;

/// Entries in the revocation set the auth benchmarks run against.
const REVOKED: usize = 10_000;
/// Distinct keys the rate-limit benchmarks rotate over.
const LIMIT_KEYS: usize = 10_000;
const REDIS_ADDR: &str = "127.0.0.1:6379";

/// A typical production access-log line with nothing to mask.
const CLEAN_JSON: &str = r#"{"timestamp":"2025-05-01T12:34:56.123456Z","level":"INFO","status":200,"latency_ms":3.417,"message":"request completed","target":"keel_kernel::http::context","span":{"request_id":"0190f5a2b3c47d8e9f0a1b2c3d4e5f60","method":"GET","route":"/api/v1/trade/shipments/{id}","org":"0190f5a2-b3c4-7d8e-9f0a-1b2c3d4e5f60","name":"request"}}"#;
/// The same kind of line carrying three personal values: an email, a card number, a phone.
const PII_JSON: &str = r#"{"timestamp":"2025-05-01T12:34:56.123456Z","level":"INFO","email":"john.doe@example.com","amount_minor":125000,"message":"payment by card 4111 1111 1111 1111, phone +91 98765 43210","target":"keel_trade::payments","span":{"request_id":"0190f5a2b3c47d8e9f0a1b2c3d4e5f60","method":"POST","route":"/api/v1/trade/shipments/{id}/payments","name":"request"}}"#;

fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A configuration like the test harness's: temporary SQLite data dir, fixed secrets, a
/// random port (bound, never served), and request limits too generous to refuse anything
/// a benchmark sends (the decision is still made on every request).
fn app_config(data_dir: &std::path::Path) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.to_path_buf(),
        jwt_secret: Some(Secret::new("bench-signing-secret-0123456789abcdef-xyz")),
        encryption_key: Some(Secret::new(
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        )),
        ..Config::default()
    };
    config.auth.argon2_memory_kib = 256;
    config.auth.argon2_iterations = 1;
    for policy in ["authenticated", "anonymous"] {
        config.rate_limits.policies.insert(
            policy.to_string(),
            PolicyOverride {
                // One request per microsecond per key: the finest rate a policy may have.
                limit: Some(60_000_000),
                period_secs: Some(60),
                ..Default::default()
            },
        );
    }
    config
}

fn claims(config: &Config, role: &str) -> AccessClaims {
    let now = Utc::now();
    AccessClaims {
        sub: Uuid::now_v7(),
        org: Uuid::now_v7(),
        role: role.into(),
        sid: Uuid::now_v7(),
        jti: Uuid::now_v7(),
        iat: now.timestamp(),
        ims: Some(now.timestamp_millis()),
        exp: now.timestamp() + 900,
        iss: config.auth.issuer.clone(),
        aud: config.auth.audience.clone(),
        pid: None,
        enr: false,
    }
}

/// Fills `revocations` with `n` live entries of every token kind (sessions, single tokens,
/// users' older tokens), none of which refuses the benchmarks' own tokens.
fn fill_revocations(revocations: &Revocations, n: usize) {
    let until = Utc::now() + TimeDelta::minutes(15);
    let kinds = [
        RevocationKind::Session,
        RevocationKind::Token,
        RevocationKind::UserBefore,
    ];
    for i in 0..n {
        revocations.apply(&Revocation {
            kind: kinds[i % kinds.len()],
            subject: Uuid::now_v7(),
            not_before: Some(Utc::now()),
            until,
        });
    }
}

fn auth(c: &mut Criterion) {
    let config = app_config(std::path::Path::new("."));
    let keys = TokenKeys::from_config(&config).expect("token keys");
    let revocations = Revocations::default();
    fill_revocations(&revocations, REVOKED);
    let claims = claims(&config, "member");
    let token = keys.sign(&claims).expect("sign");
    assert!(!revocations.refuses(&keys.verify(&token).expect("verify")));

    let mut group = c.benchmark_group("auth");
    group.bench_function("verify_and_revocation_check", |b| {
        b.iter(|| {
            let claims = keys.verify(black_box(&token)).expect("valid token");
            black_box(revocations.refuses(&claims))
        });
    });
    group.bench_function("revocation_check_only", |b| {
        b.iter(|| black_box(revocations.refuses(black_box(&claims))));
    });
    group.finish();
}

async fn send(router: &axum::Router, request: Request<Body>) -> (StatusCode, bytes::Bytes) {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("in-memory body")
        .to_bytes();
    (status, body)
}

fn get(path: &str, bearer: Option<&str>) -> Request<Body> {
    let mut builder = Request::get(path);
    if let Some(token) = bearer {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder.body(Body::empty()).expect("request")
}

fn request(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temporary data dir");
    let config = app_config(dir.path());
    let app = rt
        .block_on(Application::build(config.clone(), Vec::new()))
        .expect("application");
    let state = app.state().clone();
    let router = app.router();
    fill_revocations(&state.auth.revocations, REVOKED);
    let token = state
        .auth
        .keys
        .sign(&claims(&config, "member"))
        .expect("sign");

    // A member lacks `api_keys.manage`: the route authenticates (rate limit keyed by the
    // organization), then refuses in its permission check, before any database access.
    const ROUTE: &str = "/api/v1/api-keys";
    let expect = |request: Request<Body>, status: StatusCode| {
        let (got, body) = rt.block_on(send(&router, request));
        assert_eq!(got, status, "{}", String::from_utf8_lossy(&body));
    };
    expect(get("/health", None), StatusCode::OK);
    expect(get(ROUTE, None), StatusCode::UNAUTHORIZED);
    expect(get(ROUTE, Some(&token)), StatusCode::FORBIDDEN);

    let mut group = c.benchmark_group("request");
    group.bench_function("health_no_auth", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(send(&router, get("/health", None)).await) });
    });
    group.bench_function("anonymous_refused_401", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(send(&router, get(ROUTE, None)).await) });
    });
    group.bench_function("authenticated_refused_403", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(send(&router, get(ROUTE, Some(&token))).await) });
    });
    group.bench_function("principal_extraction", |b| {
        let parts = || get(ROUTE, Some(&token)).into_parts().0;
        b.to_async(&rt).iter_batched(
            parts,
            |mut parts| {
                let state = &state;
                async move {
                    let principal = Principal::from_request_parts(&mut parts, state)
                        .await
                        .expect("a valid token");
                    (parts, principal)
                }
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();

    // The benchmarks must have measured the intended path, not refusals by the limiter.
    expect(get(ROUTE, Some(&token)), StatusCode::FORBIDDEN);
    expect(get(ROUTE, None), StatusCode::UNAUTHORIZED);
    drop(app);
    drop(rt);
}

fn limiter_policy() -> Policy {
    Policy::new(
        "bench",
        1_000_000,
        Duration::from_secs(1),
        KeyKind::Org,
        FailMode::Local,
    )
}

fn rate_limit(c: &mut Criterion) {
    let rt = runtime();
    let keys: Vec<String> = (0..LIMIT_KEYS)
        .map(|_| format!("org:{}", Uuid::now_v7()))
        .collect();
    let mut group = c.benchmark_group("rate_limit");

    let local = RateLimiter::new(vec![limiter_policy()], None).expect("limiter");
    group.bench_function("in_process", |b| {
        let mut i = 0usize;
        b.to_async(&rt).iter(|| {
            i = (i + 1) % keys.len();
            let key = &keys[i];
            let local = &local;
            async move {
                let decision = local.check("bench", key).await.expect("known policy");
                black_box(decision.allowed)
            }
        });
    });

    let reachable = REDIS_ADDR
        .parse::<SocketAddr>()
        .ok()
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok());
    if reachable {
        let connection = rt.block_on(async {
            let client = redis::Client::open(format!("redis://{REDIS_ADDR}/")).expect("url");
            redis::aio::ConnectionManager::new(client).await
        });
        match connection {
            Ok(connection) => {
                let shared =
                    RateLimiter::new(vec![limiter_policy()], Some(connection)).expect("limiter");
                // Keys of this run only (they expire on their own within a microsecond).
                let run = Uuid::now_v7().simple().to_string();
                let redis_keys: Vec<String> =
                    keys.iter().map(|k| format!("bench-{run}:{k}")).collect();
                group.bench_function("redis", |b| {
                    let mut i = 0usize;
                    b.to_async(&rt).iter(|| {
                        i = (i + 1) % redis_keys.len();
                        let key = &redis_keys[i];
                        let shared = &shared;
                        async move {
                            let decision = shared.check("bench", key).await.expect("decision");
                            assert_eq!(
                                decision.decided_by,
                                keel_kernel::limits::DecidedBy::Redis,
                                "Redis failed during the benchmark"
                            );
                            black_box(decision.allowed)
                        }
                    });
                });
            }
            Err(e) => println!("rate_limit/redis skipped: cannot connect to Redis: {e}"),
        }
    } else {
        println!("rate_limit/redis skipped: nothing answers on {REDIS_ADDR}");
    }
    group.finish();
}

fn redact(c: &mut Criterion) {
    let redactor = Redactor::new(&RedactionConfig::default(), None).expect("redactor");
    assert_eq!(redactor.redact_json_line(CLEAN_JSON), CLEAN_JSON);
    let masked = redactor.redact_json_line(PII_JSON);
    for personal in ["john.doe@example.com", "4111 1111 1111 1111", "98765 43210"] {
        assert!(!masked.contains(personal), "{masked}");
    }

    let mut group = c.benchmark_group("redact");
    group.bench_function("json_line_clean", |b| {
        b.iter(|| black_box(redactor.redact_json_line(black_box(CLEAN_JSON))));
    });
    group.bench_function("json_line_3_pii", |b| {
        b.iter(|| black_box(redactor.redact_json_line(black_box(PII_JSON))));
    });
    group.finish();
}

fn crypto(c: &mut Criterion) {
    let ring = Arc::new(KeyRing::new([7; 32], &[]));
    let value = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
    assert_eq!(value.len(), 32);
    let context = format!("users|totp_secret|{}", Uuid::now_v7());
    let sealed = ring.encrypt_str(value, &context).expect("encrypt");
    assert_eq!(ring.decrypt_str(&sealed, &context).expect("decrypt"), value);

    let mut group = c.benchmark_group("crypto");
    group.bench_function("encrypt_32_bytes", |b| {
        b.iter(|| black_box(ring.encrypt_str(black_box(value), &context)));
    });
    group.bench_function("decrypt_32_bytes", |b| {
        b.iter(|| black_box(ring.decrypt_str(black_box(&sealed), &context)));
    });
    let scope = TenantScope::for_tests(Uuid::now_v7());
    let row = Uuid::now_v7();
    let field = FieldRef::new(&scope, "bank_accounts", "account_number", row);
    let sealed_field = ring.seal(&field, value).expect("seal");
    group.bench_function("seal_field_32_bytes", |b| {
        b.iter(|| {
            let field = FieldRef::new(&scope, "bank_accounts", "account_number", row);
            black_box(ring.seal(&field, black_box(value)))
        });
    });
    group.bench_function("open_field_32_bytes", |b| {
        b.iter(|| {
            let field = FieldRef::new(&scope, "bank_accounts", "account_number", row);
            black_box(ring.open(&field, black_box(&sealed_field)))
        });
    });
    group.bench_function("blind_index", |b| {
        b.iter(|| {
            black_box(ring.blind_index(
                &scope,
                "bank_accounts",
                "account_number",
                black_box("DE89370400440532013000"),
            ))
        });
    });
    group.finish();
}

/// One mutation on a SQLite file (WAL, `synchronous=FULL` as configured by the store), with
/// and without its audit event in the same transaction.
fn audit(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = app_config(dir.path());
    let db = rt.block_on(async {
        let registry = keel_kernel::server::registry(&config, vec![]).expect("registry");
        let db = Db::connect(&config).await.expect("database");
        migrate::run(&db, &registry.migrations())
            .await
            .expect("migrations");
        if let Db::Sqlite(sqlite) = &db {
            sqlite
                .with_connection(|c| {
                    c.execute_batch(
                        "CREATE TABLE bench_items (id BLOB PRIMARY KEY NOT NULL, \
                         org_id BLOB NOT NULL, name TEXT NOT NULL)",
                    )
                })
                .await
                .expect("table");
        }
        db
    });
    let scope = TenantScope::for_tests(Uuid::now_v7());
    let ctx = AuditContext::system("bench");
    let insert = |id: Uuid| {
        Query::insert()
            .into_table("bench_items")
            .columns(["id", "org_id", "name"])
            .values_panic([id.into(), scope.org_id().into(), "item".into()])
            .to_owned()
    };
    let mut group = c.benchmark_group("audit");
    group.bench_function("write_without_audit", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut tx = db.begin().await.expect("begin");
                tx.execute(&insert(Uuid::now_v7())).await.expect("insert");
                tx.commit().await.expect("commit");
            })
        });
    });
    group.bench_function("write_with_audit", |b| {
        b.iter(|| {
            rt.block_on(async {
                let id = Uuid::now_v7();
                let mut tx = db.begin().await.expect("begin");
                tx.execute(&insert(id)).await.expect("insert");
                audit::record(
                    &mut tx,
                    &scope,
                    &ctx,
                    NewEvent::new("bench_item.created", "bench_item", Some(id))
                        .changes(Changes::new().field("name", (), "item")),
                )
                .await
                .expect("audit");
                tx.commit().await.expect("commit");
            })
        });
    });
    group.finish();
    rt.block_on(db.close());
}

criterion_group! {
    name = hot_path;
    config = criterion();
    targets = auth, request, rate_limit, redact, crypto, audit
}
criterion_main!(hot_path);
