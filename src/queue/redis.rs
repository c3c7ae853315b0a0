//! Redis Streams backend (see docs/REDIS.md).
