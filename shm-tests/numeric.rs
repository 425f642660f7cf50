//! The numeric maps (`map2`, `map3`, `map_chunks`, `map_indexed`,
//! `map_indexed_with`, `map_in_place`, `map_reduce`), `progress()` and `global()`, each checked
//! against its serial equivalent, at lengths 0, 1 and lengths that do not
//! divide evenly into ranges.

mod common;

use std::time::Duration;

use common::{Rng, deadline};
use shmpool::{Error, Pool};

/// Lengths to try: empty, one, primes, and one that no chunking divides.
const LENS: [usize; 6] = [0, 1, 7, 1000, 65_537, 1_000_003];

fn data(n: usize, seed: u64) -> Vec<f64> {
    let mut r = Rng(seed | 1);
    (0..n)
        .map(|_| (r.below(1 << 20) as f64) / 1024.0 - 512.0)
        .collect()
}

#[test]
fn map2_and_map3_match_serial_zips() {
    deadline(120, || {
        let pool = Pool::new(2).unwrap();
        for n in LENS {
            let (a, b, c) = (data(n, 1), data(n, 2), data(n, 3));
            let want2: Vec<f64> = a.iter().zip(&b).map(|(x, y)| 2.5 * x + y).collect();
            assert_eq!(
                pool.map2(&a, &b, |x, y| 2.5 * x + y).unwrap(),
                want2,
                "n = {n}"
            );
            // In place (both in shared memory) and mixed.
            let (sa, sb) = (pool.to_shm(&a).unwrap(), pool.to_shm(&b).unwrap());
            let staged = pool.stats().bytes_staged;
            assert_eq!(pool.map2(&sa, &sb, |x, y| 2.5 * x + y).unwrap(), want2);
            assert_eq!(pool.stats().bytes_staged, staged, "zero copies");
            assert_eq!(pool.map2(&sa, &b, |x, y| 2.5 * x + y).unwrap(), want2);
            let want3: Vec<f64> = (0..n).map(|i| a[i].mul_add(b[i], c[i])).collect();
            assert_eq!(
                pool.map3(&a, &b, &c, |x, y, z| x.mul_add(y, z)).unwrap(),
                want3
            );
        }
        // Different element types, different output type.
        let ids: Vec<u32> = (0..1000).collect();
        let flags: Vec<u8> = (0..1000).map(|i| (i % 3) as u8).collect();
        let got = pool
            .map2(&ids, &flags, |i, f| u64::from(i) * u64::from(f))
            .unwrap();
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, &g)| g == i as u64 * (i as u64 % 3))
        );
    })
}

#[test]
fn zips_of_different_lengths_are_refused() {
    deadline(60, || {
        let pool = Pool::new(1).unwrap();
        let err = pool.map2(&[1u8, 2], &[1u8], |x, y| x + y).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
        let err = pool
            .map3(&[1u8], &[1u8], &[] as &[u8], |x, y, z| x + y + z)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
        assert_eq!(pool.stats().jobs_submitted, 0);
    })
}

#[test]
fn map_chunks_sees_whole_ranges_that_partition_the_input() {
    deadline(120, || {
        for chunk in [None, Some(1), Some(333)] {
            let mut b = Pool::builder().workers(2);
            if let Some(c) = chunk {
                b = b.chunk_size(c);
            }
            let pool = b.build().unwrap();
            for n in LENS {
                let xs: Vec<u64> = (0..n as u64).collect();
                // Each range writes x * 2 + its own length's parity into the
                // low bit, so the test sees both the values and range sizes.
                let ys = pool
                    .map_chunks(&xs, |inp: &[u64], out: &mut [u64]| {
                        for (o, &x) in out.iter_mut().zip(inp) {
                            *o = x * 2;
                        }
                        out[0] += 1; // marks each range's first element
                    })
                    .unwrap();
                assert_eq!(ys.len(), n);
                let starts: Vec<usize> = (0..n).filter(|&i| ys[i] % 2 == 1).collect();
                assert!(ys.iter().enumerate().all(|(i, &y)| y / 2 == i as u64));
                if n > 0 {
                    assert_eq!(starts[0], 0, "ranges start at 0");
                    if let Some(c) = chunk {
                        assert!(starts.iter().all(|s| s % c == 0), "chunk {c}, n {n}");
                        assert_eq!(starts.len(), n.div_ceil(c));
                    }
                }
            }
        }
    })
}

#[test]
fn map_indexed_runs_a_stencil_like_serial_code() {
    deadline(120, || {
        let pool = Pool::new(2).unwrap();
        for n in LENS {
            let xs = data(n, 7);
            let serial: Vec<f64> = (0..n)
                .map(|i| {
                    let lo = i.saturating_sub(2);
                    let hi = (i + 2).min(n - 1);
                    xs[lo..=hi].iter().sum::<f64>()
                })
                .collect();
            let got = pool
                .map_indexed(&xs, |x: &[f64], i| {
                    let lo = i.saturating_sub(2);
                    let hi = (i + 2).min(x.len() - 1);
                    x[lo..=hi].iter().sum::<f64>()
                })
                .unwrap();
            assert_eq!(got, serial, "n = {n}");
        }
    })
}

#[test]
fn map_indexed_with_passes_its_context_like_serial_code() {
    deadline(120, || {
        let pool = Pool::new(2).unwrap();
        #[derive(Clone, Copy, bytemuck_derive::Zeroable, bytemuck_derive::Pod)]
        #[repr(C)]
        struct Stencil {
            first: u64,
            weight: f64,
        }
        let ctx = Stencil {
            first: 1 << 40,
            weight: 0.75,
        };
        for n in LENS {
            let xs = data(n, 13);
            let serial: Vec<f64> = (0..n)
                .map(|i| {
                    let hi = (i + 1).min(n - 1);
                    ctx.weight * (xs[i] + xs[hi]) + (ctx.first + i as u64) as f64
                })
                .collect();
            let got = pool
                .map_indexed_with(ctx, &xs, |c: &Stencil, x: &[f64], i| {
                    let hi = (i + 1).min(x.len() - 1);
                    c.weight * (x[i] + x[hi]) + (c.first + i as u64) as f64
                })
                .unwrap();
            assert_eq!(got, serial, "n = {n}");
            // Read in place from shared memory, with a context too large for
            // the slot's inline area.
            let shm = pool.to_shm(&xs).unwrap();
            let staged = pool.stats().bytes_staged;
            let big = [1.5f64; 64];
            let got = pool
                .map_indexed_with(big, &shm, |c: &[f64; 64], x: &[f64], i| c[i % 64] * x[i])
                .unwrap();
            let want: Vec<f64> = xs.iter().map(|x| 1.5 * x).collect();
            assert_eq!(got, want, "n = {n}");
            assert_eq!(pool.stats().bytes_staged, staged, "n = {n}: no staging");
        }
        let err = pool
            .map_indexed_with(0u8, &[1u32, 2], |_, x: &[u32], i| {
                assert!(i < 1, "boom at {i}");
                x[i]
            })
            .unwrap_err();
        assert!(matches!(err, Error::TaskPanicked { .. }), "{err:?}");
    })
}

#[test]
fn map_in_place_matches_serial_and_stages_what_workers_cannot_reach() {
    deadline(120, || {
        let pool = Pool::new(2).unwrap();
        for n in LENS {
            let xs = data(n, 11);
            let mut v = pool.to_shm(&xs).unwrap();
            let in_use = pool.stats().arena_in_use;
            pool.map_in_place(&mut v, |x| x * x - 1.0).unwrap();
            let want: Vec<f64> = xs.iter().map(|x| x * x - 1.0).collect();
            assert_eq!(v, want, "n = {n}");
            assert_eq!(pool.stats().arena_in_use, in_use, "no output block");
        }
        // A vector of another pool (or any slice the workers cannot reach)
        // is staged and copied back.
        let other = Pool::new(1).unwrap();
        let mut foreign = other.to_shm(&[1u32, 2]).unwrap();
        pool.map_in_place(&mut foreign, |x| x + 1).unwrap();
        assert_eq!(foreign, vec![2, 3]);
        let mut plain = vec![5u32; 3];
        pool.map_in_place(&mut plain, |x| x * 2).unwrap();
        assert_eq!(plain, vec![10; 3]);
        // A failure leaves the vector usable (partly mapped).
        let mut v = pool.to_shm(&[1u32; 100]).unwrap();
        let err = pool
            .map_in_place(&mut v, |x| {
                assert!(x != 1, "boom");
                x
            })
            .unwrap_err();
        assert!(matches!(err, Error::TaskPanicked { .. }));
        assert_eq!(v.len(), 100);
    })
}

#[test]
fn map_reduce_matches_serial_folds() {
    deadline(120, || {
        let pool = Pool::new(2).unwrap();
        for n in LENS {
            let xs: Vec<u64> = (0..n as u64).collect();
            // Exact arithmetic: any association gives the serial answer.
            let sum_sq = pool.map_reduce(&xs, |x| x * x, |a, b| a + b, 0).unwrap();
            assert_eq!(sum_sq, xs.iter().map(|x| x * x).sum::<u64>(), "n = {n}");
            let max = pool.map_reduce(&xs, |x| x ^ 0x5555, u64::max, 0).unwrap();
            assert_eq!(max, xs.iter().map(|x| x ^ 0x5555).max().unwrap_or(0));
            // A Pod accumulator: (count, sum, min, max).
            let stats = pool
                .map_reduce(
                    &xs,
                    |x| [1, x, x, x],
                    |a, b| [a[0] + b[0], a[1] + b[1], a[2].min(b[2]), a[3].max(b[3])],
                    [0, 0, u64::MAX, 0],
                )
                .unwrap();
            let want = if n == 0 {
                [0, 0, u64::MAX, 0]
            } else {
                [n as u64, xs.iter().sum(), 0, n as u64 - 1]
            };
            assert_eq!(stats, want);
        }
        // Empty input: the identity, no job.
        let jobs = pool.stats().jobs_submitted;
        assert_eq!(
            pool.map_reduce(&[] as &[f64], |x| x, |a, b| a + b, 42.0)
                .unwrap(),
            42.0
        );
        assert_eq!(pool.stats().jobs_submitted, jobs);
    })
}

#[test]
fn floating_point_reductions_are_deterministic() {
    deadline(120, || {
        let xs = data(1_000_003, 5);
        let two = Pool::new(2).unwrap();
        let three = Pool::new(3).unwrap();
        // The same pool: the same bits on every run.
        let first = two.map_reduce(&xs, |x| x.sin(), |a, b| a + b, 0.0).unwrap();
        for _ in 0..5 {
            let again = two.map_reduce(&xs, |x| x.sin(), |a, b| a + b, 0.0).unwrap();
            assert_eq!(again.to_bits(), first.to_bits());
        }
        // Chunked: the same bits on any pool, and equal to the serial
        // fold of per-chunk partials in order.
        let chunk = 10_000;
        let a = two
            .map_reduce_chunked(&xs, chunk, |x| x.sin(), |a, b| a + b, 0.0)
            .unwrap();
        let b = three
            .map_reduce_chunked(&xs, chunk, |x| x.sin(), |a, b| a + b, 0.0)
            .unwrap();
        let serial = xs
            .chunks(chunk)
            .map(|c| c.iter().fold(0.0, |acc, x| acc + x.sin()))
            .fold(0.0, |acc, p| acc + p);
        assert_eq!(a.to_bits(), b.to_bits());
        assert_eq!(a.to_bits(), serial.to_bits());
        // One chunk: exactly the serial left fold.
        let whole = two
            .map_reduce_chunked(&xs, xs.len(), |x| x.sin(), |a, b| a + b, 0.0)
            .unwrap();
        assert_eq!(
            whole.to_bits(),
            xs.iter().fold(0.0, |acc, x| acc + x.sin()).to_bits()
        );
        assert!(matches!(
            two.map_reduce_chunked(&xs, 0, |x| x, |a, b| a + b, 0.0),
            Err(Error::InvalidArgument { .. })
        ));
    })
}

#[test]
fn progress_counts_elements_never_goes_back_and_ends_full() {
    deadline(120, || {
        let pool = Pool::builder().workers(2).chunk_size(10).build().unwrap();
        let xs = vec![1u64; 400];
        let r = pool.map_async(&xs, common::sleepy).unwrap();
        let mut last = 0;
        let mut seen_middle = false;
        while !r.ready() {
            let (done, total) = r.progress();
            assert_eq!(total, 400);
            assert!(done >= last && done <= total, "{last} -> {done}");
            seen_middle |= done > 0 && done < total;
            last = done;
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(r.progress(), (400, 400));
        assert!(seen_middle, "progress moved while the job ran");
        let one = pool.apply_async(3u8, |x| x).unwrap();
        one.wait();
        assert_eq!(one.progress(), (1, 1));
        let empty = pool.map_async(&[] as &[u8], |x| x).unwrap();
        assert_eq!(empty.progress(), (0, 0));
        // A failed job ends full too.
        let failed = pool
            .map_async(&xs, |x| {
                assert!(x != 1, "boom");
                x
            })
            .unwrap();
        failed.wait();
        assert_eq!(failed.progress(), (400, 400));
    })
}

#[test]
fn the_global_pool_works_and_tasks_cannot_deadlock_on_it() {
    deadline(60, || {
        let squares = shmpool::global().map(&[1u32, 2, 3], |x| x * x).unwrap();
        assert_eq!(squares, vec![1, 4, 9]);
        assert!(std::ptr::eq(
            shmpool::global(),
            shmpool::try_global().unwrap()
        ));
        // Built after the global pool: its tasks hold a copy that refuses.
        let pool = Pool::new(2).unwrap();
        let codes = pool
            .map(&[1u32, 2], |x| match shmpool::global().apply(x, |y| y) {
                Err(Error::WouldDeadlock { .. }) => 1u32,
                _ => 0,
            })
            .unwrap();
        assert_eq!(codes, vec![1, 1]);
    })
}

#[test]
fn map_into_reuses_the_output_and_stages_foreign_outputs() {
    deadline(120, || {
        let pool = Pool::new(2).unwrap();
        for n in LENS {
            let xs = data(n, 13);
            let mut out = pool.alloc_zeroed::<f64>(n).unwrap();
            let in_use = pool.stats().arena_in_use;
            for k in 1..=3 {
                let k = f64::from(k);
                pool.map_into(&xs, &mut out, |x| x * 2.0).unwrap();
                assert_eq!(pool.stats().arena_in_use, in_use, "no output allocated");
                let want: Vec<f64> = xs.iter().map(|x| x * 2.0).collect();
                assert_eq!(out, want, "n = {n}, round {k}");
            }
        }
        let mut short = pool.alloc_zeroed::<u32>(2).unwrap();
        let err = pool.map_into(&[1u32, 2, 3], &mut short, |x| x).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
        // A vector of another pool is staged and copied back.
        let other = Pool::new(1).unwrap();
        let mut foreign = other.alloc_zeroed::<u32>(3).unwrap();
        pool.map_into(&[1u32, 2, 3], &mut foreign, |x| x * 7)
            .unwrap();
        assert_eq!(foreign, vec![7, 14, 21]);
        assert_eq!(pool.stats().jobs_failed, 0);
    })
}

/// About 100 µs per element.
fn slow_bump(x: u64) -> u64 {
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_micros(100) {
        std::hint::spin_loop();
    }
    x + 1_000_000
}

#[test]
fn an_in_place_range_whose_worker_dies_is_not_applied_twice() {
    deadline(60, || {
        let pool = Pool::builder().workers(2).chunk_size(1000).build().unwrap();
        let mut v = pool.to_shm(&vec![0u64; 20_000]).unwrap();
        let killer = {
            let pid = pool.worker_pids()[0];
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                // SAFETY: kill(2) on a worker of ours.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            })
        };
        let result = pool.map_in_place(&mut v, slow_bump);
        killer.join().unwrap();
        match result {
            // Finished before the kill: every element exactly once.
            Ok(()) => assert!(v.iter().all(|&x| x == 1_000_000)),
            Err(Error::WorkerDied { .. }) => {
                assert!(v.iter().all(|&x| x == 0 || x == 1_000_000), "never twice")
            }
            Err(other) => panic!("{other:?}"),
        }
    })
}

#[test]
fn huge_chunks_and_zero_sized_accumulators_reduce_correctly() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        for chunk in [usize::MAX, 1 << 63, 3] {
            let s = pool
                .map_reduce_chunked(&[1u64, 2, 3, 4], chunk, |x| x, |a, b| a + b, 0)
                .unwrap();
            assert_eq!(s, 10, "chunk {chunk}");
        }
        assert!(pool.map_reduce(&[1u8; 1000], |_| (), |_, _| (), ()).is_ok());
    })
}

#[test]
fn streamed_outputs_match_plain_ones_at_every_offset_and_size() {
    deadline(120, || {
        // Streaming forced on (threshold 0) against the default pool, with
        // chunk sizes that start ranges mid cache line, and element sizes
        // that do and do not divide a streamed block.
        let plain = Pool::new(2).unwrap();
        for chunk in [1_000, 4_099, 65_536] {
            let streamed = Pool::builder()
                .workers(2)
                .chunk_size(chunk)
                .stream_stores_from(0)
                .build()
                .unwrap();
            for n in [0, 1, 7, 1000, 65_537, 300_001] {
                let (a, b, c) = (data(n, 7), data(n, 8), data(n, 9));
                let want: Vec<f64> = a.iter().map(|x| x * x - 1.0).collect();
                assert_eq!(
                    streamed.map(&a, |x| x * x - 1.0).unwrap(),
                    want,
                    "map n={n}"
                );
                assert_eq!(plain.map(&a, |x| x * x - 1.0).unwrap(), want);
                let bytes: Vec<u8> = a.iter().map(|x| *x as i64 as u8).collect();
                let want_b: Vec<u8> = bytes.iter().map(|x| x.wrapping_mul(3)).collect();
                assert_eq!(streamed.map(&bytes, |x| x.wrapping_mul(3)).unwrap(), want_b);
                let want_3: Vec<[u8; 3]> = bytes.iter().map(|&x| [x, x ^ 1, 7]).collect();
                assert_eq!(streamed.map(&bytes, |x| [x, x ^ 1, 7]).unwrap(), want_3);
                let want_pair: Vec<[f64; 2]> = a.iter().map(|&x| [x, -x]).collect();
                assert_eq!(streamed.map(&a, |x| [x, -x]).unwrap(), want_pair);
                if n <= 65_537 {
                    // 512-byte elements: streamed in the wide blocks.
                    let wide = |x: f64| [x.to_bits() ^ 0x5a5a; 64];
                    let want_wide: Vec<[u64; 64]> = a.iter().map(|&x| wide(x)).collect();
                    assert_eq!(streamed.map(&a, wide).unwrap(), want_wide, "wide n={n}");
                }
                let want2: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
                assert_eq!(streamed.map2(&a, &b, |x, y| x * y).unwrap(), want2);
                let want3: Vec<f64> = (0..n).map(|i| a[i] + b[i] * c[i]).collect();
                assert_eq!(
                    streamed.map3(&a, &b, &c, |x, y, z| x + y * z).unwrap(),
                    want3
                );
                let want_i: Vec<f64> = (0..n).map(|i| a[i] + i as f64).collect();
                assert_eq!(
                    streamed
                        .map_indexed(&a, |xs: &[f64], i| xs[i] + i as f64)
                        .unwrap(),
                    want_i
                );
                let want_w: Vec<f64> = a.iter().map(|x| x * 4.0).collect();
                assert_eq!(streamed.map_with(4.0f64, &a, |k, x| k * x).unwrap(), want_w);
                let shared = streamed.to_shm(&a).unwrap();
                let mut out = streamed.alloc_zeroed::<f64>(n).unwrap();
                streamed
                    .map_into(&shared, &mut out, |x| x * x - 1.0)
                    .unwrap();
                assert_eq!(&out[..], &want[..], "map_into n={n}");
            }
            common::assert_healthy(&streamed);
        }
    });
}
