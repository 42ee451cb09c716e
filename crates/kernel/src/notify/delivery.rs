//! Email and SMS delivery: the transports and the jobs that use them.
//!
//! Each delivery is one job (`notify.send_email` on the `email` queue, `notify.send_sms` on
//! `sms`), so it is retried with the queue's backoff and ends in the dead letter after its
//! last attempt. The job records every outcome on the delivery row. A delivery already
//! `sent` is not sent again when its job runs twice (the job runtime runs a job again when
//! its worker died); the email's `Message-ID` is the notification's, so a receiving server
//! can recognise a repeat that slipped through between sending and recording.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lettre::message::{Mailbox, MultiPart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{DeliveryChannel, SmsConfig, SmtpConfig, SmtpTls, store};
use crate::config::Secret;
use crate::jobs::{JobContext, JobDefinition, JobError, JobPayload};

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth another attempt (unreachable, 4xx SMTP reply, HTTP 429/5xx).
    #[error("{0}")]
    Transient(String),
    /// No attempt can succeed (bad address, refused credentials, 5xx SMTP reply).
    #[error("{0}")]
    Permanent(String),
}

/// Sends email over SMTP; TLS certificates are always verified.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("from", &self.from.to_string())
            .finish()
    }
}

impl SmtpMailer {
    pub fn new(config: &SmtpConfig) -> anyhow::Result<Self> {
        let host = config.host.as_deref().context("smtp.host is not set")?;
        let builder = match config.tls {
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)?,
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        };
        let mut builder = builder
            .port(config.port)
            .timeout(Some(Duration::from_secs(config.timeout_secs)));
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        Ok(Self {
            transport: builder.build(),
            from: config
                .from
                .parse()
                .context("smtp.from is not a valid address")?,
        })
    }

    /// Sends one message (multipart text + HTML when `html` is given).
    pub async fn send_message(
        &self,
        to: &str,
        subject: &str,
        text: &str,
        html: Option<&str>,
        message_id: Option<String>,
    ) -> Result<(), SendError> {
        let to: Mailbox = to
            .parse()
            .map_err(|_| SendError::Permanent("the recipient address is not valid".into()))?;
        let builder = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(message_id);
        let message = match html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                text.to_string(),
                html.to_string(),
            )),
            None => builder
                .header(ContentType::TEXT_PLAIN)
                .body(text.to_string()),
        }
        .map_err(|e| SendError::Permanent(format!("the message cannot be built: {e}")))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::Permanent(format!(
                "the SMTP server refused: {e}"
            ))),
            Err(e) => Err(SendError::Transient(format!("SMTP: {e}"))),
        }
    }
}

/// The kernel's account mails (verification, reset, invitations) go over SMTP too when it is
/// configured.
#[async_trait::async_trait]
impl crate::mail::Mailer for SmtpMailer {
    async fn send(&self, mail: crate::mail::Mail) -> anyhow::Result<()> {
        self.send_message(&mail.to, &mail.subject, &mail.text, None, None)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// Sends SMS through a Twilio-compatible API (`POST {base}/2010-04-01/Accounts/{sid}/
/// Messages.json`, form `To`, `From`, `Body`, basic auth).
pub struct SmsClient {
    http: reqwest::Client,
    url: String,
    account_sid: String,
    token: Secret,
    from: String,
}

impl std::fmt::Debug for SmsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsClient").field("url", &self.url).finish()
    }
}

impl SmsClient {
    pub fn new(config: &SmsConfig) -> anyhow::Result<Self> {
        let base = config
            .base_url
            .as_deref()
            .context("sms.base_url is not set")?;
        let account_sid = config
            .account_sid
            .clone()
            .context("sms.account_sid is not set")?;
        crate::server::install_crypto_provider();
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(config.timeout_secs))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .context("cannot build the SMS HTTP client")?,
            url: format!(
                "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
                base.trim_end_matches('/')
            ),
            account_sid,
            token: config
                .auth_token
                .clone()
                .context("sms.auth_token is not set")?,
            from: config.from.clone().context("sms.from is not set")?,
        })
    }

    /// Sends one SMS.
    pub async fn send(&self, to: &str, body: &str) -> Result<(), SendError> {
        let response = self
            .http
            .post(&self.url)
            .basic_auth(&self.account_sid, Some(self.token.expose()))
            .form(&[("To", to), ("From", self.from.as_str()), ("Body", body)])
            .send()
            .await
            .map_err(|e| {
                SendError::Transient(format!("SMS provider unreachable: {}", e.without_url()))
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.as_u16() == 429 || status.is_server_error() {
            Err(SendError::Transient(format!(
                "SMS provider answered {status}"
            )))
        } else {
            Err(SendError::Permanent(format!(
                "SMS provider refused: {status}"
            )))
        }
    }
}

/// Which delivery a job makes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverNotification {
    pub notification_id: Uuid,
    pub channel: DeliveryChannel,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SendEmail(pub DeliverNotification);

impl JobPayload for SendEmail {
    const JOB_TYPE: &'static str = "notify.send_email";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SendSms(pub DeliverNotification);

impl JobPayload for SendSms {
    const JOB_TYPE: &'static str = "notify.send_sms";
}

/// The delivery job types (registered by the kernel module).
pub fn jobs() -> Vec<JobDefinition> {
    vec![
        JobDefinition::new(|ctx: JobContext, job: SendEmail| deliver(ctx, job.0))
            .queue("email")
            .time_limit(Duration::from_secs(120)),
        JobDefinition::new(|ctx: JobContext, job: SendSms| deliver(ctx, job.0))
            .queue("sms")
            .time_limit(Duration::from_secs(120)),
    ]
}

async fn deliver(ctx: JobContext, job: DeliverNotification) -> Result<serde_json::Value, JobError> {
    let scope = ctx
        .scope
        .clone()
        .ok_or_else(|| JobError::permanent("a notification job needs an organization"))?;
    let state = &ctx.state;
    let id = job.notification_id;
    let Some(current) = store::delivery(&state.db, &scope, id, job.channel).await? else {
        return Err(JobError::permanent("no such notification delivery"));
    };
    if current.status == "sent" {
        return Ok(serde_json::json!({ "status": "sent" }));
    }
    let n = store::row(&state.db, &scope, id).await?;
    let message_id = format!("<{id}@keel>");
    let result = match job.channel {
        DeliveryChannel::Email => match &state.notify.email {
            Some(mailer) => {
                let to = store::user_email(&state.db, &scope, n.user_id).await?;
                mailer
                    .send_message(&to, &n.title, &n.body, n.html.as_deref(), Some(message_id))
                    .await
            }
            None => Err(SendError::Permanent(
                "email is disabled (no SMTP host)".into(),
            )),
        },
        DeliveryChannel::Sms => match &state.notify.sms {
            Some(client) => {
                let mut tx = state.db.begin().await?;
                let number =
                    store::sms_number(&mut tx, &scope, n.user_id, &state.auth.keyring).await?;
                tx.rollback().await?;
                match number {
                    Some(number) => client.send(&number, &n.body).await,
                    None => Err(SendError::Permanent("the user has no SMS number".into())),
                }
            }
            None => Err(SendError::Permanent("SMS is disabled (no provider)".into())),
        },
        DeliveryChannel::InApp => Err(SendError::Permanent("in-app needs no delivery".into())),
    };
    let attempt = ctx.attempt;
    match result {
        Ok(()) => {
            store::set_delivery(&state.db, &scope, id, job.channel, "sent", attempt, None).await?;
            Ok(serde_json::json!({ "status": "sent" }))
        }
        Err(SendError::Permanent(why)) => {
            tracing::warn!(notification = %id, channel = job.channel.as_str(), error = %why, "notification delivery failed for good");
            store::set_delivery(
                &state.db,
                &scope,
                id,
                job.channel,
                "failed",
                attempt,
                Some(&why),
            )
            .await?;
            Err(JobError::permanent(why))
        }
        Err(SendError::Transient(why)) => {
            let status = if attempt >= ctx.max_attempts {
                "dead"
            } else {
                "retrying"
            };
            tracing::warn!(notification = %id, channel = job.channel.as_str(), attempt, error = %why, "notification delivery failed; {status}");
            store::set_delivery(
                &state.db,
                &scope,
                id,
                job.channel,
                status,
                attempt,
                Some(&why),
            )
            .await?;
            Err(JobError::retry(why))
        }
    }
}

/// Shared handles so the kernel mailer can be the notification mailer.
pub(crate) fn as_mailer(m: &Arc<SmtpMailer>) -> Arc<dyn crate::mail::Mailer> {
    m.clone()
}
