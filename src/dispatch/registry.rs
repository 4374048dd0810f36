//! Which previews are active and which wait for a place: one tag per preview on the preview
//! cluster, `fleetsync:pr:<repo>:<number>` = `<state> <since> <pushed> <head> <ref>`. ECS holds
//! it, so every receiver reads the same budget and a restart loses nothing; nothing else is kept.
//!
//! Receivers may admit two PRs at the same moment: each writes its entry, reads the registry
//! back, and keeps its place only if it is among the `maxActive` first in (since, number)
//! order, which every receiver computes alike. The later one waits.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::ecs::{self, Ecs};

const KEY_PREFIX: &str = "fleetsync:pr:";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Active,
    Waiting,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub number: u64,
    pub state: State,
    /// When it became active, or started waiting (Unix seconds): the order of the budget.
    pub since: u64,
    /// The PR's last push seen (Unix seconds): idle time counts from it.
    pub pushed: u64,
    pub head: String,
    /// The ref its head is fetched by.
    pub fetch_ref: String,
}

impl Entry {
    fn key(repo: &str, number: u64) -> String {
        format!("{KEY_PREFIX}{repo}:{number}")
    }

    fn value(&self) -> String {
        let state = match self.state {
            State::Active => "active",
            State::Waiting => "waiting",
        };
        format!(
            "{state} {} {} {} {}",
            self.since, self.pushed, self.head, self.fetch_ref
        )
    }

    fn parse(number: u64, value: &str) -> Option<Entry> {
        let mut parts = value.split(' ');
        let state = match parts.next()? {
            "active" => State::Active,
            "waiting" => State::Waiting,
            _ => return None,
        };
        Some(Entry {
            number,
            state,
            since: parts.next()?.parse().ok()?,
            pushed: parts.next()?.parse().ok()?,
            head: parts.next()?.to_owned(),
            fetch_ref: parts.next()?.to_owned(),
        })
    }
}

/// The entries of `repo` among a cluster's tags, oldest first.
pub fn entries(repo: &str, tags: &HashMap<String, String>) -> Vec<Entry> {
    let prefix = format!("{KEY_PREFIX}{repo}:");
    let mut found: Vec<Entry> = tags
        .iter()
        .filter_map(|(k, v)| Entry::parse(k.strip_prefix(&prefix)?.parse().ok()?, v))
        .collect();
    found.sort_by_key(|e| (e.since, e.number));
    found
}

/// Whether a cluster's tags hold entries of `repo`.
pub fn holds(repo: &str, tags: &HashMap<String, String>) -> bool {
    !entries(repo, tags).is_empty()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The budget of one repo's previews on one cluster.
pub struct Registry<'a> {
    pub ecs: &'a Ecs,
    pub repo: &'a str,
    pub cluster: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ecs(#[from] ecs::Error),
    #[error("the preview cluster `{0}` does not exist; create it (previews never create clusters)")]
    NoCluster(String),
    #[error(
        "{0} previews are active or waiting on cluster `{1}`, as many as its tags can record; close a pull request first"
    )]
    Full(usize, String),
}

/// Where a PR stands after [`Registry::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Active,
    /// Waiting, with how many wait before it.
    Waiting {
        ahead: usize,
    },
}

/// Tags ECS allows on one resource (`aws:` ones aside).
const ECS_TAG_LIMIT: usize = 50;

/// Whether ECS takes `text` in a tag value: letters, digits, spaces and `_ . : / = + - @`, at
/// most 256 characters with the rest of an entry.
pub fn recordable(text: &str) -> bool {
    text.len() <= 160
        && text
            .chars()
            .all(|c| c.is_alphanumeric() || "_.:/=+-@".contains(c))
}

/// Actives in budget order.
fn actives(entries: &[Entry]) -> Vec<&Entry> {
    let mut actives: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.state == State::Active)
        .collect();
    actives.sort_by_key(|e| (e.since, e.number));
    actives
}

impl Registry<'_> {
    /// The cluster's ARN, this repo's entries (oldest first), and how many tags it has in all.
    pub async fn read(&self) -> Result<(String, Vec<Entry>, usize), Error> {
        let cluster = self
            .ecs
            .cluster_tags(self.cluster)
            .await?
            .ok_or_else(|| Error::NoCluster(self.cluster.to_owned()))?;
        let total = cluster
            .tags
            .keys()
            .filter(|k| !k.starts_with("aws:"))
            .count();
        Ok((cluster.arn, entries(self.repo, &cluster.tags), total))
    }

    async fn write(&self, arn: &str, entry: &Entry) -> Result<(), Error> {
        let tag = (Entry::key(self.repo, entry.number), entry.value());
        self.ecs.tag_resource(arn, &[tag]).await?;
        Ok(())
    }

    /// Records a push of `head` to PR `number`: active when it already was or a place is free
    /// within `max_active`, waiting otherwise (its place in the line kept).
    pub async fn admit(
        &self,
        number: u64,
        head: &str,
        fetch_ref: &str,
        max_active: u32,
    ) -> Result<Admission, Error> {
        let (arn, found, total) = self.read().await?;
        let now = now();
        let own = found.iter().find(|e| e.number == number);
        if own.is_none()
            && (found.len() >= crate::resolve::preview::MAX_PREVIEWS as usize
                || total >= ECS_TAG_LIMIT)
        {
            return Err(Error::Full(found.len(), self.cluster.to_owned()));
        }
        let mut entry = Entry {
            number,
            state: State::Active,
            since: own.map_or(now, |e| e.since),
            pushed: now,
            head: head.to_owned(),
            fetch_ref: fetch_ref.to_owned(),
        };
        if own.is_some_and(|e| e.state == State::Active) {
            self.write(&arn, &entry).await?;
            return Ok(Admission::Active);
        }
        let active = found
            .iter()
            .filter(|e| e.state == State::Active && e.number != number)
            .count();
        // Waiting ones older than this PR go first.
        let older_waiting = found
            .iter()
            .filter(|e| e.state == State::Waiting && e.number != number)
            .filter(|e| (e.since, e.number) < (entry.since, number))
            .count();
        let waiting_since = entry.since;
        if active + older_waiting >= max_active as usize {
            entry.state = State::Waiting;
            self.write(&arn, &entry).await?;
            return Ok(Admission::Waiting {
                ahead: older_waiting,
            });
        }
        entry.since = now; // active from now on: its place in the active order
        self.write(&arn, &entry).await?;
        // Another receiver may have admitted another PR meanwhile: the first `max_active` in
        // order keep their place; a later one goes back to its place in the line.
        let (_, now_found, _) = self.read().await?;
        let place = actives(&now_found).iter().position(|e| e.number == number);
        if place.is_some_and(|p| p >= max_active as usize) {
            entry.state = State::Waiting;
            entry.since = waiting_since;
            self.write(&arn, &entry).await?;
            let ahead = now_found
                .iter()
                .filter(|e| {
                    e.state == State::Waiting && (e.since, e.number) < (entry.since, number)
                })
                .count();
            return Ok(Admission::Waiting { ahead });
        }
        Ok(Admission::Active)
    }

    /// Forgets PR `number`; a PR already forgotten is fine.
    pub async fn release(&self, number: u64) -> Result<(), Error> {
        let cluster = self.ecs.cluster_tags(self.cluster).await?;
        let Some(cluster) = cluster else {
            return Ok(());
        };
        let key = Entry::key(self.repo, number);
        if cluster.tags.contains_key(&key) {
            self.ecs
                .untag_resource(&cluster.arn, &[key.as_str()])
                .await?;
        }
        Ok(())
    }

    /// Marks the oldest waiting PRs active while places are free, and returns them. Like
    /// [`Registry::admit`], it reads the registry back: a PR another receiver admitted
    /// meanwhile keeps its place, and one promoted past `max_active` goes back to waiting.
    pub async fn promote(&self, max_active: u32) -> Result<Vec<Entry>, Error> {
        let (arn, found, _) = self.read().await?;
        let free = (max_active as usize).saturating_sub(actives(&found).len());
        let now = now();
        let mut promoted = Vec::new();
        for waiting in found
            .into_iter()
            .filter(|e| e.state == State::Waiting)
            .take(free)
        {
            let entry = Entry {
                state: State::Active,
                since: now,
                ..waiting.clone()
            };
            self.write(&arn, &entry).await?;
            promoted.push((entry, waiting));
        }
        if promoted.is_empty() {
            return Ok(Vec::new());
        }
        let (_, now_found, _) = self.read().await?;
        let within: Vec<u64> = actives(&now_found)
            .iter()
            .take(max_active as usize)
            .map(|e| e.number)
            .collect();
        let mut kept = Vec::new();
        for (entry, waiting) in promoted {
            if within.contains(&entry.number) {
                kept.push(entry);
            } else {
                self.write(&arn, &waiting).await?;
            }
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_as_written_oldest_first_and_ignore_other_repos() {
        let entry = |number, since| Entry {
            number,
            state: State::Waiting,
            since,
            pushed: since + 5,
            head: "a".repeat(40),
            fetch_ref: format!("refs/pull/{number}/head"),
        };
        let tags: HashMap<String, String> = [entry(7, 20), entry(3, 10)]
            .iter()
            .map(|e| (Entry::key("platform", e.number), e.value()))
            .chain([
                (Entry::key("other", 9), entry(9, 1).value()),
                ("team".into(), "payments".into()),
                (Entry::key("platform", 4), "garbage".into()),
            ])
            .collect();
        assert_eq!(entries("platform", &tags), vec![entry(3, 10), entry(7, 20)]);
        assert!(holds("other", &tags));
        assert!(!holds("third", &tags));
    }

    #[test]
    fn only_refs_ecs_takes_in_a_tag_value_are_recorded() {
        assert!(recordable("refs/pull/12/head"));
        assert!(recordable("refs/heads/feature/login-v2"));
        assert!(!recordable("refs/heads/fix#12"));
        assert!(!recordable("refs/heads/it's"));
        assert!(!recordable(&format!("refs/heads/{}", "a".repeat(200))));
    }
}
