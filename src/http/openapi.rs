//! The OpenAPI 3.1 description of every route, generated from the handlers' annotations and
//! served at `GET /openapi.json` (a copy is kept in `docs/openapi.json`; a test checks it is
//! current).

use super::AppState;
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error answer: `{"error": {...}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// What failed, for machines: `not_found`, `unauthorized`, `invalid_trigger`,
    /// `invalid_activity`, `limit_exceeded`, `unavailable`, ...
    pub code: String,
    /// For people.
    pub message: String,
    /// The field, header or configuration key concerned.
    #[schema(nullable = false)]
    pub field: Option<String>,
    /// Every failing field, with where it was looked for.
    #[schema(nullable = false)]
    pub fields: Option<Vec<crate::mapping::apply::FieldError>>,
}

/// The description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "pegabridge",
        description = "Pega's triggers and the mail platform's activities in; events out to Pega."
    ),
    paths(
        super::webhooks::trigger,
        super::webhooks::preview_trigger,
        super::activities::receive,
        super::events::receive,
        super::events::head,
        super::tracking::click,
        super::tracking::open,
        super::tracking::unsubscribe_page,
        super::tracking::unsubscribe,
        super::health::health,
        super::health::ready,
        super::admin::metrics,
        super::admin::list,
        super::admin::show,
        super::admin::replay,
        super::admin::sends,
        super::admin::send,
        super::admin::replay_sends,
        super::admin::pause,
        super::admin::resume,
        openapi_json,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Security)
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

/// The description as JSON text (what `GET /openapi.json` serves), built once.
pub fn json() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the description serializes")
    })
}

/// The route.
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

/// This description.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 description", body = Object)))]
async fn openapi_json() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json(),
    )
}
