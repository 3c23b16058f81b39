//! The change feed: a bounded buffer of [`StatusChange`]s with monotonically increasing
//! sequence numbers, read by timestamp (the DRaaS seed's `since=`) or by cursor
//! (`after=SEQ`), with an explicit answer when a cursor has fallen off the buffer.
//!
//! Sequence numbers are handed out by the control plane while it holds its state lock
//! ([`Feed::next_sequence`]), stored with the change, then [`Feed::push`]ed here, which
//! wakes long-polling readers ([`Feed::subscribe`]).

use std::collections::VecDeque;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;

use crate::model::{InstanceStatus, StatusChange};

/// The answer to a cursor read (`GET /api/status/recent-changes?after=SEQ`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedPage {
    /// The newest sequence number handed out so far (0 before the first change). A client
    /// passes it as its next `after=` when `changes` is empty.
    pub latest_sequence: u64,
    /// The oldest sequence number still retained, if any.
    pub oldest_sequence: Option<u64>,
    /// `true` when changes after the cursor may be missing from `changes` (the cursor is
    /// older than the retained buffer, or newer than `latestSequence`): resync fully.
    pub truncated: bool,
    /// Retained changes after the cursor (matching the filter), oldest first.
    pub changes: Vec<StatusChange>,
}

#[derive(Debug)]
struct FeedState {
    buffer: VecDeque<StatusChange>,
    latest: u64,
}

/// The in-memory side of the change feed.
#[derive(Debug)]
pub struct Feed {
    state: Mutex<FeedState>,
    capacity: usize,
    latest_tx: watch::Sender<u64>,
}

impl Feed {
    /// A feed retaining `capacity` changes, seeded with what the store kept.
    pub fn new(capacity: usize, retained: Vec<StatusChange>, latest: u64) -> Self {
        let capacity = capacity.max(1);
        let mut buffer: VecDeque<StatusChange> = retained.into();
        while buffer.len() > capacity {
            buffer.pop_front();
        }
        let latest = buffer.back().map_or(latest, |c| c.sequence.max(latest));
        Self {
            state: Mutex::new(FeedState { buffer, latest }),
            capacity,
            latest_tx: watch::channel(latest).0,
        }
    }

    /// How many changes are retained.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The sequence number the next change gets. The caller serialises publication.
    pub fn next_sequence(&self) -> u64 {
        self.lock().latest + 1
    }

    /// The newest sequence number handed out.
    pub fn latest_sequence(&self) -> u64 {
        self.lock().latest
    }

    /// Appends a stored change and wakes readers.
    pub fn push(&self, change: StatusChange) {
        let sequence = change.sequence;
        {
            let mut state = self.lock();
            state.latest = state.latest.max(sequence);
            state.buffer.push_back(change);
            while state.buffer.len() > self.capacity {
                state.buffer.pop_front();
            }
        }
        self.latest_tx.send_replace(sequence);
    }

    /// A receiver that changes whenever a change is pushed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest_tx.subscribe()
    }

    /// Retained changes with a sequence number greater than `after`.
    pub fn after(&self, after: u64, filter: Option<InstanceStatus>) -> FeedPage {
        let state = self.lock();
        let oldest = state.buffer.front().map(|c| c.sequence);
        // Without a gap, the first change after the cursor is `after + 1`, and it is
        // retained unless it was evicted (oldest > after + 1).
        let first_kept = oldest.unwrap_or(state.latest + 1);
        let truncated = after > state.latest || first_kept > after + 1;
        let changes = state
            .buffer
            .iter()
            .filter(|c| c.sequence > after)
            .filter(|c| filter.is_none_or(|f| c.status == f))
            .cloned()
            .collect();
        FeedPage {
            latest_sequence: state.latest,
            oldest_sequence: oldest,
            truncated,
            changes,
        }
    }

    /// Retained changes recorded at or after `since` (the seed's semantics).
    pub fn since(&self, since: DateTime<Utc>, filter: Option<InstanceStatus>) -> Vec<StatusChange> {
        self.lock()
            .buffer
            .iter()
            .filter(|c| c.timestamp >= since)
            .filter(|c| filter.is_none_or(|f| c.status == f))
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Labels;

    fn change(feed: &Feed, status: InstanceStatus) -> StatusChange {
        StatusChange {
            sequence: feed.next_sequence(),
            instance_id: "i".into(),
            status,
            previous_status: None,
            source: "t".into(),
            timestamp: Utc::now(),
            metadata: Labels::new(),
        }
    }

    fn seqs(page: &FeedPage) -> Vec<u64> {
        page.changes.iter().map(|c| c.sequence).collect()
    }

    #[test]
    fn a_cursor_inside_the_buffer_gets_the_rest_in_order() {
        let feed = Feed::new(10, Vec::new(), 0);
        for _ in 0..4 {
            feed.push(change(&feed, InstanceStatus::Running));
        }
        let page = feed.after(1, None);
        assert_eq!(seqs(&page), vec![2, 3, 4]);
        assert_eq!(page.latest_sequence, 4);
        assert!(!page.truncated);
        let page = feed.after(4, None);
        assert!(page.changes.is_empty() && !page.truncated);
    }

    #[test]
    fn a_cursor_older_than_the_buffer_is_reported_truncated() {
        let feed = Feed::new(3, Vec::new(), 0);
        for _ in 0..6 {
            feed.push(change(&feed, InstanceStatus::Running));
        }
        let page = feed.after(2, None);
        assert!(page.truncated);
        assert_eq!(seqs(&page), vec![4, 5, 6]);
        assert_eq!(page.oldest_sequence, Some(4));
        // Exactly at the edge: 3 was evicted but the next needed is 4, which is kept.
        assert!(!feed.after(3, None).truncated);
        // A cursor from the future (e.g. a reset database) also asks for a resync.
        assert!(feed.after(99, None).truncated);
    }

    #[test]
    fn an_empty_buffer_after_restart_still_detects_missed_changes() {
        let feed = Feed::new(5, Vec::new(), 10);
        assert!(!feed.after(10, None).truncated);
        assert!(feed.after(8, None).truncated);
        assert_eq!(feed.next_sequence(), 11);
    }

    #[test]
    fn filters_apply_to_both_reads() {
        let feed = Feed::new(10, Vec::new(), 0);
        let start = Utc::now() - chrono::Duration::seconds(1);
        feed.push(change(&feed, InstanceStatus::Running));
        feed.push(change(&feed, InstanceStatus::Error));
        assert_eq!(seqs(&feed.after(0, Some(InstanceStatus::Error))), vec![2]);
        assert_eq!(feed.since(start, Some(InstanceStatus::Running)).len(), 1);
        assert_eq!(
            feed.since(Utc::now() + chrono::Duration::seconds(5), None)
                .len(),
            0
        );
    }
}
