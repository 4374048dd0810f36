//! What the API shows: environments, their apps' sync status and health, previews.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;
use tracing::warn;

use axum::Router;
use axum::routing::get;

use super::auth::Need;
use super::{Api, answer, refusal};
use crate::dispatch::{MAX_HISTORY, ResyncError};

pub(super) fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/previews", get(previews))
        .route("/api/v1/environments", get(environments))
        .route(
            "/api/v1/environments/{environment}/apps",
            get(environment_apps),
        )
        .route(
            "/api/v1/environments/{environment}/apps/{app}",
            get(environment_app),
        )
        .route(
            "/api/v1/environments/{environment}/apps/{app}/history",
            get(app_history),
        )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    repo: String,
    environment: String,
}

async fn status(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Response {
    if let Err(refused) = api.authorize(&headers, Need::Read) {
        return *refused;
    }
    let query = match parsed(query, "ask for `/api/v1/status?repo=…&environment=…`", None) {
        Ok(q) => q,
        Err(refused) => return *refused,
    };
    match api.dispatcher.status(&query.repo, &query.environment).await {
        Ok(status) => answer(StatusCode::OK, json!(status)),
        Err(e) => refusal(e, "its status cannot be shown"),
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RepoQuery {
    repo: Option<String>,
}

/// `?repo=…`, refused with what to send instead.
fn repo_query(query: Result<Query<RepoQuery>, QueryRejection>) -> Result<RepoQuery, Box<Response>> {
    parsed(query, "the only query parameter is `repo`", Some("repo"))
}

/// The query, or the 400 saying what to send (`expected`) and, when there is one, the field.
fn parsed<T>(
    query: Result<Query<T>, QueryRejection>,
    expected: &str,
    field: Option<&str>,
) -> Result<T, Box<Response>> {
    query.map(|Query(q)| q).map_err(|e| {
        let mut body = json!({"error": format!("{expected}: {}", e.body_text())});
        if let Some(field) = field {
            body["field"] = json!(field);
        }
        Box::new(answer(StatusCode::BAD_REQUEST, body))
    })
}

pub(super) fn unavailable(e: &crate::dispatch::Error) -> Response {
    warn!(message = "API request failed.", error = %e);
    answer(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": e.public_reason(), "retry": true}),
    )
}

/// Each environment of every watched repo (or of `?repo=`): branch, cluster, the commit at its
/// head, and its apps counted by sync status and health.
async fn environments(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<RepoQuery>, QueryRejection>,
) -> Response {
    if let Err(refused) = api.authorize(&headers, Need::Read) {
        return *refused;
    }
    let query = match repo_query(query) {
        Ok(q) => q,
        Err(refused) => return *refused,
    };
    let declared = match api.dispatcher.declared().await {
        Ok(declared) => declared,
        Err(e) => return unavailable(&e),
    };
    if let Some(repo) = &query.repo
        && !declared.iter().any(|(r, _)| r == repo)
    {
        return refusal(
            ResyncError::Unknown(format!("no repo `{repo}` declares environments")),
            "",
        );
    }
    let mut listed = Vec::new();
    for (repo, environment) in declared {
        if query.repo.as_ref().is_some_and(|r| *r != repo) {
            continue;
        }
        match api.dispatcher.status(&repo, &environment).await {
            Ok(status) => {
                let count = |of: &dyn Fn(&crate::sync::status::AppStatus) -> serde_json::Value| {
                    let mut counts = std::collections::BTreeMap::<String, usize>::new();
                    for app in &status.apps {
                        let key = of(app).as_str().unwrap_or_default().to_owned();
                        *counts.entry(key).or_default() += 1;
                    }
                    counts
                };
                listed.push(json!({
                    "repo": repo,
                    "environment": status.environment,
                    "branch": status.branch,
                    "cluster": status.cluster,
                    "commit": status.commit,
                    "apps": status.apps.len(),
                    "sync": count(&|a| json!(a.sync)),
                    "health": count(&|a| json!(a.health)),
                }));
            }
            Err(ResyncError::Invalid(problems)) => {
                listed
                    .push(json!({"repo": repo, "environment": environment, "problems": problems}));
            }
            Err(ResyncError::Unknown(why) | ResyncError::Conflict(why)) => {
                listed.push(json!({"repo": repo, "environment": environment, "problems": [why]}));
            }
            Err(ResyncError::Failed(e)) => return unavailable(&e),
        }
    }
    answer(StatusCode::OK, json!({"environments": listed}))
}

/// The repo `?repo=` names, or the only one declaring `environment`.
async fn repo_of(
    api: &Api,
    repo: Option<String>,
    environment: &str,
) -> Result<String, Box<Response>> {
    if let Some(repo) = repo {
        return Ok(repo);
    }
    let declared = api
        .dispatcher
        .declared()
        .await
        .map_err(|e| Box::new(unavailable(&e)))?;
    let mut repos: Vec<String> = declared
        .into_iter()
        .filter(|(_, e)| e == environment)
        .map(|(r, _)| r)
        .collect();
    match repos.len() {
        1 => Ok(repos.remove(0)),
        0 => Err(Box::new(refusal(
            ResyncError::Unknown(format!(
                "no watched repo declares environment `{environment}`"
            )),
            "",
        ))),
        _ => Err(Box::new(answer(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("repos {} all declare environment `{environment}`; add `?repo=` naming one", repos.join(", ")), "field": "repo"}),
        ))),
    }
}

/// `environment` of the repo `?repo=` names (or the only one declaring it), read for a token
/// that may read: its status, or the answer to send instead.
async fn environment_status(
    api: &Api,
    headers: &HeaderMap,
    environment: &str,
    query: Result<Query<RepoQuery>, QueryRejection>,
) -> Result<(String, crate::dispatch::EnvironmentStatus), Box<Response>> {
    api.authorize(headers, Need::Read)?;
    let query = repo_query(query)?;
    let repo = repo_of(api, query.repo, environment).await?;
    match api.dispatcher.status(&repo, environment).await {
        Ok(status) => Ok((repo, status)),
        Err(e) => Err(Box::new(refusal(e, "its status cannot be shown"))),
    }
}

/// Every app of an environment: sync status, health, what runs, and why not what Git says.
async fn environment_apps(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(environment): Path<String>,
    query: Result<Query<RepoQuery>, QueryRejection>,
) -> Response {
    match environment_status(&api, &headers, &environment, query).await {
        Ok((_, status)) => answer(StatusCode::OK, json!(status)),
        Err(refused) => *refused,
    }
}

/// One app of an environment, as in [`environment_apps`].
async fn environment_app(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path((environment, app)): Path<(String, String)>,
    query: Result<Query<RepoQuery>, QueryRejection>,
) -> Response {
    let (repo, status) = match environment_status(&api, &headers, &environment, query).await {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    match status.apps.iter().find(|a| a.app == app) {
        Some(found) => answer(StatusCode::OK, json!(found)),
        None => {
            let known: Vec<&str> = status.apps.iter().map(|a| a.app.as_str()).collect();
            answer(
                StatusCode::NOT_FOUND,
                json!({"error": format!("no app `{app}` in environment `{environment}` of repo `{repo}`; apps: {}", known.join(", "))}),
            )
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    repo: Option<String>,
    limit: Option<usize>,
}

/// How many deployments history shows when `?limit=` is not given.
const DEFAULT_HISTORY: usize = 10;

/// One app's deployments, newest first: from its task definition revisions' tags.
async fn app_history(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path((environment, app)): Path<(String, String)>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    if let Err(refused) = api.authorize(&headers, Need::Read) {
        return *refused;
    }
    let expected = format!("the query parameters are `repo` and `limit` (1 to {MAX_HISTORY})");
    let query = match parsed(query, &expected, None) {
        Ok(q) => q,
        Err(refused) => return *refused,
    };
    let limit = query.limit.unwrap_or(DEFAULT_HISTORY);
    if !(1..=MAX_HISTORY).contains(&limit) {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("`limit` must be 1 to {MAX_HISTORY}"), "field": "limit"}),
        );
    }
    let repo = match repo_of(&api, query.repo, &environment).await {
        Ok(repo) => repo,
        Err(refused) => return *refused,
    };
    match api
        .dispatcher
        .history(&repo, &environment, &app, limit)
        .await
    {
        Ok(history) => answer(StatusCode::OK, json!(history)),
        Err(e) => refusal(e, "its history cannot be shown"),
    }
}

/// Active and waiting previews of every repo, with their apps' services.
async fn previews(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if let Err(refused) = api.authorize(&headers, Need::Read) {
        return *refused;
    }
    match api.dispatcher.previews().await {
        Ok(previews) => answer(StatusCode::OK, json!({"previews": previews})),
        Err(e) => {
            warn!(message = "API request failed.", error = %e);
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": e.public_reason(), "retry": true}),
            )
        }
    }
}
