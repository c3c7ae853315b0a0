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

/// Bit `fd` set: descriptor `fd` (0, 1 or 2) was closed when this process
/// started. `u8::MAX`: not recorded (see [`closed_stdio_at_start`]).
static CLOSED_AT_START: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

/// Records which standard descriptors are closed, before Rust's runtime
/// (or anything else) opens a file there: Rust puts a read-write
/// `/dev/null` on a closed one before `main`, which nothing tells apart
/// from a `/dev/null` given on purpose (Python's `subprocess.DEVNULL`,
/// systemd's `StandardOutput=null`).
extern "C" fn record_closed_stdio() {
    let mut closed = 0u8;
    for fd in 0..3 {
        // SAFETY: `F_GETFD` only asks whether the descriptor is open; it
        // changes nothing and touches no memory of ours.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            closed |= 1 << fd;
        }
    }
    CLOSED_AT_START.store(closed, std::sync::atomic::Ordering::Relaxed);
}

/// Runs [`record_closed_stdio`] when the program (or this library, loaded
/// into Python) is loaded, before `main` and before Rust's runtime starts.
#[used]
#[link_section = ".init_array"]
static RECORD_CLOSED_STDIO: extern "C" fn() = record_closed_stdio;

/// Which of stdin, stdout and stderr were closed when this process started
/// (`<&-`, `>&-`), as recorded before `main`; `None` if nothing was
/// recorded.
pub fn closed_stdio_at_start() -> Option<[bool; 3]> {
    // Keeps the recorder linked into every program that asks.
    std::hint::black_box(&RECORD_CLOSED_STDIO);
    match CLOSED_AT_START.load(std::sync::atomic::Ordering::Relaxed) {
        u8::MAX => None,
        bits => Some([bits & 1 != 0, bits & 2 != 0, bits & 4 != 0]),
    }
}
