//! The Git hosts fleetsync understands, each on its own route `POST /webhooks/{provider}`: how a
//! delivery is signed, what identifies it, and how its payload reads.

use std::borrow::Cow;

use axum::http::HeaderMap;
use serde_json::Value;

use super::event::{Delivery, ZERO_SHA};
use super::verify::Check;
use super::{bitbucket, generic, github, gitlab};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    GitLab,
    /// Gitea, Forgejo and Gogs.
    Gitea,
    /// Bitbucket Cloud and Bitbucket Data Center.
    Bitbucket,
    /// Any CI system: HMAC-SHA256 of the body in a configured header.
    Generic,
}

impl Provider {
    pub fn from_path(name: &str) -> Option<Self> {
        Some(match name {
            "github" => Provider::GitHub,
            "gitlab" => Provider::GitLab,
            "gitea" | "forgejo" | "gogs" => Provider::Gitea,
            "bitbucket" => Provider::Bitbucket,
            "generic" => Provider::Generic,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::Gitea => "gitea",
            Provider::Bitbucket => "bitbucket",
            Provider::Generic => "generic",
        }
    }

    /// The provider's id of this delivery; a redelivery of the same event keeps it.
    pub fn delivery_id(self, headers: &HeaderMap) -> Option<&str> {
        let names: &[&str] = match self {
            Provider::GitHub => &["x-github-delivery"],
            // Idempotency-Key stays the same across GitLab's retries; the event UUID may not.
            Provider::GitLab => &["idempotency-key", "x-gitlab-event-uuid", "webhook-id"],
            Provider::Gitea => &["x-forgejo-delivery", "x-gitea-delivery", "x-gogs-delivery"],
            Provider::Bitbucket => &["x-request-uuid", "x-request-id"],
            Provider::Generic => &["x-fleetsync-delivery"],
        };
        names.iter().find_map(|n| header(headers, n))
    }

    /// How this delivery is signed, from its headers alone; `None` when it carries no
    /// signature at all.
    pub fn check<'a>(
        self,
        headers: &'a HeaderMap,
        body: &'a [u8],
        generic_header: &str,
    ) -> Option<Check<'a>> {
        match self {
            Provider::GitHub => Some(Check::HmacHex {
                signature: header(headers, "x-hub-signature-256")?,
                prefix: "sha256=",
                signed: Cow::Borrowed(body),
            }),
            Provider::GitLab => gitlab::check(headers, body),
            Provider::Gitea => {
                // The host's own header first: Gitea and Forgejo also send GitHub's.
                let signature = [
                    "x-forgejo-signature",
                    "x-gitea-signature",
                    "x-gogs-signature",
                ]
                .iter()
                .find_map(|n| header(headers, n))?;
                // Gitea signs the JSON payload, even when it delivers it form-encoded.
                let signed = form_payload(headers, body).map_or(Cow::Borrowed(body), Cow::Owned);
                Some(Check::HmacHex {
                    signature,
                    prefix: "",
                    signed,
                })
            }
            Provider::Bitbucket => Some(Check::HmacHex {
                signature: header(headers, "x-hub-signature")?,
                prefix: "sha256=",
                signed: Cow::Borrowed(body),
            }),
            Provider::Generic => {
                let signature = header(headers, generic_header)?;
                let prefix = if signature.starts_with("sha256=") {
                    "sha256="
                } else {
                    ""
                };
                Some(Check::HmacHex {
                    signature,
                    prefix,
                    signed: Cow::Borrowed(body),
                })
            }
        }
    }

    /// Reads a verified delivery.
    pub fn parse(self, headers: &HeaderMap, body: &[u8]) -> Result<Delivery, String> {
        let form = form_payload(headers, body);
        let json = form.as_deref().unwrap_or(body);
        match self {
            Provider::GitHub => {
                github::parse(header(headers, "x-github-event").unwrap_or_default(), json)
            }
            Provider::GitLab => gitlab::parse(
                header(headers, "x-gitlab-event").unwrap_or_default(),
                || value(json),
            ),
            Provider::Gitea => {
                let event = ["x-forgejo-event", "x-gitea-event", "x-gogs-event"]
                    .iter()
                    .find_map(|n| header(headers, n));
                github::parse(event.unwrap_or_default(), json)
            }
            Provider::Bitbucket => {
                bitbucket::parse(header(headers, "x-event-key").unwrap_or_default(), || {
                    value(json)
                })
            }
            Provider::Generic => generic::parse(value(json)?),
        }
    }
}

pub(super) fn value(json: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(json).map_err(|e| format!("the body is not JSON: {e}"))
}

pub fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

/// The `payload` field of a form-encoded delivery (GitHub's and Gitea's optional format). Only a
/// body that starts with it is read as a form: Content-Type is not signed, and a JSON body
/// decoded as a form would be read as something else than what was signed.
fn form_payload(headers: &HeaderMap, body: &[u8]) -> Option<Vec<u8>> {
    if !header(headers, "content-type")?.starts_with("application/x-www-form-urlencoded")
        || !body.starts_with(b"payload=")
    {
        return None;
    }
    form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned().into_bytes())
}

/// The string at `path` in a JSON document.
pub(super) fn text(value: &Value, path: &[&str]) -> Option<String> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))?
        .as_str()
        .map(str::to_owned)
}

/// The string at `path` under `within` (named `name` in the message), or why it is missing.
pub(super) fn required_text(
    within: &Value,
    what: &str,
    name: &str,
    path: &[&str],
) -> Result<String, String> {
    text(within, path).ok_or_else(|| format!("{what} without `{name}.{}`", path.join(".")))
}

/// The strings found at any of `paths`, for the several URLs a payload gives a repository.
pub(super) fn texts(value: &Value, paths: &[&[&str]]) -> Vec<String> {
    paths.iter().filter_map(|p| text(value, p)).collect()
}

pub(super) fn is_zero(sha: &str) -> bool {
    sha.is_empty() || sha == ZERO_SHA
}
