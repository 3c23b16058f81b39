//! A counting gate that bounds how many plugin calls run at once (a blocking semaphore:
//! calls run on blocking threads, so waiting here never stalls an async executor).

use std::sync::{Condvar, Mutex};

/// Lets at most `limit` holders in at a time.
#[derive(Debug)]
pub(super) struct Gate {
    limit: usize,
    inside: Mutex<usize>,
    freed: Condvar,
}

/// Held while a call runs; leaving the scope lets the next one in.
#[derive(Debug)]
pub(super) struct Permit<'a>(&'a Gate);

impl Gate {
    pub(super) fn new(limit: usize) -> Self {
        Gate {
            limit,
            inside: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Wait until there is room, then enter.
    pub(super) fn enter(&self) -> Permit<'_> {
        let mut inside = self.inside.lock().unwrap_or_else(|e| e.into_inner());
        while *inside >= self.limit {
            inside = self.freed.wait(inside).unwrap_or_else(|e| e.into_inner());
        }
        *inside += 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut inside = self.0.inside.lock().unwrap_or_else(|e| e.into_inner());
        *inside -= 1;
        self.0.freed.notify_one();
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
