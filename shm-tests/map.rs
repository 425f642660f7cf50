//! `map` and `map_with` against a serial `iter().map()`: sizes from 0 and 1
//! up, including sizes that do not divide evenly into ranges, several
//! element types, staged and zero-copy inputs; plus the arena's behaviour.

mod common;

use bytemuck::Pod;
use bytemuck_derive::{Pod, Zeroable};
use common::deadline;
use shmpool::{Error, Pool, ShmVec};

const SIZES: [usize; 5] = [0, 1, 7, 1000, 1_000_003];

#[derive(Clone, Copy, Debug, PartialEq, Zeroable, Pod)]
#[repr(C)]
struct Particle {
    x: f32,
    y: f32,
    id: u32,
    mass: f32,
}

#[derive(Clone, Copy, Debug, PartialEq, Zeroable, Pod)]
#[repr(C)]
struct Summary {
    r2: f64,
    id: u64,
}

fn particle(i: usize) -> Particle {
    Particle {
        x: i as f32 * 0.5,
        y: -(i as f32),
        id: i as u32,
        mass: 1.0 + (i % 7) as f32,
    }
}

fn summarize(p: Particle) -> Summary {
    Summary {
        r2: f64::from(p.x * p.x + p.y * p.y) * f64::from(p.mass),
        id: u64::from(p.id) * 3,
    }
}

/// Maps `input` both ways (as a `Vec`, staged, and as a `ShmVec`, in place)
/// and compares with the serial result.
fn check<T, U, F>(pool: &Pool, input: Vec<T>, f: F)
where
    T: Pod + std::fmt::Debug,
    U: Pod + PartialEq + std::fmt::Debug,
    F: Fn(T) -> U + Copy + Send + Sync + 'static,
{
    let expected: Vec<U> = input.iter().map(|&x| f(x)).collect();
    let staged = pool.map(&input, f).unwrap();
    assert_eq!(staged.len(), input.len());
    assert!(
        staged == expected,
        "staged map differs for {} elements",
        input.len()
    );
    let shared = pool.to_shm(&input).unwrap();
    let in_place = pool.map(&shared, f).unwrap();
    assert!(
        in_place == expected,
        "in-place map differs for {} elements",
        input.len()
    );
}

#[test]
fn u8_all_sizes() {
    deadline(120, || {
        let pool = Pool::new(3).unwrap();
        for n in SIZES {
            let input: Vec<u8> = (0..n).map(|i| i as u8).collect();
            check(&pool, input, |x: u8| x.wrapping_mul(31).wrapping_add(7));
        }
    })
}

#[test]
fn u32_all_sizes() {
    deadline(120, || {
        let pool = Pool::new(2).unwrap();
        for n in SIZES {
            let input: Vec<u32> = (0..n as u32).collect();
            check(&pool, input, |x: u32| x.rotate_left(5) ^ 0x9e37_79b9);
        }
    })
}

#[test]
fn f64_all_sizes() {
    deadline(120, || {
        let pool = Pool::new(4).unwrap();
        for n in SIZES {
            let input: Vec<f64> = (0..n).map(|i| i as f64 * 0.25 - 3.0).collect();
            check(&pool, input, |x: f64| x * x - 2.0 * x + 1.0);
            let roots: Vec<f64> = (0..n).map(|i| i as f64).collect();
            check(&pool, roots, f64::sqrt);
        }
    })
}

#[test]
fn pod_struct_all_sizes() {
    deadline(120, || {
        let pool = Pool::new(2).unwrap();
        for n in SIZES {
            let input: Vec<Particle> = (0..n).map(particle).collect();
            check(&pool, input, summarize);
        }
    })
}

#[test]
fn type_changing_and_wide_elements() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        // u8 -> f64: output eight times wider than input.
        check(
            &pool,
            (0..=255u8).cycle().take(10_001).collect(),
            |x: u8| f64::from(x) / 2.0,
        );
        // 512-byte elements.
        let wide: Vec<[u64; 64]> = (0..513u64).map(|i| [i; 64]).collect();
        check(&pool, wide, |a: [u64; 64]| a.iter().sum::<u64>());
        // Zero-sized output.
        let unit = pool.map(&[1u32, 2, 3], |_| ()).unwrap();
        assert_eq!(unit.len(), 3);
    })
}

#[test]
fn map_with_context() {
    #[derive(Clone, Copy, Zeroable, Pod)]
    #[repr(C)]
    struct Poly {
        c: [f64; 4],
    }
    deadline(60, || {
        let pool = Pool::new(3).unwrap();
        let ctx = Poly {
            c: [1.0, -2.0, 0.5, 3.0],
        };
        let eval = |p: &Poly, x: f64| ((p.c[3] * x + p.c[2]) * x + p.c[1]) * x + p.c[0];
        for n in SIZES {
            let xs: Vec<f64> = (0..n).map(|i| i as f64 / 100.0).collect();
            let expected: Vec<f64> = xs.iter().map(|&x| eval(&ctx, x)).collect();
            assert!(
                pool.map_with(ctx, &xs, eval).unwrap() == expected,
                "n = {n}"
            );
        }
        // A context too large for the slot's inline area goes to the arena.
        let big = [7u64; 256];
        let out = pool
            .map_with(big, &[1u64, 2, 3], |c: &[u64; 256], x| {
                c.iter().sum::<u64>() * x
            })
            .unwrap();
        assert_eq!(out, vec![1792, 3584, 5376]);
    })
}

#[test]
fn zero_copy_for_shared_inputs_one_copy_otherwise() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let n = 100_000;
        let data: Vec<f64> = (0..n).map(|i| i as f64).collect();
        assert_eq!(pool.stats().bytes_staged, 0);

        let shared = pool.to_shm(&data).unwrap();
        let out = pool.map(&shared, |x| x + 1.0).unwrap();
        assert_eq!(out[n - 1], n as f64);
        assert_eq!(
            pool.stats().bytes_staged,
            0,
            "a ShmVec input is read in place"
        );

        // A sub-slice of a ShmVec, and an output reused as the next input,
        // are in the arena too.
        let tail = pool.map(&shared[10..], |x| x * 2.0).unwrap();
        assert_eq!(tail[0], 20.0);
        let chained = pool.map(&out, |x| x - 1.0).unwrap();
        assert!(chained == data);
        assert_eq!(pool.stats().bytes_staged, 0);

        // A Vec is copied in exactly once (none, when the shared heap is
        // the global allocator: the Vec is in shared memory already).
        let staged = pool.map(&data, |x| x + 1.0).unwrap();
        assert!(staged == out);
        let vec_copy = if common::heap().is_some() {
            0
        } else {
            (n * 8) as u64
        };
        assert_eq!(pool.stats().bytes_staged, vec_copy);

        // A slice of another pool's arena is not this pool's: staged.
        let other = Pool::new(1).unwrap();
        let foreign = other.to_shm(&data[..1000]).unwrap();
        pool.map(&foreign, |x| x).unwrap();
        assert_eq!(pool.stats().bytes_staged, vec_copy + 8000);
    })
}

#[test]
fn empty_input_wakes_no_worker() {
    deadline(30, || {
        let pool = Pool::new(2).unwrap();
        let empty: Vec<f64> = Vec::new();
        assert!(pool.map(&empty, |x| x * 2.0).unwrap().is_empty());
        assert!(
            pool.map_with(1.0f64, &empty, |c, x: f64| c * x)
                .unwrap()
                .is_empty()
        );
        let shm = pool.alloc_zeroed::<f64>(0).unwrap();
        assert!(pool.map(&shm, |x| x).unwrap().is_empty());
        assert_eq!(pool.stats().jobs_submitted, 0, "no job, no worker woken");
    })
}

#[test]
fn out_of_shared_memory_is_an_error_and_loses_nothing() {
    deadline(60, || {
        let pool = Pool::builder()
            .workers(2)
            .arena_size(4 << 20)
            .build()
            .unwrap();
        let keep = pool.to_shm(&vec![3u32; 500_000]).unwrap(); // 2 MB
        let err = pool.alloc_zeroed::<u8>(3 << 20).unwrap_err();
        assert!(
            matches!(err, Error::OutOfSharedMemory { requested, .. } if requested == 3 << 20),
            "{err}"
        );
        // A map whose output does not fit fails the same way, before running.
        let err = pool.map(&keep, u64::from).unwrap_err();
        assert!(matches!(err, Error::OutOfSharedMemory { .. }), "{err}");
        // Nothing already stored is lost, and smaller work still runs.
        assert!(keep.iter().all(|&x| x == 3));
        let small = pool.map(&keep[..1000], |x| x + 1).unwrap();
        assert!(small.iter().all(|&x| x == 4));
        // Freed space is reusable.
        drop(keep);
        drop(small);
        let big = pool.alloc_zeroed::<u8>(3 << 20).unwrap();
        assert!(big.iter().all(|&b| b == 0));
        assert_eq!(pool.stats().arena_capacity, 4 << 20);
    })
}

#[test]
fn reused_blocks_are_zeroed_and_outputs_outlive_the_pool() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let mut dirty = pool.alloc_zeroed::<u64>(10_000).unwrap();
        dirty.iter_mut().for_each(|x| *x = u64::MAX);
        drop(dirty);
        let clean = pool.alloc_zeroed::<u64>(10_000).unwrap();
        assert!(
            clean.iter().all(|&x| x == 0),
            "alloc_zeroed zeroes reused memory"
        );

        let out: ShmVec<u64> = pool.map(&clean, |x| x + 5).unwrap();
        drop(pool);
        assert!(out.iter().all(|&x| x == 5), "a ShmVec outlives its pool");
        assert!(clean.iter().all(|&x| x == 0));
    })
}

#[test]
fn shmvec_is_a_slice() {
    deadline(30, || {
        let pool = Pool::new(1).unwrap();
        let mut v = pool.to_shm(&[3u16, 1, 2]).unwrap();
        v.sort_unstable();
        assert_eq!(format!("{v:?}"), "[1, 2, 3]");
        assert_eq!(v.as_ref(), &[1, 2, 3]);
        for x in &mut v {
            *x *= 10;
        }
        assert_eq!(v.iter().sum::<u16>(), 60);
        assert!(ShmVec::<u8>::default().is_empty());
        assert!(matches!(
            pool.alloc_zeroed::<u64>(usize::MAX / 4),
            Err(Error::InvalidArgument { .. })
        ));
    })
}

fn nap(x: u32) -> u32 {
    std::thread::sleep(std::time::Duration::from_millis(40));
    x
}

fn fails_on_three(x: u32) -> u32 {
    assert_ne!(x, 3, "three");
    x
}

#[test]
fn the_profile_splits_each_job_into_staging_dispatch_compute_and_completion() {
    use std::time::{Duration, Instant};
    deadline(120, || {
        let pool = Pool::new(2).unwrap();
        assert_eq!(pool.stats().profile, shmpool::Profile::default());
        // A Vec input: staged, then computed. (Small enough to stay out of
        // the shared heap when the suite runs with it: a slice of one.)
        let all: Vec<f64> = (0..1 << 20).map(|i| i as f64).collect();
        let data: Vec<f64> = if common::heap().is_some() {
            all.iter().step_by(1 << 14).copied().collect()
        } else {
            all
        };
        let t = Instant::now();
        pool.map(&data, |x| x.sqrt()).unwrap();
        let wall = t.elapsed();
        let p = pool.stats().profile;
        assert_eq!(p.jobs, 1);
        assert!(p.staging > Duration::ZERO, "{p:?}");
        assert!(
            p.dispatch > Duration::ZERO && p.compute > Duration::ZERO,
            "{p:?}"
        );
        assert!(
            p.staging + p.dispatch + p.compute + p.completion <= wall,
            "{p:?} exceeds the call's {wall:?}"
        );
        // A ShmVec input: nothing staged.
        let shared = pool.to_shm(&data).unwrap();
        pool.map(&shared, |x| x.sqrt()).unwrap();
        let q = pool.stats().profile;
        assert_eq!((q.jobs, q.staging), (2, p.staging));
        // A task that sleeps 40 ms shows up as compute.
        pool.apply(1u32, nap).unwrap();
        let r = pool.stats().profile;
        assert_eq!(r.jobs, 3);
        assert!(r.compute - q.compute >= Duration::from_millis(40), "{r:?}");
        // Failed jobs are left out; async ones are counted.
        let xs: Vec<u32> = (0..10).collect();
        assert!(pool.map(&xs, fails_on_three).is_err());
        assert_eq!(pool.stats().profile.jobs, 3);
        pool.apply_async(2u32, nap).unwrap().get().unwrap();
        assert_eq!(pool.stats().profile.jobs, 4);
    });
}
