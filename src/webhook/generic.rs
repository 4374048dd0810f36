//! The generic provider, for CI systems that call fleetsync after building an image:
//!
//! ```text
//! POST /webhooks/generic
//! X-Fleetsync-Signature: sha256=<hex HMAC-SHA256 of the body>   (header name configurable)
//! X-Fleetsync-Delivery: <unique id>                              (optional; enables replay detection)
//! {"repository": "https://github.com/acme/platform-config", "ref": "refs/heads/staging"}
//! ```
//! `branch: staging` may stand for `ref`; `after` (the commit) is optional: fleetsync deploys
//! the branch head it fetches either way.

use serde_json::Value;

use super::event::{Delivery, PushEvent};
use super::provider::text;

pub fn parse(v: Value) -> Result<Delivery, String> {
    let repository = text(&v, &["repository"])
        .ok_or("generic payload without `repository` (the config repo's URL)")?;
    let git_ref = match (text(&v, &["ref"]), text(&v, &["branch"])) {
        (Some(r), _) => r,
        (None, Some(b)) => format!("refs/heads/{b}"),
        (None, None) => return Err("generic payload without `ref` or `branch`".into()),
    };
    Ok(Delivery::Pushes(vec![PushEvent {
        repository_urls: vec![repository],
        git_ref,
        before: String::new(),
        after: text(&v, &["after"]).unwrap_or_default(),
        created: false,
        deleted: false,
        forced: false,
        sender: text(&v, &["sender"]),
    }]))
}
