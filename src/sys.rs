//! Operating-system calls that need unsafe.
