//! Process calls: wait4 with resource usage, and the like.
