//! Captured output of one stream of one attempt, in memory up to a budget
//! shared by the whole run, spilled to an anonymous temporary file past it.
//!
//! The budget counts the *capacity* of the in-memory buffers of live
//! captures, so the memory really held stays within the cap. When a
//! capture would push the total over the cap, that capture moves its
//! content to `tempfile::tempfile()` (unlinked at once, gone when closed)
//! and appends there from then on; its memory goes back to the budget.
//! Dropping a capture gives its memory back too.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Smallest in-memory buffer a capture allocates, so that tiny outputs do
/// not regrow many times.
const MIN_BUFFER: usize = 256;

/// Memory budget shared by all captures of a run: the bytes held in memory
/// by live captures stay at or under `cap`. Cloning shares the budget.
#[derive(Clone, Debug)]
pub struct SpillBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    cap: usize,
    used: AtomicUsize,
}

impl SpillBudget {
    /// A budget of `cap_bytes` bytes of memory; `0` spills every non-empty
    /// capture to a file.
    pub fn new(cap_bytes: usize) -> Self {
        Self {
            inner: Arc::new(BudgetInner {
                cap: cap_bytes,
                used: AtomicUsize::new(0),
            }),
        }
    }

    /// The cap, in bytes.
    pub fn cap(&self) -> usize {
        self.inner.cap
    }

    /// Bytes held in memory by live captures now.
    pub fn in_memory(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes if that keeps the total within the cap.
    fn try_take(&self, n: usize) -> bool {
        let cap = self.inner.cap;
        self.inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= cap)
            })
            .is_ok()
    }

    /// Takes `n` bytes whatever the cap (used only when spilling failed).
    fn force_take(&self, n: usize) {
        self.inner.used.fetch_add(n, Ordering::AcqRel);
    }

    fn give_back(&self, n: usize) {
        if n > 0 {
            self.inner.used.fetch_sub(n, Ordering::AcqRel);
        }
    }
}

/// Captured output of one stream (stdout or stderr) of one attempt.
///
/// If writing to the spill file fails (disk full), the capture keeps what
/// it has, drops what follows and reports the error from
/// [`Capture::copy_to`] and [`Capture::head`].
#[derive(Debug)]
pub struct Capture {
    /// In-memory content while not spilled.
    mem: Vec<u8>,
    /// Bytes of `mem`'s capacity taken from the budget.
    accounted: usize,
    /// The spill file, once spilled; holds the whole content.
    file: Option<File>,
    /// Total content length.
    len: u64,
    /// First error writing the spill file, if any.
    error: Option<(io::ErrorKind, String)>,
    budget: SpillBudget,
}

impl Capture {
    /// An empty capture charging `budget`. Allocates nothing.
    pub fn new(budget: SpillBudget) -> Self {
        Self {
            mem: Vec::new(),
            accounted: 0,
            file: None,
            len: 0,
            error: None,
            budget,
        }
    }

    /// Length of the content in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was captured.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the content was moved to a temporary file.
    pub fn is_spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Appends `data`, in memory while the budget allows, else to the spill
    /// file.
    pub fn append(&mut self, data: &[u8]) {
        if data.is_empty() || self.error.is_some() {
            return;
        }
        if self.file.is_none() && !self.grow_in_budget(data.len()) {
            self.spill();
            if self.file.is_none() {
                // No file could be made: keep the output in memory, over
                // budget but not lost.
                let before = self.mem.capacity();
                self.mem.reserve(data.len());
                self.budget.force_take(self.mem.capacity() - before);
                self.accounted = self.mem.capacity();
            }
        }
        match &mut self.file {
            None => self.mem.extend_from_slice(data),
            Some(file) => {
                if let Err(e) = file.write_all(data) {
                    self.error = Some((e.kind(), format!("cannot write spilled output: {e}")));
                    return;
                }
            }
        }
        self.len += data.len() as u64;
    }

    /// Makes room for `extra` more bytes in `mem`, charging the budget.
    /// Returns false when the budget does not allow it.
    fn grow_in_budget(&mut self, extra: usize) -> bool {
        let needed = self.mem.len().saturating_add(extra);
        if needed <= self.mem.capacity() {
            return true;
        }
        let doubled = needed
            .max(self.mem.capacity().saturating_mul(2))
            .max(MIN_BUFFER);
        let target = if self.budget.try_take(doubled - self.accounted) {
            doubled
        } else if self.budget.try_take(needed - self.accounted) {
            needed
        } else {
            return false;
        };
        self.mem.reserve_exact(target - self.mem.len());
        // The allocator may round up; account for what is really held.
        let actual = self.mem.capacity();
        if actual > target {
            self.budget.force_take(actual - target);
        }
        self.accounted = actual;
        true
    }

    /// Moves the in-memory content to a new temporary file and gives the
    /// memory back. If no file can be made, leaves everything as it was.
    fn spill(&mut self) {
        let file = tempfile::tempfile().and_then(|mut f| f.write_all(&self.mem).map(|()| f));
        if let Ok(f) = file {
            self.file = Some(f);
            self.mem = Vec::new();
            self.budget.give_back(self.accounted);
            self.accounted = 0;
        }
    }

    fn check(&self) -> io::Result<()> {
        match &self.error {
            Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
            None => Ok(()),
        }
    }

    /// Writes the whole content to `w`.
    ///
    /// # Errors
    ///
    /// An error writing to `w`, reading the spill file, or the error that
    /// stopped the capture earlier.
    pub fn copy_to(&mut self, w: &mut dyn Write) -> io::Result<()> {
        self.check()?;
        match &self.file {
            None => w.write_all(&self.mem),
            Some(file) => {
                let mut buf = vec![0u8; 64 * 1024];
                let mut offset = 0u64;
                while offset < self.len {
                    let want = usize::try_from(self.len - offset)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    file.read_exact_at(&mut buf[..want], offset)?;
                    w.write_all(&buf[..want])?;
                    offset += want as u64;
                }
                Ok(())
            }
        }
    }

    /// The first `limit` bytes of the content, and whether there was more.
    ///
    /// # Errors
    ///
    /// An error reading the spill file, or the error that stopped the
    /// capture earlier.
    pub fn head(&mut self, limit: usize) -> io::Result<(Vec<u8>, bool)> {
        self.check()?;
        let n = usize::try_from(self.len).unwrap_or(usize::MAX).min(limit);
        let truncated = (n as u64) < self.len;
        match &self.file {
            None => Ok((self.mem[..n].to_vec(), truncated)),
            Some(file) => {
                let mut out = vec![0u8; n];
                file.read_exact_at(&mut out, 0)?;
                Ok((out, truncated))
            }
        }
    }

    /// The whole content as a vector (convenient for small outputs and tests).
    ///
    /// # Errors
    ///
    /// As for [`Capture::head`].
    pub fn to_vec(&mut self) -> io::Result<Vec<u8>> {
        self.head(usize::MAX).map(|(v, _)| v)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.budget.give_back(self.accounted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_output_stays_in_memory_and_is_accounted() {
        let budget = SpillBudget::new(1 << 20);
        let mut c = Capture::new(budget.clone());
        assert_eq!(budget.in_memory(), 0, "an empty capture holds nothing");
        c.append(b"hello ");
        c.append(b"world");
        assert!(!c.is_spilled());
        assert_eq!(c.len(), 11);
        assert!(budget.in_memory() >= 11 && budget.in_memory() <= 1 << 20);
        assert_eq!(c.to_vec().unwrap(), b"hello world");
        drop(c);
        assert_eq!(budget.in_memory(), 0, "drop gives the memory back");
    }

    #[test]
    fn capture_past_the_budget_spills_with_content_intact() {
        let budget = SpillBudget::new(4096);
        let mut c = Capture::new(budget.clone());
        let mut expected = Vec::new();
        for i in 0..1000u32 {
            let line = format!("line {i}\n");
            c.append(line.as_bytes());
            expected.extend_from_slice(line.as_bytes());
            assert!(budget.in_memory() <= 4096, "budget exceeded at line {i}");
        }
        assert!(c.is_spilled());
        assert_eq!(budget.in_memory(), 0, "a spilled capture holds no memory");
        let mut out = Vec::new();
        c.copy_to(&mut out).unwrap();
        assert_eq!(out, expected);
        let (head, truncated) = c.head(10).unwrap();
        assert_eq!(head, &expected[..10]);
        assert!(truncated);
        let (all, truncated) = c.head(usize::MAX).unwrap();
        assert_eq!(all, expected);
        assert!(!truncated);
    }

    #[test]
    fn captures_share_one_budget() {
        let budget = SpillBudget::new(10_000);
        let mut a = Capture::new(budget.clone());
        let mut b = Capture::new(budget.clone());
        a.append(&[1u8; 6000]);
        b.append(&[2u8; 6000]);
        assert!(!a.is_spilled());
        assert!(b.is_spilled(), "the second capture does not fit");
        assert!(budget.in_memory() <= 10_000);
        drop(a);
        assert_eq!(budget.in_memory(), 0);
        assert_eq!(b.to_vec().unwrap(), vec![2u8; 6000]);
    }

    #[test]
    fn zero_budget_spills_everything_but_empty() {
        let budget = SpillBudget::new(0);
        let mut empty = Capture::new(budget.clone());
        empty.append(b"");
        assert!(!empty.is_spilled() && empty.is_empty());
        let mut c = Capture::new(budget.clone());
        c.append(b"x");
        assert!(c.is_spilled());
        assert_eq!(c.to_vec().unwrap(), b"x");
        assert_eq!(empty.head(5).unwrap(), (Vec::new(), false));
    }
}
