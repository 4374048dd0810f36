//! Integration tests, one binary so the AWS SDK is linked once.

mod api;
mod binary;
mod cli;
mod deploy;
mod e2e;
mod feedback;
mod harness;
mod operations;
mod preflight;
mod previews;
mod schema;
mod tidy;
mod webhooks;
