//! The Keel kernel: what every app gets.
//!
//! - [`config`] — layered, validated configuration with redacted secrets;
//! - [`store`] — one handle over SQLite or PostgreSQL, queries written once, migrations;
//! - [`http`] — the layer stack, problem+json errors, extractors;
//! - [`limits`] — rate-limit policies and the GCRA engine (Redis or in process);
//! - [`module`] — the seam apps plug into;
//! - [`server`] — start-up and graceful shutdown;
//! - [`ops`] — liveness, readiness and the OpenAPI document;
//! - [`tenancy`] — the tenant scope that guards tenant-owned rows;
//! - [`audit`] — the append-only, hash-chained audit trail and its transactional outbox;
//! - [`auth`] — identity, sessions, roles and permissions; [`partners`] — business partners;
//! - [`crypto`] — field encryption, blind indexes, key rotation; [`mail`] — the mail seam;
//! - [`integrations`] — the resilient outbound client, the LLM client, webhooks;
//! - [`cache`] — the shared cache (in process and Redis, tenant-keyed, invalidated on every node);
//! - [`jobs`] — durable background jobs, their workers and the scheduler;
//! - [`storage`] — uploaded files, content-addressed per organization (local or S3);
//! - [`extract`] — document extraction (OCR) of invoices and trade documents;
//! - [`realtime`] — live messages over WebSocket, SSE and long-poll, fanned out across nodes;
//! - [`notify`] — notifications: in-app, email and SMS, per-user preferences;
//! - [`observe`] — logging and tracing; [`metrics`] — Prometheus and the admin summaries;
//! - [`redact`] — masking of personal data and secrets in every log line.

pub mod audit;
pub mod auth;
pub mod cache;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod extract;
pub mod housekeeping;
pub mod http;
pub mod idempotency;
pub mod integrations;
pub mod jobs;
pub mod limits;
pub mod mail;
pub mod metrics;
pub mod module;
pub mod money;
pub mod notify;
pub mod observe;
pub mod ops;
pub mod partners;
pub mod realtime;
pub mod redact;
pub mod server;
pub mod state;
pub mod storage;
pub mod store;
pub mod tenancy;
pub mod time;

/// The kernel's own module name (it cannot be switched off).
pub const KERNEL_MODULE: &str = "kernel";

pub use config::Config;
pub use module::{Module, ModuleRouter};
pub use server::Application;
pub use state::AppState;
