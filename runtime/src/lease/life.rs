//! Whether a handle still holds its lease, shared between the handle and whatever can end the lease
//! (its keep-alive task, `MemLeaseStore::expire`, `MemLeaseStore::tick`). The first end wins: a later
//! reason never overwrites the one the holder may already have acted on.

use tokio::sync::watch;

use super::LeaseError;

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Alive,
    /// `error` is None when the holder itself ended the lease (revoke, drop, stop_keepalive).
    Ended {
        error: Option<LeaseError>,
    },
}

/// A watch channel rather than an atomic flag, so that `ended` can wait without polling.
#[derive(Debug)]
pub(crate) struct Life {
    state: watch::Sender<State>,
}

impl Life {
    pub(crate) fn new() -> Self {
        Life { state: watch::Sender::new(State::Alive) }
    }

    /// Marks the lease ended; returns whether this call was the one that ended it.
    pub(crate) fn end(&self, error: Option<LeaseError>) -> bool {
        self.state.send_if_modified(move |state| {
            if *state != State::Alive {
                return false;
            }
            *state = State::Ended { error };
            true
        })
    }

    pub(crate) fn is_alive(&self) -> bool {
        *self.state.borrow() == State::Alive
    }

    pub(crate) fn lost_error(&self) -> Option<LeaseError> {
        match &*self.state.borrow() {
            State::Alive => None,
            State::Ended { error } => error.clone(),
        }
    }

    pub(crate) async fn ended(&self) {
        let mut state = self.state.subscribe();
        // wait_for fails only once the sender is gone, and `self` owns the sender.
        let _ = state.wait_for(|s| *s != State::Alive).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_end_wins_and_wakes_waiters() {
        let life = Life::new();
        assert!(life.is_alive());
        assert_eq!(life.lost_error(), None);
        let lost = LeaseError::Lost { key: "k".into(), why: "test".into() };
        assert!(life.end(Some(lost.clone())));
        assert!(!life.end(None), "a second end must not overwrite the first");
        assert!(!life.is_alive());
        assert_eq!(life.lost_error(), Some(lost));
        life.ended().await; // already ended: returns at once
    }
}
