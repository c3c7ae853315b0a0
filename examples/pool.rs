//! A typed process pool: count the primes below each bound in worker
//! processes of this same binary.
//!
//! ```text
//! cargo run --release --example pool -- 2000
//! ```
//!
//! `pool::init` at the top of `main` is what makes the workers: the pool
//! starts copies of this program with the task's name in their
//! environment, and in them `init` serves the task and exits.

use jobmill::pool::{self, Pool, PoolError, Task};
use serde::{Deserialize, Serialize};

/// One item: count the primes below `below`.
#[derive(Debug, Serialize, Deserialize)]
struct Range {
    below: u64,
}

/// One result.
#[derive(Debug, Serialize, Deserialize)]
struct Count {
    below: u64,
    primes: u64,
}

fn count_primes(r: Range) -> Count {
    let primes = (2..r.below)
        .filter(|&n| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64;
    Count {
        below: r.below,
        primes,
    }
}

static COUNT_PRIMES: Task<Range, Count> = Task::new("count_primes", count_primes);

fn main() -> Result<(), PoolError> {
    // First thing: in a worker process this never returns.
    pool::init(&[&COUNT_PRIMES]);

    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let pool = Pool::builder().retries(1).build()?;

    // Lazy input, results in input order, each one a Result.
    let items = (1..=n).map(|i| Range { below: i * 10 });
    let mut last = None;
    for result in pool.map(&COUNT_PRIMES, items) {
        last = Some(result?);
    }
    if let Some(c) = last {
        println!("{} primes below {}", c.primes, c.below);
    }

    // Results as they come; an error names its item.
    let failed = pool
        .map_unordered(&COUNT_PRIMES, (1..=n).map(|i| Range { below: i }))
        .filter_map(Result::err)
        .inspect(|e| eprintln!("{e}"))
        .count();
    println!("{n} items, {failed} failed");
    Ok(())
}
