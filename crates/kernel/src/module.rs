//! The module seam: how an app plugs into the kernel.
//!
//! A [`Module`] names itself and hands the kernel its migrations, its routes (each with its
//! OpenAPI description, by construction: [`ModuleRouter`] accepts only documented routes),
//! the permissions it defines, its job types, its schedules and test fixtures. The binary
//! lists the modules it enables; configuration can switch any off. [`Registry`] checks the
//! set once at start-up (unique names, no two modules claiming one permission or job type).

use std::collections::HashSet;
use std::sync::Arc;

use futures::future::BoxFuture;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

pub use crate::jobs::{Cadence, JobDefinition, JobError, JobHandler, ScheduleDefinition};
use crate::state::AppState;
use crate::store::migrate::{Migration, ModuleMigrations};
use crate::tenancy::TenantScope;

/// A permission an app defines, e.g. `trade.shipments.write`, with the organization roles
/// that hold it by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub name: &'static str,
    pub description: &'static str,
    pub default_roles: &'static [&'static str],
}

/// A sample resource a fixture created, for the isolation probe.
#[derive(Debug, Clone)]
pub struct FixtureResource {
    /// Concrete paths that address the resource (e.g. `/api/v1/trade/shipments/<id>`).
    pub paths: Vec<String>,
}

type FixtureFn = Arc<
    dyn Fn(AppState, TenantScope) -> BoxFuture<'static, anyhow::Result<FixtureResource>>
        + Send
        + Sync,
>;

/// Creates a sample of one resource inside a tenant scope (used by tests only).
#[derive(Clone)]
pub struct Fixture {
    pub resource: &'static str,
    pub create: FixtureFn,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("resource", &self.resource)
            .finish()
    }
}

/// A route's rate-limit policy, as a module declared it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicy {
    pub method: http::Method,
    /// The route template, e.g. `/api/v1/auth/login`.
    pub path: String,
    pub policy: &'static str,
}

/// A module's routes. Only documented routes can be added, so the OpenAPI document and the
/// router cannot drift apart. Routes may name their rate-limit policy; the others fall under
/// the default policies (`authenticated` per organization, `anonymous` per client IP).
pub struct ModuleRouter {
    router: OpenApiRouter<AppState>,
    policies: Vec<RoutePolicy>,
}

impl Default for ModuleRouter {
    fn default() -> Self {
        Self::new()
    }
}

fn methods_of(
    item: &utoipa::openapi::path::PathItem,
) -> Vec<(http::Method, &utoipa::openapi::path::Operation)> {
    [
        (http::Method::GET, &item.get),
        (http::Method::PUT, &item.put),
        (http::Method::POST, &item.post),
        (http::Method::DELETE, &item.delete),
        (http::Method::PATCH, &item.patch),
        (http::Method::HEAD, &item.head),
        (http::Method::OPTIONS, &item.options),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_ref().map(|o| (m, o)))
    .collect()
}

impl ModuleRouter {
    pub fn new() -> Self {
        Self {
            router: OpenApiRouter::new(),
            policies: Vec::new(),
        }
    }

    /// Adds routes made with `utoipa_axum::routes!(handler, …)`: each handler carries its
    /// `#[utoipa::path]` description.
    pub fn routes(mut self, routes: UtoipaMethodRouter<AppState>) -> Self {
        self.router = self.router.routes(routes);
        self
    }

    /// Adds routes under a named rate-limit policy (e.g. `auth.login`). The policy is also
    /// written into the OpenAPI operation as `x-rate-limit-policy`.
    pub fn limited(mut self, policy: &'static str, routes: UtoipaMethodRouter<AppState>) -> Self {
        let (schemas, mut paths, method_router) = routes;
        for (path, item) in paths.paths.iter_mut() {
            for (method, _) in methods_of(item) {
                self.policies.push(RoutePolicy {
                    method,
                    path: path.clone(),
                    policy,
                });
            }
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let ext = op.extensions.get_or_insert_with(Default::default);
                ext.insert("x-rate-limit-policy".into(), serde_json::json!(policy));
            }
        }
        self.router = self.router.routes((schemas, paths, method_router));
        self
    }

    pub fn merge(mut self, other: ModuleRouter) -> Self {
        self.router = self.router.merge(other.router);
        self.policies.extend(other.policies);
        self
    }

    pub(crate) fn into_parts(self) -> (OpenApiRouter<AppState>, Vec<RoutePolicy>) {
        (self.router, self.policies)
    }
}

/// An app (or a kernel part) plugged into Keel.
pub trait Module: Send + Sync + 'static {
    /// Unique, lowercase; also the key to switch it off in configuration.
    fn name(&self) -> &'static str;

    /// Checks this module's settings (`[modules.<name>]`, an empty object when absent); one
    /// message per problem, naming the key. Read them with
    /// [`AppState::module_settings`](crate::state::AppState::module_settings).
    fn settings_problems(&self, _settings: &serde_json::Value) -> Vec<String> {
        Vec::new()
    }

    /// Schema changes, in order; each module's versions are its own.
    fn migrations(&self) -> Vec<Migration> {
        Vec::new()
    }

    fn routes(&self) -> ModuleRouter {
        ModuleRouter::new()
    }

    fn permissions(&self) -> Vec<Permission> {
        Vec::new()
    }

    /// Organization roles this module adds (e.g. committees in complaint handling).
    fn roles(&self) -> Vec<crate::auth::access::Role> {
        Vec::new()
    }

    /// The job types this module handles (see [`crate::jobs`]).
    fn jobs(&self) -> Vec<JobDefinition> {
        Vec::new()
    }

    /// Rate-limit policies this module's routes name (e.g. forex `trade.forex.create`).
    fn rate_limit_policies(&self) -> Vec<crate::limits::Policy> {
        Vec::new()
    }

    /// Periodic tasks; each names a job type of an enabled module.
    fn schedules(&self) -> Vec<ScheduleDefinition> {
        Vec::new()
    }

    /// Fields this module's document types carry beyond an invoice's (e.g. a shipping bill
    /// number); a document type is known once a module registers a field for it.
    fn document_fields(&self) -> Vec<crate::extract::DocumentField> {
        Vec::new()
    }

    /// Fills the demo organization with realistic data (`keel demo seed`); returns a one-line
    /// summary of what it created. See [`crate::demo`].
    fn demo(&self) -> Option<crate::demo::DemoFn> {
        None
    }

    /// Creates sample resources for the isolation probe.
    fn fixtures(&self) -> Vec<Fixture> {
        Vec::new()
    }

    /// Resource channel families this module serves (e.g. `orders:<id>`), each with who may
    /// subscribe (see [`crate::realtime`]).
    fn realtime_channels(&self) -> Vec<crate::realtime::ChannelDefinition> {
        Vec::new()
    }

    /// The channels a committed audit event is published on (the outbox relay calls this for
    /// every event of every module; return nothing for events this module does not map).
    fn realtime_channels_for(
        &self,
        _event: &crate::audit::AuditEvent,
    ) -> Vec<crate::realtime::Channel> {
        Vec::new()
    }

    /// Notification types this module sends, with their templates (see [`crate::notify`]).
    fn notification_types(&self) -> Vec<crate::notify::NotificationType> {
        Vec::new()
    }

    /// The encrypted columns of this module's tables, so `keel keys status` can count them
    /// per key and `keel keys rotate` can re-encrypt them (see [`crate::crypto::keys`]).
    fn encrypted_columns(&self) -> Vec<crate::crypto::keys::EncryptedTable> {
        Vec::new()
    }

    /// Field names of this module's records that no log line may show in clear (beyond the
    /// kernel's built-in list: passwords, tokens, emails, account numbers, …). Masked fully
    /// wherever they appear — JSON keys at any depth, `key=value` and `key: value` in text,
    /// `?debug` output of whole structs — as `log.redaction.extra_fields` are (see
    /// [`crate::redact`]). Matched by name segment, case-insensitive.
    fn log_redacted_fields(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// The sensitive field names of `modules`, for [`crate::redact::RedactionConfig::module_fields`]
/// (the binary sets it before logging starts, so the first line is already masked).
pub fn log_redacted_fields(modules: &[Arc<dyn Module>]) -> Vec<String> {
    let mut names: Vec<String> = modules
        .iter()
        .flat_map(|m| m.log_redacted_fields())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The enabled modules, checked for consistency.
#[derive(Clone)]
pub struct Registry {
    modules: Arc<Vec<Arc<dyn Module>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.modules.iter().map(|m| m.name()))
            .finish()
    }
}

impl Registry {
    /// Keeps the modules not switched off, and checks them: every problem is reported.
    pub fn new(
        modules: Vec<Arc<dyn Module>>,
        disabled: &[String],
    ) -> Result<Self, crate::config::ConfigError> {
        let mut problems = Vec::new();
        let known: HashSet<&str> = modules.iter().map(|m| m.name()).collect();
        for d in disabled {
            if d == crate::KERNEL_MODULE {
                problems.push("disabled_modules: the kernel module cannot be switched off".into());
            } else if !known.contains(d.as_str()) {
                problems.push(format!(
                    "disabled_modules: `{d}` is not a module of this build (known: {})",
                    {
                        let mut k: Vec<&str> = known.iter().copied().collect();
                        k.sort_unstable();
                        k.join(", ")
                    }
                ));
            }
        }
        let enabled: Vec<Arc<dyn Module>> = modules
            .into_iter()
            .filter(|m| !disabled.iter().any(|d| d == m.name()))
            .collect();
        let mut names = HashSet::new();
        let mut permissions: HashSet<&str> = crate::auth::access::kernel_permissions()
            .iter()
            .map(|p| p.name)
            .collect();
        let mut roles: HashSet<&str> = crate::auth::access::kernel_roles()
            .iter()
            .map(|r| r.name)
            .chain([crate::auth::access::SUPER_ADMIN])
            .collect();
        let mut job_types = HashSet::new();
        let mut schedules = HashSet::new();
        let mut channel_prefixes: HashSet<&str> = ["user", "org"].into_iter().collect();
        let mut notification_types = HashSet::new();
        for m in &enabled {
            if !names.insert(m.name()) {
                problems.push(format!("module `{}` is listed twice", m.name()));
            }
            let mut versions = HashSet::new();
            for mig in m.migrations() {
                if !versions.insert(mig.version) {
                    problems.push(format!(
                        "module `{}` has two migrations numbered {}",
                        m.name(),
                        mig.version
                    ));
                }
            }
            for p in m.permissions() {
                if !permissions.insert(p.name) {
                    problems.push(format!("permission `{}` is defined twice", p.name));
                }
            }
            for r in m.roles() {
                if !roles.insert(r.name) {
                    problems.push(format!("role `{}` is defined twice", r.name));
                }
            }
            for j in m.jobs() {
                if !job_types.insert(j.job_type) {
                    problems.push(format!("job type `{}` is defined twice", j.job_type));
                }
                if !crate::config::is_queue_name(j.queue) {
                    problems.push(format!(
                        "job type `{}`: `{}` is not a queue name (lowercase letters, digits, _ - .)",
                        j.job_type, j.queue
                    ));
                }
                if j.max_attempts == Some(0) {
                    problems.push(format!(
                        "job type `{}`: max_attempts must be at least 1",
                        j.job_type
                    ));
                }
                if j.time_limit.is_some_and(|t| t.is_zero()) {
                    problems.push(format!(
                        "job type `{}`: the time limit must be greater than 0",
                        j.job_type
                    ));
                }
            }
            for c in m.realtime_channels() {
                if crate::realtime::Channel::parse(&format!("{}:x", c.prefix)).is_err() {
                    problems.push(format!(
                        "realtime channel prefix `{}` is not lowercase letters, digits, _ - :",
                        c.prefix
                    ));
                }
                if !channel_prefixes.insert(c.prefix) {
                    problems.push(format!(
                        "realtime channel prefix `{}` is reserved or defined twice",
                        c.prefix
                    ));
                }
            }
            for t in m.notification_types() {
                if !notification_types.insert(t.name) {
                    problems.push(format!("notification type `{}` is defined twice", t.name));
                }
                problems.extend(t.problems());
            }
            for s in m.schedules() {
                if !schedules.insert(s.name) {
                    problems.push(format!("schedule `{}` is defined twice", s.name));
                }
                if let Err(e) = crate::jobs::scheduler::Ticker::new(&s.cadence) {
                    problems.push(format!("schedule `{}`: {e}", s.name));
                }
            }
        }
        let mut encrypted = HashSet::new();
        for m in &enabled {
            for t in m.encrypted_columns() {
                problems.extend(t.problems(m.name()));
                for c in &t.columns {
                    if !encrypted.insert((t.table, c.name)) {
                        problems.push(format!(
                            "encrypted column `{}.{}` is registered twice",
                            t.table, c.name
                        ));
                    }
                }
            }
        }
        // Checked once every module is known: a schedule may use another module's job type.
        for m in &enabled {
            for s in m.schedules() {
                if !job_types.contains(s.job_type) {
                    problems.push(format!(
                        "schedule `{}` enqueues job type `{}`, which no enabled module handles",
                        s.name, s.job_type
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(Self {
                modules: Arc::new(enabled),
            })
        } else {
            Err(crate::config::ConfigError { problems })
        }
    }

    pub fn modules(&self) -> &[Arc<dyn Module>] {
        &self.modules
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.modules.iter().map(|m| m.name()).collect()
    }

    pub fn migrations(&self) -> Vec<ModuleMigrations> {
        self.modules
            .iter()
            .map(|m| ModuleMigrations {
                module: m.name(),
                migrations: m.migrations(),
            })
            .collect()
    }

    pub fn permissions(&self) -> Vec<Permission> {
        self.modules.iter().flat_map(|m| m.permissions()).collect()
    }

    pub fn roles(&self) -> Vec<crate::auth::access::Role> {
        self.modules.iter().flat_map(|m| m.roles()).collect()
    }

    /// Every job type of the enabled modules.
    pub fn jobs(&self) -> Vec<JobDefinition> {
        self.modules.iter().flat_map(|m| m.jobs()).collect()
    }

    /// Every schedule of the enabled modules.
    pub fn schedules(&self) -> Vec<ScheduleDefinition> {
        self.modules.iter().flat_map(|m| m.schedules()).collect()
    }

    /// Every document field of the enabled modules.
    pub fn document_fields(&self) -> Vec<crate::extract::DocumentField> {
        self.modules
            .iter()
            .flat_map(|m| m.document_fields())
            .collect()
    }

    /// Every resource channel family of the enabled modules.
    pub fn realtime_channels(&self) -> Vec<crate::realtime::ChannelDefinition> {
        self.modules
            .iter()
            .flat_map(|m| m.realtime_channels())
            .collect()
    }

    /// The channels every enabled module maps an audit event to.
    pub fn realtime_channels_for(
        &self,
        event: &crate::audit::AuditEvent,
    ) -> Vec<crate::realtime::Channel> {
        self.modules
            .iter()
            .flat_map(|m| m.realtime_channels_for(event))
            .collect()
    }

    /// Every notification type of the enabled modules.
    pub fn notification_types(&self) -> Vec<crate::notify::NotificationType> {
        self.modules
            .iter()
            .flat_map(|m| m.notification_types())
            .collect()
    }

    /// Every encrypted column of the enabled modules.
    pub fn encrypted_tables(&self) -> Vec<crate::crypto::keys::EncryptedTable> {
        self.modules
            .iter()
            .flat_map(|m| m.encrypted_columns())
            .collect()
    }

    pub fn fixtures(&self) -> Vec<Fixture> {
        self.modules.iter().flat_map(|m| m.fixtures()).collect()
    }

    /// Runs every fixture of every enabled module inside an organization (as a system
    /// actor), returning what each created. For the isolation probe in tests.
    pub async fn run_fixtures(
        &self,
        state: &AppState,
        org_id: uuid::Uuid,
    ) -> anyhow::Result<Vec<(&'static str, FixtureResource)>> {
        let mut out = Vec::new();
        for f in self.fixtures() {
            let scope = TenantScope::system(org_id, "fixture");
            let created = (f.create)(state.clone(), scope)
                .await
                .map_err(|e| anyhow::anyhow!("fixture {}: {e:#}", f.resource))?;
            out.push((f.resource, created));
        }
        Ok(out)
    }

    /// Every enabled module's routes, and the rate-limit policy each route named.
    pub(crate) fn router(&self) -> (OpenApiRouter<AppState>, Vec<RoutePolicy>) {
        let mut router = OpenApiRouter::new();
        let mut policies = Vec::new();
        for m in self.modules.iter() {
            let (r, p) = m.routes().into_parts();
            router = router.merge(r);
            policies.extend(p);
        }
        (router, policies)
    }

    /// The rate-limit policies modules add to the kernel's defaults.
    pub fn rate_limit_policies(&self) -> Vec<crate::limits::Policy> {
        self.modules
            .iter()
            .flat_map(|m| m.rate_limit_policies())
            .collect()
    }
}
