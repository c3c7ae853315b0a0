//! A small page of memory shared between the coordinator and one worker
//! process: the worker writes the id of the job it is running there, and
//! the coordinator reads it when the worker dies or a timeout fires. No
//! system call per job.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;

/// Size of the page.
pub const PAGE_LEN: usize = 4096;

/// A shared page of [`PAGE_LEN`] bytes, read and written as `u64` slots.
#[derive(Debug)]
pub struct SharedPage {
    file: File,
    map: MmapMut,
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
        let fd: OwnedFd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
        let file = File::from(fd);
        file.set_len(PAGE_LEN as u64)?;
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
}
