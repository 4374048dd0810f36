//! The events every provider is normalised into; nothing provider-specific leaves `webhook`.

/// A push to one ref, as the Git host reported it. It is a trigger, not the truth: fleetsync
/// always fetches and reads the branch head itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    /// Every URL the payload gives for the repository (clone, HTML, SSH).
    pub repository_urls: Vec<String>,
    /// Full ref name, e.g. `refs/heads/staging`.
    pub git_ref: String,
    pub before: String,
    pub after: String,
    pub created: bool,
    pub deleted: bool,
    pub forced: bool,
    pub sender: Option<String>,
}

impl PushEvent {
    /// The branch name, or `None` for tags and other refs.
    pub fn branch(&self) -> Option<&str> {
        self.git_ref.strip_prefix("refs/heads/")
    }
}

/// A pull (merge) request event: its shape is the preview trigger's.
pub use crate::dispatch::{PullRequest as PullRequestEvent, PullRequestKind};

/// What a verified delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Ping,
    /// Bitbucket may report several refs in one delivery; the others report one.
    Pushes(Vec<PushEvent>),
    PullRequest(Box<PullRequestEvent>),
    /// An event fleetsync does not act on, and why.
    Ignored(String),
}

pub const ZERO_SHA: &str = "0000000000000000000000000000000000000000";
