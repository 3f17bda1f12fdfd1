//! `pegabridge deliveries ...` and `pegabridge mock-pega` as an operator runs them.

use crate::helpers::{pegabridge, stdout};
use crate::server::{each_backend, spawn_app};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test]
async fn deliveries_can_be_listed_shown_replayed_and_paused_from_the_command_line() {
    each_backend(|| async {
        let app = spawn_app().await;
        let answer: Value = app.trigger_offer().await;
        let uuid = answer["recipients"][0]["uuid"].as_str().unwrap().to_owned();
        let dir = app.dir.path().to_owned();
        let config = dir.join("pegabridge.toml");
        let config = config.to_str().unwrap().to_owned();
        let run = move |args: &[&str]| {
            let mut all = vec!["--config", config.as_str(), "deliveries"];
            all.extend_from_slice(args);
            pegabridge(&dir, &all)
        };
        let run = std::sync::Arc::new(run);
        let r = run.clone();
        let list = tokio::task::spawn_blocking(move || r(&["list", "--status", "pending"]))
            .await
            .unwrap();
        assert!(list.status.success());
        assert!(stdout(&list).contains(&uuid), "{}", stdout(&list));
        assert_eq!(stdout(&list).lines().count(), 3, "a header and two events");

        let (r, u) = (run.clone(), uuid.clone());
        let show = tokio::task::spawn_blocking(move || r(&["show", &u]))
            .await
            .unwrap();
        let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
        assert_eq!(shown["event"]["uuid"], uuid.as_str());
        assert_eq!(shown["delivery"]["status"], "pending");

        let (r, u) = (run.clone(), uuid.clone());
        let replay = tokio::task::spawn_blocking(move || r(&["replay", &u]))
            .await
            .unwrap();
        assert!(
            stdout(&replay).contains("0 events will be delivered again"),
            "a pending event is on its way: a replay leaves it as it is: {}",
            stdout(&replay)
        );

        let r = run.clone();
        let none = tokio::task::spawn_blocking(move || r(&["replay"]))
            .await
            .unwrap();
        assert_eq!(none.status.code(), Some(2), "replay needs a selection");

        let r = run.clone();
        let paused = tokio::task::spawn_blocking(move || r(&["pause"]))
            .await
            .unwrap();
        assert!(stdout(&paused).contains("delivery paused"));
        assert!(app.admin_get("/admin/deliveries").await["deliveries"].is_array());
        assert!(app.store().await.outbox().is_paused().await.unwrap());
    })
    .await;
}

#[test]
fn mock_pega_checks_credentials_and_the_contract_and_prints_each_event() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pegabridge"))
        .args([
            "mock-pega",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--username",
            "u",
            "--password",
            "p",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("http://127.0.0.1:{port}/in");
    let seed: Value = serde_json::from_str(
        &std::fs::read_to_string(crate::helpers::root().join("tests/seed/opens.json")).unwrap(),
    )
    .unwrap();
    let statuses = rt.block_on(async {
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if client.post(&url).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let post = |user: &'static str, body: Value| {
            client
                .post(&url)
                .basic_auth(user, Some("p"))
                .json(&body)
                .send()
        };
        let ok = post("u", seed.clone()).await.unwrap().status().as_u16();
        let wrong_user = post("x", seed.clone()).await.unwrap().status().as_u16();
        let mut broken = seed.clone();
        broken[0].as_object_mut().unwrap().remove("os");
        let not_contract = post("u", broken).await.unwrap().status().as_u16();
        let not_array = post("u", json!({"metric": "opens"}))
            .await
            .unwrap()
            .status()
            .as_u16();
        (ok, wrong_user, not_contract, not_array)
    });
    assert_eq!(statuses, (200, 401, 400, 400));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        line.contains("c69cc862-5c43-4a84-bc53-d38bfac8fb5c"),
        "{line}"
    );
    assert!(line.contains("opens"), "{line}");
}

#[test]
fn deliveries_commands_need_only_the_store_settings() {
    let dir = tempfile::tempdir().unwrap();
    // The server's secrets come from its environment; an operator's shell lacks them.
    std::fs::write(
        dir.path().join("pegabridge.toml"),
        "[store]\nurl = \"sqlite://ops.db\"\n[activities]\ntoken = \"${PEGABRIDGE_TEST_UNSET_SECRET}\"\n[pega]\nendpoint = \"http://127.0.0.1:9/x\"\n[pega.auth]\ntype = \"basic\"\nusername = \"u\"\npassword = \"${PEGABRIDGE_TEST_UNSET_PASSWORD}\"\n",
    )
    .unwrap();
    let out = crate::helpers::pegabridge(dir.path(), &["deliveries", "list"]);
    assert!(out.status.success(), "{}", crate::helpers::stderr(&out));
    // The server itself still needs them, and says which.
    let out = crate::helpers::pegabridge(dir.path(), &["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        crate::helpers::stderr(&out).contains("PEGABRIDGE_TEST_UNSET_SECRET"),
        "{}",
        crate::helpers::stderr(&out)
    );
}
