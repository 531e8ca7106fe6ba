/* workers/worker_job.c — lathe-worker's supervisor for one claimed job.
 *
 * The job runs as `lathe run job.json --out DIR` (under `mpirun -np N` when the spec asks for
 * ranks > 1) in its own process group, so a cancel reaches every process of it and a crash or an
 * OOM kill of the job never takes the worker down. The supervisor relays the child's JSON-lines
 * events in batches, keeps the last lines of its stderr for the failure report, and a separate
 * thread renews the lease: if the server answers 409 (the attempt is stale: the lease expired
 * and the job went to another worker) the child is killed and the job dropped without a report;
 * if it says cancel, the group gets SIGTERM and, after the grace period, SIGKILL.
 *
 * Every call to the server rides out a restart: transport failures and 5xx answers are retried
 * with capped exponential backoff, and events wait in memory (bounded) until they can be sent.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "job.h"
#include "spec.h"
#include "worker.h"

enum {
  WK_EVENTS_BATCH = 200,     /* events per POST */
  WK_EVENTS_MAX = 20000,     /* pending events kept while the server is unreachable */
  WK_LINE_MAX = 1 << 20,     /* longest event line accepted from the child */
  WK_TAIL_LINES = 20,        /* stderr lines kept for the failure report */
  WK_TAIL_LINE_BYTES = 400
};

#define WK_FLUSH_S 0.5 /* events are sent at most this often */

typedef struct wk_job {
  const wk_config *c;
  wk_http *h;
  char id[64];
  int attempt;
  char kind[64];
  char dir[4096]; /* cache_dir/jobs/<id>-<attempt> */
  double heartbeat_s;

  /* shared with the heartbeat thread, under mu */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int hb_stop;
  int cancel; /* the server asked to cancel */
  int stale;  /* the attempt is no longer ours */

  pid_t pid; /* the child's pid = its process group */
  cJSON *pending;   /* events not yet sent */
  long dropped;     /* events dropped because pending was full */
  cJSON *result;    /* summary of the result event */
  cJSON *artifacts; /* [{name, path}] */
  char error[2048]; /* message of the error event */
  int have_error, error_retryable;
  char tail[WK_TAIL_LINES][WK_TAIL_LINE_BYTES];
  int tail_next, tail_count;
} wk_job;

static void wk_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void wk_log(const char *fmt, ...) {
  char ts[32];
  time_t t = time(NULL);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s lathe-worker: ", ts);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

double wk_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

double wk_backoff_step(double *next) {
  double now = *next;
  *next = now * 2 > 30 ? 30 : now * 2;
  return now;
}

void wk_sleep(double seconds) {
  double end = wk_now() + seconds;
  while (!wk_shutdown) {
    double left = end - wk_now();
    if (left <= 0) return;
    if (left > 0.1) left = 0.1;
    struct timespec ts = {0, (long)(left * 1e9)};
    nanosleep(&ts, NULL);
  }
}

static int wk_job_is_stale(wk_job *j) {
  pthread_mutex_lock(&j->mu);
  int s = j->stale;
  pthread_mutex_unlock(&j->mu);
  return s;
}

static void wk_job_set_stale(wk_job *j) {
  pthread_mutex_lock(&j->mu);
  j->stale = 1;
  pthread_mutex_unlock(&j->mu);
}

/* ---- heartbeats ---- */

/* "2026-11-26T13:20:00.123Z" → seconds from now (wall clock); -1 when unparsable. */
static double wk_lease_left(const char *rfc3339) {
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  if (!rfc3339 || sscanf(rfc3339, "%4d-%2d-%2dT%2d:%2d:%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                         &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6)
    return -1;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return difftime(timegm(&tm), time(NULL));
}

static void *wk_heartbeat_main(void *arg) {
  wk_job *j = arg;
  wk_http *h = wk_http_open(j->c);
  cJSON *body = cJSON_CreateObject();
  cJSON_AddStringToObject(body, "job", j->id);
  cJSON_AddNumberToObject(body, "attempt", j->attempt);
  pthread_mutex_lock(&j->mu);
  while (!j->hb_stop) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    double at = until.tv_sec + until.tv_nsec * 1e-9 + j->heartbeat_s;
    until.tv_sec = (time_t)at;
    until.tv_nsec = (long)((at - (double)until.tv_sec) * 1e9);
    while (!j->hb_stop && pthread_cond_timedwait(&j->cv, &j->mu, &until) != ETIMEDOUT) {
    }
    if (j->hb_stop || !h) break;
    pthread_mutex_unlock(&j->mu);
    wk_resp r;
    int rc = wk_http_json(h, "POST", "/api/v1/workers/heartbeat", body, 10, 0, &r);
    cJSON *answer = rc == 0 && r.status == 200 && r.body ? cJSON_Parse(r.body) : NULL;
    pthread_mutex_lock(&j->mu);
    if (rc != 0) {
      wk_log("job %s: heartbeat failed (%s); the lease runs on until the server is back", j->id, r.error);
    } else if (r.status == 409) {
      j->stale = 1;
    } else if (r.status == 200) {
      if (cJSON_IsTrue(cJSON_GetObjectItem(answer, "cancel"))) j->cancel = 1;
      double left = wk_lease_left(cJSON_GetStringValue(cJSON_GetObjectItem(answer, "lease_until")));
      if (left > 0 && left / 3 < j->heartbeat_s) j->heartbeat_s = left / 3 < 0.5 ? 0.5 : left / 3;
    } else {
      wk_log("job %s: heartbeat answered %ld", j->id, r.status);
    }
    cJSON_Delete(answer);
    wk_resp_free(&r);
    if (j->stale) break;
  }
  pthread_mutex_unlock(&j->mu);
  cJSON_Delete(body);
  wk_http_close(h);
  return NULL;
}

/* ---- events ---- */

static void wk_job_queue(wk_job *j, cJSON *event) {
  if (cJSON_GetArraySize(j->pending) >= WK_EVENTS_MAX) {
    cJSON_DeleteItemFromArray(j->pending, 0);
    j->dropped++;
  }
  cJSON_AddItemToArray(j->pending, event);
}

static void wk_job_queue_log(wk_job *j, const char *level, const char *message) {
  cJSON *e = cJSON_CreateObject();
  cJSON_AddStringToObject(e, "type", "log");
  cJSON_AddStringToObject(e, "level", level);
  cJSON_AddStringToObject(e, "message", message);
  wk_job_queue(j, e);
}

/* Puts batch (owned) back in front of the pending events, in order. */
static void wk_job_requeue_front(wk_job *j, cJSON *batch) {
  cJSON *rest = j->pending;
  j->pending = batch;
  while (cJSON_GetArraySize(rest) > 0) wk_job_queue(j, cJSON_DetachItemFromArray(rest, 0));
  cJSON_Delete(rest);
}

/* POSTs one batch (owned). 0 when delivered or dropped (stale attempt, refused event), -1 when
 * the server could not take it now: the batch is back in front of the pending events. */
static int wk_job_send(wk_job *j, cJSON *batch) {
  cJSON *body = cJSON_CreateObject();
  cJSON_AddStringToObject(body, "job", j->id);
  cJSON_AddNumberToObject(body, "attempt", j->attempt);
  cJSON_AddItemToObject(body, "events", batch);
  wk_resp r;
  int rc = wk_http_json(j->h, "POST", "/api/v1/workers/events", body, 30, 0, &r);
  long status = r.status;
  wk_resp_free(&r);
  batch = cJSON_DetachItemFromObject(body, "events");
  cJSON_Delete(body);
  if (rc == 0 && status == 409) {
    wk_job_set_stale(j);
  } else if (rc != 0 || status >= 500) {
    wk_job_requeue_front(j, batch);
    return -1;
  } else if (status >= 400 && cJSON_GetArraySize(batch) > 1) {
    /* one malformed event (a NaN metric, say) must not lose the batch: send the events one by
     * one, so only the refused ones are dropped */
    while (cJSON_GetArraySize(batch) > 0) {
      cJSON *one = cJSON_CreateArray();
      cJSON_AddItemToArray(one, cJSON_DetachItemFromArray(batch, 0));
      if (wk_job_send(j, one) != 0) {
        /* `one` is back in front; the rest of the batch goes right after it */
        cJSON *first = cJSON_DetachItemFromArray(j->pending, 0);
        cJSON_InsertItemInArray(batch, 0, first);
        wk_job_requeue_front(j, batch);
        return -1;
      }
    }
  } else if (status >= 400) {
    char *text = cJSON_PrintUnformatted(batch);
    wk_log("job %s: the server refused an event (HTTP %ld); dropped: %.200s", j->id, status,
           text ? text : "");
    free(text);
  }
  cJSON_Delete(batch);
  return 0;
}

/* Sends pending events in batches. 0 when all were sent (or dropped as stale), -1 when the
 * server could not be reached (they stay pending). */
static int wk_job_flush(wk_job *j) {
  if (j->dropped) {
    char msg[128];
    snprintf(msg, sizeof msg, "%ld events were dropped while the server was unreachable", j->dropped);
    j->dropped = 0;
    wk_job_queue_log(j, "warn", msg);
  }
  while (cJSON_GetArraySize(j->pending) > 0 && !wk_job_is_stale(j)) {
    cJSON *batch = cJSON_CreateArray();
    for (int i = 0; i < WK_EVENTS_BATCH && cJSON_GetArraySize(j->pending) > 0; i++)
      cJSON_AddItemToArray(batch, cJSON_DetachItemFromArray(j->pending, 0));
    if (wk_job_send(j, batch) != 0) return -1;
  }
  return 0;
}

/* One line of the child's stdout: an event object, or (anything else) relayed as a log line. */
static void wk_job_take_line(wk_job *j, const char *line, size_t len) {
  if (len == 0) return;
  cJSON *e = cJSON_ParseWithLength(line, len);
  const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(e, "type"));
  if (!cJSON_IsObject(e) || !type) {
    cJSON_Delete(e);
    char msg[WK_TAIL_LINE_BYTES];
    snprintf(msg, sizeof msg, "%.*s", (int)(len < sizeof msg - 1 ? len : sizeof msg - 1), line);
    wk_job_queue_log(j, "info", msg);
    return;
  }
  if (!strcmp(type, "result")) {
    /* the result travels with /complete, not as an event (it can be large) */
    cJSON_Delete(j->result);
    j->result = cJSON_DetachItemFromObject(e, "summary");
    cJSON_Delete(e);
    return;
  }
  if (!strcmp(type, "error")) {
    snprintf(j->error, sizeof j->error, "%s", cJSON_GetStringValue(cJSON_GetObjectItem(e, "message")) ? cJSON_GetStringValue(cJSON_GetObjectItem(e, "message")) : "");
    j->have_error = 1;
    j->error_retryable = cJSON_IsTrue(cJSON_GetObjectItem(e, "retryable"));
  } else if (!strcmp(type, "artifact")) {
    /* uploaded after the job ends; the server logs the artifact event itself, with its id,
     * so the worker-local path is not relayed */
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(e, "name"));
    const char *path = cJSON_GetStringValue(cJSON_GetObjectItem(e, "path"));
    if (name && path) {
      cJSON *a = cJSON_CreateObject();
      cJSON_AddStringToObject(a, "name", name);
      cJSON_AddStringToObject(a, "path", path);
      cJSON_AddItemToArray(j->artifacts, a);
    }
    cJSON_Delete(e);
    return;
  }
  wk_job_queue(j, e);
}

static void wk_job_take_stderr(wk_job *j, const char *line, size_t len) {
  snprintf(j->tail[j->tail_next], WK_TAIL_LINE_BYTES, "%.*s",
           (int)(len < WK_TAIL_LINE_BYTES - 1 ? len : WK_TAIL_LINE_BYTES - 1), line);
  j->tail_next = (j->tail_next + 1) % WK_TAIL_LINES;
  if (j->tail_count < WK_TAIL_LINES) j->tail_count++;
  fprintf(stderr, "[%s] %.*s\n", j->id, (int)len, line);
}

/* A line splitter over a pipe: buffers partial lines, hands out whole ones. */
typedef struct wk_lines {
  int fd;
  char *buf;
  size_t len, cap;
  int overlong; /* discarding the rest of a line longer than WK_LINE_MAX */
} wk_lines;

/* Reads what is available; calls take per whole line. Returns 0 at EOF, 1 otherwise. */
static int wk_lines_read(wk_lines *l, wk_job *j, void (*take)(wk_job *, const char *, size_t)) {
  char chunk[65536];
  ssize_t n = read(l->fd, chunk, sizeof chunk);
  if (n < 0) return errno == EINTR || errno == EAGAIN ? 1 : 0;
  if (n == 0) {
    if (l->len && !l->overlong) take(j, l->buf, l->len);
    l->len = 0;
    return 0;
  }
  for (ssize_t i = 0; i < n; i++) {
    char ch = chunk[i];
    if (ch == '\n') {
      if (!l->overlong) take(j, l->buf, l->len);
      l->len = 0;
      l->overlong = 0;
      continue;
    }
    if (l->overlong) continue;
    if (l->len + 1 >= WK_LINE_MAX) {
      l->overlong = 1;
      l->len = 0;
      wk_job_queue_log(j, "warn", "the job printed a line longer than 1 MiB; it was dropped");
      continue;
    }
    if (l->len + 1 >= l->cap) {
      size_t cap = l->cap ? l->cap * 2 : 4096;
      char *b = realloc(l->buf, cap);
      if (!b) {
        l->overlong = 1;
        l->len = 0;
        continue;
      }
      l->buf = b;
      l->cap = cap;
    }
    l->buf[l->len++] = ch;
  }
  return 1;
}

/* ---- inputs and the job file ---- */

typedef struct wk_refs {
  wk_job *j;
  cJSON *files;
  int rc;
  char why[1024];
} wk_refs;

static int wk_job_fetch_ref(void *user, const char *file_kind, const char *ref, const char *path) {
  wk_refs *r = user;
  const char *prefix = !strcmp(file_kind, "model") ? "mdl_" : "ds_";
  /* the server hands out ids only; a path from the network is never read on this host */
  if (!job_ref_is_upload_id(ref, file_kind)) {
    snprintf(r->why, sizeof r->why, "%s must be a %s id (%s…), got \"%.64s\"", path, file_kind, prefix, ref);
    r->rc = JOB_EXIT_BAD_INPUT;
    return 1;
  }
  if (cJSON_GetObjectItemCaseSensitive(r->files, ref)) return 0;
  char local[4200];
  int rc = wk_cache_fetch(r->j->c, r->j->h, file_kind, ref, local, sizeof local, r->why, sizeof r->why);
  if (rc) {
    r->rc = rc;
    return 1;
  }
  cJSON_AddStringToObject(r->files, ref, local);
  return 0;
}

static int wk_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  return remove(path) == 0 ? 0 : 0; /* best effort: a leftover is harmless */
}

static void wk_rmtree(const char *dir) { nftw(dir, wk_rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* Writes the job file for `lathe run`: {"kind","spec","files","device"}. */
static int wk_job_write_file(wk_job *j, const cJSON *spec, cJSON *files, char *path, size_t cap) {
  snprintf(path, cap, "%s/job.json", j->dir);
  cJSON *doc = cJSON_CreateObject();
  cJSON_AddStringToObject(doc, "kind", j->kind);
  cJSON_AddItemToObject(doc, "spec", cJSON_Duplicate(spec, 1));
  cJSON_AddItemReferenceToObject(doc, "files", files);
  cJSON_AddStringToObject(doc, "device", j->c->device);
  char *text = cJSON_PrintUnformatted(doc);
  cJSON_Delete(doc);
  FILE *fp = text ? fopen(path, "w") : NULL;
  int ok = fp && fputs(text, fp) >= 0;
  if (fp && fclose(fp) != 0) ok = 0;
  free(text);
  return ok ? 0 : -1;
}

/* ---- the child ---- */

static pid_t wk_job_spawn(wk_job *j, const cJSON *spec, const char *job_file, const char *out_dir,
                          int *out_fd, int *err_fd) {
  int o[2], e[2];
  if (pipe2(o, O_CLOEXEC) != 0) return -1;
  if (pipe2(e, O_CLOEXEC) != 0) {
    close(o[0]);
    close(o[1]);
    return -1;
  }
  const cJSON *ranks = cJSON_GetObjectItem(spec, "ranks");
  int n = cJSON_IsNumber(ranks) ? (int)ranks->valuedouble : 1;
  char np[16];
  snprintf(np, sizeof np, "%d", n);
  const char *argv[16];
  int a = 0;
  if (n > 1) {
    argv[a++] = "mpirun";
    argv[a++] = "-np";
    argv[a++] = np;
    argv[a++] = "--oversubscribe";
    if (getuid() == 0) argv[a++] = "--allow-run-as-root";
  }
  argv[a++] = j->c->lathe_bin;
  argv[a++] = "run";
  argv[a++] = job_file;
  argv[a++] = "--out";
  argv[a++] = out_dir;
  argv[a] = NULL;
  pid_t pid = fork();
  if (pid == 0) {
    /* the child: its own process group, default signals, stdout/stderr to the pipes */
    setpgid(0, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    /* only async-signal-safe calls from here: the heartbeat thread may hold any lock */
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull >= 0) dup2(devnull, 0);
    dup2(o[1], 1);
    dup2(e[1], 2);
    close_range(3, ~0u, 0); /* the worker's sockets and files are not the job's business */
    if (chdir(j->dir) != 0) _exit(127);
    execvp(argv[0], (char *const *)argv);
    static const char msg[] = "lathe-worker: cannot exec the job (lathe or mpirun missing?)\n";
    if (write(2, msg, sizeof msg - 1) < 0) _exit(127);
    _exit(127);
  }
  close(o[1]);
  close(e[1]);
  if (pid < 0) {
    close(o[0]);
    close(e[0]);
    return -1;
  }
  setpgid(pid, pid); /* also here, so a kill before the child ran setpgid reaches the group */
  *out_fd = o[0];
  *err_fd = e[0];
  return pid;
}

/* Supervises the child until it has exited; returns its wait status. */
static int wk_job_supervise(wk_job *j, int out_fd, int err_fd) {
  wk_lines out = {out_fd, NULL, 0, 0, 0}, err = {err_fd, NULL, 0, 0, 0};
  int out_open = 1, err_open = 1, status = 0, exited = 0;
  double last_flush = wk_now(), term_at = 0, exited_at = 0;
  int killed = 0;
  while (!exited || ((out_open || err_open) && wk_now() - exited_at < 2)) {
    struct pollfd p[2] = {{out_open ? out_fd : -1, POLLIN, 0}, {err_open ? err_fd : -1, POLLIN, 0}};
    poll(p, 2, 100);
    if (out_open && (p[0].revents & (POLLIN | POLLHUP | POLLERR)))
      out_open = wk_lines_read(&out, j, wk_job_take_line);
    if (err_open && (p[1].revents & (POLLIN | POLLHUP | POLLERR)))
      err_open = wk_lines_read(&err, j, wk_job_take_stderr);
    if (!exited) {
      pid_t w = waitpid(j->pid, &status, WNOHANG);
      if (w == j->pid) {
        exited = 1;
        exited_at = wk_now();
      }
    }
    if (wk_now() - last_flush >= WK_FLUSH_S) {
      wk_job_flush(j);
      last_flush = wk_now();
    }
    pthread_mutex_lock(&j->mu);
    int cancel = j->cancel, stale = j->stale;
    pthread_mutex_unlock(&j->mu);
    if (exited) continue;
    if (stale && killed < 2) {
      /* another worker owns the job now: stop at once, report nothing */
      kill(-j->pid, SIGKILL);
      killed = 2;
    } else if ((cancel || wk_shutdown) && !term_at) {
      wk_log("job %s: %s; stopping the job (SIGTERM, SIGKILL in %.0f s)", j->id,
             cancel ? "cancelled" : "shutting down", j->c->grace_s);
      kill(-j->pid, SIGTERM);
      term_at = wk_now();
      killed = 1;
    } else if (term_at && killed < 2 && wk_now() - term_at > j->c->grace_s) {
      wk_log("job %s: still running %.0f s after SIGTERM; SIGKILL", j->id, j->c->grace_s);
      kill(-j->pid, SIGKILL);
      killed = 2;
    }
  }
  /* the group may hold stragglers (mpirun ranks) that kept the pipes open */
  kill(-j->pid, SIGKILL);
  free(out.buf);
  free(err.buf);
  close(out_fd);
  close(err_fd);
  return status;
}

/* ---- reporting ---- */

/* POSTs with retries until the server answers; returns the status (0 when given up). */
static long wk_job_post_retrying(wk_job *j, const char *path, const cJSON *body) {
  double backoff = 0.5;
  for (int tries = 0;; tries++) {
    wk_resp r;
    int rc = wk_http_json(j->h, "POST", path, body, 30, 0, &r);
    long status = r.status;
    wk_resp_free(&r);
    if (rc == 0 && status < 500) return status;
    /* when shutting down, a few tries only: the lease expiring requeues the job anyway */
    if (wk_shutdown && tries >= 3) return 0;
    if (wk_job_is_stale(j)) return 409;
    double delay = wk_backoff_step(&backoff);
    wk_log("job %s: %s failed (%s); retrying in %.1f s", j->id, path,
           rc ? "server unreachable" : "server error", delay);
    wk_sleep(delay);
  }
}

/* Artifacts announced by the job, uploaded when they lie inside its output folder. */
static void wk_job_upload_artifacts(wk_job *j, const char *out_dir) {
  char root[PATH_MAX];
  if (!realpath(out_dir, root)) return;
  const cJSON *a;
  cJSON_ArrayForEach(a, j->artifacts) {
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(a, "name"));
    const char *path = cJSON_GetStringValue(cJSON_GetObjectItem(a, "path"));
    char full[8400], real[PATH_MAX];
    snprintf(full, sizeof full, "%s%s%s", path[0] == '/' ? "" : j->dir, path[0] == '/' ? "" : "/", path);
    if (!realpath(full, real) || strncmp(real, root, strlen(root)) || real[strlen(root)] != '/') {
      wk_log("job %s: artifact %s is outside the job's output folder; not uploaded", j->id, name);
      continue;
    }
    char *ename = wk_http_escape(j->h, name);
    char url[1024];
    snprintf(url, sizeof url, "/api/v1/workers/artifacts?job=%s&attempt=%d&name=%s", j->id, j->attempt,
             ename ? ename : "artifact");
    free(ename);
    double backoff = 0.5;
    for (int tries = 0; tries < 8 && !wk_job_is_stale(j); tries++) {
      wk_resp r;
      int rc = wk_http_upload(j->h, url, real, &r);
      long status = r.status;
      wk_resp_free(&r);
      if (rc == 0 && status == 409) wk_job_set_stale(j);
      if (rc == 0 && status < 500) {
        if (status >= 300) wk_log("job %s: artifact %s refused (HTTP %ld)", j->id, name, status);
        break;
      }
      wk_sleep(wk_backoff_step(&backoff));
    }
  }
}

static void wk_job_complete(wk_job *j, const char *state, cJSON *result, const char *error,
                            int retryable) {
  cJSON *body = cJSON_CreateObject();
  cJSON_AddStringToObject(body, "job", j->id);
  cJSON_AddNumberToObject(body, "attempt", j->attempt);
  cJSON_AddStringToObject(body, "state", state);
  if (result) cJSON_AddItemReferenceToObject(body, "result", result);
  if (error) cJSON_AddStringToObject(body, "error", error);
  if (error) cJSON_AddBoolToObject(body, "retryable", retryable);
  long status = wk_job_post_retrying(j, "/api/v1/workers/complete", body);
  cJSON_Delete(body);
  if (status == 200 || status == 201)
    wk_log("job %s attempt %d: %s%s%s", j->id, j->attempt, state, error ? ": " : "", error ? error : "");
  else if (status == 409)
    wk_log("job %s attempt %d: the server no longer counts this attempt; result dropped", j->id, j->attempt);
  else
    wk_log("job %s attempt %d: completing failed (HTTP %ld)", j->id, j->attempt, status);
}

/* The failure message: the job's own error event, or how the child ended, then its last stderr
 * lines. */
static void wk_job_failure_text(wk_job *j, int status, char *out, size_t cap) {
  size_t n;
  if (j->have_error && j->error[0])
    n = (size_t)snprintf(out, cap, "%s", j->error);
  else if (WIFSIGNALED(status))
    n = (size_t)snprintf(out, cap, "lathe run was killed by signal %d (%s)", WTERMSIG(status),
                         strsignal(WTERMSIG(status)));
  else
    n = (size_t)snprintf(out, cap, "lathe run exited with status %d", WEXITSTATUS(status));
  if (j->tail_count && n < cap) n += (size_t)snprintf(out + n, cap - n, "\nlast stderr lines:");
  for (int i = 0; i < j->tail_count && n < cap; i++) {
    int at = (j->tail_next - j->tail_count + i + WK_TAIL_LINES) % WK_TAIL_LINES;
    n += (size_t)snprintf(out + n, cap - n, "\n%s", j->tail[at]);
  }
}

void wk_job_serve(const wk_config *c, wk_http *h, const cJSON *claim) {
  const cJSON *job = cJSON_GetObjectItem(claim, "job");
  const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(job, "id"));
  const char *kind = cJSON_GetStringValue(cJSON_GetObjectItem(job, "kind"));
  const cJSON *attempt = cJSON_GetObjectItem(claim, "attempt");
  if (!cJSON_IsNumber(attempt)) attempt = cJSON_GetObjectItem(job, "attempt");
  if (!id || !kind || !cJSON_IsNumber(attempt) || strlen(id) >= 64 || strlen(kind) >= 64 ||
      strspn(id, "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(id)) {
    wk_log("the server's claim answer has no usable job id, kind or attempt; ignored");
    return;
  }
  wk_job j;
  memset(&j, 0, sizeof j);
  j.c = c;
  j.h = h;
  snprintf(j.id, sizeof j.id, "%s", id);
  snprintf(j.kind, sizeof j.kind, "%s", kind);
  j.attempt = (int)attempt->valuedouble;
  j.heartbeat_s = 10;
  double left = wk_lease_left(cJSON_GetStringValue(cJSON_GetObjectItem(claim, "lease_until")));
  if (left > 0 && left / 3 < j.heartbeat_s) j.heartbeat_s = left / 3 < 0.5 ? 0.5 : left / 3;
  snprintf(j.dir, sizeof j.dir, "%s/jobs/%s-%d", c->cache_dir, j.id, j.attempt);
  pthread_mutex_init(&j.mu, NULL);
  pthread_cond_init(&j.cv, NULL);
  j.pending = cJSON_CreateArray();
  j.artifacts = cJSON_CreateArray();
  wk_log("job %s attempt %d: claimed (%s)", j.id, j.attempt, j.kind);

  /* heartbeats start now: downloading inputs may outlast the lease */
  pthread_t hb;
  int hb_started = pthread_create(&hb, NULL, wk_heartbeat_main, &j) == 0;

  cJSON *spec = cJSON_Duplicate(cJSON_GetObjectItem(job, "spec"), 1);
  cJSON *files = cJSON_CreateObject();
  char why[2048] = "";
  int rc = 0;
  spec_fault fault;
  if (spec_validate(j.kind, spec, &fault) != 0) {
    snprintf(why, sizeof why, "invalid job: %s: %s", fault.path, fault.message);
    rc = JOB_EXIT_BAD_INPUT;
  }
  if (!rc) {
    wk_refs refs = {&j, files, 0, ""};
    spec_file_refs(j.kind, spec, wk_job_fetch_ref, &refs);
    if (refs.rc) {
      rc = refs.rc;
      snprintf(why, sizeof why, "%s", refs.why);
    }
  }
  if (!rc) wk_cache_trim(c, files);
  char out_dir[4200], job_file[4200];
  snprintf(out_dir, sizeof out_dir, "%s/out", j.dir);
  if (!rc && (job_dir_make(out_dir, 0700) != 0 || wk_job_write_file(&j, spec, files, job_file, sizeof job_file) != 0)) {
    snprintf(why, sizeof why, "cannot prepare the job folder %.1000s: %s", j.dir, strerror(errno));
    rc = JOB_EXIT_FAILED;
  }
  int status = 0, ran = 0;
  pthread_mutex_lock(&j.mu);
  int cancelled_early = j.cancel;
  pthread_mutex_unlock(&j.mu);
  if (!rc && (cancelled_early || wk_shutdown)) {
    /* asked to stop while the inputs were downloading: no point starting the job */
    snprintf(why, sizeof why, "%s", cancelled_early ? "cancelled" : "the worker is shutting down");
    rc = cancelled_early ? JOB_EXIT_BAD_INPUT : JOB_EXIT_FAILED;
  }
  if (!rc && !wk_job_is_stale(&j)) {
    int out_fd, err_fd;
    j.pid = wk_job_spawn(&j, spec, job_file, out_dir, &out_fd, &err_fd);
    if (j.pid < 0) {
      snprintf(why, sizeof why, "cannot start %.1000s: %s", c->lathe_bin, strerror(errno));
      rc = JOB_EXIT_FAILED;
    } else {
      ran = 1;
      status = wk_job_supervise(&j, out_fd, err_fd);
    }
  }
  /* the last events, with a few retries: the server may be restarting */
  for (int tries = 0; tries < 5 && wk_job_flush(&j) != 0; tries++) wk_sleep(0.5 * (1 << tries));

  pthread_mutex_lock(&j.mu);
  int cancelled = j.cancel;
  pthread_mutex_unlock(&j.mu);
  if (wk_job_is_stale(&j)) {
    wk_log("job %s attempt %d: stale (the lease passed to another worker); dropped", j.id, j.attempt);
  } else if (!ran) {
    wk_job_complete(&j, "failed", NULL, why, rc != JOB_EXIT_BAD_INPUT);
  } else {
    wk_job_upload_artifacts(&j, out_dir);
    if (wk_job_is_stale(&j)) {
      wk_log("job %s attempt %d: stale; dropped", j.id, j.attempt);
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && j.result) {
      wk_job_complete(&j, "succeeded", j.result, NULL, 0);
    } else if (cancelled) {
      wk_job_complete(&j, "failed", NULL, "cancelled", 0);
    } else {
      char text[4096];
      wk_job_failure_text(&j, status, text, sizeof text);
      int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      /* a runtime failure or a death by signal (OOM kill, crash) may pass on another try; bad
       * input (exit 2) or anything else will not */
      int retryable = WIFSIGNALED(status) || code == JOB_EXIT_FAILED;
      if (code == 0) snprintf(text, sizeof text, "lathe run exited 0 without a result event");
      wk_job_complete(&j, "failed", NULL, text, retryable);
    }
  }
  if (hb_started) {
    pthread_mutex_lock(&j.mu);
    j.hb_stop = 1;
    pthread_cond_signal(&j.cv);
    pthread_mutex_unlock(&j.mu);
    pthread_join(hb, NULL);
  }
  wk_rmtree(j.dir);
  cJSON_Delete(spec);
  cJSON_Delete(files);
  cJSON_Delete(j.pending);
  cJSON_Delete(j.result);
  cJSON_Delete(j.artifacts);
  pthread_mutex_destroy(&j.mu);
  pthread_cond_destroy(&j.cv);
}
