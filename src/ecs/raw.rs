//! Sends an operation's input exactly as the user wrote it.
//!
//! ECS speaks awsJson1.1: the body of RegisterTaskDefinition, CreateService and UpdateService is
//! the input JSON itself, the same document `aws ecs ... --cli-input-json` takes. Replacing the
//! serialised body before signing sends the user's document verbatim, so every field ECS knows
//! (including ones newer than this SDK) round-trips, without a hand-written mapping of hundreds
//! of fields that would silently drop the ones it forgot. Some answers are read the same way.

use std::sync::{Arc, Mutex};

use aws_sdk_ecs::config::interceptors::{
    AfterDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextMut,
};
use aws_sdk_ecs::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ecs::error::BoxError;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use serde_json::Value;

#[derive(Debug)]
pub(super) struct JsonBody(pub Bytes);

impl Intercept for JsonBody {
    fn name(&self) -> &'static str {
        "fleetsync::ecs::JsonBody"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request_mut();
        *request.body_mut() = SdkBody::from(self.0.clone());
        request
            .headers_mut()
            .insert("content-length", self.0.len().to_string());
        Ok(())
    }
}

/// Keeps an answer's body as ECS sent it, for the fields this SDK's types would make us map by
/// hand (a service's settings, a task definition to register again).
#[derive(Debug, Default, Clone)]
pub(super) struct Answer(Arc<Mutex<Option<Bytes>>>);

impl Answer {
    /// The body as JSON, once the call succeeded.
    pub(super) fn json(&self) -> Option<Value> {
        let body = self.0.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        serde_json::from_slice(&body).ok()
    }
}

impl Intercept for Answer {
    fn name(&self) -> &'static str {
        "fleetsync::ecs::Answer"
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // A non-streaming answer is read into memory before it is deserialised.
        if let Some(body) = context.response().body().bytes() {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Bytes::copy_from_slice(body));
        }
        Ok(())
    }
}
