//! `Element`: the bound on every value a pool moves through shared memory.
//!
//! It is `bytemuck::Pod` under a name of the crate's own, for one reason:
//! a trait of this crate can carry `#[diagnostic::on_unimplemented]`, so that
//! a `String`, a tuple or a `Vec` passed to `map` gets a compile error that
//! says what to use instead, rather than a bare "`Pod` is not implemented".

use bytemuck::Pod;

/// A value that can travel between the caller and the workers: any
/// [`bytemuck::Pod`] type. You never implement it; every `Pod` type has it.
///
/// Inputs, outputs and contexts are copied as bytes into shared memory and
/// read by another process, so they must be plain old data: integers and
/// floats, arrays of them (`[f64; 2]` for a pair; any length), and
/// `#[repr(C)]` structs of them without padding that derive `Pod` and
/// `Zeroable` (bytemuck's `derive` feature: `bytemuck = { version = "1.25",
/// features = ["derive"] }` in your Cargo.toml). Not `String`, `Vec`, `Box`
/// or references (they point into the caller's heap, which means nothing in
/// a worker), nor tuples, `bool` or `char` (tuples have no fixed layout and
/// may hold padding; not every byte pattern is a valid `bool` or `char`).
///
/// A generic function that maps can ask for `T: Pod` or `T: Element`; the
/// two are the same.
///
/// ```
/// use shmpool::bytemuck::{Pod, Zeroable};
/// # // The derive macros, from bytemuck_derive: the workspace leaves
/// # // bytemuck's `derive` feature off so that building an example does not
/// # // build syn (see Cargo.toml, [workspace]). Should the feature come back,
/// # // this line fails with E0252 (`Pod` defined twice), which is the point.
/// # use bytemuck_derive::{Pod, Zeroable};
///
/// #[derive(Clone, Copy, Pod, Zeroable)]
/// #[repr(C)]
/// struct Particle {
///     pos: [f32; 3],
///     mass: f32,
/// }
///
/// let pool = shmpool::Pool::new(2)?;
/// let ps = [Particle { pos: [1.0, 2.0, 2.0], mass: 2.0 }; 4];
/// let momentum = pool.map(&ps, |p| p.mass * p.pos.iter().map(|x| x * x).sum::<f32>().sqrt())?;
/// assert_eq!(momentum, vec![6.0; 4]);
///
/// // A pair is an array, not a tuple.
/// let pairs = [[1.0f64, 2.0], [3.0, 4.0]];
/// assert_eq!(pool.map(&pairs, |[a, b]| a * b)?, vec![2.0, 12.0]);
/// # Ok::<(), shmpool::Error>(())
/// ```
///
/// Anything else is a compile error that says so:
///
/// ```compile_fail,E0277
/// let pool = shmpool::Pool::new(1).unwrap();
/// let names = vec![String::from("a")];
/// // error[E0277]: `String` is not plain old data: shmpool cannot send it
/// // to a worker process
/// let _ = pool.map(&names, |s| s.len() as u64);
/// ```
///
/// ```compile_fail,E0277
/// let pool = shmpool::Pool::new(1).unwrap();
/// let _ = pool.map(&[(1.0f64, 2.0f64)], |(a, b)| a + b);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not plain old data: shmpool cannot send it to a worker process",
    label = "`{Self}` is not `Pod`",
    note = "inputs, outputs and contexts are copied into shared memory as bytes: \
            use numbers, arrays of them (`[f64; 2]` for a pair, not `(f64, f64)`), \
            or a `#[repr(C)]` struct with `#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]`",
    note = "`String`, `Vec`, `Box` and references hold pointers into this process's heap, \
            which mean nothing in a worker: pass numbers (indices, lengths, fixed-size byte arrays) instead"
)]
pub trait Element: Pod {}

impl<T: Pod> Element for T {}
