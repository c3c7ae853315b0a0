//! The only place with `unsafe`: thin wrappers over operating-system calls
//! that no well-kept crate covers. Each `unsafe` block carries a
//! `// SAFETY:` comment. One submodule per area.

#![allow(unsafe_code)]

pub mod fd;
pub mod process;
pub mod shm;
pub mod spawn;

/// This machine's host name (from the kernel), or `"unknown"`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}
