-- Initial schema (PostgreSQL). Timestamps are milliseconds since the Unix epoch; JSON is TEXT.
CREATE TABLE datasets (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    format      TEXT NOT NULL,
    row_count   BIGINT NOT NULL,
    labels      TEXT NOT NULL,
    unlabelled  BIGINT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    sample      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
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
    cancel_requested       BIGINT NOT NULL DEFAULT 0,
    lease_owner            TEXT,
    lease_expires_at       BIGINT,
    attempts               BIGINT NOT NULL DEFAULT 0,
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL,
    started_at             BIGINT,
    finished_at            BIGINT
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
    student_bytes  BIGINT NOT NULL,
    teacher_bytes  BIGINT,
    created_at     BIGINT NOT NULL,
    promoted_at    BIGINT
);
CREATE INDEX models_created ON models (created_at);
