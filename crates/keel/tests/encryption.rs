//! Encryption at rest on SQLite or PostgreSQL: a module's encrypted columns round-trip through
//! a key rotation (the old key decrypts until `keel keys rotate` has re-encrypted everything,
//! then the new key alone reads every row, legacy plaintext included, and the kernel's TOTP
//! secrets still work); the rotation is audited, idempotent and resumes after an interruption;
//! a ciphertext swapped between rows is refused (and left alone by rotation); blind indexes
//! find rows by value within one organization, before and after rotation.

use std::sync::Arc;

use keel_kernel::crypto::field::{FieldRef, Sealed};
use keel_kernel::crypto::keys::{self, EncryptedColumn, EncryptedTable, RotateError};
use keel_kernel::crypto::{CryptoError, KeyRing, key_id};
use keel_kernel::module::Module;
use keel_kernel::store::migrate::Migration;
use keel_kernel::tenancy::TenantScope;
use keel_testkit::{TestApp, TestDb};
use reqwest::StatusCode;
use sea_query::{Expr, ExprTrait, Query};
use serde_json::json;
use uuid::Uuid;

/// The test kit's default key.
const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const K2: &str = "a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2";
const K0: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";

fn key(hex_key: &str) -> [u8; 32] {
    keel_kernel::config::parse_encryption_key(hex_key).expect("key")
}

fn kid(hex_key: &str) -> String {
    key_id(&key(hex_key))
}

const TABLE: &str = "vault_accounts";
const NUMBER: &str = "account_number";
const NOTE: &str = "legacy_note";

/// An app with one table of encrypted columns: a searchable account number (blind index) and
/// a note that held plaintext before it was encrypted.
struct VaultModule;

impl Module for VaultModule {
    fn name(&self) -> &'static str {
        "vault"
    }

    fn migrations(&self) -> Vec<Migration> {
        vec![Migration {
            version: 1,
            name: "0001_vault",
            sqlite: "CREATE TABLE vault_accounts (id BLOB PRIMARY KEY NOT NULL, org_id BLOB NOT NULL, \
                     account_number TEXT, account_number_bidx TEXT, legacy_note TEXT);
                     CREATE INDEX vault_accounts_bidx ON vault_accounts (org_id, account_number_bidx);",
            postgres: "CREATE TABLE vault_accounts (id UUID PRIMARY KEY NOT NULL, org_id UUID NOT NULL, \
                       account_number TEXT, account_number_bidx TEXT, legacy_note TEXT);
                       CREATE INDEX vault_accounts_bidx ON vault_accounts (org_id, account_number_bidx);",
        }]
    }

    fn encrypted_columns(&self) -> Vec<EncryptedTable> {
        vec![EncryptedTable::new(
            TABLE,
            vec![
                EncryptedColumn::new(NUMBER).with_blind_index("account_number_bidx"),
                EncryptedColumn::new(NOTE).allow_legacy_plaintext(),
            ],
        )]
    }
}

async fn node(db: Option<Arc<TestDb>>, active: &'static str, previous: &[&'static str]) -> TestApp {
    let previous: Vec<&'static str> = previous.to_vec();
    // The `keel keys` processes run every module of the binary, the trade app's encrypted
    // columns included: its tables must exist as on a real installation.
    let mut b = TestApp::builder()
        .module(Arc::new(VaultModule))
        .module(Arc::new(keel_trade::TradeModule))
        .configure(move |c| {
            c.encryption_key = Some(keel_kernel::config::Secret::new(active));
            c.previous_encryption_keys = previous
                .iter()
                .map(|k| keel_kernel::config::Secret::new(*k))
                .collect();
        });
    if let Some(db) = db {
        b = b.database(db);
    }
    b.spawn().await.expect("server starts")
}

#[derive(Debug, sqlx::FromRow, serde::Deserialize)]
struct VaultRow {
    account_number: Option<Sealed>,
    account_number_bidx: Option<String>,
    legacy_note: Option<Sealed>,
}

async fn insert(
    app: &TestApp,
    ring: &KeyRing,
    scope: &TenantScope,
    number: &str,
    legacy_note: Option<&str>,
) -> Uuid {
    let id = Uuid::now_v7();
    let sealed = ring
        .seal(&FieldRef::new(scope, TABLE, NUMBER, id), number)
        .expect("seal");
    let bidx = ring.blind_index(scope, TABLE, NUMBER, number);
    app.state
        .db
        .execute(
            &Query::insert()
                .into_table(TABLE)
                .columns(["id", "org_id", NUMBER, "account_number_bidx", NOTE])
                .values_panic([
                    id.into(),
                    scope.org_id().into(),
                    sealed.into(),
                    bidx.into(),
                    legacy_note.map(String::from).into(),
                ])
                .to_owned(),
        )
        .await
        .expect("insert");
    id
}

async fn row(app: &TestApp, id: Uuid) -> VaultRow {
    app.state
        .db
        .fetch_one(
            &Query::select()
                .columns([NUMBER, "account_number_bidx", NOTE])
                .from(TABLE)
                .and_where(Expr::col("id").eq(id))
                .to_owned(),
        )
        .await
        .expect("row")
}

async fn set_number(app: &TestApp, id: Uuid, value: Sealed) {
    app.state
        .db
        .execute(
            &Query::update()
                .table(TABLE)
                .values([(NUMBER, value.into())])
                .and_where(Expr::col("id").eq(id))
                .to_owned(),
        )
        .await
        .expect("update");
}

async fn open_number(app: &TestApp, scope: &TenantScope, id: Uuid) -> Result<String, CryptoError> {
    let r = row(app, id).await;
    app.state.crypto.open(
        &FieldRef::new(scope, TABLE, NUMBER, id),
        r.account_number.as_ref().expect("number"),
    )
}

/// Finds a row by account number through its blind index (any key of the ring).
async fn find_by_number(app: &TestApp, scope: &TenantScope, number: &str) -> Vec<Uuid> {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct Id {
        id: Uuid,
    }
    let candidates = app
        .state
        .crypto
        .blind_index_lookup(scope, TABLE, NUMBER, number);
    let rows: Vec<Id> = app
        .state
        .db
        .fetch_all(
            &Query::select()
                .column("id")
                .from(TABLE)
                .and_where(Expr::col("org_id").eq(scope.org_id()))
                .and_where(Expr::col("account_number_bidx").is_in(candidates))
                .to_owned(),
        )
        .await
        .expect("lookup");
    rows.into_iter().map(|r| r.id).collect()
}

fn tables(app: &TestApp) -> Vec<EncryptedTable> {
    app.state.registry.encrypted_tables()
}

/// `keel keys …` as a process against the test's database, with the given keys.
fn keel_keys(app: &TestApp, active: &str, previous: &[&str], args: &[&str]) -> (i32, String) {
    let config = &app.state.config;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.current_dir(app.db.data_dir()).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("KEEL_DATA_DIR", app.db.data_dir())
        .env("KEEL_DATABASE_URL", config.database_url())
        .env("KEEL_LOG__LEVEL", "error")
        .env(
            "KEEL_JWT_SECRET",
            "test-signing-secret-0123456789abcdef-xyz",
        )
        .env("KEEL_ENCRYPTION_KEY", active)
        .env("KEEL_PREVIOUS_ENCRYPTION_KEYS", previous.join(","));
    if let Some(schema) = &config.database.schema {
        cmd.env("KEEL_DATABASE__SCHEMA", schema);
    }
    let out = cmd.arg("keys").args(args).output().expect("run keel");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

fn current_code(secret_b32: &str) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret_b32).expect("base32");
    let t = keel_kernel::auth::totp::totp(secret.as_bytes(), "x@example.com").expect("totp");
    t.generate(u64::try_from(chrono::Utc::now().timestamp()).expect("time"))
        .to_string()
}

async fn audit_count(app: &TestApp, action: &str) -> i64 {
    #[derive(sqlx::FromRow, serde::Deserialize)]
    struct N {
        n: i64,
    }
    let n: N = app
        .state
        .db
        .fetch_one(
            &Query::select()
                .expr_as(Expr::cust("COUNT(*)"), "n")
                .from("audit_events")
                .and_where(Expr::col("action").eq(action))
                .to_owned(),
        )
        .await
        .expect("count");
    n.n
}

#[tokio::test]
async fn key_rotation_round_trip_with_old_and_new_keys() {
    let app = node(None, K1, &[]).await;
    let db = app.db.clone();
    let (a, b) = (
        TenantScope::for_tests(Uuid::now_v7()),
        TenantScope::for_tests(Uuid::now_v7()),
    );
    let ring1 = KeyRing::new(key(K1), &[]);
    let mut ids = Vec::new();
    for i in 0..5 {
        let note = (i == 0).then_some("written before encryption");
        ids.push((
            a.clone(),
            insert(&app, &ring1, &a, &format!("DE8937040044053201{i:04}"), note).await,
        ));
    }
    for i in 0..2 {
        ids.push((
            b.clone(),
            insert(&app, &ring1, &b, &format!("GB29NWBK6016133192{i:04}"), None).await,
        ));
    }
    // Plaintext never reaches the database.
    let stored = row(&app, ids[0].1).await;
    let stored_number = stored.account_number.expect("number");
    assert!(!stored_number.as_str().contains("DE89"));
    assert_eq!(stored_number.kid(), Some(kid(K1).as_str()));
    // A user enrols in two-factor sign-in: the kernel's encrypted column.
    let user = app.register_org("vault@acme.example", "Acme").await;
    let setup: serde_json::Value = app
        .post_as("/api/v1/auth/totp/setup", &user.access_token, &json!({}))
        .await
        .json()
        .await
        .expect("setup");
    let totp_secret = setup["secret"].as_str().expect("secret").to_string();
    app.stop().await;

    // The new key is active; the old one still decrypts.
    let app = node(Some(db.clone()), K2, &[K1]).await;
    assert_eq!(
        open_number(&app, &a, ids[0].1)
            .await
            .expect("old key opens"),
        "DE89370400440532010000"
    );
    assert_eq!(
        find_by_number(&app, &a, " de89370400440532010003 ").await,
        vec![ids[3].1],
        "the blind index finds the row under the old key's index"
    );
    assert!(
        find_by_number(&app, &b, "DE89370400440532010003")
            .await
            .is_empty(),
        "another organization's row is not found"
    );
    let before = keys::status(&app.state.db, &app.state.crypto, &tables(&app))
        .await
        .expect("status");
    assert_eq!(before.active_kid, kid(K2));
    assert_eq!(before.known_kids, vec![kid(K2), kid(K1)]);
    let count = |s: &keys::KeyStatus, table: &str, column: &str, k: &str| {
        s.columns
            .iter()
            .find(|c| c.table == table && c.column == column)
            .and_then(|c| c.by_key.iter().find(|(kid, _)| kid == k).map(|(_, n)| *n))
            .unwrap_or(0)
    };
    assert_eq!(count(&before, TABLE, NUMBER, &kid(K1)), 7);
    assert_eq!(count(&before, TABLE, NOTE, "plaintext"), 1);
    assert_eq!(count(&before, "users", "totp_secret", &kid(K1)), 1);

    // The operator's tools, as processes.
    let (code, out) = keel_keys(&app, K2, &[K1], &["status"]);
    assert_eq!(code, 1, "values are left to rotate: {out}");
    assert!(out.contains(&format!("active key: {}", kid(K2))), "{out}");
    assert!(
        out.contains(&format!("users.totp_secret: {} (previous): 1", kid(K1))),
        "{out}"
    );
    let (code, out) = keel_keys(&app, K2, &[K1], &["rotate", "--batch-size", "2"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("users.totp_secret: 1 re-encrypted"), "{out}");
    // The binary does not know this test's module; its columns are rotated through the
    // same function, with the module registered.
    let report = keys::rotate(&app.state.db, &app.state.crypto, &tables(&app), 2)
        .await
        .expect("rotate");
    let rotated = |table: &str, column: &str| {
        report
            .columns
            .iter()
            .find(|c| c.table == table && c.column == column)
            .map(|c| c.rotated)
            .unwrap_or(u64::MAX)
    };
    assert_eq!(rotated(TABLE, NUMBER), 7);
    assert_eq!(rotated(TABLE, NOTE), 1, "the legacy plaintext is encrypted");
    assert_eq!(
        rotated("users", "totp_secret"),
        0,
        "already done by the CLI"
    );
    assert_eq!(report.failed(), 0);
    let after = keys::status(&app.state.db, &app.state.crypto, &tables(&app))
        .await
        .expect("status");
    assert_eq!(after.outstanding(), 0, "{after:?}");
    // Idempotent: nothing left, nothing changed.
    let again = keys::rotate(&app.state.db, &app.state.crypto, &tables(&app), 2)
        .await
        .expect("rotate again");
    assert_eq!(again.rotated(), 0);
    let (code, out) = keel_keys(&app, K2, &[K1], &["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(audit_count(&app, "keys.rotation_finished").await >= 3);
    app.stop().await;

    // The old key is gone: the new one alone reads everything.
    let app = node(Some(db), K2, &[]).await;
    for (scope, id) in &ids {
        let r = row(&app, *id).await;
        assert_eq!(
            r.account_number.as_ref().and_then(|s| s.kid()),
            Some(kid(K2).as_str())
        );
        assert!(open_number(&app, scope, *id).await.is_ok());
    }
    let first = row(&app, ids[0].1).await;
    let note = first.legacy_note.expect("note");
    assert_eq!(note.kid(), Some(kid(K2).as_str()), "no plaintext is left");
    assert_eq!(
        app.state
            .crypto
            .open(&FieldRef::new(&a, TABLE, NOTE, ids[0].1), &note)
            .expect("note opens"),
        "written before encryption"
    );
    assert_eq!(
        first.account_number_bidx,
        Some(
            app.state
                .crypto
                .blind_index(&a, TABLE, NUMBER, "DE89370400440532010000")
        ),
        "the blind index was recomputed under the new key"
    );
    assert_eq!(
        find_by_number(&app, &a, "DE89370400440532010000").await,
        vec![ids[0].1]
    );
    // The TOTP secret, re-encrypted by the CLI, still works.
    let enabled = app
        .post_as(
            "/api/v1/auth/totp/enable",
            &user.access_token,
            &json!({"code": current_code(&totp_secret)}),
        )
        .await;
    assert_eq!(enabled.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_ciphertext_swapped_between_rows_is_refused_and_rotation_leaves_it_alone() {
    let app = node(None, K1, &[]).await;
    let a = TenantScope::for_tests(Uuid::now_v7());
    let ring1 = KeyRing::new(key(K1), &[]);
    let x = insert(&app, &ring1, &a, "4111111111111111", None).await;
    let y = insert(&app, &ring1, &a, "5500000000000004", None).await;
    let x_value = row(&app, x).await.account_number.expect("x");
    set_number(&app, y, x_value.clone()).await;
    assert_eq!(
        open_number(&app, &a, y).await,
        Err(CryptoError::Integrity),
        "x's ciphertext does not open as y's"
    );
    // Nor in another column, nor in another organization.
    assert_eq!(
        app.state
            .crypto
            .open_legacy(&FieldRef::new(&a, TABLE, NOTE, x), &x_value),
        Err(CryptoError::Integrity)
    );
    let other_org = TenantScope::for_tests(Uuid::now_v7());
    assert_eq!(
        app.state
            .crypto
            .open(&FieldRef::new(&other_org, TABLE, NUMBER, x), &x_value),
        Err(CryptoError::Integrity)
    );
    assert_eq!(
        open_number(&app, &a, x).await.expect("x"),
        "4111111111111111"
    );
    let db = app.db.clone();
    app.stop().await;

    let app = node(Some(db), K2, &[K1]).await;
    let report = keys::rotate(&app.state.db, &app.state.crypto, &tables(&app), 100)
        .await
        .expect("rotate");
    assert_eq!(report.failed(), 1);
    assert_eq!(report.failures[0].row, y);
    assert_eq!(
        row(&app, y).await.account_number,
        Some(x_value),
        "the refused value is left as it was"
    );
    assert_eq!(
        open_number(&app, &a, x).await.expect("x"),
        "4111111111111111"
    );
    assert_eq!(
        row(&app, x)
            .await
            .account_number
            .and_then(|s| s.kid().map(String::from)),
        Some(kid(K2))
    );
}

#[tokio::test]
async fn an_interrupted_rotation_resumes_where_it_stopped() {
    let app = node(None, K1, &[]).await;
    let a = TenantScope::for_tests(Uuid::now_v7());
    let ring1 = KeyRing::new(key(K1), &[]);
    let ring0 = KeyRing::new(key(K0), &[]);
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(insert(&app, &ring1, &a, &format!("ACCT{i}"), None).await);
    }
    // A value under a key the operator forgot to list.
    let late = insert(&app, &ring0, &a, "ACCT-LATE", None).await;
    let db = app.db.clone();
    app.stop().await;

    let app = node(Some(db.clone()), K2, &[K1]).await;
    let err = keys::rotate(&app.state.db, &app.state.crypto, &tables(&app), 2)
        .await
        .expect_err("a value under an unknown key stops the rotation");
    match &err {
        RotateError::MissingKey { row, kid: k, .. } => {
            assert_eq!(*row, late);
            assert_eq!(*k, kid(K0));
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("previous_encryption_keys"));
    let status = keys::status(&app.state.db, &app.state.crypto, &tables(&app))
        .await
        .expect("status");
    let progress = status
        .rotations
        .iter()
        .find(|p| p.column_name == NUMBER)
        .expect("progress row");
    assert_eq!(progress.rows_rotated, 4);
    assert_eq!(progress.last_id, Some(ids[3]));
    assert!(progress.finished_at.is_none());
    assert!(audit_count(&app, "keys.rotation_finished").await >= 1);
    app.stop().await;

    let app = node(Some(db), K2, &[K1, K0]).await;
    let report = keys::rotate(&app.state.db, &app.state.crypto, &tables(&app), 2)
        .await
        .expect("rotate");
    let number = report
        .columns
        .iter()
        .find(|c| c.column == NUMBER)
        .expect("column");
    assert!(number.resumed, "{report:?}");
    assert_eq!(number.rotated, 1, "only what was left");
    assert_eq!(
        open_number(&app, &a, late).await.expect("late"),
        "ACCT-LATE"
    );
    let status = keys::status(&app.state.db, &app.state.crypto, &tables(&app))
        .await
        .expect("status");
    assert_eq!(status.outstanding(), 0);
}
