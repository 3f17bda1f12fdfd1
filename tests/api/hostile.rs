//! Hostile and careless input at the edge: each case of the edge issue, against a real server.

use crate::helpers::{pegabridge, stderr, stdout};
use crate::server::{
    each_backend, spawn_app, spawn_app_with, trigger, TestApp, ADMIN_TOKEN, TOKEN,
};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An error answer's status and `error.code`.
async fn status_and_code(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    (status, body["error"]["code"].clone())
}

fn host(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_health_keeps_answering() {
    let (app, _) = spawn_app_with("header_timeout_secs = 1", "").await;
    // 300 clients each sending half a request's headers and then nothing.
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut tcp = tokio::net::TcpStream::connect(host(&app)).await.unwrap();
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(tcp);
    }
    let res = app.get("/health").await.unwrap();
    assert_eq!(res.status(), 200, "a fresh client is served meanwhile");
    // The server closes a connection whose headers do not arrive in time.
    let mut first = slow.swap_remove(0);
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(20), first.read(&mut buf))
        .await
        .expect("the server closes it")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        n == 0 || answer.starts_with("HTTP/1.1 408"),
        "closed (or 408) after the header timeout: {answer}"
    );
}

#[tokio::test]
async fn a_large_value_is_not_repeated_in_every_recipients_error() {
    let (app, _) = spawn_app_with("body_limit = 1048576", "").await;
    let big = "x".repeat(100_000);
    let customers: Vec<Value> = (0..1000)
        .map(|i| json!({"CustomerID": format!("c{i}"), "InteractionID": "1"}))
        .collect();
    let body = json!({"Email": big, "Offer": {"UniqueOfferId": "O"}, "Customers": customers});
    let res = app.post("/webhooks/offer", &body).await;
    assert_eq!(res.status(), 422);
    let text = res.text().await.unwrap();
    assert!(
        text.len() < 64 * 1024,
        "a bounded answer: {} bytes",
        text.len()
    );
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["error"]["code"], "invalid_trigger");
    assert_eq!(answer["error"]["fields"].as_array().unwrap().len(), 100);
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("and 990 more"));
}

#[tokio::test]
async fn a_trigger_wide_value_copied_into_every_recipient_hits_a_limit() {
    each_backend(|| async {
        let (app, _) = spawn_app_with("body_limit = 1048576", "").await;
        let mut t = trigger();
        t["FirstName"] = json!("y".repeat(20_000));
        t["Customers"][0]
            .as_object_mut()
            .unwrap()
            .remove("FirstName");
        let res = app.post("/webhooks/offer", &t).await;
        assert_eq!(res.status(), 413);
        let answer: Value = res.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "limit_exceeded");
        assert_eq!(answer["error"]["field"], "server.max_options_bytes");
        assert!(app.outbox().await.is_empty(), "nothing stored");
    })
    .await;
}

#[tokio::test]
async fn too_many_recipients_are_refused_naming_the_limit() {
    let (app, _) = spawn_app_with("max_recipients = 1", "").await;
    let res = app.post("/webhooks/offer", &trigger()).await;
    assert_eq!(res.status(), 413);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["error"]["field"], "server.max_recipients");
}

#[tokio::test]
async fn identifiers_keep_their_exact_text() {
    each_backend(|| async {
        let app = spawn_app().await;
        let customer = |id: Value, n: u32| {
            json!({"Offer": {"UniqueOfferId": "O"}, "Customers": [
                {"Email": format!("p{n}@x.nl"), "CustomerID": id, "InteractionID": n.to_string()}
            ]})
        };
        // A JSON number of 30 digits (numbers keep their text: serde_json's arbitrary_precision).
        let big = |digits: &str| serde_json::from_str::<Value>(digits).unwrap();
        let send = |body: Value| {
            let app = &app;
            async move {
                let res = app.post("/webhooks/offer", &body).await;
                res.json::<Value>().await.unwrap()
            }
        };
        let a = send(customer(big("123456789012345678901234567890"), 1)).await;
        let b = send(customer(big("123456789012345678901234567891"), 2)).await;
        assert_ne!(
            a["recipients"][0]["customer_id"], b["recipients"][0]["customer_id"],
            "numbers beyond 64 bits are not rounded into one customer"
        );
        let events = app.outbox().await;
        assert!(events
            .iter()
            .any(|e| e["external_id"] == "123456789012345678901234567891"));
        let res = app.post("/webhooks/offer", &customer(json!(true), 3)).await;
        assert_eq!(res.status(), 422);
        let answer: Value = res.json().await.unwrap();
        assert_eq!(answer["error"]["field"], "recipient.external_id");
    })
    .await;
}

#[test]
fn a_template_path_outside_the_templates_folder_is_refused() {
    for template in ["../../../etc/passwd", "/etc/passwd"] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("mappings")).unwrap();
        std::fs::create_dir_all(tmp.path().join("templates")).unwrap();
        std::fs::write(
            tmp.path().join("mappings/m.toml"),
            format!("template = \"{template}\"\nsubject = \"s\"\ncampaign_id = 1\ncampaign_name = \"c\"\ncampaign_object_id = 1\ncontent_id = 1\ncontent_name = \"c\"\nbroadcast_event_type = \"SINGLEMAIL\"\nsub_type = \"SINGLEMAIL\"\n[auth]\ntype = \"bearer\"\ntoken = \"t\"\n[recipient]\nemail = \"e\"\n"),
        )
        .unwrap();
        let out = pegabridge(tmp.path(), &["config", "check", "--allow-defaults"]);
        assert_eq!(out.status.code(), Some(2), "{template}");
        let err = stderr(&out);
        assert!(err.contains("key `template`"), "{err}");
        assert!(err.contains("inside the templates folder"), "{err}");
    }
}

#[tokio::test]
async fn activity_errors_name_the_field_and_use_their_own_code() {
    let app = spawn_app().await;
    let res = app
        .activities(
            &json!([{"metric": "opens", "broadcast_id": 1, "customer_id": 1},
                              {"metric": "opens", "broadcast_id": "x", "customer_id": 1}]),
        )
        .await;
    assert_eq!(res.status(), 422);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "invalid_activity");
    assert_eq!(answer["error"]["field"], "broadcast_id");
    assert_eq!(answer["error"]["fields"][0]["path"], "1.broadcast_id");
}

#[tokio::test]
async fn implausible_timestamps_are_refused() {
    let app = spawn_app().await;
    for ts in [json!(-5), json!(1_700_000_000_000i64), json!(12)] {
        let res = app
            .activities(
                &json!({"metric": "opens", "broadcast_id": 1, "customer_id": 1, "timestamp": ts}),
            )
            .await;
        assert_eq!(res.status(), 422, "{ts}");
        let answer: Value = res.json().await.unwrap();
        assert_eq!(answer["error"]["field"], "timestamp", "{ts}");
    }
}

#[tokio::test]
async fn an_idempotency_key_that_is_not_visible_ascii_is_refused() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url("/webhooks/offer"))
        .bearer_auth(TOKEN)
        .header(
            "Idempotency-Key",
            reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        )
        .json(&trigger())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["error"]["field"], "Idempotency-Key");
    assert!(app.outbox().await.is_empty());
}

#[tokio::test]
async fn a_nul_character_is_refused_the_same_way_on_both_backends() {
    each_backend(|| async {
        let app = spawn_app().await;
        let mut t = trigger();
        t["Customers"][1]["CustomerID"] = json!("c\u{0}2");
        let res = app.post("/webhooks/offer", &t).await;
        assert_eq!(res.status(), 422);
        let answer: Value = res.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "unstorable_value");
        assert_eq!(
            answer["error"]["fields"][0]["path"],
            "Customers.1.CustomerID"
        );
        let res = app
            .activities(
                &json!({"id": "a\u{0}", "metric": "opens", "broadcast_id": 1, "customer_id": 1}),
            )
            .await;
        assert_eq!(res.status(), 422);
        assert!(app.outbox().await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn callers_are_authenticated_before_their_input_is_parsed() {
    let app = spawn_app().await;
    let replay = app
        .client
        .post(app.url("/admin/deliveries/replay"))
        .header("content-type", "text/plain")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 401);
    let list = app
        .client
        .get(app.url("/admin/deliveries?limit=many"))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 401);
    let preview = app
        .client
        .post(app.url("/preview/offer?html=maybe"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(status_and_code(preview).await, (401, json!("unauthorized")));
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_the_json_error_shape() {
    let app = spawn_app().await;
    let res = app.get("/nope").await.unwrap();
    assert_eq!(status_and_code(res).await, (404, json!("not_found")));
    let res = app.get("/activities").await.unwrap();
    assert_eq!(
        status_and_code(res).await,
        (405, json!("method_not_allowed"))
    );
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let res = app.get("/nope").await.unwrap();
    assert_eq!(
        res.headers()["x-request-id"].len(),
        32,
        "a new id when none was given"
    );
}

#[tokio::test]
async fn ready_checks_the_store_and_the_admin_api_takes_ages() {
    let app = spawn_app().await;
    let res = app.get("/ready").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["delivery"],
        "not configured"
    );
    let res = app
        .admin_post(
            "/admin/deliveries/replay",
            &json!({"since": "2h", "status": "dead"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .admin_post("/admin/deliveries/replay", &json!({"since": "2h"}))
        .await;
    assert_eq!(res.status(), 400, "`since` needs a status");
    let res = app
        .admin_post(
            "/admin/deliveries/replay",
            &json!({"uuid": "x".repeat(20_000)}),
        )
        .await;
    assert_eq!(
        res.status(),
        413,
        "operator bodies have a small limit of their own"
    );
    let res = app
        .admin_post("/admin/deliveries/replay", &json!({"status": "inflight"}))
        .await;
    assert_eq!(res.status(), 400, "events in flight are not replayed");
    let res = app
        .admin_post(
            "/admin/deliveries/replay",
            &json!({"since": "99999999999999d", "status": "dead"}),
        )
        .await;
    assert_eq!(res.status(), 400, "an age that overflows is refused");
}

#[test]
fn the_cli_exits_2_on_bad_arguments_1_on_not_found_and_names_its_store() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = pegabridge(tmp.path(), &["deliveries", "list", "--status", "nonsense"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("nonsense"));
    let missing = pegabridge(
        tmp.path(),
        &["deliveries", "show", "00000000-0000-0000-0000-000000000000"],
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("store: sqlite://"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    use std::process::{Command, Stdio};
    let root = crate::helpers::root();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pegabridge"))
        .args([
            "preview",
            "--mapping",
            "offer",
            "--trigger",
            "mappings/example-trigger.json",
            "--html",
        ])
        .current_dir(&root)
        .env_remove("PEGABRIDGE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away at once, as `| head -0` would
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.status.code().is_some_and(|c| c == 0),
        "{:?} {err}",
        out.status
    );
}

#[test]
fn prepared_copies_keep_the_sources_mode() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("a.html");
    std::fs::write(&src, "<html><head></head></html>").unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = pegabridge(tmp.path(), &["prepare", "a.html", "--out", "out"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let mode = std::fs::metadata(tmp.path().join("out/a.html"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
}

/// The peak resident size of a process, in KiB (Linux).
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn amplifying_requests_cost_bounded_memory() {
    use crate::processes::{free_port, project_dir, start, wait_healthy};
    let dir = project_dir();
    std::fs::copy(
        crate::helpers::root().join("mappings/offer.toml"),
        dir.path().join("mappings/offer.toml"),
    )
    .unwrap();
    let port = free_port();
    let config = dir.path().join("pegabridge.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://amp.db\"\n"),
    )
    .unwrap();
    let mut child = start(&config);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;
    let before = peak_kib(child.id());
    // 1: a large top-level value that every recipient's error would quote (was 200 MB).
    let customers: Vec<Value> = (0..1000)
        .map(|i| json!({"CustomerID": format!("c{i}")}))
        .collect();
    let quoted = json!({"Email": "x".repeat(100_000), "Offer": {"UniqueOfferId": "O"}, "Customers": customers});
    // 2: a valid trigger whose large trigger-wide value every recipient's options would copy.
    let customers: Vec<Value> = (0..1000)
        .map(|i| json!({"Email": format!("c{i}@x.nl"), "CustomerID": format!("c{i}"), "InteractionID": format!("{i}")}))
        .collect();
    let copied = json!({"FirstName": "y".repeat(100_000), "Offer": {"UniqueOfferId": "O"}, "Customers": customers});
    for (body, status) in [(quoted, 422), (copied, 413)] {
        for _ in 0..2 {
            let res = client
                .post(format!("{base}/webhooks/offer"))
                .bearer_auth("change-me")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), status);
            let text = res.text().await.unwrap();
            assert!(text.len() < 64 * 1024, "{} bytes", text.len());
        }
    }
    let grown_mib = (peak_kib(child.id()).saturating_sub(before)) / 1024;
    child.kill().unwrap();
    let _ = child.wait();
    assert!(grown_mib < 64, "peak memory grew by {grown_mib} MiB");
}

#[tokio::test]
async fn a_full_disk_answers_503_and_ready_says_so() {
    use crate::processes::{free_port, project_dir, start, wait_healthy};
    let dir = project_dir();
    let disk = dir.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    // A small filesystem of its own (root mounts a tmpfs, as this machine kind and CI run).
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&disk)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "mounting a tmpfs of the test's own (needs root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(disk.clone());
    let port = free_port();
    let config = dir.path().join("pegabridge.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://{}\"\nmin_free_mb = 1\n",
            disk.join("full.db").display()
        ),
    )
    .unwrap();
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Killed(start(&config));
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;
    let ready = client.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // Fill the disk.
    {
        use std::io::Write;
        let mut filler = std::fs::File::create(disk.join("filler")).unwrap();
        for size in [64 * 1024, 4096, 1] {
            let block = vec![0u8; size];
            while filler.write_all(&block).is_ok() {}
        }
        let _ = filler.sync_all();
    }
    let ready = client.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while the disk is full");
    let trigger = client
        .post(format!("{base}/webhooks/crash"))
        .bearer_auth("crash-token")
        .json(&json!({"email": "a@b.nl", "interaction": 1}))
        .send()
        .await
        .unwrap();
    // SQLite may still commit a small write into its journal's old space; when it cannot, the
    // answer is an outage (503, retry later), never an internal error.
    match trigger.status().as_u16() {
        202 => {}
        503 => assert!(trigger.headers().contains_key("retry-after")),
        other => panic!("a full disk answered {other}"),
    }
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "liveness does not depend on the disk");
    // Room again: ready again, and the write goes through.
    std::fs::remove_file(disk.join("filler")).unwrap();
    let ready = client.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let trigger = client
        .post(format!("{base}/webhooks/crash"))
        .bearer_auth("crash-token")
        .json(&json!({"email": "a@b.nl", "interaction": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(trigger.status(), 202);
}

#[tokio::test]
async fn a_replay_leaves_events_on_their_way_alone_so_replaying_twice_sends_once() {
    each_backend(|| async {
        let (app, pega) = crate::pega::spawn_delivering("").await;
        let uuid = crate::pega::send_single(&app, 77).await;
        crate::pega::wait_for_events(&pega, 1).await;
        // The receiver has it; the worker records the outcome a moment later: wait for the
        // recorded outcome, not the receiver (a replay selects only what is recorded done).
        let path = format!("/admin/deliveries/{uuid}");
        app.admin_until(&path, |v| v["delivery"]["status"] == "delivered")
            .await;
        app.admin_post("/admin/delivery/pause", &json!({})).await;
        let replay = |body: Value| {
            let app = &app;
            async move {
                let res = app.admin_post("/admin/deliveries/replay", &body).await;
                res.json::<Value>().await.unwrap()["replayed"].clone()
            }
        };
        assert_eq!(
            replay(json!({"uuid": uuid})).await,
            1,
            "a delivered event is replayed"
        );
        assert_eq!(
            replay(json!({"uuid": uuid})).await,
            0,
            "a pending one is left as it is"
        );
        assert_eq!(replay(json!({"status": "delivered"})).await, 0);
        app.admin_post("/admin/delivery/resume", &json!({})).await;
        let events = crate::pega::wait_for_events(&pega, 2).await;
        assert_eq!(events.len(), 2, "the original and one replay");
        let settled = app
            .admin_until(&format!("/admin/deliveries/{uuid}"), |v| {
                v["delivery"]["status"] == "delivered"
            })
            .await;
        assert_eq!(settled["delivery"]["status"], "delivered");
        assert_eq!(pega.mock.events().len(), 2, "not a third copy");
    })
    .await;
}

#[test]
fn the_cli_needs_a_status_with_since() {
    let tmp = tempfile::tempdir().unwrap();
    let out = pegabridge(tmp.path(), &["deliveries", "replay", "--since", "2h"]);
    assert_eq!(out.status.code(), Some(2));
    let out = pegabridge(
        tmp.path(),
        &["deliveries", "replay", "--status", "inflight"],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "events in flight are not replayed"
    );
    let out = pegabridge(
        tmp.path(),
        &["deliveries", "replay", "--status", "dead", "--since", "2h"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test]
async fn a_deleted_or_replaced_database_file_is_noticed() {
    for replace in [false, true] {
        let app = spawn_app().await; // SQLite: test.db in the app's folder
        let db = app.dir.path().join("test.db");
        assert_eq!(app.post("/webhooks/offer", &trigger()).await.status(), 202);
        std::fs::remove_file(&db).unwrap();
        if replace {
            std::fs::write(&db, b"").unwrap();
        }
        let res = app.get("/ready").await.unwrap();
        assert_eq!(res.status(), 503, "replace={replace}: not ready");
        let mut t = trigger();
        t["Customers"][0]["InteractionID"] = json!("7");
        t["Customers"][1]["InteractionID"] = json!("8");
        let res = app.post("/webhooks/offer", &t).await;
        assert_eq!(
            res.status(),
            503,
            "replace={replace}: nothing acknowledged into a lost file"
        );
        let answer: Value = res.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "unavailable");
    }
}

#[tokio::test]
async fn finished_events_can_be_removed_and_recent_ones_are_kept() {
    each_backend(|| async {
        let (app, pega) = crate::pega::spawn_delivering("").await;
        let delivered = crate::pega::send_single(&app, 31).await;
        crate::pega::wait_for_events(&pega, 1).await;
        app.admin_until(&format!("/admin/deliveries/{delivered}"), |v| {
            v["delivery"]["status"] == "delivered"
        })
        .await;
        pega.mock.control(|b| {
            b.fail_next = 1;
            b.fail_status = Some(400);
        });
        let dead = crate::pega::send_single(&app, 32).await;
        app.admin_until("/admin/deliveries?status=dead", |v| {
            !v["deliveries"].as_array().unwrap().is_empty()
        })
        .await;
        let store = app.store().await;
        let week_ago = pegabridge::event::now() - 7 * 86_400;
        use pegabridge::store::Purge;
        assert_eq!(
            store
                .outbox()
                .purge(Purge::Delivered, week_ago, 1000)
                .await
                .unwrap(),
            0,
            "retention keeps recent events"
        );
        let now = pegabridge::event::now() + 1;
        assert_eq!(
            store
                .outbox()
                .purge(Purge::Delivered, now, 1000)
                .await
                .unwrap(),
            1
        );
        let res = app
            .client
            .get(app.url(&format!("/admin/deliveries/{delivered}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "removed with its attempts");
        // Dead letters go only when an operator says so, from the command line.
        let dir = app.dir.path().to_owned();
        let out = tokio::task::spawn_blocking(move || {
            pegabridge(&dir, &["deliveries", "purge", "--status", "dead"])
        })
        .await
        .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out).contains("1 dead events removed"),
            "{}",
            stdout(&out)
        );
        let shown = app.admin_get("/admin/deliveries?status=dead").await;
        assert!(shown["deliveries"].as_array().unwrap().is_empty(), "{dead}");
    })
    .await;
}

/// Sends a request's head announcing a body of `length` bytes, then no body at all, and reads
/// the answer's status line.
async fn head_only(app: &TestApp, path: &str, auth: &str, length: usize) -> String {
    let mut tcp = tokio::net::TcpStream::connect(host(app)).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {length}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn credentials_are_checked_before_the_body_is_read() {
    // The request timeout is short: a server that waited for the body that never comes would
    // answer 503 (timeout) instead of 401.
    let postmark = "[events.postmark]\nusername = \"pm\"\npassword = \"postmark-secret-1\"\n";
    let (app, _) = spawn_app_with("request_timeout_secs = 2", postmark).await;
    for path in [
        "/activities",
        "/webhooks/offer",
        "/preview/offer",
        "/admin/deliveries/replay",
        "/events/postmark",
    ] {
        let wrong = "Authorization: Bearer wrong\r\n";
        let status = head_only(&app, path, wrong, 900_000).await;
        assert!(status.starts_with("HTTP/1.1 401"), "{path}: {status}");
        let status = head_only(&app, path, "", 900_000).await;
        assert!(
            status.starts_with("HTTP/1.1 401"),
            "{path} without credentials: {status}"
        );
    }
    // An unknown mapping or platform answers 404 the same way, before the body.
    let status = head_only(&app, "/webhooks/nope", "", 900_000).await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    let status = head_only(&app, "/events/sendgrid", "", 900_000).await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    // With the right credentials the body is read (and its absence times out): the check
    // above is about the credentials, not a server that never reads bodies.
    let right = format!("Authorization: Bearer {ADMIN_TOKEN}\r\n");
    let status = head_only(&app, "/admin/deliveries/replay", &right, 10).await;
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
}

#[tokio::test]
async fn an_unauthenticated_flood_of_large_bodies_costs_bounded_memory_and_health_answers() {
    let (mut child, port, _dir) =
        serve_process("[activities]\ntoken = \"flood-activities-token\"\n").await;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let before = peak_kib(child.id());
    // 300 connections each sending almost 1 MB without credentials: each is answered 401 from
    // its headers; the bodies are not read into memory.
    let body = vec![b'x'; 1_000_000];
    let floods: Vec<_> = (0..300)
        .map(|i| {
            let body = body.clone();
            let path = ["/activities", "/webhooks/crash", "/admin/deliveries/replay"][i % 3];
            async move {
                let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
                tcp.write_all(head.as_bytes()).await.unwrap();
                // The server may answer and close before the body is through: that is the point.
                let _ = tcp.write_all(&body).await;
                let mut answer = vec![0u8; 64];
                let n = tcp.read(&mut answer).await.unwrap_or(0);
                String::from_utf8_lossy(&answer[..n]).to_string()
            }
        })
        .collect();
    let answers = futures::future::join_all(floods).await;
    let refused = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 401"))
        .count();
    assert!(refused >= 290, "{refused} of 300 answered 401");
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let grown_mib = (peak_kib(child.id()) - before) / 1024;
    child.kill().unwrap();
    let _ = child.wait();
    assert!(grown_mib <= 64, "peak memory grew by {grown_mib} MiB");
}

#[tokio::test]
async fn sighup_drains_and_stops_the_server_like_sigterm() {
    let (mut child, _port, _dir) = serve_process("").await;
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let mut status = None;
    for _ in 0..400 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(status) = status else {
        child.kill().unwrap();
        panic!("still running after SIGHUP");
    };
    // Stopped by its own hand (exit 0), not killed by the signal.
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn bodies_read_before_their_sender_is_known_are_few_at_once_and_quick() {
    // SendGrid signs the body: its sender is known only once the body is read.
    let key = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g==";
    let (app, _) = spawn_app_with(
        "max_unverified_bodies = 4\nunverified_body_secs = 1\nrequest_timeout_secs = 30",
        &format!("[events.sendgrid]\npublic_key = \"{key}\"\n"),
    )
    .await;
    // Four slow senders hold every place...
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut tcp = tokio::net::TcpStream::connect(host(&app)).await.unwrap();
        tcp.write_all(
            b"POST /events/sendgrid HTTP/1.1\r\nHost: x\r\nContent-Length: 500000\r\n\r\n[",
        )
        .await
        .unwrap();
        slow.push(tcp);
    }
    // (Each is being read once its request reached the handler: the fifth waits for that.)
    let mut busy = None;
    for _ in 0..200 {
        let status = head_only(&app, "/events/sendgrid", "", 500_000).await;
        if status.starts_with("HTTP/1.1 503") {
            busy = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        busy.is_some(),
        "a fifth unverified body is refused at once while four are read"
    );
    // ...while everything else is served.
    assert_eq!(app.get("/health").await.unwrap().status(), 200);
    // A slow body is cut off after unverified_body_secs: 408, not the request timeout.
    let mut buf = vec![0u8; 1024];
    let n = slow[0].read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
}

#[tokio::test]
async fn a_small_trigger_cannot_expand_into_a_large_write() {
    let (app, _) = spawn_app_with("body_limit = 1048576", "").await;
    // An 8 KB trigger-wide value (within server.max_options_bytes) copied into 400 recipients:
    // a 40 KB trigger that would write 3.2 MB of manual options.
    let customers: Vec<Value> = (0..400)
        .map(|i| json!({"Email": format!("c{i}@x.nl"), "CustomerID": format!("c{i}"), "InteractionID": format!("{i}")}))
        .collect();
    let body = json!({"FirstName": "y".repeat(8_000), "Offer": {"UniqueOfferId": "O"}, "Customers": customers});
    let res = app.post("/webhooks/offer", &body).await;
    let (status, code) = status_and_code(res).await;
    assert_eq!((status, code), (413, json!("limit_exceeded")));
    let res = app.post("/webhooks/offer", &body).await;
    let answer: Value = res.json().await.unwrap();
    assert_eq!(
        answer["error"]["field"], "server.max_trigger_expansion",
        "{answer}"
    );
    assert!(app.outbox().await.is_empty(), "nothing half-written");
    // The same recipients with a small trigger-wide value are taken.
    let body =
        json!({"FirstName": "Ann", "Offer": {"UniqueOfferId": "O"}, "Customers": customers[..400]});
    let res = app.post("/webhooks/offer", &body).await;
    assert_eq!(res.status(), 202);
}

/// `pegabridge serve` as a process on a free port over SQLite, with `more` configuration;
/// healthy when returned (its folder lives as long as the returned guard).
async fn serve_process(more: &str) -> (std::process::Child, u16, tempfile::TempDir) {
    use crate::processes::{free_port, project_dir, start, wait_healthy};
    let dir = project_dir();
    let port = free_port();
    let config = dir.path().join("pegabridge.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://serve.db\"\n{more}"
        ),
    )
    .unwrap();
    let child = start(&config);
    wait_healthy(&reqwest::Client::new(), &format!("http://127.0.0.1:{port}")).await;
    (child, port, dir)
}
