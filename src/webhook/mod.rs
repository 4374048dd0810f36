//! The webhook receiver: Git host deliveries → one normalised [`PushEvent`] → [`Dispatcher`].
//!
//! The signature is checked over the raw body before anything is parsed. A delivery is answered
//! 202 only after SQS accepted its jobs; a failure to fetch or enqueue is a 503, so the Git host
//! delivers again.

pub mod event;
pub mod github;
pub mod verify;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
pub use event::PushEvent;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::repo_identity;
use crate::dispatch::{Dispatcher, Outcome, WatchedRepo};

/// The receiver's routes. Separate from [`serve`] so tests can call it without a socket.
pub fn router(dispatcher: Arc<Dispatcher>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/webhooks/github", post(github_delivery))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(dispatcher)
}

/// Serves until `shutdown` fires, then finishes in-flight deliveries.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn github_delivery(
    State(dispatcher): State<Arc<Dispatcher>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delivery = header(&headers, "x-github-delivery")
        .unwrap_or("-")
        .to_owned();
    let Some(signature) = header(&headers, "x-hub-signature-256") else {
        info!(message = "Delivery refused: unsigned.", %delivery);
        return refuse(
            StatusCode::UNAUTHORIZED,
            "missing X-Hub-Signature-256 header; set a secret on the webhook",
        );
    };
    let verified: Vec<&WatchedRepo> = dispatcher
        .repos
        .iter()
        .filter(|r| verify::sha256_prefixed(r.secret.expose(), &body, signature))
        .collect();
    if verified.is_empty() {
        info!(message = "Delivery refused: bad signature.", %delivery);
        return refuse(
            StatusCode::UNAUTHORIZED,
            "X-Hub-Signature-256 does not match; check the webhook secret",
        );
    }

    let event = header(&headers, "x-github-event").unwrap_or_default();
    let content_type = header(&headers, "content-type").unwrap_or("application/json");
    let push = match github::parse(event, &delivery, content_type, &body) {
        Ok(github::Delivery::Push(push)) => push,
        Ok(github::Delivery::Ping) => {
            return (StatusCode::OK, axum::Json(json!({"status": "pong"}))).into_response();
        }
        Ok(github::Delivery::Other(name)) => {
            return ignored(&delivery, &format!("`{name}` events do not trigger syncs"));
        }
        Err(reason) => {
            info!(message = "Delivery refused: unreadable payload.", %delivery, %reason);
            return refuse(StatusCode::BAD_REQUEST, &reason);
        }
    };
    let Some(repo) = verified.into_iter().find(|r| {
        push.repository_urls
            .iter()
            .any(|u| repo_identity(u).as_deref() == Some(r.config.identity.as_str()))
    }) else {
        let urls = push
            .repository_urls
            .first()
            .map_or("(none)", String::as_str);
        return ignored(&delivery, &format!("repository {urls} is not watched"));
    };
    let Some(branch) = push.branch() else {
        return ignored(&delivery, &format!("`{}` is not a branch", push.git_ref));
    };
    if push.deleted {
        return ignored(
            &delivery,
            &format!("branch `{branch}` was deleted; nothing to deploy"),
        );
    }

    match dispatcher.push(repo, branch, &delivery).await {
        Ok(Outcome::Ignored { reason }) => ignored(&delivery, &reason),
        Ok(Outcome::Enqueued {
            branch,
            commit,
            jobs,
        }) => {
            info!(message = "Delivery accepted.", %delivery, repo = %repo.config.name, %branch, %commit, jobs = jobs.len());
            let body = json!({"status": "enqueued", "repo": repo.config.name, "branch": branch, "commit": commit, "jobs": jobs});
            (StatusCode::ACCEPTED, axum::Json(body)).into_response()
        }
        Ok(Outcome::Invalid {
            branch,
            commit,
            problems,
            jobs,
        }) => {
            for p in &problems {
                warn!(message = "Config repo does not resolve; environment not synced.", %delivery, repo = %repo.config.name, %branch, %commit, environment = ?p.environment, problems = %p.problems.join("\n"));
            }
            let body = json!({"status": "invalid", "repo": repo.config.name, "branch": branch, "commit": commit, "problems": problems, "jobs": jobs});
            (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response()
        }
        Err(e) => {
            warn!(message = "Delivery not accepted; the Git host will retry.", %delivery, repo = %repo.config.name, %branch, error = %e);
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not enqueued, deliver again later: {e}"),
            )
        }
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

fn ignored(delivery: &str, reason: &str) -> Response {
    info!(message = "Delivery ignored.", %delivery, %reason);
    (
        StatusCode::OK,
        axum::Json(json!({"status": "ignored", "reason": reason})),
    )
        .into_response()
}

fn refuse(status: StatusCode, reason: &str) -> Response {
    (
        status,
        axum::Json(json!({"status": "refused", "reason": reason})),
    )
        .into_response()
}
