//! The kernel's isolation probe over every trade route: another organization, and a partner
//! user of the same organization tied to another partner, get exactly what a missing id gets
//! on every documented method of every trade resource, and change nothing.

mod common;

use keel_testkit::{PASSWORD, Session, isolation};

#[tokio::test]
async fn no_trade_route_leaks_across_tenants_or_partners() {
    let app = common::spawn().await;
    let a = app.register_org("a@trade-a.example", "Trade A").await;
    let b = app.register_org("b@trade-b.example", "Trade B").await;
    let own = app.create_partner(&a, "Partner of the probing user").await;
    app.invite_and_register(&a, "p@trade-a.example", "partner", Some(own))
        .await;
    let partner_user: Session = app.sign_in("p@trade-a.example", PASSWORD).await;
    let report = isolation::probe(&app, &a, &b, &partner_user).await;
    assert!(
        report.uncovered.is_empty(),
        "routes without fixtures: {:?}",
        report.uncovered
    );
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    let trade_routes = String::from_utf8_lossy(&app.state.openapi_json)
        .matches("\"/api/v1/trade/")
        .count();
    assert!(trade_routes >= 5, "the trade routes are documented");
    assert!(report.attempts >= 40, "only {} attempts", report.attempts);
}
