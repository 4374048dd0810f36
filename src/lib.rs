//! fleetsync: a Git push to a config repo becomes a running change on ECS.
//!
//! ```text
//!  serve:  webhook ──► dispatch ──► repo ──► resolve ──► queue (SQS FIFO)
//!                                                          │
//!  worker:                     ecs ◄── preflight ◄── sync ◄──┘
//!
//!  validate / render:  repo ──► resolve          (no network, no writes)
//!  plan:               repo ──► resolve ──► preflight, ecs   (reads only)
//! ```
//!
//! - [`webhook`]: Git host deliveries, verified before parsing, normalised to one push event.
//! - [`dispatch`]: a trigger (a push, reconcile, an API sync) → fetch → resolve every environment
//!   on the branch → jobs; one file per trigger.
//! - [`repo`]: bare mirrors fetched with git2, read at a commit without a checkout.
//! - [`resolve`]: App-of-Apps manifests at a commit → desired state. Pure.
//! - [`queue`]: SQS jobs; [`queue::job::SyncJob`] is the only type on the wire.
//! - [`sync`]: the worker: apply a job, wait for the rollout, roll back on failure.
//! - [`preflight`]: what an app references exists and is usable, checked before it deploys.
//! - [`ecs`]: the thin ECS client layer.
//! - [`ingress`]: a preview app's target group and listener rule on an ALB (`previews.ingress`).
//! - [`api`]: `POST /api/v1/sync`, a sync asked for by a person, behind hashed bearer tokens.
//! - [`feedback`]: commit statuses on the Git host, queued by receivers and workers, posted by
//!   workers.
//! - [`metrics`]: `GET /metrics` of `serve` and `worker`; each part owns what it counts.
//! - [`config`], [`cli`], [`shutdown`]: the edges.

pub mod api;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod ecs;
pub mod feedback;
pub mod ingress;
pub mod metrics;
pub mod preflight;
pub mod queue;
pub mod repo;
pub mod resolve;
pub mod shutdown;
pub mod sync;
pub mod webhook;
