//! The shared heap and the pool: with `SharedHeap` as the global allocator,
//! every map form reads plain `Vec`s in place (no staging), writes outputs
//! into heap slices in place, keeps a heap `Vec` moved into `map_async`,
//! stages anything else correctly, and a task that writes the heap (through
//! a `static`) fails with a typed error while the parent's data stays as it
//! was. Each test's body runs in a process of its own with the heap
//! installed (`SHMPOOL_TEST_HEAP=1`).

mod common;

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, PoisonError};

use common::{deadline, in_isolation, isolated_with_heap};
use shmpool::{Error, Pool, ShmVec};

/// Elements of a `Vec<u64>` large enough to come from the heap (64 KiB and
/// up by default) many times over.
const N: usize = 1 << 16;

fn heap_in_use() -> bool {
    common::heap().is_some()
}

/// Whether `v`'s buffer lies in the heap (its counters grow when it is
/// allocated; checked once per test through `HeapStats`).
fn in_heap<T>(v: &[T]) -> bool {
    let heap = common::heap().expect("the heap is installed");
    let before = heap.stats().in_use;
    // A fresh allocation of the same size must come from the heap too.
    let probe: Vec<u8> = Vec::with_capacity(std::mem::size_of_val(v).max(1 << 16));
    let after = heap.stats().in_use;
    drop(probe);
    after > before
}

#[test]
fn every_map_form_reads_heap_vecs_in_place() {
    isolated_with_heap("reads_in_place_body", 120);
}

#[test]
#[ignore = "run in a process of its own by every_map_form_reads_heap_vecs_in_place"]
fn reads_in_place_body() {
    if !in_isolation() {
        return;
    }
    assert!(heap_in_use());
    deadline(100, || {
        let pool = Pool::new(2).unwrap();
        let xs: Vec<u64> = (0..N as u64).collect();
        let ys: Vec<u64> = (0..N as u64).map(|i| i * 3).collect();
        let zs: Vec<u64> = vec![7; N];
        assert!(in_heap(&xs));
        let sum: u64 = xs.iter().sum();
        assert_eq!(pool.map(&xs, |x| x + 1).unwrap()[N - 1], N as u64);
        assert_eq!(pool.map_with(2u64, &xs, |k, x| x * k).unwrap()[3], 6);
        assert_eq!(pool.map2(&xs, &ys, |x, y| x + y).unwrap()[10], 40);
        assert_eq!(
            pool.map3(&xs, &ys, &zs, |x, y, z| x + y + z).unwrap()[1],
            11
        );
        let halves = pool
            .map_chunks(&xs, |i: &[u64], o: &mut [u64]| {
                for (o, i) in o.iter_mut().zip(i) {
                    *o = i / 2;
                }
            })
            .unwrap();
        assert_eq!(halves[9], 4);
        let next = pool
            .map_indexed(&xs, |x: &[u64], i| x[(i + 1) % x.len()])
            .unwrap();
        assert_eq!(next[N - 1], 0);
        assert_eq!(pool.map_reduce(&xs, |x| x, |a, b| a + b, 0).unwrap(), sum);
        assert_eq!(
            pool.map_reduce_chunked(&xs, 1000, |x| x, |a, b| a + b, 0)
                .unwrap(),
            sum
        );
        let lookup = pool
            .map_shared(&ys, &xs[5..8], |t: &[u64], i: u64| t[i as usize])
            .unwrap();
        assert_eq!(lookup, vec![15, 18, 21]);
        let dots = pool
            .map_shared_indexed(&ys, &xs[..4], |t: &[u64], x: &[u64], i| t[i] + x[i])
            .unwrap();
        assert_eq!(dots, vec![0, 4, 8, 12]);
        let mut inplace = xs.clone();
        pool.map_in_place(&mut inplace, |x| x * 10).unwrap();
        assert_eq!(inplace[7], 70);
        let mut out = vec![0u64; N];
        pool.map_into(&xs, &mut out, |x| x + 2).unwrap();
        assert_eq!(out[N - 1], N as u64 + 1);
        // Moved into map_async: read in place, kept until done.
        let moved = pool
            .map_async(xs.clone(), |x| x * 4)
            .unwrap()
            .get()
            .unwrap();
        assert_eq!(moved[5], 20);
        assert_eq!(pool.stats().bytes_staged, 0, "nothing was copied");
        // A borrowed input to map_async is still copied (the job owns its
        // input), as documented.
        let borrowed = pool.map_async(&xs, |x| x).unwrap().get().unwrap();
        assert_eq!(borrowed[1], 1);
        assert_eq!(pool.stats().bytes_staged, (N * 8) as u64);
    })
}

#[test]
fn outputs_outside_the_heap_and_arena_are_staged_and_copied_back() {
    isolated_with_heap("staged_outputs_body", 120);
}

#[test]
#[ignore = "run in a process of its own by outputs_outside_the_heap_and_arena_are_staged_and_copied_back"]
fn staged_outputs_body() {
    if !in_isolation() {
        return;
    }
    deadline(100, || {
        let pool = Pool::new(2).unwrap();
        let other = Pool::new(1).unwrap();
        let xs: Vec<u32> = (0..1000).collect();
        // Under the heap's threshold: from the system allocator.
        let mut small = vec![0u32; 1000];
        pool.map_into(&xs, &mut small, |x| x * 2).unwrap();
        assert!(small.iter().enumerate().all(|(i, &y)| y == 2 * i as u32));
        let staged = pool.stats().bytes_staged;
        assert!(staged >= 4000, "the small input and output were staged");
        // A vector of another pool: staged, never written at the same offset
        // of this pool's arena.
        let mut foreign = other.to_shm(&vec![9u32; 1000]).unwrap();
        let decoy = pool.to_shm(&vec![7u32; 1000]).unwrap();
        pool.map_into(&xs, &mut foreign, |x| x + 1).unwrap();
        assert!(foreign.iter().enumerate().all(|(i, &y)| y == i as u32 + 1));
        assert!(decoy.iter().all(|&x| x == 7));
        pool.map_in_place(&mut foreign, |x| x - 1).unwrap();
        assert!(foreign.iter().enumerate().all(|(i, &y)| y == i as u32));
        // A failed job leaves a staged output as it was.
        let r = pool.map_into(&xs, &mut small, |x| {
            if x == 500 {
                panic!("half way")
            }
            x
        });
        assert!(matches!(r, Err(Error::TaskPanicked { .. })), "{r:?}");
        assert!(small.iter().enumerate().all(|(i, &y)| y == 2 * i as u32));
    })
}

/// Data the parent keeps in a static, in the heap (large), filled before
/// the pool is built.
static TABLE: Mutex<Vec<u64>> = Mutex::new(Vec::new());

fn table() -> std::sync::MutexGuard<'static, Vec<u64>> {
    TABLE.lock().unwrap_or_else(PoisonError::into_inner)
}

#[test]
fn tasks_see_heap_data_live_and_cannot_write_it() {
    isolated_with_heap("live_and_read_only_body", 120);
}

#[test]
#[ignore = "run in a process of its own by tasks_see_heap_data_live_and_cannot_write_it"]
fn live_and_read_only_body() {
    if !in_isolation() {
        return;
    }
    deadline(100, || {
        *table() = vec![1u64; N];
        assert!(in_heap(&table()));
        let pool = Pool::new(2).unwrap();
        // Changed after the workers were forked: they see it, live (the
        // static's `Vec` header is the fork's snapshot; its buffer is heap).
        table().iter_mut().for_each(|x| *x = 5);
        let seen = pool.map(&[0usize, 100, N - 1], |i| table()[i]).unwrap();
        assert_eq!(seen, vec![5, 5, 5]);
        // A task that writes it fails with a typed error, not retried, and
        // the parent's data is unchanged.
        let r = pool.apply(7usize, |i| {
            table()[i] = 0xdead;
            1u8
        });
        match r {
            Err(Error::HeapWrite { range, .. }) => assert_eq!(range, Some(0..1)),
            other => panic!("expected HeapWrite, got {other:?}"),
        }
        assert!(table().iter().all(|&x| x == 5));
        assert!(
            common::wait_until(std::time::Duration::from_secs(10), || pool
                .stats()
                .worker_restarts
                == 1),
            "one worker replaced"
        );
        common::assert_healthy(&pool);
    })
}

#[test]
fn a_heap_vec_moved_into_map_async_survives_a_dropped_result() {
    isolated_with_heap("kept_vec_body", 120);
}

#[test]
#[ignore = "run in a process of its own by a_heap_vec_moved_into_map_async_survives_a_dropped_result"]
fn kept_vec_body() {
    if !in_isolation() {
        return;
    }
    deadline(100, || {
        let pool = Pool::new(2).unwrap();
        let heap = common::heap().unwrap();
        let before = heap.stats().in_use;
        for _ in 0..50 {
            let xs: Vec<u64> = vec![3; N];
            let r = pool
                .map_async(xs, |x| {
                    std::thread::sleep(std::time::Duration::from_micros(1));
                    x + 1
                })
                .unwrap();
            // Dropped unfinished: the job is cancelled; its input is freed
            // once no worker reads it.
            drop(r);
        }
        let xs: Vec<u64> = vec![3; N];
        assert_eq!(pool.map_async(xs, |x| x + 1).unwrap().get().unwrap()[0], 4);
        pool.close();
        pool.join().unwrap();
        assert!(
            common::wait_until(std::time::Duration::from_secs(5), || heap.stats().in_use
                <= before + N * 8 * 2),
            "the kept inputs were freed: {} -> {}",
            before,
            heap.stats().in_use
        );
    })
}

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_arrays_built_on_the_heap_are_read_in_place() {
    isolated_with_heap("ndarray_body", 120);
}

#[cfg(feature = "ndarray")]
#[test]
#[ignore = "run in a process of its own by ndarray_arrays_built_on_the_heap_are_read_in_place"]
fn ndarray_body() {
    if !in_isolation() {
        return;
    }
    deadline(100, || {
        let pool = Pool::new(2).unwrap();
        let a = ndarray::Array2::<f64>::from_shape_fn((256, 256), |(i, j)| (i * 256 + j) as f64);
        let doubled = pool.map_array(&a.view(), |x| 2.0 * x).unwrap();
        assert_eq!(doubled.view()[[1, 2]], 2.0 * 258.0);
        let stencil = pool
            .map_stencil(&a.view(), |v: &ndarray::ArrayView2<'_, f64>, (i, j)| {
                v[[i, j]] + 1.0
            })
            .unwrap();
        assert_eq!(stencil.view()[[3, 4]], (3 * 256 + 4) as f64 + 1.0);
        assert_eq!(pool.stats().bytes_staged, 0);
    })
}

#[cfg(feature = "ndarray")]
#[test]
fn a_strided_arrays_copy_outlives_its_stencil() {
    isolated_with_heap("strided_stencil_body", 120);
}

/// A strided array (a transpose) is copied into row-major order first,
/// straight into the arena, where the workers read it in place, so it must
/// live until the job is harvested. A thread allocating heap blocks of the
/// same size meanwhile (and, were the copy a heap `Vec`, handed its block if
/// it were freed early) must never show the stencil its `-1.0`s.
#[cfg(feature = "ndarray")]
#[test]
#[ignore = "run in a process of its own by a_strided_arrays_copy_outlives_its_stencil"]
fn strided_stencil_body() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    static STOP: AtomicBool = AtomicBool::new(false);
    if !in_isolation() {
        return;
    }
    deadline(100, || {
        let pool = Pool::new(2).unwrap();
        let n = 1024;
        let a = ndarray::Array2::<f64>::from_shape_fn((n, n), |(i, j)| (i * n + j) as f64);
        let churn = std::thread::spawn(move || {
            while !STOP.load(Relaxed) {
                std::hint::black_box(vec![-1.0f64; n * n]);
            }
        });
        for _ in 0..4 {
            let t = a.t();
            let out = pool
                .map_stencil(&t, |v: &ndarray::ArrayView2<'_, f64>, (i, j)| v[[i, j]])
                .unwrap();
            let wrong = out
                .view()
                .iter()
                .zip(t.iter())
                .filter(|(x, y)| x != y)
                .count();
            assert_eq!(wrong, 0, "the stencil read a freed copy");
        }
        STOP.store(true, Relaxed);
        churn.join().unwrap();
        assert_eq!(
            pool.stats().bytes_staged,
            4 * (n * n * 8) as u64,
            "the copies, into the arena, are the only ones"
        );
    })
}

#[test]
fn a_heap_reserved_after_the_pool_is_built_is_staged_for_it() {
    common::isolated_without_heap("heap_after_pool_body", 120);
}

/// The heap used directly (not as the global allocator), reserved by its
/// first allocation after a pool was built: that pool's workers do not map
/// it, so its slices are staged for that pool (and read in place by a pool
/// built afterwards).
#[test]
#[ignore = "run in a process of its own by a_heap_reserved_after_the_pool_is_built_is_staged_for_it"]
fn heap_after_pool_body() {
    use std::alloc::{GlobalAlloc, Layout};
    // SAFETY: tasks reach this heap only through their arguments.
    static DIRECT: shmpool::SharedHeap = unsafe { shmpool::SharedHeap::new() };
    if !in_isolation() {
        return;
    }
    assert!(!heap_in_use());
    deadline(100, || {
        let before = Pool::new(2).unwrap();
        let n = N;
        let layout = Layout::array::<u64>(n).unwrap();
        // SAFETY: a layout of non-zero size; freed below with the same one.
        let p = unsafe { DIRECT.alloc(layout) }.cast::<u64>();
        assert!(!p.is_null() && DIRECT.stats().active);
        // SAFETY: a fresh, exclusive block of `n` `u64`s; written before it
        // is read.
        let xs = unsafe {
            p.write_bytes(0, n);
            std::slice::from_raw_parts_mut(p, n)
        };
        for (i, x) in xs.iter_mut().enumerate() {
            *x = i as u64;
        }
        let got = before.map(xs, |x| x + 1).unwrap();
        assert_eq!(got[n - 1], n as u64);
        assert_eq!(before.stats().bytes_staged, (n * 8) as u64, "staged");
        before.map_in_place(xs, |x| x * 2).unwrap();
        assert_eq!(xs[3], 6);
        let after = Pool::new(2).unwrap();
        assert_eq!(after.map(xs, |x| x + 1).unwrap()[1], 3);
        assert_eq!(after.stats().bytes_staged, 0, "read in place");
        // SAFETY: allocated above with this layout; no slice of it is used
        // after this.
        unsafe { DIRECT.dealloc(p.cast(), layout) };
    })
}

#[derive(Clone, Copy, bytemuck_derive::Pod, bytemuck_derive::Zeroable)]
#[repr(C, align(8192))]
struct OverAligned([u64; 1024]);

#[test]
fn over_aligned_heap_data_is_refused_as_anywhere_else() {
    isolated_with_heap("over_aligned_body", 120);
}

/// A type aligned beyond a page cannot live in shared memory: refused with
/// `InvalidArgument` when it lies in the heap too, as when it is staged.
#[test]
#[ignore = "run in a process of its own by over_aligned_heap_data_is_refused_as_anywhere_else"]
fn over_aligned_body() {
    if !in_isolation() {
        return;
    }
    deadline(100, || {
        let pool = Pool::new(1).unwrap();
        let xs = vec![OverAligned([1; 1024]); 16];
        let mut out = vec![OverAligned([0; 1024]); 16];
        assert!(in_heap(&xs) && in_heap(&out));
        let bump = |b: OverAligned| OverAligned([b.0[0] + 1; 1024]);
        let refused = |r: Result<(), Error>| matches!(r, Err(Error::InvalidArgument { .. }));
        assert!(refused(pool.map(&xs, bump).map(drop)));
        assert!(refused(pool.map_into(&xs, &mut out, bump)));
        assert!(refused(pool.map_in_place(&mut out, bump)));
        assert_eq!(out[0].0[0], 0, "nothing written");
        assert_eq!(pool.map(&[1u64, 2], |x| x + 1).unwrap()[..], [2, 3]);
    })
}

#[test]
fn a_stray_write_into_the_heaps_writable_alias_faults() {
    isolated_with_heap("stray_alias_write_body", 120);
}

/// Where `addr` (a heap address) appears in this worker's writable alias of
/// the heap: its shared mapping of the heap's memfd, beside the private,
/// read-only view at the heap's own address. 0 if there is none.
fn alias_of(addr: u64) -> u64 {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let (mut view, mut alias) = (None, None);
    for line in maps.lines().filter(|l| l.contains("heap.shmpool")) {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let mut ends = range
            .split('-')
            .map(|x| u64::from_str_radix(x, 16).unwrap_or(0));
        let (start, end) = (ends.next().unwrap_or(0), ends.next().unwrap_or(0));
        if perms.ends_with('s') {
            alias.get_or_insert(start);
        } else if (start..end).contains(&addr) {
            view.get_or_insert(start);
        }
    }
    match (view, alias) {
        (Some(view), Some(alias)) => alias + (addr - view),
        _ => 0,
    }
}

/// A task that writes through the alias at the heap address `target`, as a
/// kernel running past its output would. Returns 1 if it found no alias.
fn stray_write(target: &u64, _: u64) -> u64 {
    let at = alias_of(*target);
    if at == 0 {
        return 1;
    }
    // SAFETY: none: this task writes memory it was not given, on purpose.
    unsafe { (at as *mut u64).write_volatile(0xdead) };
    0
}

/// The alias lets a worker write a job's output in the heap, and nothing
/// else: a task that writes elsewhere in it (the parent's own heap data, or
/// the output of a job that is over) fails its job with `HeapWrite`, and the
/// parent's data is unchanged.
#[test]
#[ignore = "run in a process of its own by a_stray_write_into_the_heaps_writable_alias_faults"]
fn stray_alias_write_body() {
    if !in_isolation() {
        return;
    }
    static PARENTS: AtomicU64 = AtomicU64::new(0);
    deadline(100, || {
        let parents: Vec<u64> = vec![5; N];
        let mut out: Vec<u64> = vec![1; N];
        assert!(in_heap(&parents) && in_heap(&out));
        // ORDERING: Relaxed: read by the workers, forked after this.
        PARENTS.store(parents.as_ptr() as u64, Relaxed);
        let pool = Pool::new(1).unwrap();
        let expect_heap_write = |r: Result<ShmVec<u64>, Error>| match r {
            Err(Error::HeapWrite { range, .. }) => assert_eq!(range, Some(0..1)),
            other => panic!("expected HeapWrite, got {other:?}"),
        };
        // The parent's data, from a job with no output in the heap.
        expect_heap_write(pool.map_with(parents.as_ptr() as u64, &[0u64], stray_write));
        assert!(parents.iter().all(|&x| x == 5), "the parent's data changed");
        // From a job whose output is in the heap: only that output is open.
        let overrun = pool.map_in_place(&mut out[..1], |x| {
            // ORDERING: Relaxed: set before the fork.
            stray_write(&PARENTS.load(Relaxed), 0);
            x
        });
        assert!(
            matches!(overrun, Err(Error::HeapWrite { .. })),
            "expected HeapWrite, got {overrun:?}"
        );
        assert!(parents.iter().all(|&x| x == 5), "the parent's data changed");
        // A job's output in the heap is written in place; once the job is
        // over, the same worker cannot write it any more.
        let staged = pool.stats().bytes_staged;
        pool.map_in_place(&mut out, |x| x + 1).unwrap();
        assert!(out.iter().all(|&x| x == 2));
        assert_eq!(pool.stats().bytes_staged, staged, "written in place");
        expect_heap_write(pool.map_with(out.as_ptr() as u64, &[0u64], stray_write));
        assert!(
            out.iter().all(|&x| x == 2),
            "a finished job's output changed"
        );
        let mut into = vec![0u64; N];
        pool.map_into(&out, &mut into, |x| x * 10).unwrap();
        assert!(into.iter().all(|&x| x == 20));
        assert!(
            common::wait_until(std::time::Duration::from_secs(10), || pool
                .stats()
                .worker_restarts
                == 3),
            "the three writers replaced"
        );
        common::assert_healthy(&pool);
    })
}

#[test]
fn a_hidden_worker_cannot_write_a_heap_output_after_its_call() {
    isolated_with_heap("hidden_worker_heap_body", 120);
}

/// A failed `map_into` of a heap output returns only once no worker can
/// write it: after it returns, the caller frees the output and reuses its
/// memory for data of its own, which no late write may reach.
#[test]
#[ignore = "run in a process of its own by a_hidden_worker_cannot_write_a_heap_output_after_its_call"]
fn hidden_worker_heap_body() {
    if !in_isolation() {
        return;
    }
    deadline(100, || {
        let pool = Pool::builder().workers(2).chunk_size(1).build().unwrap();
        let n = N;
        let xs: Vec<u64> = (0..n as u64).collect();
        let mut out = vec![0u64; n];
        assert!(in_heap(&out));
        let r = pool.map_into(&xs, &mut out, common::forge::hide_then_write);
        assert!(matches!(r, Err(Error::TaskPanicked { .. })), "{r:?}");
        drop(out);
        let mine = vec![7u64; n];
        std::thread::sleep(std::time::Duration::from_millis(700));
        assert!(
            mine.iter().all(|&v| v == 7),
            "a worker wrote the caller's heap after its call"
        );
        common::assert_healthy(&pool);
    })
}
