//! The `keel` binary as an operator runs it: start-up with no configuration, configuration
//! errors reported one per problem before anything listens, `config check` redaction,
//! migrations from the CLI, `keel worker`, and SIGTERM ending in a clean exit.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn keel(dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.current_dir(dir).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    keel(dir, env).args(args).output().expect("run keel")
}

/// Starts `keel serve` and waits for its "listening" line; returns the child and the address.
fn serve(dir: &Path, env: &[(&str, &str)]) -> (Child, String) {
    let mut child = keel(dir, env)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keel serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("keel serve did not report its address");
    (child, addr)
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("keel did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn serve_starts_with_no_configuration_on_sqlite_in_the_data_directory() {
    let dir = tempfile::tempdir().expect("dir");
    // Only the port is chosen here (0 = any free one) so the test cannot collide.
    let (mut child, addr) = serve(dir.path(), &[("KEEL_LISTEN", "127.0.0.1:0")]);
    let (status, body) = http_get(&addr, "/health/ready");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"database_engine\":\"sqlite\""), "{body}");
    assert!(dir.path().join("data/keel.db").is_file());
    // The binary's allocator reports its memory at /metrics: what the program holds, and
    // what the allocator keeps resident for it (never less).
    let (status, scrape) = http_get(&addr, "/metrics");
    assert_eq!(status, 200, "{scrape}");
    let bytes = |state: &str| -> f64 {
        let prefix = format!("keel_allocator_bytes{{state=\"{state}\"}} ");
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no keel_allocator_bytes{{state={state}}} in {scrape}"))
    };
    let (allocated, resident) = (bytes("allocated"), bytes("resident"));
    assert!(
        allocated > 1_048_576.0,
        "a serving process holds more than 1 MiB: {allocated}"
    );
    assert!(
        resident >= allocated,
        "resident {resident} < allocated {allocated}"
    );
    let secrets = dir.path().join("data/dev-secrets.toml");
    assert!(secrets.is_file(), "development secrets are stored once");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secrets)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "owner-only");
    }
    sigterm(&child);
    let status = wait_with_timeout(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "SIGTERM ends in a clean shutdown");

    // A restart keeps the same secrets (tokens survive restarts).
    let before = std::fs::read_to_string(&secrets).expect("read");
    let (mut child, _) = serve(dir.path(), &[("KEEL_LISTEN", "127.0.0.1:0")]);
    sigterm(&child);
    wait_with_timeout(&mut child, Duration::from_secs(30));
    assert_eq!(std::fs::read_to_string(&secrets).expect("read"), before);
}

#[test]
fn production_without_secrets_exits_with_one_message_per_problem() {
    let dir = tempfile::tempdir().expect("dir");
    let out = run(
        dir.path(),
        &["serve"],
        &[("KEEL_ENV", "production"), ("KEEL_CORS_ORIGINS", "*")],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("jwt_secret: required in production"),
        "{stderr}"
    );
    assert!(
        stderr.contains("encryption_key: required in production"),
        "{stderr}"
    );
    assert!(stderr.contains("wildcard origin is refused"), "{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before validation passes"
    );
}

#[test]
fn invalid_values_are_each_named_and_nothing_listens() {
    let dir = tempfile::tempdir().expect("dir");
    let out = run(
        dir.path(),
        &["serve"],
        &[
            ("KEEL_LISTEN", "not-an-address"),
            ("KEEL_DATABASE_URL", "mysql://localhost/db"),
            ("KEEL_JWT_SECRET", "short"),
            ("KEEL_ENCRYPTION_KEY", "abc"),
            ("KEEL_HTTP__TRUSTED_PROXIES", "10.0.0.0/8,banana"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "listen:",
        "database_url:",
        "jwt_secret: must be at least 32 bytes",
        "encryption_key: must be exactly 64 hex",
        "`banana` is not an IP address",
    ] {
        assert!(stderr.contains(needle), "missing `{needle}` in:\n{stderr}");
    }
    assert!(stderr.contains("5 problem(s)"), "{stderr}");
}

#[test]
fn an_unknown_key_or_wrong_type_in_keel_toml_is_reported_with_its_name() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("keel.toml"),
        "listen = \"127.0.0.1:0\"\n[http]\nrequest_timeout_secs = \"soon\"\n",
    )
    .expect("write");
    let out = run(dir.path(), &["config", "check"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("http.request_timeout_secs"), "{stderr}");

    std::fs::write(dir.path().join("keel.toml"), "lisen = \"127.0.0.1:0\"\n").expect("write");
    let out = run(dir.path(), &["config", "check"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lisen"), "{stderr}");
}

#[test]
fn config_check_layers_file_then_environment_and_redacts_secrets() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("keel.toml"),
        "listen = \"127.0.0.1:9000\"\n[database]\nmax_connections = 7\n[rate_limits_never_existed]\n",
    )
    .expect("write");
    // An unknown table is refused as well.
    let out = run(dir.path(), &["config", "check"], &[]);
    assert_eq!(out.status.code(), Some(2));

    std::fs::write(
        dir.path().join("keel.toml"),
        "listen = \"127.0.0.1:9000\"\n[database]\nmax_connections = 7\n",
    )
    .expect("write");
    let secret = "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t";
    let out = run(
        dir.path(),
        &["config", "check"],
        &[
            ("KEEL_LISTEN", "127.0.0.1:9100"),
            ("KEEL_JWT_SECRET", secret),
            ("KEEL_DATABASE__MIN_CONNECTIONS", "2"),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("listen = \"127.0.0.1:9100\""),
        "env beats file:\n{stdout}"
    );
    assert!(
        stdout.contains("max_connections = 7"),
        "file beats defaults:\n{stdout}"
    );
    assert!(stdout.contains("min_connections = 2"), "{stdout}");
    assert!(!stdout.contains(secret), "secret printed:\n{stdout}");
    assert!(stdout.contains("jwt_secret = \"[redacted]\""), "{stdout}");
}

#[test]
fn migrate_status_and_run_from_the_command_line() {
    let dir = tempfile::tempdir().expect("dir");
    let out = run(dir.path(), &["migrate", "status"], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("0001_instance") && stdout.contains("pending"),
        "{stdout}"
    );

    let out = run(dir.path(), &["migrate", "run"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied kernel/0001_instance"));

    let out = run(dir.path(), &["migrate", "run"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to apply"));

    let out = run(dir.path(), &["migrate", "status"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Columns: module, version, name, state, applied at (a name may contain "pending").
    let states: Vec<&str> = stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert!(
        !states.is_empty() && states.iter().all(|s| *s == "applied"),
        "{stdout}"
    );
}

#[test]
fn keys_generate_prints_values_that_pass_production_validation() {
    let dir = tempfile::tempdir().expect("dir");
    let out = run(dir.path(), &["keys", "generate"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let mut env: Vec<(String, String)> = stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(env.len(), 2, "{stdout}");
    env.push(("KEEL_ENV".into(), "production".into()));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = run(dir.path(), &["config", "check"], &refs);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_example_configuration_is_valid_and_matches_the_defaults() {
    let dir = tempfile::tempdir().expect("dir");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../keel.example.toml");
    let with_example = run(dir.path(), &["--config", example, "config", "check"], &[]);
    assert_eq!(
        with_example.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&with_example.stderr)
    );
    let defaults = run(dir.path(), &["config", "check"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&with_example.stdout),
        String::from_utf8_lossy(&defaults.stdout),
        "keel.example.toml documents the defaults"
    );
}

#[test]
fn a_missing_explicit_configuration_file_is_an_error() {
    let dir = tempfile::tempdir().expect("dir");
    let out = run(
        dir.path(),
        &["--config", "nope.toml", "config", "check"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml does not exist"));
}

#[test]
fn worker_runs_queues_without_listening_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    let mut child = keel(dir.path(), &[("KEEL_LISTEN", "127.0.0.1:1")])
        .args(["worker", "--queues", "ocr,export"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keel worker");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let mut lines = Vec::new();
    while !lines
        .iter()
        .any(|l: &String| l.contains("keel worker running"))
    {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => lines.push(line),
            Err(e) => panic!("no start-up line ({e}); output so far: {lines:#?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    let all = lines.join("\n");
    assert!(all.contains("ocr") && all.contains("export"), "{all}");
    assert!(
        !all.contains("listening"),
        "a worker does not listen: {all}"
    );
    assert!(
        dir.path().join("data/keel.db").exists(),
        "it migrated the embedded database"
    );
    sigterm(&child);
    let status = wait_with_timeout(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn worker_refuses_a_queue_name_that_is_not_one() {
    let dir = tempfile::tempdir().expect("dir");
    let out = run(dir.path(), &["worker", "--queues", "ocr,Big Queue"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`Big Queue` is not a queue name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
