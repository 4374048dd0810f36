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

use crate::config::{Config, RepoConfig, WebhookConfig, repo_identity};
use crate::dispatch::{Dispatcher, Outcome, PreviewOutcome, Trigger, TriggerKind, WatchedRepo};

struct Receiver {
    dispatcher: Arc<Dispatcher>,
    config: WebhookConfig,
    replays: guard::Replays,
    metrics: Arc<metrics::Metrics>,
    /// Requests to every route this process serves, counted by [`crate::metrics::Http::track`].
    http: Arc<crate::metrics::Http>,
    /// The repo whose secret verified the last delivery: checked first next time.
    last_verified: std::sync::atomic::AtomicUsize,
}

/// `serve`'s routes: those Git hosts reach, and the operations routes (the API when tokens are
/// configured, `/metrics`), every request counted.
pub fn receiver_routes(
    dispatcher: Arc<Dispatcher>,
    config: &Config,
) -> Result<(Router, Router), String> {
    let http = Arc::<crate::metrics::Http>::default();
    let (public, mut operations) = routers(dispatcher.clone(), config, http.clone());
    if let Some(tokens) = crate::api::Tokens::from_config(config)? {
        operations = operations.merge(crate::api::router(dispatcher, tokens));
    }
    Ok((http.track(public), http.track(operations)))
}

/// The routes Git hosts reach (webhooks, health checks), and `/metrics` (which shows what
/// `http` counted): apart, for a receiver that serves its operations routes on a listener of
/// their own (`api.listen`).
fn routers(
    dispatcher: Arc<Dispatcher>,
    config: &Config,
    http: Arc<crate::metrics::Http>,
) -> (Router, Router) {
    let metrics = Arc::new(metrics::Metrics::default());
    let guard = Arc::new(guard::Guard::new(
        &config.webhooks,
        config.max_body_bytes,
        metrics.clone(),
    ));
    let receiver = Arc::new(Receiver {
        dispatcher,
        config: config.webhooks.clone(),
        replays: guard::Replays::new(
            config.webhooks.replay_window,
            config.webhooks.replay_capacity,
        ),
        metrics,
        http,
        last_verified: Default::default(),
    });
    let webhooks = Router::new()
        .route("/webhooks/{provider}", post(deliver))
        .route("/webhooks/{provider}/{repo}", post(deliver_to_repo))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(guard, guard::enforce));
    let public = Router::new()
        .merge(webhooks)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(receiver.clone());
    let metrics = Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(receiver);
    (public, metrics)
}

/// Serves until `shutdown` fires, then finishes in-flight deliveries. A client gets
/// `header_timeout` to send its request headers (the body's own timeout is the guard's); one that
/// stalls is disconnected. HTTP/1.1 only: what Git hosts and load balancers send.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: std::time::Duration,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    warn!(message = "Cannot accept a connection.", error = %e);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(message = "Connection ended with an error.", error = %e);
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn render_metrics(State(rx): State<Arc<Receiver>>) -> Response {
    let mut registry = crate::metrics::Registry::default();
    rx.metrics.register(&mut registry);
    rx.http.register(&mut registry);
    rx.dispatcher.register_metrics(&mut registry).await;
    crate::metrics::render(&registry)
}

/// `POST /webhooks/{provider}/{repo}`: the repo named in the URL, so its secret is the only one
/// checked (one HMAC per delivery, however many repos are watched).
async fn deliver_to_repo(
    State(rx): State<Arc<Receiver>>,
    Path((name, repo)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(index) = rx
        .dispatcher
        .repos
        .iter()
        .position(|r| r.config.name == repo)
    else {
        rx.metrics.refused(&name, "unknown_repo");
        let mut answer = refuse(
            StatusCode::NOT_FOUND,
            "no watched repo has that name; use a `repos[].name` of the server config, or /webhooks/{provider}",
        );
        answer.extensions_mut().insert(guard::UnknownRepo);
        return answer;
    };
    handle(rx, name, Some(index), headers, body).await
}

async fn deliver(
    State(rx): State<Arc<Receiver>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(rx, name, None, headers, body).await
}

/// Checks, parses and handles one delivery, for the repo named in its URL or any watched one.
async fn handle(
    rx: Arc<Receiver>,
    name: String,
    named: Option<usize>,
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
    let header_id = provider.delivery_id(&headers).map(str::to_owned);
    // Without an id, each delivery is its own: sharing one would make SQS drop a revert to a
    // commit enqueued minutes ago as a duplicate.
    let mut delivery = header_id.clone().unwrap_or_else(anonymous_delivery);
    let mut identified = header_id.is_some();
    let refused = |reason: &'static str, status: StatusCode, message: &str, delivery: &str| {
        info!(message = "Delivery refused.", provider = %name, %delivery, %reason);
        rx.metrics.refused(&name, reason);
        refuse(status, message)
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refused(
                "too_large",
                rejection.status(),
                &rejection.body_text(),
                &delivery,
            );
        }
        Err(rejection) => {
            return refused(
                "unreadable_body",
                rejection.status(),
                &rejection.body_text(),
                &delivery,
            );
        }
    };

    let Some(check) = provider.check(&headers, &body, &rx.config.generic_signature_header) else {
        return refused(
            "missing_signature",
            StatusCode::UNAUTHORIZED,
            "missing signature; set a secret on the webhook",
            &delivery,
        );
    };
    let mut verifier = Verifier::new(&rx, &check);
    let first = match named {
        Some(index) => verifier.verify(index).then_some(index),
        None => rx.candidates().into_iter().find(|&i| verifier.verify(i)),
    };
    let Some(first) = first else {
        return if verifier.stale {
            refused(
                "stale_timestamp",
                StatusCode::UNAUTHORIZED,
                "webhook-timestamp is outside the accepted window",
                &delivery,
            )
        } else {
            refused(
                "bad_signature",
                StatusCode::UNAUTHORIZED,
                "signature does not match; check the webhook secret",
                &delivery,
            )
        };
    };
    rx.verified_last(first);
    // A signed id (Standard Webhooks) names the delivery; a header outside the signature only
    // hints at it.
    if let Some(id) = check.signed_id(rx.dispatcher.repos[first].secret.expose()) {
        id.clone_into(&mut delivery);
        identified = true;
    }

    let parsed = match provider.parse(&headers, &body) {
        Ok(parsed) => parsed,
        Err(reason) => {
            return refused("bad_payload", StatusCode::BAD_REQUEST, &reason, &delivery);
        }
    };
    // Every repo a push names is checked against its own secret (repos may share one).
    let mut verified = vec![first];
    let mut about = Vec::new();
    if let Delivery::Pushes(pushes) = &parsed {
        for push in pushes {
            let repo = rx
                .dispatcher
                .repos
                .iter()
                .position(|r| is_about(push, &r.config));
            if let Some(route) = named
                && repo != Some(route)
            {
                let message = format!(
                    "this is the route of repo `{}`, and the push is not about it; point the webhook at /webhooks/{name}/<the repo's name>",
                    rx.dispatcher.repos[route].config.name
                );
                return refused("wrong_route", StatusCode::BAD_REQUEST, &message, &delivery);
            }
            if let Some(i) = repo
                && verifier.verify(i)
                && !verified.contains(&i)
            {
                verified.push(i);
            }
            let repo = repo.map_or("", |i| rx.dispatcher.repos[i].config.name.as_str());
            about.push(format!("{repo}@{}", push.after));
        }
    }
    // A replay is the same delivery id about the same repos and commits: an id reused for
    // another push is not one.
    let replay = identified.then(|| format!("{name}\n{delivery}\n{}", about.join(" ")));
    if replay
        .as_deref()
        .is_some_and(|key| rx.replays.contains(key))
    {
        rx.metrics.handled(&name, "duplicate");
        info!(message = "Delivery is a replay; nothing enqueued.", provider = %name, %delivery);
        return (StatusCode::OK, axum::Json(json!({"status": "duplicate"}))).into_response();
    }
    let (status, body, outcome) = match parsed {
        Delivery::Ping => (StatusCode::OK, json!({"status": "pong"}), "ping"),
        Delivery::Ignored(reason) => ignored(reason),
        Delivery::PullRequest(pr) => {
            let repo = rx
                .dispatcher
                .repos
                .iter()
                .position(|r| names_repo(&pr.repository_urls, &r.config));
            match repo {
                Some(i) if named.is_some_and(|n| n != i) => {
                    let message = format!(
                        "this is the route of repo `{}`, and the pull request is not about it; point the webhook at /webhooks/{name}/<the repo's name>",
                        rx.dispatcher.repos[named.unwrap_or_default()].config.name
                    );
                    return refused("wrong_route", StatusCode::BAD_REQUEST, &message, &delivery);
                }
                Some(i) if verifier.verify(i) => {
                    let dispatcher = rx.dispatcher.clone();
                    let id = delivery.clone();
                    let work = rx.dispatcher.tasks.spawn(async move {
                        handle_pull_request(&dispatcher, &dispatcher.repos[i], &pr, &id).await
                    });
                    match work.await {
                        Ok(answer) => answer,
                        Err(e) => {
                            warn!(message = "Delivery handling failed; it can be delivered again.", %delivery, error = %e);
                            unavailable("the delivery could not be handled")
                        }
                    }
                }
                Some(i) => {
                    let reason = format!(
                        "signature does not match the secret of repo `{}`; check the webhook secret",
                        rx.dispatcher.repos[i].config.name
                    );
                    (
                        StatusCode::UNAUTHORIZED,
                        json!({"status": "refused", "reason": reason}),
                        "bad_signature",
                    )
                }
                None => ignored(format!(
                    "repository {} is not watched",
                    pr.repository_urls.first().map_or("(none)", String::as_str)
                )),
            }
        }
        Delivery::Pushes(pushes) => {
            // In a task of its own: a Git host that gives up waiting (GitHub after 10 s) drops
            // this handler, and a push must not be left half enqueued when it does.
            let dispatcher = rx.dispatcher.clone();
            let (id, provider) = (delivery.clone(), name.clone());
            let work = rx.dispatcher.tasks.spawn(async move {
                let verified: Vec<&WatchedRepo> =
                    verified.iter().map(|&i| &dispatcher.repos[i]).collect();
                handle_pushes(&dispatcher, &verified, pushes, (&provider, &id)).await
            });
            match work.await {
                Ok(answer) => answer,
                Err(e) => {
                    warn!(message = "Delivery handling failed; it can be delivered again.", %delivery, error = %e);
                    unavailable("the delivery could not be handled")
                }
            }
        }
    };
    if status == StatusCode::UNAUTHORIZED {
        rx.metrics.refused(&name, outcome);
        info!(message = "Delivery refused.", provider = %name, %delivery, reason = %outcome);
        return (status, axum::Json(body)).into_response();
    }
    rx.metrics.handled(&name, outcome);
    if body.get("unresolvedReaders").is_some() {
        rx.metrics.unresolved_readers(&name);
    }
    info!(message = "Delivery handled.", provider = %name, %delivery, %outcome, status = status.as_u16());
    if status != StatusCode::SERVICE_UNAVAILABLE
        && let Some(key) = replay
    {
        rx.replays.remember(key, Instant::now());
    }
    (status, axum::Json(body)).into_response()
}

type Answer = (StatusCode, Value, &'static str);

fn unavailable(reason: &str) -> Answer {
    let body = json!({"status": "refused", "reason": format!("not enqueued, deliver again later: {reason}")});
    (StatusCode::SERVICE_UNAVAILABLE, body, "unavailable")
}

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
    (provider, delivery): (&str, &str),
) -> Answer {
    let mut answers = Vec::with_capacity(pushes.len());
    for push in &pushes {
        let pusher = push.sender.as_deref().unwrap_or_default();
        let trigger = Trigger::new(TriggerKind::Push, pusher).from_provider(provider);
        answers.push(handle_push(dispatcher, verified, push, (delivery, &trigger)).await);
    }
    if answers.len() == 1 {
        return answers.pop().expect("one answer");
    }
    let rank = |s: StatusCode| {
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::SERVICE_UNAVAILABLE,
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
    (delivery, trigger): (&str, &Trigger),
) -> Answer {
    let watched = verified.iter().find(|r| is_about(push, &r.config));
    let Some(repo) = watched else {
        // Signed with another watched repo's secret: the Git host's delivery log must tell
        // this repo's owner that its secret is wrong, not that it is not watched.
        if let Some(configured) = dispatcher.repos.iter().find(|r| is_about(push, &r.config)) {
            let reason = format!(
                "signature does not match the secret of repo `{}`; check the webhook secret",
                configured.config.name
            );
            return (
                StatusCode::UNAUTHORIZED,
                json!({"status": "refused", "reason": reason}),
                "bad_signature",
            );
        }
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
    let moved = (push.before.as_str(), push.after.as_str());
    let pushed = dispatcher
        .push(repo, branch, moved, (delivery, trigger))
        .await;
    let unresolved = match &pushed {
        Ok(p) if !p.unresolved.is_empty() => json!(p.unresolved),
        _ => Value::Null,
    };
    let mut answer = match pushed.map(|p| p.outcome) {
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
            // 200: the delivery was received and handled; the problem is in the commit. A Git
            // host disables a hook after a few non-2xx answers in a row (GitLab after four),
            // which would stop the very push that fixes it.
            let body = json!({"status": "invalid", "repo": name, "branch": branch, "commit": commit, "problems": problems, "jobs": jobs});
            (StatusCode::OK, body, "invalid")
        }
        Err(e) => {
            warn!(message = "Delivery not accepted; it can be delivered again.", %delivery, repo = %name, %branch, error = %e);
            unavailable(e.public_reason())
        }
    };
    if !unresolved.is_null() {
        answer.1["unresolvedReaders"] = unresolved;
    }
    answer
}

/// Whether a push names this repo among its URLs.
fn is_about(push: &PushEvent, repo: &RepoConfig) -> bool {
    names_repo(&push.repository_urls, repo)
}

fn names_repo(urls: &[String], repo: &RepoConfig) -> bool {
    urls.iter()
        .any(|u| repo_identity(u).as_deref() == Some(repo.identity.as_str()))
}

async fn handle_pull_request(
    dispatcher: &Dispatcher,
    repo: &WatchedRepo,
    pr: &PullRequestEvent,
    delivery: &str,
) -> Answer {
    let name = &repo.config.name;
    let number = pr.number;
    match dispatcher.pull_request(repo, pr, delivery).await {
        Ok(PreviewOutcome::Ignored { reason }) => ignored(reason),
        Ok(PreviewOutcome::Skipped { preview, reason }) => {
            let body = json!({"status": "skipped", "repo": name, "pullRequest": number, "preview": preview, "reason": reason});
            (StatusCode::OK, body, "skipped")
        }
        Ok(PreviewOutcome::Invalid {
            preview,
            commit,
            problems,
        }) => {
            warn!(message = "Pull request does not resolve; no preview.", %delivery, repo = %name, %preview, %commit, problems = %problems.join("\n"));
            let body = json!({"status": "invalid", "repo": name, "pullRequest": number, "preview": preview, "commit": commit, "problems": problems});
            (StatusCode::OK, body, "invalid")
        }
        Ok(PreviewOutcome::Waiting {
            preview,
            commit,
            ahead,
        }) => {
            let body = json!({"status": "waiting", "repo": name, "pullRequest": number, "preview": preview, "commit": commit, "ahead": ahead,
                "reason": "as many previews as `previews.maxActive` allows are running; this one deploys when one is torn down"});
            (StatusCode::ACCEPTED, body, "waiting")
        }
        Ok(PreviewOutcome::Enqueued {
            preview,
            commit,
            jobs,
            removed,
        }) => {
            let body = json!({"status": "enqueued", "repo": name, "pullRequest": number, "preview": preview, "commit": commit, "jobs": jobs, "removed": removed});
            (StatusCode::ACCEPTED, body, "enqueued")
        }
        Ok(PreviewOutcome::TornDown { preview, apps }) => {
            let body = json!({"status": "tearing-down", "repo": name, "pullRequest": number, "preview": preview, "apps": apps});
            (StatusCode::ACCEPTED, body, "tearing_down")
        }
        Err(e) => {
            warn!(message = "Delivery not accepted; it can be delivered again.", %delivery, repo = %name, pull_request = number, error = %e);
            unavailable(e.public_reason())
        }
    }
}

/// A delivery's signature checked against repos' secrets, each at most once.
struct Verifier<'a> {
    repos: &'a [WatchedRepo],
    check: &'a verify::Check<'a>,
    tolerance: std::time::Duration,
    known: Vec<Option<bool>>,
    /// Some secret found the signature right but its timestamp outside the window.
    stale: bool,
}

impl<'a> Verifier<'a> {
    fn new(rx: &'a Receiver, check: &'a verify::Check<'a>) -> Self {
        let repos = &rx.dispatcher.repos;
        Verifier {
            repos,
            check,
            tolerance: rx.config.timestamp_tolerance,
            known: vec![None; repos.len()],
            stale: false,
        }
    }

    fn verify(&mut self, index: usize) -> bool {
        *self.known[index].get_or_insert_with(|| {
            match self
                .check
                .verify(self.repos[index].secret.expose(), self.tolerance)
            {
                Ok(()) => true,
                Err(Mismatch::StaleTimestamp) => {
                    self.stale = true;
                    false
                }
                Err(Mismatch::BadSignature) => false,
            }
        })
    }
}

impl Receiver {
    /// Every watched repo, the one a delivery last verified with first: deliveries come mostly
    /// from few repos, so most take one HMAC, where trying each would cost one per repo. The
    /// body is not read to guess its repo: nothing unverified is parsed.
    fn candidates(&self) -> Vec<usize> {
        let last = self
            .last_verified
            .load(std::sync::atomic::Ordering::Relaxed);
        let count = self.dispatcher.repos.len();
        std::iter::once(last)
            .filter(|&i| i < count)
            .chain((0..count).filter(|&i| i != last))
            .collect()
    }

    fn verified_last(&self, index: usize) {
        self.last_verified
            .store(index, std::sync::atomic::Ordering::Relaxed);
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
