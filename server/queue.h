/* server/queue.h — the job queue over SQLite: the job state machine, claims with leases,
 * fencing by (job, attempt), retries with exponential backoff, the reaper, the per-job event log
 * and metric series. No HTTP here: functions take a db_conn and return JSON objects or errors
 * carrying the HTTP status the API answers with, so tests drive the queue directly.
 *
 *   queued ──claim──> running ──complete ok──> succeeded
 *     ^                 │ complete failed (retryable, attempts left) or lease expired ─> queued
 *     │                 │   (not_before = now + backoff)                 (no attempts left) ─> dead
 *     │                 │ complete failed (not retryable) ─> failed
 *     │                 └ cancel: flagged; the worker sees cancel=true, stops, completes ─> cancelled
 *     └──retry── failed | cancelled | dead        queued ──cancel──> cancelled
 *
 *   queue_cfg cfg = queue_cfg_default();
 *   cJSON *claim = queue_claim(db, &cfg, "host:42:cpu", "cpu", kinds, &e);  // NULL + e.status 0: none
 *   queue_heartbeat(db, &cfg, "job_…", 1, &lease_until, &cancel, &e);       // 409 when stale
 *
 * Every write runs in BEGIN IMMEDIATE. Every state change also appends a {"type":"state"} event,
 * so an SSE follower sees the job end. Not for: validating specs (workers/spec.h does that).
 */
#ifndef LATHE_SERVER_QUEUE_H
#define LATHE_SERVER_QUEUE_H

#include <stdint.h>

#include "db.h"

typedef struct queue_cfg {
  int64_t lease_ms;        /* how long a claim or heartbeat holds a job */
  int64_t backoff_base_ms; /* first retry delay; doubles per attempt */
  int64_t backoff_max_ms;  /* cap on the retry delay */
} queue_cfg;

queue_cfg queue_cfg_default(void);
/* Delay before attempt+1 after attempt `attempt` (>= 1) failed. */
int64_t queue_backoff_ms(const queue_cfg *cfg, int attempt);
int queue_state_terminal(const char *state);

typedef struct queue_create_req {
  const char *kind;
  const char *spec_json;    /* validated, defaults filled */
  int priority;             /* higher first */
  int max_attempts;         /* >= 1 */
  const char *idempotency_key; /* or NULL */
  const char *request_hash; /* sha256 hex of the request body, for idempotent replays */
  const char *owner;        /* tok_… */
} queue_create_req;

/* Creates a queued job; *existed = 1 when the idempotency key replayed an earlier job (same
 * request), whose object is returned. 409 when the key was used with a different request. */
cJSON *queue_job_create(db_conn *db, const queue_create_req *req, int *existed, srv_err *e);
cJSON *queue_job_get(db_conn *db, const char *id, srv_err *e); /* 404 when unknown */
/* {"items": [...], "next_page_token": "…" | null}; newest first; state/kind may be NULL. */
cJSON *queue_job_list(db_conn *db, const char *state, const char *kind, int limit,
                      const char *page_token, srv_err *e);
cJSON *queue_job_cancel(db_conn *db, const char *id, srv_err *e);
cJSON *queue_job_retry(db_conn *db, const char *id, srv_err *e);

/* Claims the best queued job (priority, then submission order) whose kind is in kinds (a JSON
 * array, or NULL for any) and whose backoff has passed. Returns {"job", "attempt",
 * "lease_until"}, or NULL with e->status == 0 when nothing is claimable. Records the worker. */
cJSON *queue_claim(db_conn *db, const queue_cfg *cfg, const char *worker, const char *device,
                   const cJSON *kinds, srv_err *e);
/* 1 when queue_claim would find a job now (a read, no lock), 0 when not, -1 on error. Long
 * polls check this on every wake-up before trying the write that claims. */
int queue_claimable(db_conn *db, const cJSON *kinds, srv_err *e);
/* Renews the lease; 409 stale_attempt unless (id, attempt) is the job's running attempt. */
int queue_heartbeat(db_conn *db, const queue_cfg *cfg, const char *id, int64_t attempt,
                    int64_t *lease_until, int *cancel, srv_err *e);
/* 0 when (id, attempt) is the job's running attempt; 404 / 409 stale_attempt otherwise. */
int queue_fence(db_conn *db, const char *id, int64_t attempt, srv_err *e);
/* Appends a batch of worker events (schema/CONTRACT.md "Events"); validated first, all or none. */
int queue_events_append(db_conn *db, const char *id, int64_t attempt, const cJSON *events,
                        srv_err *e);
/* Ends the attempt: succeeded with result, or failed with error (retryable or not). */
cJSON *queue_complete(db_conn *db, const queue_cfg *cfg, const char *id, int64_t attempt,
                      int succeeded, const cJSON *result, const char *error, int retryable,
                      srv_err *e);
/* Requeues (or ends) every running job whose lease expired before now; returns how many. */
int queue_reap(db_conn *db, const queue_cfg *cfg, int64_t now_ms, srv_err *e);

/* Appends one event to a job's log (inside the caller's transaction when there is one). */
int queue_event_add(db_conn *db, const char *id, int64_t attempt, const char *type,
                    const cJSON *data, srv_err *e);
/* Events with seq > after, oldest first, at most limit: [{"id", "type", "data", "time"}]. */
cJSON *queue_events_after(db_conn *db, const char *id, int64_t after, int limit, srv_err *e);
/* The change feed behind GET /api/v1/changes: for every job whose state, progress or result
 * changed after event `after`, one {"id": seq of its latest such event, "job": <job object>},
 * oldest change first. */
int queue_events_last_id(db_conn *db, int64_t *out, srv_err *e); /* 0 when the log is empty */
cJSON *queue_changes_after(db_conn *db, int64_t after, int limit, srv_err *e);
/* The job's state into out (16 bytes); 404 when unknown. */
int queue_job_state(db_conn *db, const char *id, char *out, srv_err *e);
/* {"job", "series": [{"key", "total", "points": [{"step", "value", "time"}]}]}, each series
 * downsampled to max_points; key NULL for all keys. */
cJSON *queue_metrics(db_conn *db, const char *id, const char *key, size_t max_points,
                     srv_err *e);

/* {"items": [{"id", "name", "device", "kinds", "job", "created_at", "last_seen"}]}, most
 * recently seen first, at most limit. */
cJSON *queue_workers_list(db_conn *db, int limit, srv_err *e);

/* Change notification for long polls and SSE: read the generation, look, then wait for it to
 * move (or the deadline, or shutdown). Every committed queue write bumps it. */
uint64_t queue_notify_gen(void);
void queue_notify_bump(void);
/* Returns 1 when the generation moved past seen, 0 on timeout, -1 after shutdown. */
int queue_notify_wait(uint64_t seen, int64_t deadline_ms);
void queue_notify_shutdown(void);

#endif
