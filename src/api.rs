//! The HTTP API, for what a push cannot say: `POST /api/v1/sync` syncs an environment (or one
//! app of it) at its branch head now, e.g. after a failed deployment was fixed outside Git;
//! `GET /api/v1/status?repo=…&environment=…` shows each app's sync status and health in ECS,
//! with the service events that explain a failure, and the jobs in the dead-letter queue.
//!
//! Callers present `Authorization: Bearer <token>`. fleetsync holds only SHA-256 digests of the
//! tokens (`api.tokenHashes`), so a leaked config or environment reveals no token; a presented
//! token is hashed and compared with each digest in constant time.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::config::SecretRef;
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

    fn accepts(&self, token: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(token).into();
        // Every digest is compared, so timing does not tell which one matched.
        self.0
            .iter()
            .fold(0u8, |any, d| any | d.ct_eq(&presented).unwrap_u8())
            == 1
    }
}

struct Api {
    dispatcher: Arc<Dispatcher>,
    tokens: TokenHashes,
}

pub fn router(dispatcher: Arc<Dispatcher>, tokens: TokenHashes) -> Router {
    Router::new()
        .route("/api/v1/sync", post(sync))
        .route("/api/v1/status", get(status))
        .route("/api/v1/previews", get(previews))
        .with_state(Arc::new(Api { dispatcher, tokens }))
}

impl Api {
    /// `Err` with the answer to send when the request carries no accepted token.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if token.is_some_and(|t| self.tokens.accepts(t)) {
            return Ok(());
        }
        warn!(message = "API request refused: missing or unknown token.");
        Err(Box::new(answer(
            StatusCode::UNAUTHORIZED,
            json!({"error": "send a valid API token as `Authorization: Bearer <token>`"}),
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
    if let Err(refused) = api.authorize(&headers) {
        return *refused;
    }
    let request: SyncRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("the body must be {{\"repo\": …, \"environment\": …, \"app\": … (optional)}}: {e}")}),
            );
        }
    };
    let app = request.app.as_deref();
    match api
        .dispatcher
        .resync(&request.repo, &request.environment, app)
        .await
    {
        Ok(jobs) => {
            info!(message = "Sync requested through the API.", repo = %request.repo, environment = %request.environment, app = ?app, jobs = jobs.len());
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
    if let Err(refused) = api.authorize(&headers) {
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

/// Active and waiting previews of every repo, with their apps' services.
async fn previews(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if let Err(refused) = api.authorize(&headers) {
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

    #[test]
    fn tokens_are_checked_against_their_digests() {
        let tokens =
            TokenHashes::parse(&format!("{DIGEST_OF_SECRET},\n{}", "0".repeat(64))).unwrap();
        assert!(tokens.accepts(b"secret"));
        assert!(!tokens.accepts(b"Secret"));
        assert!(
            !tokens.accepts(DIGEST_OF_SECRET.as_bytes()),
            "the digest itself is no token"
        );
    }

    #[test]
    fn a_token_pasted_instead_of_its_digest_is_refused_without_repeating_it() {
        let err = TokenHashes::parse("hunter2").err().unwrap();
        assert!(err.starts_with("entry 1 is not a SHA-256 digest"), "{err}");
        assert!(!err.contains("hunter2"));
        assert!(TokenHashes::parse(" \n").is_err());
        assert!(TokenHashes::parse(&DIGEST_OF_SECRET.to_uppercase()).is_err());
    }
}
