//! The webhook receiver: Git host deliveries → one normalised [`Delivery`] → [`Dispatcher`].
//!
//! Each provider has its route, `POST /webhooks/{provider}`. The signature is checked over the
//! raw body, against each watched repo's secret, before anything is parsed. A delivery is
//! answered 202 only after SQS accepted its jobs; a failure to fetch or enqueue is a 503, so it
//! can be delivered again. Every refusal is counted by reason and logged with the delivery id,
//! never with the secret or the signature.

mod bitbucket;
pub mod event;
mod generic;
mod github;
mod gitlab;
mod guard;
mod metrics;
pub mod provider;
pub mod verify;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
pub use event::{Delivery, PullRequestEvent, PushEvent};
pub use provider::Provider;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use verify::Mismatch;

use crate::config::{Config, WebhookConfig, repo_identity};
use crate::dispatch::{Dispatcher, Outcome, WatchedRepo};

struct Receiver {
    dispatcher: Arc<Dispatcher>,
    config: WebhookConfig,
    replays: guard::Replays,
    metrics: Arc<metrics::Metrics>,
}

/// The receiver's routes. Separate from [`serve`] so tests can call it without a socket.
pub fn router(dispatcher: Arc<Dispatcher>, config: &Config) -> Router {
    let metrics = Arc::new(metrics::Metrics::default());
    let guard = Arc::new(guard::Guard::new(&config.webhooks, metrics.clone()));
    let receiver = Arc::new(Receiver {
        dispatcher,
        config: config.webhooks.clone(),
        replays: guard::Replays::new(
            config.webhooks.replay_window,
            config.webhooks.replay_capacity,
        ),
        metrics,
    });
    let webhooks = Router::new()
        .route("/webhooks/{provider}", post(deliver))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(guard, guard::enforce));
    Router::new()
        .merge(webhooks)
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(receiver)
}

/// Serves until `shutdown` fires, then finishes in-flight deliveries.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn render_metrics(State(rx): State<Arc<Receiver>>) -> String {
    let fetches: Vec<(String, u64)> = rx
        .dispatcher
        .repos
        .iter()
        .map(|r| {
            (
                format!("fleetsync_git_fetches_total{{repo=\"{}\"}}", r.config.name),
                r.mirror.fetch_count(),
            )
        })
        .collect();
    let mut extra = fetches;
    if let Some(count) = rx.dispatcher.dead_letters().await {
        extra.push(("fleetsync_dead_letter_jobs".to_owned(), count));
    }
    rx.metrics.render(&extra)
}

async fn deliver(
    State(rx): State<Arc<Receiver>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(provider) = Provider::from_path(&name) else {
        rx.metrics.refused(&name, "unknown_provider");
        return refuse(
            StatusCode::NOT_FOUND,
            "unknown provider; use github, gitlab, gitea, bitbucket or generic",
        );
    };
    let delivery_id = provider.delivery_id(&headers).map(str::to_owned);
    // Without an id, each delivery is its own: sharing one would make SQS drop a revert to a
    // commit enqueued minutes ago as a duplicate.
    let delivery = delivery_id.clone().unwrap_or_else(anonymous_delivery);
    let refused = |reason: &'static str, status: StatusCode, message: &str| {
        info!(message = "Delivery refused.", provider = %name, %delivery, %reason);
        rx.metrics.refused(&name, reason);
        refuse(status, message)
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refused("too_large", rejection.status(), &rejection.body_text());
        }
        Err(rejection) => {
            return refused(
                "unreadable_body",
                rejection.status(),
                &rejection.body_text(),
            );
        }
    };

    let Some(check) = provider.check(&headers, &body, &rx.config.generic_signature_header) else {
        return refused(
            "missing_signature",
            StatusCode::UNAUTHORIZED,
            "missing signature; set a secret on the webhook",
        );
    };
    let mut stale = false;
    let verified: Vec<&WatchedRepo> = rx
        .dispatcher
        .repos
        .iter()
        .filter(
            |r| match check.verify(r.secret.expose(), rx.config.timestamp_tolerance) {
                Ok(()) => true,
                Err(Mismatch::StaleTimestamp) => {
                    stale = true;
                    false
                }
                Err(Mismatch::BadSignature) => false,
            },
        )
        .collect();
    if stale && verified.is_empty() {
        return refused(
            "stale_timestamp",
            StatusCode::UNAUTHORIZED,
            "webhook-timestamp is outside the accepted window",
        );
    }
    if verified.is_empty() {
        return refused(
            "bad_signature",
            StatusCode::UNAUTHORIZED,
            "signature does not match; check the webhook secret",
        );
    }

    let replay = delivery_id.map(|id| format!("{name}\n{id}"));
    if replay
        .as_deref()
        .is_some_and(|key| rx.replays.contains(key))
    {
        rx.metrics.handled(&name, "duplicate");
        info!(message = "Delivery is a replay; nothing enqueued.", provider = %name, %delivery);
        return (StatusCode::OK, axum::Json(json!({"status": "duplicate"}))).into_response();
    }
    let parsed = match provider.parse(&headers, &body) {
        Ok(parsed) => parsed,
        Err(reason) => return refused("bad_payload", StatusCode::BAD_REQUEST, &reason),
    };
    let (status, body, outcome) = match parsed {
        Delivery::Ping => (StatusCode::OK, json!({"status": "pong"}), "ping"),
        Delivery::Ignored(reason) => ignored(reason),
        Delivery::PullRequest(pr) => ignored(format!(
            "pull request #{} ({}) parsed; preview environments are not built yet",
            pr.number, pr.action
        )),
        Delivery::Pushes(pushes) => {
            handle_pushes(&rx.dispatcher, &verified, pushes, &delivery).await
        }
    };
    rx.metrics.handled(&name, outcome);
    info!(message = "Delivery handled.", provider = %name, %delivery, %outcome, status = status.as_u16());
    if status != StatusCode::SERVICE_UNAVAILABLE
        && let Some(key) = replay
    {
        rx.replays.remember(key, Instant::now());
    }
    (status, axum::Json(body)).into_response()
}

type Answer = (StatusCode, Value, &'static str);

fn ignored(reason: String) -> Answer {
    (
        StatusCode::OK,
        json!({"status": "ignored", "reason": reason}),
        "ignored",
    )
}

/// One answer for the delivery: a single push answers as itself; several (Bitbucket) answer
/// with the most urgent status and every push's result.
async fn handle_pushes(
    dispatcher: &Dispatcher,
    verified: &[&WatchedRepo],
    pushes: Vec<PushEvent>,
    delivery: &str,
) -> Answer {
    let mut answers = Vec::with_capacity(pushes.len());
    for push in &pushes {
        answers.push(handle_push(dispatcher, verified, push, delivery).await);
    }
    if answers.len() == 1 {
        return answers.pop().expect("one answer");
    }
    let rank = |s: StatusCode| {
        [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::UNPROCESSABLE_ENTITY,
            StatusCode::ACCEPTED,
        ]
        .iter()
        .position(|x| *x == s)
        .unwrap_or(3)
    };
    let (status, outcome) = answers
        .iter()
        .map(|(s, _, o)| (*s, *o))
        .min_by_key(|(s, _)| rank(*s))
        .unwrap_or((StatusCode::OK, "ignored"));
    let results: Vec<Value> = answers.into_iter().map(|(_, body, _)| body).collect();
    (
        status,
        json!({"status": outcome, "pushes": results}),
        outcome,
    )
}

async fn handle_push(
    dispatcher: &Dispatcher,
    verified: &[&WatchedRepo],
    push: &PushEvent,
    delivery: &str,
) -> Answer {
    let watched = verified.iter().find(|r| {
        push.repository_urls
            .iter()
            .any(|u| repo_identity(u).as_deref() == Some(r.config.identity.as_str()))
    });
    let Some(repo) = watched else {
        let url = push
            .repository_urls
            .first()
            .map_or("(none)", String::as_str);
        return ignored(format!("repository {url} is not watched"));
    };
    let Some(branch) = push.branch() else {
        return ignored(format!("`{}` is not a branch", push.git_ref));
    };
    if push.deleted {
        return ignored(format!("branch `{branch}` was deleted; nothing to deploy"));
    }
    let name = &repo.config.name;
    match dispatcher.push(repo, branch, &push.before, delivery).await {
        Ok(Outcome::Ignored { reason }) => ignored(reason),
        Ok(Outcome::Enqueued {
            branch,
            commit,
            jobs,
            unchanged,
        }) => {
            let body = json!({"status": "enqueued", "repo": name, "branch": branch, "commit": commit, "jobs": jobs, "unchanged": unchanged});
            (StatusCode::ACCEPTED, body, "enqueued")
        }
        Ok(Outcome::Invalid {
            branch,
            commit,
            problems,
            jobs,
        }) => {
            for p in &problems {
                warn!(message = "Config repo does not resolve; environment not synced.", %delivery, repo = %name, %branch, %commit, environment = ?p.environment, problems = %p.problems.join("\n"));
            }
            let body = json!({"status": "invalid", "repo": name, "branch": branch, "commit": commit, "problems": problems, "jobs": jobs});
            (StatusCode::UNPROCESSABLE_ENTITY, body, "invalid")
        }
        Err(e) => {
            warn!(message = "Delivery not accepted; it can be delivered again.", %delivery, repo = %name, %branch, error = %e);
            let body = json!({"status": "refused", "reason": format!("not enqueued, deliver again later: {}", e.public_reason())});
            (StatusCode::SERVICE_UNAVAILABLE, body, "unavailable")
        }
    }
}

fn anonymous_delivery() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("anonymous-{nanos:x}-{n}")
}

fn refuse(status: StatusCode, reason: &str) -> Response {
    (
        status,
        axum::Json(json!({"status": "refused", "reason": reason})),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
