//! Notifications: an in-app notification center, email and SMS, per-user preferences.
//!
//! Modules register [`NotificationType`]s (through
//! [`Module::notification_types`](crate::module::Module::notification_types)), each with
//! templates for a title, a plain-text body and an optional HTML body (minijinja syntax,
//! HTML auto-escaped), and the channels it goes to by default. Apps and the kernel send one
//! with [`send`], inside their own transaction:
//!
//! ```ignore
//! notify::send(&state, &mut tx, &scope, user_id, "trade.shipment_booked",
//!              serde_json::json!({ "reference": "SH-1042" })).await?;
//! tx.commit().await?;
//! ```
//!
//! That writes the notification (rendered), pushes it live on the user's realtime channel
//! after commit (`notification.created` on `user:<id>`), and, per the user's preferences,
//! enqueues an email and/or SMS job. Jobs retry with backoff and end `dead` after their last
//! attempt; each delivery's status (`queued`, `retrying`, `sent`, `failed`, `dead`,
//! `skipped`) is recorded and shown on the notification. A channel without a configured
//! provider is disabled (said at start-up and in `/health/ready`); deliveries to it are
//! recorded as `skipped` with the reason, never silently dropped.

pub mod delivery;
pub mod routes;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::Secret;
use crate::module::Registry;
use crate::realtime::Channel;
use crate::state::AppState;
use crate::store::{StoreError, Tx};
use crate::tenancy::TenantScope;

pub use delivery::{SmsClient, SmtpMailer};
pub use store::{Delivery, Notification};

/// Where a notification can go.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryChannel {
    InApp,
    Email,
    Sms,
}

impl DeliveryChannel {
    pub const ALL: [DeliveryChannel; 3] = [Self::InApp, Self::Email, Self::Sms];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InApp => "in_app",
            Self::Email => "email",
            Self::Sms => "sms",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A kind of notification a module sends.
#[derive(Debug, Clone)]
pub struct NotificationType {
    /// Unique, `<module>.<name>`, e.g. `trade.shipment_booked`.
    pub name: &'static str,
    /// Shown to users choosing their preferences.
    pub description: &'static str,
    /// Template of the title (also the email subject).
    pub title: &'static str,
    /// Template of the plain-text body (in-app, email text part, SMS).
    pub text: &'static str,
    /// Template of the email's HTML part (auto-escaped); none sends text only.
    pub html: Option<&'static str>,
    /// Channels it goes to unless the user chose otherwise.
    pub default_channels: &'static [DeliveryChannel],
}

impl NotificationType {
    pub fn new(name: &'static str, title: &'static str, text: &'static str) -> Self {
        Self {
            name,
            description: "",
            title,
            text,
            html: None,
            default_channels: &[DeliveryChannel::InApp],
        }
    }

    pub fn description(mut self, description: &'static str) -> Self {
        self.description = description;
        self
    }

    pub fn html(mut self, html: &'static str) -> Self {
        self.html = Some(html);
        self
    }

    pub fn channels(mut self, channels: &'static [DeliveryChannel]) -> Self {
        self.default_channels = channels;
        self
    }

    /// Template syntax errors, one message each (checked at start-up).
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let env = templates_env();
        for (part, source) in [
            ("title", Some(self.title)),
            ("text", Some(self.text)),
            ("html", self.html),
        ] {
            if let Some(source) = source
                && let Err(e) = env.template_from_str(source)
            {
                problems.push(format!(
                    "notification type `{}`: the {part} template does not compile: {e}",
                    self.name
                ));
            }
        }
        problems
    }
}

fn templates_env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            minijinja::AutoEscape::Html
        } else {
            minijinja::AutoEscape::None
        }
    });
    env
}

/// A notification rendered for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub title: String,
    pub text: String,
    pub html: Option<String>,
}

/// Errors from [`send`].
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notification type `{0}` is not registered by any enabled module")]
    UnknownType(String),
    #[error("the recipient is not a user of this organization")]
    UnknownRecipient,
    #[error("the `{part}` template of `{kind}` failed: {message}")]
    Template {
        kind: String,
        part: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<NotifyError> for crate::http::ApiError {
    fn from(e: NotifyError) -> Self {
        match e {
            NotifyError::Store(e) => e.into(),
            NotifyError::UnknownRecipient => crate::http::ApiError::not_found(),
            other => crate::http::ApiError::internal(anyhow::anyhow!("{other}")),
        }
    }
}

/// `[smtp]`: email delivery. Without `host`, email is disabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// `KEEL_SMTP__HOST`: the SMTP server; unset disables email.
    pub host: Option<String>,
    pub port: u16,
    /// `starttls` (upgrade, required), `tls` (implicit TLS, port 465) or `none` (plain: a
    /// local relay only; refused in production unless the host is a loopback address).
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// The sender, e.g. `Keel <no-reply@example.com>`.
    pub from: String,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    #[default]
    Starttls,
    Tls,
    None,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: None,
            port: 587,
            tls: SmtpTls::Starttls,
            username: None,
            password: None,
            from: "Keel <no-reply@localhost>".into(),
            timeout_secs: 15,
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl SmtpConfig {
    pub fn value_problems(&self, production: bool) -> Vec<String> {
        let mut problems = Vec::new();
        if self.from.parse::<lettre::message::Mailbox>().is_err() {
            problems.push(format!(
                "smtp.from: `{}` is not an address like `Keel <no-reply@example.com>`",
                self.from
            ));
        }
        if self.port == 0 {
            problems.push("smtp.port: must be greater than 0".into());
        }
        if self.timeout_secs == 0 {
            problems.push("smtp.timeout_secs: must be greater than 0".into());
        }
        if self.username.is_some() != self.password.is_some() {
            problems.push("smtp.username and smtp.password: set both, or neither".into());
        }
        if let Some(host) = &self.host {
            if host.trim().is_empty() {
                problems
                    .push("smtp.host: must not be empty (leave it unset to disable email)".into());
            }
            if production && self.tls == SmtpTls::None && !is_loopback(host) {
                problems.push(
                    "smtp.tls: `none` is refused in production except for a loopback relay".into(),
                );
            }
            if self.tls == SmtpTls::None && self.password.is_some() && !is_loopback(host) {
                problems.push(
                    "smtp.tls: `none` would send the password in the clear; use starttls or tls"
                        .into(),
                );
            }
        }
        problems
    }
}

/// `[sms]`: a Twilio-compatible HTTP API. Without `base_url`, SMS is disabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsConfig {
    /// `KEEL_SMS__BASE_URL`, e.g. `https://api.twilio.com`; unset disables SMS.
    pub base_url: Option<String>,
    pub account_sid: Option<String>,
    pub auth_token: Option<Secret>,
    /// The sending number (E.164) or messaging service id.
    pub from: Option<String>,
    pub timeout_secs: u64,
}

impl Default for SmsConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            account_sid: None,
            auth_token: None,
            from: None,
            timeout_secs: 15,
        }
    }
}

impl SmsConfig {
    pub fn value_problems(&self, production: bool) -> Vec<String> {
        let mut problems = Vec::new();
        if self.timeout_secs == 0 {
            problems.push("sms.timeout_secs: must be greater than 0".into());
        }
        if let Some(url) = &self.base_url {
            let https = url.starts_with("https://");
            if !(https || url.starts_with("http://")) {
                problems.push("sms.base_url: must be an http(s) URL".into());
            } else if production && !https {
                problems.push("sms.base_url: must be https in production".into());
            }
            for (name, missing) in [
                ("sms.account_sid", self.account_sid.is_none()),
                ("sms.auth_token", self.auth_token.is_none()),
                ("sms.from", self.from.is_none()),
            ] {
                if missing {
                    problems.push(format!("{name}: required when sms.base_url is set"));
                }
            }
        }
        problems
    }
}

/// Notification types and transports, on `AppState::notify`.
pub struct Notifier {
    types: HashMap<&'static str, NotificationType>,
    env: minijinja::Environment<'static>,
    pub(crate) email: Option<Arc<SmtpMailer>>,
    pub(crate) sms: Option<Arc<SmsClient>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("types", &self.types.len())
            .field("email", &self.email.is_some())
            .field("sms", &self.sms.is_some())
            .finish()
    }
}

impl Notifier {
    pub fn new(config: &crate::config::Config, registry: &Registry) -> anyhow::Result<Self> {
        let mut env = templates_env();
        let mut types = HashMap::new();
        for t in registry.notification_types() {
            for (part, source) in [
                ("title", Some(t.title)),
                ("text", Some(t.text)),
                ("html", t.html),
            ] {
                if let Some(source) = source {
                    env.add_template_owned(format!("{}.{part}", t.name), source.to_string())?;
                }
            }
            types.insert(t.name, t);
        }
        let email = match &config.smtp.host {
            Some(_) => Some(Arc::new(SmtpMailer::new(&config.smtp)?)),
            None => {
                tracing::warn!(
                    "email notifications are disabled: no [smtp] host is configured (KEEL_SMTP__HOST)"
                );
                None
            }
        };
        let sms = match &config.sms.base_url {
            Some(_) => Some(Arc::new(SmsClient::new(&config.sms)?)),
            None => {
                tracing::warn!(
                    "SMS notifications are disabled: no [sms] base_url is configured (KEEL_SMS__BASE_URL)"
                );
                None
            }
        };
        Ok(Self {
            types,
            env,
            email,
            sms,
        })
    }

    pub fn notification_type(&self, name: &str) -> Option<&NotificationType> {
        self.types.get(name)
    }

    /// The registered types, by name.
    pub fn types(&self) -> Vec<&NotificationType> {
        let mut v: Vec<&NotificationType> = self.types.values().collect();
        v.sort_by_key(|t| t.name);
        v
    }

    /// Whether a channel has a provider (in-app always does).
    pub fn is_enabled(&self, channel: DeliveryChannel) -> bool {
        match channel {
            DeliveryChannel::InApp => true,
            DeliveryChannel::Email => self.email.is_some(),
            DeliveryChannel::Sms => self.sms.is_some(),
        }
    }

    /// Renders a type's templates with `data`.
    pub fn render(&self, kind: &str, data: &serde_json::Value) -> Result<Rendered, NotifyError> {
        let t = self
            .types
            .get(kind)
            .ok_or_else(|| NotifyError::UnknownType(kind.to_string()))?;
        let part = |part: &'static str| -> Result<String, NotifyError> {
            let fail = |e: minijinja::Error| NotifyError::Template {
                kind: kind.to_string(),
                part,
                message: e.to_string(),
            };
            self.env
                .get_template(&format!("{kind}.{part}"))
                .map_err(fail)?
                .render(data)
                .map_err(fail)
        };
        Ok(Rendered {
            title: part("title")?,
            text: part("text")?,
            html: t.html.map(|_| part("html")).transpose()?,
        })
    }
}

/// Sends a notification of type `kind` to `user_id` in the scope's organization, inside
/// `tx`: the in-app row, the live push on `user:<id>` and the email/SMS jobs all happen if
/// and only if `tx` commits.
pub async fn send(
    state: &AppState,
    tx: &mut Tx,
    scope: &TenantScope,
    user_id: Uuid,
    kind: &str,
    data: serde_json::Value,
) -> Result<Notification, NotifyError> {
    let notifier = &state.notify;
    let t = notifier
        .notification_type(kind)
        .ok_or_else(|| NotifyError::UnknownType(kind.to_string()))?;
    if !store::user_in_org(tx, scope, user_id).await? {
        return Err(NotifyError::UnknownRecipient);
    }
    let rendered = notifier.render(kind, &data)?;
    let prefs = store::preferences_of(tx, scope, user_id, Some(kind)).await?;
    let wants = |c: DeliveryChannel| {
        prefs
            .get(&(kind.to_string(), c))
            .copied()
            .unwrap_or_else(|| t.default_channels.contains(&c))
    };
    let in_app = wants(DeliveryChannel::InApp);
    let id = Uuid::now_v7();
    store::insert_notification(tx, scope, id, user_id, kind, &rendered, &data, in_app).await?;
    for channel in [DeliveryChannel::Email, DeliveryChannel::Sms] {
        if !wants(channel) {
            continue;
        }
        let skipped = if !notifier.is_enabled(channel) {
            Some("skipped: channel disabled (no provider configured)")
        } else if channel == DeliveryChannel::Sms
            && store::sms_number(tx, scope, user_id, &state.auth.keyring)
                .await?
                .is_none()
        {
            Some("skipped: the user has no SMS number")
        } else {
            None
        };
        match skipped {
            Some(reason) => {
                tracing::info!(notification = %id, channel = channel.as_str(), reason, "notification delivery skipped");
                store::insert_delivery(tx, scope, id, channel, "skipped", Some(reason), None)
                    .await?;
            }
            None => {
                let job = delivery::DeliverNotification {
                    notification_id: id,
                    channel,
                };
                let job_id = match channel {
                    DeliveryChannel::Sms => {
                        state
                            .jobs
                            .enqueue(tx, Some(scope), &delivery::SendSms(job))
                            .await?
                    }
                    _ => {
                        state
                            .jobs
                            .enqueue(tx, Some(scope), &delivery::SendEmail(job))
                            .await?
                    }
                };
                store::insert_delivery(tx, scope, id, channel, "queued", None, Some(job_id))
                    .await?;
            }
        }
    }
    let notification = store::get(tx, scope, user_id, id).await?;
    if in_app {
        state
            .realtime
            .publish(
                tx,
                scope,
                &Channel::user(user_id),
                "notification.created",
                serde_json::to_value(&notification).unwrap_or_default(),
            )
            .await?;
    }
    Ok(notification)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_templates_escape_and_text_templates_do_not() {
        let t = NotificationType::new("t.x", "Hi {{ name }}", "Dear {{ name }} & co")
            .html("<p>{{ name }}</p>");
        assert!(t.problems().is_empty());
        let mut env = templates_env();
        env.add_template("a.html", "<p>{{ name }}</p>")
            .expect("html");
        env.add_template("a.text", "{{ name }} & co").expect("text");
        let data = serde_json::json!({ "name": "<b>Ann</b>" });
        let html = env.get_template("a.html").and_then(|t| t.render(&data));
        assert_eq!(
            html.ok().as_deref(),
            Some("<p>&lt;b&gt;Ann&lt;&#x2f;b&gt;</p>")
        );
        let text = env.get_template("a.text").and_then(|t| t.render(&data));
        assert_eq!(text.ok().as_deref(), Some("<b>Ann</b> & co"));
        let broken = NotificationType::new("t.y", "{{ oops", "x");
        assert_eq!(broken.problems().len(), 1);
    }

    #[test]
    fn plain_smtp_with_a_password_to_a_remote_host_is_refused() {
        let c = SmtpConfig {
            host: Some("smtp.example.com".into()),
            tls: SmtpTls::None,
            username: Some("u".into()),
            password: Some(Secret::new("p")),
            ..SmtpConfig::default()
        };
        assert_eq!(c.value_problems(false).len(), 1);
        assert!(SmtpConfig::default().value_problems(true).is_empty());
        assert!(SmsConfig::default().value_problems(true).is_empty());
    }
}
