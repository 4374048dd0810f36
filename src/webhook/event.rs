//! The one event every provider is normalised into; nothing provider-specific leaves `webhook`.

/// A push to a branch or tag, as the Git host reported it. It is a trigger, not the truth:
/// fleetsync always fetches and reads the branch head itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    /// Provider's delivery id, for logs and replay detection.
    pub delivery: String,
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
