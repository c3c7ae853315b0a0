"""What the caller and the workers of jobmill.Pool agree on."""

# Prefix of a failure message that carries a pickled (exception, traceback).
EXC_PREFIX = "jobmill-py-exc:"
# A job's payload: pickle of (function key, args, kwargs) for one task, or of
# (function key, CHUNK, [(args, kwargs), ...]) for a chunk of tasks, whose
# result is the pickle of [(True, value) | (False, failure message), ...].
CHUNK = "jobmill-chunk"
