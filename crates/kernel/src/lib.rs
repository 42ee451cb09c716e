//! The Keel kernel: what every app gets.
//!
//! - [`config`] — layered, validated configuration with redacted secrets;
//! - [`store`] — one handle over SQLite or PostgreSQL, queries written once, migrations;
//! - [`http`] — the layer stack, problem+json errors, extractors;
//! - [`module`] — the seam apps plug into;
//! - [`server`] — start-up and graceful shutdown;
//! - [`ops`] — liveness, readiness and the OpenAPI document;
//! - [`tenancy`] — the tenant scope that guards tenant-owned rows;
//! - [`jobs`] — durable background jobs, their workers and the scheduler;
//! - [`observe`] — logging.

pub mod config;
pub mod http;
pub mod jobs;
pub mod module;
pub mod observe;
pub mod ops;
pub mod server;
pub mod state;
pub mod store;
pub mod tenancy;

/// The kernel's own module name (it cannot be switched off).
pub const KERNEL_MODULE: &str = "kernel";

pub use config::Config;
pub use module::{Module, ModuleRouter};
pub use server::Application;
pub use state::AppState;
