-- Initial schema (SQLite). Timestamps are milliseconds since the Unix epoch; JSON is TEXT.
CREATE TABLE datasets (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    format      TEXT NOT NULL,
    row_count   INTEGER NOT NULL,
    labels      TEXT NOT NULL,
    unlabelled  INTEGER NOT NULL,
    size_bytes  INTEGER NOT NULL,
    sample      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE jobs (
    id                     TEXT PRIMARY KEY,
    status                 TEXT NOT NULL
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    dataset_id             TEXT NOT NULL,
    validation_dataset_id  TEXT,
    config                 TEXT NOT NULL,
    teacher_model_id       TEXT,
    progress               TEXT NOT NULL,
    metrics                TEXT NOT NULL,
    error                  TEXT,
    model_id               TEXT,
    cancel_requested       INTEGER NOT NULL DEFAULT 0,
    lease_owner            TEXT,
    lease_expires_at       INTEGER,
    attempts               INTEGER NOT NULL DEFAULT 0,
    created_at             INTEGER NOT NULL,
    updated_at             INTEGER NOT NULL,
    started_at             INTEGER,
    finished_at            INTEGER
);
CREATE INDEX jobs_status_created ON jobs (status, created_at);
CREATE INDEX jobs_created ON jobs (created_at);

CREATE TABLE models (
    id             TEXT PRIMARY KEY,
    job_id         TEXT NOT NULL,
    labels         TEXT NOT NULL,
    student        TEXT NOT NULL,
    teacher        TEXT,
    config         TEXT NOT NULL,
    student_bytes  INTEGER NOT NULL,
    teacher_bytes  INTEGER,
    created_at     INTEGER NOT NULL,
    promoted_at    INTEGER
);
CREATE INDEX models_created ON models (created_at);
