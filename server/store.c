/* server/store.c — content-addressed blobs, file rows and the inspect child (see store.h). */
#define _GNU_SOURCE /* mkostemp, pipe2 */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

struct store_upload {
  store *s;
  int fd;              /* the temp file, open for writing; -1 once closed */
  char tmp[1100];      /* DATA/tmp/up-XXXXXX; "" once renamed or removed */
  EVP_MD_CTX *sha;     /* running SHA-256 of the bytes written */
  int64_t size;
  char sha256[65];     /* hex, set by finish */
  int finished;
};

static int store_mkdir(const char *path, srv_err *e) {
  if (mkdir(path, 0750) != 0 && errno != EEXIST)
    return srv_err_set(e, 500, "internal", "cannot create %s: %s", path, strerror(errno));
  return 0;
}

int store_init(store *s, const char *root, srv_err *e) {
  char path[1100];
  snprintf(s->root, sizeof s->root, "%s", root);
  pthread_mutex_init(&s->mu, NULL);
  pthread_mutex_init(&s->inspect_mu, NULL);
  pthread_cond_init(&s->inspect_free, NULL);
  s->inspect_running = 0;
  if (store_mkdir(root, e) != 0) return -1;
  snprintf(path, sizeof path, "%s/tmp", root);
  if (store_mkdir(path, e) != 0) return -1;
  snprintf(path, sizeof path, "%s/store", root);
  return store_mkdir(path, e);
}

void store_blob_path(const store *s, const char *sha256, char *out, size_t n) {
  snprintf(out, n, "%s/store/%.2s/%s", s->root, sha256, sha256);
}

static int store_blob_referenced(db_conn *db, const char *sha256) {
  srv_err e = {0};
  sqlite3_stmt *st = db_stmt(db, "SELECT 1 FROM files WHERE sha256 = ?1 LIMIT 1", &e);
  if (!st) return 1; /* when unsure, keep the blob */
  sqlite3_bind_text(st, 1, sha256, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc != SQLITE_DONE;
}

int store_sweep(store *s, db_conn *db) {
  int removed = 0;
  char path[2200];
  snprintf(path, sizeof path, "%s/tmp", s->root);
  DIR *d = opendir(path);
  struct dirent *de;
  while (d && (de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    snprintf(path, sizeof path, "%s/tmp/%s", s->root, de->d_name);
    if (unlink(path) == 0) removed++;
  }
  if (d) closedir(d);
  snprintf(path, sizeof path, "%s/store", s->root);
  DIR *top = opendir(path);
  while (top && (de = readdir(top))) {
    if (de->d_name[0] == '.' || strlen(de->d_name) != 2) continue;
    char sub[1200];
    snprintf(sub, sizeof sub, "%s/store/%.2s", s->root, de->d_name);
    DIR *sd = opendir(sub);
    struct dirent *be;
    while (sd && (be = readdir(sd))) {
      if (be->d_name[0] == '.') continue;
      if (strlen(be->d_name) == 64 && store_blob_referenced(db, be->d_name)) continue;
      snprintf(path, sizeof path, "%s/%s", sub, be->d_name);
      if (unlink(path) == 0) removed++;
    }
    if (sd) closedir(sd);
  }
  if (top) closedir(top);
  return removed;
}

store_upload *store_upload_begin(store *s, srv_err *e) {
  store_upload *up = calloc(1, sizeof *up);
  if (!up) {
    srv_err_set(e, 500, "internal", "out of memory");
    return NULL;
  }
  up->s = s;
  snprintf(up->tmp, sizeof up->tmp, "%s/tmp/up-XXXXXX", s->root);
  up->fd = mkostemp(up->tmp, O_CLOEXEC);
  up->sha = EVP_MD_CTX_new();
  if (up->fd < 0 || !up->sha || EVP_DigestInit_ex(up->sha, EVP_sha256(), NULL) != 1) {
    srv_err_set(e, 500, "internal", "cannot create a temp file in %s/tmp: %s", s->root,
                strerror(errno));
    if (up->fd < 0) up->tmp[0] = '\0';
    store_upload_free(up);
    return NULL;
  }
  return up;
}

int store_upload_write(store_upload *up, const void *data, size_t n, srv_err *e) {
  const char *p = data;
  EVP_DigestUpdate(up->sha, data, n);
  up->size += (int64_t)n;
  while (n > 0) {
    ssize_t w = write(up->fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      return srv_err_set(e, err == ENOSPC ? 507 : 500, err == ENOSPC ? "insufficient_storage" : "internal",
                         "writing the upload failed: %s", strerror(err));
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

int64_t store_upload_size(const store_upload *up) { return up->size; }

int store_upload_finish(store_upload *up, srv_err *e) {
  unsigned char md[32];
  unsigned int len = 0;
  EVP_DigestFinal_ex(up->sha, md, &len);
  util_hex(md, 32, up->sha256);
  if (fsync(up->fd) != 0) return srv_err_set(e, 500, "internal", "fsync failed: %s", strerror(errno));
  close(up->fd);
  up->fd = -1;
  up->finished = 1;
  return 0;
}

/* ---- inspect child ----------------------------------------------------------------------- */

#define STORE_INSPECT_OUT_MAX (8 << 20) /* summary JSON */
#define STORE_INSPECT_ERR_MAX 4096      /* stderr kept for the refusal message */

/* Runs `cli inspect path` with rlimits and a wall deadline. Returns the exit status (>= 0), -2
 * when killed on timeout or by a signal, -1 when it could not start. out/err are NUL-terminated
 * and owned by the caller. */
static int store_inspect_run(const store *s, const char *path, char **out, char *err,
                             size_t err_cap) {
  int po[2], pe[2];
  *out = NULL;
  err[0] = '\0';
  if (pipe2(po, O_CLOEXEC) != 0) return -1;
  if (pipe2(pe, O_CLOEXEC) != 0) {
    close(po[0]);
    close(po[1]);
    return -1;
  }
  char *const argv[] = {(char *)s->cli, "inspect", (char *)path, NULL};
  pid_t pid = fork();
  if (pid == 0) {
    /* Child: only async-signal-safe calls until exec (the parent has threads). */
    setpgid(0, 0);
    if (s->inspect_mem_bytes > 0) {
      struct rlimit as = {(rlim_t)s->inspect_mem_bytes, (rlim_t)s->inspect_mem_bytes};
      setrlimit(RLIMIT_AS, &as);
    }
    struct rlimit cpu = {(rlim_t)s->inspect_cpu_s, (rlim_t)s->inspect_cpu_s + 1};
    setrlimit(RLIMIT_CPU, &cpu);
    struct rlimit core = {0, 0};
    setrlimit(RLIMIT_CORE, &core);
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull >= 0) dup2(devnull, 0);
    dup2(po[1], 1);
    dup2(pe[1], 2);
    execv(s->cli, argv);
    _exit(127);
  }
  close(po[1]);
  close(pe[1]);
  if (pid < 0) {
    close(po[0]);
    close(pe[0]);
    return -1;
  }
  size_t n_out = 0, cap = 65536, n_err = 0;
  char *buf = malloc(cap);
  int open_fds = 2, killed = 0;
  int64_t deadline = util_now_ms() + s->inspect_timeout_ms;
  struct pollfd fds[2] = {{po[0], POLLIN, 0}, {pe[0], POLLIN, 0}};
  while (open_fds > 0) {
    int64_t left = deadline - util_now_ms();
    if (left <= 0 || !buf) {
      kill(-pid, SIGKILL);
      killed = 1;
      break;
    }
    int r = poll(fds, 2, (int)left);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) break;
    for (int i = 0; i < 2; i++) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char chunk[16384];
      ssize_t got = read(fds[i].fd, chunk, sizeof chunk);
      if (got <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        open_fds--;
        continue;
      }
      if (i == 0) {
        if (n_out + (size_t)got + 1 > STORE_INSPECT_OUT_MAX) {
          kill(-pid, SIGKILL); /* a summary this large is itself a refusal */
          killed = 1;
          open_fds = 0;
          break;
        }
        if (n_out + (size_t)got + 1 > cap) {
          while (n_out + (size_t)got + 1 > cap) cap *= 2;
          char *grown = realloc(buf, cap);
          if (!grown) {
            free(buf);
            buf = NULL;
            break;
          }
          buf = grown;
        }
        memcpy(buf + n_out, chunk, (size_t)got);
        n_out += (size_t)got;
      } else {
        size_t take = (size_t)got;
        if (n_err + take + 1 > err_cap) take = err_cap - n_err - 1;
        memcpy(err + n_err, chunk, take);
        n_err += take;
        err[n_err] = '\0';
      }
    }
  }
  for (int i = 0; i < 2; i++)
    if (fds[i].fd >= 0) close(fds[i].fd);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (buf) buf[n_out] = '\0';
  *out = buf;
  if (killed || !WIFEXITED(status)) return -2;
  return WEXITSTATUS(status);
}

/* HDF5 puts its signature at 0, 512, 1024, 2048, … (a user block may precede it). */
static int store_looks_hdf5(const char *path) {
  static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  int found = 0;
  for (off_t off = 0; off <= (1 << 20) && !found; off = off ? off * 2 : 512) {
    unsigned char head[8];
    if (pread(fd, head, 8, off) != 8) break;
    found = memcmp(head, sig, 8) == 0;
  }
  close(fd);
  return found;
}

/* First line of the child's stderr, for a refusal message. */
static void store_first_line(char *s) {
  char *nl = strchr(s, '\n');
  if (nl) *nl = '\0';
}

cJSON *store_upload_inspect(store *s, store_upload *up, const char *kind, srv_err *e) {
  if (strcmp(kind, "dataset") == 0 && !store_looks_hdf5(up->tmp)) {
    srv_err_set(e, 415, "unsupported_file",
                "the upload is not an HDF5 file; datasets are HDF5 with /train and /test groups "
                "(convert with lathe data …)");
    return NULL;
  }
  if (access(s->cli, X_OK) != 0) {
    srv_err_set(e, 503, "inspector_unavailable",
                "cannot run %s to check the upload; install lathe beside lathe-server or set "
                "LATHE_CLI",
                s->cli);
    return NULL;
  }
  char *out = NULL, err[STORE_INSPECT_ERR_MAX];
  pthread_mutex_lock(&s->inspect_mu);
  while (s->inspect_running >= STORE_INSPECT_PARALLEL)
    pthread_cond_wait(&s->inspect_free, &s->inspect_mu);
  s->inspect_running++;
  pthread_mutex_unlock(&s->inspect_mu);
  int rc = store_inspect_run(s, up->tmp, &out, err, sizeof err);
  pthread_mutex_lock(&s->inspect_mu);
  s->inspect_running--;
  pthread_cond_signal(&s->inspect_free);
  pthread_mutex_unlock(&s->inspect_mu);
  cJSON *summary = NULL;
  if (rc == 0 && out && util_json_depth(out, strlen(out)) <= 64) summary = cJSON_Parse(out);
  free(out);
  if (cJSON_IsObject(summary)) return summary;
  cJSON_Delete(summary);
  store_first_line(err);
  if (rc == -1)
    srv_err_set(e, 503, "inspector_unavailable", "cannot start %s: %s", s->cli, strerror(errno));
  else if (rc == -2)
    srv_err_set(e, 400, "invalid_file",
                "checking the %s took longer than %lld ms or more memory than allowed; the file "
                "was refused",
                kind, (long long)s->inspect_timeout_ms);
  else if (rc == 0)
    srv_err_set(e, 500, "internal", "lathe inspect printed something that is not a JSON object");
  else if (strcmp(kind, "model") == 0)
    srv_err_set(e, 415, "unsupported_file", "the model was refused: %s",
                err[0] ? err : "lathe inspect cannot read it (expected ONNX)");
  else
    srv_err_set(e, 400, "invalid_file", "the dataset was refused: %s",
                err[0] ? err : "lathe inspect cannot read it");
  return NULL;
}

/* ---- rows -------------------------------------------------------------------------------- */

#define FILE_COLS "id, kind, name, sha256, size, summary, job_id, attempt, created_at, rowid"

static cJSON *store_file_from_row(sqlite3_stmt *st) {
  cJSON *o = cJSON_CreateObject();
  const char *kind = (const char *)sqlite3_column_text(st, 1);
  cJSON_AddStringToObject(o, "id", (const char *)sqlite3_column_text(st, 0));
  cJSON_AddStringToObject(o, "name", (const char *)sqlite3_column_text(st, 2));
  cJSON_AddStringToObject(o, "sha256", (const char *)sqlite3_column_text(st, 3));
  cJSON_AddNumberToObject(o, "size", (double)sqlite3_column_int64(st, 4));
  if (strcmp(kind, "artifact") == 0) {
    cJSON_AddStringToObject(o, "job", (const char *)sqlite3_column_text(st, 6));
    cJSON_AddNumberToObject(o, "attempt", (double)sqlite3_column_int64(st, 7));
  } else {
    const char *summary = (const char *)sqlite3_column_text(st, 5);
    cJSON *v = summary ? cJSON_Parse(summary) : NULL;
    if (v) cJSON_AddItemToObject(o, "summary", v);
    else cJSON_AddNullToObject(o, "summary");
  }
  util_json_add_time(o, "created_at", sqlite3_column_int64(st, 8));
  return o;
}

cJSON *store_upload_commit(store *s, db_conn *db, store_upload *up, const store_meta *meta,
                           const cJSON *summary, srv_err *e) {
  static const char *const prefixes[][2] = {{"model", "mdl_"}, {"dataset", "ds_"},
                                            {"artifact", "art_"}};
  const char *prefix = "art_";
  for (int i = 0; i < 3; i++)
    if (strcmp(meta->kind, prefixes[i][0]) == 0) prefix = prefixes[i][1];
  char id[UTIL_ID_LEN], dir[1200], dst[1300];
  if (util_id_new(prefix, id) != 0) {
    srv_err_set(e, 500, "internal", "the kernel random source failed");
    return NULL;
  }
  snprintf(dir, sizeof dir, "%s/store/%.2s", s->root, up->sha256);
  store_blob_path(s, up->sha256, dst, sizeof dst);
  char *summary_text = summary ? cJSON_PrintUnformatted(summary) : NULL;
  cJSON *file = NULL;
  pthread_mutex_lock(&s->mu);
  if (store_mkdir(dir, e) == 0) {
    if (rename(up->tmp, dst) != 0) {
      srv_err_set(e, 500, "internal", "cannot move the upload into %s: %s", dst, strerror(errno));
    } else {
      up->tmp[0] = '\0';
      int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (dfd >= 0) {
        fsync(dfd); /* the rename must be durable before the row that names the blob */
        close(dfd);
      }
      if (db_begin(db, e) == 0) {
        sqlite3_stmt *del = NULL;
        /* An artifact re-uploaded under the same name in the same job replaces the older one. */
        if (strcmp(meta->kind, "artifact") == 0 &&
            (del = db_stmt(db, "DELETE FROM files WHERE kind = 'artifact' AND job_id = ?1 AND name = ?2",
                           e))) {
          sqlite3_bind_text(del, 1, meta->job_id, -1, SQLITE_STATIC);
          sqlite3_bind_text(del, 2, meta->name, -1, SQLITE_STATIC);
          sqlite3_step(del);
          sqlite3_reset(del);
        }
        sqlite3_stmt *st = db_stmt(db,
                                   "INSERT INTO files (id, kind, name, sha256, size, summary, "
                                   "job_id, attempt, owner, created_at) VALUES (?1, ?2, ?3, ?4, "
                                   "?5, ?6, ?7, ?8, ?9, ?10) RETURNING " FILE_COLS,
                                   e);
        if (st) {
          sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
          sqlite3_bind_text(st, 2, meta->kind, -1, SQLITE_STATIC);
          sqlite3_bind_text(st, 3, meta->name, -1, SQLITE_STATIC);
          sqlite3_bind_text(st, 4, up->sha256, -1, SQLITE_STATIC);
          sqlite3_bind_int64(st, 5, up->size);
          if (summary_text) sqlite3_bind_text(st, 6, summary_text, -1, SQLITE_STATIC);
          if (meta->job_id) {
            sqlite3_bind_text(st, 7, meta->job_id, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 8, meta->attempt);
          }
          if (meta->owner) sqlite3_bind_text(st, 9, meta->owner, -1, SQLITE_STATIC);
          sqlite3_bind_int64(st, 10, util_now_ms());
          if (sqlite3_step(st) == SQLITE_ROW) file = store_file_from_row(st);
          else DB_FAIL(db, e);
          sqlite3_reset(st);
        }
        if (file && db_commit(db, e) != 0) {
          cJSON_Delete(file);
          file = NULL;
        }
        if (!file) db_rollback(db);
      }
      if (!file && !store_blob_referenced(db, up->sha256)) unlink(dst);
    }
  }
  pthread_mutex_unlock(&s->mu);
  free(summary_text);
  return file;
}

void store_upload_free(store_upload *up) {
  if (!up) return;
  if (up->fd >= 0) close(up->fd);
  if (up->tmp[0]) unlink(up->tmp);
  EVP_MD_CTX_free(up->sha);
  free(up);
}

cJSON *store_file_get(db_conn *db, const char *kind, const char *id, char sha256_out[65],
                      srv_err *e) {
  sqlite3_stmt *st = db_stmt(db, "SELECT " FILE_COLS " FROM files WHERE id = ?1 AND kind = ?2", e);
  if (!st) return NULL;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, kind, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  cJSON *f = NULL;
  if (rc == SQLITE_ROW) {
    f = store_file_from_row(st);
    if (sha256_out) snprintf(sha256_out, 65, "%s", (const char *)sqlite3_column_text(st, 3));
  }
  sqlite3_reset(st);
  if (rc == SQLITE_DONE) srv_err_set(e, 404, "not_found", "no %s %s", kind, id);
  else if (rc != SQLITE_ROW) DB_FAIL(db, e);
  return f;
}

int store_file_exists(db_conn *db, const char *kind, const char *id, srv_err *e) {
  sqlite3_stmt *st = db_stmt(db, "SELECT 1 FROM files WHERE id = ?1 AND kind = ?2", e);
  if (!st) return -1;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, kind, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc == SQLITE_ROW) return 1;
  if (rc == SQLITE_DONE) return 0;
  return DB_FAIL(db, e);
}

cJSON *store_file_list(db_conn *db, const char *kind, const char *job_id, int limit,
                       const char *page_token, srv_err *e) {
  int64_t before = INT64_MAX;
  if (page_token && util_page_token_decode(page_token, &before) != 0) {
    srv_err_set(e, 400, "invalid_page_token", "page_token is not one this server issued");
    return NULL;
  }
  sqlite3_stmt *st = db_stmt(db,
                             "SELECT " FILE_COLS " FROM files WHERE kind = ?1 AND rowid < ?2 "
                             "AND (?3 IS NULL OR job_id = ?3) ORDER BY rowid DESC LIMIT ?4",
                             e);
  if (!st) return NULL;
  sqlite3_bind_text(st, 1, kind, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, before);
  if (job_id) sqlite3_bind_text(st, 3, job_id, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 4, limit + 1);
  return db_page_collect(db, st, limit, store_file_from_row, 9, e);
}

/* 1 when a queued or running job's spec names id (or on error, with e set): deleting the file
 * would fail that job's download. Ids are 16 random hex digits, so a substring match is exact in
 * practice. */
static int store_file_in_use(db_conn *db, const char *id, srv_err *e) {
  sqlite3_stmt *st = db_stmt(db,
                             "SELECT 1 FROM jobs WHERE state IN ('queued', 'running') "
                             "AND instr(spec, ?1) > 0 LIMIT 1",
                             e);
  if (!st) return 1;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc == SQLITE_ROW) return 1;
  if (rc != SQLITE_DONE) {
    DB_FAIL(db, e);
    return 1;
  }
  return 0;
}

int store_file_delete(store *s, db_conn *db, const char *kind, const char *id, const char *owner,
                      srv_err *e) {
  pthread_mutex_lock(&s->mu);
  int ret = -1;
  if (db_begin(db, e) == 0) {
    sqlite3_stmt *st = db_stmt(db,
                               "DELETE FROM files WHERE id = ?1 AND kind = ?2 "
                               "RETURNING sha256, coalesce(owner, '')",
                               e);
    if (st) {
      sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
      sqlite3_bind_text(st, 2, kind, -1, SQLITE_STATIC);
      int rc = sqlite3_step(st);
      char sha[65] = "", row_owner[UTIL_ID_LEN] = "";
      if (rc == SQLITE_ROW) {
        snprintf(sha, sizeof sha, "%s", (const char *)sqlite3_column_text(st, 0));
        snprintf(row_owner, sizeof row_owner, "%s", (const char *)sqlite3_column_text(st, 1));
      }
      sqlite3_reset(st);
      if (rc == SQLITE_DONE) srv_err_set(e, 404, "not_found", "no %s %s", kind, id);
      else if (rc != SQLITE_ROW) DB_FAIL(db, e);
      else if (owner && strcmp(owner, row_owner) != 0)
        srv_err_set(e, 403, "forbidden", "%s %s was uploaded by another token; ask an admin", kind,
                    id);
      else if (store_file_in_use(db, id, e))
        srv_err_set(e, 409, "file_in_use",
                    "%s %s is named by a queued or running job; cancel the job or wait for it", kind,
                    id);
      else if (db_commit(db, e) == 0) {
        ret = 0;
        if (!store_blob_referenced(db, sha)) {
          char path[1300];
          store_blob_path(s, sha, path, sizeof path);
          unlink(path);
        }
      }
    }
    if (ret != 0) db_rollback(db);
  }
  pthread_mutex_unlock(&s->mu);
  return ret;
}
