//! The shipment list's queries use the compound indexes led by the organization, on both
//! engines: every filter the totals are exact for reads an ordered index range (no sort of
//! the organization's rows), and the total reads the tallies' primary key.

mod common;

use keel_kernel::demo::{DemoOptions, seed};
use keel_kernel::http::pagination::PageParams;
use keel_kernel::store::Db;
use keel_kernel::tenancy::TenantScope;
use keel_trade::shipments::store::{Filter, page_query};
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
    analyze(&app.state.db).await;
    let scope = TenantScope::for_tests(report.org_id);
    let db = &app.state.db;

    let unfiltered = plan(db, &page_query(&scope, &Filter::default(), &page(None))).await;
    assert_ordered_index(&unfiltered, "trade_shipments_org_created", "unfiltered");

    let by_status = Filter {
        status: Some(Status::Delivered),
        ..Default::default()
    };
    let p = plan(db, &page_query(&scope, &by_status, &page(None))).await;
    assert_ordered_index(&p, "trade_shipments_org_status", "status");

    let by_ebrc = Filter {
        ebrc_status: Some(EbrcStatus::Pending),
        ..Default::default()
    };
    let p = plan(db, &page_query(&scope, &by_ebrc, &page(None))).await;
    assert_ordered_index(&p, "trade_shipments_org_ebrc", "e-BRC status");

    let by_country = Filter {
        destination_country: Some("DE".into()),
        ..Default::default()
    };
    let p = plan(db, &page_query(&scope, &by_country, &page(None))).await;
    assert_ordered_index(&p, "trade_shipments_org_destination", "destination");

    let p = plan(
        db,
        &page_query(&scope, &Filter::default(), &page(Some("reference"))),
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
    let p = plan(db, &page_query(&scope, &by_range, &page(None))).await;
    assert_ordered_index(&p, "trade_shipments_org_created", "created range");
}
