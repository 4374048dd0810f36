//! What the API changes: a sync of an environment (or some of its apps) now, and a rollback
//! of one app to an earlier revision. Each is enqueued like a push's jobs, carrying who asked
//! and why into the audit trail on ECS.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::info;

use super::auth::Need;
use super::{Api, answer, refusal};
use crate::dispatch::{RollbackRequest, Trigger, TriggerKind};

pub(super) fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/api/v1/sync", post(sync))
        .route("/api/v1/rollback", post(rollback))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncRequest {
    repo: String,
    environment: String,
    /// One app (kept from the first release), or `apps`; neither: every app, and prune.
    app: Option<String>,
    apps: Option<Vec<String>>,
    /// Recorded on what the sync deploys (`fleetsync:reason`).
    #[serde(default)]
    reason: String,
    /// A new deployment even of a spec that is live.
    #[serde(default)]
    force: bool,
}

/// The JSON body (of `shape`, for the 400 otherwise) and the name of the token that sent it,
/// when the token may do what `need` says of the body: an action's prologue.
fn authorized<T: DeserializeOwned>(
    api: &Api,
    headers: &HeaderMap,
    (bytes, shape): (&[u8], &str),
    need: impl FnOnce(&T) -> Need<'_>,
) -> Result<(T, String), Box<Response>> {
    // Authenticated first: an anonymous caller learns nothing from the body's errors.
    let token = api.authenticate(headers)?;
    let request: T = serde_json::from_slice(bytes).map_err(|e| {
        Box::new(answer(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("the body must be {shape}: {e}")}),
        ))
    })?;
    let actor = Api::permit(token, need(&request))?;
    Ok((request, actor))
}

async fn sync(State(api): State<Arc<Api>>, headers: HeaderMap, bytes: Bytes) -> Response {
    let shape = r#"{"repo": …, "environment": …, "apps": […] (optional), "reason": … (optional), "force": false}"#;
    let authorized = authorized(&api, &headers, (&bytes, shape), |r: &SyncRequest| {
        Need::Sync {
            environment: &r.environment,
        }
    });
    let (request, actor) = match authorized {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let environment = &request.environment;
    let apps = match (request.app, request.apps) {
        (Some(_), Some(_)) => {
            return answer(
                StatusCode::BAD_REQUEST,
                json!({"error": "give `app` or `apps`, not both", "field": "apps"}),
            );
        }
        (Some(app), None) => Some(vec![app]),
        (None, apps) => apps,
    };
    if apps.as_ref().is_some_and(Vec::is_empty) {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"error": "`apps` is empty; leave it out to sync every app", "field": "apps"}),
        );
    }
    let trigger = Trigger::new(TriggerKind::Api, &actor).because(&request.reason);
    match api
        .dispatcher
        .resync(
            &request.repo,
            environment,
            apps.as_deref(),
            (&trigger, request.force),
        )
        .await
    {
        Ok(jobs) => {
            info!(message = "Sync requested through the API.", %actor, repo = %request.repo, %environment, apps = ?apps, reason = %trigger.reason, force = request.force, jobs = jobs.len());
            answer(
                StatusCode::ACCEPTED,
                json!({"status": "enqueued", "jobs": jobs}),
            )
        }
        Err(e) => refusal(e, "nothing was enqueued"),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    repo: String,
    environment: String,
    app: String,
    /// The revision number to return to; the newest earlier one that completed by default.
    #[serde(default, deserialize_with = "revision")]
    to: Option<i32>,
    reason: String,
}

/// A revision number as JSON Schema's `integer` has it: `170.0` is one too (what some JSON
/// encoders write for a whole number).
fn revision<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    use serde::Deserialize;
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = number.as_i64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0)
            .map(|f| f as i64)
    });
    whole
        .and_then(|n| i32::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("`to` must be a revision number, not {number}")))
}

async fn rollback(State(api): State<Arc<Api>>, headers: HeaderMap, bytes: Bytes) -> Response {
    let shape =
        r#"{"repo": …, "environment": …, "app": …, "to": <revision> (optional), "reason": …}"#;
    let authorized = authorized(&api, &headers, (&bytes, shape), |r: &RollbackBody| {
        Need::Rollback {
            environment: &r.environment,
        }
    });
    let (request, actor) = match authorized {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let environment = &request.environment;
    // A rollback overrides Git for a while: the trail must say why.
    if request.reason.trim().is_empty() {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"error": "say why in `reason`: it is recorded on the service and the revision", "field": "reason"}),
        );
    }
    let asked = RollbackRequest {
        repo: &request.repo,
        environment,
        app: &request.app,
        to: request.to,
        actor: &actor,
        reason: &request.reason,
    };
    match api.dispatcher.rollback(&asked).await {
        Ok(enqueued) => answer(
            StatusCode::ACCEPTED,
            json!({"status": "enqueued", "rollback": enqueued}),
        ),
        Err(e) => refusal(e, "nothing was enqueued"),
    }
}
