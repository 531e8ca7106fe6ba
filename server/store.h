/* server/store.h — the content-addressed file store and the `files` rows that name its blobs
 * (uploaded models and datasets, job artifacts), plus the `lathe inspect` check of uploads.
 *
 *   store_upload *up = store_upload_begin(st, &e);          // DATA/tmp/up-XXXXXX
 *   store_upload_write(up, chunk, n, &e);                  // SHA-256 as the bytes arrive
 *   store_upload_finish(up, &e);                           // fsync
 *   cJSON *f = store_upload_commit(st, db, up, &meta, &e); // rename to DATA/store/ab/ab…, row
 *   store_upload_free(up);                                 // unlinks the temp file if still there
 *
 * A blob is renamed into place before its row is inserted, so a crash leaves at most an
 * unreferenced blob, which store_sweep removes at start (with every temp file). Not for:
 * deciding who may upload (the routes do).
 */
#ifndef LATHE_SERVER_STORE_H
#define LATHE_SERVER_STORE_H

#include <pthread.h>
#include <stdint.h>

#include "db.h"

typedef struct store {
  char root[1024];       /* DATA */
  char cli[1024];        /* the `lathe` binary that runs `lathe inspect` */
  int64_t inspect_timeout_ms;
  int64_t inspect_mem_bytes; /* RLIMIT_AS of the child; 0 = no limit */
  int64_t inspect_cpu_s;
  pthread_mutex_t mu;    /* orders blob rename+insert against delete+unlink */
  /* At most STORE_INSPECT_PARALLEL inspect children at once, so a burst of uploads cannot fork
   * a child per connection; later uploads wait their turn. */
  pthread_mutex_t inspect_mu;
  pthread_cond_t inspect_free;
  int inspect_running;   /* guarded by inspect_mu */
} store;

#define STORE_INSPECT_PARALLEL 2

typedef struct store_upload store_upload;

typedef struct store_meta {
  const char *kind;  /* "model", "dataset", "artifact" */
  const char *name;  /* the client's file name (validated by the caller) */
  const char *owner; /* tok_… or NULL */
  const char *job_id;
  int64_t attempt;
} store_meta;

/* Creates DATA/tmp and DATA/store; 0 or -1. */
int store_init(store *s, const char *root, srv_err *e);
/* Removes temp files and blobs no row names (leftovers of a crash). Returns how many. */
int store_sweep(store *s, db_conn *db);

store_upload *store_upload_begin(store *s, srv_err *e);
int store_upload_write(store_upload *up, const void *data, size_t n, srv_err *e);
int64_t store_upload_size(const store_upload *up);
int store_upload_finish(store_upload *up, srv_err *e);
/* Runs `lathe inspect` on the finished temp file (models and datasets): the summary JSON, or
 * NULL with e = 400/415 (the file is refused) or 503 (the checker is missing). */
cJSON *store_upload_inspect(store *s, store_upload *up, const char *kind, srv_err *e);
/* Moves the blob into place and inserts the row; the file object, or NULL with e. */
cJSON *store_upload_commit(store *s, db_conn *db, store_upload *up, const store_meta *meta,
                           const cJSON *summary, srv_err *e);
void store_upload_free(store_upload *up); /* accepts NULL; removes an uncommitted temp file */

/* Path of a blob by sha256 into out (size n). */
void store_blob_path(const store *s, const char *sha256, char *out, size_t n);

/* Rows. kind is "model", "dataset" or "artifact"; ids are checked by the caller. */
cJSON *store_file_get(db_conn *db, const char *kind, const char *id, char sha256_out[65],
                      srv_err *e);
/* {"items", "next_page_token"} newest first; job_id filters artifacts (may be NULL). */
cJSON *store_file_list(db_conn *db, const char *kind, const char *job_id, int limit,
                       const char *page_token, srv_err *e);
/* Deletes a row (owner must match unless owner is NULL = admin) and its blob when unused. */
int store_file_delete(store *s, db_conn *db, const char *kind, const char *id, const char *owner,
                      srv_err *e);
/* 1 when a file of that kind and id exists, 0 when not, -1 on error. */
int store_file_exists(db_conn *db, const char *kind, const char *id, srv_err *e);

#endif
