/* Server unit tests without HTTP: the queue state machine, leases and fencing, token auth and
 * scopes, metric downsampling, ids, times and page tokens. Each case runs on a fresh in-memory
 * SQLite database with the embedded migrations applied. */
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "queue.h"
#include "series.h"
#include "test.h"

static db_conn *test_db(void) {
  srv_err e = {0};
  db_conn *db = db_open(":memory:", &e);
  if (!db) fprintf(stderr, "db_open: %s\n", e.message);
  return db;
}

/* Submits an inspect-shaped job; returns its id in out. */
static void test_submit(db_conn *db, int priority, int max_attempts, const char *kind, char *out) {
  srv_err e = {0};
  int existed = 0;
  queue_create_req req = {.kind = kind, .spec_json = "{\"dataset\":\"ds_0123456789abcdef\"}",
                          .priority = priority, .max_attempts = max_attempts, .owner = "tok_x"};
  cJSON *job = queue_job_create(db, &req, &existed, &e);
  if (!job) {
    fprintf(stderr, "create: %s\n", e.message);
    out[0] = '\0';
    return;
  }
  snprintf(out, UTIL_ID_LEN, "%s", util_json_str(job, "id"));
  cJSON_Delete(job);
}

/* Claims one job; returns its id (or "" when none) and attempt. */
static int64_t test_claim(db_conn *db, const queue_cfg *cfg, const char *kinds_json, char *id) {
  srv_err e = {0};
  cJSON *kinds = kinds_json ? cJSON_Parse(kinds_json) : NULL;
  cJSON *c = queue_claim(db, cfg, "host:1:cpu", "cpu", kinds, &e);
  cJSON_Delete(kinds);
  id[0] = '\0';
  if (!c) return 0;
  snprintf(id, UTIL_ID_LEN, "%s", util_json_str(cJSON_GetObjectItem(c, "job"), "id"));
  int64_t attempt = (int64_t)cJSON_GetObjectItem(c, "attempt")->valuedouble;
  cJSON_Delete(c);
  return attempt;
}

static const char *test_state(db_conn *db, const char *id) {
  static char state[16];
  srv_err e = {0};
  if (queue_job_state(db, id, state, &e) != 0) return "?";
  return state;
}

static cJSON *test_complete(db_conn *db, const queue_cfg *cfg, const char *id, int64_t attempt,
                            int ok, int retryable, srv_err *e) {
  cJSON *result = cJSON_Parse("{\"rows\":3}");
  cJSON *job = queue_complete(db, cfg, id, attempt, ok, result, ok ? NULL : "boom", retryable, e);
  cJSON_Delete(result);
  return job;
}

TEST_CASE(queue_claim_complete_succeeds) {
  db_conn *db = test_db();
  REQUIRE(db);
  queue_cfg cfg = queue_cfg_default();
  char id[UTIL_ID_LEN], got[UTIL_ID_LEN];
  test_submit(db, 0, 3, "inspect", id);
  CHECK(strcmp(test_state(db, id), "queued") == 0);
  int64_t attempt = test_claim(db, &cfg, NULL, got);
  CHECK(attempt == 1);
  CHECK(strcmp(got, id) == 0);
  CHECK(strcmp(test_state(db, id), "running") == 0);
  char none[UTIL_ID_LEN];
  CHECK(test_claim(db, &cfg, NULL, none) == 0); /* nothing else queued */
  srv_err e = {0};
  cJSON *job = test_complete(db, &cfg, id, attempt, 1, 0, &e);
  REQUIRE(job);
  CHECK(strcmp(util_json_str(job, "state"), "succeeded") == 0);
  CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(job, "result"), "rows")->valueint == 3);
  CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(job, "progress"), "fraction")->valuedouble == 1);
  /* Regression: a job that never reported progress still has the whole progress object. */
  CHECK(cJSON_IsNull(cJSON_GetObjectItem(cJSON_GetObjectItem(job, "progress"), "message")));
  CHECK(cJSON_IsNull(cJSON_GetObjectItem(cJSON_GetObjectItem(job, "progress"), "eta_s")));
  CHECK(cJSON_IsString(cJSON_GetObjectItem(job, "finished_at")));
  cJSON_Delete(job);
  /* A second completion of the same attempt is stale. */
  job = test_complete(db, &cfg, id, attempt, 1, 0, &e);
  CHECK(!job && e.status == 409 && strcmp(e.code, "stale_attempt") == 0);
  db_close(db);
}

TEST_CASE(queue_claims_by_priority_then_age_and_kind) {
  db_conn *db = test_db();
  REQUIRE(db);
  queue_cfg cfg = queue_cfg_default();
  char low[UTIL_ID_LEN], high[UTIL_ID_LEN], high2[UTIL_ID_LEN], train[UTIL_ID_LEN], got[UTIL_ID_LEN];
  test_submit(db, 0, 3, "inspect", low);
  test_submit(db, 5, 3, "inspect", high);
  test_submit(db, 5, 3, "inspect", high2);
  test_submit(db, 9, 3, "train", train);
  test_claim(db, &cfg, "[\"inspect\"]", got);
  CHECK(strcmp(got, high) == 0);
  test_claim(db, &cfg, "[\"inspect\"]", got);
  CHECK(strcmp(got, high2) == 0);
  test_claim(db, &cfg, "[\"inspect\"]", got);
  CHECK(strcmp(got, low) == 0);
  srv_err e = {0};
  cJSON *only_inspect = cJSON_Parse("[\"inspect\"]");
  CHECK(queue_claimable(db, only_inspect, &e) == 0);
  CHECK(queue_claimable(db, NULL, &e) == 1);
  cJSON_Delete(only_inspect);
  CHECK(test_claim(db, &cfg, "[\"inspect\"]", got) == 0); /* the train job is not offered */
  test_claim(db, &cfg, NULL, got);
  CHECK(strcmp(got, train) == 0);
  db_close(db);
}

TEST_CASE(queue_cancel_queued_and_running) {
  db_conn *db = test_db();
  REQUIRE(db);
  queue_cfg cfg = queue_cfg_default();
  char a[UTIL_ID_LEN], b[UTIL_ID_LEN], got[UTIL_ID_LEN];
  test_submit(db, 0, 3, "inspect", a);
  srv_err e = {0};
  cJSON *job = queue_job_cancel(db, a, &e);
  CHECK(job && strcmp(util_json_str(job, "state"), "cancelled") == 0);
  cJSON_Delete(job);
  /* Terminal: a second cancel is refused. */
  job = queue_job_cancel(db, a, &e);
  CHECK(!job && e.status == 409);
  test_submit(db, 0, 3, "inspect", b);
  int64_t attempt = test_claim(db, &cfg, NULL, got);
  REQUIRE(attempt == 1 && strcmp(got, b) == 0);
  memset(&e, 0, sizeof e);
  job = queue_job_cancel(db, b, &e);
  CHECK(job && strcmp(util_json_str(job, "state"), "running") == 0);
  CHECK(job && cJSON_IsTrue(cJSON_GetObjectItem(job, "cancel_requested")));
  cJSON_Delete(job);
  int64_t lease = 0;
  int cancel = 0;
  CHECK(queue_heartbeat(db, &cfg, b, attempt, &lease, &cancel, &e) == 0);
  CHECK(cancel == 1);
  /* The worker stops the child and reports a (retryable) failure: the cancel wins. */
  job = test_complete(db, &cfg, b, attempt, 0, 1, &e);
  CHECK(job && strcmp(util_json_str(job, "state"), "cancelled") == 0);
  cJSON_Delete(job);
  memset(&e, 0, sizeof e);
  job = queue_job_cancel(db, "job_0000000000000000", &e);
  CHECK(!job && e.status == 404);
  db_close(db);
}

TEST_CASE(queue_retryable_failure_backs_off_then_dies) {
  db_conn *db = test_db();
  REQUIRE(db);
  queue_cfg cfg = queue_cfg_default();
  cfg.backoff_base_ms = 60000; /* long enough that the test never waits it out */
  char id[UTIL_ID_LEN], got[UTIL_ID_LEN];
  test_submit(db, 0, 2, "inspect", id);
  int64_t attempt = test_claim(db, &cfg, NULL, got);
  srv_err e = {0};
  cJSON *job = test_complete(db, &cfg, id, attempt, 0, 1, &e);
  REQUIRE(job);
  CHECK(strcmp(util_json_str(job, "state"), "queued") == 0);
  CHECK(cJSON_IsString(cJSON_GetObjectItem(job, "not_before")));
  CHECK(strcmp(util_json_str(job, "error"), "boom") == 0);
  cJSON_Delete(job);
  CHECK(test_claim(db, &cfg, NULL, got) == 0); /* still backing off */
  cfg.backoff_base_ms = 0;
  queue_cfg zero = cfg;
  /* Move the backoff into the past as time would. */
  sqlite3_exec(db->db, "UPDATE jobs SET not_before = 0", NULL, NULL, NULL);
  attempt = test_claim(db, &zero, NULL, got);
  CHECK(attempt == 2 && strcmp(got, id) == 0);
  job = test_complete(db, &cfg, id, attempt, 0, 1, &e);
  CHECK(job && strcmp(util_json_str(job, "state"), "dead") == 0);
  cJSON_Delete(job);
  /* Retry keeps the attempt count and grants one more attempt. */
  job = queue_job_retry(db, id, &e);
  CHECK(job && strcmp(util_json_str(job, "state"), "queued") == 0);
  CHECK(job && cJSON_GetObjectItem(job, "attempt")->valueint == 2);
  CHECK(job && cJSON_GetObjectItem(job, "max_attempts")->valueint == 3);
  cJSON_Delete(job);
  attempt = test_claim(db, &zero, NULL, got);
  CHECK(attempt == 3);
  job = test_complete(db, &cfg, id, attempt, 0, 0, &e);
  CHECK(job && strcmp(util_json_str(job, "state"), "failed") == 0); /* not retryable */
  cJSON_Delete(job);
  memset(&e, 0, sizeof e);
  char queued[UTIL_ID_LEN];
  test_submit(db, 0, 3, "inspect", queued);
  job = queue_job_retry(db, queued, &e);
  CHECK(!job && e.status == 409 && strcmp(e.code, "invalid_state") == 0);
  db_close(db);
}

TEST_CASE(queue_backoff_doubles_and_caps) {
  queue_cfg cfg = {.lease_ms = 1000, .backoff_base_ms = 1000, .backoff_max_ms = 5000};
  CHECK(queue_backoff_ms(&cfg, 1) == 1000);
  CHECK(queue_backoff_ms(&cfg, 2) == 2000);
  CHECK(queue_backoff_ms(&cfg, 3) == 4000);
  CHECK(queue_backoff_ms(&cfg, 4) == 5000);
  CHECK(queue_backoff_ms(&cfg, 60) == 5000);
}

TEST_CASE(reaper_backoff_matches_queue_backoff) {
  db_conn *db = test_db();
  REQUIRE(db);
  queue_cfg cfg = {.lease_ms = 1000, .backoff_base_ms = 1000, .backoff_max_ms = 5000};
  char id[UTIL_ID_LEN], got[UTIL_ID_LEN];
  test_submit(db, 0, 10, "inspect", id);
  for (int attempt = 1; attempt <= 5; attempt++) {
    sqlite3_exec(db->db, "UPDATE jobs SET not_before = 0", NULL, NULL, NULL);
    REQUIRE(test_claim(db, &cfg, NULL, got) == attempt);
    srv_err e = {0};
    int64_t now = util_now_ms() + 10000;
    REQUIRE(queue_reap(db, &cfg, now, &e) == 1);
    sqlite3_stmt *st;
    sqlite3_prepare_v2(db->db, "SELECT not_before FROM jobs", -1, &st, NULL);
    sqlite3_step(st);
    CHECK_MSG(sqlite3_column_int64(st, 0) - now == queue_backoff_ms(&cfg, attempt),
              "attempt %d: reaper delay %lld, queue_backoff_ms %lld", attempt,
              (long long)(sqlite3_column_int64(st, 0) - now), (long long)queue_backoff_ms(&cfg, attempt));
    sqlite3_finalize(st);
  }
  db_close(db);
}

TEST_CASE(lease_expiry_requeues_and_fences_the_old_attempt) {
  db_conn *db = test_db();
  REQUIRE(db);
  queue_cfg cfg = {.lease_ms = 1000, .backoff_base_ms = 0, .backoff_max_ms = 0};
  char id[UTIL_ID_LEN], got[UTIL_ID_LEN];
  test_submit(db, 0, 2, "inspect", id);
  int64_t a1 = test_claim(db, &cfg, NULL, got);
  REQUIRE(a1 == 1);
  srv_err e = {0};
  CHECK(queue_reap(db, &cfg, util_now_ms(), &e) == 0); /* lease still valid */
  CHECK(queue_reap(db, &cfg, util_now_ms() + 5000, &e) == 1);
  CHECK(strcmp(test_state(db, id), "queued") == 0);
  /* The reap ran 5 s "in the future", so its backoff ends then; let that time pass. */
  sqlite3_exec(db->db, "UPDATE jobs SET not_before = 0", NULL, NULL, NULL);
  int64_t a2 = test_claim(db, &cfg, NULL, got);
  CHECK(a2 == 2);
  /* The first worker comes back: every call of attempt 1 is refused. */
  int64_t lease;
  int cancel;
  memset(&e, 0, sizeof e);
  CHECK(queue_heartbeat(db, &cfg, id, a1, &lease, &cancel, &e) != 0 && e.status == 409);
  cJSON *evs = cJSON_Parse("[{\"type\":\"log\",\"message\":\"late\"}]");
  memset(&e, 0, sizeof e);
  CHECK(queue_events_append(db, id, a1, evs, &e) != 0 && e.status == 409);
  memset(&e, 0, sizeof e);
  CHECK(queue_fence(db, id, a1, &e) != 0 && strcmp(e.code, "stale_attempt") == 0);
  memset(&e, 0, sizeof e);
  cJSON *job = test_complete(db, &cfg, id, a1, 1, 0, &e);
  CHECK(!job && e.status == 409);
  /* The current attempt is accepted, and renewing moves the lease. */
  memset(&e, 0, sizeof e);
  CHECK(queue_events_append(db, id, a2, evs, &e) == 0);
  CHECK(queue_heartbeat(db, &cfg, id, a2, &lease, &cancel, &e) == 0 && lease > util_now_ms());
  cJSON_Delete(evs);
  /* Expiring the last allowed attempt ends the job dead. */
  CHECK(queue_reap(db, &cfg, util_now_ms() + 5000, &e) == 1);
  CHECK(strcmp(test_state(db, id), "dead") == 0);
  db_close(db);
}

TEST_CASE(queue_events_validated_all_or_nothing) {
  db_conn *db = test_db();
  REQUIRE(db);
  queue_cfg cfg = queue_cfg_default();
  char id[UTIL_ID_LEN], got[UTIL_ID_LEN];
  test_submit(db, 0, 3, "inspect", id);
  int64_t a = test_claim(db, &cfg, NULL, got);
  srv_err e = {0};
  cJSON *bad = cJSON_Parse("[{\"type\":\"log\",\"message\":\"x\"},"
                           "{\"type\":\"metric\",\"key\":\"train.loss\",\"step\":1.5,\"value\":1}]");
  CHECK(queue_events_append(db, id, a, bad, &e) != 0);
  CHECK(e.status == 400 && strcmp(e.path, "$.events[1].step") == 0);
  cJSON_Delete(bad);
  cJSON *none = queue_events_after(db, id, 2, 100, &e); /* 1: queued, 2: running */
  CHECK(none && cJSON_GetArraySize(none) == 0);
  cJSON_Delete(none);
  cJSON *good = cJSON_Parse("[{\"type\":\"progress\",\"fraction\":0.25,\"message\":\"epoch 1\"},"
                            "{\"type\":\"metric\",\"key\":\"train.loss\",\"step\":1,\"value\":2}]");
  memset(&e, 0, sizeof e);
  CHECK(queue_events_append(db, id, a, good, &e) == 0);
  cJSON_Delete(good);
  cJSON *job = queue_job_get(db, id, &e);
  CHECK(job && cJSON_GetObjectItem(cJSON_GetObjectItem(job, "progress"), "fraction")->valuedouble == 0.25);
  cJSON_Delete(job);
  cJSON *evs = queue_events_after(db, id, 2, 100, &e);
  /* the progress and the metric: metrics go to their series and to the log live charts follow */
  CHECK(evs && cJSON_GetArraySize(evs) == 2);
  cJSON_Delete(evs);
  cJSON *series = queue_metrics(db, id, "train.loss", 100, &e);
  char *text = series ? cJSON_PrintUnformatted(series) : NULL;
  CHECK(text && strstr(text, "\"value\":2") != NULL);
  free(text);
  cJSON_Delete(series);
  db_close(db);
}

TEST_CASE(queue_idempotency_key_replays_or_conflicts) {
  db_conn *db = test_db();
  REQUIRE(db);
  srv_err e = {0};
  int existed = 0;
  queue_create_req req = {.kind = "inspect", .spec_json = "{}", .max_attempts = 3,
                          .idempotency_key = "k1", .request_hash = "h1", .owner = "tok_a"};
  cJSON *a = queue_job_create(db, &req, &existed, &e);
  CHECK(a && !existed);
  cJSON *b = queue_job_create(db, &req, &existed, &e);
  CHECK(b && existed && strcmp(util_json_str(a, "id"), util_json_str(b, "id")) == 0);
  req.request_hash = "h2";
  cJSON *c = queue_job_create(db, &req, &existed, &e);
  CHECK(!c && e.status == 409 && strcmp(e.code, "idempotency_conflict") == 0);
  /* Keys are per token. */
  memset(&e, 0, sizeof e);
  req.owner = "tok_b";
  cJSON *d = queue_job_create(db, &req, &existed, &e);
  CHECK(d && !existed && strcmp(util_json_str(a, "id"), util_json_str(d, "id")) != 0);
  cJSON_Delete(a);
  cJSON_Delete(b);
  cJSON_Delete(d);
  db_close(db);
}

TEST_CASE(queue_list_pages_with_filters) {
  db_conn *db = test_db();
  REQUIRE(db);
  char ids[5][UTIL_ID_LEN];
  for (int i = 0; i < 5; i++) test_submit(db, 0, 3, i % 2 ? "train" : "inspect", ids[i]);
  srv_err e = {0};
  cJSON *p1 = queue_job_list(db, NULL, NULL, 2, NULL, &e);
  REQUIRE(p1);
  cJSON *items = cJSON_GetObjectItem(p1, "items");
  CHECK(cJSON_GetArraySize(items) == 2);
  CHECK(strcmp(util_json_str(cJSON_GetArrayItem(items, 0), "id"), ids[4]) == 0); /* newest first */
  const char *tok = util_json_str(p1, "next_page_token");
  REQUIRE(tok);
  cJSON *p2 = queue_job_list(db, NULL, NULL, 2, tok, &e);
  CHECK(p2 && strcmp(util_json_str(cJSON_GetArrayItem(cJSON_GetObjectItem(p2, "items"), 0), "id"),
                     ids[2]) == 0);
  cJSON *k = queue_job_list(db, "queued", "train", 50, NULL, &e);
  CHECK(k && cJSON_GetArraySize(cJSON_GetObjectItem(k, "items")) == 2);
  CHECK(k && cJSON_IsNull(cJSON_GetObjectItem(k, "next_page_token")));
  cJSON *bad = queue_job_list(db, NULL, NULL, 2, "p../../etc", &e);
  CHECK(!bad && e.status == 400);
  cJSON_Delete(p1);
  cJSON_Delete(p2);
  cJSON_Delete(k);
  db_close(db);
}

TEST_CASE(auth_tokens_hash_lookup_revoke) {
  db_conn *db = test_db();
  REQUIRE(db);
  srv_err e = {0};
  auth_token t, got;
  char secret[AUTH_SECRET_LEN];
  REQUIRE(auth_token_create(db, "submit", "ci", &t, secret, &e) == 0);
  CHECK(strncmp(secret, "lathe_", 6) == 0 && strlen(secret) == 49);
  CHECK(util_id_valid(t.id, "tok_"));
  CHECK(auth_token_lookup(db, secret, &got, &e) == 0);
  CHECK(strcmp(got.id, t.id) == 0 && got.scope == AUTH_SCOPE_SUBMIT);
  /* The secret itself is not stored. */
  sqlite3_stmt *st;
  sqlite3_prepare_v2(db->db, "SELECT count(*) FROM tokens WHERE hash = ?1 OR name = ?1", -1, &st, NULL);
  sqlite3_bind_text(st, 1, secret, -1, SQLITE_STATIC);
  sqlite3_step(st);
  CHECK(sqlite3_column_int(st, 0) == 0);
  sqlite3_finalize(st);
  char wrong[AUTH_SECRET_LEN];
  memcpy(wrong, secret, sizeof wrong);
  wrong[10] = wrong[10] == 'A' ? 'B' : 'A';
  memset(&e, 0, sizeof e);
  CHECK(auth_token_lookup(db, wrong, &got, &e) != 0 && e.status == 401);
  CHECK(auth_token_lookup(db, "", &got, &e) != 0 && e.status == 401);
  CHECK(auth_token_lookup(db, "lathe_short", &got, &e) != 0 && e.status == 401);
  CHECK(auth_token_create(db, "root", "x", &t, secret, &e) != 0 && e.status == 400);
  auth_token rev;
  char s2[AUTH_SECRET_LEN];
  REQUIRE(auth_token_create(db, "read", "r", &t, s2, &e) == 0);
  CHECK(auth_token_revoke(db, t.id, &rev, &e) == 0 && rev.revoked_at > 0);
  memset(&e, 0, sizeof e);
  CHECK(auth_token_lookup(db, s2, &got, &e) != 0 && e.status == 401);
  CHECK(auth_token_revoke(db, "tok_0000000000000000", &rev, &e) != 0 && e.status == 404);
  db_close(db);
}

TEST_CASE(auth_scopes_follow_the_contract) {
  /* read: GET everything but tokens; submit: + uploads and job control; worker: the worker
   * routes and GET of files and jobs; admin: everything. */
  CHECK(auth_scope_allows(AUTH_SCOPE_READ, AUTH_NEED_READ));
  CHECK(auth_scope_allows(AUTH_SCOPE_READ, AUTH_NEED_WORKER_READ));
  CHECK(!auth_scope_allows(AUTH_SCOPE_READ, AUTH_NEED_SUBMIT));
  CHECK(!auth_scope_allows(AUTH_SCOPE_READ, AUTH_NEED_WORKER));
  CHECK(!auth_scope_allows(AUTH_SCOPE_READ, AUTH_NEED_ADMIN));
  CHECK(auth_scope_allows(AUTH_SCOPE_SUBMIT, AUTH_NEED_SUBMIT));
  CHECK(auth_scope_allows(AUTH_SCOPE_SUBMIT, AUTH_NEED_READ));
  CHECK(!auth_scope_allows(AUTH_SCOPE_SUBMIT, AUTH_NEED_WORKER));
  CHECK(!auth_scope_allows(AUTH_SCOPE_SUBMIT, AUTH_NEED_ADMIN));
  CHECK(auth_scope_allows(AUTH_SCOPE_WORKER, AUTH_NEED_WORKER));
  CHECK(auth_scope_allows(AUTH_SCOPE_WORKER, AUTH_NEED_WORKER_READ));
  CHECK(!auth_scope_allows(AUTH_SCOPE_WORKER, AUTH_NEED_READ));
  CHECK(!auth_scope_allows(AUTH_SCOPE_WORKER, AUTH_NEED_SUBMIT));
  CHECK(!auth_scope_allows(AUTH_SCOPE_WORKER, AUTH_NEED_ADMIN));
  for (int n = AUTH_NEED_NONE; n <= AUTH_NEED_ADMIN; n++) CHECK(auth_scope_allows(AUTH_SCOPE_ADMIN, n));
  CHECK(!auth_scope_allows(AUTH_SCOPE_NONE, AUTH_NEED_READ));
  CHECK(auth_scope_parse("admin") == AUTH_SCOPE_ADMIN && auth_scope_parse("Admin") == AUTH_SCOPE_NONE);
}

TEST_CASE(series_downsample_keeps_min_max_last) {
  enum { N = 1000 };
  series_point in[N], out[N];
  for (int i = 0; i < N; i++) in[i] = (series_point){.step = i, .value = (double)(i % 10), .time_ms = i};
  in[123].value = 1e6;  /* a spike */
  in[777].value = -1e6; /* a dip */
  size_t n = series_downsample(in, N, 30, out);
  CHECK(n <= 30 && n >= 10);
  int spike = 0, dip = 0;
  for (size_t i = 0; i < n; i++) {
    spike |= out[i].value == 1e6;
    dip |= out[i].value == -1e6;
    if (i) CHECK(out[i].step > out[i - 1].step); /* step order, no repeats */
  }
  CHECK(spike && dip);
  CHECK(out[n - 1].step == N - 1); /* the last point survives */
  /* Short series pass through unchanged. */
  CHECK(series_downsample(in, 20, 30, out) == 20 && out[19].step == 19);
  /* Even max_points below 3 keeps one bucket of min, max, last. */
  CHECK(series_downsample(in, N, 1, out) <= 3);
}

TEST_CASE(queue_metrics_downsampled_per_key) {
  db_conn *db = test_db();
  REQUIRE(db);
  queue_cfg cfg = queue_cfg_default();
  char id[UTIL_ID_LEN], got[UTIL_ID_LEN];
  test_submit(db, 0, 3, "inspect", id);
  int64_t a = test_claim(db, &cfg, NULL, got);
  cJSON *evs = cJSON_CreateArray();
  for (int i = 0; i < 600; i++) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "type", "metric");
    cJSON_AddStringToObject(m, "key", i % 2 ? "val.loss" : "train.loss");
    cJSON_AddNumberToObject(m, "step", i);
    cJSON_AddNumberToObject(m, "value", i == 300 ? 99.0 : 1.0);
    cJSON_AddItemToArray(evs, m);
  }
  srv_err e = {0};
  REQUIRE(queue_events_append(db, id, a, evs, &e) == 0);
  cJSON_Delete(evs);
  cJSON *m = queue_metrics(db, id, "train.loss", 30, &e);
  REQUIRE(m);
  cJSON *series = cJSON_GetObjectItem(m, "series");
  CHECK(cJSON_GetArraySize(series) == 1);
  cJSON *s0 = cJSON_GetArrayItem(series, 0);
  CHECK(cJSON_GetObjectItem(s0, "total")->valueint == 300);
  cJSON *pts = cJSON_GetObjectItem(s0, "points");
  CHECK(cJSON_GetArraySize(pts) <= 30);
  int spike = 0;
  cJSON *p;
  cJSON_ArrayForEach(p, pts) spike |= cJSON_GetObjectItem(p, "value")->valuedouble == 99.0;
  CHECK(spike);
  cJSON_Delete(m);
  m = queue_metrics(db, id, NULL, 1000, &e);
  CHECK(m && cJSON_GetArraySize(cJSON_GetObjectItem(m, "series")) == 2);
  cJSON_Delete(m);
  db_close(db);
}

TEST_CASE(util_ids_times_tokens_depth) {
  char id[UTIL_ID_LEN];
  REQUIRE(util_id_new("job_", id) == 0);
  CHECK(strlen(id) == 20 && util_id_valid(id, "job_"));
  CHECK(!util_id_valid(id, "mdl_"));
  CHECK(!util_id_valid("job_0123456789ABCDEF", "job_")); /* uppercase */
  CHECK(!util_id_valid("job_0123456789abcde", "job_"));  /* short */
  CHECK(!util_id_valid("job_0123456789abcdef0", "job_"));
  CHECK(!util_id_valid("job_../../etc/passwd", "job_"));
  char t[32];
  util_time_format(0, t);
  CHECK(strcmp(t, "1970-01-01T00:00:00.000Z") == 0);
  util_time_format(1795651200123LL, t);
  CHECK(strcmp(t, "2026-11-26T00:00:00.123Z") == 0);
  char tok[40];
  int64_t seq = 0;
  util_page_token_encode(12345, tok);
  CHECK(util_page_token_decode(tok, &seq) == 0 && seq == 12345);
  tok[5] = tok[5] == 'a' ? 'b' : 'a';
  CHECK(util_page_token_decode(tok, &seq) != 0 || seq != 12345);
  CHECK(util_page_token_decode("12345", &seq) != 0);
  CHECK(util_page_token_decode("pZZZZZZZZZZZZZZZZ", &seq) != 0);
  CHECK(util_json_depth("{\"a\":[1,{\"b\":\"[[[[\"}]}", 22) == 3);
  char deep[200];
  memset(deep, '[', 100);
  memset(deep + 100, ']', 100);
  CHECK(util_json_depth(deep, 200) == 100);
  int64_t v;
  CHECK(util_parse_i64("42", 0, 100, &v) == 0 && v == 42);
  CHECK(util_parse_i64("42x", 0, 100, &v) != 0);
  CHECK(util_parse_i64("101", 0, 100, &v) != 0);
  CHECK(util_parse_i64("", 0, 100, &v) != 0);
}

int main(void) {
  RUN(queue_claim_complete_succeeds);
  RUN(queue_claims_by_priority_then_age_and_kind);
  RUN(queue_cancel_queued_and_running);
  RUN(queue_retryable_failure_backs_off_then_dies);
  RUN(queue_backoff_doubles_and_caps);
  RUN(reaper_backoff_matches_queue_backoff);
  RUN(lease_expiry_requeues_and_fences_the_old_attempt);
  RUN(queue_events_validated_all_or_nothing);
  RUN(queue_idempotency_key_replays_or_conflicts);
  RUN(queue_list_pages_with_filters);
  RUN(auth_tokens_hash_lookup_revoke);
  RUN(auth_scopes_follow_the_contract);
  RUN(series_downsample_keeps_min_max_last);
  RUN(queue_metrics_downsampled_per_key);
  RUN(util_ids_times_tokens_depth);
  return test_summary();
}
