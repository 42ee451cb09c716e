//! The shipment list's queries use the compound indexes led by the organization, on both
//! engines: every filter the totals are exact for reads an ordered index range (no sort of
//! the organization's rows), and the total reads the tallies' primary key.

mod common;

use keel_kernel::demo::{DemoOptions, seed};
use keel_kernel::http::pagination::PageParams;
use keel_kernel::store::Db;
use keel_kernel::tenancy::TenantScope;
use keel_trade::shipments::store::{Filter, SearchPlan, count_query, page_query};
use keel_trade::shipments::{EbrcStatus, Status};
use sea_query::SelectStatement;

async fn plan(db: &Db, select: &SelectStatement) -> String {
    db.query_plan(select).await.expect("explain")
}

async fn analyze(db: &Db) {
    match db {
        Db::Sqlite(sqlite) => sqlite
            .with_connection(|c| c.execute_batch("ANALYZE"))
            .await
            .map_err(|e| e.to_string()),
        Db::Postgres(pool) => sqlx::query("ANALYZE trade_shipments")
            .execute(pool.pool())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    }
    .expect("analyze");
}

fn page(sort: Option<&str>) -> keel_kernel::http::pagination::PageRequest {
    PageParams {
        sort: sort.map(str::to_string),
        ..Default::default()
    }
    .resolve(&keel_trade::shipments::routes::SORTS, "-created_at")
    .expect("a valid page")
}

/// The plan reads `index` and never sorts (SQLite: no temp B-tree; PostgreSQL: no Sort node).
fn assert_ordered_index(plan: &str, index: &str, what: &str) {
    assert!(plan.contains(index), "{what}: expected {index} in\n{plan}");
    assert!(
        !plan.contains("TEMP B-TREE") && !plan.contains("Sort "),
        "{what}: sorts instead of reading the index in order:\n{plan}"
    );
    assert!(
        !plan.contains("Seq Scan") && !plan.starts_with("SCAN trade_shipments"),
        "{what}: scans the table:\n{plan}"
    );
}

#[tokio::test]
async fn list_queries_read_the_organization_indexes_in_order() {
    let app = common::spawn().await;
    // Another organization's rows make the org column selective, as in production.
    let other = app.register_org("plans@other.example", "Other").await;
    for i in 0..30 {
        common::create_shipment(&app, &other, &format!("O-{i}"), serde_json::json!({})).await;
    }
    let report = seed(
        &app.state,
        &DemoOptions {
            size: 6_000,
            password: Some("correct-horse-battery-staple".into()),
        },
    )
    .await
    .expect("seed");
    let scope = TenantScope::for_tests(report.org_id);
    let db = &app.state.db;
    // Before statistics exist (a new SQLite database has none) and after.
    rare_term_reads_the_trigram_index(db, &scope).await;
    analyze(db).await;
    rare_term_reads_the_trigram_index(db, &scope).await;

    let unfiltered = plan(
        db,
        &page_query(
            &scope,
            &Filter::default(),
            &page(None),
            SearchPlan::default(),
        ),
    )
    .await;
    assert_ordered_index(&unfiltered, "trade_shipments_org_created", "unfiltered");

    let by_status = Filter {
        status: Some(Status::Delivered),
        ..Default::default()
    };
    let p = plan(
        db,
        &page_query(&scope, &by_status, &page(None), SearchPlan::default()),
    )
    .await;
    assert_ordered_index(&p, "trade_shipments_org_status", "status");

    let by_ebrc = Filter {
        ebrc_status: Some(EbrcStatus::Pending),
        ..Default::default()
    };
    let p = plan(
        db,
        &page_query(&scope, &by_ebrc, &page(None), SearchPlan::default()),
    )
    .await;
    assert_ordered_index(&p, "trade_shipments_org_ebrc", "e-BRC status");

    let by_country = Filter {
        destination_country: Some("DE".into()),
        ..Default::default()
    };
    let p = plan(
        db,
        &page_query(&scope, &by_country, &page(None), SearchPlan::default()),
    )
    .await;
    assert_ordered_index(&p, "trade_shipments_org_destination", "destination");

    let p = plan(
        db,
        &page_query(
            &scope,
            &Filter::default(),
            &page(Some("reference")),
            SearchPlan::default(),
        ),
    )
    .await;
    assert_ordered_index(&p, "trade_shipments_org_reference", "sort by reference");

    // Created ranges are an index range on the timestamp, never a string match.
    let now = chrono::Utc::now();
    let by_range = Filter {
        created_from: Some(now - chrono::Duration::days(30)),
        created_to: Some(now),
        ..Default::default()
    };
    let p = plan(
        db,
        &page_query(&scope, &by_range, &page(None), SearchPlan::default()),
    )
    .await;
    assert_ordered_index(&p, "trade_shipments_org_created", "created range");

    // A term in every row finds its page by reading the organization's index in order.
    let common = Filter {
        q: Some("demo".into()),
        ..Default::default()
    };
    let chosen = SearchPlan::choose(db, &scope, &common).await.expect("plan");
    assert!(!chosen.page, "{chosen:?}");
    let p = plan(db, &page_query(&scope, &common, &page(None), chosen)).await;
    assert_ordered_index(&p, "trade_shipments_org_created", "common term");
}

/// A rare term reads its rows through the trigram index on SQLite (the FTS5 table, then
/// each row by rowid), for the page and for its total. PostgreSQL's planner weighs its GIN
/// index against the organization's rows itself (at 6,000 rows a sequential scan is
/// cheaper; at 100,000 it takes the index), so there the index must exist.
async fn rare_term_reads_the_trigram_index(db: &Db, scope: &TenantScope) {
    let rare = Filter {
        q: Some(format!("{:07}", 4567)),
        ..Default::default()
    };
    let chosen = SearchPlan::choose(db, scope, &rare).await.expect("plan");
    match db {
        Db::Sqlite(_) => {
            assert_eq!(
                chosen,
                SearchPlan {
                    page: true,
                    total: true
                }
            );
            let page_plan = plan(db, &page_query(scope, &rare, &page(None), chosen)).await;
            let count_plan = plan(db, &count_query(scope, &rare, chosen.total)).await;
            for (p, what) in [(&page_plan, "page"), (&count_plan, "total")] {
                assert!(
                    p.contains("trade_shipments_search VIRTUAL TABLE")
                        && p.contains("INTEGER PRIMARY KEY (rowid=?)"),
                    "rare term, {what}: expected the trigram index in\n{p}"
                );
            }
        }
        Db::Postgres(pool) => {
            assert_eq!(chosen, SearchPlan::default(), "the planner chooses");
            let indexes: Vec<(String,)> = sqlx::query_as(
                "SELECT indexdef FROM pg_indexes \
                 WHERE schemaname = current_schema() AND indexname = 'trade_shipments_search_trgm'",
            )
            .fetch_all(pool.pool())
            .await
            .expect("indexes");
            assert!(
                indexes.iter().any(|(d,)| d.contains("gin_trgm_ops")),
                "{indexes:?}"
            );
        }
    }
}
