//! The console's pages. maud escapes every value it is given, so a manual option holding
//! HTML shows as text; the preview's HTML goes only into a sandboxed iframe's `srcdoc`
//! (without `allow-scripts`, under the page's Content-Security-Policy).

use crate::outbox::{Attempt, Delivery};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

/// The Content-Security-Policy of every console page (and so of the preview's iframes):
/// nothing from another host, no script, forms only to the console.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; frame-src 'self'";

const STYLE: &str = r#"
body{font-family:system-ui,sans-serif;margin:0;color:#1d232b;background:#f6f7f9}
nav{background:#1f3a5f;padding:.6em 1em;display:flex;gap:1.2em;align-items:center}
nav a{color:#dfe8f3;text-decoration:none}nav a.on{color:#fff;font-weight:600;border-bottom:2px solid #fff}
nav form{margin-left:auto}main{padding:1em 1.5em;max-width:1200px}
table{border-collapse:collapse;width:100%;background:#fff;margin:.5em 0 1.2em}
th,td{border:1px solid #d5dae1;padding:.3em .5em;text-align:left;vertical-align:top;font-size:.9em}
th{background:#eef1f5}pre{background:#fff;border:1px solid #d5dae1;padding:.5em;overflow:auto;max-height:24em;font-size:.8em}
.card{display:inline-block;background:#fff;border:1px solid #d5dae1;padding:.6em 1em;margin:0 .6em .6em 0;min-width:9em}
.card b{display:block;font-size:1.6em}.err{color:#a11}.dead{background:#fdeeee}.ok{color:#176b2c}
label{display:block;margin:.6em 0 .2em;font-weight:600}textarea{width:100%;height:12em;font-family:monospace}
iframe{border:1px solid #d5dae1;background:#fff;margin-right:1em}
"#;

/// A page of the console: the navigation (the page's own link, `title`, highlighted),
/// `body`, and the sign-out form.
pub fn layout(title: &str, csrf: &str, body: Markup) -> Markup {
    let link = |href: &str, name: &str| {
        html! { a href=(href) class=@if name == title { "on" } { (name) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " - pegabridge" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                nav {
                    strong style="color:#fff" { "pegabridge" }
                    (link("/console", "Overview"))
                    (link("/console/interactions", "Interactions"))
                    (link("/console/deliveries", "Deliveries"))
                    (link("/console/preview", "Preview"))
                    form method="post" action="/console/logout" {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { "Sign out" }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// The sign-in page.
pub fn login(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Sign in - pegabridge" } style { (PreEscaped(STYLE)) } }
            body {
                main {
                    h1 { "pegabridge console" }
                    @if let Some(e) = error { p class="err" role="alert" { (e) } }
                    form method="post" action="/console/login" {
                        label for="token" { "Admin token" }
                        input type="password" id="token" name="token" autocomplete="current-password" required;
                        " "
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

/// One delivery's row in a table.
fn delivery_row(d: &Delivery, csrf: &str) -> Markup {
    let dead = d.status == crate::outbox::Status::Dead;
    html! {
        tr class=@if dead { "dead" } {
            td { a href={ "/console/interactions?q=" (d.uuid) } { code { (d.uuid) } } }
            td { (d.sink.as_str()) }
            td { (d.metric) }
            td { (d.status.as_str()) }
            td { (d.attempts) }
            td { (crate::console::pages::time(d.created_at)) }
            td class="err" { (d.last_error.as_deref().unwrap_or("")) }
            td {
                @if dead {
                    form method="post" action="/console/deliveries/replay" {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="uuid" value=(d.uuid);
                        input type="hidden" name="sink" value=(d.sink.as_str());
                        button type="submit" { "Replay" }
                    }
                }
            }
        }
    }
}

/// The filters and rows of the Deliveries page.
pub struct DeliveriesView<'a> {
    pub rows: &'a [Delivery],
    pub status: Option<&'a str>,
    pub metric: Option<&'a str>,
    pub scanned: usize,
    pub notice: Option<&'a str>,
}

pub fn deliveries(v: &DeliveriesView<'_>, csrf: &str) -> Markup {
    let statuses = ["pending", "inflight", "delivered", "dead", "filtered"];
    let metrics = crate::event::Metric::ALL;
    html! {
        @if let Some(n) = v.notice { p class="ok" role="status" { (n) } }
        form method="get" action="/console/deliveries" {
            label for="status" { "Status" }
            select id="status" name="status" {
                option value="" { "any" }
                @for s in statuses { option value=(s) selected[v.status == Some(s)] { (s) } }
            }
            label for="metric" { "Metric" }
            select id="metric" name="metric" {
                option value="" { "any" }
                @for m in metrics { option value=(m.as_str()) selected[v.metric == Some(m.as_str())] { (m.as_str()) } }
            }
            " " button type="submit" { "Filter" }
        }
        @if v.status == Some("dead") && !v.rows.is_empty() {
            form method="post" action="/console/deliveries/replay" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="status" value="dead";
                @if let Some(m) = v.metric { input type="hidden" name="metric" value=(m); }
                button type="submit" { "Replay all of this filter" }
            }
        }
        p { (v.rows.len()) " shown (newest first, among the newest " (v.scanned) " of that status)" }
        table {
            tr { th { "uuid" } th { "sink" } th { "metric" } th { "status" } th { "attempts" } th { "created" } th { "why (last error)" } th {} }
            @for d in v.rows { (delivery_row(d, csrf)) }
        }
    }
}

/// A Unix time, as UTC.
pub fn time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| secs.to_string())
}

/// A Unix time in milliseconds, as UTC.
pub fn time_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// What the preview form was given, and what came of it.
pub struct PreviewView<'a> {
    pub mappings: &'a [String],
    pub mapping: Option<&'a str>,
    pub trigger: &'a str,
    /// The preview, or the API's error (status and body).
    pub result: Option<Result<crate::broadcast::Preview, (u16, Value)>>,
}

pub fn preview(v: &PreviewView<'_>, csrf: &str) -> Markup {
    html! {
        form method="post" action="/console/preview" {
            input type="hidden" name="csrf" value=(csrf);
            label for="mapping" { "Mapping" }
            select id="mapping" name="mapping" {
                @for m in v.mappings { option value=(m) selected[v.mapping == Some(m.as_str())] { (m) } }
            }
            label for="trigger" { "Trigger" }
            textarea id="trigger" name="trigger" spellcheck="false" { (v.trigger) }
            button type="submit" { "Render" }
        }
        @match &v.result {
            None => {}
            Some(Err((status, body))) => {
                h2 class="err" { "The trigger was refused (HTTP " (status) ")" }
                pre class="err" role="alert" { (pretty(body)) }
            }
            Some(Ok(p)) => {
                @for (i, r) in p.recipients.iter().enumerate() {
                    section class="recipient" {
                        h2 { "Recipient " (i + 1) ": " (r.event.customer_email_address.as_deref().or(r.event.email_address.as_deref()).unwrap_or("")) }
                        @if !r.warnings.is_empty() {
                            ul class="err" { @for w in &r.warnings { li { (w) } } }
                        }
                        h3 { "Manual fields" }
                        table class="manual" {
                            @for (k, val) in &r.manual_options { tr { th { (k) } td { (scalar(val)) } } }
                        }
                        h3 { "Meta tags" }
                        table class="meta" {
                            @for (k, val) in &r.meta { tr { th { (k) } td { code { "<meta name=\"" (k) "\" content=\"" (scalar(val)) "\">" } } } }
                        }
                        h3 { "The event Pega would get" }
                        pre class="event" { (pretty(&serde_json::to_value(&r.event).unwrap_or_default())) }
                        @if let Some(html) = &r.html {
                            h3 { "The email (images from other hosts are not loaded)" }
                            iframe title="desktop" sandbox="" width="640" height="600" srcdoc=(html) {}
                            iframe title="mobile" sandbox="" width="375" height="600" srcdoc=(html) {}
                        }
                    }
                }
            }
        }
    }
}

/// A JSON value as text (a string without its quotes).
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// One event of a journey: its row, what was sent, its attempts.
pub struct JourneyEvent {
    pub delivery: Delivery,
    pub event: Value,
    pub attempts: Vec<Attempt>,
}

/// Everything known of one personal broadcast, in time order.
pub struct Journey {
    pub mapping: String,
    pub triggered_at: i64,
    pub email: String,
    pub manual_options: serde_json::Map<String, Value>,
    pub send: Option<crate::outbox::SendRow>,
    pub events: Vec<JourneyEvent>,
}

pub fn interactions(q: &str, found: &[Journey], note: Option<&str>) -> Markup {
    html! {
        form method="get" action="/console/interactions" {
            label for="q" { "Search" }
            input type="search" id="q" name="q" value=(q) size="60"
                placeholder="InteractionID, email address, customer id, event uuid";
            " " button type="submit" { "Find" }
        }
        @if let Some(n) = note { p { (n) } }
        @for j in found {
            section class="journey" {
                h2 { (j.email) " - " (j.mapping) }
                ol {
                    li {
                        strong { "Triggered " } (time(j.triggered_at)) " through mapping " code { (j.mapping) }
                        table class="manual" { @for (k, v) in &j.manual_options { tr { th { (k) } td { (scalar(v)) } } } }
                    }
                    @if let Some(s) = &j.send {
                        li {
                            strong { "Mail: " (s.status.as_str()) } " after " (s.attempts) " attempts"
                            @if let Some(e) = &s.last_error { " - " span class="err" { (e) } }
                        }
                    }
                    @for e in &j.events {
                        li class="event" {
                            strong { (e.delivery.metric) }
                            @if let Some(machine) = e.event.get("machine_generated").and_then(Value::as_bool) {
                                " - verdict: " strong class="verdict" { @if machine { "a machine's" } @else { "a person's" } }
                            }
                            " - " (time(e.delivery.created_at)) " - to " (e.delivery.sink.as_str()) ": "
                            strong { (e.delivery.status.as_str()) }
                            @if e.attempts.is_empty() { " (no attempt yet)" }
                            table {
                                tr { th { "attempt" } th { "at" } th { "status" } th { "ms" } th { "outcome" } th { "cause / answer" } }
                                @for (i, a) in e.attempts.iter().enumerate() {
                                    tr { td { (i + 1) } td { (time_ms(a.at_ms)) } td { (a.http_status.map(|s| s.to_string()).unwrap_or_default()) } td { (a.duration_ms) } td { (a.outcome.as_str()) } td { (a.detail) } }
                                }
                            }
                            details { summary { "The JSON sent" } pre { (pretty(&e.event)) } }
                        }
                    }
                }
            }
        }
    }
}

/// The overview's figures.
pub struct OverviewView {
    pub pending: i64,
    pub inflight: i64,
    pub delivered: i64,
    pub dead: i64,
    pub oldest_pending_secs: i64,
    pub sinks: Vec<(String, i64, String)>,
    pub mail: Option<(i64, i64)>,
    pub charts: Vec<(String, Vec<(i64, f64)>)>,
}

pub fn overview(v: &OverviewView) -> Markup {
    html! {
        div {
            div class="card" { "pending" b { (v.pending) } }
            div class="card" { "in flight" b { (v.inflight) } }
            div class="card" { "delivered" b { (v.delivered) } }
            div class="card" { "dead" b { (v.dead) } }
            div class="card" { "oldest waiting" b { (v.oldest_pending_secs) " s" } }
            @if let Some((queued, leased)) = v.mail { div class="card" { "mail queue" b { (queued) " + " (leased) } } }
        }
        table {
            tr { th { "sink" } th { "concurrency limit" } th { "breaker" } }
            @for (name, limit, breaker) in &v.sinks { tr { td { (name) } td { (limit) } td { (breaker) } } }
        }
        @for (title, points) in &v.charts {
            figure { figcaption { (title) } (chart(points)) }
        }
    }
}

/// A line chart of `points` (Unix seconds, value) over the last hour, as SVG.
fn chart(points: &[(i64, f64)]) -> Markup {
    let (w, h) = (600.0, 120.0);
    let end = points.last().map_or(0, |p| p.0);
    let start = end - 3600;
    let max = points.iter().map(|p| p.1).fold(0.0_f64, f64::max).max(1.0);
    let coords: Vec<String> = points
        .iter()
        .filter(|p| p.0 >= start)
        .map(|(t, y)| {
            let x = (t - start) as f64 / 3600.0 * w;
            format!("{x:.1},{:.1}", h - y / max * (h - 10.0))
        })
        .collect();
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(w) height=(h) viewBox={ "0 0 " (w) " " (h) } role="img" {
            rect width=(w) height=(h) fill="#fff" stroke="#d5dae1" {}
            polyline fill="none" stroke="#1f3a5f" stroke-width="2" points=(coords.join(" ")) {}
            text x="4" y="12" font-size="11" { "max " (format!("{max:.1}")) }
        }
    }
}
