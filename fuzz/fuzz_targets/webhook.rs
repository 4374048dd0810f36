//! The receiver's parse-and-verify path for every provider, on arbitrary headers and bodies:
//! nothing may panic, and a delivery signed with another key never verifies.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run webhook -s none -- -max_total_time=120` (see BENCHMARKS.md).

#![no_main]

use std::time::Duration;

use fleetsync::webhook::Provider;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const PROVIDERS: [Provider; 5] = [Provider::GitHub, Provider::GitLab, Provider::Gitea, Provider::Bitbucket, Provider::Generic];

/// Header names the providers read; the input decides which are present and their values.
const NAMES: [&str; 16] = [
    "x-github-event", "x-hub-signature-256", "x-gitlab-event", "x-gitlab-token", "webhook-id",
    "webhook-timestamp", "webhook-signature", "x-gitea-event", "x-gitea-signature", "x-forgejo-signature",
    "x-gogs-signature", "x-event-key", "x-hub-signature", "x-fleetsync-signature", "content-type",
    "x-github-delivery",
];

const EVENTS: [&str; 10] = [
    "push", "pull_request", "ping", "Push Hook", "Merge Request Hook", "System Hook", "repo:push",
    "repo:refs_changed", "pullrequest:created", "pr:opened",
];

fuzz_target!(|data: &[u8]| {
    // Layout: [mask: 2 bytes][event: 1][value length: 1][value][body...]
    if data.len() < 4 {
        return;
    }
    let mask = u16::from_le_bytes([data[0], data[1]]);
    let event = EVENTS[data[2] as usize % EVENTS.len()];
    let len = (data[3] as usize).min(data.len() - 4);
    let value = String::from_utf8_lossy(&data[4..4 + len]).into_owned();
    let body = &data[4 + len..];

    let mut headers = HeaderMap::new();
    for (i, name) in NAMES.iter().enumerate() {
        if mask & (1 << i) == 0 {
            continue;
        }
        let v = if name.ends_with("event") || *name == "x-event-key" {
            event.to_owned()
        } else if *name == "content-type" {
            if value.len() % 2 == 0 { "application/json".into() } else { "application/x-www-form-urlencoded".into() }
        } else {
            value.clone()
        };
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    for provider in PROVIDERS {
        if let Some(check) = provider.check(&headers, body, "x-fleetsync-signature") {
            // The input cannot know this key: a random signature must never verify. (A token
            // check compares the header itself, so the key is chosen to be unprintable.)
            assert!(check.verify(b"\x00fuzz-key-not-in-any-input\x01", Duration::from_secs(300)).is_err());
        }
        let _ = provider.parse(&headers, body);
        let _ = provider.delivery_id(&headers);
    }
});
