//! Notifications end to end: the notification center (list, unread filter and count, read,
//! read-all, someone else's answers 404), preferences (defaults, changes, bad input naming
//! the field), email through a real SMTP conversation with a local server the test runs
//! (an outage that recovers, and one that outlasts the attempts), SMS against a local fake
//! of a Twilio-compatible API, and channels without a provider recorded as skipped and shown
//! in readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use keel_kernel::module::Module;
use keel_kernel::notify::{DeliveryChannel, NotificationType};
use keel_kernel::tenancy::TenantScope;
use keel_testkit::{Session, TestApp};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

struct Notices;

impl Module for Notices {
    fn name(&self) -> &'static str {
        "notices"
    }

    fn notification_types(&self) -> Vec<NotificationType> {
        vec![
            NotificationType::new(
                "notices.shipment_booked",
                "Shipment {{ reference }} booked",
                "Your shipment {{ reference }} is booked.",
            )
            .description("A shipment was booked")
            .html("<p>Your shipment <b>{{ reference }}</b> is booked.</p>")
            .channels(&[
                DeliveryChannel::InApp,
                DeliveryChannel::Email,
                DeliveryChannel::Sms,
            ]),
            NotificationType::new("notices.digest", "Digest", "{{ count }} updates")
                .channels(&[DeliveryChannel::InApp]),
        ]
    }
}

fn builder() -> keel_testkit::TestAppBuilder {
    TestApp::builder().module(Arc::new(Notices))
}

async fn json_of(r: reqwest::Response) -> Value {
    let status = r.status();
    let text = r.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"))
}

async fn send(app: &TestApp, to: &Session, kind: &str, data: Value) -> Value {
    let scope = TenantScope::for_tests(to.org_id);
    let mut tx = app.state.db.begin().await.expect("tx");
    let n = keel_kernel::notify::send(&app.state, &mut tx, &scope, to.user_id, kind, data)
        .await
        .expect("send");
    tx.commit().await.expect("commit");
    serde_json::to_value(n).expect("json")
}

/// Polls the notification until `channel`'s delivery reaches one of `statuses`.
async fn delivery_until(
    app: &TestApp,
    who: &Session,
    id: &str,
    channel: &str,
    statuses: &[&str],
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = json_of(
            app.get_as("/api/v1/notifications?page_size=100", &who.access_token)
                .await,
        )
        .await;
        let d = page["data"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["id"] == id))
            .and_then(|n| n["deliveries"].as_array())
            .and_then(|d| d.iter().find(|d| d["channel"] == channel))
            .cloned();
        if let Some(d) = &d
            && statuses.iter().any(|s| d["status"] == *s)
        {
            return d.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{channel} delivery stuck at {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_notification_center_lists_counts_and_marks_read_for_its_owner_only() {
    let app = builder().spawn().await.expect("app");
    let me = app.register_org("nc-me@example.com", "Center Org").await;
    let them = app.register_org("nc-them@example.com", "Other Org").await;
    let mut mine = Vec::new();
    for n in 1..=3 {
        mine.push(send(&app, &me, "notices.digest", json!({ "count": n })).await);
    }
    let theirs = send(&app, &them, "notices.digest", json!({ "count": 9 })).await;
    let t = &me.access_token;

    let page = json_of(app.get_as("/api/v1/notifications", t).await).await;
    assert_eq!(page["pagination"]["total"], 3);
    assert_eq!(page["data"][0]["id"], mine[2]["id"], "newest first");
    assert_eq!(page["data"][0]["title"], "Digest");
    assert_eq!(page["data"][0]["body"], "3 updates");
    assert_eq!(page["data"][0]["type"], "notices.digest");
    assert_eq!(page["data"][0]["read"], false);
    let count = json_of(app.get_as("/api/v1/notifications/unread-count", t).await).await;
    assert_eq!(count["unread"], 3);

    let first = mine[0]["id"].as_str().expect("id");
    let r = app
        .post_as(
            &format!("/api/v1/notifications/{first}/read"),
            t,
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let read = json_of(r).await;
    assert_eq!(
        (read["read"].clone(), read["version"].clone()),
        (json!(true), json!(2))
    );
    let unread = json_of(app.get_as("/api/v1/notifications?unread=true", t).await).await;
    assert_eq!(unread["pagination"]["total"], 2);
    assert!(
        unread["data"]
            .as_array()
            .expect("data")
            .iter()
            .all(|n| n["id"] != first)
    );
    let done = json_of(app.get_as("/api/v1/notifications?unread=false", t).await).await;
    assert_eq!(done["data"][0]["id"], first);

    // Someone else's notification, and one that does not exist, answer alike.
    let theirs_id = theirs["id"].as_str().expect("id");
    for id in [theirs_id.to_string(), Uuid::now_v7().to_string()] {
        let r = app
            .post_as(&format!("/api/v1/notifications/{id}/read"), t, &json!({}))
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    let r = app
        .post_as("/api/v1/notifications/read-all", t, &json!({}))
        .await;
    assert_eq!(json_of(r).await["updated"], 2);
    let count = json_of(app.get_as("/api/v1/notifications/unread-count", t).await).await;
    assert_eq!(count["unread"], 0);
    // Theirs is untouched.
    let count = json_of(
        app.get_as("/api/v1/notifications/unread-count", &them.access_token)
            .await,
    )
    .await;
    assert_eq!(count["unread"], 1);
    let r = app.get_as("/api/v1/notifications?page_size=0", t).await;
    assert_eq!(
        keel_testkit::problem(r).await["errors"][0]["field"],
        "page_size"
    );
    let r = app.get("/api/v1/notifications").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn without_providers_email_and_sms_are_recorded_as_skipped_and_readiness_says_so() {
    let app = builder().spawn().await.expect("app");
    let me = app.register_org("nc-skip@example.com", "Skip Org").await;
    let n = send(
        &app,
        &me,
        "notices.shipment_booked",
        json!({ "reference": "SH-1" }),
    )
    .await;
    let deliveries = n["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 2);
    for d in deliveries {
        assert_eq!(d["status"], "skipped", "{d}");
        assert!(
            d["detail"]
                .as_str()
                .unwrap_or("")
                .contains("channel disabled"),
            "{d}"
        );
    }
    let ready = json_of(app.get("/health/ready").await).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"]["email"]["status"], "disabled");
    assert_eq!(ready["checks"]["sms"]["status"], "disabled");
    let prefs = json_of(
        app.get_as("/api/v1/notifications/preferences", &me.access_token)
            .await,
    )
    .await;
    assert_eq!(prefs["disabled_channels"], json!(["email", "sms"]));
}

#[tokio::test]
async fn preferences_choose_the_channels_and_bad_input_names_the_field() {
    let app = builder().spawn().await.expect("app");
    let me = app.register_org("nc-prefs@example.com", "Prefs Org").await;
    let t = &me.access_token;
    let prefs = json_of(app.get_as("/api/v1/notifications/preferences", t).await).await;
    let booked = prefs["types"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["type"] == "notices.shipment_booked"))
        .cloned()
        .expect("type listed");
    assert_eq!(
        booked["channels"],
        json!({ "in_app": true, "email": true, "sms": true })
    );
    assert_eq!(prefs["sms_number"], Value::Null);

    let put = |body: Value| {
        let app = &app;
        async move {
            app.call(
                reqwest::Method::PUT,
                "/api/v1/notifications/preferences",
                Some(t),
                Some(&body),
            )
            .await
        }
    };
    let r = put(json!({ "sms_number": "+15551234567", "types": [{ "type": "notices.shipment_booked", "channels": { "email": false, "in_app": false } }] })).await;
    assert_eq!(r.status(), StatusCode::OK);
    let prefs = json_of(r).await;
    assert_eq!(prefs["sms_number"], "+15551234567");
    let booked = prefs["types"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["type"] == "notices.shipment_booked"))
        .cloned()
        .expect("type listed");
    assert_eq!(
        booked["channels"],
        json!({ "in_app": false, "email": false, "sms": true })
    );

    // Off in-app: not in the center; off by email: no email delivery at all.
    let n = send(
        &app,
        &me,
        "notices.shipment_booked",
        json!({ "reference": "SH-2" }),
    )
    .await;
    let channels: Vec<&str> = n["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter_map(|d| d["channel"].as_str())
        .collect();
    assert_eq!(channels, ["sms"]);
    let page = json_of(app.get_as("/api/v1/notifications", t).await).await;
    assert_eq!(page["pagination"]["total"], 0);

    for (body, field) in [
        (
            json!({ "types": [{ "type": "nope", "channels": { "email": true } }] }),
            "types[0].type",
        ),
        (
            json!({ "types": [{ "type": "notices.digest", "channels": { "fax": true } }] }),
            "types[0].channels.fax",
        ),
        (json!({ "sms_number": "555-1234" }), "sms_number"),
    ] {
        let r = put(body).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(keel_testkit::problem(r).await["errors"][0]["field"], field);
    }
    // Nothing changed by the refused requests; null removes the number.
    let r = put(json!({ "sms_number": null })).await;
    assert_eq!(json_of(r).await["sms_number"], Value::Null);
}

/// A minimal SMTP server: while `refuse` is above zero, each session is turned away with 421
/// (an outage) and counts it down; otherwise messages are accepted and kept.
struct Smtp {
    port: u16,
    refuse: Arc<AtomicUsize>,
    messages: Arc<Mutex<Vec<(String, String)>>>,
}

impl Smtp {
    async fn start(refuse: usize) -> Smtp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let refuse = Arc::new(AtomicUsize::new(refuse));
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (r, m) = (refuse.clone(), messages.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let refused = r
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                let m = m.clone();
                tokio::spawn(async move {
                    let _ = smtp_session(stream, refused, m).await;
                });
            }
        });
        Smtp {
            port,
            refuse,
            messages,
        }
    }
}

async fn smtp_session(
    stream: tokio::net::TcpStream,
    refuse: bool,
    messages: Arc<Mutex<Vec<(String, String)>>>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    if refuse {
        write
            .write_all(b"421 4.3.2 Service not available, try later\r\n")
            .await?;
        return write.shutdown().await;
    }
    write.write_all(b"220 test.local ESMTP\r\n").await?;
    let mut lines = BufReader::new(read).lines();
    let mut rcpt = String::new();
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            write
                .write_all(b"250-test.local\r\n250 8BITMIME\r\n")
                .await?;
        } else if upper.starts_with("MAIL FROM") {
            write.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("RCPT TO") {
            rcpt = line[8..].trim().trim_matches(['<', '>']).to_string();
            write.write_all(b"250 OK\r\n").await?;
        } else if upper == "DATA" {
            write.write_all(b"354 go ahead\r\n").await?;
            let mut data = String::new();
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
                data.push_str(&l);
                data.push('\n');
            }
            messages.lock().await.push((rcpt.clone(), data));
            write.write_all(b"250 OK queued\r\n").await?;
        } else if upper == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return write.shutdown().await;
        } else {
            write.write_all(b"250 OK\r\n").await?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn email_goes_through_smtp_and_an_outage_is_retried_until_it_is_delivered() {
    let smtp = Smtp::start(0).await;
    let port = smtp.port;
    let app = builder()
        .configure(move |c| {
            c.smtp.host = Some("127.0.0.1".into());
            c.smtp.port = port;
            c.smtp.tls = keel_kernel::notify::SmtpTls::None;
            c.smtp.from = "Keel Test <noreply@keel.example>".into();
        })
        .spawn()
        .await
        .expect("app");
    let me = app.register_org("nc-mail@example.com", "Mail Org").await;
    // The sign-up mail went over SMTP too.
    let signup = smtp.messages.lock().await.clone();
    assert!(
        signup.iter().any(|(to, _)| to == "nc-mail@example.com"),
        "account mail over SMTP"
    );
    // The outage: the next two sessions are refused.
    smtp.refuse.store(2, Ordering::SeqCst);
    let n = send(
        &app,
        &me,
        "notices.shipment_booked",
        json!({ "reference": "SH-<42>" }),
    )
    .await;
    let id = n["id"].as_str().expect("id").to_string();
    let d = delivery_until(&app, &me, &id, "email", &["sent"]).await;
    assert_eq!(
        d["attempts"], 3,
        "two refused attempts, then delivered: {d}"
    );
    assert_eq!(smtp.refuse.load(Ordering::SeqCst), 0);
    let messages = smtp.messages.lock().await.clone();
    let (to, data) = messages
        .iter()
        .rev()
        .find(|(_, data)| data.contains("SH-"))
        .cloned()
        .expect("the notification mail arrived");
    assert_eq!(to, "nc-mail@example.com");
    assert!(data.contains("Subject: Shipment SH-<42> booked"), "{data}");
    assert!(data.contains("multipart/alternative"), "{data}");
    assert!(data.contains("Your shipment SH-<42> is booked."), "{data}");
    assert!(
        data.contains("<b>SH-&lt;42&gt;</b>"),
        "HTML is escaped: {data}"
    );
    assert!(data.contains(&format!("Message-ID: <{id}@keel>")), "{data}");
    // SMS is not configured: recorded, not dropped.
    let sms = delivery_until(&app, &me, &id, "sms", &["skipped"]).await;
    assert!(sms["detail"].as_str().unwrap_or("").contains("disabled"));
}

#[tokio::test]
async fn an_smtp_outage_longer_than_the_attempts_ends_dead_and_says_why() {
    let smtp = Smtp::start(usize::MAX).await;
    let port = smtp.port;
    let app = builder()
        .configure(move |c| {
            c.smtp.host = Some("127.0.0.1".into());
            c.smtp.port = port;
            c.smtp.tls = keel_kernel::notify::SmtpTls::None;
            c.jobs.default_max_attempts = 3;
        })
        .spawn()
        .await
        .expect("app");
    let me = app.register_org("nc-dead@example.com", "Dead Org").await;
    let n = send(
        &app,
        &me,
        "notices.shipment_booked",
        json!({ "reference": "SH-9" }),
    )
    .await;
    let id = n["id"].as_str().expect("id").to_string();
    let d = delivery_until(&app, &me, &id, "email", &["dead"]).await;
    assert_eq!(d["attempts"], 3);
    assert!(d["detail"].as_str().unwrap_or("").contains("421"), "{d}");
    // The job itself lands in the dead letter (recorded just after the handler returns).
    let job = d["job_id"].as_str().expect("job id");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = app
            .get_as(&format!("/api/v1/jobs/{job}"), &me.access_token)
            .await;
        let status = json_of(r).await["status"].clone();
        if status == "dead" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job stuck at {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the fake provider received: the Authorization header and the form fields.
type SmsRequest = (Option<String>, Vec<(String, String)>);

#[derive(Clone, Default)]
struct FakeSms {
    calls: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<SmsRequest>>>,
}

async fn fake_sms(
    State(fake): State<FakeSms>,
    headers: HeaderMap,
    body: String,
) -> (AxumStatus, axum::Json<Value>) {
    let call = fake.calls.fetch_add(1, Ordering::SeqCst);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let form: Vec<(String, String)> = url_pairs(&body);
    fake.received.lock().await.push((auth, form));
    if call == 0 {
        // The provider has a bad moment.
        return (
            AxumStatus::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "message": "busy" })),
        );
    }
    (
        AxumStatus::CREATED,
        axum::Json(json!({ "sid": "SM123", "status": "queued" })),
    )
}

fn url_pairs(body: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(body.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[tokio::test]
async fn sms_goes_to_a_twilio_compatible_provider_and_a_bad_moment_is_retried() {
    let fake = FakeSms::default();
    let router = axum::Router::new()
        .route(
            "/2010-04-01/Accounts/AC123/Messages.json",
            axum::routing::post(fake_sms),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let app = builder()
        .configure(move |c| {
            c.sms.base_url = Some(format!("http://{addr}"));
            c.sms.account_sid = Some("AC123".into());
            c.sms.auth_token = Some(keel_kernel::config::Secret::new("token-xyz"));
            c.sms.from = Some("+15550000000".into());
        })
        .spawn()
        .await
        .expect("app");
    let me = app.register_org("nc-sms@example.com", "SMS Org").await;
    let r = app
        .call(
            reqwest::Method::PUT,
            "/api/v1/notifications/preferences",
            Some(&me.access_token),
            Some(&json!({ "sms_number": "+15557654321" })),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let ready = json_of(app.get("/health/ready").await).await;
    assert_eq!(ready["checks"]["sms"]["status"], "up");

    let n = send(
        &app,
        &me,
        "notices.shipment_booked",
        json!({ "reference": "SH-7" }),
    )
    .await;
    let id = n["id"].as_str().expect("id").to_string();
    let d = delivery_until(&app, &me, &id, "sms", &["sent"]).await;
    assert_eq!(d["attempts"], 2, "one failure, then delivered: {d}");
    let received = fake.received.lock().await.clone();
    let (auth, form) = received.last().cloned().expect("a request");
    use base64::Engine as _;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("AC123:token-xyz")
    );
    assert_eq!(auth.as_deref(), Some(expected.as_str()));
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("To").as_deref(), Some("+15557654321"));
    assert_eq!(get("From").as_deref(), Some("+15550000000"));
    assert_eq!(
        get("Body").as_deref(),
        Some("Your shipment SH-7 is booked.")
    );
    // The stored number is encrypted at rest.
    let raw: Vec<u8> = match &app.state.db {
        keel_kernel::store::Db::Sqlite(p) => p
            .with_connection(|c| {
                c.query_row("SELECT sms_number FROM notification_contacts", [], |r| {
                    r.get::<_, String>(0)
                })
            })
            .await
            .expect("row")
            .into_bytes(),
        keel_kernel::store::Db::Postgres(p) => {
            sqlx::query_scalar::<_, String>("SELECT sms_number FROM notification_contacts")
                .fetch_one(p.pool())
                .await
                .expect("row")
                .into_bytes()
        }
    };
    assert!(!String::from_utf8_lossy(&raw).contains("5557654321"));
}
