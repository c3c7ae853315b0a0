//! Lazy input reading.
