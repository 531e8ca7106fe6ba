-- Lathe schema, version 1. Times are unix milliseconds (INTEGER); JSON columns hold text.
-- Applied by lathe-server inside one transaction, then PRAGMA user_version = 1.

-- Uploaded models and datasets, and job artifacts. The bytes live in the content-addressed
-- store DATA/store/<sha256[0:2]>/<sha256>; several rows may share one blob.
CREATE TABLE files (
  id         TEXT PRIMARY KEY,               -- mdl_… / ds_… / art_…
  kind       TEXT NOT NULL CHECK (kind IN ('model', 'dataset', 'artifact')),
  name       TEXT NOT NULL,
  sha256     TEXT NOT NULL,
  size       INTEGER NOT NULL,
  summary    TEXT,                           -- `lathe inspect` output (models, datasets)
  job_id     TEXT,                           -- artifacts: the job and attempt that made it
  attempt    INTEGER,
  owner      TEXT,                           -- tok_… of the uploader
  created_at INTEGER NOT NULL
);
CREATE INDEX files_kind ON files (kind, created_at);
CREATE INDEX files_sha ON files (sha256);
CREATE INDEX files_job ON files (job_id) WHERE job_id IS NOT NULL;

CREATE TABLE jobs (
  seq              INTEGER PRIMARY KEY AUTOINCREMENT, -- submission order; page tokens use it
  id               TEXT NOT NULL UNIQUE,
  kind             TEXT NOT NULL,
  state            TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed',
                                                  'cancelled', 'dead')),
  priority         INTEGER NOT NULL DEFAULT 0,
  attempt          INTEGER NOT NULL DEFAULT 0,
  max_attempts     INTEGER NOT NULL DEFAULT 3,
  spec             TEXT NOT NULL,
  progress         TEXT,
  result           TEXT,
  error            TEXT,
  worker           TEXT,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  lease_until      INTEGER,
  not_before       INTEGER NOT NULL DEFAULT 0,           -- retry backoff: not claimable before
  owner            TEXT,
  idempotency_key  TEXT,
  request_hash     TEXT,                                 -- sha256 of the create request body
  created_at       INTEGER NOT NULL,
  started_at       INTEGER,
  finished_at      INTEGER,
  updated_at       INTEGER NOT NULL
);
CREATE INDEX jobs_claim ON jobs (state, priority DESC, seq);
CREATE INDEX jobs_kind ON jobs (kind, seq);
CREATE INDEX jobs_lease ON jobs (lease_until) WHERE state = 'running';
CREATE UNIQUE INDEX jobs_idempotency ON jobs (owner, idempotency_key)
  WHERE idempotency_key IS NOT NULL;

-- The job's event log, served as SSE; seq is the SSE event id (Last-Event-ID).
CREATE TABLE job_events (
  seq        INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id     TEXT NOT NULL,
  attempt    INTEGER NOT NULL,
  type       TEXT NOT NULL,
  data       TEXT NOT NULL,                  -- the event object as JSON
  created_at INTEGER NOT NULL
);
CREATE INDEX job_events_job ON job_events (job_id, seq);

-- Append-only metric series.
CREATE TABLE job_metrics (
  job_id     TEXT NOT NULL,
  key        TEXT NOT NULL,
  step       INTEGER NOT NULL,
  value      REAL NOT NULL,
  attempt    INTEGER NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE INDEX job_metrics_series ON job_metrics (job_id, key, step);

CREATE TABLE tokens (
  id         TEXT PRIMARY KEY,               -- tok_…
  name       TEXT NOT NULL,
  scope      TEXT NOT NULL CHECK (scope IN ('read', 'submit', 'admin', 'worker')),
  hash       TEXT NOT NULL UNIQUE,           -- hex SHA-256 of the secret; the secret is not kept
  created_at INTEGER NOT NULL,
  revoked_at INTEGER
);

CREATE TABLE workers (
  id         TEXT PRIMARY KEY,               -- wrk_…
  name       TEXT NOT NULL UNIQUE,           -- host:pid:device, chosen by the worker
  device     TEXT NOT NULL,
  kinds      TEXT NOT NULL,                  -- JSON array
  job_id     TEXT,                           -- the job it last claimed
  created_at INTEGER NOT NULL,
  last_seen  INTEGER NOT NULL
);
