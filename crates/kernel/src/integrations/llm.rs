//! The LLM client: providers behind one trait, a response cache per organization in the
//! database, and structured (JSON) output validated against a schema.
//!
//! ```text
//! let answer = state.integrations.llm
//!     .complete(&state.db, &scope, LlmRequest::new("Summarise: …").system("You are …"))
//!     .await?;                                   // LlmError → 503/502 problem with `?`
//! let (invoice, _) = state.integrations.llm
//!     .complete_json::<Invoice>(&state.db, &scope,
//!         LlmRequest::new("Read this invoice").image(bytes, "image/png"), &schema)
//!     .await?;
//! ```
//!
//! - Providers: OpenAI-compatible `POST {base_url}/v1/chat/completions` (text and
//!   `image_url` data-URL parts) and Gemini `POST {base_url}/v1beta/models/{model}:generateContent`
//!   (`inline_data` parts). Calls go through the resilient client as service `llm.<provider>`
//!   (retried: asking again has no effect beyond its cost).
//! - No `llm.api_key`: [`LlmError::Disabled`], a 503 problem; readiness shows `llm: disabled`.
//! - Cache: key = SHA-256 of (organization, system prompt, prompt, image hashes, model,
//!   temperature, provider), so one tenant's documents never answer another's. Rows keep the
//!   answer, token counts, response time, hit count, creation and last use; they live
//!   `llm.cache_ttl_days` and a schedule removes expired ones. Requests with temperature > 0
//!   are cached only with `llm.cache_nonzero_temperature`.
//! - Structured output: the schema goes into the system prompt (and the provider's JSON mode
//!   is asked for); the answer is checked against the schema and decoded into the caller's
//!   type; on failure the model is asked once more with the error. Only a valid answer is
//!   cached.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::TimeDelta;
use sea_query::{Alias, Expr, ExprTrait, Func, OnConflict, Query};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::config::{LlmConfig, LlmProviderKind};
use super::outbound::{Outbound, OutboundError};
use crate::http::ApiError;
use crate::store::{Db, StoreError, now};
use crate::tenancy::TenantScope;

/// An image sent with a prompt.
#[derive(Debug, Clone)]
pub struct LlmImage {
    pub bytes: bytes::Bytes,
    /// e.g. `image/png`, `image/jpeg`, `image/webp`.
    pub mime: String,
}

/// One request to the model.
#[derive(Debug, Clone)]
pub struct LlmRequest {
    pub system: Option<String>,
    pub prompt: String,
    pub images: Vec<LlmImage>,
    /// 0 (the default) for reproducible answers.
    pub temperature: f32,
    /// Overrides `llm.max_tokens`.
    pub max_tokens: Option<u32>,
}

impl LlmRequest {
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            system: None,
            prompt: prompt.into(),
            images: Vec::new(),
            temperature: 0.0,
            max_tokens: None,
        }
    }

    pub fn system(mut self, system: impl Into<String>) -> Self {
        self.system = Some(system.into());
        self
    }

    pub fn image(mut self, bytes: impl Into<bytes::Bytes>, mime: impl Into<String>) -> Self {
        self.images.push(LlmImage {
            bytes: bytes.into(),
            mime: mime.into(),
        });
        self
    }

    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }

    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }
}

/// What a provider produced.
#[derive(Debug, Clone)]
pub struct Generated {
    pub text: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

/// The model's answer.
#[derive(Debug, Clone, Serialize)]
pub struct LlmAnswer {
    pub text: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub provider: &'static str,
    pub model: String,
    /// Answered from the cache (no call was made).
    pub cached: bool,
    /// How long the provider took (for a cached answer: the original call).
    pub response_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("AI features are disabled: no LLM API key is configured")]
    Disabled,
    #[error(transparent)]
    Outbound(#[from] OutboundError),
    #[error("`{service}` answered {status}: {snippet}")]
    Upstream {
        service: String,
        status: u16,
        snippet: String,
    },
    #[error("the model's answer is not valid: {0}")]
    InvalidOutput(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<LlmError> for ApiError {
    fn from(e: LlmError) -> Self {
        match e {
            LlmError::Disabled => ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "/problems/ai-disabled",
                "AI features are disabled",
            )
            .detail("no LLM is configured on this deployment (llm.api_key)"),
            LlmError::Outbound(o) => o.into(),
            LlmError::Store(s) => s.into(),
            LlmError::Upstream { ref service, .. } => {
                let service = service.clone();
                let mut err = ApiError::new(
                    axum::http::StatusCode::BAD_GATEWAY,
                    "/problems/upstream-error",
                    "Upstream error",
                )
                .detail(format!("`{service}` refused the request"))
                .with_extra("service", service);
                err.source = Some(anyhow::Error::new(e));
                err
            }
            LlmError::InvalidOutput(_) => {
                let mut err = ApiError::new(
                    axum::http::StatusCode::BAD_GATEWAY,
                    "/problems/llm-invalid-output",
                    "Invalid model output",
                )
                .detail("the model did not produce a valid answer; try again");
                err.source = Some(anyhow::Error::new(e));
                err
            }
        }
    }
}

/// An LLM API.
#[async_trait::async_trait]
pub trait LlmProvider: Send + Sync + 'static {
    /// `openai`, `gemini`, … (part of the cache key and the outbound service name).
    fn name(&self) -> &'static str;
    fn model(&self) -> &str;
    /// One call. `json`: ask the API for a JSON answer where it supports that.
    async fn generate(
        &self,
        outbound: &Outbound,
        request: &LlmRequest,
        max_tokens: u32,
        json: bool,
    ) -> Result<Generated, LlmError>;
}

fn data_url(image: &LlmImage) -> String {
    format!(
        "data:{};base64,{}",
        image.mime,
        STANDARD.encode(&image.bytes)
    )
}

async fn post_json(
    outbound: &Outbound,
    service: &str,
    request: reqwest::RequestBuilder,
    body: &Value,
) -> Result<Value, LlmError> {
    let request = request
        .json(body)
        .build()
        .map_err(|e| OutboundError::Request {
            service: service.to_string(),
            source: e,
        })?;
    let response = outbound.execute(service, request, true).await?;
    let status = response.status();
    let text = response.text().await.map_err(|e| OutboundError::Request {
        service: service.to_string(),
        source: e,
    })?;
    if !status.is_success() {
        return Err(LlmError::Upstream {
            service: service.to_string(),
            status: status.as_u16(),
            snippet: text.chars().take(300).collect(),
        });
    }
    serde_json::from_str(&text).map_err(|e| LlmError::Upstream {
        service: service.to_string(),
        status: status.as_u16(),
        snippet: format!("not JSON: {e}"),
    })
}

/// OpenAI-compatible chat completions (OpenAI, Azure-style gateways, vLLM, Ollama, …).
pub struct OpenAiProvider {
    pub base_url: String,
    pub model: String,
    pub api_key: crate::config::Secret,
}

#[async_trait::async_trait]
impl LlmProvider for OpenAiProvider {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn model(&self) -> &str {
        &self.model
    }

    async fn generate(
        &self,
        outbound: &Outbound,
        request: &LlmRequest,
        max_tokens: u32,
        json: bool,
    ) -> Result<Generated, LlmError> {
        let mut messages = Vec::new();
        if let Some(system) = &request.system {
            messages.push(json!({ "role": "system", "content": system }));
        }
        let mut parts = vec![json!({ "type": "text", "text": request.prompt })];
        for image in &request.images {
            parts.push(json!({ "type": "image_url", "image_url": { "url": data_url(image) } }));
        }
        messages.push(json!({ "role": "user", "content": parts }));
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "temperature": request.temperature,
            "max_tokens": max_tokens,
        });
        if json {
            body["response_format"] = json!({ "type": "json_object" });
        }
        let url = format!(
            "{}/v1/chat/completions",
            self.base_url.trim_end_matches('/')
        );
        let builder = outbound
            .client()
            .post(url)
            .bearer_auth(self.api_key.expose());
        let answer = post_json(outbound, "llm.openai", builder, &body).await?;
        let text = answer["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| LlmError::InvalidOutput("the answer has no message content".into()))?
            .to_string();
        Ok(Generated {
            text,
            prompt_tokens: answer["usage"]["prompt_tokens"].as_i64().unwrap_or(0),
            completion_tokens: answer["usage"]["completion_tokens"].as_i64().unwrap_or(0),
        })
    }
}

/// Google Gemini `generateContent`.
pub struct GeminiProvider {
    pub base_url: String,
    pub model: String,
    pub api_key: crate::config::Secret,
}

#[async_trait::async_trait]
impl LlmProvider for GeminiProvider {
    fn name(&self) -> &'static str {
        "gemini"
    }

    fn model(&self) -> &str {
        &self.model
    }

    async fn generate(
        &self,
        outbound: &Outbound,
        request: &LlmRequest,
        max_tokens: u32,
        json: bool,
    ) -> Result<Generated, LlmError> {
        let mut parts = vec![json!({ "text": request.prompt })];
        for image in &request.images {
            parts.push(json!({ "inline_data": {
                "mime_type": image.mime,
                "data": STANDARD.encode(&image.bytes),
            }}));
        }
        let mut config = json!({
            "temperature": request.temperature,
            "maxOutputTokens": max_tokens,
        });
        if json {
            config["responseMimeType"] = json!("application/json");
        }
        let mut body = json!({
            "contents": [{ "role": "user", "parts": parts }],
            "generationConfig": config,
        });
        if let Some(system) = &request.system {
            body["systemInstruction"] = json!({ "parts": [{ "text": system }] });
        }
        let url = format!(
            "{}/v1beta/models/{}:generateContent",
            self.base_url.trim_end_matches('/'),
            self.model
        );
        let builder = outbound
            .client()
            .post(url)
            .header("x-goog-api-key", self.api_key.expose());
        let answer = post_json(outbound, "llm.gemini", builder, &body).await?;
        let text: String = answer["candidates"][0]["content"]["parts"]
            .as_array()
            .ok_or_else(|| LlmError::InvalidOutput("the answer has no candidate parts".into()))?
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect();
        Ok(Generated {
            text,
            prompt_tokens: answer["usageMetadata"]["promptTokenCount"]
                .as_i64()
                .unwrap_or(0),
            completion_tokens: answer["usageMetadata"]["candidatesTokenCount"]
                .as_i64()
                .unwrap_or(0),
        })
    }
}

/// The LLM client on `AppState` (`state.integrations.llm`).
pub struct Llm {
    provider: Option<Arc<dyn LlmProvider>>,
    outbound: Arc<Outbound>,
    config: LlmConfig,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llm")
            .field("provider", &self.provider.as_ref().map(|p| p.name()))
            .field("model", &self.config.model)
            .finish()
    }
}

impl Llm {
    pub fn new(config: &LlmConfig, outbound: Arc<Outbound>) -> Self {
        let provider: Option<Arc<dyn LlmProvider>> = config.api_key.as_ref().map(|key| {
            let p: Arc<dyn LlmProvider> = match config.provider {
                LlmProviderKind::Openai => Arc::new(OpenAiProvider {
                    base_url: config.base_url.clone(),
                    model: config.model.clone(),
                    api_key: key.clone(),
                }),
                LlmProviderKind::Gemini => Arc::new(GeminiProvider {
                    base_url: config.base_url.clone(),
                    model: config.model.clone(),
                    api_key: key.clone(),
                }),
            };
            p
        });
        Self {
            provider,
            outbound,
            config: config.clone(),
        }
    }

    /// Whether an LLM is configured.
    pub fn enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// `provider/model`, for readiness.
    pub fn describe(&self) -> Option<String> {
        self.provider
            .as_ref()
            .map(|p| format!("{}/{}", p.name(), p.model()))
    }

    fn provider(&self) -> Result<&Arc<dyn LlmProvider>, LlmError> {
        self.provider.as_ref().ok_or(LlmError::Disabled)
    }

    fn cacheable(&self, request: &LlmRequest) -> bool {
        self.config.cache_enabled
            && (request.temperature <= 0.0 || self.config.cache_nonzero_temperature)
    }

    /// A text answer (from the cache when an identical request was answered before).
    pub async fn complete(
        &self,
        db: &Db,
        scope: &TenantScope,
        request: LlmRequest,
    ) -> Result<LlmAnswer, LlmError> {
        let provider = self.provider()?;
        let key = cache_key(scope, provider.as_ref(), &request);
        let cacheable = self.cacheable(&request);
        if cacheable && let Some(hit) = cache_get(db, scope, &key).await? {
            cache_outcome(provider.name(), "hit");
            return Ok(hit.into_answer(provider.name()));
        }
        cache_outcome(provider.name(), if cacheable { "miss" } else { "bypass" });
        let answer = self.call(provider.as_ref(), &request, false).await?;
        if cacheable {
            cache_put(db, scope, &key, &answer, self.config.cache_ttl_days).await?;
        }
        Ok(answer)
    }

    /// A JSON answer matching `schema` (a JSON Schema: `type`, `properties`, `required`,
    /// `items` and `enum` are checked), decoded into `T`. An invalid answer is sent back to
    /// the model once with the validation error; a second invalid answer is
    /// [`LlmError::InvalidOutput`].
    pub async fn complete_json<T: DeserializeOwned>(
        &self,
        db: &Db,
        scope: &TenantScope,
        request: LlmRequest,
        schema: &Value,
    ) -> Result<(T, LlmAnswer), LlmError> {
        let provider = self.provider()?;
        let mut request = request;
        let instruction = format!(
            "Answer with one JSON value only, no prose and no code fences, matching this JSON Schema:\n{schema}"
        );
        request.system = Some(match request.system.take() {
            Some(s) => format!("{s}\n\n{instruction}"),
            None => instruction,
        });
        let key = cache_key(scope, provider.as_ref(), &request);
        let cacheable = self.cacheable(&request);
        if cacheable
            && let Some(hit) = cache_get(db, scope, &key).await?
            && let Ok(value) = parse_valid::<T>(&hit.response, schema)
        {
            cache_outcome(provider.name(), "hit");
            return Ok((value, hit.into_answer(provider.name())));
        }
        cache_outcome(provider.name(), if cacheable { "miss" } else { "bypass" });
        let first = self.call(provider.as_ref(), &request, true).await?;
        let (value, answer) = match parse_valid::<T>(&first.text, schema) {
            Ok(v) => (v, first),
            Err(problem) => {
                tracing::info!(provider = provider.name(), error = %problem, "LLM answer failed validation; asking again");
                let mut retry = request.clone();
                retry.prompt = format!(
                    "{}\n\nYour previous answer was:\n{}\n\nIt is not valid: {problem}. Answer again with JSON that matches the schema.",
                    request.prompt, first.text
                );
                let second = self.call(provider.as_ref(), &retry, true).await?;
                let v = parse_valid::<T>(&second.text, schema).map_err(LlmError::InvalidOutput)?;
                (v, second)
            }
        };
        if cacheable {
            cache_put(db, scope, &key, &answer, self.config.cache_ttl_days).await?;
        }
        Ok((value, answer))
    }

    async fn call(
        &self,
        provider: &dyn LlmProvider,
        request: &LlmRequest,
        json: bool,
    ) -> Result<LlmAnswer, LlmError> {
        let started = Instant::now();
        let max_tokens = request.max_tokens.unwrap_or(self.config.max_tokens);
        let generated = provider
            .generate(&self.outbound, request, max_tokens, json)
            .await?;
        Ok(LlmAnswer {
            text: generated.text,
            prompt_tokens: generated.prompt_tokens,
            completion_tokens: generated.completion_tokens,
            provider: provider.name(),
            model: provider.model().to_string(),
            cached: false,
            response_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        })
    }
}

/// Strips a Markdown code fence some models put around JSON.
fn unfence(text: &str) -> &str {
    let t = text.trim();
    if let Some(rest) = t.strip_prefix("```") {
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        return rest.strip_suffix("```").unwrap_or(rest).trim();
    }
    t
}

fn parse_valid<T: DeserializeOwned>(text: &str, schema: &Value) -> Result<T, String> {
    let value: Value =
        serde_json::from_str(unfence(text)).map_err(|e| format!("not JSON ({e})"))?;
    check_schema(&value, schema, "$")?;
    serde_path_to_error::deserialize(value).map_err(|e| format!("at {}: {}", e.path(), e.inner()))
}

/// Checks `value` against the common core of JSON Schema: `type`, `enum`, `required`,
/// `properties` and `items`. Enough to catch a model that drops, renames or mistypes fields.
pub fn check_schema(value: &Value, schema: &Value, path: &str) -> Result<(), String> {
    if let Some(kind) = schema.get("type") {
        let kinds: Vec<&str> = match kind {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let ok = kinds.is_empty()
            || kinds.iter().any(|k| match *k {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "number" => value.is_number(),
                "integer" => value.is_i64() || value.is_u64(),
                "boolean" => value.is_boolean(),
                "null" => value.is_null(),
                _ => true,
            });
        if !ok {
            return Err(format!("{path} must be of type {}", kinds.join(" or ")));
        }
    }
    if let Some(Value::Array(allowed)) = schema.get("enum")
        && !allowed.contains(value)
    {
        return Err(format!(
            "{path} must be one of {}",
            Value::Array(allowed.clone())
        ));
    }
    if let Value::Object(map) = value {
        if let Some(Value::Array(required)) = schema.get("required") {
            for r in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(r) {
                    return Err(format!("{path}.{r} is required"));
                }
            }
        }
        if let Some(Value::Object(props)) = schema.get("properties") {
            for (name, sub) in props {
                if let Some(v) = map.get(name) {
                    check_schema(v, sub, &format!("{path}.{name}"))?;
                }
            }
        }
    }
    if let (Value::Array(items), Some(sub)) = (value, schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            check_schema(v, sub, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

/// SHA-256 over every input that can change the answer, and the organization.
fn cache_key(scope: &TenantScope, provider: &dyn LlmProvider, request: &LlmRequest) -> String {
    let images: Vec<String> = request
        .images
        .iter()
        .map(|i| hex::encode(Sha256::digest(&i.bytes)))
        .collect();
    // A JSON array: unambiguous field boundaries whatever the prompts contain.
    let material = json!([
        "keel-llm-cache-v1",
        scope.org_id(),
        request.system,
        request.prompt,
        images,
        provider.model(),
        format!("{:.3}", request.temperature),
        provider.name(),
    ]);
    hex::encode(Sha256::digest(material.to_string().as_bytes()))
}

#[derive(Debug, sqlx::FromRow, serde::Deserialize)]
struct CacheRow {
    response: String,
    model: String,
    prompt_tokens: i64,
    completion_tokens: i64,
    response_ms: i64,
}

impl CacheRow {
    fn into_answer(self, provider: &'static str) -> LlmAnswer {
        LlmAnswer {
            text: self.response,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            provider,
            model: self.model,
            cached: true,
            response_ms: self.response_ms,
        }
    }
}

async fn cache_get(
    db: &Db,
    scope: &TenantScope,
    key: &str,
) -> Result<Option<CacheRow>, StoreError> {
    let at = now();
    let cond = Expr::col("org_id")
        .eq(scope.org_id())
        .and(Expr::col("cache_key").eq(key))
        .and(Expr::col("expires_at").gt(at));
    // One round trip: count the hit and read the answer (`UPDATE … RETURNING` on both
    // engines).
    let row: Option<CacheRow> = db
        .fetch_optional(
            &Query::update()
                .table("llm_cache")
                .values([
                    ("hit_count", Expr::col("hit_count").add(1)),
                    ("last_used_at", at.into()),
                ])
                .cond_where(cond)
                .returning(Query::returning().columns([
                    "response",
                    "model",
                    "prompt_tokens",
                    "completion_tokens",
                    "response_ms",
                ]))
                .to_owned(),
        )
        .await?;
    Ok(row)
}

async fn cache_put(
    db: &Db,
    scope: &TenantScope,
    key: &str,
    answer: &LlmAnswer,
    ttl_days: u32,
) -> Result<(), StoreError> {
    let at = now();
    let expires = at + TimeDelta::days(i64::from(ttl_days));
    db.execute(
        &Query::insert()
            .into_table("llm_cache")
            .columns([
                "org_id",
                "cache_key",
                "provider",
                "model",
                "response",
                "prompt_tokens",
                "completion_tokens",
                "response_ms",
                "hit_count",
                "created_at",
                "last_used_at",
                "expires_at",
            ])
            .values_panic([
                scope.org_id().into(),
                key.into(),
                answer.provider.into(),
                answer.model.clone().into(),
                answer.text.clone().into(),
                answer.prompt_tokens.into(),
                answer.completion_tokens.into(),
                answer.response_ms.into(),
                0i64.into(),
                at.into(),
                at.into(),
                expires.into(),
            ])
            .on_conflict(
                OnConflict::columns(["org_id", "cache_key"])
                    .update_columns([
                        "provider",
                        "model",
                        "response",
                        "prompt_tokens",
                        "completion_tokens",
                        "response_ms",
                        "hit_count",
                        "created_at",
                        "last_used_at",
                        "expires_at",
                    ])
                    .to_owned(),
            )
            .to_owned(),
    )
    .await?;
    Ok(())
}

/// `GET /api/v1/llm/cache/stats`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CacheStats {
    /// Whether the cache is switched on (`llm.cache_enabled`).
    pub enabled: bool,
    /// Live (unexpired) cached answers of the organization.
    pub entries: i64,
    /// Requests answered from the cache.
    pub hits: i64,
    /// hits / (hits + entries): each entry stands for the call that filled it.
    pub hit_rate: f64,
    /// Prompt and completion tokens the hits did not spend.
    pub tokens_saved: i64,
}

pub async fn cache_stats(
    db: &Db,
    scope: &TenantScope,
    enabled: bool,
) -> Result<CacheStats, StoreError> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Row {
        entries: i64,
        hits: i64,
        tokens_saved: i64,
    }
    let sum_as_bigint = |e: Expr| {
        Func::coalesce([Func::sum(e).into(), Expr::val(0i64)]).cast_as(Alias::new("BIGINT"))
    };
    let row: Row = db
        .fetch_one(
            &Query::select()
                .expr_as(
                    Func::count(Expr::col("cache_key")).cast_as(Alias::new("BIGINT")),
                    "entries",
                )
                .expr_as(sum_as_bigint(Expr::col("hit_count")), "hits")
                .expr_as(
                    sum_as_bigint(
                        Expr::col("hit_count")
                            .mul(Expr::col("prompt_tokens").add(Expr::col("completion_tokens"))),
                    ),
                    "tokens_saved",
                )
                .from("llm_cache")
                .cond_where(
                    Expr::col("org_id")
                        .eq(scope.org_id())
                        .and(Expr::col("expires_at").gt(now())),
                )
                .to_owned(),
        )
        .await?;
    let lookups = row.hits + row.entries;
    Ok(CacheStats {
        enabled,
        entries: row.entries,
        hits: row.hits,
        hit_rate: if lookups == 0 {
            0.0
        } else {
            row.hits as f64 / lookups as f64
        },
        tokens_saved: row.tokens_saved,
    })
}

/// Removes expired cache entries (every organization's); the scheduled cleanup calls it.
pub async fn cache_cleanup(db: &Db) -> Result<u64, StoreError> {
    db.execute(
        &Query::delete()
            .from_table("llm_cache")
            .cond_where(Expr::col("expires_at").lte(now()))
            .to_owned(),
    )
    .await
}

/// Counts LLM cache lookups: `hit`, `miss`, or `bypass` (not cacheable: caching off, or a
/// temperature above 0 without `llm.cache_nonzero_temperature`).
fn cache_outcome(provider: &'static str, result: &'static str) {
    metrics::counter!("keel_llm_cache_requests_total", "provider" => provider, "result" => result)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_check_names_the_failing_field() {
        let schema = json!({"type": "object", "required": ["total"], "properties": {
            "total": {"type": "integer"}, "lines": {"type": "array", "items": {"type": "string"}}}});
        assert!(check_schema(&json!({"total": 3, "lines": ["a"]}), &schema, "$").is_ok());
        let e = check_schema(&json!({"lines": []}), &schema, "$").expect_err("missing");
        assert!(e.contains("$.total is required"), "{e}");
        let e = check_schema(&json!({"total": "3"}), &schema, "$").expect_err("type");
        assert!(e.contains("$.total must be of type integer"), "{e}");
        let e = check_schema(&json!({"total": 1, "lines": [1]}), &schema, "$").expect_err("item");
        assert!(e.contains("$.lines[0]"), "{e}");
    }

    #[test]
    fn code_fences_are_stripped() {
        assert_eq!(unfence("```json\n{\"a\":1}\n```"), "{\"a\":1}");
        assert_eq!(unfence(" {\"a\":1} "), "{\"a\":1}");
    }
}
