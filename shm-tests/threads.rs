//! Many threads using one `&Pool` at once.

mod common;

use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

use common::{Rng, deadline};
use shmpool::Pool;

#[test]
fn eight_threads_running_many_maps() {
    deadline(180, || {
        let pool = Pool::new(2).unwrap();
        let barrier = Barrier::new(8);
        thread::scope(|scope| {
            for t in 0..8u64 {
                let (pool, barrier) = (&pool, &barrier);
                scope.spawn(move || {
                    let mut rng = Rng(0x1234_5678 + t);
                    barrier.wait();
                    for round in 0..60 {
                        let n = match rng.below(4) {
                            0 => rng.below(8) as usize,
                            1 => rng.below(1_000) as usize,
                            2 => rng.below(50_000) as usize,
                            _ => 200_003,
                        };
                        match round % 4 {
                            0 => {
                                let xs: Vec<u64> = (0..n as u64).map(|i| i ^ t).collect();
                                let ys = pool.map(&xs, |x| x.wrapping_mul(0x9e37_79b9)).unwrap();
                                assert!(
                                    xs.iter()
                                        .zip(ys.iter())
                                        .all(|(&x, &y)| y == x.wrapping_mul(0x9e37_79b9))
                                );
                            }
                            1 => {
                                let xs: Vec<f32> = (0..n).map(|i| i as f32).collect();
                                let shm = pool.to_shm(&xs).unwrap();
                                let ys = pool.map_with(t as f32, &shm, |k, x| x * k).unwrap();
                                assert!(
                                    ys.iter()
                                        .enumerate()
                                        .all(|(i, &y)| y == i as f32 * t as f32)
                                );
                            }
                            2 => {
                                let v = pool.apply(n as u64, |x| x * 2 + 1).unwrap();
                                assert_eq!(v, n as u64 * 2 + 1);
                            }
                            _ => {
                                let xs: Vec<u32> = (0..n as u32).collect();
                                let r = pool.map_async(&xs, |x| x.count_ones()).unwrap();
                                let a = pool.apply_async(t, |x| x + 7).unwrap();
                                let ys = r.get().unwrap();
                                assert!(
                                    xs.iter().zip(ys.iter()).all(|(&x, &y)| y == x.count_ones())
                                );
                                assert_eq!(a.get().unwrap(), t + 7);
                            }
                        }
                    }
                });
            }
        });
        let s = pool.stats();
        assert_eq!(s.jobs_failed, 0);
        assert_eq!(s.jobs_completed, s.jobs_submitted);
        assert_eq!(s.arena_in_use, 0, "every block went back to the arena");
    })
}

#[test]
fn a_small_ring_under_contention() {
    deadline(120, || {
        let pool = Pool::builder().workers(2).ring_size(3).build().unwrap();
        thread::scope(|scope| {
            for t in 0..6u32 {
                let pool = &pool;
                scope.spawn(move || {
                    for i in 0..300u32 {
                        let x = t * 1000 + i;
                        if i % 2 == 0 {
                            assert_eq!(pool.apply(x, |v| v + 1).unwrap(), x + 1);
                        } else {
                            assert_eq!(
                                pool.apply_async(x, |v| v * 2).unwrap().get().unwrap(),
                                x * 2
                            );
                        }
                    }
                });
            }
        });
        assert_eq!(pool.stats().jobs_completed, 1800);
    })
}

#[test]
fn stats_taken_while_threads_submit_and_cancel_add_up() {
    deadline(60, || {
        let pool = Pool::builder().workers(2).spin(0).build().unwrap();
        let stop = AtomicBool::new(false);
        thread::scope(|scope| {
            for t in 0..3 {
                let (pool, stop) = (&pool, &stop);
                scope.spawn(move || {
                    while !stop.load(Relaxed) {
                        match t {
                            0 => assert_eq!(pool.apply(1u32, |x| x + 1).unwrap(), 2),
                            1 => assert_eq!(
                                pool.apply_async(2u32, |x| x + 1).unwrap().get().unwrap(),
                                3
                            ),
                            _ => pool.apply_async(3u32, |x| x + 1).unwrap().cancel(),
                        }
                    }
                });
            }
            // A snapshot never counts a job finished before it counts it
            // submitted, a cancellation before its failure, or a profiled
            // job before its completion, whatever the other threads do
            // between its loads.
            let start = Instant::now();
            let mut snapshots = 0u64;
            let mut wrong = None;
            while wrong.is_none() && start.elapsed() < Duration::from_secs(2) {
                let s = pool.stats();
                snapshots += 1;
                let adds_up = s.jobs_completed + s.jobs_failed <= s.jobs_submitted
                    && s.jobs_cancelled <= s.jobs_failed
                    && s.profile.jobs <= s.jobs_completed;
                wrong = (!adds_up).then_some(s);
            }
            // Stopped before any assertion, so that a failure ends the scope.
            stop.store(true, Relaxed);
            assert!(
                wrong.is_none(),
                "snapshot {snapshots} does not add up: {wrong:?}"
            );
        });
        let s = pool.stats();
        assert_eq!(s.jobs_completed + s.jobs_failed, s.jobs_submitted, "{s:?}");
    })
}
