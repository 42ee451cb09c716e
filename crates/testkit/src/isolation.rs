//! The isolation probe: for every route of every enabled module, tenant B (and a partner user
//! of tenant A tied to another partner) tries every documented method on tenant A's
//! resources. Each attempt must answer exactly as the same request with an id that does not
//! exist (404-like, never 2xx), and A's resources must be unchanged afterwards. Collection
//! routes read by B must not mention A's ids.
//!
//! The probe walks the OpenAPI document, so a new route is probed without new test code; a
//! route with a path parameter that no module fixture covers fails the probe, so every new
//! resource must come with a fixture.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::TestApp;
use crate::auth::Session;

/// Routes whose path parameters are not tenant-owned ids (none yet).
const NOT_TENANT_OWNED: &[&str] = &[];

#[derive(Debug, Default)]
pub struct ProbeReport {
    /// (method, concrete path, who) attempts made.
    pub attempts: usize,
    pub failures: Vec<String>,
    pub uncovered: Vec<String>,
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_matches('/').split('/').collect()
}

fn is_param(seg: &str) -> bool {
    seg.starts_with('{') && seg.ends_with('}')
}

/// Makes a concrete path for `template` from a fixture path whose segments match a prefix of
/// it; the rest must be literal.
fn concretize(template: &str, fixture: &str) -> Option<String> {
    let t = segments(template);
    let f = segments(fixture);
    if f.len() > t.len() {
        return None;
    }
    for (ts, fs) in t.iter().zip(&f) {
        if !(is_param(ts) || ts == fs) {
            return None;
        }
    }
    if !t.iter().zip(&f).any(|(ts, _)| is_param(ts)) {
        return None;
    }
    if t[f.len()..].iter().any(|s| is_param(s)) {
        return None;
    }
    let mut out: Vec<&str> = f.clone();
    out.extend(&t[f.len()..]);
    Some(format!("/{}", out.join("/")))
}

/// Replaces every id in `path` that came from tenant A with a fresh random one.
fn with_missing_ids(path: &str, ids: &BTreeSet<String>) -> String {
    segments(path)
        .into_iter()
        .map(|s| {
            if ids.contains(s) && keel_kernel::storage::is_sha256(s) {
                // Content-addressed resources (files): a checksum nothing has.
                keel_kernel::storage::sha256_hex(Uuid::now_v7().as_bytes())
            } else if ids.contains(s) {
                Uuid::now_v7().to_string()
            } else {
                s.to_string()
            }
        })
        .fold(String::new(), |acc, s| format!("{acc}/{s}"))
}

async fn status_and_kind(
    app: &TestApp,
    method: &Method,
    path: &str,
    token: &str,
) -> (StatusCode, String) {
    let response = app
        .call(method.clone(), path, Some(token), Some(&json!({})))
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["type"].as_str().unwrap_or("").to_string())
}

/// Runs the probe. `a` is tenant A's admin, `b` tenant B's admin, `partner_user` a partner
/// user of A tied to a partner other than A's fixture rows.
pub async fn probe(app: &TestApp, a: &Session, b: &Session, partner_user: &Session) -> ProbeReport {
    let mut report = ProbeReport::default();
    let fixtures = app
        .state
        .registry
        .run_fixtures(&app.state, a.org_id)
        .await
        .unwrap_or_else(|e| panic!("fixtures failed: {e:#}"));
    let mut fixture_paths: Vec<(String, String)> = Vec::new();
    let mut a_ids: BTreeSet<String> = BTreeSet::new();
    a_ids.insert(a.org_id.to_string());
    for (resource, created) in &fixtures {
        for p in &created.paths {
            fixture_paths.push((resource.to_string(), p.clone()));
            for s in segments(p) {
                if Uuid::parse_str(s).is_ok() || keel_kernel::storage::is_sha256(s) {
                    a_ids.insert(s.to_string());
                }
            }
        }
    }

    let doc: Value = app
        .get("/api/openapi.json")
        .await
        .json()
        .await
        .unwrap_or(Value::Null);
    let Some(paths) = doc["paths"].as_object() else {
        report
            .failures
            .push("no paths in the OpenAPI document".into());
        return report;
    };

    // Snapshot what A can read of each fixture before the probe.
    let mut before: BTreeMap<String, Value> = BTreeMap::new();
    for (_, p) in &fixture_paths {
        let r = app.get_as(p, &a.access_token).await;
        if r.status() == StatusCode::OK {
            before.insert(p.clone(), r.json().await.unwrap_or(Value::Null));
        }
    }

    for (template, ops) in paths {
        let methods: Vec<String> = ops
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        if !template.starts_with("/api/v1/") || NOT_TENANT_OWNED.contains(&template.as_str()) {
            continue;
        }
        if !segments(template).iter().any(|s| is_param(s)) {
            // A collection: B must not see A's ids in what it lists.
            if methods.iter().any(|m| m == "get") {
                let r = app.get_as(template, &b.access_token).await;
                let text = r.text().await.unwrap_or_default();
                for id in &a_ids {
                    if text.contains(id.as_str()) {
                        report.failures.push(format!(
                            "GET {template} as tenant B shows tenant A's id {id}"
                        ));
                    }
                }
            }
            continue;
        }
        let concrete: Vec<String> = fixture_paths
            .iter()
            .filter_map(|(_, p)| concretize(template, p))
            .collect();
        if concrete.is_empty() {
            report.uncovered.push(template.clone());
            continue;
        }
        for path in concrete {
            let missing = with_missing_ids(&path, &a_ids);
            for m in &methods {
                let Ok(method) = Method::from_bytes(m.to_uppercase().as_bytes()) else {
                    continue;
                };
                for (who, token) in [
                    ("tenant B admin", &b.access_token),
                    ("partner user of A", &partner_user.access_token),
                ] {
                    report.attempts += 1;
                    let got = status_and_kind(app, &method, &path, token).await;
                    let baseline = status_and_kind(app, &method, &missing, token).await;
                    if got.0.is_success() {
                        report
                            .failures
                            .push(format!("{method} {path} as {who} answered {}", got.0));
                    } else if got != baseline
                        && !(who.starts_with("partner") && got.0 == StatusCode::FORBIDDEN)
                    {
                        report.failures.push(format!(
                            "{method} {path} as {who} answered {:?}, but a missing id answers {:?}",
                            got, baseline
                        ));
                    }
                }
            }
        }
    }

    for (path, old) in &before {
        let r = app.get_as(path, &a.access_token).await;
        let now: Value = r.json().await.unwrap_or(Value::Null);
        if &now != old {
            report
                .failures
                .push(format!("{path} changed during the probe: {old} → {now}"));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled_from_fixture_prefixes() {
        let id = "0192f000-0000-7000-8000-000000000000";
        assert_eq!(
            concretize("/api/v1/users/{id}/approve", &format!("/api/v1/users/{id}")),
            Some(format!("/api/v1/users/{id}/approve"))
        );
        assert_eq!(
            concretize("/api/v1/users/{id}", &format!("/api/v1/partners/{id}")),
            None
        );
        assert_eq!(
            concretize(
                "/api/v1/orgs/{org_id}/invitations/{id}",
                &format!("/api/v1/orgs/{id}")
            ),
            None
        );
        assert_eq!(
            concretize(
                "/api/v1/orgs/{org_id}/invitations",
                &format!("/api/v1/orgs/{id}")
            ),
            Some(format!("/api/v1/orgs/{id}/invitations"))
        );
    }
}
