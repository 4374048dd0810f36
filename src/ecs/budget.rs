//! One worker's share of the account's ECS API quota. ECS throttles per account and Region with
//! token buckets, RegisterTaskDefinition the tightest (about one a second sustained): a burst of
//! a hundred jobs must queue here, not spend the SDK's retries on ThrottlingExceptions that
//! also slow down every other ECS client of the account.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Calls per second and how many may go at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    /// `per_second`, with a burst of five seconds' worth (at least one call).
    pub fn per_second(per_second: f64) -> Self {
        Rate {
            per_second,
            burst: (per_second * 5.0).max(1.0),
        }
    }
}

/// What a call spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// RegisterTaskDefinition or DeregisterTaskDefinition (one ECS quota): one from each
    /// bucket.
    Register,
    /// Any other ECS call.
    Call,
}

#[derive(Debug)]
pub struct Budget {
    calls: Option<Mutex<Bucket>>,
    registers: Option<Mutex<Bucket>>,
}

impl Budget {
    /// No limit: for one-shot commands such as `plan`, whose few reads need no pacing.
    pub fn unlimited() -> Self {
        Budget {
            calls: None,
            registers: None,
        }
    }

    pub fn new(calls: Rate, registers: Rate) -> Self {
        Budget {
            calls: Some(Mutex::new(Bucket::new(calls))),
            registers: Some(Mutex::new(Bucket::new(registers))),
        }
    }

    /// Waits until the call may be made. Each caller reserves its token before it sleeps, so
    /// callers go in arrival order and none waits behind a later one.
    pub async fn spend(&self, spend: Spend) {
        let buckets = match spend {
            Spend::Register => [self.registers.as_ref(), self.calls.as_ref()],
            Spend::Call => [self.calls.as_ref(), None],
        };
        let now = Instant::now();
        let wait = buckets
            .into_iter()
            .flatten()
            .map(|b| b.lock().unwrap_or_else(|p| p.into_inner()).reserve(now))
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[derive(Debug)]
struct Bucket {
    rate: Rate,
    /// Below zero when callers wait: each owes the time its token takes to refill.
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: Rate) -> Self {
        Bucket {
            rate,
            tokens: rate.burst,
            at: Instant::now(),
        }
    }

    /// Takes a token now and answers how long until it exists.
    fn reserve(&mut self, now: Instant) -> Duration {
        // A caller that read the clock before a later one took the lock refills nothing.
        let now = now.max(self.at);
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The waits `n` callers arriving at once are given, in seconds.
    fn waits(bucket: &mut Bucket, at: Instant, n: usize) -> Vec<f64> {
        (0..n).map(|_| bucket.reserve(at).as_secs_f64()).collect()
    }

    #[test]
    fn a_burst_of_registrations_goes_at_the_sustained_rate_once_the_burst_is_spent() {
        let mut registers = Bucket::new(Rate::per_second(1.0));
        let t0 = registers.at;
        assert_eq!(
            waits(&mut registers, t0, 8),
            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0]
        );
        assert_eq!(
            waits(&mut registers, t0 + Duration::from_secs(10), 2),
            [0.0, 0.0],
            "ten seconds later the debt is paid and tokens refilled"
        );
    }

    #[test]
    fn a_bucket_never_holds_more_than_its_burst() {
        let mut calls = Bucket::new(Rate {
            per_second: 2.0,
            burst: 2.0,
        });
        let later = calls.at + Duration::from_secs(3600);
        assert_eq!(waits(&mut calls, later, 4), [0.0, 0.0, 0.5, 1.0]);
    }

    #[tokio::test]
    async fn a_registration_spends_from_both_buckets() {
        let budget = Budget::new(
            Rate {
                per_second: 1000.0,
                burst: 1.0,
            },
            Rate::per_second(1.0),
        );
        budget.spend(Spend::Register).await;
        let calls = budget.calls.as_ref().unwrap().lock().unwrap().tokens;
        let registers = budget.registers.as_ref().unwrap().lock().unwrap().tokens;
        assert!(calls < 0.5 && registers < 4.5, "{calls} {registers}");
    }
}
