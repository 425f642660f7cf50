//! `apply_async`, `map_async` and `AsyncResult`: waiting, callbacks, the
//! `Future` under several executors, many results in flight, and calls back
//! into the pool from a callback.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{Gate, deadline, gated, sleepy};
use shmpool::{Error, Pool};

#[test]
fn get_wait_ready_successful() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        // A job that waits until the test opens its gate: "not yet" holds
        // however slowly this thread runs on a loaded machine.
        let gate = Gate::new();
        let r = pool.apply_async(gate.token(), gated).unwrap();
        assert!(!r.ready());
        assert_eq!(r.successful(), None);
        assert!(
            !r.wait_timeout(Duration::from_millis(10)),
            "a short wait times out"
        );
        assert!(!r.ready(), "and leaves the job running");
        gate.open();
        assert!(
            r.wait_timeout(Duration::from_secs(10)),
            "and the job still completes"
        );
        assert!(r.ready());
        assert_eq!(r.successful(), Some(true));
        assert_eq!(r.get().unwrap(), gate.token());

        let failing = pool.apply_async(0u32, |x| 1 / x).unwrap();
        failing.wait();
        assert_eq!(failing.successful(), Some(false));
        assert!(matches!(failing.get(), Err(Error::TaskPanicked { .. })));

        let gate = Gate::new();
        let mut slow = pool.apply_async(gate.token(), gated).unwrap();
        let err = slow.get_timeout(Duration::from_millis(5)).unwrap_err();
        assert!(matches!(err, Error::WaitTimedOut { .. }), "{err}");
        gate.open();
        assert_eq!(
            slow.get_timeout(Duration::from_secs(10)).unwrap(),
            gate.token()
        );
        assert!(matches!(
            slow.get_timeout(Duration::ZERO),
            Err(Error::InvalidArgument { .. })
        ));
    })
}

#[test]
fn map_async_copies_borrowed_inputs_and_reads_moved_ones_in_place() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let xs = pool.to_shm(&(0..10_000u32).collect::<Vec<_>>()).unwrap();
        let expect = |out: &[u64]| out.iter().enumerate().all(|(i, &y)| y == 2 * i as u64);

        let borrowed = pool
            .map_async(&xs, |x| u64::from(x) * 2)
            .unwrap()
            .get()
            .unwrap();
        assert!(expect(&borrowed));
        assert_eq!(
            pool.stats().bytes_staged,
            40_000,
            "a borrowed ShmVec is copied once"
        );

        let arena_before = pool.stats().arena_in_use;
        let moved = pool
            .map_async(xs, |x| u64::from(x) * 2)
            .unwrap()
            .get()
            .unwrap();
        assert!(expect(&moved));
        assert_eq!(
            pool.stats().bytes_staged,
            40_000,
            "a moved ShmVec is read in place"
        );
        assert_eq!(
            pool.stats().arena_in_use,
            arena_before - 40_064 + 80_000,
            "the moved input was freed with the job; only the new output remains"
        );

        let v: Vec<u32> = (0..1000).collect();
        let out = pool.map_async(&v, |x| x + 1).unwrap().get().unwrap();
        assert_eq!(out[999], 1000);
        let arr = [1u8, 2, 3];
        assert_eq!(
            pool.map_async(&arr, |x| x * 2).unwrap().get().unwrap(),
            vec![2, 4, 6]
        );

        let empty: &[u32] = &[];
        let r = pool.map_async(empty, |x| x).unwrap();
        assert!(r.ready());
        assert!(r.get().unwrap().is_empty());
    })
}

#[test]
fn the_caller_may_change_or_forget_while_the_job_runs() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let mut xs = pool.to_shm(&[40u64; 8]).unwrap();
        let seen = Arc::new(Mutex::new(None));
        let r = pool.map_async(&xs, sleepy).unwrap();
        let s = seen.clone();
        r.on_complete(move |out| *s.lock().unwrap() = Some(out.as_ref().unwrap().to_vec()));
        // The job owns a copy, so forgetting the result and then changing or
        // freeing the input is harmless: no worker reads it.
        std::mem::forget(r);
        xs.fill(0);
        drop(xs);
        let reuse = pool.alloc_zeroed::<u64>(8).unwrap();
        assert!(common::wait_until(Duration::from_secs(10), || seen
            .lock()
            .unwrap()
            .is_some()));
        assert_eq!(seen.lock().unwrap().as_deref(), Some(&[40u64; 8][..]));
        drop(reuse);
    })
}

#[test]
fn a_late_callback_waiting_on_its_own_result_does_not_deadlock() {
    deadline(30, || {
        let pool = Pool::new(1).unwrap();
        let r = Arc::new(pool.apply_async(1u8, |x| x + 1).unwrap());
        r.wait();
        let (me, flag) = (r.clone(), Arc::new(AtomicUsize::new(0)));
        let f = flag.clone();
        r.on_complete(move |out| {
            assert_eq!(*out.as_ref().unwrap(), 2);
            // The outcome is lent to this very callback: waiting must return.
            assert!(!me.wait_timeout(Duration::from_secs(5)) || me.ready());
            me.wait();
            f.fetch_add(1, SeqCst);
        });
        assert_eq!(flag.load(SeqCst), 1);
        assert!(r.ready());
        assert_eq!(Arc::try_unwrap(r).unwrap().get().unwrap(), 2);
    })
}

#[test]
fn callbacks_run_exactly_once_in_the_result_thread() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let mut results = Vec::new();
        for i in 0..200u64 {
            let r = pool.apply_async(i, |x| x * x).unwrap();
            let (c, t) = (calls.clone(), threads.clone());
            r.on_complete(move |out| {
                assert_eq!(*out.as_ref().unwrap(), i * i);
                c.fetch_add(1, SeqCst);
                t.lock()
                    .unwrap()
                    .push(thread::current().name().map(str::to_owned));
            });
            results.push((i, r));
        }
        for (i, r) in results {
            assert_eq!(
                r.get().unwrap(),
                i * i,
                "get() still returns the result after the callback"
            );
        }
        assert_eq!(calls.load(SeqCst), 200);
        // Callbacks registered before completion ran in the result thread, or
        // (if the job beat the registration) at once in this thread.
        let me = thread::current().name().map(str::to_owned);
        for t in threads.lock().unwrap().iter() {
            assert!(t.as_deref() == Some("shmpool-results") || *t == me, "{t:?}");
        }

        // Registered after completion: runs at once, here, exactly once.
        let r = pool.apply_async(3u64, |x| x + 1).unwrap();
        r.wait();
        let here = Arc::new(Mutex::new(None));
        let h = here.clone();
        r.on_complete(move |out| {
            *h.lock().unwrap() = Some((*out.as_ref().unwrap(), thread::current().id()))
        });
        assert_eq!(*here.lock().unwrap(), Some((4, thread::current().id())));
        assert_eq!(r.get().unwrap(), 4);
        thread::sleep(Duration::from_millis(50));
        assert_eq!(calls.load(SeqCst), 200, "no callback ran twice");
    })
}

#[test]
fn callbacks_see_errors_and_their_panics_are_contained() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let saw = Arc::new(Mutex::new(None));
        let r = pool.apply_async(0u8, |x| 10 / x).unwrap();
        r.on_complete(|_| panic!("a callback that panics"));
        let s = saw.clone();
        r.on_complete(move |out| *s.lock().unwrap() = Some(out.is_err()));
        assert!(matches!(r.get(), Err(Error::TaskPanicked { .. })));
        assert_eq!(*saw.lock().unwrap(), Some(true));
        // The result thread survived the panicking callback.
        assert_eq!(pool.apply_async(2u8, |x| x * 2).unwrap().get().unwrap(), 4);
    })
}

#[test]
fn ten_thousand_in_flight() {
    deadline(120, || {
        let pool = Pool::new(2).unwrap();
        let pending: Vec<_> = (0..10_000u64)
            .map(|i| pool.apply_async(i, |x| x ^ 0xabcd).unwrap())
            .collect();
        for (i, r) in pending.into_iter().enumerate() {
            assert_eq!(r.get().unwrap(), i as u64 ^ 0xabcd);
        }
        let s = pool.stats();
        assert_eq!((s.jobs_completed, s.jobs_failed), (10_000, 0));
    })
}

#[test]
fn futures_under_tokio_smol_and_futures_executor() {
    deadline(60, || {
        let pool = Arc::new(Pool::new(2).unwrap());

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let sum = rt.block_on({
            let pool = pool.clone();
            async move {
                let tasks: Vec<_> = (0..50u64)
                    .map(|i| {
                        let r = pool.apply_async(i, |x| x * 2).unwrap();
                        tokio::spawn(r)
                    })
                    .collect();
                let mut sum = 0;
                for t in tasks {
                    sum += t.await.unwrap().unwrap();
                }
                let xs: Vec<u64> = (0..1000).collect();
                let ys = pool.map_async(&xs, |x| x + 1).unwrap().await.unwrap();
                sum + ys.iter().sum::<u64>()
            }
        });
        assert_eq!(sum, 2450 + 500_500);

        let current = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let v = current.block_on(async {
            let r = pool.apply_async(150u64, sleepy).unwrap();
            tokio::time::timeout(Duration::from_secs(10), r)
                .await
                .unwrap()
                .unwrap()
        });
        assert_eq!(v, 150);

        let v = smol::block_on(pool.apply_async(5u32, |x| x * 5).unwrap()).unwrap();
        assert_eq!(v, 25);
        let v = futures::executor::block_on(async {
            let a = pool.apply_async(20u64, sleepy).unwrap();
            let b = pool.apply_async(30u64, sleepy).unwrap();
            let (a, b) = futures::join!(a, b);
            a.unwrap() + b.unwrap()
        });
        assert_eq!(v, 50);
    })
}

#[test]
fn blocking_on_an_unfinished_job_inside_a_callback_is_an_error() {
    deadline(60, || {
        let pool = Arc::new(Pool::new(2).unwrap());
        let verdict = Arc::new(Mutex::new(None));
        // Both jobs wait at gates: `slow` is still unfinished when the
        // callback asks for it (its gate is never opened: dropping the pool
        // ends it), and `first` finishes only once its callback is
        // registered, so that the callback runs in the result thread.
        let (never, release) = (Gate::new(), Gate::new());
        let slow = Arc::new(Mutex::new(Some(
            pool.apply_async(never.token(), gated).unwrap(),
        )));
        let first = pool.apply_async(release.token(), gated).unwrap();
        let (v, s) = (verdict.clone(), slow.clone());
        first.on_complete(move |_| {
            let r = s.lock().unwrap().take().unwrap();
            let thread = thread::current().name().map(str::to_owned);
            *v.lock().unwrap() = Some((thread, r.get()));
        });
        release.open();
        first.get().unwrap();
        let (thread, got) = verdict.lock().unwrap().take().expect("the callback ran");
        assert_eq!(
            thread.as_deref(),
            Some("shmpool-results"),
            "premise: a result-thread callback"
        );
        assert!(matches!(got, Err(Error::WouldDeadlock { .. })), "{got:?}");
    })
}

#[test]
fn awaiting_an_unfinished_job_inside_a_callback_is_an_error() {
    common::isolated("await_in_callback_body", 60);
}

#[test]
#[ignore = "run by awaiting_an_unfinished_job_inside_a_callback_is_an_error"]
fn await_in_callback_body() {
    if !common::in_isolation() {
        return;
    }
    deadline(50, || {
        let pool = Pool::new(2).unwrap();
        // As in `blocking_on_an_unfinished_job_inside_a_callback_is_an_error`,
        // with `block_on` in place of `get`: the future would wait for the
        // very thread that polls it, and so would dropping the pool.
        let (later, release) = (Gate::new(), Gate::new());
        let slow = Arc::new(Mutex::new(Some(
            pool.apply_async(later.token(), gated).unwrap(),
        )));
        let first = pool.apply_async(release.token(), gated).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let s = slow.clone();
        first.on_complete(move |_| {
            let r = s.lock().unwrap().take().unwrap();
            let thread = thread::current().name().map(str::to_owned);
            tx.send((thread, futures::executor::block_on(r))).unwrap();
        });
        release.open();
        let (thread, got) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("block_on returned");
        assert_eq!(
            thread.as_deref(),
            Some("shmpool-results"),
            "premise: a result-thread callback"
        );
        assert!(matches!(got, Err(Error::WouldDeadlock { .. })), "{got:?}");
        assert_eq!(first.get().unwrap(), release.token());
        // The result thread carries on: another job, then close and join.
        later.open();
        assert_eq!(pool.apply_async(3u8, |x| x * 2).unwrap().get().unwrap(), 6);
        pool.close();
        pool.join().unwrap();
        drop(pool);
    })
}

#[test]
fn waiting_while_a_late_callback_reads_the_outcome_returns_at_once() {
    deadline(60, || {
        let pool = Pool::new(1).unwrap();
        let r = Arc::new(pool.apply_async(4u8, |x| x + 1).unwrap());
        r.wait();
        let (started_tx, started) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let registrar = thread::spawn({
            let r = r.clone();
            move || {
                // A callback on a complete result runs here, at once, and
                // holds the outcome until it returns.
                r.on_complete(move |out| {
                    assert_eq!(*out.as_ref().unwrap(), 5);
                    started_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                });
            }
        });
        started.recv_timeout(Duration::from_secs(20)).unwrap();
        let t = std::time::Instant::now();
        assert!(r.ready());
        assert!(r.wait_timeout(Duration::from_secs(10)));
        r.wait();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "waited for the late callback: {:?}",
            t.elapsed()
        );
        go.send(()).unwrap();
        registrar.join().unwrap();
        assert_eq!(Arc::try_unwrap(r).unwrap().get().unwrap(), 5);
    })
}

#[test]
fn callbacks_may_submit_more_work_even_when_the_ring_is_full() {
    deadline(60, || {
        let pool = Arc::new(Pool::builder().workers(2).ring_size(2).build().unwrap());
        let results = Arc::new(Mutex::new(Vec::new()));
        let mut first = Vec::new();
        for i in 0..20u64 {
            let r = pool.apply_async(i, |x| x + 100).unwrap();
            let (p, out) = (pool.clone(), results.clone());
            r.on_complete(move |v| {
                let v = *v.as_ref().unwrap();
                // A blocking call from the result thread, with the ring full.
                let w = p.apply(v, |x| x * 2).unwrap();
                out.lock().unwrap().push(w);
            });
            first.push(r);
        }
        for r in first {
            r.get().unwrap();
        }
        let mut got = results.lock().unwrap().clone();
        got.sort_unstable();
        assert_eq!(got, (0..20u64).map(|i| (i + 100) * 2).collect::<Vec<_>>());
    })
}

#[test]
fn a_wait_inside_a_callback_run_by_cancel_returns_at_once() {
    deadline(60, || {
        let pool = Arc::new(Pool::new(2).unwrap());
        let xs = vec![50u64; 1000];
        let r = Arc::new(pool.map_async(&xs, sleepy).unwrap());
        let (me, p) = (r.clone(), pool.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        r.on_complete(move |out| {
            // This callback runs in the thread that cancels, while the
            // outcome is not yet visible: waiting on its own result, or for
            // the pool, would wait for this very thread.
            me.wait();
            let timed = me.wait_timeout(Duration::from_secs(30));
            let forever = me.wait_timeout(Duration::MAX);
            let joined = p.join();
            let name = thread::current().name().map(str::to_owned);
            tx.send((
                matches!(out, Err(Error::Cancelled)),
                timed,
                forever,
                matches!(joined, Err(Error::WouldDeadlock { .. })),
                name,
            ))
            .unwrap();
        });
        let canceller = thread::Builder::new()
            .name("canceller".into())
            .spawn({
                let r = r.clone();
                move || r.cancel()
            })
            .unwrap();
        let (cancelled, timed, forever, join_refused, name) =
            rx.recv_timeout(Duration::from_secs(20)).unwrap();
        canceller.join().unwrap();
        assert!(cancelled);
        assert_eq!(
            name.as_deref(),
            Some("canceller"),
            "premise: the cancelling thread ran it"
        );
        assert!(
            !timed && !forever,
            "the outcome is not visible inside its own callback"
        );
        assert!(
            join_refused,
            "join() from a callback is WouldDeadlock on any thread"
        );
        assert!(r.ready());
        assert!(matches!(
            Arc::try_unwrap(r).unwrap().get(),
            Err(Error::Cancelled)
        ));
    })
}

#[test]
fn join_waits_for_the_callbacks_of_a_cancelled_job() {
    deadline(60, || {
        let pool = Arc::new(Pool::new(2).unwrap());
        let xs = vec![5u64; 1000];
        let r = pool.map_async(&xs, sleepy).unwrap();
        let (started, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (s, f) = (started.clone(), finished.clone());
        // Far longer than the job's running ranges take to drain and the
        // workers to exit.
        r.on_complete(move |_| {
            s.store(1, SeqCst);
            thread::sleep(Duration::from_millis(2_000));
            f.store(1, SeqCst);
        });
        let canceller = thread::spawn(move || r.cancel());
        assert!(common::wait_until(Duration::from_secs(10), || started
            .load(SeqCst)
            == 1));
        pool.close();
        pool.join().unwrap();
        assert_eq!(
            finished.load(SeqCst),
            1,
            "join() returned while the cancelled job's callback was still running"
        );
        canceller.join().unwrap();
    })
}

#[test]
fn a_callback_on_a_dropped_result_sees_the_real_outcome() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..20u64 {
            let tx = tx.clone();
            // Python's map_async(f, xs, callback=cb): the result is dropped at
            // once, long before the job (20 ms a task) completes.
            pool.map_async(&[20u64, 20, 20 + i], sleepy)
                .unwrap()
                .on_complete(move |out| {
                    tx.send((i, out.as_ref().map(|v| v.to_vec()).ok())).unwrap()
                });
        }
        let tx2 = tx.clone();
        pool.apply_async(30u64, sleepy)
            .unwrap()
            .on_complete(move |out| tx2.send((99, out.as_ref().map(|v| vec![*v]).ok())).unwrap());
        drop(tx);
        let mut got: Vec<_> = rx.iter().collect();
        got.sort_unstable();
        assert_eq!(got.len(), 21, "every callback ran exactly once");
        for (i, out) in &got[..20] {
            assert_eq!(out.as_deref(), Some(&[20, 20, 20 + i][..]), "job {i}");
        }
        assert_eq!(got[20], (99, Some(vec![30])));
        assert_eq!(pool.stats().jobs_cancelled, 0);
        // Without a callback, dropping still cancels.
        drop(pool.map_async(&[1_000u64; 64], sleepy).unwrap());
        assert!(common::wait_until(Duration::from_secs(5), || pool
            .stats()
            .jobs_cancelled
            == 1));
    })
}

#[test]
fn huge_timeouts_mean_forever() {
    deadline(60, || {
        let pool = Pool::builder()
            .workers(2)
            .task_timeout(Duration::MAX)
            .build()
            .unwrap();
        let mut r = pool.apply_async(50u64, sleepy).unwrap();
        assert!(r.wait_timeout(Duration::MAX));
        assert_eq!(r.get_timeout(Duration::MAX).unwrap(), 50);
        let mut r = pool.apply_async(50u64, sleepy).unwrap();
        assert_eq!(r.get_timeout(Duration::from_secs(u64::MAX)).unwrap(), 50);
        let r = pool.map_async(&[10u64; 4], sleepy).unwrap();
        assert!(r.wait_timeout(Duration::new(u64::MAX, 999_999_999)));
        assert_eq!(pool.map(&[1u64, 2], |x| x + 1).unwrap(), vec![2, 3]);
        // A timeout beyond any clock, and the next smaller ones: forever too.
        for t in [
            Duration::from_secs(u64::MAX / 2),
            Duration::from_secs(1 << 40),
        ] {
            let mut r = pool.apply_async(1u64, sleepy).unwrap();
            assert_eq!(r.get_timeout(t).unwrap(), 1);
        }
    })
}

/// A panic payload whose own drop panics.
struct Grenade;

impl Drop for Grenade {
    fn drop(&mut self) {
        panic!("the payload's drop panicked too");
    }
}

#[test]
fn a_callback_whose_panic_payload_panics_on_drop_is_contained() {
    common::isolated("payload_drop_body", 60);
}

#[test]
#[ignore = "run by a_callback_whose_panic_payload_panics_on_drop_is_contained"]
fn payload_drop_body() {
    if !common::in_isolation() {
        return;
    }
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        // On the result thread.
        let r = pool.apply_async(100u64, sleepy).unwrap();
        r.on_complete(|_| std::panic::panic_any(Grenade));
        assert_eq!(r.get().unwrap(), 100);
        // A late callback, in this thread.
        let r = pool.apply_async(1u64, sleepy).unwrap();
        r.wait();
        r.on_complete(|_| std::panic::panic_any(Grenade));
        assert_eq!(r.get().unwrap(), 1);
        // On the cancel path, in this thread.
        let r = pool.apply_async(5_000u64, sleepy).unwrap();
        r.on_complete(|_| std::panic::panic_any(Grenade));
        r.cancel();
        assert!(matches!(r.get(), Err(Error::Cancelled)));
        // A waker that panics the same way.
        struct Bomb;
        impl std::task::Wake for Bomb {
            fn wake(self: Arc<Self>) {
                std::panic::panic_any(Grenade);
            }
        }
        let mut fut = pool.apply_async(100u64, sleepy).unwrap();
        let waker = std::task::Waker::from(Arc::new(Bomb));
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(std::pin::Pin::new(&mut fut).poll(&mut cx).is_pending());
        fut.wait();
        // The result thread survived all of it.
        let after = pool.apply_async(2u64, |x| x * 2).unwrap();
        assert_eq!(after.get().unwrap(), 4);
        pool.close();
        pool.join().unwrap();
    })
}
