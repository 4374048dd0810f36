//! The SQS FIFO queue between receivers and workers: the only module that imports
//! `aws_sdk_sqs`.
//!
//! SQS is the durable hand-off: a receiver acknowledges a webhook only after [`Queue::send`]
//! returned, and a worker deletes a message only after its job is done.

pub mod job;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
pub use job::{
    CommentJob, Job, NotifyJob, PreviewChange, PreviewOf, PruneJob, RollbackJob, Rollup, StatusJob,
    StatusState, SyncJob, TeardownJob, Trigger, TriggerKind,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("SQS {operation} on {queue}: {code}: {message}")]
    Api {
        operation: &'static str,
        queue: String,
        code: String,
        message: String,
    },
}

impl Error {
    /// The receipt no longer names this worker's receive of the message: the visibility ran
    /// out and another worker may have it. SQS says so with several codes.
    pub fn receipt_expired(&self) -> bool {
        let Error::Api { code, message, .. } = self;
        code.contains("ReceiptHandle")
            || code.contains("MessageNotInflight")
            || (code == "InvalidParameterValue" && message.to_ascii_lowercase().contains("receipt"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn api_error<E, R>(operation: &'static str, queue: &str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let (code, message) = match &err {
        SdkError::ServiceError(e) => (
            e.err().code().unwrap_or("Unknown").to_owned(),
            e.err().message().unwrap_or_default().to_owned(),
        ),
        _ => (
            "Unavailable".to_owned(),
            DisplayErrorContext(&err).to_string(),
        ),
    };
    Error::Api {
        operation,
        queue: queue.to_owned(),
        code,
        message,
    }
}

#[derive(Clone, Debug)]
pub struct Queue {
    client: aws_sdk_sqs::Client,
    url: String,
    /// The dead-letter queue's URL, once the redrive policy named one.
    dead_letter_url: Arc<OnceLock<String>>,
}

/// A job as accepted by SQS.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Enqueued {
    pub id: String,
    pub environment: String,
    pub app: String,
    pub spec_hash: String,
}

/// A received message: the job, or why its body could not be read.
#[derive(Debug)]
pub struct Received {
    pub message_id: String,
    /// Its FIFO group: messages of one group run one after another.
    pub group: String,
    pub receipt: String,
    pub receive_count: u32,
    pub job: Result<Job, String>,
}

/// SQS takes at most ten entries per batch call.
const BATCH: usize = 10;

impl Queue {
    pub fn new(config: &aws_config::SdkConfig, url: &str) -> Self {
        Queue {
            client: aws_sdk_sqs::Client::new(config),
            url: url.to_owned(),
            dead_letter_url: Arc::default(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends every job or fails: a partial batch failure is an error, and the caller's retry
    /// re-sends all of them, which FIFO deduplication makes safe.
    pub async fn send(&self, jobs: &[SyncJob]) -> Result<Vec<Enqueued>> {
        let ids = self
            .send_all(jobs, |j| {
                (serde_json::to_string(j), j.group_id(), j.deduplication_id())
            })
            .await?;
        Ok(jobs
            .iter()
            .zip(ids)
            .map(|(job, id)| {
                // The first of a job's state changes, with the fields of the worker's lines.
                let trigger = &job.trigger;
                tracing::info!(message = "Job enqueued.", event = "enqueued", message_id = %id, environment = %job.app.environment, app = %job.app.name, commit = %job.app.commit, delivery = %job.delivery, trigger = trigger.kind.as_str(), actor = %trigger.actor, reason = %trigger.reason);
                Enqueued {
                    id,
                    environment: job.app.environment.clone(),
                    app: job.app.name.clone(),
                    spec_hash: job.app.spec_hash.clone(),
                }
            })
            .collect())
    }

    /// Sends commit statuses, all or none, like [`Queue::send`].
    pub async fn send_statuses(&self, jobs: &[StatusJob]) -> Result<()> {
        self.send_all(jobs, |j| {
            (serde_json::to_string(j), j.group_id(), j.deduplication_id())
        })
        .await?;
        Ok(())
    }

    /// Sends preview comment changes, all or none, like [`Queue::send`].
    pub async fn send_comments(&self, jobs: &[CommentJob]) -> Result<()> {
        self.send_all(jobs, |j| {
            (serde_json::to_string(j), j.group_id(), j.deduplication_id())
        })
        .await?;
        Ok(())
    }

    /// Sends notifications, all or none, like [`Queue::send`].
    pub async fn send_notifications(&self, jobs: &[NotifyJob]) -> Result<()> {
        self.send_all(jobs, |j| {
            (serde_json::to_string(j), j.group_id(), j.deduplication_id())
        })
        .await?;
        Ok(())
    }

    /// Sends prune jobs, all or none, like [`Queue::send`].
    pub async fn send_prune(&self, jobs: &[PruneJob]) -> Result<()> {
        self.send_all(jobs, |j| {
            (serde_json::to_string(j), j.group_id(), j.deduplication_id())
        })
        .await?;
        Ok(())
    }

    pub async fn send_teardown(&self, jobs: &[TeardownJob]) -> Result<Vec<String>> {
        self.send_all(jobs, |j| {
            (serde_json::to_string(j), j.group_id(), j.deduplication_id())
        })
        .await
    }

    pub async fn send_rollback(&self, job: &RollbackJob) -> Result<String> {
        let ids = self
            .send_all(std::slice::from_ref(job), |j| {
                (serde_json::to_string(j), j.group_id(), j.deduplication_id())
            })
            .await?;
        Ok(ids.into_iter().next().unwrap_or_default())
    }

    /// The message ids of `items`, in order.
    async fn send_all<T>(
        &self,
        items: &[T],
        message: impl Fn(&T) -> (serde_json::Result<String>, String, String),
    ) -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(items.len());
        for chunk in items.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let (body, group, deduplication) = message(item);
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body.expect("jobs always serialise"))
                        .message_group_id(group)
                        .message_deduplication_id(deduplication)
                        .build()
                        .expect("id and body are set")
                })
                .collect();
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| api_error("SendMessageBatch", &self.url, e))?;
            if let Some(failed) = out.failed().first() {
                return Err(Error::Api {
                    operation: "SendMessageBatch",
                    queue: self.url.clone(),
                    code: failed.code().to_owned(),
                    message: failed.message().unwrap_or_default().to_owned(),
                });
            }
            let mut sent = vec![String::new(); chunk.len()];
            for ok in out.successful() {
                if let Some(slot) = ok.id().parse::<usize>().ok().and_then(|i| sent.get_mut(i)) {
                    *slot = ok.message_id().to_owned();
                }
            }
            ids.extend(sent);
        }
        Ok(ids)
    }

    /// Long-polls for up to `max` jobs (1-10), hiding them from other workers for `visibility`.
    pub async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, BATCH) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .visibility_timeout(secs(visibility))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            // The SDK retries a receive whose answer was lost with the same attempt id, so SQS
            // hands back the same messages instead of hiding them for the visibility timeout.
            .receive_request_attempt_id(uuid::Uuid::new_v4().simple().to_string())
            .send()
            .await
            .map_err(|e| api_error("ReceiveMessage", &self.url, e))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                let receipt = m.receipt_handle()?.to_owned();
                let receive_count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                let job = Job::parse(m.body().unwrap_or_default());
                let message_id = m.message_id().unwrap_or_default().to_owned();
                let group = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                    .cloned()
                    .unwrap_or_else(|| message_id.clone());
                Some(Received {
                    group,
                    message_id,
                    receipt,
                    receive_count,
                    job,
                })
            })
            .collect())
    }

    pub async fn delete(&self, receipt: &str) -> Result<()> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| api_error("DeleteMessage", &self.url, e))?;
        Ok(())
    }

    /// Hides the message for `visibility` from now: a heartbeat while working, a back-off after
    /// a retryable failure, or zero to hand it to another worker at once.
    pub async fn set_visibility(&self, receipt: &str, visibility: Duration) -> Result<()> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(secs(visibility))
            .send()
            .await
            .map_err(|e| api_error("ChangeMessageVisibility", &self.url, e))?;
        Ok(())
    }
}

/// A queue's messages by state (SQS's approximate counts).
#[derive(Debug, Clone, Copy, Default)]
pub struct Depth {
    /// Waiting to be received.
    pub visible: u64,
    /// Received and not yet deleted: jobs being worked on, or back-offs.
    pub in_flight: u64,
    /// Sent with a delay that has not run out.
    pub delayed: u64,
}

impl Depth {
    pub fn total(&self) -> u64 {
        self.visible + self.in_flight + self.delayed
    }
}

async fn count(client: &aws_sdk_sqs::Client, url: &str) -> Result<Depth> {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .map_err(|e| api_error("GetQueueAttributes", url, e))?;
    let value = |name: QueueAttributeName| {
        out.attributes()
            .and_then(|values| values.get(&name)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Depth {
        visible: value(QueueAttributeName::ApproximateNumberOfMessages),
        in_flight: value(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        delayed: value(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    })
}

impl Queue {
    /// How many jobs wait in the dead-letter queue that the queue's redrive policy names: jobs
    /// that failed `maxReceiveCount` times or could not be read. `None` when there is no
    /// redrive policy.
    pub async fn dead_letters(&self) -> Result<Option<u64>> {
        let Some(url) = self.dead_letter_url().await? else {
            return Ok(None);
        };
        Ok(Some(count(&self.client, url).await?.total()))
    }

    /// The queue's jobs by state, as SQS approximates them.
    pub async fn depth(&self) -> Result<Depth> {
        count(&self.client, &self.url).await
    }

    /// How many receives the redrive policy allows before SQS moves a job to the dead-letter
    /// queue; `None` without a redrive policy.
    pub async fn max_receives(&self) -> Result<Option<u32>> {
        let Some(policy) = self.redrive_policy().await? else {
            return Ok(None);
        };
        // CloudFormation and the console write the number as a string, the API as a number.
        let count = &policy["maxReceiveCount"];
        Ok(count
            .as_u64()
            .or_else(|| count.as_str()?.parse().ok())
            .map(|n| n.min(u64::from(u32::MAX)) as u32))
    }

    async fn redrive_policy(&self) -> Result<Option<serde_json::Value>> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| api_error("GetQueueAttributes", &self.url, e))?;
        let Some(policy) = out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
        else {
            return Ok(None);
        };
        serde_json::from_str(policy)
            .map(Some)
            .map_err(|_| self.unreadable_policy("JSON"))
    }

    fn unreadable_policy(&self, what: &str) -> Error {
        Error::Api {
            operation: "GetQueueAttributes",
            queue: self.url.clone(),
            code: "UnreadableRedrivePolicy".into(),
            message: format!("the redrive policy has no {what}"),
        }
    }

    async fn dead_letter_url(&self) -> Result<Option<&str>> {
        if let Some(url) = self.dead_letter_url.get() {
            return Ok(Some(url));
        }
        let Some(arn) = self.redrive_policy().await? else {
            return Ok(None);
        };
        let unreadable = |what: &str| self.unreadable_policy(what);
        // arn:aws:sqs:<region>:<account>:<name>
        let mut parts = arn
            .get("deadLetterTargetArn")
            .and_then(|a| a.as_str())
            .ok_or_else(|| unreadable("deadLetterTargetArn"))?
            .rsplitn(3, ':');
        let (Some(name), Some(account)) = (parts.next(), parts.next()) else {
            return Err(unreadable("queue ARN"));
        };
        let out = self
            .client
            .get_queue_url()
            .queue_name(name)
            .queue_owner_aws_account_id(account)
            .send()
            .await
            .map_err(|e| api_error("GetQueueUrl", name, e))?;
        let url = out.queue_url().ok_or_else(|| unreadable("queue URL"))?;
        Ok(Some(self.dead_letter_url.get_or_init(|| url.to_owned())))
    }
}

/// SQS visibility is whole seconds, at most 12 hours.
fn secs(d: Duration) -> i32 {
    d.as_secs().min(12 * 3600) as i32
}
