//! The server end to end: real HTTP on port 0, a temporary database of the backend under test
//! (SQLite, then PostgreSQL: see `backend`).

use pegabridge::app::Application;
use pegabridge::config::Settings;
use pegabridge::store::Storage;
use serde_json::{json, Value};

pub use crate::backend::each_backend;

pub const TOKEN: &str = "test-token-123";
pub const ACTIVITY_TOKEN: &str = "activity-token-456";
pub const ADMIN_TOKEN: &str = "admin-token-789";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// The store's URL (`[store] url`).
    pub store_url: String,
    /// Dropped with the app: removes its PostgreSQL database.
    _database: Option<crate::backend::Database>,
}

const MAPPING: &str = r#"
template = "offer.html"
subject = "Your personal offer"
campaign_id = 22
campaign_name = "Next best offer"
campaign_object_id = 1
content_id = 4
content_name = "Offer mail"
broadcast_event_type = "CAMPAIGNMAIL"
sub_type = "CAMPAIGNMAIL"
mailing_type = "Service"
idempotency_key = "InteractionID"

[auth]
type = "bearer"
token = "${PB_TEST_TOKEN:-test-token-123}"

[recipient]
each = "Customers"
email = "Email"
external_id = "CustomerID"

[variables.UniqueOfferId]
path = "Offer.UniqueOfferId"
required = true

[variables.InteractionId]
path = "InteractionID"
required = true
pattern = "-?[0-9]{1,20}"

[variables.FirstName]
path = "FirstName"
"#;

const SINGLE: &str = r#"
template = "offer.html"
subject = "Hi"
campaign_id = 1
campaign_name = "Single"
campaign_object_id = 1
content_id = 1
content_name = "Single"
broadcast_event_type = "SINGLEMAIL"
sub_type = "SINGLEMAIL"

[auth]
type = "basic"
username = "pega"
password = "s3cret"

[recipient]
email = "customer.email"

[variables.UniqueOfferId]
path = "offer"
default = "NO-OFFER"

[variables.InteractionId]
path = "interaction"
required = true
"#;

/// Starts a server on port 0 with its own folder and database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with("", "").await.0
}

/// Like [`spawn_app`] with more `[server]` keys and more sections (`extra`); also returns the
/// server task.
pub async fn spawn_app_with(
    server: &str,
    extra: &str,
) -> (TestApp, tokio::task::JoinHandle<anyhow::Result<()>>) {
    spawn_app_customized(server, extra, |_| {}).await
}

/// Like [`spawn_app_with`], with `customize` applied to the built application before it runs.
pub async fn spawn_app_customized(
    server: &str,
    extra: &str,
    customize: impl FnOnce(&mut Application),
) -> (TestApp, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("templates")).unwrap();
    std::fs::create_dir_all(root.join("mappings")).unwrap();
    std::fs::copy(
        crate::helpers::root().join("templates/offer.html"),
        root.join("templates/offer.html"),
    )
    .unwrap();
    std::fs::write(root.join("mappings/offer.toml"), MAPPING).unwrap();
    std::fs::write(root.join("mappings/single.toml"), SINGLE).unwrap();
    let database = crate::backend::fresh_database().await;
    let body_limit = if server.contains("body_limit") {
        ""
    } else {
        "body_limit = 4096\n"
    };
    let store_url = database
        .as_ref()
        .map_or_else(|| "sqlite://test.db".to_owned(), |d| d.url.clone());
    std::fs::write(
        root.join("pegabridge.toml"),
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{body_limit}{server}\n\n[store]\nurl = \"{store_url}\"\n\n[account]\nportal_id = 1746\nportal_name = \"mokup\"\nbrand_id = 1\nbrand_name = \"Mok-Up\"\n\n[activities]\ntoken = \"{ACTIVITY_TOKEN}\"\n\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\n{extra}\n"),
    )
    .unwrap();
    let settings = Settings::load(Some(&root.join("pegabridge.toml"))).unwrap();
    let store_url = settings.store_url();
    let mut app = Application::build(&settings).await.unwrap();
    customize(&mut app);
    let address = format!("http://127.0.0.1:{}", app.port());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    let app = TestApp {
        address,
        client: reqwest::Client::new(),
        dir,
        shutdown: Some(tx),
        store_url,
        _database: database,
    };
    (app, task)
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// POSTs [`trigger`] to the `offer` mapping and returns the answer's JSON.
    pub async fn trigger_offer(&self) -> Value {
        self.post("/webhooks/offer", &trigger())
            .await
            .json()
            .await
            .unwrap()
    }

    /// The offer trigger again, with new interaction ids: the answer says who is mailable.
    pub async fn trigger_offer_again(&self) -> Value {
        let mut again = trigger();
        again["Customers"][0]["InteractionID"] = json!("7");
        again["Customers"][1]["InteractionID"] = json!("8");
        self.post("/webhooks/offer", &again)
            .await
            .json()
            .await
            .unwrap()
    }

    /// POST JSON with the offer mapping's bearer token.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        let req = self
            .client
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .json(body);
        req.send().await.unwrap()
    }

    /// POST JSON to the `single` mapping as user `pega` with `password`.
    pub async fn post_basic(&self, password: &str, body: &Value) -> reqwest::Response {
        let req = self.client.post(self.url("/webhooks/single"));
        let req = req.basic_auth("pega", Some(password)).json(body);
        req.send().await.unwrap()
    }

    /// POST a raw body with the bearer token and this content type.
    pub async fn post_raw(&self, path: &str, content_type: &str, body: &str) -> reqwest::Response {
        let req = self.client.post(self.url(path)).bearer_auth(TOKEN);
        let req = req
            .header("content-type", content_type)
            .body(body.to_owned());
        req.send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Result<reqwest::Response> {
        self.client.get(self.url(path)).send().await
    }

    /// The app's store, opened again (as another process would).
    pub async fn store(&self) -> Storage {
        Storage::connect(&self.store_url, "normal", 2)
            .await
            .unwrap()
    }

    /// The events committed to the outbox.
    pub async fn outbox(&self) -> Vec<Value> {
        Storage::connect(&self.store_url, "normal", 2)
            .await
            .unwrap()
            .outbox()
            .pending_events()
            .await
            .unwrap()
    }
}

pub fn trigger() -> Value {
    json!({
        "Offer": {"UniqueOfferId": "OFFER-1"},
        "Customers": [
            {"Email": "ann@example.com", "CustomerID": "c1", "FirstName": "Ann", "InteractionID": "-563481321460449721"},
            {"Email": "bob@example.org", "CustomerID": "c2", "InteractionID": 18446744073709551615u64}
        ]
    })
}
