//! What operators see: log lines (text without colours off a terminal, or JSON), the start-up
//! summary and its warnings, `config check --connect`, shell completions.

use crate::helpers::{pegabridge, stderr, stdout};
use crate::processes::{free_port, project_dir, wait_healthy};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test]
async fn serve_logs_one_json_line_per_request_and_says_what_it_loaded() {
    let dir = project_dir();
    let port = free_port();
    let config = dir.path().join("pegabridge.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://ops.db\"\n[admin]\ntoken = \"change-me-admin\"\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pegabridge"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "--log-format",
            "json",
            "serve",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;
    let res = client
        .get(format!("{base}/nope"))
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    child.kill().unwrap();
    let lines: Vec<Value> = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let _ = child.wait();
    let message = |m: &str| lines.iter().find(|l| l["message"] == m).cloned();
    let request = lines
        .iter()
        .find(|l| l["message"] == "request" && l["span"]["request_id"] == "req-42")
        .unwrap_or_else(|| panic!("a request line: {lines:?}"));
    assert_eq!(request["status"], 404);
    assert_eq!(request["span"]["method"], "GET");
    assert_eq!(request["span"]["route"], "(no route)");
    assert_eq!(
        request["span"]["client"], "127.0.0.1",
        "the client's address"
    );
    assert!(request["latency_ms"].is_number());
    let loaded = message("mappings loaded").expect("the mappings are named");
    assert_eq!(loaded["count"], 1);
    assert!(message("store opened").is_some());
    assert!(message("configuration read").is_some());
    let warned = lines.iter().any(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("admin.token is empty or an example value"))
    });
    assert!(warned, "example tokens are warned about: {lines:?}");
    assert!(
        !lines
            .iter()
            .any(|l| l.to_string().contains("change-me-admin")),
        "no secret in the log"
    );
}

#[tokio::test]
async fn text_logs_have_no_colours_off_a_terminal() {
    let dir = project_dir();
    let port = free_port();
    let config = dir.path().join("pegabridge.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://text.db\"\n"),
    )
    .unwrap();
    // stderr is a pipe here, not a terminal.
    let mut child = Command::new(env!("CARGO_BIN_EXE_pegabridge"))
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env_remove("RUST_LOG")
        .env_remove("PEGABRIDGE_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_healthy(&reqwest::Client::new(), &format!("http://127.0.0.1:{port}")).await;
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(" INFO ") && err.contains("mappings loaded"),
        "serve logs at info, as text: {err:?}"
    );
    assert!(!err.contains('\u{1b}'), "no ANSI escapes: {err:?}");
}

#[tokio::test]
async fn config_check_connect_reaches_the_store_and_the_endpoint_without_an_event() {
    let pega = crate::pega::start_pega().await;
    let dir = tempfile::tempdir().unwrap();
    let out = check_connect(
        dir.path(),
        &format!("[pega]\nendpoint = \"{}/in\"\n[pega.auth]\ntype = \"basic\"\nusername = \"pega\"\npassword = \"pega-secret\"\n", pega.url),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("store ok"), "{}", stdout(&out));
    assert!(stdout(&out).contains("pega ok"), "{}", stdout(&out));
    assert!(pega.mock.events().is_empty(), "no event sent");

    let refused = format!("http://127.0.0.1:{}", free_port());
    let out = check_connect(
        dir.path(),
        &format!("[pega]\nendpoint = \"{refused}/in\"\n"),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("connection refused"),
        "{}",
        stderr(&out)
    );
}

/// `config check --connect` in `dir` with a SQLite store and `pega` as the `[pega]` sections.
async fn check_connect(dir: &std::path::Path, pega: &str) -> std::process::Output {
    std::fs::write(
        dir.join("pegabridge.toml"),
        format!("[store]\nurl = \"sqlite://c.db\"\n{pega}"),
    )
    .unwrap();
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || pegabridge(&dir, &["config", "check", "--connect"]))
        .await
        .unwrap()
}

#[test]
fn completions_are_generated_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = pegabridge(dir.path(), &["completions", shell]);
        assert!(out.status.success(), "{shell}");
        assert!(stdout(&out).contains("deliveries"), "{shell}");
    }
}

#[test]
fn config_check_refuses_what_serve_would_refuse_and_reports_every_problem() {
    let toml = "[server]\nlisten = \"localhost\"\n[store]\nurl = \"mysql://x\"\nsynchronous = \"fulll\"\n[pega.headers]\n\"bad header\" = \"x\"\n";
    for command in [&["config", "check"][..], &["serve"][..]] {
        let out = crate::helpers::with_config(toml, command);
        assert_eq!(out.status.code(), Some(2), "{command:?}");
        let err = stderr(&out);
        for key in [
            "server.listen",
            "store.url",
            "store.synchronous",
            "pega.headers.bad header",
        ] {
            assert!(err.contains(key), "{command:?} reports {key}: {err}");
        }
        assert!(
            err.lines()
                .filter(|l| l.contains("server.listen"))
                .all(|l| l.contains("pegabridge.toml: ")),
            "each problem names its file: {err}"
        );
    }
}

#[tokio::test]
async fn the_openapi_description_is_served_and_kept_current_in_the_repository() {
    let app = crate::server::spawn_app().await;
    let served: Value = app
        .get("/openapi.json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(served["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/webhooks/{mapping}",
        "/preview/{mapping}",
        "/activities",
        "/health",
        "/ready",
        "/metrics",
        "/admin/deliveries",
        "/admin/deliveries/{uuid}",
        "/admin/deliveries/replay",
        "/admin/sends",
        "/admin/sends/{uuid}",
        "/admin/sends/replay",
        "/admin/delivery/pause",
        "/admin/delivery/resume",
        "/openapi.json",
    ] {
        assert!(served["paths"][path].is_object(), "{path} is described");
    }
    let file = crate::helpers::root().join("docs/openapi.json");
    let current = pegabridge::http::openapi::json();
    if std::env::var("UPDATE_OPENAPI").is_ok() {
        std::fs::write(&file, current).unwrap();
    }
    let kept = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        kept == current,
        "docs/openapi.json is out of date: run UPDATE_OPENAPI=1 cargo test openapi"
    );
    let kept: Value = serde_json::from_str(&kept).unwrap();
    assert_eq!(kept, served);
}

#[test]
fn config_check_names_the_file_it_read_and_fails_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = pegabridge(dir.path(), &["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no configuration file"),
        "{}",
        stderr(&out)
    );
    let out = pegabridge(dir.path(), &["config", "check", "--allow-defaults"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("built-in defaults"),
        "{}",
        stdout(&out)
    );
    std::fs::write(
        dir.path().join("pegabridge.toml"),
        "[server]\nlisten = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = pegabridge(dir.path(), &["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "configuration file: {}",
            std::fs::canonicalize(dir.path().join("pegabridge.toml"))
                .unwrap()
                .display()
        )),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn config_check_connect_checks_the_store_without_creating_or_migrating_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_connect(dir.path(), "").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("does not exist yet"),
        "{}",
        stdout(&out)
    );
    assert!(
        !dir.path().join("c.db").exists(),
        "config check created the database"
    );
}

#[tokio::test]
async fn an_unreachable_postgresql_is_named_with_its_cause_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port(); // nothing listens there
    std::fs::write(
        dir.path().join("pegabridge.toml"),
        format!("[store]\nurl = \"postgres://pegabridge:s3cret-pw@127.0.0.1:{port}/db\"\n"),
    )
    .unwrap();
    let dir = dir.path().to_owned();
    let out =
        tokio::task::spawn_blocking(move || pegabridge(&dir, &["config", "check", "--connect"]))
            .await
            .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("PostgreSQL at postgres://"), "{err}");
    assert!(
        err.to_lowercase().contains("refused"),
        "the cause is named: {err}"
    );
    assert!(!err.contains("s3cret-pw"), "no password: {err}");
    assert!(!err.contains("pool timed out"), "{err}");
}

#[tokio::test]
async fn init_writes_a_starter_folder_that_serves_at_once_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = pegabridge(dir.path(), &["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for f in [
        "pegabridge.toml",
        "mappings/offer.toml",
        "mappings/example-trigger.json",
        "templates/offer.html",
    ] {
        let path = dir.path().join(f);
        assert!(path.is_file(), "{f}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by its owner only");
    }
    let config = std::fs::read_to_string(dir.path().join("pegabridge.toml")).unwrap();
    assert!(
        !config.contains("change-me"),
        "fresh tokens, not the examples'"
    );
    // What it wrote passes the check serve runs, and serve takes a trigger with it.
    let out = pegabridge(dir.path(), &["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("set a secret"), "{}", stderr(&out));
    let mapping = std::fs::read_to_string(dir.path().join("mappings/offer.toml")).unwrap();
    let token = mapping
        .split(":-")
        .nth(1)
        .and_then(|t| t.split('}').next())
        .unwrap()
        .to_owned();
    let port = free_port();
    std::fs::write(
        dir.path().join("pegabridge.toml"),
        config.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_pegabridge"))
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("PEGABRIDGE_TRIGGER_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;
    let trigger = std::fs::read(dir.path().join("mappings/example-trigger.json")).unwrap();
    let res = client
        .post(format!("{base}/webhooks/offer"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(trigger)
        .send()
        .await
        .unwrap();
    serve.kill().unwrap();
    let _ = serve.wait();
    assert_eq!(res.status(), 202);
    // A second init changes nothing.
    let before = std::fs::read(dir.path().join("mappings/offer.toml")).unwrap();
    let out = pegabridge(dir.path(), &["init"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already there"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(dir.path().join("mappings/offer.toml")).unwrap(),
        before
    );
}

/// `serve` at `RUST_LOG=trace` (with `wire` the documented PEGABRIDGE_LOG_WIRE=1), one
/// activity posted; its log.
async fn traced_serve(wire: bool) -> String {
    let dir = project_dir();
    let port = free_port();
    let config = dir.path().join("pegabridge.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://ops.db\"\n[activities]\ntoken = \"trace-test-activities-token\"\n"),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_pegabridge"));
    command
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env("RUST_LOG", "trace")
        .env_remove("PEGABRIDGE_LOG_WIRE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if wire {
        command.env("PEGABRIDGE_LOG_WIRE", "1");
    }
    let mut child = command.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;
    let res = client
        .post(format!("{base}/activities"))
        .bearer_auth("trace-test-activities-token")
        .json(
            &serde_json::json!({"metric": "clicks", "broadcast_id": 1, "customer_id": 1,
            "url": "https://shop.example/personal-data-in-a-body"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422, "an unknown personal broadcast");
    child.kill().unwrap();
    let mut log = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let _ = child.wait();
    log
}

#[tokio::test]
async fn at_trace_level_no_request_body_or_credential_reaches_the_log() {
    let log = traced_serve(false).await;
    assert!(log.contains("request"), "the request is logged: {log}");
    assert!(
        !log.contains("TRACE"),
        "the wire's trace lines are held back"
    );
    assert!(
        !log.contains("personal-data-in-a-body"),
        "a body in the log"
    );
    assert!(
        !log.contains("trace-test-activities-token"),
        "a credential in the log"
    );
    // With the documented option the same run still works (what the wire's libraries then
    // log is theirs: hyper here is built without its tracing).
    let wire = traced_serve(true).await;
    assert!(wire.contains("request"), "{wire}");
}
