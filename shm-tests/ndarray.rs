//! ndarray interop (feature `ndarray`): maps over arrays of any dimension and
//! layout, results as arrays over shared memory, and stencils, each checked
//! against ndarray's own serial computation.

mod common;

use common::{deadline, in_isolation, isolated};
use ndarray::{Array, ArrayView2, ArrayViewD, Axis, IxDyn, array, s};
use shmpool::{Error, Pool};

#[test]
fn map_array_keeps_shape_for_every_dimension_and_layout() {
    deadline(120, || {
        let pool = Pool::new(2).unwrap();
        let a1 = Array::from_iter((0..1001).map(f64::from));
        assert_eq!(
            pool.map_array(&a1, |x| x * 2.0).unwrap().view(),
            a1.mapv(|x| x * 2.0)
        );
        let a3 = Array::from_shape_fn((7, 11, 13), |(i, j, k)| (i * 1000 + j * 10 + k) as u32);
        let got = pool.map_array(&a3, |x| x + 1).unwrap();
        assert_eq!(got.shape(), &[7, 11, 13]);
        assert_eq!(got.view(), a3.mapv(|x| x + 1));
        // A non-contiguous view: transposed and sliced.
        let t = a3.view().reversed_axes();
        let t = t.slice(s![..;2, 1.., ..]);
        assert_eq!(
            pool.map_array(&t, |x| x * 3).unwrap().view(),
            t.mapv(|x| x * 3)
        );
        // Dynamic dimension, zero-length and one-element arrays.
        let d = Array::from_shape_vec(IxDyn(&[2, 3, 4, 5]), (0..120u16).collect()).unwrap();
        assert_eq!(
            pool.map_array(&d, |x| x ^ 1).unwrap().view(),
            d.mapv(|x| x ^ 1)
        );
        let empty = Array::<f32, _>::zeros((0, 5));
        assert_eq!(pool.map_array(&empty, |x| x).unwrap().shape(), &[0, 5]);
        let one = array![[5i64]];
        assert_eq!(
            pool.map_array(&one, |x| -x).unwrap().view(),
            array![[-5i64]]
        );
    })
}

#[test]
fn arrays_in_shared_memory_are_read_in_place_and_results_are_views() {
    deadline(60, || {
        let pool = Pool::new(2).unwrap();
        let mut a = pool.alloc_array::<f32, _>((300, 400)).unwrap();
        a.view_mut()
            .indexed_iter_mut()
            .for_each(|((i, j), x)| *x = (i + j) as f32);
        let staged = pool.stats().bytes_staged;
        let b = pool.map_array(&a.view(), |x| x.sqrt()).unwrap();
        assert_eq!(pool.stats().bytes_staged, staged, "zero copies in");
        let v = b.view();
        assert_eq!(v[[299, 399]], (698.0f32).sqrt());
        // The result's view borrows shared memory; its ShmVec is the data.
        assert_eq!(b.as_slice().len(), 120_000);
        let owned = b.to_array();
        assert_eq!(owned.sum_axis(Axis(0)).len(), 400);
        let shm = b.into_shmvec();
        assert_eq!(shm.len(), 120_000);
        let back = shmpool::ShmArray::from_shmvec(shm, (400, 300)).unwrap();
        assert_eq!(back.shape(), &[400, 300]);
        assert!(matches!(
            shmpool::ShmArray::from_shmvec(pool.alloc_zeroed::<u8>(10).unwrap(), (3, 3)),
            Err(Error::InvalidArgument { .. })
        ));
    })
}

fn blur(a: &ArrayView2<f64>, (i, j): (usize, usize)) -> f64 {
    let (h, w) = a.dim();
    let win = a.slice(s![
        i.saturating_sub(1)..(i + 2).min(h),
        j.saturating_sub(1)..(j + 2).min(w)
    ]);
    win.sum() / win.len() as f64
}

#[test]
fn stencils_match_serial_ndarray_code() {
    deadline(120, || {
        let pool = Pool::new(2).unwrap();
        for (h, w) in [(1, 1), (1, 7), (13, 1), (97, 131), (300, 301)] {
            let img = Array::from_shape_fn((h, w), |(i, j)| ((i * 31 + j * 17) % 101) as f64);
            let serial = Array::from_shape_fn((h, w), |ij| blur(&img.view(), ij));
            let got = pool.map_stencil(&img, blur).unwrap();
            assert_eq!(got.view(), serial, "{h}x{w}");
        }
        // Any dimension: a 3-D neighbour count with a dynamic index.
        let cube = Array::from_shape_fn(IxDyn(&[4, 5, 6]), |ix| (ix[0] + ix[1] + ix[2]) as u32);
        let got = pool
            .map_stencil(&cube, |a: &ArrayViewD<u32>, ix: IxDyn| {
                a[&ix] + (0..3).map(|d| a.shape()[d] as u32).sum::<u32>()
            })
            .unwrap();
        assert_eq!(got.view(), cube.mapv(|x| x + 15));
    })
}

#[test]
fn shapes_ndarray_refuses_are_refused_not_panicked() {
    deadline(60, || {
        let pool = Pool::new(1).unwrap();
        let huge = pool.alloc_array::<(), _>((1usize << 62, 3));
        assert!(
            matches!(huge, Err(Error::InvalidArgument { .. })),
            "{huge:?}"
        );
    })
}

/// A broadcast view's memory is one row, its logical size terabytes: its
/// row-major copy must be refused by the arena, not attempted in the
/// caller's memory (where it aborted the process).
#[test]
fn a_broadcast_view_larger_than_the_arena_is_refused() {
    isolated("huge_broadcast_body", 60);
}

#[test]
#[ignore = "run by a_broadcast_view_larger_than_the_arena_is_refused"]
fn huge_broadcast_body() {
    if !in_isolation() {
        return;
    }
    deadline(30, || {
        let pool = Pool::new(2).unwrap();
        let row = Array::from_elem(1 << 20, 1.0f64);
        let huge = row.broadcast((1 << 20, 1 << 20)).unwrap();
        let oom = |r: &Result<_, Error>| matches!(r, Err(Error::OutOfSharedMemory { .. }));
        assert!(oom(&pool.map_array(&huge, |x| x + 1.0)));
        assert!(oom(
            &pool.map_stencil(&huge, |a: &ArrayView2<f64>, (i, j)| a[[i, j]])
        ));
        assert!(oom(&pool.array_to_shm(&huge)));
        // A broadcast that fits is copied row-major, and counted as staged.
        let small = row.slice(s![..4]);
        let small = small.broadcast((3, 4)).unwrap();
        let staged = pool.stats().bytes_staged;
        assert_eq!(
            pool.map_array(&small, |x| x * 2.0).unwrap().view(),
            small.mapv(|x| x * 2.0)
        );
        assert_eq!(pool.stats().bytes_staged, staged + 96);
        assert_eq!(pool.array_to_shm(&small).unwrap().view(), small);
        common::assert_healthy(&pool);
    })
}
