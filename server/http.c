#define _GNU_SOURCE /* POLLRDHUP */
/* server/http.c — libmicrohttpd glue: daemon setup and limits, the access handler (routing,
 * auth, body intake), responses, static files and per-route Prometheus counters. */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- per-route counters ------------------------------------------------------------------ */

static const double http_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                      0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define HTTP_N_BUCKETS (sizeof http_buckets / sizeof http_buckets[0])

struct route_stats {
  uint64_t by_class[6];                  /* index status/100: 1xx..5xx */
  uint64_t bucket[HTTP_N_BUCKETS + 1];   /* cumulative later; last = +Inf */
  uint64_t sum_us;
};

static int64_t http_mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void http_stats_record(server *s, int idx, int status, int64_t ns) {
  route_stats *rs = &s->stats[idx];
  int cls = status / 100;
  if (cls < 1 || cls > 5) cls = 5;
  __atomic_fetch_add(&rs->by_class[cls], 1, __ATOMIC_RELAXED);
  double secs = (double)ns / 1e9;
  size_t b = 0;
  while (b < HTTP_N_BUCKETS && secs > http_buckets[b]) b++;
  __atomic_fetch_add(&rs->bucket[b], 1, __ATOMIC_RELAXED);
  __atomic_fetch_add(&rs->sum_us, (uint64_t)(ns / 1000), __ATOMIC_RELAXED);
}

/* A growable text buffer for the metrics page. */
typedef struct http_text {
  char *p;
  size_t n, cap;
} http_text;

static void http_text_printf(http_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void http_text_printf(http_text *t, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(t->p ? t->p + t->n : NULL, t->p ? t->cap - t->n : 0, fmt, ap);
    va_end(ap);
    if (need < 0) return;
    if (t->p && t->n + (size_t)need < t->cap) {
      t->n += (size_t)need;
      return;
    }
    size_t cap = t->cap ? t->cap * 2 : 16384;
    while (cap < t->n + (size_t)need + 1) cap *= 2;
    char *grown = realloc(t->p, cap);
    if (!grown) return;
    t->p = grown;
    t->cap = cap;
  }
}

char *server_metrics_text(server *s, db_conn *db) {
  http_text t = {0};
  srv_err e = {0};
  static const char *const states[] = {"queued", "running", "succeeded", "failed", "cancelled", "dead"};
  http_text_printf(&t, "# HELP lathe_jobs Jobs by state.\n# TYPE lathe_jobs gauge\n");
  sqlite3_stmt *st = db_stmt(db, "SELECT count(*) FROM jobs WHERE state = ?1", &e);
  for (int i = 0; st && i < 6; i++) {
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, states[i], -1, SQLITE_STATIC);
    long long n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    http_text_printf(&t, "lathe_jobs{state=\"%s\"} %lld\n", states[i], n);
  }
  if (st) sqlite3_reset(st);
  int64_t now = util_now_ms();
  st = db_stmt(db, "SELECT coalesce(min(created_at), 0) FROM jobs WHERE state = 'queued'", &e);
  int64_t oldest = st && sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  if (st) sqlite3_reset(st);
  http_text_printf(&t,
                   "# HELP lathe_queue_oldest_age_seconds Age of the oldest queued job.\n"
                   "# TYPE lathe_queue_oldest_age_seconds gauge\nlathe_queue_oldest_age_seconds %.3f\n",
                   oldest ? (double)(now - oldest) / 1000 : 0.0);
  st = db_stmt(db, "SELECT count(*), coalesce(sum(last_seen >= ?1), 0) FROM workers", &e);
  long long seen = 0, live = 0;
  if (st) {
    sqlite3_bind_int64(st, 1, now - 60000);
    if (sqlite3_step(st) == SQLITE_ROW) {
      seen = sqlite3_column_int64(st, 0);
      live = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
  }
  http_text_printf(&t,
                   "# HELP lathe_workers_seen Workers ever seen.\n# TYPE lathe_workers_seen gauge\n"
                   "lathe_workers_seen %lld\n"
                   "# HELP lathe_workers_active Workers seen in the last 60 s.\n"
                   "# TYPE lathe_workers_active gauge\nlathe_workers_active %lld\n",
                   seen, live);
  http_text_printf(&t, "# HELP lathe_http_requests_total HTTP requests by route and status class.\n"
                       "# TYPE lathe_http_requests_total counter\n");
  int n_routes = routes_count();
  const route *rt = routes_table();
  for (int i = 0; i < n_routes + 2; i++) {
    char label[160];
    if (i < n_routes) snprintf(label, sizeof label, "%s %s", rt[i].method, rt[i].pattern);
    else snprintf(label, sizeof label, "%s", i == n_routes ? "static" : "unmatched");
    for (int c = 1; c <= 5; c++) {
      uint64_t v = __atomic_load_n(&s->stats[i].by_class[c], __ATOMIC_RELAXED);
      if (v) http_text_printf(&t, "lathe_http_requests_total{route=\"%s\",code=\"%dxx\"} %llu\n",
                              label, c, (unsigned long long)v);
    }
  }
  http_text_printf(&t, "# HELP lathe_http_request_duration_seconds Request latency by route.\n"
                       "# TYPE lathe_http_request_duration_seconds histogram\n");
  for (int i = 0; i < n_routes + 2; i++) {
    char label[160];
    if (i < n_routes) snprintf(label, sizeof label, "%s %s", rt[i].method, rt[i].pattern);
    else snprintf(label, sizeof label, "%s", i == n_routes ? "static" : "unmatched");
    uint64_t cum = 0;
    uint64_t counts[HTTP_N_BUCKETS + 1];
    uint64_t total = 0;
    for (size_t b = 0; b <= HTTP_N_BUCKETS; b++) {
      counts[b] = __atomic_load_n(&s->stats[i].bucket[b], __ATOMIC_RELAXED);
      total += counts[b];
    }
    if (!total) continue;
    for (size_t b = 0; b < HTTP_N_BUCKETS; b++) {
      cum += counts[b];
      http_text_printf(&t, "lathe_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n",
                       label, http_buckets[b], (unsigned long long)cum);
    }
    http_text_printf(&t,
                     "lathe_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n"
                     "lathe_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n"
                     "lathe_http_request_duration_seconds_count{route=\"%s\"} %llu\n",
                     label, (unsigned long long)total, label,
                     (double)__atomic_load_n(&s->stats[i].sum_us, __ATOMIC_RELAXED) / 1e6, label,
                     (unsigned long long)total);
  }
  return t.p;
}

/* ---- requests and responses -------------------------------------------------------------- */

db_conn *http_req_db(http_req *r) {
  if (!r->db) r->db = db_pool_acquire(r->srv->pool);
  return r->db;
}

void http_req_db_release(http_req *r) {
  if (r->db) db_pool_release(r->srv->pool, r->db);
  r->db = NULL;
}

const char *http_req_arg(http_req *r, const char *key) {
  return MHD_lookup_connection_value(r->con, MHD_GET_ARGUMENT_KIND, key);
}

int http_req_client_gone(http_req *r) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(r->con, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (!ci) return 0;
  struct pollfd p = {.fd = ci->connect_fd, .events = POLLIN | POLLRDHUP};
  if (poll(&p, 1, 0) <= 0) return 0;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return 1;
  /* Readable: either bytes the client sent after its request (still there) or end of stream. */
  char c;
  ssize_t n = recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

const char *http_req_header(http_req *r, const char *key) {
  return MHD_lookup_connection_value(r->con, MHD_HEADER_KIND, key);
}

void http_response_add_common(struct MHD_Response *resp, const char *content_type) {
  if (content_type) MHD_add_response_header(resp, "Content-Type", content_type);
  MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
  MHD_add_response_header(resp, "Content-Security-Policy",
                          "default-src 'self'; script-src 'self'; style-src 'self'; "
                          "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
                          "frame-ancestors 'none'; base-uri 'none'; form-action 'self'");
  MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
  MHD_add_response_header(resp, "X-Frame-Options", "DENY");
}

void http_respond_response(http_req *r, int status, struct MHD_Response *resp) {
  if (r->responded || !resp) {
    if (resp) MHD_destroy_response(resp);
    return;
  }
  r->responded = 1;
  r->status = status;
  MHD_queue_response(r->con, (unsigned int)status, resp);
  MHD_destroy_response(resp);
}

void http_respond_text(http_req *r, int status, const char *content_type, const char *text,
                       size_t len) {
  struct MHD_Response *resp =
      MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
  if (!resp) return;
  http_response_add_common(resp, content_type);
  MHD_add_response_header(resp, "Cache-Control", "no-store");
  http_respond_response(r, status, resp);
}

void http_respond_json(http_req *r, int status, cJSON *body) {
  char *text = cJSON_PrintUnformatted(body);
  cJSON_Delete(body);
  if (!text) {
    http_respond_text(r, 500, "application/json",
                      "{\"code\":\"internal\",\"message\":\"out of memory\"}", 46);
    return;
  }
  size_t len = strlen(text);
  struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
  if (!resp) {
    free(text);
    return;
  }
  http_response_add_common(resp, "application/json");
  MHD_add_response_header(resp, "Cache-Control", "no-store");
  http_respond_response(r, status, resp);
}

void http_respond_error(http_req *r, const srv_err *e) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "code", e->code[0] ? e->code : "internal");
  cJSON_AddStringToObject(o, "message", e->message);
  if (e->path[0]) cJSON_AddStringToObject(o, "path", e->path);
  if (e->status >= 500) fprintf(stderr, "lathe-server: %s %s\n", e->code, e->message);
  http_respond_json(r, e->status ? e->status : 500, o);
}

void http_respond_errorf(http_req *r, int status, const char *code, const char *fmt, ...) {
  srv_err e = {0};
  e.status = status;
  snprintf(e.code, sizeof e.code, "%s", code);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e.message, sizeof e.message, fmt, ap);
  va_end(ap);
  http_respond_error(r, &e);
}

void http_respond_empty(http_req *r, int status) {
  struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
  if (!resp) return;
  http_response_add_common(resp, NULL);
  http_respond_response(r, status, resp);
}

void http_respond_blob(http_req *r, int fd, int64_t size, const char *sha256,
                       const char *file_name) {
  struct MHD_Response *resp = MHD_create_response_from_fd64((uint64_t)size, fd);
  if (!resp) {
    close(fd);
    http_respond_errorf(r, 500, "internal", "cannot create the download response");
    return;
  }
  char etag[72], disp[320];
  snprintf(etag, sizeof etag, "\"%s\"", sha256);
  /* The stored name was validated to a safe character set on upload, so it can be quoted. */
  snprintf(disp, sizeof disp, "attachment; filename=\"%s\"", file_name);
  http_response_add_common(resp, "application/octet-stream");
  MHD_add_response_header(resp, "ETag", etag);
  MHD_add_response_header(resp, "Content-Disposition", disp);
  MHD_add_response_header(resp, "Cache-Control", "private, max-age=0");
  http_respond_response(r, 200, resp);
}

/* ---- static files ------------------------------------------------------------------------ */

static const char *http_mime(const char *path) {
  static const char *const types[][2] = {
      {".html", "text/html; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
      {".mjs", "text/javascript; charset=utf-8"}, {".css", "text/css; charset=utf-8"},
      {".json", "application/json"}, {".svg", "image/svg+xml"}, {".png", "image/png"},
      {".ico", "image/x-icon"}, {".txt", "text/plain; charset=utf-8"},
      {".woff2", "font/woff2"}};
  const char *dot = strrchr(path, '.');
  for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
    if (strcmp(dot, types[i][0]) == 0) return types[i][1];
  return "application/octet-stream";
}

/* 1 when url is a safe relative file path: segments of [A-Za-z0-9._-], none starting with '.',
 * so "..", hidden files and encoded tricks (already decoded by MHD) are refused. */
static int http_static_path_ok(const char *url) {
  if (strlen(url) > 200) return 0;
  int seg_start = 1;
  for (const char *c = url; *c; c++) {
    if (*c == '/') {
      if (seg_start) return 0; /* empty segment */
      seg_start = 1;
      continue;
    }
    if (seg_start && *c == '.') return 0;
    seg_start = 0;
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
          *c == '.' || *c == '_' || *c == '-'))
      return 0;
  }
  return !seg_start;
}

static void http_serve_static(http_req *r, const char *url) {
  server *s = r->srv;
  char path[1400];
  if (strcmp(url, "/vendor/chart.umd.js") == 0) {
    snprintf(path, sizeof path, "%s/chart.js/dist/chart.umd.js", s->cfg.vendor_dir);
  } else {
    const char *rel = url[1] ? url + 1 : "index.html";
    if (!http_static_path_ok(rel)) {
      http_respond_errorf(r, 404, "not_found", "no such page");
      return;
    }
    snprintf(path, sizeof path, "%s/%s", s->cfg.web_dir, rel);
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  struct stat sb;
  if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    if (fd >= 0) close(fd);
    http_respond_errorf(r, 404, "not_found", "no such page");
    return;
  }
  struct MHD_Response *resp = MHD_create_response_from_fd64((uint64_t)sb.st_size, fd);
  if (!resp) {
    close(fd);
    return;
  }
  http_response_add_common(resp, http_mime(path));
  MHD_add_response_header(resp, "Cache-Control", "no-cache");
  http_respond_response(r, 200, resp);
}

/* ---- routing ----------------------------------------------------------------------------- */

/* Path parameter names and the id prefix each must carry; {kind} is a lowercase word. */
static int http_param_valid(const char *name, size_t name_len, const char *value) {
  static const char *const prefixes[][2] = {{"job", "job_"},     {"model", "mdl_"},
                                            {"dataset", "ds_"},  {"artifact", "art_"},
                                            {"token", "tok_"}};
  for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
    if (strlen(prefixes[i][0]) == name_len && strncmp(name, prefixes[i][0], name_len) == 0)
      return util_id_valid(value, prefixes[i][1]);
  size_t n = strlen(value);
  if (n == 0 || n > 32) return 0;
  for (size_t i = 0; i < n; i++)
    if (!((value[i] >= 'a' && value[i] <= 'z') || value[i] == '_')) return 0;
  return 1;
}

/* Matches url against pattern, filling params. 1 = match, 0 = no match, -1 = the shape matches
 * but a parameter is malformed (answered 404, as for an unknown id). */
static int http_route_match(const char *pattern, const char *url, char params[][72]) {
  int n_param = 0;
  const char *p = pattern, *u = url;
  while (*p && *u) {
    if (*p == '{') {
      const char *close = strchr(p, '}');
      const char *seg_end = strchr(u, '/');
      size_t len = seg_end ? (size_t)(seg_end - u) : strlen(u);
      if (len == 0 || n_param >= HTTP_PARAMS_MAX) return 0;
      char value[72];
      int bad = len >= sizeof value;
      if (!bad) {
        memcpy(value, u, len);
        value[len] = '\0';
        bad = !http_param_valid(p + 1, (size_t)(close - p - 1), value) || memchr(u, '\0', len);
      }
      /* A malformed parameter still counts as this route if the rest of the shape matches. */
      const char *rest_p = close + 1, *rest_u = u + len;
      if (bad) {
        char dummy[HTTP_PARAMS_MAX][72];
        int rest = (*rest_p == '\0' && *rest_u == '\0') ? 1 : http_route_match(rest_p, rest_u, dummy);
        return rest != 0 ? -1 : 0;
      }
      snprintf(params[n_param++], 72, "%s", value);
      p = rest_p;
      u = rest_u;
      continue;
    }
    if (*p != *u) return 0;
    p++;
    u++;
  }
  return *p == '\0' && *u == '\0';
}

/* 0 = route found (r->rt set); otherwise the 404/405 has been answered. */
static int http_route_find(http_req *r, const char *url, const char *method) {
  const route *rt = routes_table();
  int n = routes_count(), shape = 0, bad_param = 0;
  char allow[128] = "";
  for (int i = 0; i < n; i++) {
    char params[HTTP_PARAMS_MAX][72];
    int m = http_route_match(rt[i].pattern, url, params);
    if (m == 0) continue;
    if (m < 0) {
      bad_param = 1;
      continue;
    }
    shape = 1;
    if (strcmp(rt[i].method, method) != 0) {
      if (strlen(allow) + strlen(rt[i].method) + 3 < sizeof allow) {
        if (allow[0]) strcat(allow, ", ");
        strcat(allow, rt[i].method);
      }
      continue;
    }
    r->rt = &rt[i];
    r->route_index = i;
    memcpy(r->params, params, sizeof params);
    return 0;
  }
  r->route_index = n + 1;
  if (shape) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        strlen("{\"code\":\"method_not_allowed\",\"message\":\"see the Allow header\"}"),
        "{\"code\":\"method_not_allowed\",\"message\":\"see the Allow header\"}",
        MHD_RESPMEM_PERSISTENT);
    if (resp) {
      http_response_add_common(resp, "application/json");
      MHD_add_response_header(resp, "Allow", allow);
      http_respond_response(r, 405, resp);
    }
  } else if (bad_param) {
    http_respond_errorf(r, 404, "not_found",
                        "no such resource: path parameters are ids like job_0123456789abcdef");
  } else {
    http_respond_errorf(r, 404, "not_found", "no route %s %s; see /api/v1/openapi.json", method,
                        url);
  }
  return -1;
}

/* Bearer token from Authorization (or access_token on the event routes, for EventSource, which
 * cannot set headers). 0, or the 401/403 has been answered. */
static int http_authenticate(http_req *r) {
  const char *h = http_req_header(r, "Authorization");
  const char *secret = NULL;
  if (h && strncasecmp(h, "Bearer ", 7) == 0) secret = h + 7;
  else if (!h && (strcmp(r->rt->pattern, "/api/v1/jobs/{job}/events") == 0 ||
                  strcmp(r->rt->pattern, "/api/v1/changes") == 0))
    secret = http_req_arg(r, "access_token");
  if (!secret) {
    http_respond_errorf(r, 401, "unauthorized",
                        "send Authorization: Bearer TOKEN (create one with lathe-server token "
                        "create)");
    return -1;
  }
  srv_err e = {0};
  int rc = auth_token_lookup(http_req_db(r), secret, &r->tok, &e);
  if (rc != 0) {
    http_respond_error(r, &e);
    return -1;
  }
  if (!auth_scope_allows(r->tok.scope, r->rt->need)) {
    http_respond_errorf(r, 403, "forbidden", "a %s token cannot %s %s",
                        auth_scope_name(r->tok.scope), r->rt->method, r->rt->pattern);
    return -1;
  }
  return 0;
}

/* 1 when the Content-Type's media type is one of the comma-free list entries in accepted. */
static int http_content_type_is(http_req *r, const char *const *accepted) {
  const char *ct = http_req_header(r, "Content-Type");
  if (!ct) return 0;
  size_t len = strcspn(ct, ";");
  while (len > 0 && ct[len - 1] == ' ') len--;
  for (; *accepted; accepted++)
    if (strlen(*accepted) == len && strncasecmp(ct, *accepted, len) == 0) return 1;
  return 0;
}

static const char *const http_json_types[] = {"application/json", NULL};
static const char *const http_upload_types[] = {"application/octet-stream", "application/x-hdf5",
                                                "application/x-hdf", "application/onnx", NULL};

/* 1 when the request announces a body: a non-zero Content-Length or a chunked transfer. */
static int http_req_has_body(http_req *r) {
  const char *cl = http_req_header(r, "Content-Length");
  return (cl && strcmp(cl, "0") != 0) || http_req_header(r, "Transfer-Encoding") != NULL;
}

/* Routes, authenticates, checks body headers and starts an upload. */
static void http_req_begin(http_req *r, const char *url) {
  if (strncmp(url, "/api/", 5) != 0 && strcmp(url, "/metrics") != 0 &&
      strcmp(url, "/healthz") != 0) {
    r->route_index = routes_count();
    if (strcmp(r->method, "GET") != 0 && strcmp(r->method, "HEAD") != 0) {
      http_respond_errorf(r, 405, "method_not_allowed", "static files are GET only");
      return;
    }
    http_serve_static(r, url);
    return;
  }
  if (http_route_find(r, url, r->method) != 0) return;
  if (r->rt->need != AUTH_NEED_NONE && http_authenticate(r) != 0) return;
  const char *cl = http_req_header(r, "Content-Length");
  int64_t length = -1;
  if (cl && util_parse_i64(cl, 0, INT64_MAX, &length) != 0) {
    http_respond_errorf(r, 400, "bad_request", "Content-Length is not a number");
    return;
  }
  if (r->rt->body == HTTP_BODY_JSON) {
    if (!http_content_type_is(r, http_json_types)) {
      http_respond_errorf(r, 415, "unsupported_media_type", "send Content-Type: application/json");
      return;
    }
    if (length > HTTP_JSON_MAX) {
      http_respond_errorf(r, 413, "body_too_large", "JSON bodies are limited to %d bytes",
                          HTTP_JSON_MAX);
      return;
    }
  } else if (r->rt->body == HTTP_BODY_UPLOAD) {
    if (!http_content_type_is(r, http_upload_types)) {
      http_respond_errorf(r, 415, "unsupported_media_type",
                          "upload the raw file with Content-Type: application/octet-stream");
      return;
    }
    if (length > r->srv->cfg.upload_max) {
      http_respond_errorf(r, 413, "upload_too_large",
                          "uploads are limited to %lld bytes (lathe-server --upload-max)",
                          (long long)r->srv->cfg.upload_max);
      return;
    }
    srv_err e = {0};
    if (r->rt->precheck && r->rt->precheck(r, &e) != 0) {
      http_respond_error(r, &e);
      return;
    }
    r->upload = store_upload_begin(&r->srv->files, &e);
    if (!r->upload) http_respond_error(r, &e);
  } else if (length > 0) {
    http_respond_errorf(r, 400, "unexpected_body", "%s %s takes no request body", r->method,
                        r->rt->pattern);
  }
  http_req_db_release(r);
}

/* Takes a chunk of body. Past a limit the rest is dropped and 413 is answered at the end, unless
 * the client keeps sending (chunked, so no Content-Length said how much): then the connection is
 * closed rather than read forever. */
static int http_req_take(http_req *r, const char *data, size_t n) {
  if (r->body_too_large) {
    r->dropped += (int64_t)n;
    return r->dropped > HTTP_DROP_MAX ? -1 : 0;
  }
  if (r->rt->body == HTTP_BODY_UPLOAD) {
    if (store_upload_size(r->upload) + (int64_t)n > r->srv->cfg.upload_max) {
      r->body_too_large = 1;
      return 0;
    }
    srv_err e = {0};
    if (store_upload_write(r->upload, data, n, &e) != 0) {
      http_respond_error(r, &e);
      return -1;
    }
    return 0;
  }
  size_t limit = r->rt->body == HTTP_BODY_JSON ? HTTP_JSON_MAX : 0;
  if (r->body_len + n > limit) {
    r->body_too_large = 1;
    return 0;
  }
  if (r->body_len + n + 1 > r->body_cap) {
    size_t cap = r->body_cap ? r->body_cap : 4096;
    while (cap < r->body_len + n + 1) cap *= 2;
    char *grown = realloc(r->body, cap);
    if (!grown) return -1;
    r->body = grown;
    r->body_cap = cap;
  }
  memcpy(r->body + r->body_len, data, n);
  r->body_len += n;
  r->body[r->body_len] = '\0';
  return 0;
}

/* The body is complete: parse JSON or finish the upload, then run the handler. */
static void http_req_dispatch(http_req *r) {
  if (r->body_too_large) {
    if (r->rt->body == HTTP_BODY_UPLOAD)
      http_respond_errorf(r, 413, "upload_too_large", "uploads are limited to %lld bytes",
                          (long long)r->srv->cfg.upload_max);
    else if (r->rt->body == HTTP_BODY_JSON)
      http_respond_errorf(r, 413, "body_too_large", "JSON bodies are limited to %d bytes",
                          HTTP_JSON_MAX);
    else
      http_respond_errorf(r, 400, "unexpected_body", "%s %s takes no request body", r->method,
                          r->rt->pattern);
    return;
  }
  if (r->rt->body == HTTP_BODY_JSON) {
    if (r->body_len == 0) {
      http_respond_errorf(r, 400, "invalid_json", "the request body is empty; send a JSON object");
      return;
    }
    if (util_json_depth(r->body, r->body_len) > HTTP_JSON_DEPTH) {
      http_respond_errorf(r, 400, "too_deep", "JSON nesting deeper than %d", HTTP_JSON_DEPTH);
      return;
    }
    if (memchr(r->body, '\0', r->body_len)) {
      http_respond_errorf(r, 400, "invalid_json", "the body contains a NUL byte");
      return;
    }
    const char *end = NULL;
    r->json = cJSON_ParseWithOpts(r->body, &end, 1);
    if (!r->json) {
      http_respond_errorf(r, 400, "invalid_json", "malformed JSON near byte %zu",
                          end ? (size_t)(end - r->body) : (size_t)0);
      return;
    }
    if (!cJSON_IsObject(r->json)) {
      http_respond_errorf(r, 400, "invalid_json", "the body must be a JSON object");
      return;
    }
  } else if (r->rt->body == HTTP_BODY_UPLOAD) {
    srv_err e = {0};
    if (store_upload_finish(r->upload, &e) != 0) {
      http_respond_error(r, &e);
      return;
    }
  }
  r->rt->handler(r);
  if (!r->responded) http_respond_errorf(r, 500, "internal", "the handler gave no answer");
}

static enum MHD_Result http_access(void *cls, struct MHD_Connection *con, const char *url,
                                   const char *method, const char *version,
                                   const char *upload_data, size_t *upload_data_size,
                                   void **con_cls) {
  server *s = cls;
  http_req *r = *con_cls;
  if (!r) {
    r = calloc(1, sizeof *r);
    if (!r) return MHD_NO;
    r->srv = s;
    r->con = con;
    r->method = method;
    r->start_ns = http_mono_ns();
    *con_cls = r;
    /* MHD closes the connection after any answer queued on this first call (it cannot know the
     * body was not wanted), so bodiless requests are routed on the final call instead and keep
     * their connection alive; requests with a body are checked now, so a refusal (401, 413, a
     * stale attempt) comes before the body is sent. */
    if (http_req_has_body(r)) http_req_begin(r, url);
    else r->deferred = 1;
    return MHD_YES;
  }
  if (*upload_data_size > 0) {
    size_t n = *upload_data_size;
    *upload_data_size = 0;
    if (r->responded) return MHD_YES; /* answered early; the rest of the body is dropped */
    return http_req_take(r, upload_data, n) == 0 ? MHD_YES : MHD_NO;
  }
  if (r->deferred) {
    r->deferred = 0;
    http_req_begin(r, url);
  }
  /* No route and no answer means a response could not even be allocated: close. */
  if (!r->responded && !r->rt) return MHD_NO;
  if (!r->responded) http_req_dispatch(r);
  http_req_db_release(r);
  return r->responded ? MHD_YES : MHD_NO;
}

static void http_completed(void *cls, struct MHD_Connection *con, void **con_cls,
                           enum MHD_RequestTerminationCode toe) {
  server *s = cls;
  http_req *r = *con_cls;
  if (!r) return;
  http_stats_record(s, r->route_index, r->responded ? r->status : 499, http_mono_ns() - r->start_ns);
  http_req_db_release(r);
  /* An upload that was not committed (interrupted, refused) leaves no temp file behind. */
  store_upload_free(r->upload);
  cJSON_Delete(r->json);
  free(r->body);
  free(r);
  *con_cls = NULL;
}

/* URL unescaping as MHD does it, except that %00 stays as the three characters: a decoded NUL
 * would silently cut the path ("/jobs/ID%00/cancel" read as "/jobs/ID"). Returns the length. */
static size_t http_unescape(void *cls, struct MHD_Connection *con, char *s) {
  char *w = s;
  for (const char *r = s; *r; r++) {
    int hi, lo;
    if (r[0] == '%' && (hi = util_hex_digit(r[1])) >= 0 && (lo = util_hex_digit(r[2])) >= 0 &&
        (hi | lo) != 0) {
      *w++ = (char)(hi * 16 + lo);
      r += 2;
    } else {
      *w++ = *r;
    }
  }
  *w = '\0';
  return (size_t)(w - s);
}

static void http_log(void *cls, const char *fmt, va_list ap) {
  fputs("lathe-server: mhd: ", stderr);
  vfprintf(stderr, fmt, ap);
}

static char *http_read_file(const char *path, srv_err *e) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    srv_err_set(e, 500, "internal", "cannot read %s: %s", path, strerror(errno));
    return NULL;
  }
  char *buf = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n + 4096 + 1 > cap) {
      cap = cap ? cap * 2 : 16384;
      char *grown = realloc(buf, cap);
      if (!grown) break;
      buf = grown;
    }
    size_t got = fread(buf + n, 1, cap - n - 1, f);
    n += got;
    if (got == 0) break;
  }
  fclose(f);
  if (buf) buf[n] = '\0';
  return buf;
}

int server_start(server *s, srv_err *e) {
  s->stats = calloc((size_t)routes_count() + 2, sizeof *s->stats);
  if (!s->stats) return srv_err_set(e, 500, "internal", "out of memory");
  struct sockaddr_in6 a6 = {0};
  struct sockaddr_in a4 = {0};
  struct sockaddr *addr;
  unsigned int flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                       MHD_USE_POLL | MHD_USE_ERROR_LOG;
  if (inet_pton(AF_INET, s->cfg.listen_host, &a4.sin_addr) == 1) {
    a4.sin_family = AF_INET;
    a4.sin_port = htons((uint16_t)s->cfg.listen_port);
    addr = (struct sockaddr *)&a4;
  } else if (inet_pton(AF_INET6, s->cfg.listen_host, &a6.sin6_addr) == 1) {
    a6.sin6_family = AF_INET6;
    a6.sin6_port = htons((uint16_t)s->cfg.listen_port);
    addr = (struct sockaddr *)&a6;
    flags |= MHD_USE_IPv6;
  } else {
    return srv_err_set(e, 400, "invalid_listen",
                       "--listen needs a numeric address, e.g. 127.0.0.1:8080 or [::1]:8080, "
                       "got %s",
                       s->cfg.listen_host);
  }
  int tls = s->cfg.tls_cert[0] && s->cfg.tls_key[0];
  if (tls) {
    s->tls_cert_pem = http_read_file(s->cfg.tls_cert, e);
    s->tls_key_pem = s->tls_cert_pem ? http_read_file(s->cfg.tls_key, e) : NULL;
    if (!s->tls_key_pem) return -1;
    flags |= MHD_USE_TLS;
  }
  struct MHD_OptionItem opts[] = {
      {MHD_OPTION_SOCK_ADDR, 0, addr},
      {MHD_OPTION_CONNECTION_LIMIT, (intptr_t)s->cfg.max_connections, NULL},
      {MHD_OPTION_PER_IP_CONNECTION_LIMIT, (intptr_t)s->cfg.max_per_ip, NULL},
      {MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t)s->cfg.conn_timeout_s, NULL},
      {MHD_OPTION_CONNECTION_MEMORY_LIMIT, (intptr_t)s->cfg.conn_memory, NULL},
      {MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024, NULL},
      {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)http_completed, s},
      {MHD_OPTION_UNESCAPE_CALLBACK, (intptr_t)http_unescape, NULL},
      {tls ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, s->tls_cert_pem},
      {tls ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_END, 0, s->tls_key_pem},
      {MHD_OPTION_END, 0, NULL}};
  s->mhd = MHD_start_daemon(flags, 0, NULL, NULL, http_access, s, MHD_OPTION_EXTERNAL_LOGGER,
                            http_log, NULL, MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
  if (!s->mhd)
    return srv_err_set(e, 500, "listen_failed",
                       "cannot listen on %s:%d (in use, not permitted, or a bad TLS cert/key)",
                       s->cfg.listen_host, s->cfg.listen_port);
  return 0;
}

void server_stop(server *s) {
  queue_notify_shutdown(); /* long polls and SSE streams return at once */
  if (s->mhd) MHD_stop_daemon(s->mhd);
  s->mhd = NULL;
  free(s->stats);
  s->stats = NULL;
  free(s->tls_cert_pem);
  free(s->tls_key_pem);
}
