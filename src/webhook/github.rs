//! GitHub deliveries: `X-GitHub-Event` + JSON (or form-encoded `payload=`) bodies.

use serde::Deserialize;

use super::event::PushEvent;

/// What a verified GitHub delivery asks for.
#[derive(Debug)]
pub enum Delivery {
    Ping,
    Push(PushEvent),
    /// An event fleetsync does not act on, by name.
    Other(String),
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    forced: bool,
    repository: Repository,
    sender: Option<Sender>,
}

#[derive(Deserialize)]
struct Repository {
    clone_url: Option<String>,
    html_url: Option<String>,
    ssh_url: Option<String>,
    git_url: Option<String>,
    url: Option<String>,
}

#[derive(Deserialize)]
struct Sender {
    login: Option<String>,
}

/// Parses a delivery whose signature was already verified.
pub fn parse(
    event: &str,
    delivery: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Delivery, String> {
    match event {
        "ping" => return Ok(Delivery::Ping),
        "push" => {}
        other => return Ok(Delivery::Other(other.to_owned())),
    }
    let json = if content_type.starts_with("application/x-www-form-urlencoded") {
        form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned().into_bytes())
            .ok_or("form-encoded delivery without a `payload` field")?
    } else {
        body.to_vec()
    };
    let push: Push =
        serde_json::from_slice(&json).map_err(|e| format!("not a GitHub push payload: {e}"))?;
    let r = push.repository;
    Ok(Delivery::Push(PushEvent {
        delivery: delivery.to_owned(),
        repository_urls: [r.clone_url, r.html_url, r.ssh_url, r.git_url, r.url]
            .into_iter()
            .flatten()
            .collect(),
        git_ref: push.git_ref,
        before: push.before,
        after: push.after,
        created: push.created,
        deleted: push.deleted,
        forced: push.forced,
        sender: push.sender.and_then(|s| s.login),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/webhooks/github/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn real_push_payloads_normalise() {
        let Delivery::Push(push) = parse(
            "push",
            "d1",
            "application/json",
            &fixture("go-playground.push.json"),
        )
        .unwrap() else {
            panic!("not a push")
        };
        assert_eq!(push.branch(), Some("master"));
        assert_eq!(push.after, "fd489864e7642b48eaad6e3f155c10e46810ec72");
        assert!(
            push.repository_urls
                .contains(&"git@github.com:binkkatal/sample_app.git".to_owned())
        );
        assert!(!push.deleted && !push.created);

        let Delivery::Push(tag) = parse(
            "push",
            "d2",
            "application/json",
            &fixture("push-tag-deleted.payload.json"),
        )
        .unwrap() else {
            panic!("not a push")
        };
        assert_eq!(tag.branch(), None);
        assert!(tag.deleted);

        let Delivery::Push(new) = parse(
            "push",
            "d3",
            "application/json",
            &fixture("with-new-branch.payload.json"),
        )
        .unwrap() else {
            panic!("not a push")
        };
        assert!(new.created);
    }

    #[test]
    fn form_encoded_deliveries_carry_the_json_in_payload() {
        let json = fixture("go-playground.push.json");
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", std::str::from_utf8(&json).unwrap())
            .finish();
        let parsed = parse(
            "push",
            "d",
            "application/x-www-form-urlencoded",
            body.as_bytes(),
        )
        .unwrap();
        assert!(matches!(parsed, Delivery::Push(p) if p.branch() == Some("master")));
    }

    #[test]
    fn other_events_and_garbage() {
        assert!(matches!(
            parse(
                "ping",
                "d",
                "application/json",
                &fixture("ping.payload.json")
            ),
            Ok(Delivery::Ping)
        ));
        assert!(
            matches!(parse("issues", "d", "application/json", b"{}"), Ok(Delivery::Other(e)) if e == "issues")
        );
        let err = parse("push", "d", "application/json", b"{not json").unwrap_err();
        assert!(err.starts_with("not a GitHub push payload"), "{err}");
    }
}
