//! The HTTP API, for what a push cannot say: `POST /api/v1/sync` syncs an environment (or one
//! app of it) at its branch head now, e.g. after a failed deployment was fixed outside Git;
//! `GET /api/v1/status?repo=…&environment=…` shows each app's sync status and health in ECS,
//! with the service events that explain a failure, and the jobs in the dead-letter queue.
//!
//! Callers present `Authorization: Bearer <token>`. fleetsync holds only SHA-256 digests of the
//! tokens (`api.tokens`, named and scoped; `api.tokenHashes`, admin), so a leaked config or
//! environment reveals no token; a presented token is hashed and compared with every digest in
//! constant time. A token's name is the actor in the logs.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::config::{Config, Scope, SecretRef};
use crate::dispatch::{Dispatcher, ResyncError};

/// SHA-256 digests of the accepted tokens.
#[derive(Clone)]
pub struct TokenHashes(Vec<[u8; 32]>);

impl TokenHashes {
    /// Digests as lowercase hex (what `printf %s "$TOKEN" | sha256sum` prints), separated by
    /// commas, spaces or newlines. The message never repeats the text: it may hold a token
    /// pasted by mistake.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut digests = Vec::new();
        for (i, entry) in text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let mut digest = [0u8; 32];
            if entry.len() != 64
                || entry.bytes().any(|b| b.is_ascii_uppercase())
                || hex::decode_to_slice(entry, &mut digest).is_err()
            {
                return Err(format!(
                    "entry {} is not a SHA-256 digest in lowercase hex; store `printf %s \"$TOKEN\" | sha256sum`, never the token",
                    i + 1
                ));
            }
            digests.push(digest);
        }
        if digests.is_empty() {
            return Err("no token digest; the API would accept no one".into());
        }
        Ok(TokenHashes(digests))
    }

    /// Reads the digests from where `api.tokenHashes` points.
    pub fn load(source: &SecretRef) -> Result<Self, String> {
        let text = source.load("api.tokenHashes").map_err(|e| e.to_string())?;
        let text = std::str::from_utf8(text.expose())
            .map_err(|_| "api.tokenHashes: not UTF-8 text".to_owned())?;
        Self::parse(text).map_err(|e| format!("api.tokenHashes: {e}"))
    }
}

/// openapi.yaml, the API's description, as JSON: read once, served to anyone (it holds no
/// secret, and a client generator has no token yet).
async fn openapi() -> Response {
    static DOCUMENT: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(|| {
        serde_yaml::from_str(include_str!("../openapi.yaml"))
            .expect("openapi.yaml is checked by the tests")
    });
    answer(StatusCode::OK, DOCUMENT.clone())
}

/// A token the API accepts: its digest, its name and what it may do.
struct Token {
    name: String,
    sha256: [u8; 32],
    scopes: Vec<Scope>,
}

/// Every accepted token.
pub struct Tokens(Vec<Token>);

/// What a request needs its token to allow.
#[derive(Debug, Clone, Copy)]
enum Need<'a> {
    Read,
    Sync { environment: &'a str },
}

impl std::fmt::Display for Need<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Need::Read => f.write_str("read"),
            Need::Sync { environment } => write!(f, "sync:{environment}"),
        }
    }
}

fn allows(scope: &Scope, need: Need<'_>) -> bool {
    match (scope, need) {
        (Scope::Admin, _) | (Scope::Read, Need::Read) | (Scope::Sync(None), Need::Sync { .. }) => {
            true
        }
        (Scope::Sync(Some(env)), Need::Sync { environment }) => env == environment,
        _ => false,
    }
}

impl Tokens {
    /// `api.tokens`, and the digests `api.tokenHashes` points at as admin tokens (named
    /// `tokenHashes[N]`); `None` when neither is set: no API.
    pub fn from_config(config: &Config) -> Result<Option<Tokens>, String> {
        let mut tokens: Vec<Token> = config
            .api_tokens
            .iter()
            .map(|t| Token {
                name: t.name.clone(),
                sha256: t.sha256,
                scopes: t.scopes.clone(),
            })
            .collect();
        if let Some(source) = &config.api_token_hashes {
            let hashes = TokenHashes::load(source)?;
            tokens.extend(hashes.0.into_iter().enumerate().map(|(i, sha256)| Token {
                name: format!("tokenHashes[{i}]"),
                sha256,
                scopes: vec![Scope::Admin],
            }));
        }
        Ok((!tokens.is_empty()).then_some(Tokens(tokens)))
    }

    /// The token `presented` is, found by comparing its digest with every one in constant
    /// time: timing tells neither whether nor which one matched.
    fn find(&self, presented: &[u8]) -> Option<&Token> {
        use subtle::{ConditionallySelectable, ConstantTimeEq};
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = u64::MAX;
        for (i, token) in self.0.iter().enumerate() {
            found.conditional_assign(&(i as u64), token.sha256.ct_eq(&digest));
        }
        usize::try_from(found).ok().and_then(|i| self.0.get(i))
    }
}

struct Api {
    dispatcher: Arc<Dispatcher>,
    tokens: Tokens,
}

pub fn router(dispatcher: Arc<Dispatcher>, tokens: Tokens) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/sync", post(sync))
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
        .with_state(Arc::new(Api { dispatcher, tokens }))
}

impl Api {
    /// The name of the token the request carries when it allows `need`; otherwise the answer
    /// to send: 401 without an accepted token, 403 naming the scope it lacks.
    fn authorize(&self, headers: &HeaderMap, need: Need<'_>) -> Result<String, Box<Response>> {
        Self::permit(self.authenticate(headers)?, need)
    }

    /// The token the request carries, or the 401 to send.
    fn authenticate(&self, headers: &HeaderMap) -> Result<&Token, Box<Response>> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .and_then(|t| self.tokens.find(t));
        token.ok_or_else(|| {
            warn!(message = "API request refused: missing or unknown token.");
            Box::new(answer(
                StatusCode::UNAUTHORIZED,
                json!({"error": "send a valid API token as `Authorization: Bearer <token>`"}),
            ))
        })
    }

    /// The token's name when its scopes allow `need`, or the 403 to send.
    fn permit(token: &Token, need: Need<'_>) -> Result<String, Box<Response>> {
        if token.scopes.iter().any(|s| allows(s, need)) {
            return Ok(token.name.clone());
        }
        warn!(message = "API request refused: the token's scopes do not allow it.", actor = %token.name, needed = %need);
        let scopes: Vec<String> = token.scopes.iter().map(Scope::to_string).collect();
        Err(Box::new(answer(
            StatusCode::FORBIDDEN,
            json!({
                "error": format!("token `{}` may not do this: it needs scope `{need}` (or admin), and has {}", token.name, scopes.join(", ")),
                "needed": need.to_string(),
            }),
        )))
    }
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
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("ask for `/api/v1/status?repo=…&environment=…`: {}", e.body_text())}),
            );
        }
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
    query.map(|Query(q)| q).map_err(|e| {
        Box::new(answer(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("the only query parameter is `repo`: {}", e.body_text()), "field": "repo"}),
        ))
    })
}

fn unavailable(e: &crate::dispatch::Error) -> Response {
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
            Err(ResyncError::Unknown(why)) => {
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

fn refusal(e: ResyncError, consequence: &str) -> Response {
    match e {
        ResyncError::Unknown(what) => answer(StatusCode::NOT_FOUND, json!({"error": what})),
        ResyncError::Invalid(problems) => answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": format!("the environment does not resolve; {consequence}"), "problems": problems}),
        ),
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
    use super::*;

    const DIGEST_OF_SECRET: &str =
        "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    fn token(name: &str, secret: &str, scopes: Vec<Scope>) -> Token {
        Token {
            name: name.into(),
            sha256: Sha256::digest(secret.as_bytes()).into(),
            scopes,
        }
    }

    #[test]
    fn a_token_is_found_by_its_digest_and_allowed_only_what_its_scopes_say() {
        let tokens = Tokens(vec![
            token(
                "ci-staging",
                "ci",
                vec![Scope::Read, Scope::Sync(Some("staging".into()))],
            ),
            token("ops", "secret", vec![Scope::Admin]),
            token("deployer", "any", vec![Scope::Sync(None)]),
        ]);
        assert_eq!(tokens.find(b"secret").map(|t| t.name.as_str()), Some("ops"));
        assert!(tokens.find(b"Secret").is_none());
        assert!(
            tokens.find(DIGEST_OF_SECRET.as_bytes()).is_none(),
            "the digest itself is no token"
        );
        let may = |secret: &str, need| {
            let token = tokens.find(secret.as_bytes()).unwrap();
            token.scopes.iter().any(|s| allows(s, need))
        };
        let staging = Need::Sync {
            environment: "staging",
        };
        let production = Need::Sync {
            environment: "production",
        };
        assert!(may("ci", Need::Read) && may("ci", staging) && !may("ci", production));
        assert!(may("secret", Need::Read) && may("secret", production));
        assert!(may("any", production) && !may("any", Need::Read));
    }

    #[test]
    fn a_token_pasted_instead_of_its_digest_is_refused_without_repeating_it() {
        let err = TokenHashes::parse("hunter2").err().unwrap();
        assert!(err.starts_with("entry 1 is not a SHA-256 digest"), "{err}");
        assert!(!err.contains("hunter2"));
        assert!(TokenHashes::parse(" \n").is_err());
        assert!(TokenHashes::parse(&DIGEST_OF_SECRET.to_uppercase()).is_err());
    }

    /// Every route the router serves is described in openapi.yaml, with its method, and
    /// nothing else is.
    #[test]
    fn openapi_describes_exactly_the_routes_served() {
        let document: serde_json::Value =
            serde_yaml::from_str(include_str!("../openapi.yaml")).unwrap();
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
        let source: String = include_str!("api.rs").split_whitespace().collect();
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
