//! A counting gate that bounds how many plugin calls run at once (a blocking semaphore:
//! calls run on blocking threads, so waiting here never stalls an async executor).

use std::sync::{Condvar, Mutex};

/// Lets at most `limit` holders in at a time.
#[derive(Debug)]
pub(super) struct Gate {
    limit: usize,
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Holders inside now.
    inside: usize,
    /// Callers blocked in [`Gate::enter`]; leaving only wakes someone when there is one
    /// (a `notify_one` is a system call even with nobody waiting).
    waiting: usize,
}

/// Held while a call runs; leaving the scope lets the next one in.
#[derive(Debug)]
pub(super) struct Permit<'a>(&'a Gate);

impl Gate {
    pub(super) fn new(limit: usize) -> Self {
        Gate {
            limit,
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
        }
    }

    /// Wait until there is room, then enter.
    pub(super) fn enter(&self) -> Permit<'_> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while state.inside >= self.limit {
            state.waiting += 1;
            state = self.freed.wait(state).unwrap_or_else(|e| e.into_inner());
            state.waiting -= 1;
        }
        state.inside += 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        state.inside -= 1;
        if state.waiting > 0 {
            self.0.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn never_lets_more_than_the_limit_in() {
        let gate = Arc::new(Gate::new(2));
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gate, now, peak) = (gate.clone(), now.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let _permit = gate.enter();
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        now.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 2);
        assert!(peak.load(Ordering::SeqCst) >= 1);
    }
}
