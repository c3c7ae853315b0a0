-- jobmill journal schema, version 2 (PRAGMA user_version = 2).
-- PRAGMA application_id = 1785555308 (0x6A6D696C, "jmil") marks the file.
-- Times are Unix seconds as REAL. Documented in docs/JOURNAL.md.
-- Version 2 added the columns marked "v2", each at the end of its table:
-- a version 1 journal is migrated by adding them (src/journal/schema.rs,
-- migration_v2), so both end with the same columns in the same order.

-- The run: exactly one row.
CREATE TABLE run (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    run_id          TEXT    NOT NULL,           -- e.g. 20261130-015012-3f9a
    command         TEXT    NOT NULL,           -- JSON array of the command's arguments (lossy UTF-8 for display)
    command_raw     BLOB    NOT NULL,           -- the exact arguments: each one's bytes followed by a NUL
    options         TEXT    NOT NULL,           -- JSON object of the run's options (jobs, retries, timeout, ...)
    cwd             BLOB    NOT NULL,           -- working directory, exact bytes
    host            TEXT    NOT NULL,
    started_at      REAL    NOT NULL,
    ended_at        REAL,                       -- NULL while running, or after a crash
    end_reason      TEXT,                       -- complete | interrupted | halted | error: ...
    input_complete  INTEGER NOT NULL DEFAULT 0, -- 1 once every input is a row of `job`
    total_jobs      INTEGER,                    -- set when input_complete becomes 1
    jobmill_version TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL
);

-- One row per `jobmill run` / `jobmill resume` invocation on this journal.
CREATE TABLE session (
    id          INTEGER PRIMARY KEY,            -- 1 for the first run, then one per resume
    kind        TEXT    NOT NULL CHECK (kind IN ('run', 'resume')),
    pid         INTEGER NOT NULL,
    started_at  REAL    NOT NULL,
    ended_at    REAL,                           -- NULL: still running, or killed
    end_reason  TEXT
);

-- Every job, written as it is read.
CREATE TABLE job (
    seq         INTEGER PRIMARY KEY,            -- sequence number, from 1 ({#})
    input       BLOB    NOT NULL,               -- the exact input bytes
    hash        BLOB    NOT NULL,               -- SHA-256 of input
    state       TEXT    NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'running', 'done', 'failed', 'dead')),
    attempts    INTEGER NOT NULL DEFAULT 0,     -- attempts started so far
    exit_code   INTEGER,                        -- of the final attempt
    signal      INTEGER,                        -- of the final attempt
    reason      TEXT,                           -- why it failed or died (final)
    finished_at REAL,                           -- when it reached done/failed/dead
    read_at     REAL                            -- v2: when it was read from the input (NULL: not known)
);

-- Every attempt.
CREATE TABLE attempt (
    seq         INTEGER NOT NULL REFERENCES job (seq),
    attempt     INTEGER NOT NULL,               -- from 1
    session     INTEGER NOT NULL REFERENCES session (id),
    slot        INTEGER NOT NULL,               -- {%}
    started_at  REAL    NOT NULL,
    ended_at    REAL,                           -- NULL: in flight when jobmill stopped
    exit_code   INTEGER,
    signal      INTEGER,
    timed_out   INTEGER NOT NULL DEFAULT 0,
    outcome     TEXT CHECK (outcome IN ('done', 'requeued', 'failed', 'dead', 'interrupted')),
    reason      TEXT,                           -- FailReason, human-readable
    duration    REAL,                           -- seconds
    max_rss_kb  INTEGER,                        -- peak RSS from wait4 rusage
    cause       TEXT,                           -- v2: how it ended: succeeded stopped exit signal timeout
                                                --     reported lost spawn oom memory-limit (NULL: in flight)
    worker      INTEGER,                        -- v2: the long-lived worker (--persistent) or the queue's
                                                --     worker id (Redis) that ran it; NULL: a process per job
    host        TEXT,                           -- v2: the host that ran it; NULL: the run's host
    PRIMARY KEY (seq, attempt)
) WITHOUT ROWID;

-- Each job's captured output of its last finished attempt, capped.
CREATE TABLE output (
    seq         INTEGER NOT NULL REFERENCES job (seq),
    stream      INTEGER NOT NULL CHECK (stream IN (1, 2)),  -- 1 stdout, 2 stderr
    data        BLOB    NOT NULL,               -- at most the cap (default 1 MiB)
    total_bytes INTEGER NOT NULL,               -- bytes the job wrote
    truncated   INTEGER NOT NULL,               -- 1 if data holds less than total_bytes
    PRIMARY KEY (seq, stream)
) WITHOUT ROWID;
