//! Notifications, delivered: a Slack incoming webhook, a generic webhook whose JSON body is
//! signed so its receiver can verify it, and SNS.

use std::time::Duration;

use aws_sdk_sns::error::ProvideErrorMetadata;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::config::{Config, Event, Secret, Sink};
use crate::queue::NotifyJob;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("notification sink {sink} ({kind}) is not in this worker's config")]
    NoSink { sink: usize, kind: &'static str },
    /// Down for now: sent again later.
    #[error(
        "notification sink {sink} ({kind}) did not take the message ({reason}); it is sent again later"
    )]
    Unavailable {
        sink: usize,
        kind: &'static str,
        reason: String,
        retry_after: Option<Duration>,
    },
    #[error("notification sink {sink} ({kind}) refused the message: {reason}")]
    Refused {
        sink: usize,
        kind: &'static str,
        reason: String,
    },
}

impl SendError {
    pub fn retry_after(&self) -> Option<Option<Duration>> {
        match self {
            SendError::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

enum Loaded {
    Slack { url: Secret },
    Webhook { url: String, secret: Secret },
    Sns { topic_arn: String },
}

impl Loaded {
    fn kind(&self) -> &'static str {
        match self {
            Loaded::Slack { .. } => "slack",
            Loaded::Webhook { .. } => "webhook",
            Loaded::Sns { .. } => "sns",
        }
    }
}

pub struct Sinks {
    sinks: Vec<Loaded>,
    client: reqwest::Client,
    sns: aws_sdk_sns::Client,
}

impl Sinks {
    pub fn from_config(
        config: &Config,
        aws: &aws_config::SdkConfig,
    ) -> Result<Self, crate::config::Error> {
        let mut sinks = Vec::new();
        for (i, n) in config.notifications.iter().enumerate() {
            sinks.push(match &n.sink {
                Sink::Slack { webhook_url } => Loaded::Slack {
                    url: webhook_url.load(&format!("notifications[{i}].slack.webhookUrl"))?,
                },
                Sink::Webhook { url, secret } => Loaded::Webhook {
                    url: url.clone(),
                    secret: secret.load(&format!("notifications[{i}].webhook.secret"))?,
                },
                Sink::Sns { topic_arn } => Loaded::Sns {
                    topic_arn: topic_arn.clone(),
                },
            });
        }
        let client = super::http_client();
        Ok(Sinks {
            sinks,
            client,
            sns: aws_sdk_sns::Client::new(aws),
        })
    }

    /// The sink's kind, for metrics: a fixed word.
    pub fn kind(&self, sink: usize) -> &'static str {
        self.sinks.get(sink).map_or("unknown", Loaded::kind)
    }

    pub async fn send(&self, job: &NotifyJob) -> Result<(), SendError> {
        let Some(sink) = self.sinks.get(job.sink) else {
            return Err(SendError::NoSink {
                sink: job.sink,
                kind: "unknown",
            });
        };
        let kind = sink.kind();
        let unavailable = |reason: String, retry_after| SendError::Unavailable {
            sink: job.sink,
            kind,
            reason,
            retry_after,
        };
        let refused = |reason: String| SendError::Refused {
            sink: job.sink,
            kind,
            reason,
        };
        let body = payload(job);
        let request = match sink {
            Loaded::Slack { url } => self
                .client
                .post(String::from_utf8_lossy(url.expose()).as_ref())
                .header("content-type", "application/json")
                .body(json!({"text": text(job)}).to_string()),
            Loaded::Webhook { url, secret } => {
                let body = body.to_string();
                let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose())
                    .expect("HMAC takes keys of any length");
                mac.update(body.as_bytes());
                let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                self.client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("x-fleetsync-signature", signature)
                    .header("x-fleetsync-event", event_name(job.event))
                    .body(body)
            }
            Loaded::Sns { topic_arn } => {
                let subject: String = text(job)
                    .chars()
                    .filter(|c| c.is_ascii_graphic() || *c == ' ')
                    .take(100)
                    .collect();
                return self
                    .sns
                    .publish()
                    .topic_arn(topic_arn)
                    .subject(subject)
                    .message(body.to_string())
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| {
                        let code = e.code().unwrap_or("no answer").to_owned();
                        match code.as_str() {
                            "Throttling"
                            | "ThrottlingException"
                            | "InternalError"
                            | "no answer" => unavailable(code, None),
                            _ => refused(format!(
                                "{code}: {}; the worker's role needs sns:Publish on {topic_arn}",
                                e.message().unwrap_or_default()
                            )),
                        }
                    });
            }
        };
        // The URL is kept out of errors: a Slack webhook's URL is its secret.
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(e.without_url().to_string(), None))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(unavailable(status.to_string(), retry_after));
        }
        if !status.is_success() {
            return Err(refused(format!("answered {status}")));
        }
        Ok(())
    }
}

/// The generic webhook's body, and SNS's message.
fn payload(job: &NotifyJob) -> serde_json::Value {
    json!({
        "event": event_name(job.event),
        "repo": job.repo,
        "environment": job.environment,
        "app": job.app,
        "commit": job.commit,
        "code": job.code,
        "summary": job.summary,
        "targetUrl": job.target_url,
    })
}

fn text(job: &NotifyJob) -> String {
    let what = match job.event {
        Event::Deployed => "deployed",
        Event::Failed => "failed",
        Event::RolledBack => "rolled back",
        Event::Refused => "refused",
        Event::Superseded => "superseded",
        Event::PreviewReady => "preview ready",
        Event::Any => "",
    };
    let short = job.commit.get(..7).unwrap_or(&job.commit);
    let subject = match &job.app {
        Some(app) => format!("{}/{app}", job.environment),
        None => job.environment.clone(),
    };
    format!("{subject} {what} at {short}: {}", job.summary)
}

fn event_name(event: Event) -> &'static str {
    match event {
        Event::Deployed => "deployed",
        Event::Failed => "failed",
        Event::RolledBack => "rolledBack",
        Event::Refused => "refused",
        Event::Superseded => "superseded",
        Event::PreviewReady => "previewReady",
        Event::Any => "any",
    }
}
