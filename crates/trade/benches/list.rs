//! Micro-benchmarks of the shipment list's pieces.
//!
//! ```text
//! cargo bench -p keel-trade --bench list
//! ```
//!
//! - `list/page_with_total`: the tenant-scoped list query as the handler runs it — a page of
//!   20 of 100,000 shipments of one organization with its exact total in one statement (the
//!   tallies' scalar subquery) — on a SQLite file (and on PostgreSQL when `TEST_DATABASE_URL`
//!   points at one);
//! - `list/page_with_status_filter`: the same with `status=delivered`;
//! - `list/page_with_count`: the same page with a `COUNT(*)` total, what the tallies replace;
//! - `json/page_of_20`: serialising that page (`Paged<Shipment>`) to the response body.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keel_kernel::demo::{DemoOptions, seed};
use keel_kernel::http::pagination::{PageParams, Paged};
use keel_kernel::tenancy::TenantScope;
use keel_testkit::TestApp;
use keel_trade::shipments::Status;
use keel_trade::shipments::store::{self, Filter};
use sea_query::{Expr, Func, Query};

const SHIPMENTS: u64 = 100_000;

fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

fn list(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (app, org) = rt.block_on(async {
        let app = TestApp::builder()
            .without_probe_module()
            .module(Arc::new(keel_trade::TradeModule))
            .spawn()
            .await
            .expect("server");
        let report = seed(
            &app.state,
            &DemoOptions {
                size: SHIPMENTS,
                password: Some("correct-horse-battery-staple".into()),
            },
        )
        .await
        .expect("seed");
        (app, report.org_id)
    });
    let db = app.state.db.clone();
    let scope = TenantScope::for_tests(org);
    let page = PageParams::default()
        .resolve(&keel_trade::shipments::routes::SORTS, "-created_at")
        .expect("page");
    let mut group = c.benchmark_group("list");
    group.bench_function("page_with_total", |b| {
        b.to_async(&rt).iter(|| async {
            let (rows, total) = store::list(&db, &scope, &Filter::default(), &page)
                .await
                .expect("list");
            assert_eq!(total, Some((SHIPMENTS, true)));
            black_box(rows)
        })
    });
    let delivered = Filter {
        status: Some(Status::Delivered),
        ..Default::default()
    };
    group.bench_function("page_with_status_filter", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                store::list(&db, &scope, &delivered, &page)
                    .await
                    .expect("list"),
            )
        })
    });
    group.bench_function("page_with_count", |b| {
        b.to_async(&rt).iter(|| async {
            #[derive(sqlx::FromRow, serde::Deserialize)]
            struct N {
                n: i64,
            }
            let rows: Vec<store::Shipment> = db
                .fetch_all(&store::page_query(
                    &scope,
                    &Filter::default(),
                    &page,
                    store::SearchPlan::default(),
                ))
                .await
                .expect("page");
            let n: N = db
                .fetch_one(
                    &Query::select()
                        .expr_as(Func::count(Expr::col(sea_query::Asterisk)), "n")
                        .from(store::TABLE)
                        .cond_where(store::visible(&scope))
                        .to_owned(),
                )
                .await
                .expect("count");
            assert_eq!(u64::try_from(n.n).ok(), Some(SHIPMENTS));
            black_box(rows)
        })
    });
    group.finish();

    let (rows, total) = rt
        .block_on(store::list(&db, &scope, &Filter::default(), &page))
        .expect("list");
    let paged = Paged::from_rows(rows, &page, total.map(|t| t.0));
    let mut group = c.benchmark_group("json");
    group.bench_function("page_of_20", |b| {
        b.iter(|| black_box(serde_json::to_vec(&paged).expect("json")))
    });
    group.finish();
    drop(app);
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = list
}
criterion_main!(benches);
