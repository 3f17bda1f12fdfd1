//! `/console`: the web console, behind `[admin] token` (without one it is off: 404). A
//! sign-in makes a session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` behind https,
//! eight hours); every page and form needs it (401 with the sign-in page otherwise), and
//! every form that changes something carries the session's own token and, when the browser
//! says where it comes from, this server's origin (403 otherwise). Pages are HTML, not the
//! API: they are not in `/openapi.json`.

use super::AppState;
use crate::console::pages;
use crate::outbox::{Done, Lane, Replay, Status};
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::Markup;
use serde::Deserialize;

const COOKIE: &str = "pegabridge_console";

/// The console's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(overview))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/interactions", get(interactions))
        .route("/console/deliveries", get(deliveries))
        .route("/console/deliveries/replay", post(replay))
        .route("/console/preview", get(preview_page).post(preview))
}

/// An HTML answer with the console's security headers.
fn page(status: StatusCode, markup: Markup) -> Response {
    let mut r = (status, axum::response::Html(markup.into_string())).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(pages::CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Why a console request is refused.
pub enum Refused {
    /// No `[admin] token`: the console is off.
    Off,
    /// No session: the sign-in page.
    SignIn,
    /// A form without the session's token, or from another origin.
    Forbidden,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Off => {
                (StatusCode::NOT_FOUND, "the console needs [admin] token").into_response()
            }
            Refused::SignIn => page(StatusCode::UNAUTHORIZED, pages::login(None)),
            Refused::Forbidden => {
                tracing::warn!(
                    "console: a form without its session's token or from another origin refused"
                );
                (StatusCode::FORBIDDEN, "forbidden").into_response()
            }
        }
    }
}

/// A signed-in console session: its id and its form token.
pub struct Session {
    id: String,
    csrf: String,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refused> {
        if state.admin_token.is_none() {
            return Err(Refused::Off);
        }
        let id = cookie(&parts.headers).ok_or(Refused::SignIn)?;
        let csrf = state.console.check(&id).ok_or(Refused::SignIn)?;
        // A state-changing request must come from this server's pages.
        if parts.method != axum::http::Method::GET && !same_origin(&parts.headers) {
            return Err(Refused::Forbidden);
        }
        Ok(Self { id, csrf })
    }
}

impl Session {
    /// A signed-in page of the console: `body` under the navigation, `title` highlighted.
    fn page(&self, title: &str, body: Markup) -> Response {
        page(StatusCode::OK, pages::layout(title, &self.csrf, body))
    }

    /// Whether a form's token is this session's.
    fn check(&self, presented: &str) -> Result<(), Refused> {
        if crate::config::secret::constant_time_eq(self.csrf.as_bytes(), presented.as_bytes()) {
            Ok(())
        } else {
            Err(Refused::Forbidden)
        }
    }
}

/// The session cookie's value, if any.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Whether the browser's `Origin` (when it sends one) is this server (its `Host`).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    origin_host.is_some() && origin_host == host
}

async fn login_page(State(state): State<AppState>) -> Response {
    if state.admin_token.is_none() {
        return Refused::Off.into_response();
    }
    page(StatusCode::OK, pages::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// Signs in with the admin token: a session cookie and the overview; a wrong token gets the
/// sign-in page again (401) and nothing else.
async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let Some(token) = &state.admin_token else {
        return Refused::Off.into_response();
    };
    if !same_origin(&headers) {
        return Refused::Forbidden.into_response();
    }
    if !token.matches(f.token.as_bytes()) {
        tracing::warn!("console: sign-in with a wrong token refused");
        return page(StatusCode::UNAUTHORIZED, pages::login(Some("Wrong token.")));
    }
    let (id, _) = state.console.create();
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
        crate::console::Sessions::TTL.as_secs(),
        if https { "; Secure" } else { "" }
    );
    let mut r = Redirect::to("/console").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    session: Session,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = session.check(&f.csrf) {
        return r.into_response();
    }
    state.console.remove(&session.id);
    let mut r = Redirect::to("/console/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "pegabridge_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

async fn overview(State(state): State<AppState>, session: Session) -> Response {
    let stats = state
        .store
        .outbox()
        .outbox_stats()
        .await
        .unwrap_or_default();
    let sinks = state
        .metrics
        .lanes()
        .into_iter()
        .filter(|(lane, _)| match lane {
            Lane::Pega => state.tasks.status("delivery").is_some(),
            Lane::Kafka => state.tasks.status("kafka").is_some(),
        })
        .map(|(lane, m)| {
            let (limit, breaker) = m.shown();
            let breaker = ["closed", "open", "half-open (probing)"]
                .get(breaker as usize)
                .copied()
                .unwrap_or("?");
            (lane.as_str().to_owned(), limit, breaker.to_owned())
        })
        .collect();
    let mail = match &state.mail {
        Some(_) => state
            .store
            .backend()
            .send_queue()
            .await
            .ok()
            .map(|q| (q.pending, q.inflight)),
        None => None,
    };
    let view = pages::OverviewView {
        pending: stats.pending,
        inflight: stats.inflight,
        delivered: stats.delivered,
        dead: stats.dead,
        oldest_pending_secs: stats.oldest_pending_age_secs,
        sinks,
        mail,
        charts: state.samples.charts(),
    };
    session.page("Overview", pages::overview(&view))
}

#[derive(Deserialize)]
struct DeliveriesQuery {
    status: Option<String>,
    metric: Option<String>,
    notice: Option<String>,
}

/// The newest rows looked through for a filter.
const SCANNED: usize = 10_000;
/// The rows shown.
const SHOWN: usize = 200;

async fn deliveries(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<DeliveriesQuery>,
) -> Response {
    let status = q.status.as_deref().filter(|s| !s.is_empty());
    let metric = q.metric.as_deref().filter(|s| !s.is_empty());
    let parsed = status.map(str::parse::<Status>).transpose();
    let Ok(parsed) = parsed else {
        return (StatusCode::BAD_REQUEST, "status: not a status").into_response();
    };
    let rows = match state.store.outbox().deliveries(parsed, SCANNED).await {
        Ok(rows) => rows,
        Err(e) => return super::error::ApiError::store(e).into_response(),
    };
    let shown: Vec<_> = rows
        .into_iter()
        .filter(|d| metric.is_none_or(|m| d.metric == m))
        .take(SHOWN)
        .collect();
    let view = pages::DeliveriesView {
        rows: &shown,
        status,
        metric,
        scanned: SCANNED,
        notice: q.notice.as_deref(),
    };
    session.page("Deliveries", pages::deliveries(&view, &session.csrf))
}

#[derive(Deserialize)]
struct ReplayForm {
    csrf: String,
    uuid: Option<String>,
    sink: Option<Lane>,
    status: Option<String>,
    metric: Option<String>,
}

/// Replays one dead letter (the row of one sink: the other sink's, delivered, is not sent
/// again), every dead letter, or every dead letter of a metric (among the newest the
/// Deliveries page looks through).
async fn replay(
    State(state): State<AppState>,
    session: Session,
    Form(f): Form<ReplayForm>,
) -> Response {
    if let Err(r) = session.check(&f.csrf) {
        return r.into_response();
    }
    let metric = f.metric.filter(|m| !m.is_empty());
    let which: Vec<Replay> = match (f.uuid, f.status.as_deref(), metric) {
        (Some(uuid), _, _) => vec![Replay::DeadRow {
            uuid,
            lane: f.sink.unwrap_or(Lane::Pega),
        }],
        (None, Some("dead"), None) => vec![Replay::Status(Done::Dead)],
        (None, Some("dead"), Some(m)) => {
            let dead = state.store.outbox().deliveries(Some(Status::Dead), SCANNED);
            match dead.await {
                Ok(rows) => (rows.into_iter())
                    .filter(|d| d.metric == m)
                    .map(|d| Replay::DeadRow {
                        uuid: d.uuid,
                        lane: d.sink,
                    })
                    .collect(),
                Err(e) => return super::error::ApiError::store(e).into_response(),
            }
        }
        _ => {
            let why = "uuid (and sink), or status=dead (and a metric)";
            return (StatusCode::BAD_REQUEST, why).into_response();
        }
    };
    let mut n = 0;
    for one in which {
        match state.store.outbox().replay(one).await {
            Ok(k) => n += k,
            Err(e) => return super::error::ApiError::store(e).into_response(),
        }
    }
    state.outbox.notify_one();
    state.store.wake_all();
    tracing::info!(events = n, "console: replayed");
    Redirect::to(&format!(
        "/console/deliveries?status=dead&notice={n}+replayed"
    ))
    .into_response()
}

async fn preview_page(State(state): State<AppState>, session: Session) -> Response {
    let names = mapping_names(&state);
    let view = pages::PreviewView {
        mappings: &names,
        mapping: None,
        trigger: "",
        result: None,
    };
    session.page("Preview", pages::preview(&view, &session.csrf))
}

fn mapping_names(state: &AppState) -> Vec<String> {
    let mut names = state.mappings.names();
    names.sort();
    names
}

#[derive(Deserialize)]
struct PreviewForm {
    csrf: String,
    mapping: String,
    trigger: String,
}

/// Renders a trigger as `POST /preview/{mapping}?html=true` would, the errors as it gives
/// them.
async fn preview(
    State(state): State<AppState>,
    session: Session,
    Form(f): Form<PreviewForm>,
) -> Response {
    if let Err(r) = session.check(&f.csrf) {
        return r.into_response();
    }
    let result = match (
        state.mappings.get(&f.mapping),
        serde_json::from_str(&f.trigger),
    ) {
        (None, _) => Err(super::error::ApiError::NotFound(format!(
            "no mapping `{}`",
            f.mapping
        ))),
        (_, Err(e)) => Err(super::error::ApiError::BadRequest(format!(
            "the trigger is not JSON: {e}"
        ))),
        (Some(mapping), Ok(trigger)) => crate::broadcast::preview(
            &state.account,
            &state.plan,
            &state.variables,
            &mapping,
            &trigger,
            true,
        )
        .map_err(super::error::ApiError::from),
    };
    let result = match result {
        Ok(p) => Ok(p),
        Err(e) => {
            let r = e.into_response();
            let status = r.status().as_u16();
            let body = axum::body::to_bytes(r.into_body(), 64 * 1024)
                .await
                .unwrap_or_default();
            Err((status, serde_json::from_slice(&body).unwrap_or_default()))
        }
    };
    let names = mapping_names(&state);
    let view = pages::PreviewView {
        mappings: &names,
        mapping: Some(&f.mapping),
        trigger: &f.trigger,
        result: Some(result),
    };
    session.page("Preview", pages::preview(&view, &session.csrf))
}

#[derive(Deserialize)]
struct SearchQuery {
    q: Option<String>,
}

/// Finds interactions and shows each one's journey.
async fn interactions(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<SearchQuery>,
) -> Response {
    let q = q.q.unwrap_or_default();
    let q = q.trim();
    let (found, note) = if q.is_empty() {
        (Vec::new(), None)
    } else {
        match crate::console::journey::find(&state.store, q).await {
            Ok(found) if found.is_empty() => (found, Some("Nothing found.")),
            Ok(found) => (found, None),
            Err(e) => return super::error::ApiError::store(e).into_response(),
        }
    };
    session.page("Interactions", pages::interactions(q, &found, note))
}
