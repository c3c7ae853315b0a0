//! File-descriptor calls for the worker protocol's channel: adopting an
//! inherited socket, and passing one socket end to a child process.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Adopts the inherited file descriptor `fd` as a Unix stream socket, after
/// checking that it is an open socket, and marks it close-on-exec so that
/// programs the worker starts do not hold the channel open.
///
/// The descriptor must not be in use by anything else in this process: the
/// returned stream owns it and closes it when dropped.
///
/// # Errors
///
/// `InvalidInput` if `fd` is negative, not open, or not a socket.
pub fn adopt_inherited_socket(fd: RawFd) -> io::Result<UnixStream> {
    if fd < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file descriptor {fd} is negative"),
        ));
    }
    // SAFETY: fstat only reads the descriptor table and writes into the
    // zeroed, properly sized `stat` buffer we own; an invalid fd gives EBADF.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file descriptor {fd} is not open: {e}"),
        ));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file descriptor {fd} is not a socket"),
        ));
    }
    // SAFETY: F_SETFD on a descriptor just checked to be open has no effect
    // on memory.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is an open socket (checked above) that the caller hands
    // over to us; from here the stream is its only owner.
    Ok(unsafe { UnixStream::from_raw_fd(fd) })
}

/// Arranges for `fd` (close-on-exec in this process) to stay open across
/// the `exec` of `cmd`, at the same number, in the child only.
///
/// Other children started concurrently do not inherit it, since the flag is
/// cleared between fork and exec in the child alone. The caller must keep
/// `fd` open until the child is spawned.
pub fn keep_open_in_child(cmd: &mut Command, fd: RawFd) {
    // SAFETY: the closure runs in the child between fork and exec; it only
    // calls fcntl, which is async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    #[test]
    fn adopting_a_non_socket_is_refused_with_the_fd_named() {
        let file = tempfile::tempfile().unwrap();
        // Refused before taking ownership, so `file` still owns the fd.
        let fd = file.as_raw_fd();
        let err = adopt_inherited_socket(fd).unwrap_err();
        assert!(err.to_string().contains(&format!("{fd} is not a socket")));
    }

    #[test]
    fn adopting_a_closed_fd_is_refused() {
        let err = adopt_inherited_socket(987_654).unwrap_err();
        assert!(err.to_string().contains("987654 is not open"));
    }

    #[test]
    fn adopting_a_socket_works() {
        let (a, b) = UnixStream::pair().unwrap();
        let fd = a.into_raw_fd();
        let mut adopted = adopt_inherited_socket(fd).unwrap();
        use std::io::{Read, Write};
        adopted.write_all(b"x").unwrap();
        let mut got = [0u8; 1];
        (&b).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
    }
}
