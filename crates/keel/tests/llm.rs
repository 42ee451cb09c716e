//! The LLM client against local fake providers: the second identical call is answered from
//! the cache (hit counted, no second upstream call), another organization does not hit the
//! first one's cache, temperature > 0 is not cached by default, schema-invalid output is
//! sent back once and the valid answer kept, images travel as data URLs (OpenAI) and inline
//! data (Gemini), no key disables AI (readiness and a 503 problem), and an open breaker
//! answers 503 naming the service.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::Json as AxumJson;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::IntoResponse;
use axum::routing::post;
use keel_kernel::config::Secret;
use keel_kernel::integrations::config::LlmProviderKind;
use keel_kernel::integrations::{LlmError, LlmRequest};
use keel_kernel::tenancy::TenantScope;
use keel_testkit::{FakeServer, TestApp, problem};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// What the fake provider saw: each request's headers and body.
type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

/// A fake OpenAI-compatible API answering each call with the next of `answers` (the last
/// one repeats), with token usage.
async fn fake_openai(answers: Vec<Value>) -> (FakeServer, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let server = FakeServer::start(Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap, AxumJson(body): AxumJson<Value>| {
            let (s, answers) = (s.clone(), answers.clone());
            async move {
                let n = {
                    let mut seen = s.lock().expect("lock");
                    seen.push((headers, body));
                    seen.len()
                };
                let answer = answers
                    .get(n - 1)
                    .or_else(|| answers.last())
                    .cloned()
                    .unwrap_or(Value::Null);
                if answer == json!("fail") {
                    return AxumStatus::INTERNAL_SERVER_ERROR.into_response();
                }
                let content = match answer {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                AxumJson(json!({
                    "choices": [{ "message": { "role": "assistant", "content": content } }],
                    "usage": { "prompt_tokens": 100, "completion_tokens": 20 }
                }))
                .into_response()
            }
        }),
    ))
    .await;
    (server, seen)
}

async fn app_with_llm(base_url: String, provider: LlmProviderKind, model: &str) -> TestApp {
    let model = model.to_string();
    TestApp::builder()
        .configure(move |c| {
            c.llm.provider = provider;
            c.llm.base_url = base_url;
            c.llm.model = model;
            c.llm.api_key = Some(Secret::new("test-llm-key"));
            c.outbound.retry_base_ms = 1;
        })
        .spawn()
        .await
        .expect("server starts")
}

fn calls(seen: &Seen) -> usize {
    seen.lock().expect("lock").len()
}

#[tokio::test]
async fn the_second_identical_call_is_answered_from_the_cache_of_its_organization_only() {
    let (fake, seen) = fake_openai(vec![json!("Paris")]).await;
    let app = app_with_llm(fake.base_url.clone(), LlmProviderKind::Openai, "gpt-test").await;
    let a = app.register_org("admin@a-llm.example", "A").await;
    let b = app.register_org("admin@b-llm.example", "B").await;
    let llm = &app.state.integrations.llm;
    let db = &app.state.db;
    let ask = || {
        LlmRequest::new("What is the capital of France?")
            .system("Answer in one word.")
            .image(vec![1u8, 2, 3], "image/png")
    };

    let first = llm
        .complete(db, &TenantScope::for_tests(a.org_id), ask())
        .await
        .expect("answer");
    assert_eq!(first.text, "Paris");
    assert!(!first.cached);
    let second = llm
        .complete(db, &TenantScope::for_tests(a.org_id), ask())
        .await
        .expect("answer");
    assert!(
        second.cached,
        "an identical request is answered from the cache"
    );
    assert_eq!(second.text, "Paris");
    assert_eq!(calls(&seen), 1, "no second upstream call");

    // The request carried the key, the system prompt and the image as a data URL.
    {
        let seen = seen.lock().expect("lock");
        let (headers, body) = &seen[0];
        assert_eq!(headers["authorization"], "Bearer test-llm-key");
        assert_eq!(body["model"], "gpt-test");
        assert_eq!(body["messages"][0]["role"], "system");
        let parts = &body["messages"][1]["content"];
        assert_eq!(parts[1]["type"], "image_url");
        assert_eq!(parts[1]["image_url"]["url"], "data:image/png;base64,AQID");
    }

    // Another organization asking the same gets its own answer, not A's cache.
    let other = llm
        .complete(db, &TenantScope::for_tests(b.org_id), ask())
        .await
        .expect("answer");
    assert!(!other.cached);
    assert_eq!(calls(&seen), 2);

    // A different image is a different request.
    let changed = llm
        .complete(
            db,
            &TenantScope::for_tests(a.org_id),
            ask().image(vec![9u8], "image/jpeg"),
        )
        .await
        .expect("answer");
    assert!(!changed.cached);
    assert_eq!(calls(&seen), 3);

    let stats: Value = app
        .get_as("/api/v1/llm/cache/stats", &a.access_token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(stats["enabled"], true);
    assert_eq!(stats["entries"], 2);
    assert_eq!(stats["hits"], 1);
    assert_eq!(stats["tokens_saved"], 120);
    let rate = stats["hit_rate"].as_f64().expect("rate");
    assert!((rate - 1.0 / 3.0).abs() < 1e-9, "{stats}");

    let b_stats: Value = app
        .get_as("/api/v1/llm/cache/stats", &b.access_token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(b_stats["entries"], 1);
    assert_eq!(b_stats["hits"], 0);

    // The hit rate is in Prometheus too.
    let metrics = app.get("/metrics").await.text().await.expect("text");
    for result in ["hit", "miss"] {
        let family =
            format!("keel_llm_cache_requests_total{{provider=\"openai\",result=\"{result}\"}}");
        assert!(metrics.contains(&family), "{family} missing");
    }
}

#[tokio::test]
async fn answers_with_a_temperature_are_not_cached_unless_configured() {
    let (fake, seen) = fake_openai(vec![json!("a poem")]).await;
    let app = app_with_llm(fake.base_url.clone(), LlmProviderKind::Openai, "gpt-test").await;
    let a = app.register_org("admin@temp-llm.example", "T").await;
    let scope = TenantScope::for_tests(a.org_id);
    for _ in 0..2 {
        let answer = app
            .state
            .integrations
            .llm
            .complete(
                &app.state.db,
                &scope,
                LlmRequest::new("A poem").temperature(0.8),
            )
            .await
            .expect("answer");
        assert!(!answer.cached);
    }
    assert_eq!(calls(&seen), 2);
}

#[derive(Debug, serde::Deserialize, PartialEq)]
struct Invoice {
    invoice_number: String,
    total_minor: i64,
}

#[tokio::test]
async fn schema_invalid_output_is_sent_back_once_and_the_valid_answer_is_cached() {
    let (fake, seen) = fake_openai(vec![
        json!("{\"invoice_number\": \"INV-7\", \"total_minor\": \"a lot\"}"),
        json!("```json\n{\"invoice_number\": \"INV-7\", \"total_minor\": 125000}\n```"),
    ])
    .await;
    let app = app_with_llm(fake.base_url.clone(), LlmProviderKind::Openai, "gpt-test").await;
    let a = app.register_org("admin@json-llm.example", "J").await;
    let scope = TenantScope::for_tests(a.org_id);
    let schema = json!({
        "type": "object",
        "required": ["invoice_number", "total_minor"],
        "properties": {
            "invoice_number": { "type": "string" },
            "total_minor": { "type": "integer" }
        }
    });
    let llm = &app.state.integrations.llm;
    let (invoice, answer) = llm
        .complete_json::<Invoice>(
            &app.state.db,
            &scope,
            LlmRequest::new("Read this invoice").image(vec![7u8; 16], "image/png"),
            &schema,
        )
        .await
        .expect("a valid answer after one retry");
    assert_eq!(
        invoice,
        Invoice {
            invoice_number: "INV-7".into(),
            total_minor: 125_000
        }
    );
    assert!(!answer.cached);
    assert_eq!(calls(&seen), 2);
    {
        let seen = seen.lock().expect("lock");
        let first = &seen[0].1;
        assert_eq!(first["response_format"]["type"], "json_object");
        assert!(
            first["messages"][0]["content"]
                .as_str()
                .expect("system")
                .contains("JSON Schema"),
            "the schema is in the system prompt"
        );
        let retry_prompt = seen[1].1["messages"][1]["content"][0]["text"]
            .as_str()
            .expect("text")
            .to_string();
        assert!(
            retry_prompt.contains("$.total_minor must be of type integer"),
            "the retry names the validation error: {retry_prompt}"
        );
    }

    let (again, answer) = llm
        .complete_json::<Invoice>(
            &app.state.db,
            &scope,
            LlmRequest::new("Read this invoice").image(vec![7u8; 16], "image/png"),
            &schema,
        )
        .await
        .expect("cached");
    assert!(answer.cached);
    assert_eq!(again.total_minor, 125_000);
    assert_eq!(calls(&seen), 2);
}

#[tokio::test]
async fn output_invalid_twice_is_an_error_and_is_not_cached() {
    let (fake, seen) = fake_openai(vec![json!("not json at all")]).await;
    let app = app_with_llm(fake.base_url.clone(), LlmProviderKind::Openai, "gpt-test").await;
    let a = app.register_org("admin@bad-llm.example", "X").await;
    let scope = TenantScope::for_tests(a.org_id);
    let schema = json!({ "type": "object" });
    let err = app
        .state
        .integrations
        .llm
        .complete_json::<Value>(&app.state.db, &scope, LlmRequest::new("Hi"), &schema)
        .await
        .expect_err("invalid twice");
    assert!(matches!(err, LlmError::InvalidOutput(_)), "{err:?}");
    assert_eq!(calls(&seen), 2);
    let stats: Value = app
        .get_as("/api/v1/llm/cache/stats", &a.access_token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(stats["entries"], 0);
}

#[tokio::test]
async fn the_gemini_provider_sends_images_as_inline_data() {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let fake = FakeServer::start(Router::new().route(
        "/v1beta/models/gemini-test:generateContent",
        post(move |headers: HeaderMap, AxumJson(body): AxumJson<Value>| {
            let s = s.clone();
            async move {
                s.lock().expect("lock").push((headers, body));
                AxumJson(json!({
                    "candidates": [{ "content": { "parts": [{ "text": "{\"ok\":" }, { "text": "true}" }] } }],
                    "usageMetadata": { "promptTokenCount": 50, "candidatesTokenCount": 5 }
                }))
            }
        }),
    ))
    .await;
    let app = app_with_llm(
        fake.base_url.clone(),
        LlmProviderKind::Gemini,
        "gemini-test",
    )
    .await;
    let a = app.register_org("admin@gemini.example", "G").await;
    let (value, answer) = app
        .state
        .integrations
        .llm
        .complete_json::<Value>(
            &app.state.db,
            &TenantScope::for_tests(a.org_id),
            LlmRequest::new("Is it ok?")
                .system("Be brief.")
                .image(vec![0xffu8, 0xd8], "image/jpeg"),
            &json!({ "type": "object", "required": ["ok"] }),
        )
        .await
        .expect("answer");
    assert_eq!(value, json!({ "ok": true }));
    assert_eq!(answer.prompt_tokens, 50);
    assert_eq!(answer.provider, "gemini");
    let seen = seen.lock().expect("lock");
    let (headers, body) = &seen[0];
    assert_eq!(headers["x-goog-api-key"], "test-llm-key");
    let inline = &body["contents"][0]["parts"][1]["inline_data"];
    assert_eq!(inline["mime_type"], "image/jpeg");
    assert_eq!(inline["data"], "/9g=");
    assert_eq!(
        body["generationConfig"]["responseMimeType"],
        "application/json"
    );
    assert!(
        body["systemInstruction"]["parts"][0]["text"]
            .as_str()
            .expect("system")
            .starts_with("Be brief.")
    );
}

#[tokio::test]
async fn without_a_key_ai_is_disabled_in_readiness_and_answers_503() {
    let app = TestApp::spawn().await;
    let a = app.register_org("admin@no-ai.example", "N").await;
    let r = app.get("/health/ready").await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "a disabled LLM does not make a node unready"
    );
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["checks"]["llm"]["status"], "disabled");

    let r = app
        .post_as(
            "/api/v1/test/llm",
            &a.access_token,
            &json!({ "prompt": "hello" }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let p = problem(r).await;
    assert_eq!(p["type"], "/problems/ai-disabled");
}

#[tokio::test]
async fn a_failing_provider_opens_its_breaker_and_ai_endpoints_answer_503_naming_it() {
    let (fake, seen) = fake_openai(vec![json!("fail")]).await;
    let base = fake.base_url.clone();
    let app = TestApp::builder()
        .configure(move |c| {
            c.llm.base_url = base;
            c.llm.api_key = Some(Secret::new("test-llm-key"));
            c.outbound.retry_attempts = 1;
            c.outbound.breaker_failure_threshold = 2;
            c.outbound.breaker_open_ms = 60_000;
        })
        .spawn()
        .await
        .expect("server starts");
    let a = app.register_org("admin@down-llm.example", "D").await;
    for _ in 0..2 {
        let r = app
            .post_as(
                "/api/v1/test/llm",
                &a.access_token,
                &json!({ "prompt": "hello" }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let p = problem(r).await;
        assert_eq!(p["service"], "llm.openai");
    }
    let r = app
        .post_as(
            "/api/v1/test/llm",
            &a.access_token,
            &json!({ "prompt": "hello" }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    let p = problem(r).await;
    assert_eq!(p["type"], "/problems/service-unavailable");
    assert_eq!(p["service"], "llm.openai");
    assert!(p["detail"].as_str().expect("detail").contains("llm.openai"));
    assert_eq!(calls(&seen), 2, "the open breaker kept the third call home");

    let ready: Value = app.get("/health/ready").await.json().await.expect("json");
    assert_eq!(ready["checks"]["llm"]["status"], "up");
    assert!(
        ready["checks"]["llm"]["detail"]
            .as_str()
            .expect("detail")
            .contains("Open"),
        "{ready}"
    );
}

fn percentiles(mut samples: Vec<std::time::Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99))
}

/// Not a pass/fail test: the latency of a cached answer (one indexed read and one hit-count
/// update) against a miss to a local fake provider (the call plus the cache write), on the
/// backend in use. `cargo test -p keel --test llm -- --ignored --nocapture cache_latency`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn cache_latency_hit_against_miss() {
    let (fake, _seen) = fake_openai(vec![json!("an answer of a few words")]).await;
    let app = app_with_llm(fake.base_url.clone(), LlmProviderKind::Openai, "gpt-test").await;
    let a = app.register_org("admin@bench-llm.example", "B").await;
    let scope = TenantScope::for_tests(a.org_id);
    let llm = &app.state.integrations.llm;
    let (mut misses, mut hits) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let request = || LlmRequest::new(format!("question {i}")).system("Be brief.");
        let started = std::time::Instant::now();
        let miss = llm
            .complete(&app.state.db, &scope, request())
            .await
            .expect("miss");
        misses.push(started.elapsed());
        assert!(!miss.cached);
        let started = std::time::Instant::now();
        let hit = llm
            .complete(&app.state.db, &scope, request())
            .await
            .expect("hit");
        hits.push(started.elapsed());
        assert!(hit.cached);
    }
    let (miss50, miss99) = percentiles(misses);
    let (hit50, hit99) = percentiles(hits);
    println!(
        "llm cache on {:?}: hit p50 {hit50:.2} ms p99 {hit99:.2} ms; miss (local fake provider) p50 {miss50:.2} ms p99 {miss99:.2} ms",
        app.db.kind()
    );
}
