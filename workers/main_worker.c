/* workers/main_worker.c — lathe-worker: claims jobs from lathe-server and runs each as a child
 * `lathe run` (workers/worker_job.c). One worker serves one device, one job at a time.
 *
 *   lathe-worker --server URL --token T --device cpu|cuda:N [--cache DIR] [--name N]
 *
 * Each option has an environment variable (LATHE_SERVER, LATHE_TOKEN, LATHE_DEVICE,
 * LATHE_CACHE, LATHE_WORKER_NAME) and, except the token, a default. The worker rides out server
 * restarts (capped exponential backoff between claims) and exits 0 on SIGTERM/SIGINT after
 * stopping the current job (SIGTERM to it, SIGKILL after the grace period) and reporting it as a
 * retryable failure, so the server requeues it at once.
 */
#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "job.h"
#include "spec.h"
#include "worker.h"

volatile sig_atomic_t wk_shutdown;

static void wk_on_signal(int sig) { wk_shutdown = sig; }

static void wk_usage(FILE *to) {
  fprintf(to,
          "usage: lathe-worker --server URL --token TOKEN [--device cpu|cuda:N] [--cache DIR]\n"
          "                    [--cache-max-gb GB] [--name NAME] [--grace SECONDS] [--wait SECONDS]\n"
          "  --server  LATHE_SERVER  default http://127.0.0.1:8080\n"
          "  --token   LATHE_TOKEN   a token with scope \"worker\" (lathe-server token create --scope worker)\n"
          "  --device  LATHE_DEVICE  default cpu\n"
          "  --cache   LATHE_CACHE   inputs by SHA-256 and job folders; default ~/.cache/lathe\n"
          "  --cache-max-gb LATHE_CACHE_MAX_GB  inputs kept, least recently used dropped first;\n"
          "            default 100, 0 = no limit\n"
          "  --name    LATHE_WORKER_NAME  default host:pid:device\n"
          "  --grace   seconds between SIGTERM and SIGKILL for a cancelled job; default 10\n"
          "  --wait    long-poll seconds per claim, 1..30; default 20\n");
}

static const char *wk_env(const char *name, const char *fallback) {
  const char *v = getenv(name);
  return v && *v ? v : fallback;
}

/* The `lathe` binary beside this one: the worker and the CLI are built and installed together. */
static int wk_find_lathe(char *out, size_t cap) {
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return -1;
  self[n] = 0;
  char *slash = strrchr(self, '/');
  if (!slash) return -1;
  *slash = 0;
  if ((size_t)snprintf(out, cap, "%.*s/lathe", (int)(cap > 16 ? cap - 16 : 0), self) >= cap) return -1;
  return access(out, X_OK);
}

/* The kinds this worker's `lathe` can run: the schemas that have a run function. */
static cJSON *wk_kinds(void) {
  cJSON *a = cJSON_CreateArray();
  for (const char *const *k = spec_kinds(); *k; k++)
    if (job_kind_find(*k)) cJSON_AddItemToArray(a, cJSON_CreateString(*k));
  return a;
}

int main(int argc, char **argv) {
  static wk_config c;
  c.server = wk_env("LATHE_SERVER", "http://127.0.0.1:8080");
  c.token = wk_env("LATHE_TOKEN", NULL);
  c.device = wk_env("LATHE_DEVICE", "cpu");
  c.grace_s = 10;
  c.cache_max_bytes = atof(wk_env("LATHE_CACHE_MAX_GB", "100")) * 1e9;
  c.wait_s = 20;
  const char *name = wk_env("LATHE_WORKER_NAME", NULL);
  char cache_default[PATH_MAX];
  const char *home = getenv("HOME");
  snprintf(cache_default, sizeof cache_default, "%s/.cache/lathe", home && *home ? home : "/tmp");
  c.cache_dir = wk_env("LATHE_CACHE", cache_default);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      wk_usage(stdout);
      return 0;
    }
    if (!v) {
      fprintf(stderr, "lathe-worker: %s needs a value\n", a);
      wk_usage(stderr);
      return 2;
    }
    i++;
    if (!strcmp(a, "--server")) c.server = v;
    else if (!strcmp(a, "--token")) c.token = v;
    else if (!strcmp(a, "--device")) c.device = v;
    else if (!strcmp(a, "--cache")) c.cache_dir = v;
    else if (!strcmp(a, "--name")) name = v;
    else if (!strcmp(a, "--grace")) c.grace_s = atof(v);
    else if (!strcmp(a, "--cache-max-gb")) c.cache_max_bytes = atof(v) * 1e9;
    else if (!strcmp(a, "--wait")) c.wait_s = atoi(v);
    else {
      fprintf(stderr, "lathe-worker: unknown option %s\n", a);
      wk_usage(stderr);
      return 2;
    }
  }
  if (!c.token) {
    fprintf(stderr, "lathe-worker: no token; pass --token or set LATHE_TOKEN (create one with "
                    "lathe-server token create --scope worker)\n");
    return 2;
  }
  if (strncmp(c.server, "http://", 7) && strncmp(c.server, "https://", 8)) {
    fprintf(stderr, "lathe-worker: --server must be an http:// or https:// URL, got %s\n", c.server);
    return 2;
  }
  char why[256];
  if (job_device_check(c.device, why, sizeof why) != 0) {
    fprintf(stderr, "lathe-worker: --device: %s\n", why);
    return 2;
  }
  if (c.wait_s < 1 || c.wait_s > 30) c.wait_s = 20;
  if (!(c.grace_s >= 0)) c.grace_s = 10;
  if (!(c.cache_max_bytes >= 0)) c.cache_max_bytes = 100e9;
  static char server[1024];
  snprintf(server, sizeof server, "%s", c.server);
  size_t sl = strlen(server);
  while (sl > 0 && server[sl - 1] == '/') server[--sl] = 0;
  c.server = server;
  if (name) {
    snprintf(c.name, sizeof c.name, "%s", name);
  } else {
    char host[128] = "localhost";
    gethostname(host, sizeof host - 1);
    snprintf(c.name, sizeof c.name, "%s:%d:%s", host, (int)getpid(), c.device);
  }
  /* absolute: jobs run with their own folder as working directory */
  static char cache_abs[PATH_MAX];
  if (job_dir_make(c.cache_dir, 0700) != 0 || !realpath(c.cache_dir, cache_abs)) {
    fprintf(stderr, "lathe-worker: cannot create the cache folder %s: %s\n", c.cache_dir, strerror(errno));
    return 2;
  }
  c.cache_dir = cache_abs;
  if (wk_find_lathe(c.lathe_bin, sizeof c.lathe_bin) != 0) {
    fprintf(stderr, "lathe-worker: cannot find the lathe binary beside lathe-worker (%s)\n", c.lathe_bin);
    return 2;
  }

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = wk_on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  curl_global_init(CURL_GLOBAL_DEFAULT);

  wk_cache_sweep(&c);
  wk_http *h = wk_http_open(&c);
  if (!h) {
    fprintf(stderr, "lathe-worker: cannot start the HTTP client\n");
    return 3;
  }
  cJSON *claim_body = cJSON_CreateObject();
  cJSON_AddStringToObject(claim_body, "worker", c.name);
  cJSON_AddStringToObject(claim_body, "device", c.device);
  cJSON_AddItemToObject(claim_body, "kinds", wk_kinds());
  cJSON_AddNumberToObject(claim_body, "wait_s", c.wait_s);
  fprintf(stderr, "lathe-worker %s serving %s as %s\n", c.device, c.server, c.name);

  double backoff = 0.5;
  while (!wk_shutdown) {
    wk_resp r;
    int rc = wk_http_json(h, "POST", "/api/v1/workers/claim", claim_body, c.wait_s + 15, 1, &r);
    if (wk_shutdown) {
      wk_resp_free(&r);
      break;
    }
    if (rc == 0 && r.status == 200) {
      backoff = 0.5;
      cJSON *claim = r.body ? cJSON_Parse(r.body) : NULL;
      wk_resp_free(&r);
      if (claim) wk_job_serve(&c, h, claim);
      else fprintf(stderr, "lathe-worker: the claim answer is not JSON; ignored\n");
      cJSON_Delete(claim);
      continue;
    }
    if (rc == 0 && r.status == 204) {
      backoff = 0.5;
      wk_resp_free(&r);
      continue;
    }
    if (rc == 0 && (r.status == 401 || r.status == 403)) {
      fprintf(stderr, "lathe-worker: the server refused the token (HTTP %ld); it needs scope \"worker\"\n",
              r.status);
      wk_resp_free(&r);
      cJSON_Delete(claim_body);
      wk_http_close(h);
      curl_global_cleanup();
      return 2;
    }
    if (rc)
      fprintf(stderr, "lathe-worker: claim failed (%s); retrying in %.1f s\n", r.error, backoff);
    else
      fprintf(stderr, "lathe-worker: claim answered HTTP %ld (%.200s); retrying in %.1f s\n",
              r.status, r.body ? r.body : "", backoff);
    wk_resp_free(&r);
    wk_sleep(wk_backoff_step(&backoff));
  }
  fprintf(stderr, "lathe-worker: stopping on %s\n", wk_shutdown == SIGINT ? "SIGINT" : "SIGTERM");
  cJSON_Delete(claim_body);
  wk_http_close(h);
  curl_global_cleanup();
  return 0;
}
