//! Identity and access through HTTP, on SQLite or PostgreSQL: setup, registration,
//! approval, sign-in with lockout and IP blocking, refresh rotation with reuse detection and
//! its grace window, sign-out and revocation (also seen by a second node), password flows,
//! roles and permissions, API keys, two-factor sign-in, super-admin access to another
//! organization, partner scoping, bad input, and the isolation probe over every route.

use std::sync::Arc;
use std::time::Duration;

use keel_testkit::{PASSWORD, Session, TestApp, TestDb, isolation, problem};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

async fn app() -> TestApp {
    TestApp::builder()
        .without_probe_module()
        .spawn()
        .await
        .expect("spawn")
}

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.expect("json body")
}

#[tokio::test]
async fn setup_creates_the_first_organization_once_and_then_answers_409() {
    let app = app().await;
    let root = app.setup_super_admin().await;
    let me = json_of(app.get_as("/api/v1/auth/me", &root.access_token).await).await;
    assert_eq!(me["role"], "super_admin");
    let again = app
        .post_json(
            "/api/v1/setup",
            &json!({"email":"second@keel.example","password":PASSWORD,"name":"X","organization_name":"Y"}),
        )
        .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    problem(again).await;
    // Nothing was created by the refused call.
    assert_eq!(
        app.login("second@keel.example", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn concurrent_first_runs_create_exactly_one_super_admin() {
    let app = app().await;
    let calls = (0..4).map(|i| {
        let client = app.client.clone();
        let url = app.url("/api/v1/setup");
        async move {
            client
                .post(url)
                .json(&json!({"email": format!("root{i}@keel.example"), "password": PASSWORD, "name": "R", "organization_name": "P"}))
                .send()
                .await
                .expect("send")
                .status()
        }
    });
    let statuses = futures::future::join_all(calls).await;
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        3,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn registration_validates_each_field_and_writes_nothing_when_invalid() {
    let app = app().await;
    let r = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"email":"not-an-email","password":"short","name":"","organization_name":"Acme"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = problem(r).await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    for f in ["email", "name", "password"] {
        assert!(fields.contains(&f), "{f} not named in {body}");
    }
    let common = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"email":"a@acme.example","password":"password1234","name":"A","organization_name":"Acme"}),
        )
        .await;
    assert_eq!(common.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(problem(common).await.to_string().contains("common"));
    let long = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"email":"a@acme.example","password":PASSWORD,"name":"A","organization_name":"x".repeat(500)}),
        )
        .await;
    assert_eq!(long.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.login("a@acme.example", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let ok = app.register_org("a@acme.example", "Acme").await;
    let dup = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"email":"A@Acme.example","password":PASSWORD,"name":"A","organization_name":"Other"}),
        )
        .await;
    assert_eq!(
        dup.status(),
        StatusCode::CONFLICT,
        "emails are unique regardless of case"
    );
    let me = json_of(app.get_as("/api/v1/auth/me", &ok.access_token).await).await;
    assert_eq!(me["role"], "admin");
    assert_eq!(me["email_verified"], false);
}

#[tokio::test]
async fn email_verification_token_works_once() {
    let app = app().await;
    let s = app.register_org("v@acme.example", "Acme").await;
    let token = app.mailed_token("v@acme.example", "verify_email");
    let r = app
        .post_json("/api/v1/auth/verify-email", &json!({"token": token}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let me = json_of(app.get_as("/api/v1/auth/me", &s.access_token).await).await;
    assert_eq!(me["email_verified"], true);
    let again = app
        .post_json("/api/v1/auth/verify-email", &json!({"token": token}))
        .await;
    assert_eq!(again.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn an_organization_requiring_approval_keeps_invited_members_pending_until_approved() {
    let app = app().await;
    let admin = app.register_org("boss@acme.example", "Acme").await;
    let r = app
        .patch_as(
            &format!("/api/v1/orgs/{}", admin.org_id),
            &admin.access_token,
            &json!({"require_approval": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let reg = app
        .invite_and_register(&admin, "new@acme.example", "member", None)
        .await;
    assert_eq!(reg["user"]["status"], "pending_approval");
    let user_id = reg["user"]["id"].as_str().expect("id").to_string();

    let login = app.login("new@acme.example", PASSWORD).await;
    assert_eq!(login.status(), StatusCode::FORBIDDEN);
    assert_eq!(problem(login).await["account_status"], "pending_approval");

    let approved = app
        .post_as(
            &format!("/api/v1/users/{user_id}/approve"),
            &admin.access_token,
            &json!({}),
        )
        .await;
    assert_eq!(approved.status(), StatusCode::OK);
    assert_eq!(json_of(approved).await["status"], "active");
    app.sign_in("new@acme.example", PASSWORD).await;
    let twice = app
        .post_as(
            &format!("/api/v1/users/{user_id}/approve"),
            &admin.access_token,
            &json!({}),
        )
        .await;
    assert_eq!(twice.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn five_failures_lock_the_account_and_unknown_emails_answer_alike() {
    let app = TestApp::builder()
        .without_probe_module()
        .configure(|c| {
            c.auth.lockout_secs = 2;
            c.auth.ip_block_threshold = 1000;
        })
        .spawn()
        .await
        .expect("spawn");
    app.register_org("lock@acme.example", "Acme").await;
    for expected_remaining in (1..=4).rev() {
        let r = app.login("lock@acme.example", "wrong-password-123").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(problem(r).await["remaining_attempts"], expected_remaining);
        let unknown = app.login("nobody@acme.example", "wrong-password-123").await;
        assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            problem(unknown).await["remaining_attempts"],
            expected_remaining,
            "same answer for unknown emails"
        );
    }
    let fifth = app.login("lock@acme.example", "wrong-password-123").await;
    assert_eq!(fifth.status(), StatusCode::LOCKED);
    let retry: i64 = fifth
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    assert!((1..=2).contains(&retry), "{retry}");
    // Even the right password is refused while locked.
    assert_eq!(
        app.login("lock@acme.example", PASSWORD).await.status(),
        StatusCode::LOCKED
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    app.sign_in("lock@acme.example", PASSWORD).await;
    // Success resets the count.
    let r = app.login("lock@acme.example", "wrong-password-123").await;
    assert_eq!(problem(r).await["remaining_attempts"], 4);
}

#[tokio::test]
async fn ten_failures_from_one_address_block_it() {
    let app = TestApp::builder()
        .without_probe_module()
        .configure(|c| c.auth.lockout_threshold = 100)
        .spawn()
        .await
        .expect("spawn");
    app.register_org("ip@acme.example", "Acme").await;
    for i in 0..9 {
        let r = app
            .login(&format!("user{i}@nowhere.example"), "wrong-password-123")
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let tenth = app
        .login("user9@nowhere.example", "wrong-password-123")
        .await;
    assert_eq!(tenth.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(tenth.headers().get("retry-after").is_some());
    // Blocked even for a correct password.
    assert_eq!(
        app.login("ip@acme.example", PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_revokes_the_session() {
    let app = TestApp::builder()
        .without_probe_module()
        .configure(|c| c.auth.refresh_reuse_grace_secs = 1)
        .spawn()
        .await
        .expect("spawn");
    let s = app.register_org("r@acme.example", "Acme").await;
    let r1 = json_of(
        app.post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": s.refresh_token}),
        )
        .await,
    )
    .await;
    let new_refresh = r1["refresh_token"].as_str().expect("refresh").to_string();
    assert_ne!(new_refresh, s.refresh_token);
    let new_access = r1["access_token"].as_str().expect("access").to_string();
    assert_eq!(
        app.get_as("/api/v1/auth/me", &new_access).await.status(),
        StatusCode::OK
    );

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reuse = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": s.refresh_token}),
        )
        .await;
    assert_eq!(reuse.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(problem(reuse).await["session_revoked"], true);
    // The thief's and the owner's tokens are both dead now.
    let after = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": new_refresh}),
        )
        .await;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.get_as("/api/v1/auth/me", &new_access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let events = json_of(
        app.get_as(
            &format!(
                "/api/v1/orgs/{}/security-events?kind=refresh_reuse",
                s.org_id
            ),
            &app.sign_in("r@acme.example", PASSWORD).await.access_token,
        )
        .await,
    )
    .await;
    assert_eq!(events["pagination"]["total"], 1, "{events}");
}

#[tokio::test]
async fn two_concurrent_refreshes_within_the_grace_window_end_with_one_valid_session() {
    let app = app().await;
    let s = app.register_org("g@acme.example", "Acme").await;
    let body = json!({"refresh_token": s.refresh_token});
    let calls = (0..2).map(|_| app.post_json("/api/v1/auth/refresh", &body));
    let results = futures::future::join_all(calls).await;
    let mut refresh_tokens = Vec::new();
    for r in results {
        assert_eq!(r.status(), StatusCode::OK);
        refresh_tokens.push(
            json_of(r).await["refresh_token"]
                .as_str()
                .expect("refresh")
                .to_string(),
        );
    }
    assert_eq!(
        refresh_tokens[0], refresh_tokens[1],
        "both get the same successor"
    );
    let next = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": refresh_tokens[0]}),
        )
        .await;
    assert_eq!(next.status(), StatusCode::OK, "the session lives on");
}

#[tokio::test]
async fn logout_revokes_the_access_token_and_the_refresh_token() {
    let app = app().await;
    let s = app.register_org("out@acme.example", "Acme").await;
    assert_eq!(
        app.post_as("/api/v1/auth/logout", &s.access_token, &json!({}))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let r = app.get_as("/api/v1/auth/me", &s.access_token).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        problem(r).await["detail"]
            .as_str()
            .unwrap_or("")
            .contains("revoked")
    );
    let refresh = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": s.refresh_token}),
        )
        .await;
    assert_eq!(refresh.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sessions_are_listed_and_one_device_can_be_signed_out() {
    let app = app().await;
    let a = app.register_org("dev@acme.example", "Acme").await;
    let b = app.sign_in("dev@acme.example", PASSWORD).await;
    let list = json_of(app.get_as("/api/v1/auth/sessions", &a.access_token).await).await;
    let data = list["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    assert_eq!(data.iter().filter(|s| s["current"] == true).count(), 1);
    let r = app
        .delete_as(
            &format!("/api/v1/auth/sessions/{}", b.session_id),
            &a.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get_as("/api/v1/auth/me", &b.access_token)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get_as("/api/v1/auth/me", &a.access_token)
            .await
            .status(),
        StatusCode::OK
    );
    // Another user's session is not ours to end.
    let other = app.register_org("else@acme.example", "Else").await;
    let r = app
        .delete_as(
            &format!("/api/v1/auth/sessions/{}", other.session_id),
            &a.access_token,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let c = app.sign_in("dev@acme.example", PASSWORD).await;
    assert_eq!(
        app.post_as(
            "/api/v1/auth/logout-all-devices",
            &c.access_token,
            &json!({})
        )
        .await
        .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get_as("/api/v1/auth/me", &a.access_token)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get_as("/api/v1/auth/me", &c.access_token)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn changing_the_password_ends_the_other_sessions_only() {
    let app = app().await;
    let here = app.register_org("pw@acme.example", "Acme").await;
    let there = app.sign_in("pw@acme.example", PASSWORD).await;
    let wrong = app
        .post_as(
            "/api/v1/auth/change-password",
            &here.access_token,
            &json!({"current_password":"nope-nope-nope","new_password":"another-long-passphrase"}),
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        problem(wrong).await["errors"][0]["field"],
        "current_password"
    );
    let ok = app
        .post_as(
            "/api/v1/auth/change-password",
            &here.access_token,
            &json!({"current_password":PASSWORD,"new_password":"another-long-passphrase"}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get_as("/api/v1/auth/me", &here.access_token)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get_as("/api/v1/auth/me", &there.access_token)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("pw@acme.example", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    app.sign_in("pw@acme.example", "another-long-passphrase")
        .await;
}

#[tokio::test]
async fn password_reset_is_silent_about_unknown_addresses_and_works_once() {
    let app = app().await;
    let s = app.register_org("reset@acme.example", "Acme").await;
    let unknown = app
        .post_json(
            "/api/v1/auth/password-reset",
            &json!({"email":"ghost@acme.example"}),
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::ACCEPTED);
    assert!(app.mail_to("ghost@acme.example").is_empty());
    let known = app
        .post_json(
            "/api/v1/auth/password-reset",
            &json!({"email":"reset@acme.example"}),
        )
        .await;
    assert_eq!(known.status(), StatusCode::ACCEPTED);
    let token = app.mailed_token("reset@acme.example", "password_reset");
    let weak = app
        .post_json(
            "/api/v1/auth/password-reset/confirm",
            &json!({"token": token, "new_password": "short"}),
        )
        .await;
    assert_eq!(weak.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let ok = app
        .post_json(
            "/api/v1/auth/password-reset/confirm",
            &json!({"token": token, "new_password": "brand-new-passphrase"}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get_as("/api/v1/auth/me", &s.access_token)
            .await
            .status(),
        StatusCode::UNAUTHORIZED,
        "every session ends"
    );
    let again = app
        .post_json(
            "/api/v1/auth/password-reset/confirm",
            &json!({"token": token, "new_password": "yet-another-passphrase"}),
        )
        .await;
    assert_eq!(again.status(), StatusCode::UNPROCESSABLE_ENTITY);
    app.sign_in("reset@acme.example", "brand-new-passphrase")
        .await;
}

#[tokio::test]
async fn permissions_are_enforced_and_role_changes_take_effect_at_once() {
    let app = app().await;
    let admin = app.register_org("adm@acme.example", "Acme").await;
    let reg = app
        .invite_and_register(&admin, "mem@acme.example", "member", None)
        .await;
    let member_id = reg["user"]["id"].as_str().expect("id").to_string();
    let member = app.sign_in("mem@acme.example", PASSWORD).await;
    let r = app.get_as("/api/v1/users", &member.access_token).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(problem(r).await["permission"], "users.read");

    let bad_role = app
        .patch_as(
            &format!("/api/v1/users/{member_id}"),
            &admin.access_token,
            &json!({"role":"emperor"}),
        )
        .await;
    assert_eq!(bad_role.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem(bad_role).await["errors"][0]["field"], "role");
    let promote = app
        .patch_as(
            &format!("/api/v1/users/{member_id}"),
            &admin.access_token,
            &json!({"role":"admin"}),
        )
        .await;
    assert_eq!(promote.status(), StatusCode::OK);
    // The old token carries the old role: refused, so the client refreshes into the new one.
    assert_eq!(
        app.get_as("/api/v1/users", &member.access_token)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let refreshed = json_of(
        app.post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": member.refresh_token}),
        )
        .await,
    )
    .await;
    let token = refreshed["access_token"].as_str().expect("access");
    assert_eq!(
        app.get_as("/api/v1/users", token).await.status(),
        StatusCode::OK
    );

    let selfie = app
        .patch_as(
            &format!("/api/v1/users/{}", admin.user_id),
            &admin.access_token,
            &json!({"active": false}),
        )
        .await;
    assert_eq!(
        selfie.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "an admin cannot deactivate themself"
    );
}

#[tokio::test]
async fn deactivating_a_user_ends_their_sessions_and_api_keys_at_once() {
    let app = app().await;
    let admin = app.register_org("adm2@acme.example", "Acme").await;
    let reg = app
        .invite_and_register(&admin, "leaver@acme.example", "admin", None)
        .await;
    let id = reg["user"]["id"].as_str().expect("id").to_string();
    let leaver = app.sign_in("leaver@acme.example", PASSWORD).await;
    let key = json_of(
        app.post_as(
            "/api/v1/api-keys",
            &leaver.access_token,
            &json!({"name":"ci","permissions":["partners.read"]}),
        )
        .await,
    )
    .await;
    let key = key["key"].as_str().expect("key").to_string();
    assert_eq!(
        app.get_as("/api/v1/partners", &key).await.status(),
        StatusCode::OK
    );

    let r = app
        .patch_as(
            &format!("/api/v1/users/{id}"),
            &admin.access_token,
            &json!({"active": false}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["status"], "deactivated");
    assert_eq!(
        app.get_as("/api/v1/auth/me", &leaver.access_token)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get_as("/api/v1/partners", &key).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("leaver@acme.example", PASSWORD).await.status(),
        StatusCode::FORBIDDEN
    );
    let stale = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": leaver.refresh_token}),
        )
        .await;
    assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn optimistic_concurrency_refuses_a_stale_update() {
    let app = app().await;
    let admin = app.register_org("oc@acme.example", "Acme").await;
    let path = format!("/api/v1/orgs/{}", admin.org_id);
    let org = json_of(app.get_as(&path, &admin.access_token).await).await;
    let v = org["version"].as_i64().expect("version");
    let ok = app
        .patch_as(
            &path,
            &admin.access_token,
            &json!({"time_zone":"Asia/Kolkata","version": v}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    let stale = app
        .patch_as(
            &path,
            &admin.access_token,
            &json!({"time_zone":"Europe/Paris","version": v}),
        )
        .await;
    assert_eq!(stale.status(), StatusCode::CONFLICT);
    let stale_header = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&admin.access_token)
        .header("if-match", v.to_string())
        .json(&json!({"locale":"fr"}))
        .send()
        .await
        .expect("send");
    assert_eq!(stale_header.status(), StatusCode::PRECONDITION_FAILED);
    let now = json_of(app.get_as(&path, &admin.access_token).await).await;
    assert_eq!(now["time_zone"], "Asia/Kolkata");
    assert_eq!(now["locale"], "en");
    let bad = app
        .patch_as(
            &path,
            &admin.access_token,
            &json!({"default_currency":"XYZ","time_zone":"nowhere"}),
        )
        .await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        problem(bad).await["errors"].as_array().map(Vec::len),
        Some(2)
    );
}

#[tokio::test]
async fn api_keys_carry_only_a_subset_of_the_creators_permissions_and_can_be_revoked() {
    let app = app().await;
    let admin = app.register_org("keys@acme.example", "Acme").await;
    let over = app
        .post_as(
            "/api/v1/api-keys",
            &admin.access_token,
            &json!({"name":"x","permissions":["nonsense.perm"]}),
        )
        .await;
    assert_eq!(over.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let created = app
        .post_as(
            "/api/v1/api-keys",
            &admin.access_token,
            &json!({"name":"reader","permissions":["partners.read"]}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let body = json_of(created).await;
    let key = body["key"].as_str().expect("key").to_string();
    assert!(key.starts_with("keel_"));
    let id = body["id"].as_str().expect("id").to_string();
    assert_eq!(
        app.get_as("/api/v1/partners", &key).await.status(),
        StatusCode::OK
    );
    let denied = app
        .post_as(
            "/api/v1/partners",
            &key,
            &json!({"name":"P","kind":"buyer"}),
        )
        .await;
    assert_eq!(
        denied.status(),
        StatusCode::FORBIDDEN,
        "the key lacks partners.manage"
    );
    let listed = json_of(app.get_as("/api/v1/api-keys", &admin.access_token).await).await;
    assert!(
        !listed.to_string().contains(&key),
        "the key is shown once only"
    );
    assert_eq!(
        app.delete_as(&format!("/api/v1/api-keys/{id}"), &admin.access_token)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get_as("/api/v1/partners", &key).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get_as("/api/v1/partners", "keel_made_up_key")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

fn current_code(secret_b32: &str) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret_b32).expect("base32");
    let t = keel_kernel::auth::totp::totp(secret.as_bytes(), "x@example.com").expect("totp");
    t.generate(u64::try_from(chrono::Utc::now().timestamp()).expect("time"))
        .to_string()
}

#[tokio::test]
async fn two_factor_sign_in_with_codes_and_recovery_codes() {
    let app = app().await;
    let s = app.register_org("mfa@acme.example", "Acme").await;
    let setup = json_of(
        app.post_as("/api/v1/auth/totp/setup", &s.access_token, &json!({}))
            .await,
    )
    .await;
    let secret = setup["secret"].as_str().expect("secret").to_string();
    assert!(
        setup["otpauth_url"]
            .as_str()
            .unwrap_or("")
            .starts_with("otpauth://totp/")
    );
    let wrong = app
        .post_as(
            "/api/v1/auth/totp/enable",
            &s.access_token,
            &json!({"code":"000000"}),
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let enabled = app
        .post_as(
            "/api/v1/auth/totp/enable",
            &s.access_token,
            &json!({"code": current_code(&secret)}),
        )
        .await;
    assert_eq!(enabled.status(), StatusCode::OK);
    let codes: Vec<String> = json_of(enabled).await["recovery_codes"]
        .as_array()
        .expect("codes")
        .iter()
        .filter_map(|c| c.as_str().map(String::from))
        .collect();
    assert_eq!(codes.len(), 10);

    let first = json_of(app.login("mfa@acme.example", PASSWORD).await).await;
    assert_eq!(first["mfa_required"], true);
    assert!(first.get("access_token").is_none());
    let challenge = first["challenge_token"]
        .as_str()
        .expect("challenge")
        .to_string();
    // The code just used for enabling cannot be replayed.
    let replay = app
        .post_json(
            "/api/v1/auth/login/totp",
            &json!({"challenge_token": challenge, "code": current_code(&secret)}),
        )
        .await;
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    let recovered = app
        .post_json(
            "/api/v1/auth/login/totp",
            &json!({"challenge_token": challenge, "code": codes[0].to_lowercase()}),
        )
        .await;
    assert_eq!(recovered.status(), StatusCode::OK);
    assert!(json_of(recovered).await["access_token"].is_string());
    let reused_challenge = app
        .post_json(
            "/api/v1/auth/login/totp",
            &json!({"challenge_token": challenge, "code": codes[1]}),
        )
        .await;
    assert_eq!(
        reused_challenge.status(),
        StatusCode::UNAUTHORIZED,
        "a challenge works once"
    );
    let second = json_of(app.login("mfa@acme.example", PASSWORD).await).await;
    let again = app
        .post_json(
            "/api/v1/auth/login/totp",
            &json!({"challenge_token": second["challenge_token"], "code": codes[0]}),
        )
        .await;
    assert_eq!(
        again.status(),
        StatusCode::UNAUTHORIZED,
        "a recovery code works once"
    );
}

#[tokio::test]
async fn an_organization_requiring_admin_2fa_restricts_unenrolled_admins_to_enrolment() {
    let app = app().await;
    let admin = app.register_org("strict@acme.example", "Acme").await;
    let r = app
        .patch_as(
            &format!("/api/v1/orgs/{}", admin.org_id),
            &admin.access_token,
            &json!({"require_admin_2fa": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body = json_of(app.login("strict@acme.example", PASSWORD).await).await;
    assert_eq!(body["mfa_enrolment_required"], true);
    let token = body["access_token"].as_str().expect("access").to_string();
    let refresh = body["refresh_token"].as_str().expect("refresh").to_string();
    let blocked = app.get_as("/api/v1/users", &token).await;
    assert_eq!(blocked.status(), StatusCode::FORBIDDEN);
    assert_eq!(problem(blocked).await["mfa_enrolment_required"], true);
    let setup = json_of(
        app.post_as("/api/v1/auth/totp/setup", &token, &json!({}))
            .await,
    )
    .await;
    let secret = setup["secret"].as_str().expect("secret").to_string();
    let enabled = app
        .post_as(
            "/api/v1/auth/totp/enable",
            &token,
            &json!({"code": current_code(&secret)}),
        )
        .await;
    assert_eq!(enabled.status(), StatusCode::OK);
    let full = json_of(
        app.post_json("/api/v1/auth/refresh", &json!({"refresh_token": refresh}))
            .await,
    )
    .await;
    assert_eq!(full["mfa_enrolment_required"], false);
    assert_eq!(
        app.get_as(
            "/api/v1/users",
            full["access_token"].as_str().expect("access")
        )
        .await
        .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_super_admin_acts_in_another_organization_only_by_naming_it_and_is_audited() {
    let app = app().await;
    let root = app.setup_super_admin().await;
    let tenant = app.register_org("t@tenant.example", "Tenant").await;
    let r = app
        .client
        .get(app.url("/api/v1/users"))
        .bearer_auth(&root.access_token)
        .header("x-keel-org", tenant.org_id.to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let users = json_of(r).await;
    assert!(users.to_string().contains("t@tenant.example"));
    assert!(!users.to_string().contains("root@keel.example"));
    let events = json_of(
        app.get_as(
            &format!(
                "/api/v1/orgs/{}/security-events?kind=org_override",
                tenant.org_id
            ),
            &tenant.access_token,
        )
        .await,
    )
    .await;
    assert_eq!(events["pagination"]["total"], 1, "{events}");

    let tenant_tries = app
        .client
        .get(app.url("/api/v1/users"))
        .bearer_auth(&tenant.access_token)
        .header("x-keel-org", root.org_id.to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(tenant_tries.status(), StatusCode::FORBIDDEN);
    let unknown = app
        .client
        .get(app.url("/api/v1/users"))
        .bearer_auth(&root.access_token)
        .header("x-keel-org", Uuid::now_v7().to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_partner_user_sees_only_their_own_partner() {
    let app = app().await;
    let admin = app.register_org("pa@acme.example", "Acme").await;
    let mine = app.create_partner(&admin, "Mine").await;
    let theirs = app.create_partner(&admin, "Theirs").await;
    app.invite_and_register(&admin, "ext@buyer.example", "partner", Some(mine))
        .await;
    let ext = app.sign_in("ext@buyer.example", PASSWORD).await;
    let list = json_of(app.get_as("/api/v1/partners", &ext.access_token).await).await;
    assert_eq!(list["pagination"]["total"], 1);
    assert_eq!(list["data"][0]["id"], mine.to_string());
    assert_eq!(
        app.get_as(&format!("/api/v1/partners/{theirs}"), &ext.access_token)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get_as(&format!("/api/v1/partners/{mine}"), &ext.access_token)
            .await
            .status(),
        StatusCode::OK
    );
    let no_partner = app
        .post_as(
            &format!("/api/v1/orgs/{}/invitations", admin.org_id),
            &admin.access_token,
            &json!({"email":"x@y.example","role":"partner"}),
        )
        .await;
    assert_eq!(no_partner.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn malformed_expired_and_foreign_tokens_are_refused_with_401_problems() {
    let app = app().await;
    let s = app.register_org("tok@acme.example", "Acme").await;
    for bad in ["garbage", "a.b.c", &format!("{}x", s.access_token)] {
        let r = app.get_as("/api/v1/auth/me", bad).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{bad}");
        problem(r).await;
    }
    let none = app.get("/api/v1/auth/me").await;
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert!(none.headers().get("www-authenticate").is_some());

    let short = TestApp::builder()
        .without_probe_module()
        .configure(|c| c.auth.access_token_ttl_secs = 1)
        .spawn()
        .await
        .expect("spawn");
    let t = short.register_org("exp@acme.example", "Acme").await;
    tokio::time::sleep(Duration::from_millis(7_000)).await;
    let expired = short.get_as("/api/v1/auth/me", &t.access_token).await;
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    assert!(
        problem(expired).await["detail"]
            .as_str()
            .unwrap_or("")
            .contains("expired")
    );
}

#[tokio::test]
async fn a_cookie_session_needs_the_csrf_header_to_change_state() {
    let app = app().await;
    let s = app.register_org("cookie@acme.example", "Acme").await;
    let cookie = format!("keel_access={}", s.access_token);
    let read = app
        .client
        .get(app.url("/api/v1/auth/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("send");
    assert_eq!(read.status(), StatusCode::OK);
    let forged = app
        .client
        .post(app.url("/api/v1/partners"))
        .header("cookie", &cookie)
        .json(&json!({"name":"P","kind":"buyer"}))
        .send()
        .await
        .expect("send");
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let with_csrf = app
        .client
        .post(app.url("/api/v1/partners"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &s.csrf_token)
        .json(&json!({"name":"P","kind":"buyer"}))
        .send()
        .await
        .expect("send");
    assert_eq!(with_csrf.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_revocation_on_one_node_is_honoured_by_another_within_a_second() {
    let db = Arc::new(TestDb::new().await.expect("db"));
    let node_a = TestApp::builder()
        .without_probe_module()
        .database(db.clone())
        .spawn()
        .await
        .expect("a");
    let node_b = TestApp::builder()
        .without_probe_module()
        .database(db.clone())
        .spawn()
        .await
        .expect("b");
    let s = node_a.register_org("multi@acme.example", "Acme").await;
    assert_eq!(
        node_b
            .get_as("/api/v1/auth/me", &s.access_token)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        node_a
            .post_as("/api/v1/auth/logout", &s.access_token, &json!({}))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let started = std::time::Instant::now();
    let mut status = StatusCode::OK;
    while started.elapsed() < Duration::from_secs(1) {
        status = node_b
            .get_as("/api/v1/auth/me", &s.access_token)
            .await
            .status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "node B still accepts the token after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_isolation_probe_finds_no_route_that_leaks_across_tenants() {
    let app = app().await;
    let a = app.register_org("a@tenant-a.example", "Tenant A").await;
    let b = app.register_org("b@tenant-b.example", "Tenant B").await;
    let own = app.create_partner(&a, "Partner of the probing user").await;
    app.invite_and_register(&a, "p@tenant-a.example", "partner", Some(own))
        .await;
    let partner_user: Session = app.sign_in("p@tenant-a.example", PASSWORD).await;
    let report = isolation::probe(&app, &a, &b, &partner_user).await;
    assert!(
        report.uncovered.is_empty(),
        "routes without fixtures: {:?}",
        report.uncovered
    );
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert!(report.attempts >= 30, "only {} attempts", report.attempts);
}
