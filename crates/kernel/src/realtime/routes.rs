//! `/api/v1/realtime/*`: the WebSocket, Server-Sent Events and long-poll transports, and
//! tickets for browsers that cannot send an `Authorization` header on a WebSocket.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::hub::{PAGE, Subscription};
use super::{Channel, ConnectionGuard, Listener, Message, store};
use crate::auth::{Credential, SignedIn};
use crate::http::{ApiError, ApiResult, Json, Query};
use crate::module::ModuleRouter;
use crate::state::AppState;

pub fn router() -> ModuleRouter {
    ModuleRouter::new()
        .routes(utoipa_axum::routes!(realtime_ws))
        .routes(utoipa_axum::routes!(realtime_sse))
        .routes(utoipa_axum::routes!(realtime_poll))
        .routes(utoipa_axum::routes!(create_ticket))
}

impl axum::extract::FromRequestParts<AppState> for Listener {
    type Rejection = ApiError;

    /// A `ticket` query parameter (used up on the spot), else the usual bearer token or
    /// session cookie.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ticket = parts.uri.query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "ticket")
                .map(|(_, v)| v.into_owned())
        });
        if let Some(ticket) = ticket {
            return redeem(state, &ticket).await;
        }
        let by_header = parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION);
        let SignedIn(p) = SignedIn::from_request_parts(parts, state).await?;
        if !by_header {
            same_origin(parts, state)?;
        }
        Ok(Listener {
            org_id: p.org_id,
            user_id: p.user_id,
            partner_id: p.partner_id,
            permissions: p.permissions().into_iter().map(String::from).collect(),
            credential: Some(p.credential.clone()),
        })
    }
}

/// A connection authenticated by the session cookie must come from one of our own origins:
/// browsers send cookies on cross-site WebSocket handshakes, and CORS does not stop a page
/// elsewhere from reading the socket (cross-site WebSocket hijacking).
fn same_origin(parts: &Parts, state: &AppState) -> Result<(), ApiError> {
    let Some(origin) = parts
        .headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        // Not a browser (browsers always send Origin on WebSocket and cross-origin requests).
        return Ok(());
    };
    let host = parts
        .headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let own = origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host));
    let listed = state
        .config
        .cors_origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(origin));
    if own || listed {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "a cookie-authenticated realtime connection from another origin is refused; use a ticket",
        ))
    }
}

async fn redeem(state: &AppState, ticket: &str) -> Result<Listener, ApiError> {
    let invalid = || ApiError::unauthorized("the ticket is not valid, was used already or expired");
    let org = ticket
        .split_once('.')
        .and_then(|(org, _)| Uuid::try_parse(org).ok())
        .ok_or_else(invalid)?;
    let row = store::take_ticket(&state.db, org, &crate::crypto::token_hash(ticket))
        .await?
        .ok_or_else(invalid)?;
    let permissions = serde_json::from_str(&row.permissions).map_err(|_| invalid())?;
    let credential = match (
        row.session_id,
        row.token_id,
        row.token_expires_at,
        row.api_key_id,
    ) {
        (Some(session_id), Some(jti), Some(exp), _) => Credential::Session {
            session_id,
            jti,
            exp,
        },
        (_, _, _, Some(id)) => Credential::ApiKey { id },
        _ => return Err(invalid()),
    };
    let who = Listener {
        org_id: row.org_id,
        user_id: row.user_id,
        partner_id: row.partner_id,
        permissions,
        credential: Some(credential),
    };
    // Signed out (or the token expired) since the ticket was issued.
    if !who.still_valid(state) {
        return Err(invalid());
    }
    Ok(who)
}

/// Which channels, and where to resume.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Channels, comma separated: `user:<id>`, `org:<id>`, or a module's resource channel.
    pub channels: String,
    /// Resume after this message id (also `last_id`; SSE also reads `Last-Event-ID`).
    #[serde(alias = "last_id")]
    pub after: Option<String>,
    /// A ticket from `POST /api/v1/realtime/ticket`, instead of an `Authorization` header.
    pub ticket: Option<String>,
}

/// Long-poll parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PollQuery {
    /// Channels, comma separated.
    pub channels: String,
    /// Return messages after this id (also `last_id`); absent: only messages from now on.
    #[serde(alias = "last_id")]
    pub after: Option<String>,
    /// Longest wait in seconds when nothing is pending (default 25, at most the request
    /// timeout less 2 s).
    pub timeout: Option<u64>,
    pub ticket: Option<String>,
}

fn parse_after(field: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| ApiError::invalid_field(field, "must be a message id")),
    }
}

/// Checks every requested channel against the listener's scope; any that does not exist
/// or is not theirs answers 404.
async fn authorize(state: &AppState, who: &Listener, raw: &str) -> Result<Vec<String>, ApiError> {
    let rt = &state.realtime;
    let names: Vec<&str> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty() {
        return Err(ApiError::invalid_field(
            "channels",
            "name at least one channel",
        ));
    }
    if names.len() > rt.config.max_channels {
        return Err(ApiError::invalid_field(
            "channels",
            format!("at most {} channels per connection", rt.config.max_channels),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for name in names {
        Channel::parse(name).map_err(|m| ApiError::invalid_field("channels", m))?;
        let allowed = if let Some(id) = name.strip_prefix("user:") {
            Uuid::try_parse(id).ok() == Some(who.user_id)
        } else if let Some(id) = name.strip_prefix("org:") {
            // External (partner) users see only what is linked to their partner.
            who.partner_id.is_none() && Uuid::try_parse(id).ok() == Some(who.org_id)
        } else {
            match rt.definition(name) {
                None => false,
                Some((def, id)) => {
                    def.permission.is_none_or(|p| who.permissions.contains(p))
                        && (def.authorize)(state.clone(), who.scope(), id)
                            .await
                            .map_err(ApiError::internal)?
                }
            }
        };
        if !allowed {
            return Err(ApiError::not_found()
                .detail(format!("channel `{name}` does not exist"))
                .with_extra("channel", name));
        }
        if !out.iter().any(|c| c == name) {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

fn at_capacity() -> ApiError {
    ApiError::service_unavailable("this node holds as many realtime connections as it may")
        .with_header(axum::http::header::RETRY_AFTER, 5)
}

async fn open(
    state: &AppState,
    who: &Listener,
    channels: &str,
    transport: &'static str,
) -> Result<(Subscription, ConnectionGuard), ApiError> {
    let channels = authorize(state, who, channels).await?;
    let guard = state.realtime.admit(transport).ok_or_else(at_capacity)?;
    let sub = state
        .realtime
        .hub
        .subscribe(who.org_id, channels, state.realtime.config.buffer)
        .await?;
    Ok((sub, guard))
}

/// One page of what a resuming client missed (numbers in `(after, start]`).
async fn backlog(
    state: &AppState,
    sub: &Subscription,
    after: i64,
    limit: u64,
) -> Result<Vec<Message>, ApiError> {
    Ok(store::messages_after(
        &state.db,
        sub.org_id(),
        Some(&sub.channels),
        after,
        sub.start_seq,
        limit,
    )
    .await?)
}

/// Opens a WebSocket. Each text frame the server sends is one message
/// `{"id","channel","type","data","ts"}`; the server pings every `realtime.heartbeat_secs`
/// and closes a connection that stays silent for `realtime.idle_timeout_secs` (code 4000),
/// one that falls too far behind (4008: reconnect with `after=<last id>`), and all of them at
/// shutdown (1012).
#[utoipa::path(get, path = "/api/v1/realtime/ws", tag = "realtime",
    security(("bearer" = [])),
    params(StreamQuery),
    responses(
        (status = 101, description = "Switched to WebSocket"),
        (status = 401, description = "No valid credentials or ticket"),
        (status = 404, description = "A channel does not exist or is not the caller's"),
        (status = 422, description = "Malformed channels or id"),
        (status = 426, description = "Not a WebSocket handshake"),
        (status = 503, description = "The node is at its connection cap")))]
pub async fn realtime_ws(
    State(state): State<AppState>,
    who: Listener,
    Query(q): Query<StreamQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let after = parse_after("after", q.after.as_deref())?;
    let upgrade = upgrade.map_err(|_| {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "/problems/upgrade-required",
            "Upgrade required",
        )
        .detail("open this route as a WebSocket, or use /api/v1/realtime/sse or /poll")
    })?;
    let (sub, guard) = open(&state, &who, &q.channels, "ws").await?;
    // Clients only answer pings: small read buffers and frame limits keep an idle
    // connection cheap (tungstenite's defaults are 128 KiB per buffer) and bound what a
    // client can make the server hold; each message is written out at once.
    let upgrade = upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(64 * 1024)
        .max_frame_size(64 * 1024);
    Ok(upgrade
        .on_upgrade(move |socket| ws_session(state, who, sub, after, socket, guard))
        .into_response())
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = WsMessage::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(frame)).await;
}

/// Sends one message; false when the socket is gone or did not take it in time.
async fn send(socket: &mut WebSocket, message: &Message, within: Duration) -> bool {
    match tokio::time::timeout(within, socket.send(WsMessage::Text(message.text()))).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            metrics::counter!("keel_realtime_slow_consumers_total").increment(1);
            false
        }
    }
}

async fn ws_session(
    state: AppState,
    who: Listener,
    mut sub: Subscription,
    after: Option<i64>,
    mut socket: WebSocket,
    _guard: ConnectionGuard,
) {
    let config = state.realtime.config.clone();
    let within = Duration::from_millis(config.send_timeout_ms);
    let mut shutdown = state.realtime.shutdown_signal();
    if let Some(mut from) = after {
        loop {
            let page = match backlog(&state, &sub, from, PAGE).await {
                Ok(page) => page,
                Err(_) => {
                    close(&mut socket, 1011, "cannot read missed messages; reconnect").await;
                    return;
                }
            };
            let Some(last) = page.last().map(|m| m.seq) else {
                break;
            };
            for m in &page {
                if !send(&mut socket, m, within).await {
                    return;
                }
            }
            from = last;
        }
    }
    let floor = after.unwrap_or(0);
    let idle = Duration::from_secs(config.idle_timeout_secs);
    let mut heartbeat = tokio::time::interval(Duration::from_secs(config.heartbeat_secs));
    heartbeat.tick().await;
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            m = sub.rx.recv() => match m {
                Some(m) => {
                    if m.seq > floor && !send(&mut socket, &m, within).await {
                        return;
                    }
                }
                None => {
                    if sub.was_cut() {
                        close(&mut socket, 4008, "slow consumer: reconnect with after=<last id>").await;
                    } else {
                        close(&mut socket, 1011, "subscription ended; reconnect").await;
                    }
                    return;
                }
            },
            frame = socket.recv() => match frame {
                Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => last_heard = Instant::now(),
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= idle {
                    close(&mut socket, 4000, "idle timeout").await;
                    return;
                }
                if !who.still_valid(&state) {
                    close(&mut socket, 4001, "the credential expired or was revoked; reconnect with a fresh one").await;
                    return;
                }
                let ping = socket.send(WsMessage::Ping(bytes::Bytes::new()));
                if !matches!(tokio::time::timeout(within, ping).await, Ok(Ok(()))) {
                    return;
                }
            }
            _ = shutdown.changed() => {
                close(&mut socket, 1012, "server restarting; reconnect with after=<last id>").await;
                return;
            }
        }
    }
}

/// Opens a Server-Sent Events stream: each event's `id` is the message id and its `data`
/// the message `{"id","channel","type","data","ts"}`. Reconnecting with `Last-Event-ID`
/// (browsers do it by themselves) resumes where the stream stopped. A comment is sent every
/// `realtime.heartbeat_secs`.
#[utoipa::path(get, path = "/api/v1/realtime/sse", tag = "realtime",
    security(("bearer" = [])),
    params(StreamQuery, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this message id")),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream"),
        (status = 401, description = "No valid credentials or ticket"),
        (status = 404, description = "A channel does not exist or is not the caller's"),
        (status = 422, description = "Malformed channels or id"),
        (status = 503, description = "The node is at its connection cap")))]
pub async fn realtime_sse(
    State(state): State<AppState>,
    who: Listener,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> ApiResult<Response> {
    let after = match parse_after("after", q.after.as_deref())? {
        Some(a) => Some(a),
        None => parse_after(
            "Last-Event-ID",
            headers.get("last-event-id").and_then(|v| v.to_str().ok()),
        )?,
    };
    let (sub, guard) = open(&state, &who, &q.channels, "sse").await?;
    let heartbeat = Duration::from_secs(state.realtime.config.heartbeat_secs);
    let mut recheck = tokio::time::interval(heartbeat);
    recheck.reset();
    let stream = sse_stream(SseState {
        who,
        recheck,
        shutdown: state.realtime.shutdown_signal(),
        state,
        floor: after.unwrap_or(0),
        resume: after,
        sub,
        buf: VecDeque::new(),
        done: false,
        _guard: guard,
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(heartbeat))
        .into_response();
    // Reverse proxies (nginx) would otherwise buffer the stream.
    response.headers_mut().insert(
        axum::http::HeaderName::from_static("x-accel-buffering"),
        axum::http::HeaderValue::from_static("no"),
    );
    Ok(response)
}

struct SseState {
    state: AppState,
    who: Listener,
    recheck: tokio::time::Interval,
    sub: Subscription,
    resume: Option<i64>,
    floor: i64,
    buf: VecDeque<Arc<Message>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    done: bool,
    _guard: ConnectionGuard,
}

fn event(m: &Message) -> Event {
    Event::default().id(m.id.clone()).data(m.text().as_str())
}

fn sse_stream(st: SseState) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(m) = st.buf.pop_front() {
                return Some((Ok(event(&m)), st));
            }
            if st.done {
                return None;
            }
            if let Some(from) = st.resume {
                match backlog(&st.state, &st.sub, from, PAGE).await {
                    Ok(page) if !page.is_empty() => {
                        st.resume = page.last().map(|m| m.seq);
                        st.buf.extend(page.into_iter().map(Arc::new));
                    }
                    Ok(_) => st.resume = None,
                    Err(_) => return None,
                }
                continue;
            }
            tokio::select! {
                m = st.sub.rx.recv() => match m {
                    Some(m) => {
                        if m.seq > st.floor {
                            st.buf.push_back(m);
                        }
                    }
                    None => {
                        st.done = true;
                        if st.sub.was_cut() {
                            let e = Event::default()
                                .event("keel.slow_consumer")
                                .data("fell too far behind; reconnect with Last-Event-ID");
                            return Some((Ok(e), st));
                        }
                        return None;
                    }
                },
                _ = st.shutdown.changed() => return None,
                _ = st.recheck.tick() => {
                    if !st.who.still_valid(&st.state) {
                        return None;
                    }
                }
            }
        }
    })
}

/// What a long-poll returns.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PollResponse {
    /// Messages after `after`, oldest first (at most 100).
    pub data: Vec<Message>,
    /// Pass as `after` next time.
    pub last_id: String,
}

const POLL_LIMIT: usize = 100;

/// Long-poll: answers at once with the messages after `after` if there are any, else waits
/// up to `timeout` seconds for the next one. Pass the returned `last_id` as `after` next.
#[utoipa::path(get, path = "/api/v1/realtime/poll", tag = "realtime",
    security(("bearer" = [])),
    params(PollQuery),
    responses(
        (status = 200, body = PollResponse),
        (status = 401, description = "No valid credentials or ticket"),
        (status = 404, description = "A channel does not exist or is not the caller's"),
        (status = 422, description = "Malformed channels, id or timeout")))]
pub async fn realtime_poll(
    State(state): State<AppState>,
    who: Listener,
    Query(q): Query<PollQuery>,
) -> ApiResult<Json<PollResponse>> {
    let max_wait = state
        .config
        .http
        .request_timeout_secs
        .saturating_sub(2)
        .min(60);
    let wait = q.timeout.unwrap_or(25.min(max_wait));
    if wait > max_wait {
        return Err(ApiError::invalid_field(
            "timeout",
            format!("must be between 0 and {max_wait}"),
        ));
    }
    let after = parse_after("after", q.after.as_deref())?;
    let (mut sub, _guard) = open(&state, &who, &q.channels, "poll").await?;
    let mut data: Vec<Message> = match after {
        Some(a) => backlog(&state, &sub, a, POLL_LIMIT as u64).await?,
        None => Vec::new(),
    };
    if data.is_empty() {
        let floor = after.unwrap_or(0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        let mut shutdown = state.realtime.shutdown_signal();
        loop {
            tokio::select! {
                m = sub.rx.recv() => match m {
                    Some(m) if m.seq > floor => {
                        data.push((*m).clone());
                        while data.len() < POLL_LIMIT {
                            match sub.rx.try_recv() {
                                Ok(m) if m.seq > floor => data.push((*m).clone()),
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                        break;
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.changed() => break,
            }
        }
    }
    let last = data
        .last()
        .map(|m| m.seq)
        .unwrap_or_else(|| after.unwrap_or(0).max(sub.start_seq));
    Ok(Json(PollResponse {
        data,
        last_id: last.to_string(),
    }))
}

/// A single-use ticket for opening a realtime connection without headers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ticket {
    /// Pass as `?ticket=` to `/ws`, `/sse` or `/poll`; valid once.
    pub ticket: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// Issues a short-lived, single-use ticket (for browsers, which cannot set headers on a
/// WebSocket). It carries the caller's identity and permissions as they are now.
#[utoipa::path(post, path = "/api/v1/realtime/ticket", tag = "realtime",
    security(("bearer" = [])),
    responses((status = 200, body = Ticket), (status = 401, description = "Not signed in")))]
pub async fn create_ticket(
    State(state): State<AppState>,
    SignedIn(p): SignedIn,
) -> ApiResult<Json<Ticket>> {
    let ttl = state.realtime.config.ticket_ttl_secs;
    let ticket = format!("{}.{}", p.org_id.simple(), crate::crypto::random_token(32));
    let permissions: Vec<&str> = p.permissions().into_iter().collect();
    let (session_id, token_id, token_expires_at, api_key_id) = match &p.credential {
        Credential::Session {
            session_id,
            jti,
            exp,
        } => (Some(*session_id), Some(*jti), Some(*exp), None),
        Credential::ApiKey { id } => (None, None, None, Some(*id)),
    };
    let row = store::TicketRow {
        org_id: p.org_id,
        user_id: p.user_id,
        partner_id: p.partner_id,
        permissions: serde_json::to_string(&permissions).map_err(ApiError::internal)?,
        session_id,
        token_id,
        token_expires_at,
        api_key_id,
    };
    let expires =
        crate::store::now() + chrono::TimeDelta::seconds(i64::try_from(ttl).unwrap_or(600));
    store::insert_ticket(
        &state.db,
        &row,
        &crate::crypto::token_hash(&ticket),
        expires,
    )
    .await?;
    Ok(Json(Ticket {
        ticket,
        expires_in: ttl,
    }))
}
