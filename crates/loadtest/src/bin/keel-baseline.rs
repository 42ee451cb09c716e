//! A bare axum server for calibrating a machine: `GET /health` answers `{"status":"ok"}`
//! with no middleware, no logging and no state, on the same runtime settings as `keel serve`
//! (tokio's multi-threaded runtime, one worker per core). `keel-load max --path /health`
//! against it shows what the machine and the load generator can do at best, so Keel's own
//! figures can be read as a share of it (PERFORMANCE.md).
//!
//! ```sh
//! keel-baseline 127.0.0.1:9090 &
//! keel-load --host http://127.0.0.1:9090 max --path /health -c 64 --duration 30s
//! ```

use axum::{Json, Router, routing::get};
use serde::Serialize;

#[derive(Serialize)]
struct Liveness {
    status: &'static str,
}

async fn health() -> Json<Liveness> {
    Json(Liveness { status: "ok" })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9090".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("keel-baseline listening on {}", listener.local_addr()?);
    axum::serve(listener, Router::new().route("/health", get(health))).await?;
    Ok(())
}
