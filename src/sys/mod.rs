//! The only place with `unsafe`: thin wrappers over operating-system calls
//! that no well-kept crate covers. Each `unsafe` block carries a
//! `// SAFETY:` comment. One submodule per area.

pub mod fd;
pub mod process;
pub mod shm;
pub mod spawn;
