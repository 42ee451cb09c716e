//! The HTTP stack through real requests: problem+json for every error, request ids, security
//! headers, CORS, the panic guard, client IP resolution, TLS, and the OpenAPI document
//! matching the routes.

use std::collections::BTreeSet;

use keel_testkit::{TestApp, problem};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn an_unknown_route_answers_a_404_problem() {
    let app = TestApp::spawn().await;
    let response = app.get("/api/v1/nothing-here").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .expect("request id header");
    let body = problem(response).await;
    assert_eq!(body["status"], 404);
    assert_eq!(body["type"], "/problems/no-route");
    assert_eq!(body["instance"], "/api/v1/nothing-here");
    assert_eq!(body["request_id"], request_id.as_str());
}

#[tokio::test]
async fn a_wrong_method_answers_a_405_problem_with_allow() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .delete(app.url("/health"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let allow = response
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(allow.contains("GET"), "allow header: {allow}");
    let body = problem(response).await;
    assert_eq!(body["status"], 405);
    assert_eq!(body["instance"], "/health");
}

#[tokio::test]
async fn an_oversized_body_answers_413_and_changes_nothing() {
    let app = TestApp::builder()
        .configure(|c| c.http.body_limit_bytes = 1024)
        .spawn()
        .await
        .expect("spawn");
    let name = "x".repeat(4096);
    let response = app
        .post_json("/api/v1/test/items", &json!({ "name": name }))
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = problem(response).await;
    assert_eq!(body["status"], 413);

    // The same body streamed without a length is cut off too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(b"{\"name\":\"".to_vec()),
        Ok(vec![b'y'; 4096]),
        Ok(b"\"}".to_vec()),
    ];
    let response = app
        .client
        .post(app.url("/api/v1/test/items"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    problem(response).await;

    // Nothing was stored: the names refused above are still free.
    for name in ["x".repeat(4096), "y".repeat(4096)] {
        let ok = app
            .client
            .post(app.url("/api/v1/test/items"))
            .json(&json!({ "name": name }))
            .send()
            .await
            .expect("send");
        // Still too large for this server, so still refused: nothing half-written exists.
        assert_eq!(ok.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    let ok = app
        .post_json("/api/v1/test/items", &json!({ "name": "small" }))
        .await;
    assert_eq!(ok.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn malformed_json_answers_400_and_invalid_json_answers_422_naming_the_field() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/api/v1/test/echo"))
        .header("content-type", "application/json")
        .body("{\"name\": \"a\", ")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = problem(response).await;
    assert_eq!(body["status"], 400);
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("malformed JSON")
    );

    let response = app
        .post_json("/api/v1/test/echo", &json!({ "name": "a" }))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = problem(response).await;
    assert_eq!(body["errors"][0]["field"], "count");
    assert_eq!(body["errors"][0]["message"], "is required");

    let response = app
        .post_json("/api/v1/test/echo", &json!({ "name": "a", "count": -3 }))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = problem(response).await;
    assert_eq!(body["errors"][0]["field"], "count");
}

#[tokio::test]
async fn a_wrong_content_type_answers_415() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/api/v1/test/echo"))
        .header("content-type", "text/plain")
        .body("{\"name\":\"a\",\"count\":1}")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body = problem(response).await;
    assert_eq!(body["status"], 415);
}

#[tokio::test]
async fn an_invalid_query_parameter_answers_422_naming_it() {
    let app = TestApp::spawn().await;
    let response = app.get("/api/v1/test/slow?ms=soon").await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = problem(response).await;
    assert_eq!(body["errors"][0]["field"], "ms");
}

#[tokio::test]
async fn a_path_id_that_cannot_exist_answers_404() {
    let app = TestApp::spawn().await;
    let response = app.get("/api/v1/test/items/not-a-uuid").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body = problem(response).await;
    assert!(body["detail"].as_str().unwrap_or("").contains("id"));

    let missing = app
        .get(&format!("/api/v1/test/items/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(problem(missing).await["type"], "/problems/not-found");
}

#[tokio::test]
async fn a_stored_row_reads_back_identically_and_a_duplicate_is_a_409() {
    let app = TestApp::spawn().await;
    let created = app
        .post_json("/api/v1/test/items", &json!({ "name": "widget" }))
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .expect("location");
    let item: Value = created.json().await.expect("json");
    let fetched: Value = app.get(&location).await.json().await.expect("json");
    assert_eq!(fetched, item);

    let dup = app
        .post_json("/api/v1/test/items", &json!({ "name": "widget" }))
        .await;
    assert_eq!(dup.status(), StatusCode::CONFLICT);
    problem(dup).await;
}

#[tokio::test]
async fn a_panicking_handler_answers_a_500_problem_and_the_server_lives_on() {
    let app = TestApp::spawn().await;
    let response = app.get("/api/v1/test/panic").await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = problem(response).await;
    assert_eq!(body["status"], 500);
    let text = body.to_string();
    assert!(!text.contains("deliberate"), "panic message leaked: {text}");
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_sane_request_id_is_kept_and_an_insane_one_replaced() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/api/v1/test/whoami"))
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .expect("send");
    assert_eq!(
        response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("client-chosen-42")
    );
    let who: Value = response.json().await.expect("json");
    assert_eq!(who["request_id"], "client-chosen-42");

    let long = "z".repeat(200);
    let response = app
        .client
        .get(app.url("/api/v1/test/whoami"))
        .header("x-request-id", long.as_str())
        .send()
        .await
        .expect("send");
    let id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(!id.is_empty() && id != long);
}

#[tokio::test]
async fn security_headers_are_on_every_response_and_hsts_only_in_production() {
    let app = TestApp::spawn().await;
    for path in ["/health", "/api/v1/missing"] {
        let response = app.get(path).await;
        let h = response.headers();
        assert_eq!(
            h.get("x-content-type-options")
                .and_then(|v| v.to_str().ok()),
            Some("nosniff")
        );
        assert_eq!(
            h.get("x-frame-options").and_then(|v| v.to_str().ok()),
            Some("DENY")
        );
        assert_eq!(
            h.get("referrer-policy").and_then(|v| v.to_str().ok()),
            Some("no-referrer")
        );
        assert!(h.get("strict-transport-security").is_none());
    }
    let prod = TestApp::builder()
        .configure(|c| c.env = keel_kernel::config::Environment::Production)
        .spawn()
        .await
        .expect("spawn");
    let response = prod.get("/health").await;
    assert!(
        response
            .headers()
            .get("strict-transport-security")
            .is_some()
    );
}

#[tokio::test]
async fn cors_allows_exactly_the_configured_origins() {
    let app = TestApp::builder()
        .configure(|c| c.cors_origins = vec!["https://app.example.com".into()])
        .spawn()
        .await
        .expect("spawn");
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/v1/test/echo"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            )
            .send()
    };
    let allowed = preflight("https://app.example.com").await.expect("send");
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example.com")
    );
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-credentials")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let refused = preflight("https://evil.example.net").await.expect("send");
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
    let untrusted = TestApp::spawn().await;
    let who: Value = untrusted
        .client
        .get(untrusted.url("/api/v1/test/whoami"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(who["client_ip"], "127.0.0.1");

    let trusted = TestApp::builder()
        .configure(|c| c.http.trusted_proxies = vec!["127.0.0.1/32".into()])
        .spawn()
        .await
        .expect("spawn");
    let who: Value = trusted
        .client
        .get(trusted.url("/api/v1/test/whoami"))
        .header("x-forwarded-for", "198.51.100.1, 203.0.113.7")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(who["client_ip"], "203.0.113.7");
}

#[tokio::test]
async fn tls_termination_serves_https_with_the_configured_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = tempfile::tempdir().expect("dir");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let (c, k) = (cert_path.clone(), key_path.clone());
    let app = TestApp::builder()
        .configure(move |cfg| {
            cfg.http.tls_cert_path = Some(c);
            cfg.http.tls_key_path = Some(k);
        })
        .spawn()
        .await
        .expect("spawn");
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("root");
    let client = reqwest::Client::builder()
        .tls_certs_only([root])
        .build()
        .expect("client");
    let url = format!("https://localhost:{}/health", app.addr.port());
    let response = client.get(&url).send().await.expect("https request");
    assert_eq!(response.status(), StatusCode::OK);
    // Plain HTTP to the TLS port does not get an answer.
    let plain = app.client.get(app.url("/health")).send().await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != StatusCode::OK));
}

/// Every (path, method) in the document answers through a real route, and every route the
/// server has is in the document.
#[tokio::test]
async fn the_openapi_document_and_the_routes_agree() {
    let app = TestApp::spawn().await;
    let doc: Value = app
        .get("/api/openapi.json")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        doc["openapi"].as_str().map(|v| v.starts_with("3.1")),
        Some(true)
    );
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = BTreeSet::new();
    for (path, ops) in paths {
        for method in ops.as_object().expect("ops").keys() {
            documented.insert((path.clone(), method.to_uppercase()));
        }
    }
    let concrete_path = |path: &str| {
        let mut out = String::new();
        let mut rest = path;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .map_or(rest.len(), |e| start + e + 1);
            out.push_str(&uuid::Uuid::now_v7().to_string());
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    };
    for (path, method) in &documented {
        let concrete = concrete_path(path);
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = app
            .client
            .request(method.clone(), app.url(&concrete))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("send");
        let status = response.status();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        if status == StatusCode::NOT_FOUND {
            let body = problem(response).await;
            assert_ne!(
                body["type"], "/problems/no-route",
                "{method} {path} has no route"
            );
        }
    }
    // The routes of the probe module and the operational routes are all documented.
    let expected: BTreeSet<(String, String)> = [
        ("/health", "GET"),
        ("/health/ready", "GET"),
        ("/api/openapi.json", "GET"),
        ("/metrics", "GET"),
        ("/api/v1/test/echo", "POST"),
        ("/api/v1/test/slow", "GET"),
        ("/api/v1/test/panic", "GET"),
        ("/api/v1/test/whoami", "GET"),
        ("/api/v1/test/items", "POST"),
        ("/api/v1/test/items/{id}", "GET"),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_string(), m.to_string()))
    .collect();
    assert!(
        expected.is_subset(&documented),
        "{:?}",
        expected.difference(&documented)
    );
    // And no path accepts a method its document does not list.
    let all_methods = ["GET", "POST", "PUT", "PATCH", "DELETE"];
    for path in paths.keys() {
        let concrete = concrete_path(path);
        for m in all_methods {
            if documented.contains(&(path.clone(), m.to_string())) {
                continue;
            }
            let method = reqwest::Method::from_bytes(m.as_bytes()).expect("method");
            let response = app
                .client
                .request(method, app.url(&concrete))
                .send()
                .await
                .expect("send");
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{m} {path} answers but is not documented"
            );
        }
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_not_raw_path() {
    let app = TestApp::spawn().await;
    let id = uuid::Uuid::now_v7();
    app.get(&format!("/api/v1/test/items/{id}")).await;
    app.get("/health").await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("text");
    assert!(text.contains("keel_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/api/v1/test/items/{id}\""), "{text}");
    assert!(
        !text.contains(&id.to_string()),
        "raw ids must never become labels"
    );
    assert!(
        text.contains("keel_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("keel_db_pool_connections"), "{text}");
}

#[tokio::test]
async fn a_metrics_token_protects_the_endpoint() {
    let app = TestApp::builder()
        .configure(|c| c.metrics.token = Some(keel_kernel::config::Secret::new("scrape-me-please")))
        .spawn()
        .await
        .expect("spawn");
    assert_eq!(app.get("/metrics").await.status(), StatusCode::UNAUTHORIZED);
    let ok = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-me-please")
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_docs_ui_is_served_from_the_binary_and_reads_the_document() {
    let app = TestApp::spawn().await;
    let page = app.get("/api/docs/").await;
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.expect("html");
    assert!(html.to_lowercase().contains("swagger"), "{html}");
    let init = app
        .get("/api/docs/swagger-initializer.js")
        .await
        .text()
        .await
        .expect("js");
    assert!(init.contains("/api/openapi.json"), "{init}");
    assert!(init.contains("persistAuthorization"), "{init}");
}
