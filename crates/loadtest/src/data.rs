//! The account a run signs in with, the shipments it works on, and realistic payloads.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::Cli;
use crate::client::{Conn, Target};

/// The password `--prepare` registers with.
pub const PREPARED_PASSWORD: &str = "load-test tangerine orbit 42";

#[derive(Debug, Clone)]
pub struct Account {
    pub email: String,
    pub password: String,
    pub token: String,
    pub org_id: Uuid,
    pub shipments: Vec<Uuid>,
}

/// A short random tag that keeps references of different runs apart.
pub fn run_tag() -> String {
    format!("{:06x}", rand::rng().random_range(0..0x00ff_ffffu32))
}

pub async fn sign_in(conn: &mut Conn, email: &str, password: &str) -> Result<(String, Uuid)> {
    let r = conn
        .post_json(
            "/api/v1/auth/login",
            None,
            &json!({ "email": email, "password": password }),
        )
        .await?;
    let body = r.json().unwrap_or(Value::Null);
    if r.status.as_u16() != 200 {
        bail!("sign-in of {email} answered {}: {body}", r.status);
    }
    let token = body["access_token"]
        .as_str()
        .ok_or_else(|| anyhow!("no access_token in the sign-in answer"))?
        .to_string();
    let org_id = body["user"]["org_id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| anyhow!("no user.org_id in the sign-in answer"))?;
    Ok((token, org_id))
}

/// Signs in (registering a fresh organization first with `--prepare`) and gathers
/// `--shipments` shipment ids: created with `--prepare`, read from the list otherwise.
pub async fn account(cli: &Cli, target: &Target, want_shipments: bool) -> Result<Account> {
    let mut conn = Conn::new(target);
    let (email, password) = if cli.prepare {
        let tag = run_tag();
        let email = format!("load-{tag}@keel.example");
        let r = conn
            .post_json(
                "/api/v1/auth/register",
                None,
                &json!({
                    "email": email,
                    "password": PREPARED_PASSWORD,
                    "name": "Load Test",
                    "organization_name": format!("Load test {tag}"),
                }),
            )
            .await?;
        if r.status.as_u16() != 201 {
            bail!(
                "registering {email} answered {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
        println!("prepared organization: {email} / {PREPARED_PASSWORD}");
        (email, PREPARED_PASSWORD.to_string())
    } else {
        match (&cli.email, &cli.password) {
            (Some(e), Some(p)) => (e.clone(), p.clone()),
            _ => {
                bail!("give --email and --password (or --prepare to register a fresh organization)")
            }
        }
    };
    let (token, org_id) = sign_in(&mut conn, &email, &password).await?;
    let mut account = Account {
        email,
        password,
        token,
        org_id,
        shipments: Vec::new(),
    };
    if want_shipments && cli.shipments > 0 {
        account.shipments = if cli.prepare {
            let tag = run_tag();
            let refs: Vec<String> = (0..cli.shipments)
                .map(|i| format!("LP-{tag}-{i:05}"))
                .collect();
            create_many(target, &account.token, refs, 8).await?
        } else {
            existing(&mut conn, &account.token, cli.shipments).await?
        };
        println!("shipments to work on: {}", account.shipments.len());
    }
    Ok(account)
}

/// Ids of up to `n` shipments already in the organization.
async fn existing(conn: &mut Conn, token: &str, n: usize) -> Result<Vec<Uuid>> {
    let mut ids = Vec::new();
    let mut page = 1;
    while ids.len() < n {
        let r = conn
            .get(
                &format!("/api/v1/trade/shipments?page_size=100&page={page}"),
                Some(token),
            )
            .await?;
        if r.status.as_u16() != 200 {
            bail!("listing shipments answered {}", r.status);
        }
        let body = r.json()?;
        let rows = body["data"].as_array().cloned().unwrap_or_default();
        if rows.is_empty() {
            break;
        }
        ids.extend(
            rows.iter()
                .filter_map(|s| s["id"].as_str().and_then(|v| Uuid::parse_str(v).ok())),
        );
        page += 1;
    }
    ids.truncate(n);
    Ok(ids)
}

/// Creates a shipment per reference, `parallel` at a time; their ids in order.
pub async fn create_many(
    target: &Target,
    token: &str,
    refs: Vec<String>,
    parallel: usize,
) -> Result<Vec<Uuid>> {
    let queue = Arc::new(Mutex::new(refs.into_iter().enumerate().collect::<Vec<_>>()));
    let mut tasks = Vec::new();
    for _ in 0..parallel.max(1) {
        let (queue, target, token) = (queue.clone(), target.clone(), token.to_string());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(&target);
            let mut made = Vec::new();
            loop {
                let Some((i, reference)) = queue.lock().await.pop() else {
                    break;
                };
                let body = shipment_body(&mut rand::rng(), &reference);
                let r = conn
                    .post_json("/api/v1/trade/shipments", Some(&token), &body)
                    .await?;
                if r.status.as_u16() != 201 {
                    bail!(
                        "creating shipment {reference} answered {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    );
                }
                let id = r.json()?["id"]
                    .as_str()
                    .and_then(|v| Uuid::parse_str(v).ok())
                    .context("no id in the created shipment")?;
                made.push((i, id));
            }
            Ok::<_, anyhow::Error>(made)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, id)| id).collect())
}

const BUYERS: &[(&str, &str, &str)] = &[
    ("Hamburg Imports GmbH", "DE", "DEHAM"),
    ("Rotterdam Trading B.V.", "NL", "NLRTM"),
    ("Jebel Ali General Trading LLC", "AE", "AEJEA"),
    ("Atlantic Home Goods Inc.", "US", "USNYC"),
    ("Felixstowe Textiles Ltd", "GB", "GBFXT"),
    ("Le Havre Distribution SAS", "FR", "FRLEH"),
    ("Singapore Components Pte Ltd", "SG", "SGSIN"),
];
const LOADING: &[&str] = &["INNSA", "INMUN", "INMAA", "INCCU"];
const INCOTERMS: &[&str] = &["FOB", "CIF", "CFR", "EXW", "DAP", "FCA"];
const HS: &[&str] = &[
    "850440", "620342", "520811", "30049099", "847130", "940360", "720851",
];
const CURRENCIES: &[&str] = &["EUR", "USD", "GBP", "AED"];

fn pick<'a, T>(rng: &mut impl Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// A shipment as an exporter would enter it: a buyer and its port, an Indian port of
/// loading, one to three HS codes, an invoice value between 500 and 250,000 in minor units ×100.
pub fn shipment_body(rng: &mut impl Rng, reference: &str) -> Value {
    let (buyer, country, port) = *pick(rng, BUYERS);
    let codes: Vec<&str> = (0..rng.random_range(1..=3))
        .map(|_| *pick(rng, HS))
        .collect();
    let mut codes = codes;
    codes.sort_unstable();
    codes.dedup();
    json!({
        "reference": reference,
        "buyer_name": buyer,
        "buyer_country": country,
        "destination_country": country,
        "port_of_loading": pick(rng, LOADING),
        "port_of_discharge": port,
        "incoterm": pick(rng, INCOTERMS),
        "hs_codes": codes,
        "invoice_value_minor": rng.random_range(50_000..25_000_000i64),
        "currency": pick(rng, CURRENCIES),
    })
}

/// A list query as the shipments screen sends them.
pub fn list_query(rng: &mut impl Rng) -> String {
    let mut q = String::from("/api/v1/trade/shipments?page_size=20");
    match rng.random_range(0..6) {
        0 => q.push_str("&status=draft"),
        1 => {
            let (_, country, _) = pick(rng, BUYERS);
            q.push_str(&format!("&destination_country={country}"));
        }
        2 => q.push_str("&sort=reference"),
        3 => q.push_str("&page=2"),
        _ => {}
    }
    q
}

/// A search as someone typing into the search box.
pub fn search_query(rng: &mut impl Rng, own_reference: Option<&str>) -> String {
    let term = match (rng.random_range(0..5), own_reference) {
        (0, Some(r)) => r.chars().take(9).collect::<String>(),
        (1, _) => "hamburg".to_string(),
        (2, _) => "trading".to_string(),
        (3, _) => "gmbh".to_string(),
        _ => pick(rng, BUYERS)
            .0
            .split(' ')
            .next()
            .unwrap_or("ltd")
            .to_lowercase(),
    };
    format!(
        "/api/v1/trade/shipments?page_size=20&q={}",
        term.replace(' ', "%20")
    )
}
