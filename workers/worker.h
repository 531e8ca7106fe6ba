/* workers/worker.h — lathe-worker's pieces: the HTTP client for the worker protocol
 * (schema/CONTRACT.md), the input cache, and the supervisor that runs one claimed job.
 *
 *   wk_config c = {...};                       // from options and LATHE_* variables
 *   wk_http *h = wk_http_open(&c);
 *   wk_resp r; cJSON *claim = ...;             // POST /api/v1/workers/claim
 *   wk_job_serve(&c, h, claim);                // download, run `lathe run`, relay, complete
 *
 * Not for: running a job in-process (that is `lathe run`, a child, so a crash or an OOM kill
 * never takes the worker down) or anything the server decides (retries, backoff, leases).
 */
#ifndef LATHE_WORKERS_WORKER_H
#define LATHE_WORKERS_WORKER_H

#include <cjson/cJSON.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

typedef struct wk_config {
  const char *server;    /* base URL, no trailing slash: "http://127.0.0.1:8080" */
  const char *token;     /* bearer token with scope "worker" */
  const char *device;    /* "cpu", "cuda:0" */
  const char *cache_dir; /* inputs by SHA-256, job folders; absolute */
  double cache_max_bytes; /* inputs kept at most (least recently used go first); 0 = no limit */
  char name[256];        /* "host:pid:device" unless --name */
  char lathe_bin[4096];  /* the `lathe` beside lathe-worker */
  double grace_s;        /* SIGTERM → SIGKILL delay for a cancelled or abandoned job */
  int wait_s;            /* long-poll wait per claim (max 30) */
} wk_config;

/* Set by the worker's SIGTERM/SIGINT handler: finish the current job's bookkeeping, stop
 * claiming, exit 0. */
extern volatile sig_atomic_t wk_shutdown;

/* ---- HTTP (worker_http.c) ---- */

typedef struct wk_http wk_http;

typedef struct wk_resp {
  long status;       /* HTTP status; 0 when the request never got an answer */
  char *body;        /* NUL-terminated, owned; NULL when empty */
  size_t len;
  char error[256];   /* transport error when status is 0 */
} wk_resp;

wk_http *wk_http_open(const wk_config *c);
void wk_http_close(wk_http *h);
void wk_resp_free(wk_resp *r);
/* JSON request (body may be NULL) to server + path; the response body is kept in r. Returns 0
 * when an HTTP answer came back (any status), -1 on a transport failure (r->error says why).
 * timeout_s bounds the whole exchange; a pending wk_shutdown aborts it when abortable. */
int wk_http_json(wk_http *h, const char *method, const char *path, const cJSON *body,
                 long timeout_s, int abortable, wk_resp *r);
/* GET path into the open file fd, hashing as it goes; sha256_hex gets 64 hex digits + NUL. */
int wk_http_download(wk_http *h, const char *path, int fd, char sha256_hex[65], wk_resp *r);
/* PUT the file at file_path as the raw body. */
int wk_http_upload(wk_http *h, const char *path, const char *file_path, wk_resp *r);
/* Percent-encodes s for a query string; the result is malloc'd. */
char *wk_http_escape(wk_http *h, const char *s);

/* SHA-256 of a file as 64 lowercase hex digits; -1 when it cannot be read. */
int wk_sha256_file(const char *path, char out[65]);

/* ---- input cache (worker_cache.c) ---- */

/* Makes the upload `id` ("mdl_…"/"ds_…") available at a local path (cache_dir/files/<sha256>),
 * downloading it when absent or when the cached copy does not hash to the server's SHA-256.
 * 0 with path filled; 2 when the server says the upload does not exist (the job is bad);
 * 3 on a transport or disk failure (retryable), with why filled. */
int wk_cache_fetch(const wk_config *c, wk_http *h, const char *file_kind, const char *id,
                   char *path, size_t pathcap, char *why, size_t whycap);

/* Deletes the least recently used inputs until the cache holds at most cache_max_bytes, never
 * one of the paths in keep (the {"id": "/path"} map of the job about to run). */
void wk_cache_trim(const wk_config *c, const cJSON *keep);

/* Removes downloads that a killed worker left half done (.partial-* not written to for ten
 * minutes); a download in progress keeps its file's mtime fresh. */
void wk_cache_sweep(const wk_config *c);

/* ---- one job (worker_job.c) ---- */

/* Runs one claimed job to its end: inputs, child, events, heartbeats, artifacts, complete.
 * claim is the 200 body of /workers/claim. Never exits the process. */
void wk_job_serve(const wk_config *c, wk_http *h, const cJSON *claim);

/* Capped exponential backoff for calls that ride out a server restart: *next starts at 0.5;
 * returns the delay to wait now and doubles *next, up to 30 s. */
double wk_backoff_step(double *next);

/* Sleeps up to seconds, returning early on wk_shutdown. */
void wk_sleep(double seconds);
double wk_now(void);

#endif
