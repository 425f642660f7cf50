use shmpool::Pool;
fn main() {
    let p = Pool::new(4).unwrap();
    eprintln!("--- built");
    let xs: Vec<i64> = (0..100).collect();
    let ys = p.map(&xs, |x| x * x).unwrap();
    eprintln!("--- mapped");
    let t = std::time::Instant::now();
    p.close();
    p.join().unwrap();
    eprintln!("--- joined {:?}", t.elapsed());
    drop(ys);
    drop(p);
    eprintln!("--- dropped");
}
