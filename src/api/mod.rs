//! The HTTP API, for operators and their tools:
//!
//! - `actions.rs`: what a push cannot say, e.g. `POST /api/v1/sync` syncs an environment (or
//!   some of its apps) at its branch head now, after a failure was fixed outside Git;
//! - `reads.rs`: environments, each app's sync status and health in ECS with the service
//!   events that explain a failure, previews, and the jobs in the dead-letter queue;
//! - `auth.rs`: callers present `Authorization: Bearer <token>`. fleetsync holds only SHA-256
//!   digests of the tokens (`api.tokens`, named and scoped; `api.tokenHashes`, admin), so a
//!   leaked config or environment reveals no token; a presented token is hashed and compared
//!   with every digest in constant time. A token's name is the actor in the logs.

mod actions;
mod auth;
mod reads;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tracing::warn;

use crate::dispatch::{Dispatcher, ResyncError};
pub use auth::{TokenHashes, Tokens};

/// openapi.yaml, the API's description, as JSON: read once, served to anyone (it holds no
/// secret, and a client generator has no token yet).
async fn openapi() -> Response {
    static DOCUMENT: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(|| {
        serde_yaml::from_str(include_str!("../../openapi.yaml"))
            .expect("openapi.yaml is checked by the tests")
    });
    answer(StatusCode::OK, DOCUMENT.clone())
}

struct Api {
    dispatcher: Arc<Dispatcher>,
    tokens: Tokens,
}

pub fn router(dispatcher: Arc<Dispatcher>, tokens: Tokens) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .merge(reads::routes())
        .merge(actions::routes())
        .with_state(Arc::new(Api { dispatcher, tokens }))
}

fn refusal(e: ResyncError, consequence: &str) -> Response {
    match e {
        ResyncError::Unknown(what) => answer(StatusCode::NOT_FOUND, json!({"error": what})),
        ResyncError::Invalid(problems) => answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": format!("the environment does not resolve; {consequence}"), "problems": problems}),
        ),
        ResyncError::Conflict(why) => answer(StatusCode::CONFLICT, json!({"error": why})),
        ResyncError::Failed(e) => {
            warn!(message = "API request failed.", error = %e);
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": e.public_reason(), "retry": true}),
            )
        }
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    /// Every route the router serves is described in openapi.yaml, with its method, and
    /// nothing else is.
    #[test]
    fn openapi_describes_exactly_the_routes_served() {
        let document: serde_json::Value =
            serde_yaml::from_str(include_str!("../../openapi.yaml")).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        let described: std::collections::BTreeSet<(String, String)> = document["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(move |method| (path.clone(), method.clone()))
            })
            .collect();
        let source: String = [
            include_str!("mod.rs"),
            include_str!("reads.rs"),
            include_str!("actions.rs"),
        ]
        .concat()
        .split_whitespace()
        .collect();
        let served: std::collections::BTreeSet<(String, String)> = source
            .match_indices(".route(\"")
            .map(|(i, _)| {
                let rest = &source[i + 8..];
                let (path, rest) = rest.split_once('"').unwrap();
                let method = rest.trim_start_matches(',').split('(').next().unwrap();
                (path.to_owned(), method.to_owned())
            })
            .collect();
        assert_eq!(described, served);
    }
}
