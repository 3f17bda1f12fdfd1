//! The web console in a real browser: Debian's Chromium driven by Playwright (Python), against
//! a `serve` process and the stand-in Pega. Screenshots of each page are kept in
//! `target/console-screenshots/`. Playwright comes from a virtual environment under
//! `target/` made once; Chromium from Debian's `chromium` package (`.ci/run` installs it).
//! Without them the test fails naming what is missing, unless `PEGABRIDGE_SKIP_BROWSER=1`.

use crate::helpers::root;
use crate::pega::{pega_section, start_pega};
use crate::processes::{free_port, start, wait_healthy};
use crate::server::{ACTIVITY_TOKEN, ADMIN_TOKEN};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const PLAYWRIGHT: &str = "playwright==1.65.3";
const CHROMIUM: &str = "/usr/bin/chromium";

const MAPPING: &str = r#"
template = "offer.html"
subject = "Hi"
campaign_id = 1
campaign_name = "Console"
campaign_object_id = 1
content_id = 1
content_name = "Console"
broadcast_event_type = "SINGLEMAIL"
sub_type = "SINGLEMAIL"
[auth]
type = "bearer"
token = "console-token"
[recipient]
email = "email"
[variables.InteractionId]
path = "interaction"
required = true
[variables.OfferText]
path = "note"
"#;

/// The browser's part: every step, asserted; prints what the Rust side checks after it.
const SCRIPT: &str = r#"
import json, re, sys
from playwright.sync_api import sync_playwright, expect
base, token, shots, dead_uuid, interaction, hostile = sys.argv[1:7]
requests, dialogs = [], []
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.on("request", lambda r: requests.append(r.url))
    page = ctx.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    # Signed out: the sign-in page (401); a wrong token gets nothing.
    r = page.goto(base + "/console")
    assert r.status == 401, r.status
    page.get_by_label("Admin token").fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong token.")
    assert not ctx.cookies(), ctx.cookies()
    page.screenshot(path=shots + "/signin.png", full_page=True)
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    cookie = ctx.cookies()[0]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    page.screenshot(path=shots + "/overview.png", full_page=True)

    # An interaction found by its InteractionID, with its delivered event.
    page.get_by_role("link", name="Interactions").click()
    for _ in range(100):
        page.get_by_label("Search").fill(interaction)
        page.get_by_role("button", name="Find").click()
        if page.locator("li.event", has_text="delivered").count() > 0:
            break
        page.wait_for_timeout(200)
    expect(page.locator("li.event", has_text="delivered").first).to_be_visible()
    expect(page.get_by_text("ann@example.com").first).to_be_visible()
    # In time order: the send, a machine's open, a person's click, each with its verdict.
    metrics = [m.inner_text() for m in page.locator("li.event > strong:first-child").all()]
    assert metrics == ["broadcasts", "opens", "clicks"], metrics
    expect(page.locator("li.event", has_text="opens").locator(".verdict")).to_have_text("a machine's")
    expect(page.locator("li.event", has_text="clicks").locator(".verdict")).to_have_text("a person's")
    # A manual option holding HTML is shown as text, and runs nothing.
    expect(page.get_by_text(hostile, exact=True).first).to_be_visible()
    page.screenshot(path=shots + "/interactions.png", full_page=True)

    # A dead letter, replayed from its button.
    page.get_by_role("link", name="Deliveries").click()
    page.get_by_label("Status").select_option("dead")
    page.get_by_role("button", name="Filter", exact=True).click()
    row = page.locator("tr", has_text=dead_uuid)
    expect(row).to_contain_text("told to fail")
    page.screenshot(path=shots + "/deliveries.png", full_page=True)
    row.get_by_role("button", name="Replay").click()
    expect(page.get_by_role("status")).to_have_text("1 replayed")
    # The rest of a filter (dead broadcasts), with one button.
    page.get_by_label("Status").select_option("dead")
    page.get_by_label("Metric").select_option("broadcasts")
    page.get_by_role("button", name="Filter", exact=True).click()
    expect(page.locator("tr.dead")).to_have_count(1)
    page.get_by_role("button", name="Replay all of this filter").click()
    expect(page.get_by_role("status")).to_have_text("1 replayed")
    # The dead open, of another metric, stays.
    expect(page.locator("tr.dead")).to_have_count(1)
    expect(page.locator("tr.dead")).to_contain_text("opens")

    # The preview in sandboxed iframes, and a trigger's errors as the API gives them.
    page.get_by_role("link", name="Preview").click()
    page.get_by_label("Mapping").select_option("console")
    page.get_by_label("Trigger").fill(json.dumps({"email": "zoe@example.com", "interaction": "77", "note": hostile}))
    page.get_by_role("button", name="Render").click()
    frame = page.locator("iframe[title=desktop]")
    expect(frame).to_have_attribute("sandbox", "")
    expect(page.frame_locator("iframe[title=desktop]").locator("body")).to_contain_text(hostile)
    expect(page.locator("iframe[title=mobile]")).to_have_attribute("width", "375")
    expect(page.locator("pre.event")).to_contain_text('"uuid"')
    page.screenshot(path=shots + "/preview.png", full_page=True)
    page.get_by_label("Trigger").fill(json.dumps({"interaction": "77"}))
    page.get_by_role("button", name="Render").click()
    expect(page.get_by_role("alert")).to_contain_text("email")
    page.screenshot(path=shots + "/preview-error.png", full_page=True)

    # Data requests and forms without the session, or without its form token, are refused.
    anon = browser.new_context()
    for path in ["/console", "/console/deliveries?status=dead", "/console/interactions?q=" + interaction]:
        assert anon.request.get(base + path).status == 401, path
    refused = ctx.request.post(base + "/console/deliveries/replay", form={"csrf": "forged", "status": "dead"})
    assert refused.status == 403, refused.status
    anon.close()
    browser.close()

others = [u for u in requests if not u.startswith(base) and not u.startswith("about:") and not u.startswith("data:")]
print(json.dumps({"dialogs": dialogs, "other_hosts": others, "requests": len(requests)}))
"#;

/// The Python with Playwright, made once per machine under `target/`.
fn python() -> Option<PathBuf> {
    static MADE: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let made = MADE.get_or_init(|| {
        if !std::path::Path::new(CHROMIUM).exists() {
            return Err(format!(
                "{CHROMIUM} (Debian's chromium package) is not installed"
            ));
        }
        crate::helpers::venv("console-test-venv", "playwright.sync_api", &[PLAYWRIGHT])
    });
    match made {
        Ok(p) => Some(p.clone()),
        Err(_) if std::env::var("PEGABRIDGE_SKIP_BROWSER").is_ok_and(|v| v == "1") => {
            eprintln!("PEGABRIDGE_SKIP_BROWSER=1: browser test skipped");
            None
        }
        Err(e) => panic!(
            "the console test needs a browser ({e}); set PEGABRIDGE_SKIP_BROWSER=1 to skip it"
        ),
    }
}

async fn trigger(client: &reqwest::Client, base: &str, body: &Value) -> Value {
    let res = client
        .post(format!("{base}/webhooks/console"))
        .bearer_auth("console-token")
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    res.json().await.unwrap()
}

#[tokio::test]
async fn the_console_in_a_real_browser() {
    let Some(python) = python() else { return };
    let pega = start_pega().await;
    // The first two POSTs are refused for good: those events become dead letters.
    pega.mock.control(|b| {
        b.fail_next = 2;
        b.fail_status = Some(400);
    });
    let dir = crate::processes::project_dir();
    std::fs::write(dir.path().join("mappings/console.toml"), MAPPING).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("pegabridge.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\nurl = \"sqlite://console.db\"\n[activities]\ntoken = \"{ACTIVITY_TOKEN}\"\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\n{}",
            pega_section(&pega, "")
        ),
    )
    .unwrap();
    let mut server = start(&config);
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;

    let hostile = "<img src=x onerror=alert(1)>";
    let mut dead_uuids = Vec::new();
    let mut bob = Value::Null;
    for (email, interaction) in [("bob@example.com", "1111"), ("cy@example.com", "2222")] {
        let body = json!({"email": email, "interaction": interaction});
        let answer = trigger(&client, &base, &body).await;
        dead_uuids.push(answer["recipients"][0]["uuid"].as_str().unwrap().to_owned());
        bob = answer;
    }
    // A third dead letter, of another metric: an open (not replayed with the broadcasts).
    let mut open = json!({"metric": "opens", "broadcast_id": bob["broadcast_id"],
                      "customer_id": bob["recipients"][0]["customer_id"]});
    let dead_uuid = dead_uuids[0].clone();
    let start_wait = Instant::now();
    loop {
        let dead: Value = client
            .get(format!("{base}/admin/deliveries?status=dead"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let n = dead["deliveries"].as_array().map_or(0, Vec::len);
        if n == 2 && !open.is_null() {
            // The two sends are dead: the next POST (the open's) is refused too.
            pega.mock.control(|b| b.fail_next = 1);
            let res = client
                .post(format!("{base}/activities"))
                .bearer_auth(ACTIVITY_TOKEN)
                .json(&open)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 202);
            open = Value::Null;
        }
        if n == 3 {
            break;
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(20),
            "three dead letters"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = json!({"email": "ann@example.com", "interaction": "4242", "note": hostile});
    let ann = trigger(&client, &base, &body).await;
    let (b, c) = (
        ann["broadcast_id"].clone(),
        ann["recipients"][0]["customer_id"].clone(),
    );
    // An image proxy's open (a machine's) and a person's click.
    let engaged = client
        .post(format!("{base}/activities"))
        .bearer_auth(ACTIVITY_TOKEN)
        .json(&json!([
            {"metric": "opens", "broadcast_id": b, "customer_id": c,
             "user_agent": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"},
            {"metric": "clicks", "broadcast_id": b, "customer_id": c, "url": "https://shop.example/",
             "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15"}
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(engaged.status(), 202);

    let shots = root().join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    // Off this runtime's thread: the stand-in Pega answers on it meanwhile.
    let out = tokio::task::spawn_blocking({
        let (base, shots, dead_uuid) = (base.clone(), shots.clone(), dead_uuid.clone());
        move || {
            Command::new(python)
                .args(["-c", SCRIPT, &base, ADMIN_TOKEN])
                .arg(&shots)
                .args([dead_uuid.as_str(), "4242", hostile])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(seen["dialogs"], json!([]), "no script ran");
    assert_eq!(seen["other_hosts"], json!([]), "no request left the server");
    assert!(seen["requests"].as_u64() > Some(10));
    for shot in [
        "signin",
        "overview",
        "interactions",
        "deliveries",
        "preview",
        "preview-error",
    ] {
        assert!(
            shots.join(format!("{shot}.png")).metadata().unwrap().len() > 1000,
            "{shot}"
        );
    }
    // The replayed dead letters reached the stand-in Pega.
    let start_wait = Instant::now();
    for uuid in &dead_uuids {
        while !pega.mock.events().iter().any(|e| e["uuid"] == json!(uuid)) {
            assert!(
                start_wait.elapsed() < Duration::from_secs(20),
                "the replayed event arrives"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = server.kill();
    let _ = server.wait();
}
