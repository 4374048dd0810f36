//! Sends an operation's input exactly as the user wrote it.
//!
//! ECS speaks awsJson1.1: the body of RegisterTaskDefinition, CreateService and UpdateService is
//! the input JSON itself, the same document `aws ecs ... --cli-input-json` takes. Replacing the
//! serialised body before signing sends the user's document verbatim, so every field ECS knows
//! (including ones newer than this SDK) round-trips, without a hand-written mapping of hundreds
//! of fields that would silently drop the ones it forgot.

use aws_sdk_ecs::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_ecs::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ecs::error::BoxError;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;

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
