//! The two pages a person opens in a browser, often on a phone: the approval page
//! (`/approve/CODE`) and the passkey registration page (`/passkey/add#TOKEN`). Plain HTML
//! and a little JavaScript, served from the binary; all they do goes through the JSON API
//! (`/v1/approvals/…`, `/v1/passkeys/registrations/…`).
//!
//! Served with a strict Content-Security-Policy (scripts from this origin only, no
//! framing), `no-store`, and `no-referrer`. The registration link's one-time token is in
//! its fragment, which the browser never sends: the page posts it in a request body.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::store::Store;

const APPROVE_HTML: &str = include_str!("pages/approve.html");
const PASSKEY_ADD_HTML: &str = include_str!("pages/passkey-add.html");
const APPROVE_JS: &str = include_str!("pages/approve.js");
const PASSKEY_ADD_JS: &str = include_str!("pages/passkey-add.js");
const COMMON_JS: &str = include_str!("pages/common.js");
const PAGE_CSS: &str = include_str!("pages/page.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'none'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'none'";

/// A page or one of its files, with the headers every page answer carries.
fn serve(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
}

/// The page routes (not part of the JSON API, nor of its OpenAPI document).
pub(super) fn routes<S: Store>() -> Router<std::sync::Arc<crate::state::AppState<S>>> {
    const HTML: &str = "text/html; charset=utf-8";
    const JS: &str = "text/javascript; charset=utf-8";
    Router::new()
        .route(
            "/approve/{code}",
            get(|| async { serve(HTML, APPROVE_HTML) }),
        )
        .route(
            "/passkey/add",
            get(|| async { serve(HTML, PASSKEY_ADD_HTML) }),
        )
        .route(
            "/static/approve.js",
            get(|| async { serve(JS, APPROVE_JS) }),
        )
        .route(
            "/static/passkey-add.js",
            get(|| async { serve(JS, PASSKEY_ADD_JS) }),
        )
        .route("/static/common.js", get(|| async { serve(JS, COMMON_JS) }))
        .route(
            "/static/page.css",
            get(|| async { serve("text/css; charset=utf-8", PAGE_CSS) }),
        )
}
