//! The realtime hub over real sockets: a notification created on one node reaches WebSocket
//! and SSE clients on another (through Redis when `TEST_REDIS_URL` is set, PostgreSQL NOTIFY
//! when only `TEST_DATABASE_URL` is, the periodic catch-up on a shared SQLite file);
//! reconnecting with the last id misses nothing on every transport; a client that stops
//! reading is cut off while another receives everything; foreign and unknown channels are
//! refused like missing ones; tickets open a connection once; audit events reach the
//! channels a module maps them to; a silent WebSocket is closed.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use keel_kernel::module::Module;
use keel_kernel::notify::{DeliveryChannel, NotificationType};
use keel_kernel::realtime::Channel;
use keel_kernel::tenancy::TenantScope;
use keel_testkit::{Session, TestApp, TestDb};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};
use uuid::Uuid;

/// Long enough for a loaded machine; nothing here is a timing assertion.
const WAIT: Duration = Duration::from_secs(20);

struct Notices;

impl Module for Notices {
    fn name(&self) -> &'static str {
        "notices"
    }

    fn notification_types(&self) -> Vec<NotificationType> {
        vec![
            NotificationType::new("notices.ping", "Ping {{ n }}", "Ping number {{ n }}")
                .description("A test notice")
                .channels(&[DeliveryChannel::InApp]),
        ]
    }
}

fn builder() -> keel_testkit::TestAppBuilder {
    TestApp::builder().module(Arc::new(Notices))
}

/// Two nodes on one database. Cross-node delivery must come from pub/sub where there is
/// one (the catch-up is pushed out of reach); on SQLite the catch-up is the way.
async fn two_nodes(
    db: Option<Arc<TestDb>>,
    edit: fn(&mut keel_kernel::Config),
) -> (TestApp, TestApp) {
    let db = match db {
        Some(db) => db,
        None => Arc::new(TestDb::new().await.expect("db")),
    };
    let configure = move |c: &mut keel_kernel::Config| {
        c.realtime.catch_up_interval_ms = if c.redis_url.is_some() || c.database_url.is_some() {
            3_600_000
        } else {
            100
        };
        edit(c);
    };
    let a = builder()
        .database(db.clone())
        .configure(configure)
        .spawn()
        .await
        .expect("node a");
    let b = builder()
        .database(db)
        .configure(configure)
        .spawn()
        .await
        .expect("node b");
    (a, b)
}

fn ws_url(app: &TestApp, query: &str) -> String {
    format!("ws://{}/api/v1/realtime/ws?{query}", app.addr)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(
    app: &TestApp,
    query: &str,
    token: Option<&str>,
) -> Result<Ws, tungstenite::Error> {
    let mut request = ws_url(app, query).into_client_request()?;
    if let Some(t) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

/// The HTTP status a refused WebSocket handshake answered.
async fn ws_refusal(app: &TestApp, query: &str, token: Option<&str>) -> u16 {
    match ws_connect(app, query, token).await {
        Ok(_) => panic!("the handshake for {query} was accepted"),
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// The next message on a WebSocket (pings are answered by reading).
async fn ws_next(ws: &mut Ws) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a message within the deadline")
            .expect("the socket stays open")
            .expect("a frame");
        match frame {
            tungstenite::Message::Text(t) => return serde_json::from_str(&t).expect("json"),
            tungstenite::Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// A Server-Sent Events reader.
struct Sse {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

async fn sse_connect(app: &TestApp, query: &str, token: &str, last_id: Option<&str>) -> Sse {
    let mut req = app
        .client
        .get(app.url(&format!("/api/v1/realtime/sse?{query}")))
        .bearer_auth(token)
        .timeout(Duration::from_secs(3600));
    if let Some(id) = last_id {
        req = req.header("Last-Event-ID", id);
    }
    let response = req.send().await.expect("sse");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    );
    Sse {
        body: Box::pin(response.bytes_stream()),
        buf: String::new(),
    }
}

impl Sse {
    /// The next event with data: (`id`, message).
    async fn next(&mut self) -> (String, Value) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut id = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    return (id, serde_json::from_str(&data).expect("json data"));
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .expect("an event within the deadline")
                .expect("the stream stays open")
                .expect("a chunk");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

async fn notify(app: &TestApp, who: &Session, n: u32) -> Value {
    let scope = TenantScope::for_tests(who.org_id);
    let mut tx = app.state.db.begin().await.expect("tx");
    let sent = keel_kernel::notify::send(
        &app.state,
        &mut tx,
        &scope,
        who.user_id,
        "notices.ping",
        json!({ "n": n }),
    )
    .await
    .expect("send");
    tx.commit().await.expect("commit");
    serde_json::to_value(sent).expect("json")
}

async fn publish(app: &TestApp, org: Uuid, channel: &Channel, data: Value) -> String {
    let scope = TenantScope::for_tests(org);
    app.state
        .realtime
        .publish_now(&app.state.db, &scope, channel, "test.message", data)
        .await
        .expect("publish")
        .id
}

#[tokio::test]
async fn a_notification_created_on_one_node_reaches_websocket_and_sse_clients_on_another() {
    let (a, b) = two_nodes(None, |_| {}).await;
    let expected = if keel_testkit::redis_url().is_some() {
        "redis"
    } else if keel_testkit::postgres_url().is_some() {
        "postgres"
    } else {
        "in_process"
    };
    assert_eq!(b.state.realtime.fanout_name(), expected);
    let user = a.register_org("rt-owner@example.com", "Realtime Org").await;
    let channels = format!("channels=user:{}", user.user_id);
    let mut ws = ws_connect(&b, &channels, Some(&user.access_token))
        .await
        .expect("ws");
    let mut sse = sse_connect(&b, &channels, &user.access_token, None).await;

    let sent = notify(&a, &user, 1).await;

    let m = ws_next(&mut ws).await;
    assert_eq!(m["channel"], json!(format!("user:{}", user.user_id)));
    assert_eq!(m["type"], "notification.created");
    assert_eq!(m["data"]["id"], sent["id"]);
    assert_eq!(m["data"]["title"], "Ping 1");
    let (id, e) = sse.next().await;
    assert_eq!(e, m, "both transports carry the same message");
    assert_eq!(id, m["id"].as_str().expect("id"));
}

#[tokio::test]
async fn on_postgresql_without_redis_notify_carries_messages_between_nodes() {
    if keel_testkit::postgres_url().is_none() {
        return;
    }
    let (a, b) = two_nodes(None, |c| c.redis_url = None).await;
    assert_eq!(b.state.realtime.fanout_name(), "postgres");
    let user = a.register_org("rt-pg@example.com", "PG Org").await;
    let channel = Channel::org(user.org_id);
    let mut ws = ws_connect(&b, &format!("channels={channel}"), Some(&user.access_token))
        .await
        .expect("ws");
    publish(&a, user.org_id, &channel, json!({ "small": true })).await;
    // Larger than a NOTIFY payload may be: the signal travels bare, the node reads the table.
    let big = "x".repeat(20_000);
    publish(&a, user.org_id, &channel, json!({ "big": big })).await;
    assert_eq!(ws_next(&mut ws).await["data"]["small"], true);
    assert_eq!(ws_next(&mut ws).await["data"]["big"], json!(big));
}

#[tokio::test]
async fn reconnecting_with_the_last_id_misses_nothing_on_every_transport() {
    let (a, b) = two_nodes(None, |_| {}).await;
    let user = a.register_org("rt-resume@example.com", "Resume Org").await;
    let channel = Channel::org(user.org_id);
    let other = Channel::user(user.user_id);
    let q = format!("channels={channel}");

    let mut ws = ws_connect(&b, &q, Some(&user.access_token))
        .await
        .expect("ws");
    publish(&a, user.org_id, &channel, json!({ "n": 0 })).await;
    let first = ws_next(&mut ws).await;
    ws.close(None).await.expect("close");
    drop(ws);

    // Missed while away, with a message on another channel in between.
    let mut missed = Vec::new();
    for n in 1..=3 {
        missed.push(publish(&a, user.org_id, &channel, json!({ "n": n })).await);
        publish(&a, user.org_id, &other, json!({ "elsewhere": n })).await;
    }
    let last = first["id"].as_str().expect("id").to_string();

    let mut ws = ws_connect(&b, &format!("{q}&after={last}"), Some(&user.access_token))
        .await
        .expect("ws again");
    let mut sse = sse_connect(&b, &q, &user.access_token, Some(&last)).await;
    for (i, id) in missed.iter().enumerate() {
        let m = ws_next(&mut ws).await;
        assert_eq!(
            (m["id"].as_str(), &m["data"]["n"]),
            (Some(id.as_str()), &json!(i + 1))
        );
        let (sid, e) = sse.next().await;
        assert_eq!((&sid, &e), (id, &m));
    }
    // Live messages follow the missed ones on the same connection.
    let live = publish(&a, user.org_id, &channel, json!({ "n": 4 })).await;
    assert_eq!(ws_next(&mut ws).await["id"], json!(live));
    assert_eq!(sse.next().await.0, live);

    // Long-poll: everything after the id at once, then waiting for the next.
    let poll = |after: String| {
        poll_once(
            b.client.clone(),
            b.url(&format!(
                "/api/v1/realtime/poll?{q}&after={after}&timeout=15"
            )),
            user.access_token.clone(),
        )
    };
    let page = poll(last.clone()).await;
    let ids: Vec<&str> = page["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    let mut expected: Vec<&str> = missed.iter().map(String::as_str).collect();
    expected.push(&live);
    assert_eq!(ids, expected);
    let cursor = page["last_id"].as_str().expect("last_id").to_string();
    let waiting = tokio::spawn(poll(cursor.clone()));
    // The poll may or may not be waiting yet: either way it returns exactly the next message.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let next = publish(&a, user.org_id, &channel, json!({ "n": 5 })).await;
    let page = waiting.await.expect("poll");
    assert_eq!(page["data"][0]["id"], json!(next));
    assert_eq!(page["last_id"], json!(next));
}

async fn poll_once(client: reqwest::Client, url: String, token: String) -> Value {
    let r = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("poll");
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.expect("json")
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_while_another_gets_everything() {
    let app = builder()
        .configure(|c| {
            // Room for two bursts of 100 (a transaction of 100 messages each) but not for a
            // backlog. The send timeout is generous: on a loaded machine the reading client
            // may stall for a moment, and the unread one is cut off by its full buffer.
            c.realtime.buffer = 200;
            c.realtime.send_timeout_ms = 5_000;
        })
        .spawn()
        .await
        .expect("app");
    let user = app.register_org("rt-slow@example.com", "Slow Org").await;
    let channel = Channel::org(user.org_id);
    let q = format!("channels={channel}");
    let mut slow = ws_connect(&app, &q, Some(&user.access_token))
        .await
        .expect("slow");
    let mut fast = ws_connect(&app, &q, Some(&user.access_token))
        .await
        .expect("fast");

    // Far more than socket buffers hold, so the unread connection backs up.
    let total = 1500usize;
    let payload = "p".repeat(16 * 1024);
    let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = tokio::spawn({
        let read = read.clone();
        async move {
            let mut seen = Vec::with_capacity(total);
            while seen.len() < total {
                let m = ws_next(&mut fast).await;
                seen.push(m["data"]["n"].as_u64().expect("n"));
                read.store(seen.len(), std::sync::atomic::Ordering::SeqCst);
            }
            seen
        }
    });
    for batch in 0..total / 100 {
        // A client that keeps reading is never a buffer behind: the next burst goes out
        // once it has read all but 50 of the earlier ones, however slow this machine is.
        let deadline = tokio::time::Instant::now() + WAIT;
        while read.load(std::sync::atomic::Ordering::SeqCst) + 50 < batch * 100 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the reading client stopped"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let scope = TenantScope::for_tests(user.org_id);
        let mut tx = app.state.db.begin().await.expect("tx");
        for i in 0..100 {
            let n = batch * 100 + i;
            app.state
                .realtime
                .publish(
                    &mut tx,
                    &scope,
                    &channel,
                    "bulk",
                    json!({ "n": n, "p": payload }),
                )
                .await
                .expect("publish");
        }
        tx.commit().await.expect("commit");
    }
    let seen = reader.await.expect("fast reader");
    assert_eq!(
        seen,
        (0..total as u64).collect::<Vec<_>>(),
        "the fast client got every message in order"
    );

    // The slow one now reads: what it gets ends with a close (or a reset), not all messages.
    let mut received = 0usize;
    let ended = loop {
        match tokio::time::timeout(WAIT, slow.next())
            .await
            .expect("the slow socket ends")
        {
            Some(Ok(tungstenite::Message::Text(_))) => received += 1,
            Some(Ok(tungstenite::Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    assert!(
        received < total,
        "the slow client was cut off ({received} of {total})"
    );
    assert!(matches!(ended, Some(4008) | None), "{ended:?}");
    // The connection was let go on the server.
    let deadline = tokio::time::Instant::now() + WAIT;
    while app.state.realtime.connection_count() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow connection is still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_foreign_or_unknown_channel_is_refused_like_a_missing_one() {
    let app = builder().spawn().await.expect("app");
    let me = app.register_org("rt-me@example.com", "My Org").await;
    let them = app.register_org("rt-them@example.com", "Their Org").await;
    let their_partner = app.create_partner(&them, "Their Partner").await;
    let my_partner = app.create_partner(&me, "My Partner").await;
    let t = &me.access_token;
    for channel in [
        format!("user:{}", them.user_id),
        format!("org:{}", them.org_id),
        format!("partners:{their_partner}"),
        format!("partners:{}", Uuid::now_v7()),
        "nosuch:thing".to_string(),
        format!("org:{},user:{}", me.org_id, them.user_id),
    ] {
        let q = format!("channels={channel}");
        let sse = app.get_as(&format!("/api/v1/realtime/sse?{q}"), t).await;
        assert_eq!(sse.status(), StatusCode::NOT_FOUND, "{channel}");
        let body = keel_testkit::problem(sse).await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or("")
                .contains("does not exist")
        );
        let poll = app
            .get_as(&format!("/api/v1/realtime/poll?{q}&timeout=0"), t)
            .await;
        assert_eq!(poll.status(), StatusCode::NOT_FOUND, "{channel}");
        assert_eq!(ws_refusal(&app, &q, Some(t)).await, 404, "{channel}");
    }
    // Malformed input names the field; no credentials is 401; a plain GET on /ws is 426.
    let r = app.get_as("/api/v1/realtime/poll?channels=user", t).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        keel_testkit::problem(r).await["errors"][0]["field"],
        "channels"
    );
    let r = app
        .get_as(
            &format!("/api/v1/realtime/poll?channels=org:{}&after=abc", me.org_id),
            t,
        )
        .await;
    assert_eq!(
        keel_testkit::problem(r).await["errors"][0]["field"],
        "after"
    );
    let r = app
        .get_as(
            &format!(
                "/api/v1/realtime/poll?channels=org:{}&timeout=3600",
                me.org_id
            ),
            t,
        )
        .await;
    assert_eq!(
        keel_testkit::problem(r).await["errors"][0]["field"],
        "timeout"
    );
    assert_eq!(
        ws_refusal(&app, &format!("channels=org:{}", me.org_id), None).await,
        401
    );
    let r = app
        .get_as(
            &format!("/api/v1/realtime/ws?channels=org:{}", me.org_id),
            t,
        )
        .await;
    assert_eq!(r.status(), StatusCode::UPGRADE_REQUIRED);
    // My own channels open.
    let r = app
        .get_as(
            &format!(
                "/api/v1/realtime/poll?channels=user:{},org:{},partners:{my_partner}&timeout=0",
                me.user_id, me.org_id
            ),
            t,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_ticket_opens_one_connection_without_headers() {
    let app = builder().spawn().await.expect("app");
    let me = app
        .register_org("rt-ticket@example.com", "Ticket Org")
        .await;
    let r = app
        .post_as("/api/v1/realtime/ticket", &me.access_token, &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let ticket = r.json::<Value>().await.expect("json")["ticket"]
        .as_str()
        .expect("ticket")
        .to_string();
    let q = format!("channels=user:{}&ticket={ticket}", me.user_id);
    let mut ws = ws_connect(&app, &q, None).await.expect("ticket opens");
    publish(
        &app,
        me.org_id,
        &Channel::user(me.user_id),
        json!({ "hi": 1 }),
    )
    .await;
    assert_eq!(ws_next(&mut ws).await["data"]["hi"], 1);
    assert_eq!(ws_refusal(&app, &q, None).await, 401, "a ticket works once");
    assert_eq!(
        ws_refusal(
            &app,
            &format!("channels=user:{}&ticket=nonsense", me.user_id),
            None
        )
        .await,
        401
    );
}

#[tokio::test]
async fn audit_events_reach_the_channels_a_module_maps_them_to() {
    let app = builder().spawn().await.expect("app");
    let me = app.register_org("rt-audit@example.com", "Audit Org").await;
    let partner = app.create_partner(&me, "Watched").await;
    // From the channel's start: the creation (relayed after its commit, perhaps before this
    // subscription, perhaps after) comes first either way, then the update.
    let mut sse = sse_connect(
        &app,
        &format!("channels=partners:{partner}"),
        &me.access_token,
        Some("0"),
    )
    .await;
    let r = app
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/partners/{partner}"),
            Some(&me.access_token),
            Some(&json!({ "name": "Watched Renamed", "kind": "seller" })),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (_, created) = sse.next().await;
    assert_eq!(created["type"], "partner.created");
    let (_, m) = sse.next().await;
    assert_eq!(m["type"], "partner.updated");
    assert_eq!(m["channel"], json!(format!("partners:{partner}")));
    assert_eq!(m["data"]["resource_id"], json!(partner.to_string()));
}

#[tokio::test]
async fn a_silent_websocket_is_closed_after_the_idle_timeout() {
    let app = builder()
        .configure(|c| {
            c.realtime.heartbeat_secs = 1;
            c.realtime.idle_timeout_secs = 2;
        })
        .spawn()
        .await
        .expect("app");
    let me = app.register_org("rt-idle@example.com", "Idle Org").await;
    let mut ws = ws_connect(
        &app,
        &format!("channels=user:{}", me.user_id),
        Some(&me.access_token),
    )
    .await
    .expect("ws");
    // Not reading means not answering pings: after the idle timeout the server closes.
    let deadline = tokio::time::Instant::now() + WAIT;
    while app.state.realtime.connection_count() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut code = None;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(WAIT, ws.next()).await {
        if let tungstenite::Message::Close(f) = frame {
            code = f.map(|f| u16::from(f.code));
            break;
        }
    }
    // A reset may overtake the close frame (the client still owes pongs); when the frame
    // arrives, it says why.
    assert!(matches!(code, Some(4000) | None), "{code:?}");
    let _ = ws.send(tungstenite::Message::Close(None)).await;
}

#[tokio::test]
async fn signing_out_ends_open_streams_and_the_tickets_issued_before() {
    let app = builder()
        .configure(|c| {
            c.realtime.heartbeat_secs = 1;
            c.realtime.idle_timeout_secs = 60;
        })
        .spawn()
        .await
        .expect("app");
    let me = app.register_org("rt-out@example.com", "Out Org").await;
    let q = format!("channels=user:{}", me.user_id);
    let mut ws = ws_connect(&app, &q, Some(&me.access_token))
        .await
        .expect("ws");
    let _sse = sse_connect(&app, &q, &me.access_token, None).await;
    let r = app
        .post_as("/api/v1/realtime/ticket", &me.access_token, &json!({}))
        .await;
    let ticket = r.json::<Value>().await.expect("json")["ticket"]
        .as_str()
        .expect("ticket")
        .to_string();
    assert_eq!(app.state.realtime.connection_count(), 2);
    let r = app
        .post_as("/api/v1/auth/logout", &me.access_token, &json!({}))
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    // Both streams end at their next heartbeat; the WebSocket says why.
    let mut code = None;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(WAIT, ws.next()).await {
        if let tungstenite::Message::Close(f) = frame {
            code = f.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(code, Some(4001));
    let deadline = tokio::time::Instant::now() + WAIT;
    while app.state.realtime.connection_count() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a stream outlived the session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ws_refusal(&app, &format!("{q}&ticket={ticket}"), None).await,
        401
    );
}

#[tokio::test]
async fn a_cookie_signed_websocket_from_another_site_is_refused() {
    let app = builder().spawn().await.expect("app");
    let me = app
        .register_org("rt-origin@example.com", "Origin Org")
        .await;
    let q = format!("channels=user:{}", me.user_id);
    let attempt = |origin: String| {
        let url = ws_url(&app, &q);
        let cookie = format!("keel_access={}", me.access_token);
        async move {
            let mut request = url.into_client_request().expect("request");
            request
                .headers_mut()
                .insert("cookie", cookie.parse().expect("cookie"));
            request
                .headers_mut()
                .insert("origin", origin.parse().expect("origin"));
            tokio_tungstenite::connect_async(request).await.map(|_| ())
        }
    };
    match attempt("https://evil.example".into()).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 403),
        other => panic!("a foreign origin was not refused: {other:?}"),
    }
    attempt(format!("http://{}", app.addr))
        .await
        .expect("our own origin opens");
}

/// A rough figure, not a check: resident memory per idle WebSocket connection, server and
/// client together (both live in this process). Run with
/// `cargo test --release -p keel --test realtime -- --ignored --nocapture memory_per_idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement"]
async fn memory_per_idle_websocket_connection() {
    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }
    let app = builder()
        .configure(|c| c.realtime.max_connections = 0)
        .spawn()
        .await
        .expect("app");
    let me = app.register_org("rt-mem@example.com", "Mem Org").await;
    let q = format!("channels=user:{},org:{}", me.user_id, me.org_id);
    // Warm up allocators and pools.
    let mut sockets = Vec::new();
    for _ in 0..100 {
        sockets.push(
            ws_connect(&app, &q, Some(&me.access_token))
                .await
                .expect("ws"),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = 4000usize;
    let before = rss_kib();
    for _ in 0..n {
        // The client side kept small too, so the figure is mostly the server's.
        let mut request = ws_url(&app, &q).into_client_request().expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", me.access_token)
                .parse()
                .expect("header"),
        );
        let config = tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), false)
            .await
            .expect("ws");
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib();
    println!(
        "{n} idle WebSocket connections: {} KiB resident, {:.1} KiB per connection (server + client)",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / n as f64
    );
    assert_eq!(app.state.realtime.connection_count(), n + 100);
}
