//! `GroupCommitter`: runs a [`Store`] on a dedicated thread, off the async runtime, and commits
//! every batch that queued up while the previous commit was in flight as one `commit`, so a burst
//! of acknowledgements costs one fsync instead of one each.
//!
//! Each batch's callback runs on the store thread, in submission order, once its batch is
//! durable (or failed); it should only hand the result on (a channel send, a oneshot).
//! Callers never hang: a batch that can no longer be committed (the thread is gone, or the store
//! panicked) gets an error instead.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use super::ops::StoreOp;
use super::{Store, StoreError};

/// Called with a batch's outcome, on the store thread.
pub type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

pub struct GroupCommitter {
    /// `None` only while dropping.
    queue: Option<Sender<Batch>>,
    thread: Option<JoinHandle<()>>,
}

struct Batch {
    ops: Vec<StoreOp>,
    /// Taken when called; a batch dropped without an outcome (the thread unwound, or the queue
    /// went away with it inside) reports [`StoreError::Stopped`] from `Drop`.
    done: Option<Done>,
}

impl GroupCommitter {
    /// Starts the store thread. Load the store before handing it over: from here on it only
    /// commits.
    pub fn spawn(store: Box<dyn Store>) -> Result<GroupCommitter, StoreError> {
        let (queue, batches) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("lathe-store".into())
            .spawn(move || run(store, batches))
            .map_err(StoreError::Thread)?;
        Ok(GroupCommitter { queue: Some(queue), thread: Some(thread) })
    }

    /// Queues `ops` to be committed atomically; `done` is called once they are durable, or with
    /// the error that kept them out (then nothing of them was applied).
    pub fn submit(&self, ops: Vec<StoreOp>, done: Done) {
        let batch = Batch { ops, done: Some(done) };
        match &self.queue {
            // A send fails only when the thread is gone; the returned batch is dropped right away,
            // which reports `Stopped`.
            Some(queue) => drop(queue.send(batch)),
            None => drop(batch),
        }
    }
}

impl Drop for GroupCommitter {
    /// Commits what is queued, then stops the thread.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            // A callback that drops the committer runs on the store thread, which cannot join
            // itself; it exits on its own once the queue is empty.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Batch {
    fn finish(mut self, outcome: Result<(), StoreError>) {
        if let Some(done) = self.done.take() {
            call(done, outcome);
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            call(done, Err(StoreError::Stopped));
        }
    }
}

/// Calls a callback, containing its panic: one caller's bug must not stop everyone's commits.
fn call(done: Done, outcome: Result<(), StoreError>) {
    let _ = catch_unwind(AssertUnwindSafe(move || done(outcome)));
}

fn run(mut store: Box<dyn Store>, batches: Receiver<Batch>) {
    // Set once the store panics: its state is then unknown, so nothing more is committed.
    let mut panicked: Option<String> = None;
    while let Ok(first) = batches.recv() {
        let mut group = vec![first];
        group.extend(batches.try_iter());
        match &panicked {
            Some(why) => group.into_iter().for_each(|b| b.finish(Err(StoreError::Panicked { why: why.clone() }))),
            None => panicked = commit_group(&mut *store, group),
        }
    }
}

/// Commits a group as one transaction; if that fails, each batch alone, so a bad batch fails only
/// itself. Calls every batch's callback in order. Returns the panic message if the store panicked.
fn commit_group(store: &mut dyn Store, mut group: Vec<Batch>) -> Option<String> {
    // Moved, not cloned, into one list; `ends[i]` is where batch i's ops end in it.
    let mut all = Vec::with_capacity(group.iter().map(|b| b.ops.len()).sum());
    let mut ends = Vec::with_capacity(group.len());
    for b in &mut group {
        all.append(&mut b.ops);
        ends.push(all.len());
    }
    match guarded_commit(store, &all) {
        Ok(Ok(())) => {
            group.into_iter().for_each(|b| b.finish(Ok(())));
            return None;
        }
        Ok(Err(e)) if group.len() == 1 => {
            if let Some(b) = group.pop() {
                b.finish(Err(e));
            }
            return None;
        }
        Ok(Err(_)) => {}
        Err(why) => {
            group.into_iter().for_each(|b| b.finish(Err(StoreError::Panicked { why: why.clone() })));
            return Some(why);
        }
    }
    // The group failed as a whole (nothing of it is applied): find the batches at fault.
    let mut panicked: Option<String> = None;
    let mut start = 0;
    for (b, end) in group.into_iter().zip(ends) {
        let outcome = match &panicked {
            Some(why) => Err(StoreError::Panicked { why: why.clone() }),
            None => match guarded_commit(store, &all[start..end]) {
                Ok(outcome) => outcome,
                Err(why) => {
                    panicked = Some(why.clone());
                    Err(StoreError::Panicked { why })
                }
            },
        };
        b.finish(outcome);
        start = end;
    }
    panicked
}

/// `commit`, with a panic turned into its message (`Err`).
fn guarded_commit(store: &mut dyn Store, ops: &[StoreOp]) -> Result<Result<(), StoreError>, String> {
    catch_unwind(AssertUnwindSafe(|| store.commit(ops))).map_err(panic_message)
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => s.to_string(),
            Err(_) => "a panic without a message".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::store::tests::{append, bytes};
    use crate::store::{Loaded, MemStore};

    /// A `MemStore` that records the size of every commit, can hold its first commit until told
    /// to go on, and can be slowed down (a stand-in for an fsync).
    struct Counting {
        inner: MemStore,
        commits: Arc<Mutex<Vec<usize>>>,
        /// (tell the test the first commit started, wait for the test to let it finish)
        gate: Option<(Sender<()>, Receiver<()>)>,
        delay: Duration,
    }

    impl Store for Counting {
        fn load(&mut self) -> Result<Loaded, StoreError> {
            self.inner.load()
        }
        fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
            if let Some((started, proceed)) = self.gate.take() {
                started.send(()).unwrap();
                proceed.recv().unwrap();
            }
            std::thread::sleep(self.delay);
            self.commits.lock().unwrap().push(ops.len());
            self.inner.commit(ops)
        }
    }

    struct Panicking;

    impl Store for Panicking {
        fn load(&mut self) -> Result<Loaded, StoreError> {
            Ok(Loaded::default())
        }
        fn commit(&mut self, _: &[StoreOp]) -> Result<(), StoreError> {
            panic!("disk on fire")
        }
    }

    /// A callback that sends its batch's number and outcome on `results`.
    fn report(i: usize, results: &Sender<(usize, Result<(), StoreError>)>) -> Done {
        let results = results.clone();
        Box::new(move |r| drop(results.send((i, r))))
    }

    const PATIENCE: Duration = Duration::from_secs(20);

    /// Goal: concurrent submitters all get their batches committed, sharing commits. Method: 8
    /// threads submit 100 batches without waiting; every callback reports Ok, every row is in the
    /// store, and there were fewer commits than batches.
    #[test]
    fn a_hundred_batches_from_eight_threads_all_commit_in_fewer_commits() {
        let (mem, commits) = (MemStore::new(), Arc::new(Mutex::new(Vec::new())));
        let store =
            Counting { inner: mem.clone(), commits: commits.clone(), gate: None, delay: Duration::from_millis(2) };
        let committer = Arc::new(GroupCommitter::spawn(Box::new(store)).unwrap());
        let (results, outcomes) = mpsc::channel();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (committer, results) = (committer.clone(), results.clone());
                std::thread::spawn(move || {
                    for i in (t..100).step_by(8) {
                        let ops = vec![append(&format!("run-{t}"), i as u64, bytes(i as u64, 32))];
                        committer.submit(ops, report(i, &results));
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let mut done: Vec<usize> = (0..100)
            .map(|_| {
                let (i, r) = outcomes.recv_timeout(PATIENCE).unwrap();
                r.unwrap();
                i
            })
            .collect();
        done.sort();
        assert_eq!(done, (0..100).collect::<Vec<_>>());
        let mut mem = mem;
        assert_eq!(mem.load().unwrap().journal.len(), 100);
        let commits = commits.lock().unwrap();
        assert_eq!(commits.iter().sum::<usize>(), 100);
        assert!(commits.len() < 100, "{} commits for 100 batches", commits.len());
    }

    /// Goal: what queues during a commit becomes the next commit, and callbacks run in submission
    /// order. Method: hold the first commit, submit five more, let it go: two commits (1 op, then
    /// 5), and the callbacks report 0..6 in order.
    #[test]
    fn batches_queued_during_a_commit_share_the_next_one() {
        let (started_tx, started) = mpsc::channel();
        let (proceed, proceed_rx) = mpsc::channel();
        let commits = Arc::new(Mutex::new(Vec::new()));
        let store = Counting {
            inner: MemStore::new(),
            commits: commits.clone(),
            gate: Some((started_tx, proceed_rx)),
            delay: Duration::ZERO,
        };
        let committer = GroupCommitter::spawn(Box::new(store)).unwrap();
        let (results, outcomes) = mpsc::channel();
        committer.submit(vec![append("r", 0, vec![0])], report(0, &results));
        started.recv_timeout(PATIENCE).unwrap();
        for i in 1..6 {
            committer.submit(vec![append("r", i as u64, vec![i as u8])], report(i, &results));
        }
        proceed.send(()).unwrap();
        let order: Vec<usize> =
            (0..6).map(|_| outcomes.recv_timeout(PATIENCE).unwrap()).map(|(i, r)| r.map(|()| i).unwrap()).collect();
        assert_eq!(order, [0, 1, 2, 3, 4, 5]);
        assert_eq!(*commits.lock().unwrap(), [1, 5]);
    }

    /// Goal: one bad batch in a group fails only itself. Method: group [good, duplicate row,
    /// good] behind a held commit; the middle one gets the duplicate error, the others commit.
    #[test]
    fn a_bad_batch_in_a_group_fails_only_itself() {
        let (started_tx, started) = mpsc::channel();
        let (proceed, proceed_rx) = mpsc::channel();
        let mem = MemStore::new();
        let store = Counting {
            inner: mem.clone(),
            commits: Arc::default(),
            gate: Some((started_tx, proceed_rx)),
            delay: Duration::ZERO,
        };
        let committer = GroupCommitter::spawn(Box::new(store)).unwrap();
        let (results, outcomes) = mpsc::channel();
        committer.submit(vec![], report(0, &results));
        started.recv_timeout(PATIENCE).unwrap();
        committer.submit(vec![append("a", 1, vec![1])], report(1, &results));
        committer.submit(vec![append("b", 1, vec![1]), append("b", 1, vec![2])], report(2, &results));
        committer.submit(vec![append("c", 1, vec![1])], report(3, &results));
        proceed.send(()).unwrap();
        let got: Vec<(usize, Result<(), StoreError>)> =
            (0..4).map(|_| outcomes.recv_timeout(PATIENCE).unwrap()).collect();
        assert!(got[0].1.is_ok() && got[1].1.is_ok() && got[3].1.is_ok(), "{got:?}");
        assert!(matches!(&got[2].1, Err(StoreError::DuplicateJournalRow { run, seq_id: 1 }) if run == "b"), "{got:?}");
        let mut mem = mem;
        let runs: Vec<String> = mem.load().unwrap().journal.into_iter().map(|j| j.run).collect();
        assert_eq!(runs, ["a", "c"]);
    }

    /// Goal: a panicking store does not hang its callers. Method: the store panics on commit;
    /// that batch and every later one get `Panicked` within the timeout.
    #[test]
    fn a_panicking_store_fails_its_callers_instead_of_hanging_them() {
        let committer = GroupCommitter::spawn(Box::new(Panicking)).unwrap();
        let (results, outcomes) = mpsc::channel();
        for i in 0..3 {
            committer.submit(vec![append("r", i as u64, vec![])], report(i, &results));
        }
        for _ in 0..3 {
            let (_, r) = outcomes.recv_timeout(PATIENCE).unwrap();
            assert!(matches!(&r, Err(StoreError::Panicked { why }) if why == "disk on fire"), "{r:?}");
        }
        committer.submit(vec![], report(3, &results));
        assert!(matches!(outcomes.recv_timeout(PATIENCE), Ok((3, Err(StoreError::Panicked { .. })))));
    }

    /// Goal: a batch that can never run reports instead of vanishing. Method: a batch dropped
    /// unrun (as when the store thread dies with it queued) reports `Stopped`; and dropping the
    /// committer first commits what is queued.
    #[test]
    fn dropped_batches_report_stopped_and_dropping_the_committer_flushes() {
        let (results, outcomes) = mpsc::channel();
        drop(Batch { ops: vec![], done: Some(report(0, &results)) });
        assert!(matches!(outcomes.try_recv(), Ok((0, Err(StoreError::Stopped)))));
        let mem = MemStore::new();
        let store =
            Counting { inner: mem.clone(), commits: Arc::default(), gate: None, delay: Duration::from_millis(5) };
        let committer = GroupCommitter::spawn(Box::new(store)).unwrap();
        for i in 0..10 {
            committer.submit(vec![append("r", i as u64, vec![])], report(i, &results));
        }
        drop(committer);
        let got: Vec<_> = outcomes.try_iter().collect();
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|(_, r)| r.is_ok()));
        let mut mem = mem;
        assert_eq!(mem.load().unwrap().journal.len(), 10);
    }
}
