//! `apply`: one call in one worker, with arguments and results small enough
//! to travel in the slot and large enough to need the arena.

mod common;

use bytemuck::Zeroable;
use bytemuck_derive::{Pod, Zeroable};
use common::deadline;
use shmpool::{Error, Pool};

#[derive(Clone, Copy, Debug, PartialEq, Zeroable, Pod)]
#[repr(C)]
struct Matrix4 {
    m: [[f64; 4]; 4],
}

fn transpose(a: Matrix4) -> Matrix4 {
    let mut t = Matrix4::zeroed();
    for i in 0..4 {
        for j in 0..4 {
            t.m[i][j] = a.m[j][i];
        }
    }
    t
}

#[test]
fn small_values_round_trip() {
    deadline(30, || {
        let pool = Pool::new(2).unwrap();
        assert_eq!(pool.apply(7u64, |x| x.pow(3)).unwrap(), 343);
        assert_eq!(pool.apply(-2.5f64, f64::abs).unwrap(), 2.5);
        assert_eq!(pool.apply(200u8, |x| x.wrapping_add(100)).unwrap(), 44);
        assert_eq!(pool.apply((), |()| 5u16).unwrap(), 5);
        pool.apply(9u32, |_| ()).unwrap();
        let m = Matrix4 {
            m: [
                [1., 2., 3., 4.],
                [5., 6., 7., 8.],
                [9., 10., 11., 12.],
                [13., 14., 15., 16.],
            ],
        };
        assert_eq!(pool.apply(m, transpose).unwrap(), transpose(m));
    })
}

#[test]
fn large_values_go_through_the_arena() {
    deadline(30, || {
        let pool = Pool::new(2).unwrap();
        let before = pool.stats().arena_in_use;
        let big = [3u64; 512]; // 4 KiB: larger than a slot's inline area
        let sum = pool
            .apply(big, |a: [u64; 512]| a.iter().sum::<u64>())
            .unwrap();
        assert_eq!(sum, 1536);
        let filled = pool.apply(11u32, |x| [u64::from(x); 1024]).unwrap();
        assert!(filled.iter().all(|&v| v == 11));
        assert_eq!(
            pool.stats().arena_in_use,
            before,
            "argument and result blocks are freed"
        );
    })
}

#[test]
fn many_sequential_applies_reuse_slots() {
    deadline(60, || {
        let pool = Pool::builder().workers(2).ring_size(4).build().unwrap();
        for i in 0..2_000u64 {
            assert_eq!(pool.apply(i, |x| x * 3 + 1).unwrap(), i * 3 + 1);
        }
        let s = pool.stats();
        assert_eq!(
            (s.jobs_submitted, s.jobs_completed, s.jobs_failed),
            (2000, 2000, 0)
        );
    })
}

#[test]
fn the_ring_reserves_more_slots_while_jobs_queue_up() {
    deadline(60, || {
        // A new region reserves 16 slots; the rest are reserved when jobs
        // fill them. One worker, held by a slow first job, makes the next
        // 200 wait in 200 slots at once (the ring doubles four times, 16 → 256).
        let pool = Pool::builder().workers(1).ring_size(256).build().unwrap();
        let slow = pool.apply_async(3_000u64, common::sleepy).unwrap();
        let queued: Vec<_> = (0..200u64)
            .map(|i| pool.apply_async(i, |x| x * 2 + 1).unwrap())
            .collect();
        assert!(!slow.ready(), "all 201 jobs were in flight together");
        assert_eq!(slow.get().unwrap(), 3_000);
        for (i, r) in queued.into_iter().enumerate() {
            assert_eq!(r.get().unwrap(), i as u64 * 2 + 1);
        }
        // And every slot, old or new, takes jobs again.
        let xs: Vec<u64> = (0..1000).collect();
        let all: Vec<_> = (0..300)
            .map(|_| pool.map_async(&xs, |x| x + 1).unwrap())
            .collect();
        for r in all {
            assert_eq!(r.get().unwrap()[999], 1000);
        }
    })
}

#[test]
fn a_panic_is_an_error_and_the_pool_stays_usable() {
    deadline(30, || {
        let pool = Pool::new(1).unwrap();
        let err = pool.apply(0u32, |x| 100 / x).unwrap_err();
        match &err {
            Error::TaskPanicked {
                message,
                range,
                location,
                ..
            } => {
                assert!(message.contains("divide by zero"), "{message}");
                assert_eq!(range, &(0..1));
                assert!(
                    location.as_deref().is_some_and(|l| l.contains("apply.rs")),
                    "{location:?}"
                );
            }
            other => panic!("expected TaskPanicked, got {other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("task panicked on elements 0..1"),
            "{err}"
        );
        let err = pool
            .apply(3u8, |x| -> u8 { panic!("custom {x}") })
            .unwrap_err();
        assert!(matches!(err, Error::TaskPanicked { ref message, .. } if message == "custom 3"));
        assert_eq!(pool.apply(4u32, |x| 100 / x).unwrap(), 25);
        assert_eq!(
            pool.stats().worker_restarts,
            0,
            "a panic does not cost a worker"
        );
    })
}

/// A task that panics and catches its own panic: the hook records where.
fn catches_its_own_panic(x: u64) -> u64 {
    let caught = std::panic::catch_unwind(|| panic!("caught by the task itself"));
    assert!(caught.is_err());
    x
}

/// A task that unwinds with `resume_unwind`, which runs no panic hook: where
/// it happened is unknown.
fn resumes_a_fresh_payload(x: u64) -> u64 {
    if x > 0 {
        std::panic::resume_unwind(Box::new("resumed"));
    }
    x
}

#[test]
fn a_panic_is_not_given_the_location_of_an_earlier_caught_one() {
    deadline(30, || {
        // One worker, so both jobs run in the same process; and the caller,
        // whose thread records locations the same way.
        for caller in [false, true] {
            let pool = Pool::builder()
                .workers(1)
                .caller_runs(caller)
                .build()
                .unwrap();
            assert_eq!(pool.apply(1u64, catches_its_own_panic).unwrap(), 1);
            let err = pool.apply(1u64, resumes_a_fresh_payload).unwrap_err();
            match &err {
                Error::TaskPanicked {
                    message, location, ..
                } => {
                    assert_eq!(message, "resumed");
                    assert_eq!(location, &None, "caller_runs {caller}");
                }
                other => panic!("expected TaskPanicked, got {other:?}"),
            }
        }
    })
}
