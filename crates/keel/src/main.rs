//! `keel`: the one binary. `keel serve` runs the HTTP API with the job workers and the
//! scheduler; `keel worker` runs only job queues (scale-out); `keel migrate`, `keel config`,
//! `keel keys` and `keel audit` are the operator's tools.
//!
//! Exit codes: 0 success (and a clean shutdown), 1 failure, 2 invalid configuration,
//! 3 shutdown whose grace period ran out before in-flight requests or running jobs finished.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use keel_kernel::config::{Config, ConfigError, ConfigSource, ensure_dev_secrets, random_hex};
use keel_kernel::module::Module;
use keel_kernel::server::{self, Application};
use keel_kernel::store::{Db, migrate};

/// jemalloc instead of the C library's allocator: see `Cargo.toml`.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's figures for `/metrics` (`keel_allocator_bytes`). Its statistics are a snapshot
/// refreshed by advancing the epoch.
#[cfg(feature = "jemalloc")]
fn allocator_stats() -> Option<keel_kernel::metrics::AllocatorStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(keel_kernel::metrics::AllocatorStats {
        allocated: stats::allocated::read().ok()? as u64,
        active: stats::active::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
        retained: stats::retained::read().ok()? as u64,
    })
}

/// For the long-running commands (`serve`, `worker`), once logging is up: freed pages go
/// back to the OS on jemalloc's decay schedule from its own thread, instead of only when the
/// arena that holds them next allocates (an arena whose threads went quiet after a burst of
/// blocking work otherwise keeps them resident).
fn purge_freed_memory_in_the_background() {
    #[cfg(feature = "jemalloc")]
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc's background purging could not start; freed memory is returned only as arenas allocate");
    }
}

/// The apps this binary ships, in start-up order. One line per app.
fn modules() -> Vec<Arc<dyn Module>> {
    vec![Arc::new(keel_trade::TradeModule)]
}

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Keel: a production-grade, multi-tenant business backend"
)]
struct Cli {
    /// Configuration file (default: ./keel.toml if present; also KEEL_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API, the job workers and the scheduler (migrations are applied first
    /// unless configured otherwise).
    Serve {
        /// On first start, create the demo organization and data (as `keel demo seed`) and
        /// print the demo users' passwords.
        #[arg(long)]
        demo: bool,
    },
    /// Demo data for trying Keel out and for load tests.
    Demo {
        #[command(subcommand)]
        action: DemoAction,
    },
    /// Run job queues only, without an HTTP listener (scale-out workers).
    Worker {
        /// Queues to work, comma separated (default: `jobs.queues`, or every queue).
        #[arg(long, value_delimiter = ',')]
        queues: Vec<String>,
    },
    /// Inspect or apply database migrations.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Key material.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// The audit trail: verify its hash chains, prune by retention.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
}

#[derive(Subcommand)]
enum DemoAction {
    /// Create the demo organization (a user per role, printed with generated passwords) and
    /// each app's demo data; run again to add another batch. Prints a JSON report.
    Seed {
        /// Shipments (and proportionate documents, payments, rates) to create.
        #[arg(long, default_value_t = 200)]
        shipments: u64,
        /// The demo users' password (default: generated and printed once).
        #[arg(long, env = "KEEL_DEMO_PASSWORD")]
        password: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Walk the hash chains and report the first broken link of each (exit 1 if any).
    Verify {
        /// Only this organization's chain (the nil UUID is the platform chain).
        #[arg(long)]
        org: Option<uuid::Uuid>,
    },
    /// Delete events older than `[audit] retention_days`, behind a recorded checkpoint.
    Prune,
}

#[derive(Subcommand)]
enum MigrateAction {
    /// List every migration of every enabled module and whether it is applied.
    Status,
    /// Apply pending migrations.
    Run,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the configuration and print the effective values, secrets redacted.
    Check,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Print a new random JWT signing secret and encryption key, as environment variables.
    Generate,
    /// Show the active key, the known keys and, per encrypted column, how many values each
    /// key encrypted (and rotations in progress). Exit 1 while values are left to rotate.
    Status,
    /// Re-encrypt every registered encrypted column under the active key, in batches.
    /// Put the new key in `encryption_key` and the old one in `previous_encryption_keys`
    /// first. Resumable and idempotent; audited in the platform chain.
    Rotate {
        /// Rows per transaction.
        #[arg(long, default_value_t = 500)]
        batch_size: u32,
    },
}

const EXIT_FAILURE: u8 = 1;
const EXIT_CONFIG: u8 = 2;
const EXIT_UNCLEAN_SHUTDOWN: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "jemalloc")]
    keel_kernel::metrics::set_allocator_probe(allocator_stats);
    let source = ConfigSource {
        file: cli.config.clone(),
    };
    if let Command::Keys {
        action: KeysAction::Generate,
    } = cli.command
    {
        println!("KEEL_JWT_SECRET={}", random_hex(48));
        println!("KEEL_ENCRYPTION_KEY={}", random_hex(32));
        return ExitCode::SUCCESS;
    }
    let mut config = match load(&source) {
        Ok(c) => c,
        Err(e) => return config_failure(&e),
    };
    // What the apps' records hold that logs must never show (set before any logging starts).
    config.log.redaction.module_fields = keel_kernel::module::log_redacted_fields(&modules());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { demo } => serve(config, demo).await,
            Command::Demo {
                action:
                    DemoAction::Seed {
                        shipments,
                        password,
                    },
            } => demo_seed(config, shipments, password).await,
            Command::Worker { queues } => worker(config, queues).await,
            Command::Migrate { action } => migrate_cmd(config, action).await,
            Command::Audit { action } => audit_cmd(config, action).await,
            Command::Config {
                action: ConfigAction::Check,
            } => {
                print!("{}", config.to_redacted_toml());
                Ok(ExitCode::SUCCESS)
            }
            Command::Keys { action } => keys_cmd(config, action).await,
        }
    });
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(config_error) = e.downcast_ref::<ConfigError>() {
                config_failure(config_error)
            } else {
                tracing::error!(error = format!("{e:#}"), "keel stopped with an error");
                eprintln!("keel: {e:#}");
                ExitCode::from(EXIT_FAILURE)
            }
        }
    };
    // The server's log lines are written by a thread of their own: write what is queued.
    keel_kernel::observe::flush_logs();
    code
}

fn load(source: &ConfigSource) -> Result<Config, ConfigError> {
    let config = Config::load(source)?;
    config.validate()?;
    Ok(config)
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!(
        "keel: invalid configuration ({} problem(s)):",
        e.problems.len()
    );
    for p in &e.problems {
        eprintln!("  - {p}");
    }
    ExitCode::from(EXIT_CONFIG)
}

/// Builds the application without serving it (on an ephemeral port, so a running server's
/// address is not needed) and seeds the demo data.
async fn demo_seed(
    mut config: Config,
    shipments: u64,
    password: Option<String>,
) -> anyhow::Result<ExitCode> {
    ensure_dev_secrets(&mut config)?;
    keel_kernel::observe::init_cli_logging(&config);
    config.listen = "127.0.0.1:0".into();
    config.metrics.listen = None;
    let app = Application::build(config, modules()).await?;
    let started = std::time::Instant::now();
    let report = keel_kernel::demo::seed(
        app.state(),
        &keel_kernel::demo::DemoOptions {
            size: shipments,
            password,
        },
    )
    .await?;
    let mut out = serde_json::to_value(&report)?;
    out["seconds"] = serde_json::json!(started.elapsed().as_secs_f64());
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

async fn serve(mut config: Config, demo: bool) -> anyhow::Result<ExitCode> {
    let dev_secrets = ensure_dev_secrets(&mut config)?;
    keel_kernel::observe::init_logging(&config);
    purge_freed_memory_in_the_background();
    if let Some((path, created)) = dev_secrets {
        let verb = if created { "GENERATED" } else { "USING" };
        let banner = format!(
            "DEVELOPMENT MODE: {verb} signing and encryption secrets in {} (owner-only). \
             Never use these in production: set KEEL_ENV=production with KEEL_JWT_SECRET and KEEL_ENCRYPTION_KEY.",
            path.display()
        );
        eprintln!("\n!!! {banner}\n");
        tracing::warn!("{banner}");
    }
    let app = Application::build(config, modules()).await?;
    if demo {
        let state = app.state();
        let admin = keel_kernel::demo::USERS[0].1;
        if keel_kernel::auth::store::user_by_email(&state.db, admin)
            .await?
            .is_none()
        {
            let report = keel_kernel::demo::seed(
                state,
                &keel_kernel::demo::DemoOptions {
                    size: 200,
                    password: std::env::var("KEEL_DEMO_PASSWORD").ok(),
                },
            )
            .await?;
            eprintln!(
                "\nDemo organization `{}` created. Sign in as:",
                report.organization
            );
            for a in &report.accounts {
                eprintln!(
                    "  {:<8} {}  password: {}",
                    a.role,
                    a.email,
                    a.password.as_deref().unwrap_or("(unchanged)")
                );
            }
            eprintln!();
        }
    }
    let report = app.run_until_stopped(server::shutdown_signal()).await?;
    flush_traces().await;
    Ok(if report.clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNCLEAN_SHUTDOWN)
    })
}

/// Sends spans still buffered to the OTLP collector (a no-op when export is off).
async fn flush_traces() {
    let _ = tokio::task::spawn_blocking(keel_kernel::observe::trace::shutdown).await;
}

async fn worker(mut config: Config, queues: Vec<String>) -> anyhow::Result<ExitCode> {
    let queues: Vec<String> = queues
        .into_iter()
        .map(|q| q.trim().to_string())
        .filter(|q| !q.is_empty())
        .collect();
    if let Some(bad) = queues
        .iter()
        .find(|q| !keel_kernel::config::is_queue_name(q))
    {
        return Err(ConfigError {
            problems: vec![format!(
                "--queues: `{bad}` is not a queue name (lowercase letters, digits, _ - .)"
            )],
        }
        .into());
    }
    ensure_dev_secrets(&mut config)?;
    keel_kernel::observe::init_logging(&config);
    purge_freed_memory_in_the_background();
    let report = server::run_worker(
        config,
        modules(),
        server::WorkerOptions { queues },
        server::shutdown_signal(),
    )
    .await?;
    flush_traces().await;
    Ok(if report.clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNCLEAN_SHUTDOWN)
    })
}

async fn audit_cmd(config: Config, action: AuditAction) -> anyhow::Result<ExitCode> {
    use keel_kernel::audit;
    keel_kernel::observe::init_cli_logging(&config);
    let registry = server::registry(&config, modules())?;
    let db = Db::connect(&config).await?;
    // The audit tables must exist and match this build.
    migrate::verify(&db, &registry.migrations()).await?;
    let label = |org: uuid::Uuid| {
        if org == audit::PLATFORM_ORG {
            "platform".to_string()
        } else {
            org.to_string()
        }
    };
    let code = match action {
        AuditAction::Verify { org } => {
            let orgs = match org {
                Some(o) => vec![o],
                None => audit::chains(&db).await?,
            };
            let mut broken = 0;
            for org in orgs {
                let r = audit::verify(&db, org).await?;
                match &r.broken {
                    None => println!(
                        "{}: ok ({} events checked{}{})",
                        label(org),
                        r.events_checked,
                        r.checkpoint
                            .as_ref()
                            .map(|c| format!(", from checkpoint {}", c.seq))
                            .unwrap_or_default(),
                        r.head_hash
                            .as_ref()
                            .map(|h| format!(", head {h}"))
                            .unwrap_or_default(),
                    ),
                    Some(b) => {
                        broken += 1;
                        println!(
                            "{}: BROKEN at event {}{}: {}",
                            label(org),
                            b.seq,
                            b.event_id.map(|id| format!(" ({id})")).unwrap_or_default(),
                            b.reason
                        );
                    }
                }
            }
            if broken > 0 {
                ExitCode::from(EXIT_FAILURE)
            } else {
                ExitCode::SUCCESS
            }
        }
        AuditAction::Prune => {
            let report = audit::prune(&db, &config.audit, keel_kernel::store::now()).await?;
            if config.audit.retention_days.is_none() {
                println!(
                    "audit.retention_days is not set: audit events are kept forever; nothing to prune"
                );
            } else {
                for c in &report.chains {
                    println!(
                        "{}: {} events deleted; checkpoint at {}{}",
                        label(c.org_id),
                        c.events_deleted,
                        c.checkpoint_seq,
                        if c.new_checkpoint { " (new)" } else { "" }
                    );
                }
            }
            println!(
                "{} delivered outbox messages removed",
                report.outbox_deleted
            );
            ExitCode::SUCCESS
        }
    };
    db.close().await;
    Ok(code)
}

async fn keys_cmd(mut config: Config, action: KeysAction) -> anyhow::Result<ExitCode> {
    use keel_kernel::crypto::{KeyRing, keys};
    // In development the key lives in the data directory's generated secrets.
    ensure_dev_secrets(&mut config)?;
    keel_kernel::observe::init_cli_logging(&config);
    let registry = server::registry(&config, modules())?;
    let ring = KeyRing::from_config(&config)?;
    let db = Db::connect(&config).await?;
    migrate::verify(&db, &registry.migrations()).await?;
    let tables = registry.encrypted_tables();
    let code = match action {
        KeysAction::Generate => ExitCode::SUCCESS,
        KeysAction::Status => {
            let status = keys::status(&db, &ring, &tables).await?;
            println!("active key: {}", status.active_kid);
            println!("known keys: {}", status.known_kids.join(", "));
            for c in &status.columns {
                let counts = if c.by_key.is_empty() {
                    "no values".to_string()
                } else {
                    c.by_key
                        .iter()
                        .map(|(kid, n)| {
                            let note = if *kid == status.active_kid {
                                " (active)"
                            } else if kid == "plaintext" {
                                ""
                            } else if status.known_kids.contains(kid) {
                                " (previous)"
                            } else {
                                " (NOT CONFIGURED)"
                            };
                            format!("{kid}{note}: {n}")
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                println!("{}.{}: {counts}", c.table, c.column);
            }
            for p in &status.rotations {
                println!(
                    "rotation to {} of {}.{}: {} rotated, {} failed, {}",
                    p.target_kid,
                    p.table_name,
                    p.column_name,
                    p.rows_rotated,
                    p.rows_failed,
                    p.finished_at
                        .map(|t| format!("finished {}", t.to_rfc3339()))
                        .unwrap_or_else(|| "in progress".into())
                );
            }
            let left = status.outstanding();
            if left > 0 {
                println!("{left} value(s) not under the active key: run `keel keys rotate`");
                ExitCode::from(EXIT_FAILURE)
            } else {
                ExitCode::SUCCESS
            }
        }
        KeysAction::Rotate { batch_size } => {
            let report = keys::rotate(&db, &ring, &tables, batch_size).await?;
            for c in &report.columns {
                println!(
                    "{}.{}: {} re-encrypted, {} failed{}",
                    c.table,
                    c.column,
                    c.rotated,
                    c.failed,
                    if c.resumed { " (resumed)" } else { "" }
                );
            }
            for f in &report.failures {
                println!(
                    "  cannot re-encrypt {}.{} row {}: {}",
                    f.table, f.column, f.row, f.reason
                );
            }
            println!(
                "every value is now under key {}{}",
                report.target_kid,
                if report.failed() > 0 {
                    " except the failures above"
                } else {
                    ""
                }
            );
            if report.failed() > 0 {
                ExitCode::from(EXIT_FAILURE)
            } else {
                ExitCode::SUCCESS
            }
        }
    };
    db.close().await;
    Ok(code)
}

async fn migrate_cmd(config: Config, action: MigrateAction) -> anyhow::Result<ExitCode> {
    keel_kernel::observe::init_cli_logging(&config);
    let registry = server::registry(&config, modules())?;
    let db = Db::connect(&config).await?;
    let modules = registry.migrations();
    let code = match action {
        MigrateAction::Status => {
            let all = migrate::status(&db, &modules).await?;
            println!(
                "{:<12} {:>7}  {:<32} {:<9} applied at",
                "module", "version", "name", "state"
            );
            let mut problem = false;
            for s in &all {
                let state = serde_json::to_value(&s.state)?;
                let state = state.as_str().unwrap_or("?").to_string();
                problem |= matches!(
                    s.state,
                    migrate::MigrationState::Modified | migrate::MigrationState::Unknown
                );
                println!(
                    "{:<12} {:>7}  {:<32} {:<9} {}",
                    s.module,
                    s.version,
                    s.name,
                    state,
                    s.applied_at
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "-".into())
                );
            }
            if problem {
                ExitCode::from(EXIT_FAILURE)
            } else {
                ExitCode::SUCCESS
            }
        }
        MigrateAction::Run => {
            let applied = migrate::run(&db, &modules).await?;
            if applied.is_empty() {
                println!("nothing to apply: the schema is current");
            }
            for name in applied {
                println!("applied {name}");
            }
            ExitCode::SUCCESS
        }
    };
    db.close().await;
    Ok(code)
}
