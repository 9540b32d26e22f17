//! A team of worker threads for the many small matrix products of a decode step.
//!
//! A batch-1 decode step of a small model is about 120 matrix products of 10 to 100 microseconds each. Rayon
//! (and any pool whose idle workers sleep) pays two thread wake-ups per product when it is called from outside the
//! pool: about as long as the product itself. Here the calling thread works too, and idle workers spin for a short
//! while ([`SPIN`]) before they park, so back-to-back products find them awake, as llama.cpp's and OpenMP's
//! thread pools do. Written by hand because the spin-then-park policy and the caller's participation are the
//! point, and no maintained crate exposes both.
//!
//! Protocol: the caller publishes a job (a pointer to its closure, valid until it returns), workers count
//! themselves in (`active`) before reading the pointer, and the caller withdraws the pointer and waits for
//! `active` to drop to zero before returning, so no worker can hold a stale job. Tasks are claimed from an atomic
//! counter. One job runs at a time; a caller that finds the team busy (another model's thread) runs its tasks
//! alone. A task's panic is caught where it happens and raised again on the caller's thread after the job is
//! withdrawn, as rayon does, so no worker dies and no caller waits forever.

use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(300);

type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// The current job (a pointer to the caller's `Job`), or null.
    job: AtomicPtr<Job<'static>>,
    /// Bumped before each job is published (a new job may sit at the same address as the last).
    seq: AtomicUsize,
    tasks: AtomicUsize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// How long workers spin for the next job after this one, in microseconds.
    spin_us: AtomicU64,
    /// Workers between reading `job` and finishing with it.
    active: AtomicUsize,
    sleeping: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
    /// Held by the caller that owns the team for one job.
    owner: Mutex<()>,
    /// The first panic of a task of the current job, raised again on the caller's thread.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

struct Team {
    shared: &'static Shared,
    workers: usize,
}

fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            job: AtomicPtr::new(std::ptr::null_mut()),
            seq: AtomicUsize::new(0),
            spin_us: AtomicU64::new(SPIN.as_micros() as u64),
            tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
            owner: Mutex::new(()),
            panic: Mutex::new(None),
        }));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut workers = 0;
        for i in 1..cores {
            let spawned =
                std::thread::Builder::new().name(format!("radixserve-team-{i}")).spawn(move || worker(shared));
            workers += spawned.is_ok() as usize;
        }
        Team { shared, workers }
    })
}

/// Runs the tasks of the current job until none is left.
fn run_tasks(s: &Shared, job: Job<'_>) {
    let tasks = s.tasks.load(SeqCst);
    loop {
        let i = s.next.fetch_add(1, SeqCst);
        if i >= tasks {
            break;
        }
        // A panicking task still counts as done (else the caller would wait forever, and a worker would die);
        // the caller raises the panic on its own thread once every worker is out of the job.
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(i))) {
            s.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(payload);
        }
        s.done.fetch_add(1, SeqCst);
    }
}

fn worker(s: &'static Shared) {
    let mut last = 0;
    let fresh = |last: usize| !s.job.load(SeqCst).is_null() && s.seq.load(SeqCst) != last;
    loop {
        // Spin, then park, until a job this worker has not run is published.
        let spin = Duration::from_micros(s.spin_us.load(SeqCst));
        let start = Instant::now();
        let mut spins = 0u32;
        while !fresh(last) {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > spin {
                let mut guard = s.park.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_add(1, SeqCst);
                while !fresh(last) {
                    guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                s.sleeping.fetch_sub(1, SeqCst);
                break;
            }
        }
        s.active.fetch_add(1, SeqCst);
        let p = s.job.load(SeqCst);
        let seq = s.seq.load(SeqCst);
        if !p.is_null() {
            // SAFETY: a non-null `job` read after counting ourselves in `active` stays valid until we count
            // ourselves out: its caller withdraws it and then waits for `active` to reach zero before returning.
            run_tasks(s, unsafe { *p });
            last = seq;
        }
        s.active.fetch_sub(1, SeqCst);
    }
}

/// A pointer to a buffer whose disjoint parts the tasks of one [`run`] write: each task forms its own slice from
/// it. Whoever builds one promises that no two tasks write the same element and that the buffer outlives the run.
pub(crate) struct SharedMut<T = f32>(*mut T);

impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub(crate) fn new(p: *mut T) -> Self {
        Self(p)
    }
    /// The pointer (a method, so closures capture the whole `SharedMut` rather than its `!Sync` field).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}
// SAFETY: only used to write disjoint regions of one buffer that outlives the tasks (the constructor's promise).
unsafe impl<T> Send for SharedMut<T> {}
// SAFETY: as above; shared references only copy the pointer value.
unsafe impl<T> Sync for SharedMut<T> {}

thread_local! {
    static WIDTH: Cell<usize> = const { Cell::new(0) };
}

/// Threads (the caller included) that [`run`] uses on this thread from now on (0: every core).
pub fn set_width(n: usize) {
    WIDTH.with(|w| w.set(n));
}

/// Threads [`run`] would use on this thread.
pub fn width() -> usize {
    let t = team();
    match WIDTH.with(Cell::get) {
        0 => t.workers + 1,
        n => n.min(t.workers + 1),
    }
}

/// Calls `f(0..tasks)`, each index once, on the calling thread and the team's workers; returns when all are done.
/// The workers then spin for the next job a short while ([`SPIN`]).
pub fn run(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    run_with_spin(tasks, f, SPIN)
}

/// [`run`] for a job followed by other threads' work (libtorch's GEMM in a prefill): the workers park as soon as
/// it is done instead of spinning on cores that work needs.
pub fn run_then_park(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    run_with_spin(tasks, f, Duration::ZERO)
}

fn run_with_spin(tasks: usize, f: &(dyn Fn(usize) + Sync), spin: Duration) {
    if tasks <= 1 || width() <= 1 {
        (0..tasks).for_each(f);
        return;
    }
    let t = team();
    let s = t.shared;
    // Another thread's job in flight: do this one alone rather than wait.
    let Ok(_owner) = s.owner.try_lock() else {
        (0..tasks).for_each(f);
        return;
    };
    let job: Job<'_> = f;
    s.tasks.store(tasks, SeqCst);
    s.next.store(0, SeqCst);
    s.done.store(0, SeqCst);
    s.spin_us.store(spin.as_micros() as u64, SeqCst);
    s.seq.fetch_add(1, SeqCst);
    // SAFETY (lifetime erasure): the pointer is withdrawn, and every worker that read it has finished, before
    // this function returns, while `job` is still alive.
    let erased: *const Job<'static> = (&job as *const Job<'_>).cast();
    s.job.store(erased as *mut Job<'static>, SeqCst);
    if s.sleeping.load(SeqCst) > 0 {
        let _guard = s.park.lock().unwrap_or_else(|e| e.into_inner());
        s.wake.notify_all();
    }
    run_tasks(s, job);
    while s.done.load(SeqCst) < tasks {
        std::hint::spin_loop();
    }
    s.job.store(std::ptr::null_mut(), SeqCst);
    while s.active.load(SeqCst) > 0 {
        std::hint::spin_loop();
    }
    let panic = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(payload) = panic {
        std::panic::resume_unwind(payload);
    }
}

/// Calls `f(first, part)` for consecutive parts of `rows` (whole rows of `row_len` items, the part starting at
/// row `first`), the parts spread over the team: at most one per thread and none under `min_rows` rows (a short
/// job runs on the calling thread alone). For row-wise work between the products (norms, activations,
/// quantizing a product's input) that would otherwise leave the other cores spinning.
pub fn rows_mut<T: Send>(rows: &mut [T], row_len: usize, min_rows: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
    assert!(row_len > 0 && rows.len().is_multiple_of(row_len));
    let n = rows.len() / row_len;
    let parts = width().min(n / min_rows.max(1)).max(1);
    if parts <= 1 {
        f(0, rows);
        return;
    }
    let per = n.div_ceil(parts);
    // A lock per part only to hand `&mut` across threads safely: each part is taken by exactly one task.
    let chunks: Vec<std::sync::Mutex<(usize, &mut [T])>> =
        rows.chunks_mut(per * row_len).enumerate().map(|(i, c)| std::sync::Mutex::new((i * per, c))).collect();
    run(chunks.len(), &|i| {
        let mut part = chunks[i].lock().unwrap_or_else(|e| e.into_inner());
        let (first, ref mut rows) = *part;
        f(first, rows);
    });
}

/// `items.iter().map(f).collect()` with the items spread over the team as in [`rows_mut`].
pub fn map<I: Sync, B: Send>(items: &[I], min_items: usize, f: &(dyn Fn(&I) -> B + Sync)) -> Vec<B> {
    let mut out: Vec<Option<B>> = items.iter().map(|_| None).collect();
    if !out.is_empty() {
        rows_mut(&mut out, 1, min_items, &|first, part| {
            for (o, item) in part.iter_mut().zip(&items[first..]) {
                *o = Some(f(item));
            }
        });
    }
    out.into_iter().map(|o| o.expect("rows_mut visits every item")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_mut_visits_every_row_once_in_whole_rows() {
        for (n, min) in [(0usize, 1usize), (1, 1), (7, 1), (64, 4), (1000, 8), (5, 100)] {
            let mut v = vec![0usize; n * 3];
            rows_mut(&mut v, 3, min, &|first, part| {
                assert!(part.len().is_multiple_of(3));
                for (r, row) in part.chunks_mut(3).enumerate() {
                    row.iter_mut().for_each(|x| *x += first + r + 1);
                }
            });
            assert!(v.chunks(3).enumerate().all(|(r, row)| row.iter().all(|&x| x == r + 1)), "{n} rows");
        }
    }

    #[test]
    fn every_task_runs_once_from_many_callers() {
        let callers: Vec<_> = (0..4)
            .map(|c| {
                std::thread::spawn(move || {
                    for round in 0..2000 {
                        let n = 1 + (round * 7 + c) % 13;
                        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                        run(n, &|i| {
                            hits[i].fetch_add(1, SeqCst);
                        });
                        assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "round {round}");
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
        set_width(1);
        assert_eq!(width(), 1);
        set_width(0);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_team_keeps_working() {
        let caught = std::panic::catch_unwind(|| {
            run(8, &|i| {
                if i == 5 {
                    panic!("task {i} failed");
                }
            })
        });
        let msg = caught.expect_err("the panic reaches the caller");
        assert_eq!(msg.downcast_ref::<String>().map(String::as_str), Some("task 5 failed"));
        let hits: Vec<AtomicUsize> = (0..8).map(|_| AtomicUsize::new(0)).collect();
        run(8, &|i| {
            hits[i].fetch_add(1, SeqCst);
        });
        assert!(hits.iter().all(|h| h.load(SeqCst) == 1));
    }
}
