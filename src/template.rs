//! Command templates.
