/* server/http.h — the HTTP side of lathe-server: the server object, per-request state handed to
 * route handlers, response helpers, and the route table (routes.c) that http.c dispatches to.
 *
 *   static void route_job_get(http_req *r) {
 *     srv_err e = {0};
 *     cJSON *job = queue_job_get(http_req_db(r), r->params[0], &e);
 *     job ? http_respond_json(r, 200, job) : http_respond_error(r, &e);
 *   }
 *
 * MHD runs one thread per connection, so a handler may block (claim long poll, SSE) after
 * giving its database connection back with http_req_db_release. Not for: queue logic (queue.c),
 * file storage (store.c).
 */
#ifndef LATHE_SERVER_HTTP_H
#define LATHE_SERVER_HTTP_H

#include <microhttpd.h>
#include <stdint.h>

#include "auth.h"
#include "db.h"
#include "queue.h"
#include "store.h"

#define HTTP_JSON_MAX (1 << 20)  /* JSON request bodies */
#define HTTP_JSON_DEPTH 64       /* JSON nesting */
#define HTTP_PAGE_MAX 200        /* list page size */
#define HTTP_PARAMS_MAX 2        /* path parameters per route */
#define HTTP_DROP_MAX (1 << 20)  /* refused body bytes read before closing instead of answering */

typedef struct server_cfg {
  char listen_host[256];
  int listen_port;
  char data_dir[1024];
  char web_dir[1024];
  char vendor_dir[1024];
  char tls_cert[1024], tls_key[1024];
  int64_t upload_max;      /* bytes per upload */
  int max_connections;
  int max_per_ip;
  int conn_timeout_s;
  int conn_memory;         /* MHD per-connection memory limit, bytes */
  int db_connections;      /* pool size */
  queue_cfg queue;
} server_cfg;

typedef struct route_stats route_stats;

typedef struct server {
  server_cfg cfg;
  db_pool *pool;
  store files;
  struct MHD_Daemon *mhd;
  route_stats *stats;  /* (routes_count() + 2) counters: routes, static, unmatched; owned */
  char *tls_cert_pem, *tls_key_pem; /* owned; MHD keeps pointers */
} server;

typedef enum http_body {
  HTTP_BODY_NONE,   /* a body, if sent, is refused */
  HTTP_BODY_JSON,   /* application/json, <= HTTP_JSON_MAX, parsed before the handler runs */
  HTTP_BODY_UPLOAD  /* raw bytes streamed into the store */
} http_body;

typedef struct http_req http_req;
typedef void (*http_handler)(http_req *r);
/* Runs on the first call for upload routes, before any body byte is stored: may refuse early
 * (e.g. a stale worker attempt) by filling e. */
typedef int (*http_precheck)(http_req *r, srv_err *e);

typedef struct route {
  const char *method;
  const char *pattern;    /* "/api/v1/jobs/{job}/cancel": {x} is a path parameter */
  auth_need need;
  http_body body;
  http_handler handler;
  http_precheck precheck; /* upload routes only; may be NULL */
} route;

struct http_req {
  server *srv;
  struct MHD_Connection *con;
  const route *rt;          /* NULL for static files and unmatched */
  int route_index;          /* into the stats table */
  const char *method;
  char params[HTTP_PARAMS_MAX][72]; /* validated path parameters */
  auth_token tok;           /* the caller, once authenticated */
  cJSON *json;              /* parsed JSON body (HTTP_BODY_JSON), owned */
  char *body;               /* raw JSON body bytes, owned */
  size_t body_len, body_cap;
  int body_too_large;       /* bytes past the limit were dropped; answer 413 */
  int64_t dropped;          /* bytes dropped so far; past HTTP_DROP_MAX the connection closes */
  store_upload *upload;     /* HTTP_BODY_UPLOAD, owned */
  int responded;
  int deferred;             /* bodiless: routed on the final call (keeps the connection alive) */
  int status;               /* of the queued response */
  int64_t start_ns;         /* monotonic, for latency */
  db_conn *db;              /* lazily borrowed from the pool */
};

/* Borrows a database connection for the rest of the request (or until released). */
db_conn *http_req_db(http_req *r);
void http_req_db_release(http_req *r);
/* 1 when the client has closed its end (or the socket failed): long polls stop waiting for it,
 * and a claim is not handed to a worker that is no longer there. */
int http_req_client_gone(http_req *r);
/* Query parameter or NULL. */
const char *http_req_arg(http_req *r, const char *key);
const char *http_req_header(http_req *r, const char *key);

/* Responses; each may be called once per request. The json variants take ownership. */
void http_respond_json(http_req *r, int status, cJSON *body);
void http_respond_error(http_req *r, const srv_err *e);
void http_respond_errorf(http_req *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void http_respond_empty(http_req *r, int status);
void http_respond_text(http_req *r, int status, const char *content_type, const char *text,
                       size_t len);
/* Streams a blob by fd (closed by MHD) with an ETag and a download file name. */
void http_respond_blob(http_req *r, int fd, int64_t size, const char *sha256,
                       const char *file_name);
void http_respond_response(http_req *r, int status, struct MHD_Response *resp);
/* Adds the headers every response carries (nosniff, CSP, cache policy). */
void http_response_add_common(struct MHD_Response *resp, const char *content_type);

/* Route table (routes.c). */
const route *routes_table(void);
int routes_count(void);

/* Lifecycle (http.c). */
int server_start(server *s, srv_err *e);
void server_stop(server *s);
/* The Prometheus text for /metrics (route counters from http.c, queue gauges from the db). */
char *server_metrics_text(server *s, db_conn *db);

#endif
