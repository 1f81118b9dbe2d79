//! `Sequencer`: one training run's request ordering. Requests carry the client's `seq_id`
//! (1, 2, 3, …; chunks of one call arrive concurrently, the first chunk last); the sequencer holds
//! each until every lower `seq_id` has been released, releases them strictly in order, and answers
//! a retried `seq_id` with the request id it was first given. It owns no I/O and no clock.

use std::collections::BTreeMap;

/// What happened to one submitted request.
#[derive(Debug, PartialEq, Eq)]
pub enum Submitted<T> {
    /// New: held or released; these are the items now released, in `seq_id` order (maybe empty).
    Accepted(Vec<T>),
    /// A retry of a `seq_id` already seen: answer this request id, run nothing.
    Duplicate(String),
    /// A `seq_id` below the run's first one (a client bug): nothing can ever release it.
    TooOld { first_seq_id: u64 },
}

/// Releases a run's requests in `seq_id` order and deduplicates retries.
#[derive(Debug)]
pub struct Sequencer<T> {
    /// The `seq_id` that must be released next.
    next_seq_id: u64,
    first_seq_id: u64,
    /// Requests waiting for a gap below them to fill: seq_id → item.
    held: BTreeMap<u64, T>,
    /// Every seq_id ever accepted → its request id (for retries).
    seen: BTreeMap<u64, String>,
}

impl<T> Sequencer<T> {
    /// A sequencer whose first request has `first_seq_id` (1 for a new run: the create or
    /// create-from-state request is the implicit seq 0).
    pub fn new(first_seq_id: u64) -> Self {
        Sequencer { next_seq_id: first_seq_id, first_seq_id, held: BTreeMap::new(), seen: BTreeMap::new() }
    }

    /// Offers request `seq_id` (known to the client as `request_id`) carrying `item`.
    pub fn submit(&mut self, seq_id: u64, request_id: &str, item: T) -> Submitted<T> {
        if let Some(original) = self.seen.get(&seq_id) {
            return Submitted::Duplicate(original.clone());
        }
        if seq_id < self.first_seq_id {
            return Submitted::TooOld { first_seq_id: self.first_seq_id };
        }
        assert!(seq_id >= self.next_seq_id, "seq_id {seq_id} below next {} yet never seen", self.next_seq_id);
        self.seen.insert(seq_id, request_id.to_string());
        self.held.insert(seq_id, item);
        let mut released = Vec::new();
        while let Some(item) = self.held.remove(&self.next_seq_id) {
            released.push(item);
            self.next_seq_id += 1;
        }
        Submitted::Accepted(released)
    }

    /// The request id a `seq_id` was first accepted under, if it was.
    pub fn seen(&self, seq_id: u64) -> Option<&str> {
        self.seen.get(&seq_id).map(String::as_str)
    }

    /// The lowest `seq_id` this run accepts.
    pub fn first_seq_id(&self) -> u64 {
        self.first_seq_id
    }

    /// The `seq_id` that will be released next (everything below it has been).
    pub fn next_seq_id(&self) -> u64 {
        self.next_seq_id
    }

    /// How many requests wait for a gap to fill.
    pub fn held_count(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released(s: Submitted<u64>) -> Vec<u64> {
        match s {
            Submitted::Accepted(v) => v,
            other => panic!("expected Accepted, got {other:?}"),
        }
    }

    #[test]
    fn in_order_requests_are_released_at_once() {
        let mut s = Sequencer::new(1);
        assert_eq!(released(s.submit(1, "r1", 1)), vec![1]);
        assert_eq!(released(s.submit(2, "r2", 2)), vec![2]);
        assert_eq!(s.next_seq_id(), 3);
    }

    #[test]
    fn chunks_arriving_first_chunk_last_are_released_in_seq_order() {
        // The SDK's observed pattern: chunks 2 and 3, then chunk 1, then optim_step 4.
        let mut s = Sequencer::new(1);
        assert_eq!(released(s.submit(3, "r3", 3)), Vec::<u64>::new());
        assert_eq!(released(s.submit(2, "r2", 2)), Vec::<u64>::new());
        assert_eq!(s.held_count(), 2);
        assert_eq!(released(s.submit(1, "r1", 1)), vec![1, 2, 3]);
        assert_eq!(released(s.submit(4, "r4", 4)), vec![4]);
        assert_eq!(s.held_count(), 0);
    }

    #[test]
    fn a_gap_holds_everything_above_it() {
        let mut s = Sequencer::new(1);
        assert_eq!(released(s.submit(1, "r1", 1)), vec![1]);
        assert_eq!(released(s.submit(3, "r3", 3)), Vec::<u64>::new());
        assert_eq!(released(s.submit(4, "r4", 4)), Vec::<u64>::new());
        assert_eq!(s.next_seq_id(), 2);
        assert_eq!(released(s.submit(2, "r2", 2)), vec![2, 3, 4]);
    }

    #[test]
    fn a_retried_seq_id_answers_the_original_request_id_whether_held_or_released() {
        let mut s = Sequencer::new(1);
        released(s.submit(2, "held", 2));
        assert_eq!(s.submit(2, "retry", 99), Submitted::Duplicate("held".into()));
        released(s.submit(1, "done", 1));
        assert_eq!(s.submit(1, "retry", 99), Submitted::Duplicate("done".into()));
        assert_eq!((s.seen(1), s.seen(2), s.seen(3)), (Some("done"), Some("held"), None));
        assert_eq!(s.next_seq_id(), 3);
    }

    #[test]
    fn seq_ids_below_the_first_are_refused() {
        let mut s: Sequencer<u64> = Sequencer::new(1);
        assert_eq!(s.submit(0, "r0", 0), Submitted::TooOld { first_seq_id: 1 });
    }
}
