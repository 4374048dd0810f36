//! The push trigger: a verified push to a branch, fetched, resolved and enqueued, then the
//! same for every environment branch that reads the branch pushed (`source:`). Pushes to one
//! branch are serialised and coalesced.

use super::*;
use crate::config::Event;
use crate::feedback::About;
use crate::queue::StatusJob;

/// How long a push waits before fetching again, each time the fetch did not bring the commit
/// it names: a lagging mirror usually catches up within seconds.
const LAGGING_FETCH_RETRIES: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(250),
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(3),
];

/// How long an enqueued head answers later pushes of the same head without enqueuing again.
const SAME_HEAD_WINDOW: Duration = Duration::from_secs(60);

impl Dispatcher {
    /// Turns a push to `branch` into jobs.
    ///
    /// Pushes to one branch are handled one at a time, so an older head can never be enqueued
    /// after a newer one by this receiver. A push that waited while another fetch of its branch
    /// started after it arrived is already covered by that fetch (its commit was in the branch
    /// before its webhook was sent), so it gets that answer: a burst of pushes costs one fetch
    /// for the first and one for all the rest.
    ///
    /// The environment branches of any repo whose apps are read from the branch pushed
    /// (`source:`) are resolved again too, each as if it had been pushed.
    pub async fn push(
        &self,
        repo: &WatchedRepo,
        branch: &str,
        (before, after): (&str, &str),
        origin: Origin<'_>,
    ) -> Result<Pushed, Error> {
        let delivery = origin.0;
        if !repo::is_valid_branch(branch) {
            return Ok(Pushed::alone(Outcome::Ignored {
                reason: format!("`{branch}` is not a valid branch name"),
            }));
        }
        let moved = Moved::Branch { before };
        let mut own = self.push_branch(repo, branch, moved, origin).await?;
        let mut retries = LAGGING_FETCH_RETRIES.iter();
        while !self.has_commit(repo, branch, after).await? {
            let Some(wait) = retries.next() else {
                return Err(Error::Lagging {
                    branch: branch.to_owned(),
                    after: after.to_owned(),
                });
            };
            tokio::time::sleep(*wait).await;
            own = self.push_branch(repo, branch, moved, origin).await?;
        }
        let about_own = !matches!(own, Outcome::Ignored { .. });
        // The head fetched: readers must read it or a later one.
        let head = match &own {
            Outcome::Enqueued { commit, .. } | Outcome::Invalid { commit, .. } => commit.clone(),
            Outcome::Ignored { .. } => {
                let mirror = repo.mirror.clone();
                let b = branch.to_owned();
                tokio::task::spawn_blocking(move || mirror.local()?.branch_head(&b))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?
                    .map_err(Error::Fetch)?
                    .map(|h| h.to_string())
                    .unwrap_or_default()
            }
        };
        let state = self.branch_state(&repo.config.name, branch);
        let mut sent = state.readers_sent.lock().await;
        if let Some((done, answer)) = &*sent
            && !head.is_empty()
            && *done == head
        {
            return Ok(Pushed::alone(if about_own {
                own
            } else {
                answer.clone().unwrap_or(own)
            }));
        }
        // Until this pass succeeds no head counts as sent: a pass that fails half-way may
        // have sent some readers a later head than the one remembered.
        *sent = None;
        let (readers, mut complete) = self.readers_of(&repo.config.name, branch).await;
        if readers.is_empty() {
            if complete {
                *sent = Some((head, None));
            }
            return Ok(Pushed::alone(own));
        }
        let mut outcome = own;
        let moved = Moved::Source {
            repo: &repo.config.name,
            branch,
            before,
        };
        let mut unresolved = Vec::new();
        for (reader, reader_branch) in readers {
            // One reader that cannot be read must not fail the push, nor every other push that
            // it reads: it is named in the answer and left to reconcile.
            match self
                .push_branch(reader, &reader_branch, moved, origin)
                .await
            {
                Ok(theirs) => outcome = combine(outcome, theirs),
                Err(e) => {
                    warn!(message = "Cannot resolve an environment branch that reads the branch pushed; reconcile will.", %delivery, repo = %reader.config.name, branch = %reader_branch, error = %e);
                    unresolved.push(format!("{}/{reader_branch}", reader.config.name));
                    complete = false;
                }
            }
        }
        if !about_own {
            // The answer names the branch pushed, at the head its readers read.
            if let Outcome::Enqueued {
                branch: b, commit, ..
            }
            | Outcome::Invalid {
                branch: b, commit, ..
            } = &mut outcome
            {
                branch.clone_into(b);
                commit.clone_from(&head);
            }
        }
        if complete {
            *sent = Some((head, (!about_own).then(|| outcome.clone())));
        }
        Ok(Pushed {
            outcome,
            unresolved,
        })
    }

    /// Whether the mirror has the commit a push to `branch` names. Anything that is not a
    /// commit id, or a branch gone since, is taken as had: there is nothing to wait for.
    pub(super) async fn has_commit(
        &self,
        repo: &WatchedRepo,
        branch: &str,
        commit: &str,
    ) -> Result<bool, Error> {
        let Ok(oid) = git2::Oid::from_str(commit) else {
            return Ok(true);
        };
        if commit.len() != 40 || oid.is_zero() {
            return Ok(true);
        }
        let (mirror, branch) = (repo.mirror.clone(), branch.to_owned());
        tokio::task::spawn_blocking(move || {
            let local = mirror.local()?;
            Ok(local.branch_head(&branch)?.is_none() || local.contains(oid))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(Error::Fetch)
    }

    /// [`Dispatcher::push`] for one branch, which moved itself or whose environments read a
    /// branch that moved. In the second case only those environments are enqueued.
    pub(super) async fn push_branch(
        &self,
        repo: &WatchedRepo,
        branch: &str,
        moved: Moved<'_>,
        origin: Origin<'_>,
    ) -> Result<Outcome, Error> {
        let state = self.branch_state(&repo.config.name, branch);
        let ticket = state.arrivals.fetch_add(1, Ordering::SeqCst) + 1;
        let mut last = state.last.lock().await;
        if let Some(last) = &*last
            && ticket <= last.covered
        {
            return Ok(last.outcome.clone());
        }
        let covered = match moved {
            Moved::Branch { .. } => state.arrivals.load(Ordering::SeqCst),
            Moved::Source { .. } => 0,
        };
        let after_failure = state.failed.load(Ordering::SeqCst);
        match self
            .push_now(repo, branch, moved, origin, last.as_ref(), after_failure)
            .await
        {
            Ok((outcome, resolved, enqueued)) => {
                state.failed.store(false, Ordering::SeqCst);
                *last = Some(LastAnswer {
                    covered,
                    outcome: outcome.clone(),
                    resolved,
                    at: Instant::now(),
                    enqueued,
                });
                Ok(outcome)
            }
            Err(e) => {
                // Failures are not shared: each waiting push tries for itself.
                *last = None;
                state.failed.store(true, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    pub(super) async fn push_now(
        &self,
        repo: &WatchedRepo,
        branch: &str,
        moved: Moved<'_>,
        (delivery, trigger): Origin<'_>,
        last: Option<&LastAnswer>,
        after_failure: bool,
    ) -> Result<(Outcome, Option<Resolution>, Specs), Error> {
        let plan = self.plan(repo, branch).await?;

        let (commit, head, bindings, results) = match plan {
            Plan::Ignored(reason) => {
                return Ok((Outcome::Ignored { reason }, None, Specs::new()));
            }
            Plan::Resolved {
                commit,
                head,
                bindings,
                results,
            } => (commit, head, bindings, results),
        };
        let trigger = trigger.clone().about_commit(&head.author, &head.summary);
        let sources = results
            .iter()
            .filter_map(|r| r.result.as_ref().ok())
            .flat_map(|state| &state.sources)
            .map(|s| ((s.repo.clone(), s.reference.clone()), s.commit.clone()))
            .collect();
        let resolution = Resolution {
            head: commit.clone(),
            bindings,
            sources,
        };
        // The same heads enqueued moments ago (the rest of a burst): those jobs are durable in
        // SQS already. Past the window a redelivery enqueues again, e.g. after a queue purge.
        let same_head = last.is_some_and(|last| last.resolved.as_ref() == Some(&resolution));
        let resolved = Some(resolution.clone());
        if let Some(last) = last
            && same_head
            && last.covered > 0 // an answer about every environment of the branch
            && matches!(last.outcome, Outcome::Enqueued { .. })
            && last.at.elapsed() < SAME_HEAD_WINDOW
        {
            return Ok((last.outcome.clone(), resolved, last.enqueued.clone()));
        }
        // Past the window the same head is diffed again against its parent. The memory stands
        // for the parent only when this receiver resolved exactly what the push moved from:
        // had anything else moved in between (the branch, another repo read, the bindings),
        // the parent is resolved again.
        let continues = last
            .and_then(|last| last.resolved.as_ref())
            .is_some_and(|r| *r == resolution.parent(moved));
        let results = match moved {
            Moved::Branch { .. } => results,
            // Only the environments that read what moved; the others did not change.
            Moved::Source { repo, branch, .. } => results
                .into_iter()
                .filter(|r| r.reads.contains(&(repo.to_owned(), branch.to_owned())))
                .collect(),
        };
        // What this receiver enqueued for the push's parent, or else what the parent resolves
        // to: either way only what the push changed is sent. A fetch that found the branch
        // where the push started (a lagging mirror: fetched again below) changed nothing; a
        // receiver whose last push of the branch failed sends everything, in case no
        // redelivery of that push ever comes.
        let known = if after_failure {
            Specs::new()
        } else if resolution.parent(moved) == resolution {
            specs_of(&results)
        } else {
            match last {
                Some(last) if continues => last.enqueued.clone(),
                _ => self.baseline(repo, branch, &resolution, moved).await,
            }
        };
        let mut specs = known.clone();
        let mut jobs = Vec::new();
        let mut prunes = Vec::new();
        let mut unchanged = 0;
        let mut problems = Vec::new();
        for EnvironmentResult {
            environment,
            result,
            ..
        } in results
        {
            match result {
                Ok(state) => {
                    prunes.extend(prune_job(&repo.config.name, branch, delivery, &state));
                    let before = known.get(&state.environment);
                    let hashes = specs.entry(state.environment.clone()).or_default();
                    hashes.clear();
                    let index = dependency_index(&state.apps);
                    for app in state.apps {
                        hashes.insert(app.name.clone(), app.spec_hash.clone());
                        if before.and_then(|b| b.get(&app.name)) == Some(&app.spec_hash) {
                            unchanged += 1;
                        } else {
                            jobs.push(
                                SyncJob::new(&repo.config.name, branch, delivery, app)
                                    .with_dependencies(&index)
                                    .triggered_by(trigger.clone()),
                            );
                        }
                    }
                }
                Err(found) => problems.push(EnvironmentProblems {
                    environment,
                    problems: found.iter().map(Problem::to_string).collect(),
                }),
            }
        }
        count_fan_out(&mut jobs);
        let enqueued = self.queue.send(&jobs).await?;
        self.queue.send_prune(&prunes).await?;
        self.tell_pushed((&repo.config.name, &commit, delivery), &jobs, &problems)
            .await;
        info!(message = "Push enqueued.", event = "push_enqueued", repo = %repo.config.name, %branch, %commit, %delivery, trigger = trigger.kind.as_str(), actor = %trigger.actor, jobs = enqueued.len(), unchanged, prune = prunes.len(), invalid_environments = problems.len());
        let branch = branch.to_owned();
        let outcome = if problems.is_empty() {
            Outcome::Enqueued {
                branch,
                commit,
                jobs: enqueued,
                unchanged,
            }
        } else {
            Outcome::Invalid {
                branch,
                commit,
                problems,
                jobs: enqueued,
            }
        };
        Ok((outcome, resolved, specs))
    }
    /// What the push means on its commits: each job queued, and each environment that does
    /// not resolve failed with its first problem, so the author sees it without asking.
    async fn tell_pushed(
        &self,
        (repo, commit, delivery): (&str, &str, &str),
        jobs: &[SyncJob],
        problems: &[EnvironmentProblems],
    ) {
        let queued = jobs.iter().map(|job| {
            let app = &job.app;
            let at = (job.repo.as_str(), app.commit.as_str());
            let about = (app.environment.as_str(), Some(app.name.as_str()));
            self.teller.status(at, about, StatusState::Queued, "queued")
        });
        // One roll-up per environment the push fanned out to; its jobs carry the count.
        let mut rolled = std::collections::BTreeSet::new();
        let rollups = jobs.iter().filter(|job| job.fan_out > 1).filter_map(|job| {
            let app = &job.app;
            rolled.insert((&app.environment, &app.commit)).then(|| {
                let at = (job.repo.as_str(), app.commit.as_str());
                let description = format!("queued {} apps", job.fan_out);
                let about = (app.environment.as_str(), None);
                self.teller
                    .status(at, about, StatusState::Queued, &description)
            })
        });
        let queued: Vec<StatusJob> = queued.chain(rollups).collect();
        let mut news = Vec::new();
        let failed: Vec<_> = problems
            .iter()
            .filter_map(|p| {
                let first = p.problems.first()?;
                let environment = p.environment.as_deref().unwrap_or("root");
                let description = format!("does not resolve: {first}");
                let about = About {
                    repo,
                    commit,
                    environment,
                    app: None,
                };
                news.extend(self.teller.notifications(
                    (about, delivery),
                    (Event::Refused, "DoesNotResolve"),
                    &description,
                ));
                Some(self.teller.status(
                    (repo, commit),
                    (environment, None),
                    StatusState::Failure,
                    &description,
                ))
            })
            .collect();
        self.teller
            .tell(queued.into_iter().chain(failed).collect())
            .await;
        self.teller.notify(news).await;
    }
}

/// Tells each job how many apps of its environment (at its commit) the push enqueued.
fn count_fan_out(jobs: &mut [SyncJob]) {
    let mut counts: HashMap<(String, String), u32> = HashMap::new();
    for job in jobs.iter() {
        let key = (job.app.environment.clone(), job.app.commit.clone());
        *counts.entry(key).or_default() += 1;
    }
    for job in jobs {
        job.fan_out = counts[&(job.app.environment.clone(), job.app.commit.clone())];
    }
}

/// Two answers to one push as one: every job, every problem.
fn combine(a: Outcome, b: Outcome) -> Outcome {
    match (a, b) {
        (Outcome::Ignored { .. }, other) | (other, Outcome::Ignored { .. }) => other,
        (
            Outcome::Enqueued {
                branch,
                commit,
                mut jobs,
                unchanged,
            },
            Outcome::Enqueued {
                jobs: more,
                unchanged: also,
                ..
            },
        ) => {
            jobs.extend(more);
            Outcome::Enqueued {
                branch,
                commit,
                jobs,
                unchanged: unchanged + also,
            }
        }
        (a, b) => {
            let (branch, commit) = match &a {
                Outcome::Enqueued { branch, commit, .. }
                | Outcome::Invalid { branch, commit, .. } => (branch.clone(), commit.clone()),
                Outcome::Ignored { .. } => Default::default(),
            };
            let mut jobs = Vec::new();
            let mut problems = Vec::new();
            for o in [a, b] {
                match o {
                    Outcome::Enqueued { jobs: j, .. } => jobs.extend(j),
                    Outcome::Invalid {
                        jobs: j,
                        problems: p,
                        ..
                    } => {
                        jobs.extend(j);
                        problems.extend(p);
                    }
                    Outcome::Ignored { .. } => {}
                }
            }
            Outcome::Invalid {
                branch,
                commit,
                problems,
                jobs,
            }
        }
    }
}
