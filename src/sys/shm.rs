//! A small page of memory shared between the coordinator and one worker
//! process: the worker writes the id of the job it is running there, and
//! the coordinator reads it when the worker dies or a timeout fires. No
//! system call per job.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use memmap2::MmapMut;

/// Size of the page.
pub const PAGE_LEN: usize = 4096;

/// A shared page of [`PAGE_LEN`] bytes, read and written as `u64` slots.
#[derive(Debug)]
pub struct SharedPage {
    file: File,
    map: MmapMut,
}

/// A new anonymous memory file of `len` bytes (sparse, zero-filled),
/// close-on-exec.
fn memfd(name: &str, len: usize) -> io::Result<File> {
    let fd: OwnedFd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
    let file = File::from(fd);
    file.set_len(len as u64)?;
    Ok(file)
}

/// Takes ownership of an inherited descriptor, after checking that it is
/// open, and marks it close-on-exec. The caller guarantees that nothing
/// else uses `fd` from here on.
fn adopt_fd(fd: RawFd) -> io::Result<File> {
    if fd < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file descriptor {fd} is negative"),
        ));
    }
    // SAFETY: fcntl(F_GETFD) only queries the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file descriptor {fd} is not open"),
        ));
    }
    // SAFETY: the descriptor is open (checked above) and, per this
    // function's contract, ours alone from here on.
    let file = unsafe { File::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&file, rustix::io::FdFlags::CLOEXEC)?;
    Ok(file)
}

impl SharedPage {
    /// Creates a zeroed page backed by an anonymous memory file
    /// (close-on-exec; pass it to a child with
    /// [`super::fd::keep_open_in_child`]).
    ///
    /// # Errors
    ///
    /// The operating system's error if the memory file cannot be created or
    /// mapped.
    pub fn create(name: &str) -> io::Result<SharedPage> {
        let file = memfd(name, PAGE_LEN)?;
        Self::map(file)
    }

    /// Maps an inherited memory file given by descriptor number, marking it
    /// close-on-exec. The descriptor must not be used by anything else.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `fd` is not an open file of at least [`PAGE_LEN`]
    /// bytes; the operating system's error if mapping fails.
    pub fn adopt(fd: RawFd) -> io::Result<SharedPage> {
        let file = adopt_fd(fd)?;
        if file.metadata()?.len() < PAGE_LEN as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("file descriptor {fd} is not a jobmill state page"),
            ));
        }
        Self::map(file)
    }

    fn map(file: File) -> io::Result<SharedPage> {
        // SAFETY: the file is a private memory file of PAGE_LEN bytes shared
        // only with the one worker process; neither side truncates it, and
        // all access goes through the aligned atomic slots below, so a
        // concurrent write by the other process is never a data race on
        // non-atomic memory.
        let map = unsafe { MmapMut::map_mut(&file)? };
        if map.len() < PAGE_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "state page is too small",
            ));
        }
        Ok(SharedPage { file, map })
    }

    /// The descriptor of the backing memory file.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn slot(&self, index: usize) -> &AtomicU64 {
        assert!(index < PAGE_LEN / 8, "slot {index} is outside the page");
        // SAFETY: the mapping is page-aligned and PAGE_LEN long, so slot
        // `index` is an aligned, in-bounds u64 that lives as long as `self`;
        // AtomicU64 has the same layout as u64.
        unsafe { &*(self.map.as_ptr().add(index * 8) as *const AtomicU64) }
    }

    /// Reads slot `index` (0..512).
    ///
    /// # Panics
    ///
    /// If `index` is outside the page.
    pub fn load(&self, index: usize) -> u64 {
        self.slot(index).load(Ordering::Acquire)
    }

    /// Writes slot `index` (0..512).
    ///
    /// # Panics
    ///
    /// If `index` is outside the page.
    pub fn store(&self, index: usize, value: u64) {
        self.slot(index).store(value, Ordering::Release)
    }
}

/// A large shared-memory file mapped once: the payload arena of one worker
/// (`$JOBMILL_ARENA_FD`). The coordinator and the worker both map the whole
/// file; payloads are copied in with [`Arena::write`], copied out with
/// [`Arena::copy_out`], or viewed in place with [`Arena::bytes`].
///
/// The file is sparse: memory is only used for the pages that are touched,
/// so a large arena costs nothing until payloads need it.
///
/// # Contract between the two processes
///
/// The arena is split into regions by the protocol (`docs/PAYLOADS.md`): a
/// region is written by one side, then handed to the other with a frame,
/// and never written again by anyone until the receiver has handed it back
/// (answered the job, or had its result consumed). Rust's aliasing rules
/// for the `&[u8]` views handed out by [`Arena::bytes`] rely on that
/// contract; a peer that breaks it can make the bytes seen change (a wrong
/// payload), but not touch memory outside the mapping.
#[derive(Debug)]
pub struct Arena {
    file: File,
    map: memmap2::MmapRaw,
    /// Views handed out by [`Arena::bytes`] and still alive.
    views: AtomicUsize,
}

impl Arena {
    /// Creates an arena of `len` bytes (sparse, zero-filled) backed by an
    /// anonymous memory file (close-on-exec; pass it to a child with
    /// [`super::fd::keep_open_in_child`]).
    ///
    /// # Errors
    ///
    /// The operating system's error if the file cannot be created, sized or
    /// mapped.
    pub fn create(name: &str, len: usize) -> io::Result<Arena> {
        let file = memfd(name, len)?;
        Self::map(file)
    }

    /// Maps an inherited arena given by descriptor number (its whole
    /// length), marking it close-on-exec. The descriptor must not be used by
    /// anything else.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `fd` is not open; the operating system's error if
    /// mapping fails.
    pub fn adopt(fd: RawFd) -> io::Result<Arena> {
        let file = adopt_fd(fd)?;
        Self::map(file)
    }

    fn map(file: File) -> io::Result<Arena> {
        let len = file.metadata()?.len();
        if len == 0 || len > isize::MAX as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("an arena of {len} bytes cannot be mapped"),
            ));
        }
        // A raw mapping hands out pointers only; every access below goes
        // through bounds-checked methods.
        let map = memmap2::MmapOptions::new()
            .len(len as usize)
            .map_raw(&file)?;
        Ok(Arena {
            file,
            map,
            views: AtomicUsize::new(0),
        })
    }

    /// The descriptor of the backing memory file.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The arena's length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the arena has no bytes (never: creating one needs a length).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    fn check(&self, offset: usize, len: usize) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.map.len() => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "region {offset}+{len} is outside the arena of {} bytes",
                    self.map.len()
                ),
            )),
        }
    }

    /// Copies `data` into the arena at `offset`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the region is outside the arena.
    pub fn write(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        self.check(offset, data.len())?;
        // SAFETY: the destination is inside the mapping (checked above),
        // which lives as long as `self`; `data` is ordinary memory of this
        // process, so the two cannot overlap. Per the arena contract no one
        // else writes this region now.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.map.as_mut_ptr().add(offset),
                data.len(),
            )
        };
        Ok(())
    }

    /// Copies `data` into the arena at `offset` as [`write`](Arena::write)
    /// does, but with non-temporal stores on x86-64: the bytes go to memory
    /// without being read into this CPU's cache first. For a region that
    /// another process on another CPU has read, an ordinary copy must win
    /// every cache line back from that CPU first; measured here, a 1 MiB
    /// copy took 400 µs that way and 40 µs streamed.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the region is outside the arena.
    pub fn write_streaming(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        self.check(offset, data.len())?;
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
            // SAFETY: the destination `offset..offset + data.len()` is inside
            // the mapping (checked above), which lives as long as `self`, and
            // per the arena contract no one else writes it now; `data` is
            // ordinary memory of this process and cannot overlap it. The
            // streaming stores write 16-byte blocks at 16-byte-aligned
            // destinations only (the unaligned head and the tail go through
            // an ordinary copy), reading `data` with unaligned loads, all
            // within both ranges. SSE2, which these need, is part of
            // x86-64. The closing fence orders the streamed stores before
            // anything this thread does next (handing the region over).
            unsafe {
                let dst = self.map.as_mut_ptr().add(offset);
                let head = dst.align_offset(16).min(data.len());
                std::ptr::copy_nonoverlapping(data.as_ptr(), dst, head);
                let blocks = (data.len() - head) / 16;
                for b in 0..blocks {
                    let at = head + b * 16;
                    let v = _mm_loadu_si128(data.as_ptr().add(at).cast::<__m128i>());
                    _mm_stream_si128(dst.add(at).cast::<__m128i>(), v);
                }
                let tail = head + blocks * 16;
                std::ptr::copy_nonoverlapping(
                    data.as_ptr().add(tail),
                    dst.add(tail),
                    data.len() - tail,
                );
                _mm_sfence();
            }
            Ok(())
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self.write(offset, data)
        }
    }

    /// Writes `data` into the arena's file at `offset` with `pwrite(2)`,
    /// not through the mapping: pages not used yet are filled without
    /// being zeroed first and without a page fault each (2.6 GB/s here,
    /// against 1.0 through the mapping).
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the region is outside the arena; the operating
    /// system's error if the write fails.
    pub fn pwrite(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        self.check(offset, data.len())?;
        let mut done = 0;
        while done < data.len() {
            match rustix::io::pwrite(&self.file, &data[done..], (offset + done) as u64) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Makes the pages of `offset..offset + len` present in this process's
    /// mapping (`MADV_POPULATE_READ`, Linux 5.14 and later), without
    /// changing them: a later write there takes no page fault (the mapping
    /// is shared, so a page read in is mapped writable). Read faults map the
    /// pages around each one too: for pages that exist, this took half the
    /// time of `MADV_POPULATE_WRITE` here (6.7 ms for 64 MiB).
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the region is outside the arena; the operating
    /// system's error (`EINVAL` on an older kernel).
    pub fn populate(&self, offset: usize, len: usize) -> io::Result<()> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.map
            .advise_range(memmap2::Advice::PopulateRead, offset, len)
    }

    /// Copies `len` bytes at `offset` out of the arena into a new vector.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the region is outside the arena.
    pub fn copy_out(&self, offset: usize, len: usize) -> io::Result<Vec<u8>> {
        self.check(offset, len)?;
        let mut out = Vec::with_capacity(len);
        // SAFETY: the source is inside the mapping (checked above); `out`
        // has capacity for `len` bytes and does not overlap the mapping;
        // after the copy its first `len` bytes are initialised.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.as_ptr().add(offset), out.as_mut_ptr(), len);
            out.set_len(len);
        }
        Ok(out)
    }

    /// Gives the memory behind the whole pages of `offset..offset + len`
    /// back to the system (the bytes read as zeros afterwards; writing them
    /// again takes fresh pages). Only for a region no one uses now.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the region is outside the arena; the operating
    /// system's error if the file cannot punch holes.
    pub fn release(&self, offset: usize, len: usize) -> io::Result<()> {
        self.check(offset, len)?;
        let page = PAGE_LEN;
        let start = offset.div_ceil(page) * page;
        let end = (offset + len) / page * page;
        if end <= start {
            return Ok(());
        }
        rustix::fs::fallocate(
            &self.file,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            start as u64,
            (end - start) as u64,
        )?;
        Ok(())
    }

    /// Bytes of memory the arena's file uses now (its touched pages).
    ///
    /// # Errors
    ///
    /// The operating system's error if the file cannot be queried.
    pub fn resident(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks() * 512)
    }

    /// How many views made by [`Arena::bytes`] are alive (a view and all
    /// its clones count once).
    pub fn views(&self) -> usize {
        self.views.load(Ordering::Relaxed)
    }

    /// A view of `len` bytes at `offset`, without copying. The view keeps
    /// the mapping alive. Per the arena contract the region must not be
    /// written by the other process while the view is used: for a job's
    /// payload, until the job is answered.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the region is outside the arena.
    pub fn bytes(self: &Arc<Self>, offset: usize, len: usize) -> io::Result<Bytes> {
        self.check(offset, len)?;
        self.views.fetch_add(1, Ordering::Relaxed);
        Ok(Bytes::from_owner(Region {
            arena: Arc::clone(self),
            offset,
            len,
        }))
    }
}

/// A region of an [`Arena`], the owner behind [`Arena::bytes`].
struct Region {
    arena: Arc<Arena>,
    offset: usize,
    len: usize,
}

impl Drop for Region {
    fn drop(&mut self) {
        self.arena.views.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsRef<[u8]> for Region {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the region was checked to lie inside the mapping, which
        // `self.arena` keeps alive; any byte pattern is a valid `u8`. The
        // bytes are not written while the view is in use, per the arena
        // contract (see `Arena`).
        unsafe { std::slice::from_raw_parts(self.arena.map.as_ptr().add(self.offset), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn a_page_is_zeroed_and_shared_through_its_descriptor() {
        let page = SharedPage::create("test").unwrap();
        assert_eq!(page.load(0), 0);
        // A second mapping of the same memory file, as a child would have.
        let dup = page.file.try_clone().unwrap();
        let other = SharedPage::adopt(dup.into_raw_fd()).unwrap();
        other.store(0, 42);
        assert_eq!(page.load(0), 42);
    }

    #[test]
    fn adopting_a_closed_descriptor_is_refused() {
        let err = SharedPage::adopt(987_654).unwrap_err();
        assert!(err.to_string().contains("987654 is not open"));
    }

    #[test]
    fn an_arena_is_shared_through_its_descriptor_and_bounds_checked() {
        let a = Arc::new(Arena::create("test", 1 << 20).unwrap());
        let dup = a.file.try_clone().unwrap();
        let b = Arc::new(Arena::adopt(dup.into_raw_fd()).unwrap());
        assert_eq!(b.len(), 1 << 20);
        a.write(4096, b"hello").unwrap();
        let view = b.bytes(4096, 5).unwrap();
        let copy = view.clone();
        assert_eq!(&view[..], b"hello");
        assert_eq!(b.views(), 1);
        drop(view);
        assert_eq!(b.views(), 1, "a clone keeps the view alive");
        drop(copy);
        assert_eq!(b.views(), 0);
        assert_eq!(b.copy_out(4096, 5).unwrap(), b"hello");
        assert!(a.write((1 << 20) - 2, b"abc").is_err());
        assert!(b.bytes(usize::MAX, 2).is_err());
        assert!(b.copy_out(1 << 20, 1).is_err());
    }

    #[test]
    fn a_released_region_gives_its_memory_back() {
        let a = Arena::create("test", 64 << 20).unwrap();
        assert_eq!(a.resident().unwrap(), 0, "sparse until touched");
        a.write(16 << 20, &vec![7u8; 8 << 20]).unwrap();
        assert!(a.resident().unwrap() >= 8 << 20);
        a.release(16 << 20, 8 << 20).unwrap();
        assert_eq!(a.resident().unwrap(), 0);
        assert_eq!(a.copy_out(16 << 20, 4).unwrap(), vec![0; 4]);
        assert!(a.release(60 << 20, 8 << 20).is_err());
    }

    #[test]
    fn streamed_and_pwritten_bytes_read_back_whole_at_any_alignment() {
        let a = Arena::create("test", 1 << 20).unwrap();
        let data: Vec<u8> = (0..70_001u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for offset in [0, 1, 15, 16, 17, 4096 + 9] {
            for len in [0, 1, 15, 16, 17, 100, 70_001] {
                a.write(offset, &vec![0xee; len + 32]).unwrap();
                a.write_streaming(offset, &data[..len]).unwrap();
                let got = a.copy_out(offset, len + 32).unwrap();
                assert_eq!(&got[..len], &data[..len], "streamed at {offset}+{len}");
                assert!(
                    got[len..].iter().all(|&b| b == 0xee),
                    "past the end untouched"
                );
                a.pwrite(offset + 300_000, &data[..len]).unwrap();
                assert_eq!(a.copy_out(offset + 300_000, len).unwrap(), &data[..len]);
            }
        }
        assert!(a.write_streaming((1 << 20) - 10, &data[..11]).is_err());
        assert!(a.pwrite((1 << 20) - 10, &data[..11]).is_err());
    }

    #[test]
    fn populating_makes_pages_present_without_changing_them() {
        let a = Arena::create("test", 8 << 20).unwrap();
        a.write(0, b"kept").unwrap();
        assert!(a.resident().unwrap() < 1 << 20, "sparse at first");
        match a.populate(0, 8 << 20) {
            Ok(()) => assert!(a.resident().unwrap() >= 8 << 20),
            // A kernel older than 5.14 has no MADV_POPULATE_READ.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}"),
        }
        assert_eq!(a.copy_out(0, 4).unwrap(), b"kept");
        assert!(a.populate(8 << 20, 1).is_err(), "bounds-checked");
    }
}
