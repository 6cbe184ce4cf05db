//! The queue between callers that block and a worker thread that answers them in batches,
//! for the services that commit many callers' requests together.
//!
//! A caller queues a job and waits for its answer. A worker takes what is queued, up to a
//! batch, in arrival order, and answers each job of it. Only the callers of one batch wake
//! when it is answered, with one system call for all of them. When the queue holds its
//! capacity, callers wait for room or are told [`Error::Busy`]; once it is closed they are
//! told [`Error::Closed`]. Nobody waits for a worker that is gone: a batch dropped without
//! its answers, and every job still queued when a worker unwinds, are answered with the
//! queue's error for abandoned jobs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Where one caller's answer is left.
type Slot<A> = Arc<Mutex<Option<Result<A>>>>;

/// What the callers queued between two takes wait on, so that answering a batch wakes
/// its callers and no others.
#[derive(Default)]
struct Wakeup {
    lock: Mutex<()>,
    cv: Condvar,
}

impl Wakeup {
    /// Waits until `slot` is filled and empties it.
    fn wait<A>(&self, slot: &Slot<A>) -> Result<A> {
        // The slot is checked under `lock`, and `wake` takes `lock` after the slot is
        // filled and before signalling, so no wake-up is missed.
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(answer) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return answer;
            }
            guard = self.cv.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn wake(&self) {
        drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()));
        self.cv.notify_all();
    }
}

struct Queued<J, A> {
    job: J,
    slot: Slot<A>,
    wakeup: Arc<Wakeup>,
}

struct State<J, A> {
    queue: VecDeque<Queued<J, A>>,
    closed: bool,
    /// What the jobs queued from now on wait on.
    wakeup: Arc<Wakeup>,
}

/// A queue of jobs `J` answered with `A`.
pub(crate) struct Queue<J, A> {
    state: Mutex<State<J, A>>,
    /// Signalled when a job is queued or the queue closes.
    work: Condvar,
    /// Signalled when jobs are taken off the queue or it closes.
    room: Condvar,
    capacity: usize,
    in_flight: AtomicUsize,
    /// The key an abandoned job is reported under.
    key: fn(&J) -> String,
    /// The answer of a job under that key whose worker is gone.
    abandoned: fn(String) -> Error,
}

impl<J, A> Queue<J, A> {
    /// A queue that holds at most `capacity` jobs not yet taken. A job whose worker is
    /// gone is answered `abandoned(key(job))`.
    pub(crate) fn new(
        capacity: usize,
        key: fn(&J) -> String,
        abandoned: fn(String) -> Error,
    ) -> Self {
        Queue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                wakeup: Arc::default(),
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            capacity,
            in_flight: AtomicUsize::new(0),
            key,
            abandoned,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<J, A>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job` and waits for its answer. While the queue is full it waits for room,
    /// or answers [`Error::Busy`] at once when `wait` is false; [`Error::Closed`] once the
    /// queue is closed.
    pub(crate) fn submit(&self, job: J, wait: bool) -> Result<A> {
        let slot: Slot<A> = Arc::default();
        let wakeup = {
            let mut state = self.lock();
            while !state.closed && state.queue.len() >= self.capacity {
                if !wait {
                    return Err(Error::Busy);
                }
                state = self.room.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.closed {
                return Err(Error::Closed);
            }
            let wakeup = state.wakeup.clone();
            state.queue.push_back(Queued {
                job,
                slot: slot.clone(),
                wakeup: wakeup.clone(),
            });
            wakeup
        };
        self.work.notify_one();
        wakeup.wait(&slot)
    }

    /// Waits for jobs and takes at most `max` of them in arrival order, having given a
    /// partial batch up to `gather` to fill; `None` once the queue is closed and drained.
    pub(crate) fn take(&self, max: usize, gather: Duration) -> Option<Batch<'_, J, A>> {
        let mut state = self.lock();
        while state.queue.is_empty() {
            if state.closed {
                return None;
            }
            state = self.work.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if !gather.is_zero() {
            let until = Instant::now() + gather;
            while !state.closed && state.queue.len() < max {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = self
                    .work
                    .wait_timeout(state, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        let n = state.queue.len().min(max);
        let taken: Vec<Queued<J, A>> = state.queue.drain(..n).collect();
        // Jobs queued from now on wait for a later batch.
        state.wakeup = Arc::default();
        self.in_flight.fetch_add(n, Ordering::Relaxed);
        drop(state);
        self.room.notify_all();
        Some(Batch::new(self, taken))
    }

    /// Jobs queued and not yet taken.
    pub(crate) fn depth(&self) -> usize {
        self.lock().queue.len()
    }

    /// Jobs taken and not yet answered.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Takes no more jobs: later submits answer [`Error::Closed`], and `take` answers
    /// `None` once the jobs queued before are taken.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.work.notify_all();
        self.room.notify_all();
    }

    /// Closes the queue and answers every job still in it as abandoned.
    fn abandon_queued(&self) {
        let queued: Vec<Queued<J, A>> = {
            let mut state = self.lock();
            state.closed = true;
            state.queue.drain(..).collect()
        };
        self.room.notify_all();
        self.work.notify_all();
        let wakeups = wakeups_of(&queued);
        let (slots, answers): (Vec<_>, Vec<_>) = queued
            .into_iter()
            .map(|q| (q.slot, Err((self.abandoned)((self.key)(&q.job)))))
            .unzip();
        deliver(slots, answers, &wakeups);
    }

    /// A guard for a worker thread's whole run: should the worker unwind, the queue closes
    /// and the jobs left in it are answered as abandoned.
    pub(crate) fn worker_guard(&self) -> WorkerGuard<'_, J, A> {
        WorkerGuard(self)
    }
}

/// See [`Queue::worker_guard`].
pub(crate) struct WorkerGuard<'q, J, A>(&'q Queue<J, A>);

impl<J, A> Drop for WorkerGuard<'_, J, A> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.abandon_queued();
        }
    }
}

/// Jobs taken off a queue, with where their answers go.
pub(crate) struct Batch<'q, J, A> {
    /// The jobs, in arrival order.
    pub(crate) jobs: Vec<J>,
    /// Their callers.
    pub(crate) answers: Answers<'q, A>,
}

impl<'q, J, A> Batch<'q, J, A> {
    fn new(queue: &'q Queue<J, A>, taken: Vec<Queued<J, A>>) -> Self {
        let mut answers = Answers {
            slots: Vec::with_capacity(taken.len()),
            wakeups: wakeups_of(&taken),
            keys: Vec::with_capacity(taken.len()),
            in_flight: &queue.in_flight,
            abandoned: queue.abandoned,
        };
        let mut jobs = Vec::with_capacity(taken.len());
        for q in taken {
            answers.keys.push((queue.key)(&q.job));
            answers.slots.push(q.slot);
            jobs.push(q.job);
        }
        Batch { jobs, answers }
    }
}

/// The distinct wake-ups of `queued`'s callers (they come in runs).
fn wakeups_of<J, A>(queued: &[Queued<J, A>]) -> Vec<Arc<Wakeup>> {
    let mut all: Vec<Arc<Wakeup>> = Vec::new();
    for q in queued {
        if !all.last().is_some_and(|w| Arc::ptr_eq(w, &q.wakeup)) {
            all.push(q.wakeup.clone());
        }
    }
    all
}

/// Leaves each answer in its slot, then wakes the callers: one call per distinct wake-up.
fn deliver<A>(
    slots: Vec<Slot<A>>,
    answers: impl IntoIterator<Item = Result<A>>,
    wakeups: &[Arc<Wakeup>],
) {
    for (slot, answer) in slots.into_iter().zip(answers) {
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
    }
    for wakeup in wakeups {
        wakeup.wake();
    }
}

/// The callers of a batch. Dropped before [`Answers::answer`] (its worker unwound), it
/// answers every caller as abandoned.
pub(crate) struct Answers<'q, A> {
    slots: Vec<Slot<A>>,
    wakeups: Vec<Arc<Wakeup>>,
    /// The jobs' keys, for their answers should the worker be gone.
    keys: Vec<String>,
    in_flight: &'q AtomicUsize,
    abandoned: fn(String) -> Error,
}

impl<A> Answers<'_, A> {
    /// Hands each caller its answer, in the jobs' order, then wakes them. A caller left
    /// without one (a worker that answers fewer jobs than it took) is answered as
    /// abandoned.
    pub(crate) fn answer(mut self, answers: impl IntoIterator<Item = Result<A>>) {
        self.finish(answers);
    }

    fn finish(&mut self, answers: impl IntoIterator<Item = Result<A>>) {
        let slots = std::mem::take(&mut self.slots);
        let keys = std::mem::take(&mut self.keys);
        self.in_flight.fetch_sub(slots.len(), Ordering::Relaxed);
        let abandoned = self.abandoned;
        let mut answers = answers.into_iter();
        let all = keys
            .into_iter()
            .map(|key| answers.next().unwrap_or_else(|| Err(abandoned(key))));
        deliver(slots, all, &self.wakeups);
    }
}

impl<A> Drop for Answers<'_, A> {
    fn drop(&mut self) {
        if !self.slots.is_empty() {
            self.finish(std::iter::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    fn gone(key: String) -> Error {
        Error::NotRecorded {
            id: key,
            outcome_unknown: true,
            reason: "gone".into(),
        }
    }

    fn queue(capacity: usize) -> Arc<Queue<u32, u32>> {
        Arc::new(Queue::new(capacity, |job: &u32| job.to_string(), gone))
    }

    /// Callers of `jobs`, each submitting one and returning what it was answered.
    fn callers(q: &Arc<Queue<u32, u32>>, jobs: &[u32]) -> Vec<thread::JoinHandle<Result<u32>>> {
        jobs.iter()
            .map(|&job| {
                let q = q.clone();
                thread::spawn(move || q.submit(job, true))
            })
            .collect()
    }

    /// Waits until `n` jobs are queued.
    fn queued(q: &Queue<u32, u32>, n: usize) {
        while q.depth() < n {
            thread::yield_now();
        }
    }

    #[test]
    fn each_caller_gets_the_answer_to_its_own_job() {
        let q = queue(16);
        let waiting = callers(&q, &[1, 2, 3, 4, 5]);
        queued(&q, 5);
        let batch = q.take(2, Duration::ZERO).expect("jobs are queued");
        assert_eq!(batch.jobs.len(), 2);
        assert_eq!((q.depth(), q.in_flight()), (3, 2));
        let answers: Vec<Result<u32>> = batch.jobs.iter().map(|j| Ok(j * 10)).collect();
        batch.answers.answer(answers);
        let batch = q.take(16, Duration::ZERO).expect("jobs are queued");
        assert_eq!(batch.jobs.len(), 3);
        let answers: Vec<Result<u32>> = batch.jobs.iter().map(|j| Ok(j * 10)).collect();
        batch.answers.answer(answers);
        let mut got: Vec<u32> = waiting
            .into_iter()
            .map(|t| t.join().expect("caller").expect("answered"))
            .collect();
        got.sort_unstable();
        assert_eq!(got, [10, 20, 30, 40, 50]);
        assert_eq!((q.depth(), q.in_flight()), (0, 0));
        q.close();
        assert!(matches!(q.submit(6, true), Err(Error::Closed)));
        assert!(q.take(16, Duration::ZERO).is_none());
    }

    #[test]
    fn a_full_queue_refuses_a_caller_that_will_not_wait() {
        let q = queue(1);
        let waiting = callers(&q, &[7]);
        queued(&q, 1);
        assert!(matches!(q.submit(8, false), Err(Error::Busy)));
        let batch = q.take(16, Duration::ZERO).expect("one job");
        assert_eq!(batch.jobs, [7]);
        batch.answers.answer([Ok(70)]);
        assert_eq!(
            waiting.into_iter().next().unwrap().join().unwrap().unwrap(),
            70
        );
    }

    #[test]
    fn a_caller_the_worker_gave_no_answer_is_not_left_waiting() {
        let q = queue(16);
        let waiting = callers(&q, &[1, 2]);
        queued(&q, 2);
        let batch = q.take(16, Duration::ZERO).expect("jobs are queued");
        let first = batch.jobs[0];
        batch.answers.answer([Ok(first * 10)]);
        let mut got: Vec<String> = waiting
            .into_iter()
            .map(|t| match t.join().expect("caller") {
                Ok(answer) => answer.to_string(),
                Err(Error::NotRecorded { id, .. }) => format!("abandoned {id}"),
                Err(other) => panic!("unexpected {other:?}"),
            })
            .collect();
        got.sort();
        let second = if first == 1 { 2 } else { 1 };
        let mut expected = vec![(first * 10).to_string(), format!("abandoned {second}")];
        expected.sort();
        assert_eq!(got, expected);
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn a_worker_that_unwinds_leaves_nobody_waiting() {
        let q = queue(16);
        let waiting = callers(&q, &[1, 2, 3, 4]);
        queued(&q, 4);
        let worker = {
            let q = q.clone();
            thread::spawn(move || {
                let _guard = q.worker_guard();
                let _batch = q.take(2, Duration::ZERO).expect("jobs are queued");
                panic!("a bug in the worker");
            })
        };
        assert!(worker.join().is_err(), "the worker unwound");
        let mut keys: Vec<String> = waiting
            .into_iter()
            .map(|t| match t.join().expect("caller") {
                Err(Error::NotRecorded {
                    id,
                    outcome_unknown: true,
                    ..
                }) => id,
                other => panic!("expected the abandoned error, got {other:?}"),
            })
            .collect();
        keys.sort();
        assert_eq!(keys, ["1", "2", "3", "4"]);
        assert_eq!((q.depth(), q.in_flight()), (0, 0));
        assert!(matches!(q.submit(5, true), Err(Error::Closed)));
    }
}
