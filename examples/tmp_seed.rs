use shmpool::Pool;
use std::time::Instant;
fn main() {
    let mut rows = vec![];
    for _ in 0..25 {
        let t0 = Instant::now();
        let p = Pool::new(4).unwrap();
        let t1 = Instant::now();
        let xs: Vec<i64> = (0..100).collect();
        let ys = p.map(&xs, |x| x * x).unwrap();
        assert_eq!(ys[99], 9801);
        let t2 = Instant::now();
        p.close();
        p.join().unwrap();
        let t3 = Instant::now();
        drop(ys);
        drop(p);
        let t4 = Instant::now();
        rows.push([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0].map(|d| d.as_secs_f64() * 1e3));
    }
    for (i, name) in ["new", "map", "close+join", "drop", "total"]
        .iter()
        .enumerate()
    {
        let mut v: Vec<f64> = rows[3..].iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        println!(
            "{name:>10}: median {:.3} ms  min {:.3}",
            v[v.len() / 2],
            v[0]
        );
    }
}
