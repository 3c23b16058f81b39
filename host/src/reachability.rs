//! Whether the control plane answers, as the daemon's triggers (the periodic resync and
//! the change feed) see it, and the log of its outages: one `WARN` when it stops
//! answering (with the error and when the next attempt is), nothing per retry while it
//! stays away but a reminder every [`REMINDER_EVERY`] with the count of failed attempts,
//! and one `INFO` saying how long it was down when it answers again.
//!
//! Both triggers retry with [`retry_delay`] (exponential, capped at [`RETRY_CAP`]), so an
//! outage costs a few requests a minute, not one every two seconds. While an outage is
//! known, a reconcile that fails only because the control plane is unreachable says so in
//! its instance's conditions and logs at `debug` (see `Controller::reconcile`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest wait between attempts to reach an unreachable control plane.
pub const RETRY_CAP: Duration = Duration::from_secs(10);

/// How often a continuing outage is mentioned again.
pub const REMINDER_EVERY: Duration = Duration::from_secs(5 * 60);

/// The wait after the `failures`-th consecutive failure: 500 ms, 1 s, 2 s, … up to
/// [`RETRY_CAP`].
pub fn retry_delay(failures: u32) -> Duration {
    Duration::from_millis(250 * 2u64.saturating_pow(failures.min(6))).min(RETRY_CAP)
}

/// The control plane's reachability, shared by everything that talks to it.
#[derive(Debug, Default)]
pub struct Reachability {
    outage: Mutex<Option<Outage>>,
}

#[derive(Debug, Clone, Copy)]
struct Outage {
    since: Instant,
    failed_attempts: u64,
    last_said: Instant,
}

impl Reachability {
    /// An attempt to reach the control plane (`what`: the listing, the change feed)
    /// failed with `error`; the next is in `retry_in`. Logs only when this starts an
    /// outage, or as a reminder every [`REMINDER_EVERY`].
    pub fn failed(&self, what: &str, error: &str, retry_in: Duration) {
        let now = Instant::now();
        let mut outage = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        match outage.as_mut() {
            None => {
                tracing::warn!(
                    %error,
                    retry_in = ?retry_in,
                    "control plane unreachable ({what}); retrying with backoff and logging nothing more until it answers, except a reminder every {}",
                    humantime::format_duration(REMINDER_EVERY)
                );
                *outage = Some(Outage {
                    since: now,
                    failed_attempts: 1,
                    last_said: now,
                });
            }
            Some(o) => {
                o.failed_attempts += 1;
                if now.duration_since(o.last_said) >= REMINDER_EVERY {
                    o.last_said = now;
                    tracing::warn!(
                        %error,
                        failed_attempts = o.failed_attempts,
                        down_for = %rounded(now.duration_since(o.since)),
                        retry_in = ?retry_in,
                        "control plane still unreachable"
                    );
                } else {
                    tracing::debug!(%error, what, retry_in = ?retry_in, "control plane still unreachable");
                }
            }
        }
    }

    /// The control plane answered: ends an outage, saying how long it was down.
    pub fn answered(&self) {
        let ended = self.outage.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(o) = ended {
            tracing::info!(
                down_for = %rounded(o.since.elapsed()),
                failed_attempts = o.failed_attempts,
                "control plane reachable again"
            );
        }
    }

    /// The outage going on, if any: how long the control plane has not answered and
    /// how many attempts failed.
    pub fn outage(&self) -> Option<(Duration, u64)> {
        self.outage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|o| (o.since.elapsed(), o.failed_attempts))
    }

    /// What `/readyz` adds while an outage goes on: `degraded: ...`.
    pub fn degraded(&self) -> Option<String> {
        self.outage().map(|(down_for, failed)| {
            format!(
                "degraded: the control plane has not answered for {} ({failed} failed attempts); reconciles wait for it, nothing is applied meanwhile",
                rounded(down_for)
            )
        })
    }

    /// Whether an outage is going on.
    pub fn is_down(&self) -> bool {
        self.outage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

/// `d` to the tenth of a second, as humans read it (`12s 300ms`).
fn rounded(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64 / 100 * 100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_from_half_a_second_to_the_cap() {
        let delays: Vec<u64> = (1..=7).map(|n| retry_delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(retry_delay(u32::MAX), RETRY_CAP);
    }

    #[test]
    fn an_outage_starts_at_the_first_failure_and_ends_at_the_first_answer() {
        let r = Reachability::default();
        assert!(!r.is_down());
        r.answered();
        r.failed("listing", "connection refused", Duration::from_secs(1));
        r.failed("change feed", "connection refused", Duration::from_secs(1));
        assert!(r.is_down());
        assert_eq!(r.outage.lock().unwrap().unwrap().failed_attempts, 2);
        r.answered();
        assert!(!r.is_down());
    }

    #[test]
    fn degraded_says_so_only_during_an_outage() {
        let r = Reachability::default();
        assert_eq!(r.degraded(), None);
        r.failed("listing", "connection refused", Duration::from_secs(1));
        let text = r.degraded().unwrap();
        assert!(text.starts_with("degraded: "), "{text}");
        assert!(text.contains("1 failed attempts"), "{text}");
        r.answered();
        assert_eq!(r.degraded(), None);
    }
}
