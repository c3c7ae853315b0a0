//! Throughput and start-up cost of `jobmill::Pool`.
//!
//! ```text
//! cargo run --release --example pool_bench -- [COUNT] [WORKERS] [WINDOW] [BLOBS]
//! ```
//!
//! Prints the rate of `map` and `map_unordered` over COUNT tiny items (a
//! `u64` squared), of BLOBS items of 1 MiB (default 100), and the time of a
//! `map` over one item on a new pool (starting and reaping the workers) and
//! on the workers a pool kept from its previous map.

use std::time::Instant;

use jobmill::pool::{self, Pool, Task};

static SQUARE: Task<u64, u64> = Task::new("square", |x| x * x);
static BLOB: Task<Vec<u8>, u64> = Task::new("blob", |v| v.iter().map(|&b| b as u64).sum());

fn main() {
    pool::init(&[&SQUARE, &BLOB]);
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let count = args.next().unwrap_or(1_000_000) as u64;
    let workers = args.next().unwrap_or(2);
    let window = args.next().unwrap_or(64);
    let blobs = args.next().unwrap_or(100) as u64;
    let pool = Pool::builder()
        .workers(workers)
        .window(window)
        .build()
        .expect("pool");

    let t = Instant::now();
    let sum: u64 = pool.map(&SQUARE, 0..count).map(|r| r.unwrap() & 1).sum();
    let dt = t.elapsed().as_secs_f64();
    println!(
        "map:           {count} items, {workers} workers, window {window}: {:.0} items/s ({sum})",
        count as f64 / dt
    );

    let t = Instant::now();
    let n = pool
        .map_unordered(&SQUARE, 0..count)
        .filter(Result::is_ok)
        .count();
    let dt = t.elapsed().as_secs_f64();
    println!("map_unordered: {n} items: {:.0} items/s", n as f64 / dt);

    let size = 1 << 20;
    let t = Instant::now();
    let n = pool
        .map_unordered(&BLOB, (0..blobs).map(|_| vec![1u8; size]))
        .filter(Result::is_ok)
        .count();
    let dt = t.elapsed().as_secs_f64();
    println!(
        "map_unordered: {n} items of 1 MiB: {:.0} MB/s",
        (n * size) as f64 / dt / 1e6
    );

    let rounds = 20;
    let t = Instant::now();
    for _ in 0..rounds {
        // A new pool each time: start the workers, one item, reap them.
        let cold = Pool::builder().workers(workers).build().expect("pool");
        assert_eq!(cold.map(&SQUARE, [3u64]).next().unwrap().unwrap(), 9);
    }
    let dt = t.elapsed().as_secs_f64() / rounds as f64;
    println!(
        "a one-item map on a new pool (start {workers} workers, reap them): {:.2} ms",
        dt * 1e3
    );
    let rounds = 200;
    let t = Instant::now();
    for _ in 0..rounds {
        let mut it = pool.map(&SQUARE, [3u64]);
        assert_eq!(it.next().unwrap().unwrap(), 9);
        assert!(it.next().is_none()); // finished: the workers go back
    }
    let dt = t.elapsed().as_secs_f64() / rounds as f64;
    println!(
        "a one-item map on the workers kept by the pool: {:.3} ms",
        dt * 1e3
    );
}
