//! No-op throughput of the Redis backend, for bench/redis.sh.
//!
//! ```text
//! redis_bench produce URL N BATCH     put N small jobs in batches, then close
//! redis_bench work URL BATCH          lease and complete in batches until drained
//! ```
//!
//! Each `work` process prints how many jobs it completed.

use std::process::ExitCode;
use std::time::Duration;

use jobmill::job::{NewJob, WorkerId};
use jobmill::queue::redis::{RedisConfig, RedisQueue};
use jobmill::queue::{GetError, Queue};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: redis_bench produce URL N BATCH | work URL BATCH";
    let num = |i: usize| -> usize {
        args.get(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{usage}"))
    };
    let config = RedisConfig {
        capacity: 1_000_000,
        ..RedisConfig::default()
    };
    let Some(url) = args.get(2) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let q = match RedisQueue::connect(url, config) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("redis_bench: {e}");
            return ExitCode::from(1);
        }
    };
    match args[1].as_str() {
        "produce" => {
            let (n, batch) = (num(3), num(4));
            let mut seq = 0u64;
            while (seq as usize) < n {
                let k = batch.min(n - seq as usize);
                let jobs: Vec<NewJob> = (0..k)
                    .map(|i| NewJob::new(seq + i as u64 + 1, &b"x"[..]))
                    .collect();
                q.put_many(&jobs).expect("put");
                seq += k as u64;
            }
            q.close().expect("close");
        }
        "work" => {
            let batch = num(3);
            let mut done = 0u64;
            loop {
                match q.get_many(WorkerId(1), batch, Some(Duration::from_secs(60))) {
                    Ok(leases) => {
                        q.complete_many(&leases).expect("complete");
                        done += leases.len() as u64;
                    }
                    Err(GetError::Closed) => break,
                    Err(e) => {
                        eprintln!("redis_bench: {e}");
                        return ExitCode::from(1);
                    }
                }
            }
            println!("{done}");
        }
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
