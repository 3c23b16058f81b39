//! The controller's work queue: deduplicated, delayed, backed-off, bounded reconciles of instance keys.
//!
//! Start reading at [`WorkQueue::run`], which takes a `reconcile` closure and an error policy
//! the way kube-rs's `Controller::run` does; [`WorkQueue::enqueue`] and
//! [`WorkQueue::enqueue_after`] are how triggers (resync, change feed, manual requests) feed it.
//!
//! Guarantees (`docs/design.md` §1):
//! - **deduplicated**: a key queued twice before a worker takes it is processed once; when a
//!   key is scheduled twice, the earliest deadline wins;
//! - **one worker per key**: a key enqueued while it is being processed is marked dirty and
//!   processed again once the current run has finished, never concurrently;
//! - **backoff**: consecutive failures of one key are retried after `base`, `2·base`, `4·base`,
//!   … up to `cap` (optionally jittered); a success resets the count;
//! - **bounded**: at most `max_concurrent_reconciles` reconciles run at once, each under a
//!   timeout that counts as a failure;
//! - **graceful shutdown**: [`WorkQueue::shutdown`] stops handing out keys and `run` waits for
//!   in-flight reconciles up to a grace period, then aborts them.
//!
//! Like kube-rs, a trigger that arrives for a key while it is backing off is *not* held back
//! by the backoff: new information (a configuration change) is worth acting on at once, and
//! the earliest deadline wins.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};

/// Errors from the work queue itself (not from reconciles: those go to the error policy).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The settings cannot work, e.g. a concurrency of zero would never run anything.
    #[error("invalid work queue settings: {0}")]
    InvalidSettings(&'static str),
    /// [`WorkQueue::run`] was called while another `run` of the same queue was active.
    #[error("the work queue is already running; call `run` once per queue")]
    AlreadyRunning,
    /// In-flight reconciles did not finish within the shutdown grace period and were aborted.
    #[error(
        "shutdown grace period of {grace:?} elapsed with {} reconcile(s) still running ({}); they were aborted",
        abandoned.len(),
        abandoned.join(", ")
    )]
    ShutdownTimedOut {
        /// The grace period that elapsed.
        grace: Duration,
        /// Keys whose reconcile was aborted, sorted.
        abandoned: Vec<String>,
    },
}

/// Result alias for work queue operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a reconcile failed; what the error policy receives.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError<E: std::error::Error + 'static> {
    /// The reconcile closure returned an error.
    #[error("reconcile failed")]
    Reconcile(#[source] E),
    /// The reconcile did not finish within the reconcile timeout and was aborted.
    #[error("reconcile timed out after {after:?}")]
    Timeout {
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The reconcile panicked; the runner caught it and carries on with other keys.
    #[error("reconcile panicked: {message}")]
    Panicked {
        /// The panic payload, if it was a string.
        message: String,
    },
}

/// What to do with a key after a reconcile: the kube-rs contract.
#[must_use = "an Action decides whether and when the key is reconciled again"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reconcile the key again after this delay (unless something triggers it sooner).
    Requeue(Duration),
    /// Do not requeue; the key runs again only when something enqueues it.
    AwaitChange,
}

impl Action {
    /// Reconcile the key again after `after`.
    pub fn requeue(after: Duration) -> Self {
        Action::Requeue(after)
    }

    /// Leave the key alone until a trigger enqueues it again.
    pub fn await_change() -> Self {
        Action::AwaitChange
    }
}

/// Per-key exponential backoff: `base · 2^(failures-1)`, capped at `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub base: Duration,
    /// Upper bound on the delay, however many failures.
    pub cap: Duration,
    /// Spread retries over `[delay/2, delay]` ("equal jitter") so that instances failing
    /// together (a control-plane outage) do not retry in lockstep.
    pub jitter: bool,
}

impl Backoff {
    /// The delay before retrying after `consecutive_failures` failures (1 = first failure).
    pub fn delay(&self, consecutive_failures: u32) -> Duration {
        let exponent = consecutive_failures.saturating_sub(1);
        let factor = 2u32.saturating_pow(exponent);
        let delay = self.base.saturating_mul(factor).min(self.cap);
        if self.jitter {
            let half = delay / 2;
            let spread = rand::rng().random_range(0..=half.as_nanos().min(u64::MAX as u128) as u64);
            half + Duration::from_nanos(spread)
        } else {
            delay
        }
    }
}

/// How the queue runs reconciles; built from the `[controller]` settings by `config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// At most this many reconciles run at once (must be at least 1).
    pub max_concurrent_reconciles: usize,
    /// A reconcile running longer than this is aborted and counts as a failure.
    pub reconcile_timeout: Duration,
    /// Retry delays for failing keys.
    pub backoff: Backoff,
    /// How long `run` waits for in-flight reconciles after [`WorkQueue::shutdown`].
    pub shutdown_grace: Duration,
}

/// What the error policy learns about a failing key besides the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Consecutive failures of this key, including this one (so at least 1).
    pub consecutive_failures: u32,
    /// The backoff delay the settings give for this many failures.
    pub backoff: Duration,
}

/// The default error policy: retry after the key's backoff delay.
pub fn requeue_with_backoff<E: std::error::Error>(
    _key: &str,
    _error: &ReconcileError<E>,
    failure: &Failure,
) -> Action {
    Action::requeue(failure.backoff)
}

/// A tokio work queue of instance keys. Cheap to clone; clones share one queue.
#[derive(Clone)]
pub struct WorkQueue {
    shared: Arc<Shared>,
}

impl fmt::Debug for WorkQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("WorkQueue")
            .field("settings", &self.shared.settings)
            .field("waiting", &state.len())
            .field("in_flight", &state.processing.len())
            .finish()
    }
}

struct Shared {
    settings: QueueSettings,
    state: Mutex<State>,
    /// Wakes the runner when a key is scheduled or released.
    notify: Notify,
    /// Bounds concurrent reconciles.
    permits: Arc<Semaphore>,
    /// Number of waiting keys, for the queue depth metric.
    depth: watch::Sender<usize>,
    /// Set once by [`WorkQueue::shutdown`].
    shutdown: watch::Sender<bool>,
    /// Guards against two concurrent `run`s.
    running: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Waiting keys ordered by deadline, then by arrival (FIFO among equal deadlines).
    waiting: BTreeSet<(Instant, u64, String)>,
    /// The entry of each waiting key in `waiting`, so a key waits at most once.
    deadlines: HashMap<String, (Instant, u64)>,
    /// Keys handed to a worker and not yet finished.
    processing: HashSet<String>,
    /// Keys enqueued while being processed, with the earliest deadline asked for.
    dirty: HashMap<String, Instant>,
    /// Consecutive failures per key; absent means zero.
    failures: HashMap<String, u32>,
    /// Arrival counter for FIFO ordering.
    sequence: u64,
}

enum Next {
    Ready(String),
    At(Instant),
    Empty,
}

impl State {
    fn len(&self) -> usize {
        self.waiting.len() + self.dirty.len()
    }

    fn schedule(&mut self, key: &str, deadline: Instant) {
        if self.processing.contains(key) {
            self.dirty
                .entry(key.to_owned())
                .and_modify(|d| *d = (*d).min(deadline))
                .or_insert(deadline);
            return;
        }
        if let Some(&(current, seq)) = self.deadlines.get(key) {
            if current <= deadline {
                return;
            }
            self.waiting.remove(&(current, seq, key.to_owned()));
        }
        self.sequence += 1;
        self.waiting
            .insert((deadline, self.sequence, key.to_owned()));
        self.deadlines
            .insert(key.to_owned(), (deadline, self.sequence));
    }

    fn pop_ready(&mut self, now: Instant) -> Next {
        match self.waiting.first() {
            None => Next::Empty,
            Some((deadline, _, _)) if *deadline > now => Next::At(*deadline),
            Some(_) => {
                let (_, _, key) = self.waiting.pop_first().expect("first() was Some");
                self.deadlines.remove(&key);
                self.processing.insert(key.clone());
                Next::Ready(key)
            }
        }
    }

    fn finish(&mut self, key: &str, action: Action, now: Instant) {
        self.processing.remove(key);
        let requeue = match action {
            Action::Requeue(after) => Some(now + after),
            Action::AwaitChange => None,
        };
        let dirty = self.dirty.remove(key);
        let deadline = match (requeue, dirty) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(deadline) = deadline {
            self.schedule(key, deadline);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is only mutated by short, panic-free sections; a poisoned lock still
        // holds consistent data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish_depth(&self, state: &State) {
        self.depth.send_replace(state.len());
    }

    fn schedule(&self, key: &str, deadline: Instant) {
        let mut state = self.lock();
        state.schedule(key, deadline);
        self.publish_depth(&state);
        drop(state);
        self.notify.notify_one();
    }

    async fn next_ready(&self) -> String {
        loop {
            let notified = self.notify.notified();
            let next = {
                let mut state = self.lock();
                let next = state.pop_ready(Instant::now());
                self.publish_depth(&state);
                next
            };
            match next {
                Next::Ready(key) => return key,
                Next::At(deadline) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                }
                Next::Empty => notified.await,
            }
        }
    }

    /// Records the outcome of a run and returns the backoff facts if it failed.
    fn record_outcome(&self, key: &str, failed: bool) -> Option<Failure> {
        let mut state = self.lock();
        if !failed {
            state.failures.remove(key);
            return None;
        }
        let count = state.failures.entry(key.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        let consecutive_failures = *count;
        Some(Failure {
            consecutive_failures,
            backoff: self.settings.backoff.delay(consecutive_failures),
        })
    }

    fn finish(&self, key: &str, action: Action) {
        let mut state = self.lock();
        state.finish(key, action, Instant::now());
        self.publish_depth(&state);
        drop(state);
        self.notify.notify_one();
    }
}

/// Aborts the wrapped task when dropped, so aborting a supervisor aborts its reconcile.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl WorkQueue {
    /// Creates an empty queue. Fails if the settings could never run anything.
    pub fn new(settings: QueueSettings) -> Result<Self> {
        if settings.max_concurrent_reconciles == 0 {
            return Err(Error::InvalidSettings(
                "max_concurrent_reconciles must be at least 1",
            ));
        }
        if settings.reconcile_timeout.is_zero() {
            return Err(Error::InvalidSettings(
                "reconcile_timeout must be greater than zero",
            ));
        }
        if settings.backoff.base > settings.backoff.cap {
            return Err(Error::InvalidSettings(
                "backoff base must not exceed the backoff cap",
            ));
        }
        Ok(WorkQueue {
            shared: Arc::new(Shared {
                settings,
                state: Mutex::new(State::default()),
                notify: Notify::new(),
                permits: Arc::new(Semaphore::new(settings.max_concurrent_reconciles)),
                depth: watch::Sender::new(0),
                shutdown: watch::Sender::new(false),
                running: AtomicBool::new(false),
            }),
        })
    }

    /// The settings this queue was built with.
    pub fn settings(&self) -> &QueueSettings {
        &self.shared.settings
    }

    /// Queues `key` for reconciliation now. A key already waiting is not queued twice.
    pub fn enqueue(&self, key: impl Into<String>) {
        self.shared.schedule(&key.into(), Instant::now());
    }

    /// Queues `key` for reconciliation after `after`; if it is already scheduled, the earlier
    /// of the two deadlines wins.
    pub fn enqueue_after(&self, key: impl Into<String>, after: Duration) {
        self.shared.schedule(&key.into(), Instant::now() + after);
    }

    /// Drops everything the queue holds for `key` (a pending or delayed run, a dirty mark,
    /// its failure count), for an instance that no longer exists. A run in progress is not
    /// interrupted, and the [`Action`] it returns still applies.
    pub fn forget(&self, key: &str) {
        let mut state = self.shared.lock();
        if let Some((deadline, seq)) = state.deadlines.remove(key) {
            state.waiting.remove(&(deadline, seq, key.to_owned()));
        }
        state.dirty.remove(key);
        state.failures.remove(key);
        self.shared.publish_depth(&state);
    }

    /// Number of keys waiting (ready or delayed, including keys marked dirty while running).
    pub fn len(&self) -> usize {
        self.shared.lock().len()
    }

    /// Whether no key is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of reconciles running now.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().processing.len()
    }

    /// A watch of the queue depth ([`WorkQueue::len`]), for the queue depth gauge.
    pub fn depth(&self) -> watch::Receiver<usize> {
        self.shared.depth.subscribe()
    }

    /// Stops handing out keys; [`WorkQueue::run`] then drains in-flight reconciles and returns.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Runs reconciles until [`WorkQueue::shutdown`], at most `max_concurrent_reconciles` at
    /// a time, each in its own task under the reconcile timeout.
    ///
    /// On success the key's backoff resets and the returned [`Action`] applies; on an error,
    /// a timeout or a panic, `error_policy` gets the error and the key's [`Failure`] facts and
    /// returns the [`Action`] (see [`requeue_with_backoff`]).
    ///
    /// After shutdown it waits up to `shutdown_grace` for in-flight reconciles; if they do not
    /// finish it aborts them and returns [`Error::ShutdownTimedOut`].
    pub async fn run<F, Fut, E, P>(&self, reconcile: F, error_policy: P) -> Result<()>
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Action, E>> + Send + 'static,
        E: std::error::Error + Send + 'static,
        P: Fn(&str, &ReconcileError<E>, &Failure) -> Action + Send + Sync + 'static,
    {
        if self.shared.running.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyRunning);
        }
        let reconcile = Arc::new(reconcile);
        let error_policy = Arc::new(error_policy);
        let mut tasks = JoinSet::new();
        let mut shutdown = self.shared.shutdown.subscribe();

        loop {
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break,
                permit = self.shared.permits.clone().acquire_owned() => {
                    permit.expect("the queue never closes its semaphore")
                }
            };
            let key = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break,
                key = self.shared.next_ready() => key,
            };
            let span = info_span!("reconcile", instance.id = %key);
            tasks.spawn(
                supervise(
                    self.shared.clone(),
                    key,
                    reconcile.clone(),
                    error_policy.clone(),
                    permit,
                )
                .instrument(span),
            );
        }

        let grace = self.shared.settings.shutdown_grace;
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        let result = match drained {
            Ok(()) => Ok(()),
            Err(_) => {
                let mut abandoned: Vec<String> =
                    self.shared.lock().processing.iter().cloned().collect();
                abandoned.sort();
                tasks.shutdown().await;
                Err(Error::ShutdownTimedOut { grace, abandoned })
            }
        };
        self.shared.running.store(false, Ordering::SeqCst);
        result
    }
}

async fn supervise<F, Fut, E, P>(
    shared: Arc<Shared>,
    key: String,
    reconcile: Arc<F>,
    error_policy: Arc<P>,
    permit: OwnedSemaphorePermit,
) where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<Action, E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
    P: Fn(&str, &ReconcileError<E>, &Failure) -> Action + Send + Sync + 'static,
{
    let timeout = shared.settings.reconcile_timeout;
    let mut task = AbortOnDrop(tokio::spawn(reconcile(key.clone()).in_current_span()));
    let outcome = match tokio::time::timeout(timeout, &mut task.0).await {
        Ok(Ok(Ok(action))) => Ok(action),
        Ok(Ok(Err(error))) => Err(ReconcileError::Reconcile(error)),
        Ok(Err(join_error)) => Err(ReconcileError::Panicked {
            message: panic_message(join_error),
        }),
        Err(_elapsed) => Err(ReconcileError::Timeout { after: timeout }),
    };
    drop(task);
    let action = match outcome {
        Ok(action) => {
            let _ = shared.record_outcome(&key, false);
            debug!(?action, "reconcile succeeded");
            action
        }
        Err(error) => {
            let failure = shared
                .record_outcome(&key, true)
                .expect("a failed outcome yields failure facts");
            let action = error_policy(&key, &error, &failure);
            if let ReconcileError::Reconcile(_) = &error {
                // The reconcile function reports its own errors, knowing which are
                // news (the controller's are one line each, and none per instance
                // during a known control-plane outage): no second line here.
                debug!(
                    error = %DisplayChain(&error),
                    consecutive_failures = failure.consecutive_failures,
                    ?action,
                    "reconcile failed"
                );
            } else {
                warn!(
                    error = %DisplayChain(&error),
                    consecutive_failures = failure.consecutive_failures,
                    ?action,
                    "reconcile failed"
                );
            }
            action
        }
    };
    shared.finish(&key, action);
    drop(permit);
}

fn panic_message(error: tokio::task::JoinError) -> String {
    if !error.is_panic() {
        return "reconcile task was cancelled".to_owned();
    }
    let payload = error.into_panic();
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Formats an error with its `source` chain: "a: b: c".
struct DisplayChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Debug, thiserror::Error)]
    #[error("boom")]
    struct Boom;

    fn settings() -> QueueSettings {
        QueueSettings {
            max_concurrent_reconciles: 4,
            reconcile_timeout: Duration::from_secs(60),
            backoff: Backoff {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(4),
                jitter: false,
            },
            shutdown_grace: Duration::from_secs(30),
        }
    }

    /// Records each call's key and virtual time since the test started.
    #[derive(Clone, Default)]
    struct Calls(Arc<Mutex<Vec<(String, Duration)>>>);

    impl Calls {
        fn record(&self, key: &str, start: Instant) {
            self.0
                .lock()
                .unwrap()
                .push((key.to_owned(), start.elapsed()));
        }
        fn all(&self) -> Vec<(String, Duration)> {
            self.0.lock().unwrap().clone()
        }
        fn times(&self) -> Vec<Duration> {
            self.all().into_iter().map(|(_, t)| t).collect()
        }
    }

    /// Tracks how many callers are inside a section, and the most there ever were.
    #[derive(Clone, Default)]
    struct HighWater {
        now: Arc<AtomicUsize>,
        max: Arc<AtomicUsize>,
    }

    impl HighWater {
        fn enter(&self) {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.max.fetch_max(now, Ordering::SeqCst);
        }
        fn leave(&self) {
            self.now.fetch_sub(1, Ordering::SeqCst);
        }
        fn max(&self) -> usize {
            self.max.load(Ordering::SeqCst)
        }
    }

    fn spawn_run<F, Fut>(queue: &WorkQueue, reconcile: F) -> JoinHandle<Result<()>>
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Action, Boom>> + Send + 'static,
    {
        let queue = queue.clone();
        tokio::spawn(async move { queue.run(reconcile, requeue_with_backoff).await })
    }

    async fn stop(queue: &WorkQueue, runner: JoinHandle<Result<()>>) -> Result<()> {
        queue.shutdown();
        runner.await.expect("runner task panicked")
    }

    #[tokio::test(start_paused = true)]
    async fn key_enqueued_twice_before_it_is_taken_is_processed_once() {
        let queue = WorkQueue::new(settings()).unwrap();
        queue.enqueue("a");
        queue.enqueue("a");
        queue.enqueue("b");
        assert_eq!(queue.len(), 2);
        let calls = Calls::default();
        let start = Instant::now();
        let runner = spawn_run(&queue, {
            let calls = calls.clone();
            move |key| {
                let calls = calls.clone();
                async move {
                    calls.record(&key, start);
                    Ok(Action::await_change())
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        stop(&queue, runner).await.unwrap();
        let mut keys: Vec<String> = calls.all().into_iter().map(|(k, _)| k).collect();
        keys.sort();
        assert_eq!(keys, ["a", "b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn key_enqueued_while_processing_runs_again_afterwards_never_concurrently() {
        let queue = WorkQueue::new(settings()).unwrap();
        let calls = Calls::default();
        let inside = HighWater::default();
        let start = Instant::now();
        let runner = spawn_run(&queue, {
            let (calls, inside) = (calls.clone(), inside.clone());
            move |key| {
                let (calls, inside) = (calls.clone(), inside.clone());
                async move {
                    inside.enter();
                    calls.record(&key, start);
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    inside.leave();
                    Ok(Action::await_change())
                }
            }
        });
        queue.enqueue("a");
        // While the first run sleeps, the key is enqueued again several times.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            queue.enqueue("a");
        }
        assert_eq!(queue.in_flight(), 1);
        assert_eq!(queue.len(), 1, "the dirty key counts as waiting once");
        tokio::time::sleep(Duration::from_secs(60)).await;
        stop(&queue, runner).await.unwrap();
        assert_eq!(
            inside.max(),
            1,
            "one key was processed by two workers at once"
        );
        assert_eq!(
            calls.times(),
            [Duration::ZERO, Duration::from_secs(10)],
            "the dirty key runs exactly once more, right after the first run"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_requeue_fires_at_the_requested_virtual_time() {
        let queue = WorkQueue::new(settings()).unwrap();
        let calls = Calls::default();
        let start = Instant::now();
        queue.enqueue_after("a", Duration::from_secs(30));
        let runner = spawn_run(&queue, {
            let calls = calls.clone();
            move |key| {
                let calls = calls.clone();
                async move {
                    calls.record(&key, start);
                    // The strategy asks to be called again in 45 s, twice.
                    if calls.all().len() < 3 {
                        Ok(Action::requeue(Duration::from_secs(45)))
                    } else {
                        Ok(Action::await_change())
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(calls.all().is_empty(), "ran before its deadline");
        tokio::time::sleep(Duration::from_secs(300)).await;
        stop(&queue, runner).await.unwrap();
        assert_eq!(
            calls.times(),
            [
                Duration::from_secs(30),
                Duration::from_secs(75),
                Duration::from_secs(120)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn earliest_deadline_wins_when_a_key_is_scheduled_twice() {
        let queue = WorkQueue::new(settings()).unwrap();
        let calls = Calls::default();
        let start = Instant::now();
        queue.enqueue_after("late-then-early", Duration::from_secs(60));
        queue.enqueue_after("late-then-early", Duration::from_secs(10));
        queue.enqueue_after("early-then-late", Duration::from_secs(20));
        queue.enqueue_after("early-then-late", Duration::from_secs(90));
        assert_eq!(queue.len(), 2);
        let runner = spawn_run(&queue, {
            let calls = calls.clone();
            move |key| {
                let calls = calls.clone();
                async move {
                    calls.record(&key, start);
                    Ok(Action::await_change())
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(200)).await;
        stop(&queue, runner).await.unwrap();
        assert_eq!(
            calls.all(),
            [
                ("late-then-early".to_owned(), Duration::from_secs(10)),
                ("early-then-late".to_owned(), Duration::from_secs(20)),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn await_change_leaves_the_key_alone_until_enqueued_again() {
        let queue = WorkQueue::new(settings()).unwrap();
        let calls = Calls::default();
        let start = Instant::now();
        queue.enqueue("a");
        let runner = spawn_run(&queue, {
            let calls = calls.clone();
            move |key| {
                let calls = calls.clone();
                async move {
                    calls.record(&key, start);
                    Ok(Action::await_change())
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(calls.times(), [Duration::ZERO]);
        queue.enqueue("a");
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop(&queue, runner).await.unwrap();
        assert_eq!(calls.times(), [Duration::ZERO, Duration::from_secs(3600)]);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_the_cap_and_resets_on_success() {
        let queue = WorkQueue::new(settings()).unwrap(); // base 1 s, cap 4 s
        let calls = Calls::default();
        let start = Instant::now();
        queue.enqueue("a");
        let runner = spawn_run(&queue, {
            let calls = calls.clone();
            move |key| {
                let calls = calls.clone();
                async move {
                    calls.record(&key, start);
                    match calls.all().len() {
                        // Five failures, then a success that asks for a resync in 100 s,
                        // then failures again: the backoff starts over at the base.
                        1..=5 => Err(Boom),
                        6 => Ok(Action::requeue(Duration::from_secs(100))),
                        7 | 8 => Err(Boom),
                        _ => Ok(Action::await_change()),
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(1000)).await;
        stop(&queue, runner).await.unwrap();
        let times = calls.times();
        let gaps: Vec<u64> = times.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert_eq!(gaps, [1, 2, 4, 4, 4, 100, 1, 2]);
    }

    #[test]
    fn backoff_delay_doubles_from_base_and_saturates_at_cap() {
        let backoff = Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(300),
            jitter: false,
        };
        let delays: Vec<Duration> = (1..=4).map(|n| backoff.delay(n)).collect();
        assert_eq!(
            delays,
            [
                Duration::from_millis(500),
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(4)
            ]
        );
        assert_eq!(backoff.delay(30), Duration::from_secs(300));
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn jittered_backoff_stays_between_half_and_full_delay() {
        let backoff = Backoff {
            base: Duration::from_secs(8),
            cap: Duration::from_secs(60),
            jitter: true,
        };
        let delays: Vec<Duration> = (0..200).map(|_| backoff.delay(2)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_secs(8) && *d <= Duration::from_secs(16))
        );
        assert!(
            delays.iter().any(|d| *d != delays[0]),
            "jitter produced 200 identical delays"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_bound_is_respected() {
        let queue = WorkQueue::new(QueueSettings {
            max_concurrent_reconciles: 2,
            ..settings()
        })
        .unwrap();
        let calls = Calls::default();
        let inside = HighWater::default();
        let start = Instant::now();
        for i in 0..10 {
            queue.enqueue(format!("key-{i}"));
        }
        let runner = spawn_run(&queue, {
            let (calls, inside) = (calls.clone(), inside.clone());
            move |key| {
                let (calls, inside) = (calls.clone(), inside.clone());
                async move {
                    inside.enter();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    inside.leave();
                    calls.record(&key, start);
                    Ok(Action::await_change())
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        stop(&queue, runner).await.unwrap();
        assert_eq!(inside.max(), 2);
        assert_eq!(calls.all().len(), 10);
        assert_eq!(
            calls.times().into_iter().max(),
            Some(Duration::from_secs(5)),
            "ten 1 s reconciles two at a time take 5 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_is_handed_to_the_error_policy_and_aborts_the_reconcile() {
        let queue = WorkQueue::new(QueueSettings {
            reconcile_timeout: Duration::from_secs(5),
            ..settings()
        })
        .unwrap();
        let finished = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        queue.enqueue("slow");
        let runner = {
            let (queue, finished, seen) = (queue.clone(), finished.clone(), seen.clone());
            tokio::spawn(async move {
                queue
                    .run(
                        move |_key| {
                            let finished = finished.clone();
                            async move {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                finished.store(true, Ordering::SeqCst);
                                Ok::<_, Boom>(Action::await_change())
                            }
                        },
                        move |key: &str, error: &ReconcileError<Boom>, failure: &Failure| {
                            seen.lock().unwrap().push((
                                key.to_owned(),
                                error.to_string(),
                                failure.consecutive_failures,
                                start.elapsed(),
                            ));
                            Action::await_change()
                        },
                    )
                    .await
            })
        };
        tokio::time::sleep(Duration::from_secs(7200)).await;
        stop(&queue, runner).await.unwrap();
        assert!(
            !finished.load(Ordering::SeqCst),
            "timed-out reconcile kept running"
        );
        assert_eq!(
            *seen.lock().unwrap(),
            [(
                "slow".to_owned(),
                "reconcile timed out after 5s".to_owned(),
                1,
                Duration::from_secs(5)
            )]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn panicking_reconcile_goes_to_the_error_policy_and_the_runner_carries_on() {
        let queue = WorkQueue::new(settings()).unwrap();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let calls = Calls::default();
        let start = Instant::now();
        queue.enqueue("bad");
        queue.enqueue_after("good", Duration::from_secs(1));
        let runner = {
            let (queue, errors, calls) = (queue.clone(), errors.clone(), calls.clone());
            tokio::spawn(async move {
                queue
                    .run(
                        move |key: String| {
                            let calls = calls.clone();
                            async move {
                                if key == "bad" {
                                    panic!("plugin state corrupted");
                                }
                                calls.record(&key, start);
                                Ok::<_, Boom>(Action::await_change())
                            }
                        },
                        move |key: &str, error: &ReconcileError<Boom>, _: &Failure| {
                            errors.lock().unwrap().push(format!("{key}: {error}"));
                            Action::await_change()
                        },
                    )
                    .await
            })
        };
        tokio::time::sleep(Duration::from_secs(10)).await;
        stop(&queue, runner).await.unwrap();
        assert_eq!(
            *errors.lock().unwrap(),
            ["bad: reconcile panicked: plugin state corrupted"]
        );
        assert_eq!(calls.all(), [("good".to_owned(), Duration::from_secs(1))]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_in_flight_reconciles_and_takes_no_new_work() {
        let queue = WorkQueue::new(settings()).unwrap();
        let calls = Calls::default();
        let start = Instant::now();
        queue.enqueue("a");
        let runner = spawn_run(&queue, {
            let calls = calls.clone();
            move |key| {
                let calls = calls.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    calls.record(&key, start);
                    Ok(Action::await_change())
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        queue.shutdown();
        queue.enqueue("b");
        runner.await.unwrap().unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(calls.all(), [("a".to_owned(), Duration::from_secs(3))]);
        assert_eq!(queue.len(), 1, "b stays queued, not processed");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_aborts_reconciles_that_outlast_the_grace_period() {
        let queue = WorkQueue::new(QueueSettings {
            shutdown_grace: Duration::from_secs(10),
            reconcile_timeout: Duration::from_secs(3600),
            ..settings()
        })
        .unwrap();
        let start = Instant::now();
        queue.enqueue("stuck");
        let runner = spawn_run(&queue, |_key| async {
            tokio::time::sleep(Duration::from_secs(1800)).await;
            Ok(Action::await_change())
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let error = stop(&queue, runner).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(11));
        assert!(
            matches!(&error, Error::ShutdownTimedOut { abandoned, .. } if abandoned == &["stuck"]),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "shutdown grace period of 10s elapsed with 1 reconcile(s) still running (stuck); they were aborted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn depth_is_observable_as_keys_arrive_and_are_processed() {
        let queue = WorkQueue::new(settings()).unwrap();
        let depth = queue.depth();
        assert!(queue.is_empty());
        queue.enqueue("a");
        queue.enqueue("b");
        queue.enqueue_after("c", Duration::from_secs(5));
        assert_eq!(queue.len(), 3);
        assert_eq!(*depth.borrow(), 3);
        let runner = spawn_run(&queue, |_key| async { Ok(Action::await_change()) });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*depth.borrow(), 1, "only the delayed key is left");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(*depth.borrow(), 0);
        stop(&queue, runner).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn forgotten_key_is_not_run_and_its_backoff_is_reset() {
        let queue = WorkQueue::new(settings()).unwrap();
        let calls = Calls::default();
        let start = Instant::now();
        queue.enqueue_after("deleted", Duration::from_secs(5));
        queue.enqueue_after("kept", Duration::from_secs(5));
        queue.forget("deleted");
        assert_eq!(queue.len(), 1);
        queue.shared.lock().failures.insert("kept".into(), 3);
        queue.forget("kept");
        queue.enqueue_after("kept", Duration::from_secs(5));
        assert!(queue.shared.lock().failures.is_empty());
        let runner = spawn_run(&queue, {
            let calls = calls.clone();
            move |key| {
                let calls = calls.clone();
                async move {
                    calls.record(&key, start);
                    Ok(Action::await_change())
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        stop(&queue, runner).await.unwrap();
        assert_eq!(calls.all(), [("kept".to_owned(), Duration::from_secs(5))]);
    }

    #[tokio::test(start_paused = true)]
    async fn running_one_queue_twice_is_refused() {
        let queue = WorkQueue::new(settings()).unwrap();
        let runner = spawn_run(&queue, |_key| async { Ok(Action::await_change()) });
        tokio::task::yield_now().await;
        let second = queue
            .run(
                |_key| async { Ok::<_, Boom>(Action::await_change()) },
                requeue_with_backoff,
            )
            .await;
        assert!(matches!(second, Err(Error::AlreadyRunning)), "{second:?}");
        stop(&queue, runner).await.unwrap();
    }

    #[test]
    fn settings_that_could_never_run_are_rejected() {
        let zero = WorkQueue::new(QueueSettings {
            max_concurrent_reconciles: 0,
            ..settings()
        });
        assert!(matches!(zero, Err(Error::InvalidSettings(_))));
        let no_timeout = WorkQueue::new(QueueSettings {
            reconcile_timeout: Duration::ZERO,
            ..settings()
        });
        assert!(matches!(no_timeout, Err(Error::InvalidSettings(_))));
    }
}
