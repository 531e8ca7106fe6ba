/* server/queue.c — the job state machine, leases, fencing, event log and metrics (see queue.h). */
#include "queue.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "series.h"

queue_cfg queue_cfg_default(void) {
  queue_cfg c = {.lease_ms = 30000, .backoff_base_ms = 2000, .backoff_max_ms = 300000};
  return c;
}

int64_t queue_backoff_ms(const queue_cfg *cfg, int attempt) {
  int64_t d = cfg->backoff_base_ms;
  for (int i = 1; i < attempt && d < cfg->backoff_max_ms; i++) d *= 2;
  return d < cfg->backoff_max_ms ? d : cfg->backoff_max_ms;
}

int queue_state_terminal(const char *s) {
  return strcmp(s, "succeeded") == 0 || strcmp(s, "failed") == 0 || strcmp(s, "cancelled") == 0 ||
         strcmp(s, "dead") == 0;
}

/* ---- notification ------------------------------------------------------------------------ */

static pthread_mutex_t queue_notify_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_notify_cond = PTHREAD_COND_INITIALIZER;
static uint64_t queue_notify_generation; /* guarded by queue_notify_mu */
static int queue_notify_stopped;         /* guarded by queue_notify_mu */

uint64_t queue_notify_gen(void) {
  pthread_mutex_lock(&queue_notify_mu);
  uint64_t g = queue_notify_generation;
  pthread_mutex_unlock(&queue_notify_mu);
  return g;
}

void queue_notify_bump(void) {
  pthread_mutex_lock(&queue_notify_mu);
  queue_notify_generation++;
  pthread_cond_broadcast(&queue_notify_cond);
  pthread_mutex_unlock(&queue_notify_mu);
}

int queue_notify_wait(uint64_t seen, int64_t deadline_ms) {
  struct timespec ts = {.tv_sec = deadline_ms / 1000, .tv_nsec = (deadline_ms % 1000) * 1000000};
  pthread_mutex_lock(&queue_notify_mu);
  int rc = 0;
  for (;;) {
    if (queue_notify_stopped) { rc = -1; break; }
    if (queue_notify_generation != seen) { rc = 1; break; }
    if (pthread_cond_timedwait(&queue_notify_cond, &queue_notify_mu, &ts) != 0) break;
  }
  pthread_mutex_unlock(&queue_notify_mu);
  return rc;
}

void queue_notify_shutdown(void) {
  pthread_mutex_lock(&queue_notify_mu);
  queue_notify_stopped = 1;
  pthread_cond_broadcast(&queue_notify_cond);
  pthread_mutex_unlock(&queue_notify_mu);
}

/* ---- the job object ---------------------------------------------------------------------- */

/* Column order of every query that builds a job object; queue_job_from_row reads by index. */
#define JOB_COLS                                                                                   \
  "id, kind, state, priority, attempt, max_attempts, spec, progress, result, error, worker, "     \
  "created_at, coalesce(started_at, 0), coalesce(finished_at, 0), updated_at, cancel_requested, " \
  "not_before, coalesce(lease_until, 0)"

static void queue_add_json_text(cJSON *o, const char *key, sqlite3_stmt *st, int col) {
  const char *text = (const char *)sqlite3_column_text(st, col);
  cJSON *v = text ? cJSON_Parse(text) : NULL;
  if (v) cJSON_AddItemToObject(o, key, v);
  else cJSON_AddNullToObject(o, key);
}

static cJSON *queue_job_from_row(sqlite3_stmt *st) {
  cJSON *o = cJSON_CreateObject();
  const char *state = (const char *)sqlite3_column_text(st, 2);
  cJSON_AddStringToObject(o, "id", (const char *)sqlite3_column_text(st, 0));
  cJSON_AddStringToObject(o, "kind", (const char *)sqlite3_column_text(st, 1));
  cJSON_AddStringToObject(o, "state", state);
  cJSON_AddNumberToObject(o, "priority", (double)sqlite3_column_int64(st, 3));
  cJSON_AddNumberToObject(o, "attempt", (double)sqlite3_column_int64(st, 4));
  cJSON_AddNumberToObject(o, "max_attempts", (double)sqlite3_column_int64(st, 5));
  queue_add_json_text(o, "spec", st, 6);
  /* progress always carries fraction, message and eta_s, whatever was stored (a job that
   * succeeded without ever reporting progress has only the fraction the completion set). */
  const char *ptext = (const char *)sqlite3_column_text(st, 7);
  cJSON *progress = ptext ? cJSON_Parse(ptext) : NULL;
  if (!cJSON_IsObject(progress)) {
    cJSON_Delete(progress);
    progress = cJSON_CreateObject();
  }
  if (!cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(progress, "fraction"))) {
    cJSON_DeleteItemFromObjectCaseSensitive(progress, "fraction");
    cJSON_AddNumberToObject(progress, "fraction", 0);
  }
  if (!cJSON_GetObjectItemCaseSensitive(progress, "message")) cJSON_AddNullToObject(progress, "message");
  if (!cJSON_GetObjectItemCaseSensitive(progress, "eta_s")) cJSON_AddNullToObject(progress, "eta_s");
  cJSON_AddItemToObject(o, "progress", progress);
  queue_add_json_text(o, "result", st, 8);
  const char *error = (const char *)sqlite3_column_text(st, 9);
  if (error) cJSON_AddStringToObject(o, "error", error);
  else cJSON_AddNullToObject(o, "error");
  const char *worker = (const char *)sqlite3_column_text(st, 10);
  if (worker) cJSON_AddStringToObject(o, "worker", worker);
  else cJSON_AddNullToObject(o, "worker");
  util_json_add_time(o, "created_at", sqlite3_column_int64(st, 11));
  util_json_add_time(o, "started_at", sqlite3_column_int64(st, 12));
  util_json_add_time(o, "finished_at", sqlite3_column_int64(st, 13));
  util_json_add_time(o, "updated_at", sqlite3_column_int64(st, 14));
  cJSON_AddBoolToObject(o, "cancel_requested", sqlite3_column_int(st, 15));
  util_json_add_time(o, "not_before", sqlite3_column_int64(st, 16));
  util_json_add_time(o, "lease_until", strcmp(state, "running") == 0 ? sqlite3_column_int64(st, 17)
                                                                     : 0);
  return o;
}

cJSON *queue_job_get(db_conn *db, const char *id, srv_err *e) {
  sqlite3_stmt *st = db_stmt(db, "SELECT " JOB_COLS " FROM jobs WHERE id = ?1", e);
  if (!st) return NULL;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  cJSON *job = rc == SQLITE_ROW ? queue_job_from_row(st) : NULL;
  sqlite3_reset(st);
  if (rc == SQLITE_DONE) srv_err_set(e, 404, "not_found", "no job %s", id);
  else if (rc != SQLITE_ROW) DB_FAIL(db, e);
  return job;
}

int queue_job_state(db_conn *db, const char *id, char *out, srv_err *e) {
  sqlite3_stmt *st = db_stmt(db, "SELECT state FROM jobs WHERE id = ?1", e);
  if (!st) return -1;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) snprintf(out, 16, "%s", (const char *)sqlite3_column_text(st, 0));
  sqlite3_reset(st);
  if (rc == SQLITE_ROW) return 0;
  if (rc == SQLITE_DONE) return srv_err_set(e, 404, "not_found", "no job %s", id);
  return DB_FAIL(db, e);
}

/* ---- events ------------------------------------------------------------------------------ */

int queue_event_add(db_conn *db, const char *id, int64_t attempt, const char *type,
                    const cJSON *data, srv_err *e) {
  char *text = cJSON_PrintUnformatted(data);
  if (!text) return srv_err_set(e, 500, "internal", "out of memory");
  sqlite3_stmt *st = db_stmt(db,
                             "INSERT INTO job_events (job_id, attempt, type, data, created_at) "
                             "VALUES (?1, ?2, ?3, ?4, ?5)",
                             e);
  if (!st) {
    free(text);
    return -1;
  }
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, attempt);
  sqlite3_bind_text(st, 3, type, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 4, text, -1, free);
  sqlite3_bind_int64(st, 5, util_now_ms());
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : DB_FAIL(db, e);
}

/* The lifecycle event every transition appends: {"type":"state","state":…,"attempt":…}. */
static int queue_state_event(db_conn *db, const char *id, int64_t attempt, const char *state,
                             const char *error, srv_err *e) {
  cJSON *ev = cJSON_CreateObject();
  cJSON_AddStringToObject(ev, "type", "state");
  cJSON_AddStringToObject(ev, "state", state);
  cJSON_AddNumberToObject(ev, "attempt", (double)attempt);
  if (error) cJSON_AddStringToObject(ev, "error", error);
  int rc = queue_event_add(db, id, attempt, "state", ev, e);
  cJSON_Delete(ev);
  return rc;
}

cJSON *queue_events_after(db_conn *db, const char *id, int64_t after, int limit, srv_err *e) {
  sqlite3_stmt *st = db_stmt(db,
                             "SELECT seq, type, data, created_at FROM job_events "
                             "WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                             e);
  if (!st) return NULL;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, after);
  sqlite3_bind_int(st, 3, limit);
  cJSON *items = cJSON_CreateArray();
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    cJSON *ev = cJSON_CreateObject();
    cJSON_AddNumberToObject(ev, "id", (double)sqlite3_column_int64(st, 0));
    cJSON_AddStringToObject(ev, "type", (const char *)sqlite3_column_text(st, 1));
    queue_add_json_text(ev, "data", st, 2);
    util_json_add_time(ev, "time", sqlite3_column_int64(st, 3));
    cJSON_AddItemToArray(items, ev);
  }
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    cJSON_Delete(items);
    DB_FAIL(db, e);
    return NULL;
  }
  return items;
}

int queue_events_last_id(db_conn *db, int64_t *out, srv_err *e) {
  sqlite3_stmt *st = db_stmt(db, "SELECT coalesce(MAX(seq), 0) FROM job_events", e);
  if (!st) return -1;
  int rc = sqlite3_step(st);
  *out = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  sqlite3_reset(st);
  return rc == SQLITE_ROW ? 0 : DB_FAIL(db, e);
}

cJSON *queue_changes_after(db_conn *db, int64_t after, int limit, srv_err *e) {
  /* seq is the primary key, so `seq > ?` is a range scan however long the log grows. */
  sqlite3_stmt *st = db_stmt(db,
                             "SELECT job_id, MAX(seq) AS last FROM job_events WHERE seq > ?1 "
                             "AND type IN ('state', 'progress', 'result', 'artifact') "
                             "GROUP BY job_id ORDER BY last LIMIT ?2",
                             e);
  if (!st) return NULL;
  sqlite3_bind_int64(st, 1, after);
  sqlite3_bind_int(st, 2, limit);
  cJSON *ids = cJSON_CreateArray();
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    cJSON *row = cJSON_CreateObject();
    cJSON_AddStringToObject(row, "job", (const char *)sqlite3_column_text(st, 0));
    cJSON_AddNumberToObject(row, "id", (double)sqlite3_column_int64(st, 1));
    cJSON_AddItemToArray(ids, row);
  }
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    cJSON_Delete(ids);
    DB_FAIL(db, e);
    return NULL;
  }
  /* The job objects are read after the statement is reset: queue_job_get uses its own. */
  cJSON *row;
  cJSON_ArrayForEach(row, ids) {
    cJSON *id = cJSON_DetachItemFromObject(row, "job");
    srv_err ignore = {0};
    cJSON *job = queue_job_get(db, id->valuestring, &ignore); /* NULL if deleted meanwhile */
    cJSON_AddItemToObject(row, "job", job ? job : cJSON_CreateNull());
    cJSON_Delete(id);
  }
  return ids;
}

/* ---- create, list, cancel, retry --------------------------------------------------------- */

static cJSON *queue_job_by_idempotency(db_conn *db, const queue_create_req *req, srv_err *e,
                                       int *found) {
  *found = 0;
  sqlite3_stmt *st = db_stmt(db,
                             "SELECT " JOB_COLS ", request_hash FROM jobs "
                             "WHERE owner = ?1 AND idempotency_key = ?2",
                             e);
  if (!st) return NULL;
  sqlite3_bind_text(st, 1, req->owner ? req->owner : "", -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, req->idempotency_key, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  cJSON *job = NULL;
  if (rc == SQLITE_ROW) {
    *found = 1;
    const char *hash = (const char *)sqlite3_column_text(st, 18);
    if (hash && req->request_hash && strcmp(hash, req->request_hash) == 0)
      job = queue_job_from_row(st);
    else
      srv_err_set(e, 409, "idempotency_conflict",
                  "Idempotency-Key %s was already used with a different request; use a new key",
                  req->idempotency_key);
  }
  sqlite3_reset(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) DB_FAIL(db, e);
  return job;
}

cJSON *queue_job_create(db_conn *db, const queue_create_req *req, int *existed, srv_err *e) {
  *existed = 0;
  if (db_begin(db, e) != 0) return NULL;
  if (req->idempotency_key) {
    int found = 0;
    cJSON *prior = queue_job_by_idempotency(db, req, e, &found);
    if (found || e->status) {
      db_rollback(db);
      *existed = prior != NULL;
      return prior;
    }
  }
  char id[UTIL_ID_LEN];
  if (util_id_new("job_", id) != 0) {
    db_rollback(db);
    srv_err_set(e, 500, "internal", "the kernel random source failed");
    return NULL;
  }
  int64_t now = util_now_ms();
  sqlite3_stmt *st = db_stmt(
      db,
      "INSERT INTO jobs (id, kind, state, priority, max_attempts, spec, owner, idempotency_key, "
      "request_hash, created_at, updated_at) VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, "
      "?9, ?9) RETURNING " JOB_COLS,
      e);
  if (!st) {
    db_rollback(db);
    return NULL;
  }
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, req->kind, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 3, req->priority);
  sqlite3_bind_int(st, 4, req->max_attempts);
  sqlite3_bind_text(st, 5, req->spec_json, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 6, req->owner ? req->owner : "", -1, SQLITE_STATIC);
  if (req->idempotency_key) sqlite3_bind_text(st, 7, req->idempotency_key, -1, SQLITE_STATIC);
  if (req->request_hash) sqlite3_bind_text(st, 8, req->request_hash, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 9, now);
  int rc = sqlite3_step(st);
  cJSON *job = rc == SQLITE_ROW ? queue_job_from_row(st) : NULL;
  sqlite3_reset(st);
  if (!job || queue_state_event(db, id, 0, "queued", NULL, e) != 0 || db_commit(db, e) != 0) {
    if (!job) DB_FAIL(db, e);
    db_rollback(db);
    cJSON_Delete(job);
    return NULL;
  }
  queue_notify_bump();
  return job;
}

cJSON *queue_job_list(db_conn *db, const char *state, const char *kind, int limit,
                      const char *page_token, srv_err *e) {
  int64_t before = INT64_MAX;
  if (page_token && util_page_token_decode(page_token, &before) != 0) {
    srv_err_set(e, 400, "invalid_page_token", "page_token is not one this server issued");
    return NULL;
  }
  sqlite3_stmt *st = db_stmt(db,
                             "SELECT " JOB_COLS ", seq FROM jobs WHERE seq < ?1 "
                             "AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR kind = ?3) "
                             "ORDER BY seq DESC LIMIT ?4",
                             e);
  if (!st) return NULL;
  sqlite3_bind_int64(st, 1, before);
  if (state) sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
  if (kind) sqlite3_bind_text(st, 3, kind, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 4, limit + 1); /* one extra row says whether a next page exists */
  return db_page_collect(db, st, limit, queue_job_from_row, 18, e);
}

/* Runs one UPDATE … RETURNING JOB_COLS bound to (id, now) inside a transaction, adds the state
 * event for the new state and commits. The UPDATE's WHERE decides legality; when it matches no
 * row, the current state explains the refusal (404 or 409 with `what`). */
static cJSON *queue_job_transition(db_conn *db, const char *id, const char *sql, const char *what,
                                   srv_err *e) {
  if (db_begin(db, e) != 0) return NULL;
  sqlite3_stmt *st = db_stmt(db, sql, e);
  if (!st) {
    db_rollback(db);
    return NULL;
  }
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, util_now_ms());
  int rc = sqlite3_step(st);
  cJSON *job = rc == SQLITE_ROW ? queue_job_from_row(st) : NULL;
  sqlite3_reset(st);
  if (!job) {
    char state[16];
    if (rc != SQLITE_DONE) DB_FAIL(db, e);
    else if (queue_job_state(db, id, state, e) == 0)
      srv_err_set(e, 409, "invalid_state", "job %s is %s; %s", id, state, what);
    db_rollback(db);
    return NULL;
  }
  const char *state = cJSON_GetObjectItem(job, "state")->valuestring;
  int64_t attempt = (int64_t)cJSON_GetObjectItem(job, "attempt")->valuedouble;
  if (queue_state_event(db, id, attempt, state, NULL, e) != 0 || db_commit(db, e) != 0) {
    db_rollback(db);
    cJSON_Delete(job);
    return NULL;
  }
  queue_notify_bump();
  return job;
}

cJSON *queue_job_cancel(db_conn *db, const char *id, srv_err *e) {
  /* Queued jobs end at once; a running one is only flagged, because its worker must stop the
   * child first (it sees cancel=true on its next heartbeat and then completes). */
  return queue_job_transition(
      db, id,
      "UPDATE jobs SET state = CASE state WHEN 'queued' THEN 'cancelled' ELSE state END, "
      "finished_at = CASE state WHEN 'queued' THEN ?2 ELSE finished_at END, "
      "cancel_requested = 1, updated_at = ?2 "
      "WHERE id = ?1 AND state IN ('queued', 'running') RETURNING " JOB_COLS,
      "only queued or running jobs can be cancelled", e);
}

cJSON *queue_job_retry(db_conn *db, const char *id, srv_err *e) {
  /* The attempt count is kept (it numbers attempts for fencing and logs); max_attempts grows so
   * the retried job gets at least one more attempt. */
  return queue_job_transition(
      db, id,
      "UPDATE jobs SET state = 'queued', cancel_requested = 0, not_before = 0, error = NULL, "
      "result = NULL, finished_at = NULL, lease_until = NULL, "
      "max_attempts = max(max_attempts, attempt + 1), updated_at = ?2 "
      "WHERE id = ?1 AND state IN ('failed', 'cancelled', 'dead') RETURNING " JOB_COLS,
      "only failed, cancelled or dead jobs can be retried", e);
}

/* ---- worker protocol --------------------------------------------------------------------- */

static int queue_worker_seen(db_conn *db, const char *worker, const char *device,
                             const char *kinds, const char *job_id, srv_err *e) {
  char id[UTIL_ID_LEN];
  if (util_id_new("wrk_", id) != 0)
    return srv_err_set(e, 500, "internal", "the kernel random source failed");
  sqlite3_stmt *st = db_stmt(db,
                             "INSERT INTO workers (id, name, device, kinds, job_id, created_at, "
                             "last_seen) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) "
                             "ON CONFLICT (name) DO UPDATE SET device = excluded.device, "
                             "kinds = excluded.kinds, last_seen = excluded.last_seen, "
                             "job_id = coalesce(excluded.job_id, job_id)",
                             e);
  if (!st) return -1;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, worker, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, device, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 4, kinds, -1, SQLITE_STATIC);
  if (job_id) sqlite3_bind_text(st, 5, job_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 6, util_now_ms());
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : DB_FAIL(db, e);
}

cJSON *queue_claim(db_conn *db, const queue_cfg *cfg, const char *worker, const char *device,
                   const cJSON *kinds, srv_err *e) {
  char *kinds_text = kinds ? cJSON_PrintUnformatted(kinds) : NULL;
  if (db_begin(db, e) != 0) {
    free(kinds_text);
    return NULL;
  }
  int64_t now = util_now_ms(), lease_until = now + cfg->lease_ms;
  sqlite3_stmt *st = db_stmt(
      db,
      "UPDATE jobs SET state = 'running', attempt = attempt + 1, worker = ?1, lease_until = ?2, "
      "started_at = ?3, updated_at = ?3, progress = NULL, error = NULL "
      "WHERE seq = (SELECT seq FROM jobs WHERE state = 'queued' AND not_before <= ?3 "
      "AND (?4 IS NULL OR kind IN (SELECT value FROM json_each(?4))) "
      "ORDER BY priority DESC, seq LIMIT 1) RETURNING " JOB_COLS,
      e);
  cJSON *out = NULL;
  if (st) {
    sqlite3_bind_text(st, 1, worker, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, lease_until);
    sqlite3_bind_int64(st, 3, now);
    if (kinds_text) sqlite3_bind_text(st, 4, kinds_text, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    cJSON *job = rc == SQLITE_ROW ? queue_job_from_row(st) : NULL;
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) DB_FAIL(db, e);
    if (job) {
      const char *id = cJSON_GetObjectItem(job, "id")->valuestring;
      int64_t attempt = (int64_t)cJSON_GetObjectItem(job, "attempt")->valuedouble;
      out = cJSON_CreateObject();
      cJSON_AddItemToObject(out, "job", job);
      cJSON_AddNumberToObject(out, "attempt", (double)attempt);
      util_json_add_time(out, "lease_until", lease_until);
      cJSON *ev = cJSON_CreateObject();
      cJSON_AddStringToObject(ev, "type", "state");
      cJSON_AddStringToObject(ev, "state", "running");
      cJSON_AddNumberToObject(ev, "attempt", (double)attempt);
      cJSON_AddStringToObject(ev, "worker", worker);
      int erc = queue_event_add(db, id, attempt, "state", ev, e);
      cJSON_Delete(ev);
      if (erc != 0) {
        cJSON_Delete(out);
        out = NULL;
      }
    }
  }
  const char *claimed = out ? cJSON_GetObjectItem(cJSON_GetObjectItem(out, "job"), "id")->valuestring
                            : NULL;
  if (e->status == 0 &&
      queue_worker_seen(db, worker, device, kinds_text ? kinds_text : "[]", claimed, e) == 0 &&
      db_commit(db, e) == 0) {
    free(kinds_text);
    if (out) queue_notify_bump();
    return out;
  }
  db_rollback(db);
  free(kinds_text);
  cJSON_Delete(out);
  return NULL;
}

int queue_claimable(db_conn *db, const cJSON *kinds, srv_err *e) {
  char *kinds_text = kinds ? cJSON_PrintUnformatted(kinds) : NULL;
  sqlite3_stmt *st = db_stmt(db,
                             "SELECT 1 FROM jobs WHERE state = 'queued' AND not_before <= ?1 "
                             "AND (?2 IS NULL OR kind IN (SELECT value FROM json_each(?2))) LIMIT 1",
                             e);
  if (!st) {
    free(kinds_text);
    return -1;
  }
  sqlite3_bind_int64(st, 1, util_now_ms());
  if (kinds_text) sqlite3_bind_text(st, 2, kinds_text, -1, free);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc == SQLITE_ROW) return 1;
  if (rc == SQLITE_DONE) return 0;
  return DB_FAIL(db, e);
}

/* Looks up (id, attempt) for fencing: 0 when running at that attempt, with cancel_requested. */
static int queue_fence_read(db_conn *db, const char *id, int64_t attempt, int *cancel,
                            srv_err *e) {
  sqlite3_stmt *st = db_stmt(db, "SELECT state, attempt, cancel_requested FROM jobs WHERE id = ?1",
                             e);
  if (!st) return -1;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  int ok = 0;
  char state[16] = "";
  int64_t current = 0;
  if (rc == SQLITE_ROW) {
    snprintf(state, sizeof state, "%s", (const char *)sqlite3_column_text(st, 0));
    current = sqlite3_column_int64(st, 1);
    if (cancel) *cancel = sqlite3_column_int(st, 2);
    ok = strcmp(state, "running") == 0 && current == attempt;
  }
  sqlite3_reset(st);
  if (rc == SQLITE_DONE) return srv_err_set(e, 404, "not_found", "no job %s", id);
  if (rc != SQLITE_ROW) return DB_FAIL(db, e);
  if (!ok)
    return srv_err_set(e, 409, "stale_attempt",
                       "attempt %lld of job %s is no longer running (job is %s at attempt %lld); "
                       "stop the job and drop it",
                       (long long)attempt, id, state, (long long)current);
  return 0;
}

int queue_fence(db_conn *db, const char *id, int64_t attempt, srv_err *e) {
  return queue_fence_read(db, id, attempt, NULL, e);
}

int queue_heartbeat(db_conn *db, const queue_cfg *cfg, const char *id, int64_t attempt,
                    int64_t *lease_until, int *cancel, srv_err *e) {
  if (db_begin(db, e) != 0) return -1;
  if (queue_fence_read(db, id, attempt, cancel, e) != 0) {
    db_rollback(db);
    return -1;
  }
  int64_t now = util_now_ms();
  *lease_until = now + cfg->lease_ms;
  sqlite3_stmt *st = db_stmt(db,
                             "UPDATE jobs SET lease_until = ?2, updated_at = ?3 WHERE id = ?1",
                             e);
  int rc = SQLITE_ERROR;
  if (st) {
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, *lease_until);
    sqlite3_bind_int64(st, 3, now);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
  }
  if (rc != SQLITE_DONE) {
    if (st) DB_FAIL(db, e);
    db_rollback(db);
    return -1;
  }
  sqlite3_stmt *ws = db_stmt(db, "UPDATE workers SET last_seen = ?2 WHERE job_id = ?1", e);
  if (ws) {
    sqlite3_bind_text(ws, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(ws, 2, now);
    sqlite3_step(ws);
    sqlite3_reset(ws);
  }
  return db_commit(db, e);
}

/* 1 when s is a dotted metric key: 1–128 of [A-Za-z0-9._-]. */
static int queue_metric_key_valid(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 128) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '.' || c == '_' || c == '-'))
      return 0;
  }
  return 1;
}

#define QUEUE_EVENTS_MAX 1000   /* per batch */
#define QUEUE_EVENT_BYTES 65536 /* per event, as JSON */

/* Checks one worker event; index i names it in the fault path. */
static int queue_event_check(const cJSON *ev, int i, srv_err *e) {
  char path[96];
  snprintf(path, sizeof path, "$.events[%d]", i);
  if (!cJSON_IsObject(ev)) return srv_err_set_path(e, 400, "invalid_event", path, "must be an object");
  const char *type = util_json_str(ev, "type");
  if (!type || !*type || strlen(type) > 32) {
    snprintf(path, sizeof path, "$.events[%d].type", i);
    return srv_err_set_path(e, 400, "invalid_event", path, "must be a string of 1–32 characters");
  }
  for (const char *c = type; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || *c == '_')) {
      snprintf(path, sizeof path, "$.events[%d].type", i);
      return srv_err_set_path(e, 400, "invalid_event", path, "must be snake_case");
    }
  if (strcmp(type, "metric") == 0) {
    const char *key = util_json_str(ev, "key");
    const cJSON *step = cJSON_GetObjectItemCaseSensitive(ev, "step");
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(ev, "value");
    if (!key || !queue_metric_key_valid(key)) {
      snprintf(path, sizeof path, "$.events[%d].key", i);
      return srv_err_set_path(e, 400, "invalid_event", path,
                              "metric key must be 1–128 characters of [A-Za-z0-9._-]");
    }
    if (!cJSON_IsNumber(step) || step->valuedouble != floor(step->valuedouble) ||
        fabs(step->valuedouble) > 9007199254740992.0) {
      snprintf(path, sizeof path, "$.events[%d].step", i);
      return srv_err_set_path(e, 400, "invalid_event", path, "step must be an integer");
    }
    if (!cJSON_IsNumber(value) || !isfinite(value->valuedouble)) {
      snprintf(path, sizeof path, "$.events[%d].value", i);
      return srv_err_set_path(e, 400, "invalid_event", path, "value must be a finite number");
    }
  } else if (strcmp(type, "progress") == 0) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(ev, "fraction");
    if (!cJSON_IsNumber(f) || !(f->valuedouble >= 0 && f->valuedouble <= 1)) {
      snprintf(path, sizeof path, "$.events[%d].fraction", i);
      return srv_err_set_path(e, 400, "invalid_event", path, "fraction must be in [0, 1]");
    }
  }
  return 0;
}

static int queue_metric_add(db_conn *db, const char *id, int64_t attempt, const cJSON *ev,
                            int64_t now, srv_err *e) {
  sqlite3_stmt *st = db_stmt(db,
                             "INSERT INTO job_metrics (job_id, key, step, value, attempt, "
                             "created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                             e);
  if (!st) return -1;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, util_json_str(ev, "key"), -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, (int64_t)cJSON_GetObjectItem(ev, "step")->valuedouble);
  sqlite3_bind_double(st, 4, cJSON_GetObjectItem(ev, "value")->valuedouble);
  sqlite3_bind_int64(st, 5, attempt);
  sqlite3_bind_int64(st, 6, now);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : DB_FAIL(db, e);
}

static int queue_progress_set(db_conn *db, const char *id, const cJSON *ev, int64_t now,
                              srv_err *e) {
  cJSON *p = cJSON_CreateObject();
  const cJSON *msg = cJSON_GetObjectItemCaseSensitive(ev, "message");
  const cJSON *eta = cJSON_GetObjectItemCaseSensitive(ev, "eta_s");
  cJSON_AddNumberToObject(p, "fraction", cJSON_GetObjectItem(ev, "fraction")->valuedouble);
  if (cJSON_IsString(msg)) cJSON_AddStringToObject(p, "message", msg->valuestring);
  else cJSON_AddNullToObject(p, "message");
  if (cJSON_IsNumber(eta) && isfinite(eta->valuedouble) && eta->valuedouble >= 0)
    cJSON_AddNumberToObject(p, "eta_s", eta->valuedouble);
  else cJSON_AddNullToObject(p, "eta_s");
  char *text = cJSON_PrintUnformatted(p);
  cJSON_Delete(p);
  sqlite3_stmt *st = db_stmt(db, "UPDATE jobs SET progress = ?2, updated_at = ?3 WHERE id = ?1", e);
  if (!st || !text) {
    free(text);
    return st ? srv_err_set(e, 500, "internal", "out of memory") : -1;
  }
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, text, -1, free);
  sqlite3_bind_int64(st, 3, now);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : DB_FAIL(db, e);
}

int queue_events_append(db_conn *db, const char *id, int64_t attempt, const cJSON *events,
                        srv_err *e) {
  if (!cJSON_IsArray(events))
    return srv_err_set_path(e, 400, "invalid_field", "$.events", "events must be an array");
  int n = cJSON_GetArraySize(events);
  if (n > QUEUE_EVENTS_MAX)
    return srv_err_set_path(e, 413, "too_many_events", "$.events",
                            "at most %d events per batch; send the rest in another batch",
                            QUEUE_EVENTS_MAX);
  int i = 0;
  const cJSON *ev;
  cJSON_ArrayForEach(ev, events) {
    if (queue_event_check(ev, i++, e) != 0) return -1;
  }
  if (db_begin(db, e) != 0) return -1;
  if (queue_fence_read(db, id, attempt, NULL, e) != 0) goto fail;
  int64_t now = util_now_ms();
  cJSON_ArrayForEach(ev, events) {
    const char *type = util_json_str(ev, "type");
    /* Metrics go to their series and also to the event log, which is what live views follow. */
    if (strcmp(type, "metric") == 0 && queue_metric_add(db, id, attempt, ev, now, e) != 0) goto fail;
    if (strcmp(type, "progress") == 0 && queue_progress_set(db, id, ev, now, e) != 0) goto fail;
    char *text = cJSON_PrintUnformatted(ev);
    size_t len = text ? strlen(text) : 0;
    free(text);
    if (len > QUEUE_EVENT_BYTES) {
      srv_err_set(e, 413, "event_too_large", "an event is %zu bytes; the limit is %d", len,
                  QUEUE_EVENT_BYTES);
      goto fail;
    }
    if (queue_event_add(db, id, attempt, type, ev, e) != 0) goto fail;
  }
  if (db_commit(db, e) != 0) return -1;
  queue_notify_bump();
  return 0;
fail:
  db_rollback(db);
  return -1;
}

cJSON *queue_complete(db_conn *db, const queue_cfg *cfg, const char *id, int64_t attempt,
                      int succeeded, const cJSON *result, const char *error, int retryable,
                      srv_err *e) {
  if (db_begin(db, e) != 0) return NULL;
  int cancel = 0;
  if (queue_fence_read(db, id, attempt, &cancel, e) != 0) {
    db_rollback(db);
    return NULL;
  }
  int64_t now = util_now_ms();
  /* What the attempt's end means for the job: a requested cancel wins over a failure (the
   * worker failed because it was stopped); a success stays a success. */
  const char *state;
  int64_t not_before = 0;
  sqlite3_stmt *mx = db_stmt(db, "SELECT max_attempts FROM jobs WHERE id = ?1", e);
  if (!mx) {
    db_rollback(db);
    return NULL;
  }
  sqlite3_bind_text(mx, 1, id, -1, SQLITE_STATIC);
  int64_t max_attempts = sqlite3_step(mx) == SQLITE_ROW ? sqlite3_column_int64(mx, 0) : 0;
  sqlite3_reset(mx);
  if (succeeded) state = "succeeded";
  else if (cancel) state = "cancelled";
  else if (!retryable) state = "failed";
  else if (attempt < max_attempts) {
    state = "queued";
    not_before = now + queue_backoff_ms(cfg, (int)attempt);
  } else state = "dead";
  char *result_text = succeeded && result ? cJSON_PrintUnformatted(result) : NULL;
  sqlite3_stmt *st = db_stmt(
      db,
      "UPDATE jobs SET state = ?2, result = ?3, error = ?4, not_before = ?5, updated_at = ?6, "
      "lease_until = NULL, finished_at = CASE WHEN ?2 = 'queued' THEN NULL ELSE ?6 END, "
      "progress = CASE WHEN ?2 = 'succeeded' THEN json_set(coalesce(progress, '{}'), "
      "'$.fraction', 1) ELSE progress END "
      "WHERE id = ?1 RETURNING " JOB_COLS,
      e);
  cJSON *job = NULL;
  if (st) {
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
    if (result_text) sqlite3_bind_text(st, 3, result_text, -1, SQLITE_STATIC);
    if (!succeeded) sqlite3_bind_text(st, 4, error && *error ? error : "failed", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, not_before);
    sqlite3_bind_int64(st, 6, now);
    int rc = sqlite3_step(st);
    job = rc == SQLITE_ROW ? queue_job_from_row(st) : NULL;
    sqlite3_reset(st);
    if (!job) DB_FAIL(db, e);
  }
  free(result_text);
  if (!job || queue_state_event(db, id, attempt, state, succeeded ? NULL : error, e) != 0 ||
      db_commit(db, e) != 0) {
    db_rollback(db);
    cJSON_Delete(job);
    return NULL;
  }
  queue_notify_bump();
  return job;
}

int queue_reap(db_conn *db, const queue_cfg *cfg, int64_t now_ms, srv_err *e) {
  if (db_begin(db, e) != 0) return -1;
  /* The expired attempt counts as a retryable failure: back to queued with backoff while
   * attempts remain, else dead; a cancel that was waiting for the worker completes here. The
   * backoff expression is queue_backoff_ms written set-wise, so one statement handles every
   * expired job (test_queue checks both give the same delays). */
  sqlite3_stmt *st = db_stmt(
      db,
      "UPDATE jobs SET state = CASE WHEN cancel_requested THEN 'cancelled' "
      "WHEN attempt < max_attempts THEN 'queued' ELSE 'dead' END, "
      "error = 'lease expired: worker ' || coalesce(worker, '?') || ' stopped heartbeating', "
      "lease_until = NULL, updated_at = ?1, "
      "finished_at = CASE WHEN cancel_requested OR attempt >= max_attempts THEN ?1 END, "
      "not_before = ?1 + min(?3, ?2 * (1 << min(max(attempt - 1, 0), 30))) "
      "WHERE state = 'running' AND lease_until < ?1 RETURNING id, attempt, state, error",
      e);
  if (!st) {
    db_rollback(db);
    return -1;
  }
  sqlite3_bind_int64(st, 1, now_ms);
  sqlite3_bind_int64(st, 2, cfg->backoff_base_ms);
  sqlite3_bind_int64(st, 3, cfg->backoff_max_ms);
  typedef struct { char id[UTIL_ID_LEN]; int64_t attempt; char state[16]; char error[160]; } reaped;
  reaped *list = NULL;
  int n = 0, cap = 0, rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (n == cap) {
      cap = cap ? 2 * cap : 16;
      reaped *grown = realloc(list, (size_t)cap * sizeof *list);
      if (!grown) break;
      list = grown;
    }
    snprintf(list[n].id, sizeof list[n].id, "%s", (const char *)sqlite3_column_text(st, 0));
    list[n].attempt = sqlite3_column_int64(st, 1);
    snprintf(list[n].state, sizeof list[n].state, "%s", (const char *)sqlite3_column_text(st, 2));
    snprintf(list[n].error, sizeof list[n].error, "%s", (const char *)sqlite3_column_text(st, 3));
    n++;
  }
  sqlite3_reset(st);
  /* Events are added after the UPDATE finished stepping: SQLite runs RETURNING to completion
   * before the first row anyway, but a second statement mid-step on the same table is murky. */
  int ok = rc == SQLITE_DONE;
  if (!ok) DB_FAIL(db, e);
  for (int i = 0; ok && i < n; i++)
    ok = queue_state_event(db, list[i].id, list[i].attempt, list[i].state, list[i].error, e) == 0;
  free(list);
  if (!ok || db_commit(db, e) != 0) {
    db_rollback(db);
    return -1;
  }
  if (n) queue_notify_bump();
  return n;
}

/* ---- metrics ----------------------------------------------------------------------------- */

static cJSON *queue_series_json(const char *key, series_point *pts, size_t n, size_t max_points) {
  cJSON *s = cJSON_CreateObject();
  cJSON_AddStringToObject(s, "key", key);
  cJSON_AddNumberToObject(s, "total", (double)n);
  series_point *kept = malloc((n ? n : 1) * sizeof *kept);
  size_t n_kept = kept ? series_downsample(pts, n, max_points, kept) : 0;
  cJSON *arr = cJSON_AddArrayToObject(s, "points");
  for (size_t i = 0; i < n_kept; i++) {
    cJSON *p = cJSON_CreateObject();
    cJSON_AddNumberToObject(p, "step", (double)kept[i].step);
    cJSON_AddNumberToObject(p, "value", kept[i].value);
    util_json_add_time(p, "time", kept[i].time_ms);
    cJSON_AddItemToArray(arr, p);
  }
  free(kept);
  return s;
}

cJSON *queue_metrics(db_conn *db, const char *id, const char *key, size_t max_points,
                     srv_err *e) {
  char state[16];
  if (queue_job_state(db, id, state, e) != 0) return NULL;
  sqlite3_stmt *st = db_stmt(db,
                             "SELECT key, step, value, created_at FROM job_metrics "
                             "WHERE job_id = ?1 AND (?2 IS NULL OR key = ?2) ORDER BY key, step",
                             e);
  if (!st) return NULL;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  if (key) sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
  cJSON *out = cJSON_CreateObject();
  cJSON_AddStringToObject(out, "job", id);
  cJSON *series = cJSON_AddArrayToObject(out, "series");
  series_point *pts = NULL;
  size_t n = 0, cap = 0;
  char cur[160] = "";
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    const char *k = (const char *)sqlite3_column_text(st, 0);
    if (strcmp(k, cur) != 0) {
      if (n) cJSON_AddItemToArray(series, queue_series_json(cur, pts, n, max_points));
      n = 0;
      snprintf(cur, sizeof cur, "%s", k);
    }
    if (n == cap) {
      cap = cap ? 2 * cap : 256;
      series_point *grown = realloc(pts, cap * sizeof *pts);
      if (!grown) {
        rc = SQLITE_NOMEM;
        break;
      }
      pts = grown;
    }
    pts[n].step = sqlite3_column_int64(st, 1);
    pts[n].value = sqlite3_column_double(st, 2);
    pts[n].time_ms = sqlite3_column_int64(st, 3);
    n++;
  }
  sqlite3_reset(st);
  if (rc == SQLITE_DONE && n) cJSON_AddItemToArray(series, queue_series_json(cur, pts, n, max_points));
  free(pts);
  if (rc != SQLITE_DONE) {
    cJSON_Delete(out);
    if (rc == SQLITE_NOMEM) srv_err_set(e, 500, "internal", "out of memory");
    else DB_FAIL(db, e);
    return NULL;
  }
  return out;
}

/* ---- workers ----------------------------------------------------------------------------- */

cJSON *queue_workers_list(db_conn *db, int limit, srv_err *e) {
  sqlite3_stmt *st = db_stmt(db,
                             "SELECT id, name, device, kinds, job_id, created_at, last_seen "
                             "FROM workers ORDER BY last_seen DESC LIMIT ?1",
                             e);
  if (!st) return NULL;
  sqlite3_bind_int(st, 1, limit);
  cJSON *out = cJSON_CreateObject();
  cJSON *items = cJSON_AddArrayToObject(out, "items");
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    cJSON *w = cJSON_CreateObject();
    cJSON_AddStringToObject(w, "id", (const char *)sqlite3_column_text(st, 0));
    cJSON_AddStringToObject(w, "name", (const char *)sqlite3_column_text(st, 1));
    cJSON_AddStringToObject(w, "device", (const char *)sqlite3_column_text(st, 2));
    queue_add_json_text(w, "kinds", st, 3);
    const char *job = (const char *)sqlite3_column_text(st, 4);
    if (job) cJSON_AddStringToObject(w, "job", job);
    else cJSON_AddNullToObject(w, "job");
    util_json_add_time(w, "created_at", sqlite3_column_int64(st, 5));
    util_json_add_time(w, "last_seen", sqlite3_column_int64(st, 6));
    cJSON_AddItemToArray(items, w);
  }
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    cJSON_Delete(out);
    DB_FAIL(db, e);
    return NULL;
  }
  return out;
}
