//! Who may call the API: bearer tokens, held only as SHA-256 digests, each named and scoped.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::warn;

use super::{Api, answer};
use crate::config::{Config, Scope, SecretRef};

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

/// A token the API accepts: its digest, its name and what it may do.
pub(super) struct Token {
    pub(super) name: String,
    sha256: [u8; 32],
    scopes: Vec<Scope>,
}

/// Every accepted token.
pub struct Tokens(Vec<Token>);

/// What a request needs its token to allow.
#[derive(Debug, Clone, Copy)]
pub(super) enum Need<'a> {
    Read,
    Sync { environment: &'a str },
    Rollback { environment: &'a str },
}

impl std::fmt::Display for Need<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Need::Read => f.write_str("read"),
            Need::Sync { environment } => write!(f, "sync:{environment}"),
            Need::Rollback { environment } => write!(f, "rollback:{environment}"),
        }
    }
}

fn allows(scope: &Scope, need: Need<'_>) -> bool {
    match (scope, need) {
        (Scope::Admin, _) | (Scope::Read, Need::Read) | (Scope::Sync(None), Need::Sync { .. }) => {
            true
        }
        (Scope::Sync(Some(env)), Need::Sync { environment })
        | (Scope::Rollback(env), Need::Rollback { environment }) => env == environment,
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

impl Api {
    /// The name of the token the request carries when it allows `need`; otherwise the answer
    /// to send: 401 without an accepted token, 403 naming the scope it lacks.
    pub(super) fn authorize(
        &self,
        headers: &HeaderMap,
        need: Need<'_>,
    ) -> Result<String, Box<Response>> {
        Self::permit(self.authenticate(headers)?, need)
    }

    /// The token the request carries, or the 401 to send.
    pub(super) fn authenticate(&self, headers: &HeaderMap) -> Result<&Token, Box<Response>> {
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
    pub(super) fn permit(token: &Token, need: Need<'_>) -> Result<String, Box<Response>> {
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
}
