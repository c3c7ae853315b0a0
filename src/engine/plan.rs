//! A [`Plan`]: everything a front end chose, turned into the engine's parts
//! in one place — the guardian's supervisor, the executor, the options.
//! `run`, `run --persistent`, `run --queue`, `worker`, `worker
//! --persistent` and `resume` all end in [`Plan::run`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::events::{Observer, RunSummary};
use crate::exec::{MemoryOptions, SpillBudget, Supervisor};
use crate::queue::Queue;
use crate::template::Template;

use super::halt::Halt;
use super::{Executor, JobSource, Options, Processes, Workers, WorkersOptions};

/// What runs each job.
#[derive(Debug, Clone)]
pub enum Work {
    /// A process per attempt, of this command template.
    Command(Template),
    /// Long-lived worker processes (`--persistent`).
    Persistent(WorkersOptions),
}

/// Everything that shapes a run, from any front end.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What runs each job.
    pub work: Work,
    /// Attempts at once (`-j`): slots, or worker processes.
    pub jobs: usize,
    /// Time limit of one attempt.
    pub timeout: Option<Duration>,
    /// Time between TERM and KILL when stopping a job.
    pub grace: Duration,
    /// When to stop early.
    pub halt: Option<Halt>,
    /// Print output in input order.
    pub keep_order: bool,
    /// Bytes of job output held in memory before spilling to files.
    pub output_memory: usize,
    /// The jobmill binary, to start the guardian that stops every job if
    /// jobmill itself is killed; `None` runs without one.
    pub guardian: Option<PathBuf>,
    /// Install SIGINT/SIGTERM/SIGHUP handlers for the run's duration.
    pub handle_signals: bool,
    /// The host name stored with each attempt by queues that record it.
    pub host: Option<String>,
    /// Print each job's output (off: `--results` keeps it instead).
    pub print_output: bool,
    /// Prefix every line of a job's output (`--tag`, `--tagstring`).
    pub tag: Option<super::output::Tag>,
    /// Print output as it comes (`--line-buffer`, `-u`). Applies to a
    /// process per attempt only: a long-lived worker's result arrives
    /// whole, and is printed whole.
    pub live: Option<super::output::Live>,
    /// `--delay`, `--memfree`, `--load`, `--mem-per-job`; a throttle with
    /// nothing set still caps the jobs at once after an OOM kill (see
    /// [`super::throttle`]).
    pub throttle: Option<Arc<super::throttle::Throttle>>,
    /// Memory options (`--mem-limit`; set it, even without a limit, for
    /// any option that needs each job's memory measured, such as
    /// `--mem-per-job`): each attempt, or each long-lived worker, then
    /// runs in a cgroup of its own, or under `RLIMIT_AS` where none can be
    /// made (see [`crate::exec::memory`]). `None`: no cgroup, and the
    /// plain spawn path.
    pub memory: Option<MemoryOptions>,
    /// A stop asked from outside the run, by a library front end (see
    /// [`Options::stop`]); `None` for the CLI, which stops on signals.
    pub stop: Option<super::stop::StopHandle>,
}

impl Plan {
    /// A plan with the defaults of `jobmill run` for `work`: one slot per
    /// CPU, no timeout, a grace of 2 s, 64 MiB of output in memory.
    pub fn new(work: Work) -> Plan {
        Plan {
            work,
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            timeout: None,
            grace: Duration::from_secs(2),
            halt: None,
            keep_order: false,
            output_memory: 64 << 20,
            guardian: None,
            handle_signals: false,
            host: None,
            print_output: true,
            tag: None,
            live: None,
            throttle: None,
            memory: None,
            stop: None,
        }
    }

    /// Runs the jobs of `queue` (and of `input`, when the run owns the
    /// queue) under this plan. See [`super::run`].
    ///
    /// # Errors
    ///
    /// When the run cannot start: the guardian, the signal handlers or a
    /// thread could not be set up.
    pub fn run(
        self,
        queue: Arc<dyn Queue>,
        input: Option<JobSource>,
        observers: Vec<Arc<dyn Observer>>,
    ) -> std::io::Result<RunSummary> {
        let budget = SpillBudget::new(self.output_memory);
        let mut supervisor =
            Supervisor::with_guardian_grace(self.guardian.as_deref(), self.grace, budget.clone())?;
        if let Some(memory) = self.memory {
            supervisor = supervisor.with_memory(memory);
        }
        let supervisor = Arc::new(supervisor);
        let live = match self.work {
            Work::Command(_) => self.live,
            Work::Persistent(_) => None,
        };
        let executor: Arc<dyn Executor> = match self.work {
            Work::Command(template) => Arc::new(Processes::new(
                supervisor,
                template,
                self.jobs,
                self.timeout,
                self.grace,
            )),
            Work::Persistent(mut opts) => {
                opts.config.workers = self.jobs.max(1);
                opts.config.timeout = self.timeout;
                Arc::new(Workers::new(supervisor, opts))
            }
        };
        let opts = Options {
            keep_order: self.keep_order,
            halt: self.halt,
            budget,
            handle_signals: self.handle_signals,
            grace: self.grace,
            host: self.host,
            print_output: self.print_output,
            tag: self.tag,
            live,
            throttle: self.throttle,
            stop: self.stop,
        };
        super::run(queue, input, executor, observers, opts)
    }
}
