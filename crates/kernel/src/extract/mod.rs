//! Document extraction: invoice and trade-document fields from stored files.
//!
//! An app (or the kernel's `/api/v1/extractions` routes) calls [`start`] inside its
//! transaction with a stored file's checksum and a document type; that records an extraction
//! (`queued`) and enqueues a job on the `ocr` queue. The job reads the file and asks the
//! configured engines in order ([`engine`]: the PDF text layer, then Tesseract OCR; a vision
//! LLM can be plugged in as another [`Engine`]) until one reads it; the result records the
//! engine. Text is turned into fields ([`fields`]), checked ([`validate`]) and scored:
//!
//! - `completed` — overall confidence ≥ `extraction.confidence_threshold` (0.85) and no issue;
//! - `review_required` — anything else the engine read;
//! - `failed` — nothing could be read (with the reason: too many pages, no text, no engine).
//!
//! A reviewer's corrections ([`correct`]) are stored beside the original result, never over
//! it, and audited (`extraction.corrected`).

pub mod engine;
pub mod fields;
pub mod routes;
pub mod store;
pub mod validate;
pub mod vision;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use regex::Regex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use engine::{Engine, EngineError, EngineInput, EngineOutput, Text};
pub use fields::{DocumentField, ExtractedFields, Field, LineItem};
pub use validate::Issue;

use crate::audit::{self, AuditContext, Changes, NewEvent};
use crate::config::ConfigError;
use crate::http::{ApiError, FieldError};
use crate::jobs::{JobContext, JobDefinition, JobError, JobPayload};
use crate::module::Registry;
use crate::state::AppState;
use crate::store::{StoreError, Tx};
use crate::tenancy::{Actor, TenantScope};

/// The engines this build knows by name.
pub const ENGINES: &[&str] = &["pdf_text", "tesseract", "vision_llm"];

/// The built-in document type; apps add theirs by registering fields for them.
pub const INVOICE: &str = "invoice";

/// `[extraction]`: engines, their order and limits, and the confidence threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtractionConfig {
    /// `KEEL_EXTRACTION__ENGINES`: engines to try, in order.
    #[serde(deserialize_with = "crate::config::string_or_list")]
    pub engines: Vec<String>,
    /// Tesseract languages, `+`-separated (`eng`, `eng+ara`).
    pub languages: String,
    /// Overall confidence at or above which a valid extraction is `completed`.
    pub confidence_threshold: f64,
    /// Longest document, in pages.
    pub max_pages: u32,
    /// Resolution scanned PDF pages are rasterised at.
    pub dpi: u32,
    /// Longest one OCR tool call may run.
    pub tool_timeout_secs: u64,
    pub tesseract_path: PathBuf,
    pub pdftotext_path: PathBuf,
    pub pdftoppm_path: PathBuf,
    pub pdfinfo_path: PathBuf,
}

impl Default for ExtractionConfig {
    fn default() -> Self {
        Self {
            engines: vec!["pdf_text".into(), "tesseract".into()],
            languages: "eng".into(),
            confidence_threshold: 0.85,
            max_pages: 20,
            dpi: 300,
            tool_timeout_secs: 120,
            tesseract_path: "tesseract".into(),
            pdftotext_path: "pdftotext".into(),
            pdftoppm_path: "pdftoppm".into(),
            pdfinfo_path: "pdfinfo".into(),
        }
    }
}

impl ExtractionConfig {
    /// Problems with the values, one message each.
    pub fn value_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.engines.is_empty() {
            problems.push("extraction.engines: name at least one engine".into());
        }
        for e in &self.engines {
            if !ENGINES.contains(&e.as_str()) {
                problems.push(format!(
                    "extraction.engines: `{e}` is not an engine of this build ({})",
                    ENGINES.join(", ")
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.confidence_threshold) {
            problems.push("extraction.confidence_threshold: must be between 0 and 1".into());
        }
        if self.max_pages == 0 {
            problems.push("extraction.max_pages: must be at least 1".into());
        }
        if !(72..=600).contains(&self.dpi) {
            problems.push("extraction.dpi: must be between 72 and 600".into());
        }
        if self.tool_timeout_secs == 0 {
            problems.push("extraction.tool_timeout_secs: must be greater than 0".into());
        }
        let langs_ok = !self.languages.is_empty()
            && self
                .languages
                .split('+')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        if !langs_ok {
            problems.push(format!(
                "extraction.languages: `{}` is not like `eng` or `eng+ara`",
                self.languages
            ));
        }
        problems
    }

    pub fn tools(&self) -> engine::Tools {
        engine::Tools {
            tesseract: self.tesseract_path.clone(),
            pdftotext: self.pdftotext_path.clone(),
            pdftoppm: self.pdftoppm_path.clone(),
            pdfinfo: self.pdfinfo_path.clone(),
            languages: self.languages.clone(),
            dpi: self.dpi,
            timeout: Duration::from_secs(self.tool_timeout_secs),
        }
    }
}

struct ExtraField {
    name: String,
    pattern: Regex,
    required: bool,
}

/// The engines in order and the registered document types: `AppState::extractor`.
pub struct Extractor {
    engines: Vec<Arc<dyn Engine>>,
    types: HashMap<String, Vec<ExtraField>>,
    threshold: f64,
    max_pages: u32,
}

impl std::fmt::Debug for Extractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extractor")
            .field(
                "engines",
                &self.engines.iter().map(|e| e.name()).collect::<Vec<_>>(),
            )
            .field("document_types", &self.types.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Extractor {
    /// The configured engines (plus `extra` ones, e.g. a vision LLM, used where the
    /// configuration names them) and every module's document fields, checked.
    pub fn new(
        config: &ExtractionConfig,
        registry: &Registry,
        extra: Vec<Arc<dyn Engine>>,
    ) -> Result<Self, ConfigError> {
        let tools = config.tools();
        let mut available: Vec<Arc<dyn Engine>> = vec![
            Arc::new(engine::PdfText {
                tools: tools.clone(),
            }),
            Arc::new(engine::Tesseract { tools }),
        ];
        available.extend(extra);
        let mut problems = Vec::new();
        let mut engines = Vec::new();
        for name in &config.engines {
            match available.iter().rev().find(|e| e.name() == name) {
                Some(e) => engines.push(e.clone()),
                None => problems.push(format!("extraction.engines: no engine `{name}`")),
            }
        }
        let mut types: HashMap<String, Vec<ExtraField>> = HashMap::new();
        types.insert(INVOICE.into(), Vec::new());
        for f in registry.document_fields() {
            if !is_name(f.document_type) || !is_name(f.name) {
                problems.push(format!(
                    "document field `{}` of `{}`: names must be lowercase letters, digits and _",
                    f.name, f.document_type
                ));
                continue;
            }
            match Regex::new(&format!("(?i){}", f.pattern)) {
                Ok(pattern) if pattern.captures_len() >= 2 => {
                    types
                        .entry(f.document_type.to_string())
                        .or_default()
                        .push(ExtraField {
                            name: f.name.to_string(),
                            pattern,
                            required: f.required,
                        });
                }
                Ok(_) => problems.push(format!(
                    "document field `{}`: the pattern needs a capture group for the value",
                    f.name
                )),
                Err(e) => problems.push(format!("document field `{}`: {e}", f.name)),
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(Self {
            engines,
            types,
            threshold: config.confidence_threshold,
            max_pages: config.max_pages,
        })
    }

    /// Each configured engine, in order, and whether it can run here.
    pub fn availability(&self) -> Vec<(&'static str, Result<(), String>)> {
        self.engines
            .iter()
            .map(|e| (e.name(), e.available()))
            .collect()
    }

    /// Whether a document type is known (`invoice`, or one an app registered).
    pub fn knows(&self, document_type: &str) -> bool {
        self.types.contains_key(document_type)
    }

    pub fn document_types(&self) -> Vec<&str> {
        let mut t: Vec<&str> = self.types.keys().map(String::as_str).collect();
        t.sort_unstable();
        t
    }

    fn required(&self, document_type: &str) -> Vec<&str> {
        self.types
            .get(document_type)
            .map(|f| {
                f.iter()
                    .filter(|f| f.required)
                    .map(|f| f.name.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Scores fields: issues, overall confidence and the status they lead to.
    pub fn assess(
        &self,
        document_type: &str,
        fields: &ExtractedFields,
    ) -> (Vec<Issue>, f64, &'static str) {
        let required = self.required(document_type);
        let issues = validate::validate(fields, &required);
        let confidence = validate::overall_confidence(fields, &required);
        let status = if issues.is_empty() && confidence >= self.threshold {
            "completed"
        } else {
            "review_required"
        };
        (issues, confidence, status)
    }

    /// Reads a document with the engines in order. `Err` is the reason nothing could.
    pub async fn run(
        &self,
        bytes: &[u8],
        kind: crate::storage::FileKind,
        document_type: &str,
        scope: Option<&crate::tenancy::TenantScope>,
    ) -> Result<ExtractionResult, RunError> {
        let input = EngineInput {
            bytes,
            kind,
            document_type,
            max_pages: self.max_pages,
            scope,
        };
        let mut tried = Vec::new();
        let mut broken = false;
        for engine in &self.engines {
            let (pages, fields) = match engine.extract(&input).await {
                Ok(EngineOutput::Text(text)) => {
                    if text.is_blank() {
                        tried.push(format!("{}: no text recognised", engine.name()));
                        continue;
                    }
                    let extra: Vec<(String, Regex)> = self
                        .types
                        .get(document_type)
                        .map(|f| {
                            f.iter()
                                .map(|f| (f.name.clone(), f.pattern.clone()))
                                .collect()
                        })
                        .unwrap_or_default();
                    (text.pages, fields::parse(&text, &extra))
                }
                Ok(EngineOutput::Fields { pages, fields }) => (pages, fields),
                Err(EngineError::NotApplicable(why)) => {
                    tried.push(format!("{}: {why}", engine.name()));
                    continue;
                }
                Err(EngineError::Refused(why)) => return Err(RunError::Refused(why)),
                Err(EngineError::Failed(e)) => {
                    tracing::warn!(engine = engine.name(), error = %format!("{e:#}"), "an extraction engine failed");
                    tried.push(format!("{}: {e:#}", engine.name()));
                    broken = true;
                    continue;
                }
            };
            let (issues, confidence, status) = self.assess(document_type, &fields);
            return Ok(ExtractionResult {
                engine: engine.name().to_string(),
                pages,
                confidence,
                status: status.to_string(),
                fields: fields.fields,
                line_items: fields.line_items,
                issues,
            });
        }
        let reason = format!("no engine could read the document ({})", tried.join("; "));
        Err(if broken {
            RunError::EngineFailed(reason)
        } else {
            RunError::Unreadable(reason)
        })
    }
}

/// Why a run produced no result.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The document breaks a limit.
    #[error("{0}")]
    Refused(String),
    /// Every engine declined or found no text.
    #[error("{0}")]
    Unreadable(String),
    /// An engine failed (may succeed on another attempt).
    #[error("{0}")]
    EngineFailed(String),
}

/// What an engine read, scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExtractionResult {
    /// The engine that read it: `pdf_text`, `tesseract`, …
    pub engine: String,
    pub pages: u32,
    /// Overall confidence, 0–1.
    pub confidence: f64,
    /// `completed` or `review_required`.
    pub status: String,
    pub fields: BTreeMap<String, Field>,
    pub line_items: Vec<LineItem>,
    pub issues: Vec<Issue>,
}

/// An extraction as apps and the API see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Extraction {
    pub id: Uuid,
    /// The file's SHA-256.
    pub file: String,
    pub document_type: String,
    /// `queued`, `running`, `completed`, `review_required` or `failed`.
    pub status: String,
    pub job_id: Option<Uuid>,
    pub engine: Option<String>,
    /// The current result's overall confidence (the correction's, once corrected).
    pub confidence: Option<f64>,
    /// What the engine read.
    pub result: Option<ExtractionResult>,
    /// A reviewer's corrected result, beside the original.
    pub corrected: Option<ExtractionResult>,
    pub failure_reason: Option<String>,
    pub reviewed_by: Option<Uuid>,
    pub reviewed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl From<store::Row> for Extraction {
    fn from(r: store::Row) -> Self {
        Self {
            id: r.id,
            file: r.file_sha256,
            document_type: r.document_type,
            status: r.status,
            job_id: r.job_id,
            engine: r.engine,
            confidence: r.confidence,
            result: r.result.and_then(|v| serde_json::from_value(v).ok()),
            corrected: r.corrected.and_then(|v| serde_json::from_value(v).ok()),
            failure_reason: r.failure_reason,
            reviewed_by: r.reviewed_by,
            reviewed_at: r.reviewed_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
}

/// Errors of the extraction functions, in terms handlers answer.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("not found")]
    NotFound,
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("the extraction has no result to correct yet")]
    NotReady,
    #[error("stale version")]
    Stale,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ExtractError> for ApiError {
    fn from(e: ExtractError) -> Self {
        match e {
            ExtractError::NotFound => ApiError::not_found(),
            ExtractError::Invalid(errors) => ApiError::validation(errors),
            ExtractError::NotReady => ApiError::conflict(e.to_string()),
            ExtractError::Stale => crate::http::stale(false),
            ExtractError::Store(s) => s.into(),
        }
    }
}

/// What [`start`] created.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Started {
    pub extraction_id: Uuid,
    pub job_id: Uuid,
}

/// Records an extraction of a stored file and enqueues its job on the `ocr` queue, inside
/// `tx` (both exist if and only if `tx` commits). The file must belong to the scope's
/// organization (another's answers `NotFound`, like a missing one).
pub async fn start(
    state: &AppState,
    tx: &mut Tx,
    scope: &TenantScope,
    file_sha256: &str,
    document_type: &str,
) -> Result<Started, ExtractError> {
    start_with(
        state,
        tx,
        scope,
        file_sha256,
        document_type,
        |extraction_id| ExtractDocument { extraction_id },
    )
    .await
}

/// [`start`] with an app's own job instead of [`ExtractDocument`]: `job` is given the new
/// extraction's id and makes the payload to enqueue. The app's job runs the extraction with
/// [`execute`] and then does its own work (records its audit event, updates its rows).
pub async fn start_with<P: JobPayload>(
    state: &AppState,
    tx: &mut Tx,
    scope: &TenantScope,
    file_sha256: &str,
    document_type: &str,
    job: impl FnOnce(Uuid) -> P,
) -> Result<Started, ExtractError> {
    let mut errors = Vec::new();
    if !crate::storage::is_sha256(file_sha256) {
        errors.push(FieldError::new(
            "file",
            "must be a file's SHA-256 (64 hex digits)",
        ));
    }
    if !state.extractor.knows(document_type) {
        errors.push(FieldError::new(
            "document_type",
            format!(
                "must be one of {}",
                state.extractor.document_types().join(", ")
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(ExtractError::Invalid(errors));
    }
    if crate::storage::store::find(&state.db, scope, file_sha256)
        .await?
        .is_none()
    {
        return Err(ExtractError::Invalid(vec![FieldError::new(
            "file",
            "no such file",
        )]));
    }
    let extraction_id = Uuid::now_v7();
    store::insert(tx, scope, extraction_id, file_sha256, document_type).await?;
    let job_id = state
        .jobs
        .enqueue(tx, Some(scope), &job(extraction_id))
        .await?;
    store::set_job(tx, scope, extraction_id, job_id).await?;
    Ok(Started {
        extraction_id,
        job_id,
    })
}

/// An extraction of the scope's organization.
pub async fn get(
    state: &AppState,
    scope: &TenantScope,
    id: Uuid,
) -> Result<Extraction, ExtractError> {
    store::get(&state.db, scope, id)
        .await?
        .map(Extraction::from)
        .ok_or(ExtractError::NotFound)
}

/// A reviewer's corrections: fields to set (`null` removes one) and, optionally, the whole
/// list of line items.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct Correction {
    #[serde(default)]
    #[schema(value_type = Object)]
    pub fields: BTreeMap<String, serde_json::Value>,
    pub line_items: Option<Vec<LineItemInput>>,
}

/// A corrected line item.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct LineItemInput {
    pub description: String,
    pub quantity: String,
    pub unit_price_minor: i64,
    pub amount_minor: i64,
}

fn check_correction(c: &Correction) -> Result<(), ExtractError> {
    let mut errors = Vec::new();
    for (name, value) in &c.fields {
        let at = format!("fields.{name}");
        if !is_name(name) {
            errors.push(FieldError::new(
                &at,
                "field names are lowercase letters, digits and _",
            ));
            continue;
        }
        if value.is_null() {
            continue;
        }
        if name.ends_with("_minor") {
            if value.as_i64().is_none() {
                errors.push(FieldError::new(&at, "must be an integer of minor units"));
            }
        } else if name.ends_with("_date") {
            let ok = value
                .as_str()
                .is_some_and(|s| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok());
            if !ok {
                errors.push(FieldError::new(&at, "must be a date like 2025-03-14"));
            }
        } else if name == "currency" {
            if value
                .as_str()
                .and_then(crate::money::parse_currency)
                .is_none()
            {
                errors.push(FieldError::new(&at, "must be an ISO 4217 currency code"));
            }
        } else if !(value.is_string() || value.is_number()) {
            errors.push(FieldError::new(&at, "must be a string or a number"));
        } else if value.as_str().is_some_and(|s| s.len() > 1000) {
            errors.push(FieldError::new(&at, "must be at most 1000 characters"));
        }
    }
    for (i, item) in c.line_items.iter().flatten().enumerate() {
        let at = format!("line_items[{i}]");
        if item.description.trim().is_empty() || item.description.len() > 1000 {
            errors.push(FieldError::new(
                format!("{at}.description"),
                "must be 1–1000 characters",
            ));
        }
        let q = item.quantity.trim();
        let decimal = !q.is_empty()
            && q.split_once('.')
                .map_or(q.bytes().all(|b| b.is_ascii_digit()), |(a, b)| {
                    !a.is_empty()
                        && a.bytes().all(|x| x.is_ascii_digit())
                        && b.bytes().all(|x| x.is_ascii_digit())
                });
        if !decimal {
            errors.push(FieldError::new(
                format!("{at}.quantity"),
                "must be a decimal number like 2.5",
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ExtractError::Invalid(errors))
    }
}

/// Applies a reviewer's corrections on top of the current result (the last correction, or
/// the engine's), re-checks and re-scores it, and stores it beside the original with an
/// `extraction.corrected` audit event — all in one transaction.
pub async fn correct(
    state: &AppState,
    scope: &TenantScope,
    ctx: &AuditContext,
    id: Uuid,
    correction: &Correction,
    expected_version: Option<i64>,
) -> Result<Extraction, ExtractError> {
    check_correction(correction)?;
    let current = get(state, scope, id).await?;
    if let Some(v) = expected_version
        && v != current.version
    {
        return Err(ExtractError::Stale);
    }
    let Some(base) = current.corrected.clone().or(current.result.clone()) else {
        return Err(ExtractError::NotReady);
    };
    let mut fields = ExtractedFields {
        fields: base.fields.clone(),
        line_items: base.line_items.clone(),
    };
    for (name, value) in &correction.fields {
        if value.is_null() {
            fields.fields.remove(name);
            continue;
        }
        let value = if name == "currency" {
            serde_json::json!(value.as_str().and_then(crate::money::parse_currency))
        } else {
            value.clone()
        };
        fields.fields.insert(
            name.clone(),
            Field {
                value,
                confidence: 1.0,
                method: fields::METHOD_REVIEWER.into(),
                source: None,
            },
        );
    }
    if let Some(items) = &correction.line_items {
        fields.line_items = items
            .iter()
            .map(|i| LineItem {
                description: i.description.trim().to_string(),
                quantity: i.quantity.trim().to_string(),
                unit_price_minor: i.unit_price_minor,
                amount_minor: i.amount_minor,
                confidence: 1.0,
            })
            .collect();
    }
    let (issues, confidence, status) = state.extractor.assess(&current.document_type, &fields);
    let corrected = ExtractionResult {
        engine: base.engine.clone(),
        pages: base.pages,
        confidence,
        status: status.to_string(),
        fields: fields.fields,
        line_items: fields.line_items,
        issues,
    };
    let json = serde_json::to_value(&corrected)
        .map_err(|e| StoreError::Other(anyhow::anyhow!("cannot store a correction: {e}")))?;
    let values = |r: &ExtractionResult| -> BTreeMap<String, serde_json::Value> {
        let mut m: BTreeMap<String, serde_json::Value> = r
            .fields
            .iter()
            .map(|(k, f)| (k.clone(), f.value.clone()))
            .collect();
        m.insert(
            "line_items".into(),
            serde_json::to_value(&r.line_items).unwrap_or_default(),
        );
        m
    };
    let changes = Changes::diff(&values(&base), &values(&corrected), &[]);
    let reviewer = match scope.actor() {
        Actor::User(u) => Some(*u),
        Actor::System(_) => None,
    };
    let version = expected_version.unwrap_or(current.version);
    let (json, changes) = (&json, &changes);
    let updated = state
        .db
        .transaction(|tx| {
            Box::pin(async move {
                let ok = store::correct(
                    tx,
                    scope,
                    id,
                    status,
                    confidence,
                    json.clone(),
                    reviewer,
                    Some(version),
                )
                .await?;
                if !ok {
                    return Ok::<_, ExtractError>(false);
                }
                audit::record(
                    tx,
                    scope,
                    ctx,
                    NewEvent::new("extraction.corrected", "extraction", Some(id))
                        .changes(changes.clone())
                        .detail("status", status)
                        .detail("confidence", confidence),
                )
                .await?;
                Ok(true)
            })
        })
        .await?;
    if !updated {
        return Err(ExtractError::Stale);
    }
    get(state, scope, id).await
}

/// The job that runs an extraction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtractDocument {
    pub extraction_id: Uuid,
}

impl JobPayload for ExtractDocument {
    const JOB_TYPE: &'static str = "kernel.extract_document";
}

/// The extraction job type, on the `ocr` queue.
pub fn job() -> JobDefinition {
    JobDefinition::new(run_job)
        .queue("ocr")
        .max_attempts(3)
        .time_limit(Duration::from_secs(600))
}

async fn run_job(ctx: JobContext, job: ExtractDocument) -> Result<serde_json::Value, JobError> {
    execute(&ctx, job.extraction_id).await
}

/// Runs extraction `id` of the job's organization (what the extraction job does; apps whose
/// own job was enqueued by [`start_with`] call it): reads the file, runs the engines and
/// stores the result, `failed` with the reason when nothing could be read. A finished
/// extraction is left as it is. Returns `{"status", "engine"}`.
pub async fn execute(ctx: &JobContext, id: Uuid) -> Result<serde_json::Value, JobError> {
    let scope = ctx
        .scope
        .clone()
        .ok_or_else(|| JobError::permanent("an extraction job needs an organization"))?;
    let state = &ctx.state;
    let Some(row) = store::get(&state.db, &scope, id).await? else {
        return Err(JobError::permanent("the extraction no longer exists"));
    };
    // A job run twice (a worker died after finishing) changes nothing the second time.
    if !store::mark_running(&state.db, &scope, id).await? {
        return Ok(serde_json::json!({ "status": row.status }));
    }
    let fail = |reason: String| store::Finish {
        status: "failed",
        engine: None,
        confidence: None,
        result: None,
        failure_reason: Some(reason),
    };
    let (file, bytes) = match state.files.get(&state.db, &scope, &row.file_sha256).await {
        Ok(found) => found,
        Err(crate::storage::FileError::NotFound) => {
            store::finish(&state.db, &scope, id, fail("the file was deleted".into())).await?;
            return Ok(serde_json::json!({ "status": "failed" }));
        }
        Err(e) => return Err(JobError::retry(format!("cannot read the file: {e}"))),
    };
    let Some(kind) = file.kind() else {
        store::finish(
            &state.db,
            &scope,
            id,
            fail("the file's type is not supported".into()),
        )
        .await?;
        return Ok(serde_json::json!({ "status": "failed" }));
    };
    let outcome = state
        .extractor
        .run(&bytes, kind, &row.document_type, Some(&scope))
        .await;
    let finish =
        match outcome {
            Ok(result) => store::Finish {
                status: if result.status == "completed" {
                    "completed"
                } else {
                    "review_required"
                },
                engine: Some(result.engine.clone()),
                confidence: Some(result.confidence),
                result: Some(serde_json::to_value(&result).map_err(|e| {
                    JobError::permanent(format!("the result cannot be stored: {e}"))
                })?),
                failure_reason: None,
            },
            Err(RunError::EngineFailed(reason)) if ctx.attempt < ctx.max_attempts => {
                return Err(JobError::retry(reason));
            }
            Err(e) => fail(e.to_string()),
        };
    let status = finish.status;
    let engine = finish.engine.clone();
    store::finish(&state.db, &scope, id, finish).await?;
    Ok(serde_json::json!({ "status": status, "engine": engine }))
}
