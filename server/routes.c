/* server/routes.c — the REST API of schema/openapi.json: one handler per route, and the route
 * table that http.c dispatches on. Handlers validate input, call queue/store/auth, and answer. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "embed.h"
#include "http.h"
#include "spec.h"

#define ROUTES_WAIT_MAX_S 30      /* claim and events long polls */
#define ROUTES_SSE_KEEPALIVE_MS 15000

/* ---- input helpers ----------------------------------------------------------------------- */

/* Refuses fields outside allowed (NULL-terminated), naming the first one's path. */
static int routes_fields_check(const cJSON *obj, const char *const *allowed, srv_err *e) {
  const cJSON *f;
  cJSON_ArrayForEach(f, obj) {
    int ok = 0;
    for (const char *const *a = allowed; *a && !ok; a++) ok = strcmp(f->string, *a) == 0;
    if (!ok) {
      char path[160];
      snprintf(path, sizeof path, "$.%.64s", f->string);
      return srv_err_set_path(e, 400, "unknown_field", path, "unknown field \"%.64s\"", f->string);
    }
  }
  return 0;
}

/* An integer field: absent -> def; else must be an integer in [lo, hi]. */
static int routes_json_int(const cJSON *obj, const char *key, int64_t lo, int64_t hi, int64_t def,
                           int64_t *out, srv_err *e) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v) {
    *out = def;
    return 0;
  }
  char path[80];
  snprintf(path, sizeof path, "$.%s", key);
  if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < (double)lo ||
      v->valuedouble > (double)hi)
    return srv_err_set_path(e, 400, "invalid_field", path, "%s must be an integer in [%lld, %lld]",
                            key, (long long)lo, (long long)hi);
  *out = (int64_t)v->valuedouble;
  return 0;
}

/* A required string field of 1..max_len bytes. */
static const char *routes_json_string(const cJSON *obj, const char *key, size_t max_len,
                                      srv_err *e) {
  const char *s = util_json_str(obj, key);
  if (!s || !*s || strlen(s) > max_len) {
    char path[80];
    snprintf(path, sizeof path, "$.%s", key);
    srv_err_set_path(e, 400, "invalid_field", path, "%s must be a string of 1–%zu bytes", key,
                     max_len);
    return NULL;
  }
  return s;
}

/* ?limit= in [1, HTTP_PAGE_MAX], default 50. */
static int routes_page_limit(http_req *r, int *limit, srv_err *e) {
  const char *s = http_req_arg(r, "limit");
  int64_t v = 50;
  if (s && util_parse_i64(s, 1, HTTP_PAGE_MAX, &v) != 0)
    return srv_err_set(e, 400, "invalid_parameter", "limit must be an integer in [1, %d]",
                       HTTP_PAGE_MAX);
  *limit = (int)v;
  return 0;
}

/* 1 when s is a safe file name: 1–200 bytes of [A-Za-z0-9._ -+], not starting with '.'. */
static int routes_file_name_ok(const char *s) {
  size_t n = s ? strlen(s) : 0;
  if (n == 0 || n > 200 || s[0] == '.') return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '.' || c == '_' || c == '-' || c == ' ' || c == '+'))
      return 0;
  }
  return 1;
}

static void routes_respond_result(http_req *r, int status, cJSON *obj, const srv_err *e) {
  if (obj) http_respond_json(r, status, obj);
  else http_respond_error(r, e);
}

/* ---- meta -------------------------------------------------------------------------------- */

static void route_healthz(http_req *r) {
  srv_err e = {0};
  sqlite3_stmt *st = db_stmt(http_req_db(r), "SELECT 1", &e);
  int ok = st && sqlite3_step(st) == SQLITE_ROW;
  if (st) sqlite3_reset(st);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "status", ok ? "ok" : "database_unavailable");
  cJSON_AddNumberToObject(o, "schema_version", db_schema_version());
  http_respond_json(r, ok ? 200 : 503, o);
}

static void route_metrics(http_req *r) {
  char *text = server_metrics_text(r->srv, http_req_db(r));
  if (!text) {
    http_respond_errorf(r, 500, "internal", "out of memory");
    return;
  }
  http_respond_text(r, 200, "text/plain; version=0.0.4", text, strlen(text));
  free(text);
}

static void route_openapi(http_req *r) {
  struct MHD_Response *resp = MHD_create_response_from_buffer(
      strlen(embed_openapi_json), (void *)embed_openapi_json, MHD_RESPMEM_PERSISTENT);
  if (!resp) return;
  http_response_add_common(resp, "application/json");
  http_respond_response(r, 200, resp);
}

static void route_schema_kind(http_req *r) {
  const char *text = spec_schema_text(r->params[0]);
  if (!text) {
    http_respond_errorf(r, 404, "not_found", "no job kind %s", r->params[0]);
    return;
  }
  struct MHD_Response *resp =
      MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
  if (!resp) return;
  http_response_add_common(resp, "application/schema+json");
  http_respond_response(r, 200, resp);
}

/* The job kinds this server accepts (what the UI offers in its new-job form). */
static void route_schema_kinds(http_req *r) {
  cJSON *out = cJSON_CreateObject(), *kinds = cJSON_AddArrayToObject(out, "kinds");
  for (const char *const *k = spec_kinds(); *k; k++) cJSON_AddItemToArray(kinds, cJSON_CreateString(*k));
  http_respond_json(r, 200, out);
}

/* ---- models and datasets ----------------------------------------------------------------- */

/* The file kind a route serves, from its pattern. */
static const char *routes_file_kind(const http_req *r) {
  if (strncmp(r->rt->pattern, "/api/v1/models", 14) == 0) return "model";
  if (strncmp(r->rt->pattern, "/api/v1/datasets", 16) == 0) return "dataset";
  return "artifact";
}

static int route_upload_precheck(http_req *r, srv_err *e) {
  if (!routes_file_name_ok(http_req_arg(r, "name")))
    return srv_err_set(e, 400, "invalid_name",
                       "name= is required: 1–200 characters of letters, digits, '.', '_', '-', "
                       "'+', space, not starting with '.'");
  return 0;
}

static void route_upload(http_req *r) {
  srv_err e = {0};
  const char *kind = routes_file_kind(r);
  if (store_upload_size(r->upload) == 0) {
    http_respond_errorf(r, 400, "empty_upload", "the upload is empty; send the file as the body");
    return;
  }
  cJSON *summary = store_upload_inspect(&r->srv->files, r->upload, kind, &e);
  if (!summary) {
    http_respond_error(r, &e);
    return;
  }
  /* The inspector saw the temp file's name; the object carries the client's. */
  if (cJSON_GetObjectItemCaseSensitive(summary, "file"))
    cJSON_ReplaceItemInObjectCaseSensitive(summary, "file", cJSON_CreateString(http_req_arg(r, "name")));
  store_meta meta = {.kind = kind, .name = http_req_arg(r, "name"), .owner = r->tok.id};
  cJSON *f = store_upload_commit(&r->srv->files, http_req_db(r), r->upload, &meta, summary, &e);
  cJSON_Delete(summary);
  routes_respond_result(r, 201, f, &e);
}

static void route_file_list(http_req *r) {
  srv_err e = {0};
  int limit;
  if (routes_page_limit(r, &limit, &e) != 0) {
    http_respond_error(r, &e);
    return;
  }
  cJSON *out = store_file_list(http_req_db(r), routes_file_kind(r), NULL, limit,
                               http_req_arg(r, "page_token"), &e);
  routes_respond_result(r, 200, out, &e);
}

static void route_file_get(http_req *r) {
  srv_err e = {0};
  cJSON *f = store_file_get(http_req_db(r), routes_file_kind(r), r->params[0], NULL, &e);
  routes_respond_result(r, 200, f, &e);
}

static void route_file_content(http_req *r) {
  srv_err e = {0};
  char sha[65];
  cJSON *f = store_file_get(http_req_db(r), routes_file_kind(r), r->params[0], sha, &e);
  if (!f) {
    http_respond_error(r, &e);
    return;
  }
  char path[1300];
  store_blob_path(&r->srv->files, sha, path, sizeof path);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat sb;
  if (fd < 0 || fstat(fd, &sb) != 0) {
    if (fd >= 0) close(fd);
    cJSON_Delete(f);
    http_respond_errorf(r, 500, "internal", "the stored blob %s is missing", sha);
    return;
  }
  const char *inm = http_req_header(r, "If-None-Match");
  char etag[72];
  snprintf(etag, sizeof etag, "\"%s\"", sha);
  if (inm && strcmp(inm, etag) == 0) {
    close(fd);
    cJSON_Delete(f);
    http_respond_empty(r, 304);
    return;
  }
  http_respond_blob(r, fd, sb.st_size, sha, util_json_str(f, "name"));
  cJSON_Delete(f);
}

static void route_file_delete(http_req *r) {
  srv_err e = {0};
  /* submit tokens delete their own uploads; admin tokens any. */
  const char *owner = r->tok.scope == AUTH_SCOPE_ADMIN ? NULL : r->tok.id;
  if (store_file_delete(&r->srv->files, http_req_db(r), routes_file_kind(r), r->params[0], owner,
                        &e) != 0)
    http_respond_error(r, &e);
  else
    http_respond_empty(r, 204);
}

/* ---- jobs -------------------------------------------------------------------------------- */

typedef struct routes_ref_check {
  db_conn *db;
  srv_err *e;
} routes_ref_check;

static int routes_check_file_ref(void *user, const char *file_kind, const char *ref,
                                 const char *path) {
  routes_ref_check *c = user;
  const char *prefix = strcmp(file_kind, "model") == 0 ? "mdl_" : "ds_";
  if (!util_id_valid(ref, prefix))
    return srv_err_set_path(c->e, 400, "invalid_file_ref", path,
                            "%s must name an uploaded %s by id (%s…); upload it first", path,
                            file_kind, prefix);
  int found = store_file_exists(c->db, file_kind, ref, c->e);
  if (found < 0) return -1;
  if (!found)
    return srv_err_set_path(c->e, 404, "file_not_found", path, "no %s %s (at %s)", file_kind, ref,
                            path);
  return 0;
}

static void route_job_create(http_req *r) {
  static const char *const fields[] = {"kind", "spec", "priority", "max_attempts", NULL};
  srv_err e = {0};
  cJSON *body = r->json;
  int64_t priority, max_attempts;
  const char *kind = NULL;
  cJSON *spec = cJSON_GetObjectItemCaseSensitive(body, "spec");
  spec_fault fault;
  if (routes_fields_check(body, fields, &e) != 0 ||
      !(kind = routes_json_string(body, "kind", 32, &e)) ||
      routes_json_int(body, "priority", -1000, 1000, 0, &priority, &e) != 0 ||
      routes_json_int(body, "max_attempts", 1, 20, 3, &max_attempts, &e) != 0) {
    http_respond_error(r, &e);
    return;
  }
  const char *key = http_req_header(r, "Idempotency-Key");
  if (key && (!*key || strlen(key) > 128)) {
    http_respond_errorf(r, 400, "invalid_idempotency_key", "Idempotency-Key must be 1–128 bytes");
    return;
  }
  if (!spec_schema_text(kind)) {
    char kinds[256] = "";
    for (const char *const *k = spec_kinds(); *k; k++)
      snprintf(kinds + strlen(kinds), sizeof kinds - strlen(kinds), "%s%s", kinds[0] ? ", " : "", *k);
    srv_err_set_path(&e, 400, "unknown_kind", "$.kind", "unknown job kind \"%.32s\"; one of: %s",
                     kind, kinds);
    http_respond_error(r, &e);
    return;
  }
  if (!cJSON_IsObject(spec)) {
    srv_err_set_path(&e, 400, "invalid_field", "$.spec", "spec must be an object");
    http_respond_error(r, &e);
    return;
  }
  /* The request hash is taken before defaults are filled, so a replay hashes the same. */
  char *canonical = cJSON_PrintUnformatted(body);
  char hash[65] = "";
  if (canonical) util_sha256_hex(canonical, strlen(canonical), hash);
  free(canonical);
  if (spec_validate(kind, spec, &fault) != 0) {
    srv_err_set_path(&e, 400, "invalid_spec", fault.path, "%s", fault.message);
    http_respond_error(r, &e);
    return;
  }
  routes_ref_check check = {http_req_db(r), &e};
  if (spec_file_refs(kind, spec, routes_check_file_ref, &check) != 0) {
    if (!e.status) srv_err_set_path(&e, 400, "invalid_spec", "$.spec", "a file reference is invalid");
    http_respond_error(r, &e);
    return;
  }
  char *spec_text = cJSON_PrintUnformatted(spec);
  queue_create_req req = {.kind = kind, .spec_json = spec_text, .priority = (int)priority,
                          .max_attempts = (int)max_attempts, .idempotency_key = key,
                          .request_hash = hash, .owner = r->tok.id};
  int existed = 0;
  cJSON *job = spec_text ? queue_job_create(http_req_db(r), &req, &existed, &e) : NULL;
  free(spec_text);
  if (!job && !e.status) srv_err_set(&e, 500, "internal", "out of memory");
  routes_respond_result(r, existed ? 200 : 201, job, &e);
}

static int routes_state_valid(const char *s) {
  static const char *const states[] = {"queued", "running", "succeeded", "failed", "cancelled",
                                       "dead", NULL};
  for (const char *const *p = states; *p; p++)
    if (strcmp(s, *p) == 0) return 1;
  return 0;
}

static void route_job_list(http_req *r) {
  srv_err e = {0};
  int limit;
  const char *state = http_req_arg(r, "state"), *kind = http_req_arg(r, "kind");
  if (routes_page_limit(r, &limit, &e) != 0) {
    http_respond_error(r, &e);
    return;
  }
  if (state && !routes_state_valid(state)) {
    http_respond_errorf(r, 400, "invalid_parameter",
                        "state must be queued, running, succeeded, failed, cancelled or dead");
    return;
  }
  if (kind && strlen(kind) > 32) {
    http_respond_errorf(r, 400, "invalid_parameter", "kind is at most 32 characters");
    return;
  }
  cJSON *out = queue_job_list(http_req_db(r), state, kind, limit, http_req_arg(r, "page_token"), &e);
  routes_respond_result(r, 200, out, &e);
}

static void route_job_get(http_req *r) {
  srv_err e = {0};
  cJSON *job = queue_job_get(http_req_db(r), r->params[0], &e);
  routes_respond_result(r, 200, job, &e);
}

static void route_job_cancel(http_req *r) {
  srv_err e = {0};
  cJSON *job = queue_job_cancel(http_req_db(r), r->params[0], &e);
  routes_respond_result(r, 200, job, &e);
}

static void route_job_retry(http_req *r) {
  srv_err e = {0};
  cJSON *job = queue_job_retry(http_req_db(r), r->params[0], &e);
  routes_respond_result(r, 200, job, &e);
}

static void route_job_metrics(http_req *r) {
  srv_err e = {0};
  const char *key = http_req_arg(r, "key");
  const char *mp = http_req_arg(r, "max_points");
  int64_t max_points = 1000;
  if (mp && util_parse_i64(mp, 3, 100000, &max_points) != 0) {
    http_respond_errorf(r, 400, "invalid_parameter", "max_points must be an integer in [3, 100000]");
    return;
  }
  if (key && (!*key || strlen(key) > 128)) {
    http_respond_errorf(r, 400, "invalid_parameter", "key must be 1–128 characters");
    return;
  }
  cJSON *out = queue_metrics(http_req_db(r), r->params[0], key, (size_t)max_points, &e);
  routes_respond_result(r, 200, out, &e);
}

/* SSE stream state: the reader callback runs on the connection's own thread. */
typedef struct routes_sse {
  server *srv;
  char job[UTIL_ID_LEN]; /* empty: the change feed of every job (GET /api/v1/changes) */
  int64_t last_id;   /* last event id sent */
  char *pend;        /* formatted bytes not yet handed to MHD, owned */
  size_t pend_len, pend_off;
  int ended;         /* the job is terminal and every event was sent */
} routes_sse;

static void routes_sse_free(void *cls) {
  routes_sse *s = cls;
  free(s->pend);
  free(s);
}

/* Formats the next batch of events into s->pend. 1 = some, 0 = none, -1 = error. */
static int routes_sse_fill(routes_sse *s) {
  db_conn *db = db_pool_acquire(s->srv->pool);
  srv_err e = {0};
  int feed = s->job[0] == '\0';
  cJSON *events = feed ? queue_changes_after(db, s->last_id, 100, &e)
                       : queue_events_after(db, s->job, s->last_id, 100, &e);
  char state[16] = "running"; /* the feed never ends */
  int have_state = feed || queue_job_state(db, s->job, state, &e) == 0;
  db_pool_release(s->srv->pool, db);
  if (!events || !have_state) {
    cJSON_Delete(events);
    return -1;
  }
  int n = cJSON_GetArraySize(events);
  if (n == 0) {
    cJSON_Delete(events);
    if (queue_state_terminal(state)) s->ended = 1;
    return 0;
  }
  free(s->pend);
  s->pend = NULL;
  s->pend_len = s->pend_off = 0;
  size_t cap = 0;
  const cJSON *ev;
  cJSON_ArrayForEach(ev, events) {
    /* A change-feed row is {"id", "job"}: sent as event "job" with data {"job": ...}. */
    cJSON *data_obj = feed ? cJSON_CreateObject() : NULL;
    if (feed) cJSON_AddItemReferenceToObject(data_obj, "job", cJSON_GetObjectItem(ev, "job"));
    char *data = cJSON_PrintUnformatted(feed ? data_obj : cJSON_GetObjectItem(ev, "data"));
    cJSON_Delete(data_obj);
    const char *type = feed ? "job" : util_json_str(ev, "type");
    int64_t id = (int64_t)cJSON_GetObjectItem(ev, "id")->valuedouble;
    size_t need = (data ? strlen(data) : 4) + strlen(type ? type : "") + 64;
    if (s->pend_len + need > cap) {
      cap = (s->pend_len + need) * 2;
      char *grown = realloc(s->pend, cap);
      if (!grown) {
        free(data);
        break;
      }
      s->pend = grown;
    }
    s->pend_len += (size_t)snprintf(s->pend + s->pend_len, cap - s->pend_len,
                                    "id: %lld\nevent: %s\ndata: %s\n\n", (long long)id,
                                    type ? type : "message", data ? data : "null");
    s->last_id = id;
    free(data);
  }
  cJSON_Delete(events);
  return s->pend_len > 0;
}

static ssize_t routes_sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
  routes_sse *s = cls;
  (void)pos;
  for (;;) {
    if (s->pend_off < s->pend_len) {
      size_t n = s->pend_len - s->pend_off;
      if (n > max) n = max;
      memcpy(buf, s->pend + s->pend_off, n);
      s->pend_off += n;
      return (ssize_t)n;
    }
    if (s->ended) return MHD_CONTENT_READER_END_OF_STREAM;
    uint64_t gen = queue_notify_gen();
    int got = routes_sse_fill(s);
    if (got < 0) return MHD_CONTENT_READER_END_WITH_ERROR;
    if (got > 0 || s->ended) continue;
    int w = queue_notify_wait(gen, util_now_ms() + ROUTES_SSE_KEEPALIVE_MS);
    if (w < 0) return MHD_CONTENT_READER_END_OF_STREAM; /* shutting down */
    if (w == 0) {
      static const char keepalive[] = ": keepalive\n\n";
      if (max < sizeof keepalive - 1) continue;
      memcpy(buf, keepalive, sizeof keepalive - 1);
      return (ssize_t)(sizeof keepalive - 1);
    }
  }
}

/* Answers with an SSE stream of job's events (job "" = the change feed) after event id `after`. */
static void routes_sse_start(http_req *r, const char *job, int64_t after) {
  routes_sse *s = calloc(1, sizeof *s);
  if (!s) {
    http_respond_errorf(r, 500, "internal", "out of memory");
    return;
  }
  s->srv = r->srv;
  snprintf(s->job, sizeof s->job, "%.*s", UTIL_ID_LEN - 1, job);
  s->last_id = after;
  struct MHD_Response *resp =
      MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, routes_sse_read, s, routes_sse_free);
  if (!resp) {
    routes_sse_free(s);
    return;
  }
  http_response_add_common(resp, "text/event-stream");
  MHD_add_response_header(resp, "Cache-Control", "no-store");
  MHD_add_response_header(resp, "X-Accel-Buffering", "no");
  http_respond_response(r, 200, resp);
}

static void route_job_events(http_req *r) {
  srv_err e = {0};
  char state[16];
  if (queue_job_state(http_req_db(r), r->params[0], state, &e) != 0) {
    http_respond_error(r, &e);
    return;
  }
  const char *after_s = http_req_arg(r, "after"), *wait_s = http_req_arg(r, "wait");
  const char *last_event = http_req_header(r, "Last-Event-ID");
  const char *accept = http_req_header(r, "Accept");
  int64_t after = 0, wait = 0;
  if ((after_s && util_parse_i64(after_s, 0, INT64_MAX, &after) != 0) ||
      (last_event && util_parse_i64(last_event, 0, INT64_MAX, &after) != 0)) {
    http_respond_errorf(r, 400, "invalid_parameter", "after / Last-Event-ID must be an event id");
    return;
  }
  if (wait_s && util_parse_i64(wait_s, 0, ROUTES_WAIT_MAX_S, &wait) != 0) {
    http_respond_errorf(r, 400, "invalid_parameter", "wait must be an integer in [0, %d]",
                        ROUTES_WAIT_MAX_S);
    return;
  }
  http_req_db_release(r);
  if (accept && strstr(accept, "text/event-stream")) {
    routes_sse_start(r, r->params[0], after);
    return;
  }
  /* Long-poll fallback: events after `after`, waiting up to `wait` s for the first one. */
  int64_t deadline = util_now_ms() + wait * 1000;
  for (;;) {
    uint64_t gen = queue_notify_gen();
    db_conn *db = http_req_db(r);
    cJSON *events = queue_events_after(db, r->params[0], after, 200, &e);
    if (!events || queue_job_state(db, r->params[0], state, &e) != 0) {
      cJSON_Delete(events);
      http_respond_error(r, &e);
      return;
    }
    http_req_db_release(r);
    int n = cJSON_GetArraySize(events);
    if (n > 0 || queue_state_terminal(state) || util_now_ms() >= deadline ||
        queue_notify_wait(gen, deadline) < 0) {
      cJSON *out = cJSON_CreateObject();
      int64_t last = n ? (int64_t)cJSON_GetObjectItem(cJSON_GetArrayItem(events, n - 1), "id")->valuedouble
                       : after;
      cJSON_AddItemToObject(out, "events", events);
      cJSON_AddNumberToObject(out, "last_id", (double)last);
      cJSON_AddStringToObject(out, "state", state);
      http_respond_json(r, 200, out);
      return;
    }
    cJSON_Delete(events);
  }
}

/* GET /api/v1/changes: an SSE stream of every job change (state, progress, result, artifacts),
 * one `event: job` with the whole job object per change; what the dashboard follows. */
static void route_changes(http_req *r) {
  const char *last_event = http_req_header(r, "Last-Event-ID");
  int64_t after = 0;
  if (last_event && util_parse_i64(last_event, 0, INT64_MAX, &after) != 0) {
    http_respond_errorf(r, 400, "invalid_parameter", "Last-Event-ID must be an event id");
    return;
  }
  if (!last_event) {
    /* A new subscriber starts from now: the job list it just loaded is the past. */
    srv_err e = {0};
    if (queue_events_last_id(http_req_db(r), &after, &e) != 0) {
      http_respond_error(r, &e);
      return;
    }
  }
  http_req_db_release(r);
  routes_sse_start(r, "", after);
}

static void route_job_artifacts(http_req *r) {
  srv_err e = {0};
  char state[16];
  int limit;
  if (queue_job_state(http_req_db(r), r->params[0], state, &e) != 0 ||
      routes_page_limit(r, &limit, &e) != 0) {
    http_respond_error(r, &e);
    return;
  }
  cJSON *out = store_file_list(http_req_db(r), "artifact", r->params[0], limit,
                               http_req_arg(r, "page_token"), &e);
  routes_respond_result(r, 200, out, &e);
}

/* ---- workers ----------------------------------------------------------------------------- */

static void route_workers_list(http_req *r) {
  srv_err e = {0};
  int limit;
  if (routes_page_limit(r, &limit, &e) != 0) {
    http_respond_error(r, &e);
    return;
  }
  cJSON *out = queue_workers_list(http_req_db(r), limit, &e);
  routes_respond_result(r, 200, out, &e);
}

/* (job, attempt) from a worker request body. */
static int routes_job_attempt(const cJSON *body, const char **job, int64_t *attempt, srv_err *e) {
  *job = util_json_str(body, "job");
  if (!*job || !util_id_valid(*job, "job_"))
    return srv_err_set_path(e, 400, "invalid_field", "$.job", "job must be a job id");
  return routes_json_int(body, "attempt", 1, 1000000, 0, attempt, e) != 0 || *attempt == 0
             ? srv_err_set_path(e, 400, "invalid_field", "$.attempt", "attempt must be an integer >= 1")
             : 0;
}

static void route_worker_claim(http_req *r) {
  static const char *const fields[] = {"worker", "device", "kinds", "wait_s", NULL};
  srv_err e = {0};
  const cJSON *body = r->json, *kinds = cJSON_GetObjectItemCaseSensitive(body, "kinds");
  const char *worker = NULL, *device = NULL;
  int64_t wait;
  if (routes_fields_check(body, fields, &e) != 0 ||
      !(worker = routes_json_string(body, "worker", 200, &e)) ||
      !(device = routes_json_string(body, "device", 64, &e)) ||
      routes_json_int(body, "wait_s", 0, ROUTES_WAIT_MAX_S, 0, &wait, &e) != 0) {
    http_respond_error(r, &e);
    return;
  }
  if (kinds && !cJSON_IsNull(kinds)) {
    int ok = cJSON_IsArray(kinds) && cJSON_GetArraySize(kinds) <= 32;
    const cJSON *k;
    cJSON_ArrayForEach(k, kinds) ok = ok && cJSON_IsString(k) && strlen(k->valuestring) <= 32;
    if (!ok) {
      srv_err_set_path(&e, 400, "invalid_field", "$.kinds", "kinds must be an array of job kinds");
      http_respond_error(r, &e);
      return;
    }
  } else {
    kinds = NULL;
  }
  int64_t deadline = util_now_ms() + wait * 1000;
  for (int round = 0;; round++) {
    uint64_t gen = queue_notify_gen();
    /* The first round always claims (it also records the worker as seen); later rounds only
     * take the write lock when a read says a job is there, since every queue write wakes them. */
    if (round > 0 && http_req_client_gone(r)) return; /* nobody to answer; take no job */
    int worth = round == 0 ? 1 : queue_claimable(http_req_db(r), kinds, &e);
    cJSON *claim =
        worth > 0 ? queue_claim(http_req_db(r), &r->srv->cfg.queue, worker, device, kinds, &e) : NULL;
    http_req_db_release(r);
    if (claim) {
      http_respond_json(r, 200, claim);
      return;
    }
    if (e.status) {
      http_respond_error(r, &e);
      return;
    }
    int64_t now = util_now_ms();
    if (now >= deadline) break;
    /* Wake at least every second: a retry's backoff (not_before) passes without any write. */
    int64_t until = deadline < now + 1000 ? deadline : now + 1000;
    if (queue_notify_wait(gen, until) < 0) break;
  }
  http_respond_empty(r, 204);
}

static void route_worker_heartbeat(http_req *r) {
  static const char *const fields[] = {"job", "attempt", NULL};
  srv_err e = {0};
  const char *job;
  int64_t attempt, lease_until;
  int cancel = 0;
  if (routes_fields_check(r->json, fields, &e) != 0 ||
      routes_job_attempt(r->json, &job, &attempt, &e) != 0 ||
      queue_heartbeat(http_req_db(r), &r->srv->cfg.queue, job, attempt, &lease_until, &cancel,
                      &e) != 0) {
    http_respond_error(r, &e);
    return;
  }
  cJSON *o = cJSON_CreateObject();
  util_json_add_time(o, "lease_until", lease_until);
  cJSON_AddBoolToObject(o, "cancel", cancel);
  http_respond_json(r, 200, o);
}

static void route_worker_events(http_req *r) {
  static const char *const fields[] = {"job", "attempt", "events", NULL};
  srv_err e = {0};
  const char *job;
  int64_t attempt;
  if (routes_fields_check(r->json, fields, &e) != 0 ||
      routes_job_attempt(r->json, &job, &attempt, &e) != 0 ||
      queue_events_append(http_req_db(r), job, attempt,
                          cJSON_GetObjectItemCaseSensitive(r->json, "events"), &e) != 0) {
    http_respond_error(r, &e);
    return;
  }
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "accepted", cJSON_GetArraySize(cJSON_GetObjectItem(r->json, "events")));
  http_respond_json(r, 200, o);
}

/* job=, attempt= and name= of an artifact upload. */
static int routes_artifact_args(http_req *r, const char **job, int64_t *attempt, const char **name,
                                srv_err *e) {
  *job = http_req_arg(r, "job");
  *name = http_req_arg(r, "name");
  if (!*job || !util_id_valid(*job, "job_"))
    return srv_err_set(e, 400, "invalid_parameter", "job= must be a job id");
  if (util_parse_i64(http_req_arg(r, "attempt"), 1, 1000000, attempt) != 0)
    return srv_err_set(e, 400, "invalid_parameter", "attempt= must be an integer >= 1");
  if (!routes_file_name_ok(*name))
    return srv_err_set(e, 400, "invalid_name",
                       "name= must be 1–200 characters of letters, digits, '.', '_', '-', '+', "
                       "space, not starting with '.'");
  return 0;
}

static int route_artifact_precheck(http_req *r, srv_err *e) {
  const char *job, *name;
  int64_t attempt;
  if (routes_artifact_args(r, &job, &attempt, &name, e) != 0) return -1;
  return queue_fence(http_req_db(r), job, attempt, e);
}

static void route_worker_artifact(http_req *r) {
  srv_err e = {0};
  const char *job, *name;
  int64_t attempt;
  /* Fenced again at the end: the attempt may have been reaped while the body streamed. */
  if (routes_artifact_args(r, &job, &attempt, &name, &e) != 0 ||
      queue_fence(http_req_db(r), job, attempt, &e) != 0) {
    http_respond_error(r, &e);
    return;
  }
  store_meta meta = {.kind = "artifact", .name = name, .owner = r->tok.id, .job_id = job,
                     .attempt = attempt};
  cJSON *f = store_upload_commit(&r->srv->files, http_req_db(r), r->upload, &meta, NULL, &e);
  if (f) {
    cJSON *ev = cJSON_CreateObject();
    cJSON_AddStringToObject(ev, "type", "artifact");
    cJSON_AddStringToObject(ev, "name", name);
    cJSON_AddStringToObject(ev, "id", util_json_str(f, "id"));
    cJSON_AddNumberToObject(ev, "size", cJSON_GetObjectItem(f, "size")->valuedouble);
    queue_event_add(http_req_db(r), job, attempt, "artifact", ev, &e);
    cJSON_Delete(ev);
    queue_notify_bump();
  }
  routes_respond_result(r, 201, f, &e);
}

static void route_worker_complete(http_req *r) {
  static const char *const fields[] = {"job", "attempt", "state", "result", "error", "retryable",
                                       NULL};
  srv_err e = {0};
  const char *job, *state = util_json_str(r->json, "state");
  int64_t attempt;
  const cJSON *result = cJSON_GetObjectItemCaseSensitive(r->json, "result");
  const cJSON *error = cJSON_GetObjectItemCaseSensitive(r->json, "error");
  const cJSON *retryable = cJSON_GetObjectItemCaseSensitive(r->json, "retryable");
  if (routes_fields_check(r->json, fields, &e) != 0 ||
      routes_job_attempt(r->json, &job, &attempt, &e) != 0) {
    http_respond_error(r, &e);
    return;
  }
  if (!state || (strcmp(state, "succeeded") != 0 && strcmp(state, "failed") != 0)) {
    srv_err_set_path(&e, 400, "invalid_field", "$.state", "state must be succeeded or failed");
  } else if (result && !cJSON_IsObject(result) && !cJSON_IsNull(result)) {
    srv_err_set_path(&e, 400, "invalid_field", "$.result", "result must be an object");
  } else if (error && !cJSON_IsString(error) && !cJSON_IsNull(error)) {
    srv_err_set_path(&e, 400, "invalid_field", "$.error", "error must be a string");
  } else if (cJSON_IsString(error) && strlen(error->valuestring) > 65536) {
    srv_err_set_path(&e, 400, "invalid_field", "$.error", "error is limited to 64 KiB");
  } else if (retryable && !cJSON_IsBool(retryable)) {
    srv_err_set_path(&e, 400, "invalid_field", "$.retryable", "retryable must be a boolean");
  }
  if (e.status) {
    http_respond_error(r, &e);
    return;
  }
  int ok = strcmp(state, "succeeded") == 0;
  /* A failure without a say on retrying is retried: a crash cannot always report itself. */
  int retry = retryable ? cJSON_IsTrue(retryable) : 1;
  cJSON *out = queue_complete(http_req_db(r), &r->srv->cfg.queue, job, attempt, ok,
                              cJSON_IsObject(result) ? result : NULL,
                              cJSON_IsString(error) ? error->valuestring : NULL, retry, &e);
  routes_respond_result(r, 200, out, &e);
}

/* ---- tokens ------------------------------------------------------------------------------ */

static void route_token_create(http_req *r) {
  static const char *const fields[] = {"scope", "name", NULL};
  srv_err e = {0};
  const cJSON *name = cJSON_GetObjectItemCaseSensitive(r->json, "name");
  if (routes_fields_check(r->json, fields, &e) != 0) {
    http_respond_error(r, &e);
    return;
  }
  if (name && !cJSON_IsString(name)) {
    srv_err_set_path(&e, 400, "invalid_field", "$.name", "name must be a string");
    http_respond_error(r, &e);
    return;
  }
  auth_token t;
  char secret[AUTH_SECRET_LEN];
  if (auth_token_create(http_req_db(r), util_json_str(r->json, "scope"),
                        name ? name->valuestring : "", &t, secret, &e) != 0) {
    http_respond_error(r, &e);
    return;
  }
  cJSON *o = auth_token_json(&t);
  cJSON_AddStringToObject(o, "token", secret);
  http_respond_json(r, 201, o);
}

static void route_token_list(http_req *r) {
  srv_err e = {0};
  cJSON *out = auth_token_list(http_req_db(r), &e);
  routes_respond_result(r, 200, out, &e);
}

static void route_token_revoke(http_req *r) {
  srv_err e = {0};
  auth_token t;
  if (auth_token_revoke(http_req_db(r), r->params[0], &t, &e) != 0) http_respond_error(r, &e);
  else http_respond_json(r, 200, auth_token_json(&t));
}

/* ---- the table --------------------------------------------------------------------------- */

#define R_GET(p, need, fn) {"GET", p, need, HTTP_BODY_NONE, fn, NULL}
#define R_POST(p, need, fn) {"POST", p, need, HTTP_BODY_JSON, fn, NULL}
#define R_ACTION(p, need, fn) {"POST", p, need, HTTP_BODY_NONE, fn, NULL}

static const route routes[] = {
    R_GET("/healthz", AUTH_NEED_NONE, route_healthz),
    R_GET("/metrics", AUTH_NEED_READ, route_metrics),
    R_GET("/api/v1/openapi.json", AUTH_NEED_READ, route_openapi),
    R_GET("/api/v1/schemas/jobs", AUTH_NEED_READ, route_schema_kinds),
    R_GET("/api/v1/schemas/jobs/{kind}", AUTH_NEED_READ, route_schema_kind),
    {"POST", "/api/v1/models", AUTH_NEED_SUBMIT, HTTP_BODY_UPLOAD, route_upload, route_upload_precheck},
    {"PUT", "/api/v1/models", AUTH_NEED_SUBMIT, HTTP_BODY_UPLOAD, route_upload, route_upload_precheck},
    R_GET("/api/v1/models", AUTH_NEED_WORKER_READ, route_file_list),
    R_GET("/api/v1/models/{model}", AUTH_NEED_WORKER_READ, route_file_get),
    R_GET("/api/v1/models/{model}/content", AUTH_NEED_WORKER_READ, route_file_content),
    {"DELETE", "/api/v1/models/{model}", AUTH_NEED_SUBMIT, HTTP_BODY_NONE, route_file_delete, NULL},
    {"POST", "/api/v1/datasets", AUTH_NEED_SUBMIT, HTTP_BODY_UPLOAD, route_upload, route_upload_precheck},
    {"PUT", "/api/v1/datasets", AUTH_NEED_SUBMIT, HTTP_BODY_UPLOAD, route_upload, route_upload_precheck},
    R_GET("/api/v1/datasets", AUTH_NEED_WORKER_READ, route_file_list),
    R_GET("/api/v1/datasets/{dataset}", AUTH_NEED_WORKER_READ, route_file_get),
    R_GET("/api/v1/datasets/{dataset}/content", AUTH_NEED_WORKER_READ, route_file_content),
    {"DELETE", "/api/v1/datasets/{dataset}", AUTH_NEED_SUBMIT, HTTP_BODY_NONE, route_file_delete, NULL},
    R_POST("/api/v1/jobs", AUTH_NEED_SUBMIT, route_job_create),
    R_GET("/api/v1/jobs", AUTH_NEED_WORKER_READ, route_job_list),
    R_GET("/api/v1/jobs/{job}", AUTH_NEED_WORKER_READ, route_job_get),
    R_ACTION("/api/v1/jobs/{job}/cancel", AUTH_NEED_SUBMIT, route_job_cancel),
    R_ACTION("/api/v1/jobs/{job}/retry", AUTH_NEED_SUBMIT, route_job_retry),
    R_GET("/api/v1/jobs/{job}/metrics", AUTH_NEED_WORKER_READ, route_job_metrics),
    R_GET("/api/v1/jobs/{job}/events", AUTH_NEED_WORKER_READ, route_job_events),
    R_GET("/api/v1/changes", AUTH_NEED_READ, route_changes),
    R_GET("/api/v1/jobs/{job}/artifacts", AUTH_NEED_WORKER_READ, route_job_artifacts),
    R_GET("/api/v1/artifacts/{artifact}", AUTH_NEED_READ, route_file_get),
    R_GET("/api/v1/artifacts/{artifact}/content", AUTH_NEED_READ, route_file_content),
    R_GET("/api/v1/workers", AUTH_NEED_READ, route_workers_list),
    R_POST("/api/v1/workers/claim", AUTH_NEED_WORKER, route_worker_claim),
    R_POST("/api/v1/workers/heartbeat", AUTH_NEED_WORKER, route_worker_heartbeat),
    R_POST("/api/v1/workers/events", AUTH_NEED_WORKER, route_worker_events),
    {"PUT", "/api/v1/workers/artifacts", AUTH_NEED_WORKER, HTTP_BODY_UPLOAD, route_worker_artifact,
     route_artifact_precheck},
    R_POST("/api/v1/workers/complete", AUTH_NEED_WORKER, route_worker_complete),
    R_POST("/api/v1/tokens", AUTH_NEED_ADMIN, route_token_create),
    {"GET", "/api/v1/tokens", AUTH_NEED_ADMIN, HTTP_BODY_NONE, route_token_list, NULL},
    {"DELETE", "/api/v1/tokens/{token}", AUTH_NEED_ADMIN, HTTP_BODY_NONE, route_token_revoke, NULL},
};

const route *routes_table(void) { return routes; }
int routes_count(void) { return (int)(sizeof routes / sizeof routes[0]); }
