//! Captured output of one stream of one attempt, in memory up to a budget
//! shared by the whole run, spilled to a temporary file past it.
//!
//! The budget counts the *capacity* of the in-memory buffers of live
//! captures, so the memory really held stays within the cap. When a
//! capture would push the total over the cap, its content moves to the
//! run's spill file and it appends there from then on; its memory goes
//! back to the budget. Dropping a capture gives its memory back too.
//!
//! All captures of a budget share **one** spill file
//! (`tempfile::tempfile()`: unlinked at once, gone when closed), so that
//! thousands of spilled outputs waiting for `--keep-order` do not need
//! thousands of file descriptors. Each append reserves a range at the end
//! of the file with an atomic counter and writes it with `pwrite`, without
//! a lock; a capture keeps its list of ranges (adjacent ones merged). When
//! a spilled capture is dropped, its ranges are punched out of the file
//! (`FALLOC_FL_PUNCH_HOLE`), so disk space is given back as output is
//! printed.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rustix::fs::{fallocate, FallocateFlags};

/// Smallest in-memory buffer a capture allocates, so that tiny outputs do
/// not regrow many times.
const MIN_BUFFER: usize = 256;

/// Chunk size for reading spilled output back.
const READ_BACK_CHUNK: usize = 64 * 1024;

/// Memory budget shared by all captures of a run: the bytes held in memory
/// by live captures stay at or under `cap`. Past it, captures spill to one
/// shared temporary file. Cloning shares the budget and the file.
#[derive(Clone, Debug)]
pub struct SpillBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    cap: usize,
    used: AtomicUsize,
    /// The spill file, created on first need.
    file: OnceLock<File>,
    /// Serialises creating the spill file.
    create: Mutex<()>,
    /// End of the spill file: the next append's offset.
    end: AtomicU64,
}

impl SpillBudget {
    /// A budget of `cap_bytes` bytes of memory; `0` spills every non-empty
    /// capture to the file.
    pub fn new(cap_bytes: usize) -> Self {
        Self {
            inner: Arc::new(BudgetInner {
                cap: cap_bytes,
                used: AtomicUsize::new(0),
                file: OnceLock::new(),
                create: Mutex::new(()),
                end: AtomicU64::new(0),
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

    /// The spill file, created on first call.
    fn file(&self) -> io::Result<&File> {
        if let Some(f) = self.inner.file.get() {
            return Ok(f);
        }
        let _guard = self.inner.create.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = self.inner.file.get() {
            return Ok(f);
        }
        let f = tempfile::tempfile()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create spill file: {e}")))?;
        Ok(self.inner.file.get_or_init(|| f))
    }

    /// Writes `data` at a newly reserved range of the spill file; returns
    /// its offset.
    fn write(&self, data: &[u8]) -> io::Result<u64> {
        let file = self.file()?;
        let offset = self
            .inner
            .end
            .fetch_add(data.len() as u64, Ordering::AcqRel);
        file.write_all_at(data, offset)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write spill file: {e}")))?;
        Ok(offset)
    }

    /// Frees the disk space of a range no longer needed.
    fn release(&self, seg: Segment) {
        if let Some(f) = self.inner.file.get() {
            // Punching holes is an optimisation: a file system without it
            // just keeps the space until the run ends.
            let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            let _ = fallocate(f, mode, seg.offset, seg.len);
        }
    }
}

/// A range of the spill file holding part of a capture.
#[derive(Debug, Clone, Copy)]
struct Segment {
    offset: u64,
    len: u64,
}

/// Captured output of one stream (stdout or stderr) of one attempt.
///
/// If writing to the spill file fails (disk full), the capture keeps what
/// it has, drops what follows and reports the error from
/// [`Capture::copy_to`] and [`Capture::head`]. If no spill file can be
/// created at all, the output stays in memory, over budget but not lost.
#[derive(Debug)]
pub struct Capture {
    /// In-memory content while not spilled.
    mem: Vec<u8>,
    /// Bytes of `mem`'s capacity taken from the budget.
    accounted: usize,
    /// Once spilled: the ranges of the spill file holding the content.
    segments: Option<Vec<Segment>>,
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
            segments: None,
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

    /// Whether the content was moved to the spill file.
    pub fn is_spilled(&self) -> bool {
        self.segments.is_some()
    }

    /// Appends `data`, in memory while the budget allows, else to the spill
    /// file.
    pub fn append(&mut self, data: &[u8]) {
        if data.is_empty() || self.error.is_some() {
            return;
        }
        if self.segments.is_none() && !self.grow_in_budget(data.len()) && !self.spill() {
            // No spill file: keep the output in memory, over budget but
            // not lost.
            let before = self.mem.capacity();
            self.mem.reserve(data.len());
            self.budget.force_take(self.mem.capacity() - before);
            self.accounted = self.mem.capacity();
        }
        if self.segments.is_none() {
            self.mem.extend_from_slice(data);
        } else if let Err(e) = self.write_spilled(data) {
            self.error = Some((e.kind(), e.to_string()));
            return;
        }
        self.len += data.len() as u64;
    }

    /// Appends `data` to the spill file and records its range.
    fn write_spilled(&mut self, data: &[u8]) -> io::Result<()> {
        let offset = self.budget.write(data)?;
        let len = data.len() as u64;
        let segments = self.segments.get_or_insert_with(Vec::new);
        match segments.last_mut() {
            Some(last) if last.offset + last.len == offset => last.len += len,
            _ => segments.push(Segment { offset, len }),
        }
        Ok(())
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

    /// Moves the in-memory content to the spill file and gives the memory
    /// back. Returns false, changing nothing, if that fails.
    fn spill(&mut self) -> bool {
        let mut segments = Vec::new();
        if !self.mem.is_empty() {
            match self.budget.write(&self.mem) {
                Ok(offset) => segments.push(Segment {
                    offset,
                    len: self.mem.len() as u64,
                }),
                Err(_) => return false,
            }
        } else if self.budget.file().is_err() {
            return false;
        }
        self.segments = Some(segments);
        self.mem = Vec::new();
        self.budget.give_back(self.accounted);
        self.accounted = 0;
        true
    }

    fn check(&self) -> io::Result<()> {
        match &self.error {
            Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
            None => Ok(()),
        }
    }

    /// Calls `sink` with the content in order, up to `limit` bytes.
    fn read_back(
        &self,
        limit: u64,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.check()?;
        let Some(segments) = &self.segments else {
            let n = usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .min(self.mem.len());
            return sink(&self.mem[..n]);
        };
        let file = self.budget.file()?;
        let mut buf = vec![0u8; READ_BACK_CHUNK];
        let mut left = limit;
        for seg in segments {
            let mut done = 0u64;
            while done < seg.len && left > 0 {
                let want = (seg.len - done).min(left).min(READ_BACK_CHUNK as u64) as usize;
                file.read_exact_at(&mut buf[..want], seg.offset + done)?;
                sink(&buf[..want])?;
                done += want as u64;
                left -= want as u64;
            }
        }
        Ok(())
    }

    /// Writes the whole content to `w`.
    ///
    /// # Errors
    ///
    /// An error writing to `w`, reading the spill file, or the error that
    /// stopped the capture earlier.
    pub fn copy_to(&mut self, w: &mut dyn Write) -> io::Result<()> {
        self.read_back(u64::MAX, &mut |chunk| w.write_all(chunk))
    }

    /// The first `limit` bytes of the content, and whether there was more.
    ///
    /// # Errors
    ///
    /// An error reading the spill file, or the error that stopped the
    /// capture earlier.
    pub fn head(&mut self, limit: usize) -> io::Result<(Vec<u8>, bool)> {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX).min(self.len);
        let mut out = Vec::with_capacity(usize::try_from(limit).unwrap_or(0));
        self.read_back(limit, &mut |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        let truncated = limit < self.len;
        Ok((out, truncated))
    }

    /// The last `limit` bytes of the content (or all of it when shorter).
    ///
    /// # Errors
    ///
    /// As for [`Capture::head`].
    pub fn tail(&mut self, limit: usize) -> io::Result<Vec<u8>> {
        let skip = self.len.saturating_sub(limit as u64);
        let mut seen = 0u64;
        let mut out = Vec::with_capacity(limit.min(self.len as usize));
        self.read_back(u64::MAX, &mut |chunk| {
            let start = skip.saturating_sub(seen).min(chunk.len() as u64) as usize;
            out.extend_from_slice(&chunk[start..]);
            seen += chunk.len() as u64;
            Ok(())
        })?;
        Ok(out)
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
        if let Some(segments) = &self.segments {
            for &seg in segments {
                self.budget.release(seg);
            }
        }
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
    fn interleaved_spilled_captures_keep_their_own_content() {
        let budget = SpillBudget::new(0);
        let mut a = Capture::new(budget.clone());
        let mut b = Capture::new(budget.clone());
        let (mut ea, mut eb) = (Vec::new(), Vec::new());
        for i in 0..500u32 {
            let la = format!("a{i}\n");
            let lb = format!("b{i}\n");
            a.append(la.as_bytes());
            b.append(lb.as_bytes());
            ea.extend_from_slice(la.as_bytes());
            eb.extend_from_slice(lb.as_bytes());
        }
        assert!(a.is_spilled() && b.is_spilled());
        let mut out = Vec::new();
        b.copy_to(&mut out).unwrap();
        assert_eq!(out, eb);
        // Dropping one capture punches its ranges out; the other is intact.
        let mut out_a = Vec::new();
        a.copy_to(&mut out_a).unwrap();
        assert_eq!(out_a, ea);
        drop(a);
        assert_eq!(b.to_vec().unwrap(), eb);
        assert_eq!(b.head(3).unwrap(), (b"b0\n".to_vec(), true));
    }

    #[test]
    fn adjacent_appends_merge_into_one_segment() {
        let budget = SpillBudget::new(0);
        let mut c = Capture::new(budget);
        for _ in 0..100 {
            c.append(b"0123456789");
        }
        assert_eq!(c.segments.as_ref().map(Vec::len), Some(1));
        assert_eq!(c.len(), 1000);
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
