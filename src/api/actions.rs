//! What the API changes: a sync of an environment, or of some of its apps, now.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;
use tracing::info;

use axum::Router;
use axum::routing::post;

use super::auth::Need;
use super::{Api, answer, refusal};

pub(super) fn routes() -> Router<Arc<Api>> {
    Router::new().route("/api/v1/sync", post(sync))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncRequest {
    repo: String,
    environment: String,
    app: Option<String>,
}

async fn sync(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Response {
    let token = match api.authenticate(&headers) {
        Ok(token) => token,
        Err(refused) => return *refused,
    };
    let request: SyncRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("the body must be {{\"repo\": …, \"environment\": …, \"app\": … (optional)}}: {e}")}),
            );
        }
    };
    let environment = &request.environment;
    let actor = match Api::permit(token, Need::Sync { environment }) {
        Ok(actor) => actor,
        Err(refused) => return *refused,
    };
    let app = request.app.as_deref();
    match api
        .dispatcher
        .resync(&request.repo, &request.environment, app)
        .await
    {
        Ok(jobs) => {
            info!(message = "Sync requested through the API.", %actor, repo = %request.repo, environment = %request.environment, app = ?app, jobs = jobs.len());
            answer(
                StatusCode::ACCEPTED,
                json!({"status": "enqueued", "jobs": jobs}),
            )
        }
        Err(e) => refusal(e, "nothing was enqueued"),
    }
}
