/* server/main.c — lathe-server's command line: options (each with a default and an environment
 * variable), `token create`, start-up (database, store sweep, reaper thread, HTTP daemon) and a
 * clean shutdown on SIGTERM/SIGINT. */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http.h"

static const char server_usage[] =
    "usage: lathe-server [--listen HOST:PORT] [--data DIR] [--web DIR] [--vendor DIR]\n"
    "                    [--tls-cert FILE --tls-key FILE] [--upload-max BYTES] [--lease-s N]\n"
    "                    [--backoff-ms N] [--max-connections N] [--max-per-ip N] [--timeout-s N]\n"
    "                    [--inspect-timeout-s N] [--inspect-mem-mb N] [--db-connections N]\n"
    "       lathe-server token create --data DIR --scope read|submit|admin|worker [--name NAME]\n"
    "Environment: LATHE_LISTEN (127.0.0.1:8080), LATHE_DATA (./lathe-data), LATHE_WEB_DIR,\n"
    "LATHE_VENDOR_DIR, LATHE_TLS_CERT, LATHE_TLS_KEY, LATHE_UPLOAD_MAX (4 GiB), LATHE_LEASE_S (30),\n"
    "LATHE_BACKOFF_MS (2000), LATHE_MAX_CONNECTIONS (512), LATHE_MAX_PER_IP (128),\n"
    "LATHE_TIMEOUT_S (60), LATHE_INSPECT_TIMEOUT_S (120), LATHE_INSPECT_MEM_MB (4096),\n"
    "LATHE_DB_CONNECTIONS (8), LATHE_CLI (the lathe binary beside lathe-server).\n";

/* The directory holding this binary, for the defaults of --web, --vendor and LATHE_CLI. */
static void main_exe_dir(char *out, size_t n) {
  char buf[PATH_MAX];
  ssize_t len = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (len <= 0) {
    snprintf(out, n, ".");
    return;
  }
  buf[len] = '\0';
  snprintf(out, n, "%s", dirname(buf));
}

static const char *main_env(const char *name, const char *def) {
  const char *v = getenv(name);
  return v && *v ? v : def;
}

static int main_int(const char *name, const char *text, int64_t lo, int64_t hi, int64_t *out) {
  if (util_parse_i64(text, lo, hi, out) != 0) {
    fprintf(stderr, "lathe-server: %s must be an integer in [%lld, %lld], got \"%s\"\n", name,
            (long long)lo, (long long)hi, text);
    return -1;
  }
  return 0;
}

/* "HOST:PORT" or "[V6]:PORT"; "localhost" means 127.0.0.1. */
static int main_parse_listen(const char *text, server_cfg *cfg) {
  const char *colon = strrchr(text, ':');
  if (!colon) return -1;
  const char *host = text;
  size_t hlen = (size_t)(colon - text);
  if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
    host++;
    hlen -= 2;
  }
  if (hlen == 0 || hlen >= sizeof cfg->listen_host) return -1;
  memcpy(cfg->listen_host, host, hlen);
  cfg->listen_host[hlen] = '\0';
  if (strcmp(cfg->listen_host, "localhost") == 0) snprintf(cfg->listen_host, 16, "127.0.0.1");
  int64_t port;
  if (util_parse_i64(colon + 1, 1, 65535, &port) != 0) return -1;
  cfg->listen_port = (int)port;
  return 0;
}

static int main_is_loopback(const char *host) {
  return strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0;
}

static int main_token_create(int argc, char **argv) {
  const char *data = main_env("LATHE_DATA", "./lathe-data"), *scope = NULL, *name = "";
  for (int i = 0; i < argc; i++) {
    if (i + 1 < argc && strcmp(argv[i], "--data") == 0) data = argv[++i];
    else if (i + 1 < argc && strcmp(argv[i], "--scope") == 0) scope = argv[++i];
    else if (i + 1 < argc && strcmp(argv[i], "--name") == 0) name = argv[++i];
    else {
      fprintf(stderr, "lathe-server: unknown argument %s\n%s", argv[i], server_usage);
      return 2;
    }
  }
  if (!scope) {
    fprintf(stderr, "lathe-server: token create needs --scope read|submit|admin|worker\n");
    return 2;
  }
  if (mkdir(data, 0750) != 0 && errno != EEXIST) {
    fprintf(stderr, "lathe-server: cannot create %s: %s\n", data, strerror(errno));
    return 1;
  }
  char path[1200];
  snprintf(path, sizeof path, "%s/lathe.db", data);
  srv_err e = {0};
  db_conn *db = db_open(path, &e);
  auth_token t;
  char secret[AUTH_SECRET_LEN];
  if (!db || auth_token_create(db, scope, name, &t, secret, &e) != 0) {
    fprintf(stderr, "lathe-server: %s\n", e.message);
    db_close(db);
    return e.status == 400 ? 2 : 1;
  }
  db_close(db);
  printf("%s\n", secret);
  return 0;
}

/* The reaper: requeues expired leases and checkpoints the WAL once a second until told to
 * stop. */
typedef struct main_reaper {
  server *srv;
  db_conn *db;
  pthread_mutex_t mu;
  pthread_cond_t cond;
  int stop; /* guarded by mu */
} main_reaper;

static void *main_reaper_run(void *arg) {
  main_reaper *rp = arg;
  pthread_mutex_lock(&rp->mu);
  while (!rp->stop) {
    pthread_mutex_unlock(&rp->mu);
    srv_err e = {0};
    int n = queue_reap(rp->db, &rp->srv->cfg.queue, util_now_ms(), &e);
    if (n < 0) fprintf(stderr, "lathe-server: reaper: %s\n", e.message);
    else if (n > 0) fprintf(stderr, "lathe-server: reaper: %d expired lease(s) handled\n", n);
    db_checkpoint(rp->db);
    pthread_mutex_lock(&rp->mu);
    int64_t wake = util_now_ms() + 1000;
    struct timespec ts = {.tv_sec = wake / 1000, .tv_nsec = (wake % 1000) * 1000000};
    if (!rp->stop) pthread_cond_timedwait(&rp->cond, &rp->mu, &ts);
  }
  pthread_mutex_unlock(&rp->mu);
  return NULL;
}

static int main_parse_options(int argc, char **argv, server *s) {
  server_cfg *c = &s->cfg;
  char exe[PATH_MAX];
  main_exe_dir(exe, sizeof exe);
  const char *listen = main_env("LATHE_LISTEN", "127.0.0.1:8080");
  snprintf(c->data_dir, sizeof c->data_dir, "%s", main_env("LATHE_DATA", "./lathe-data"));
  char def[PATH_MAX + 32];
  snprintf(def, sizeof def, "%s/../../web", exe);
  snprintf(c->web_dir, sizeof c->web_dir, "%s", main_env("LATHE_WEB_DIR", def));
  snprintf(def, sizeof def, "%s/../../node_modules", exe);
  snprintf(c->vendor_dir, sizeof c->vendor_dir, "%s", main_env("LATHE_VENDOR_DIR", def));
  snprintf(c->tls_cert, sizeof c->tls_cert, "%s", main_env("LATHE_TLS_CERT", ""));
  snprintf(c->tls_key, sizeof c->tls_key, "%s", main_env("LATHE_TLS_KEY", ""));
  snprintf(def, sizeof def, "%s/lathe", exe);
  snprintf(s->files.cli, sizeof s->files.cli, "%s", main_env("LATHE_CLI", def));
  struct {
    const char *opt, *env, *def;
    int64_t lo, hi;
  } ints[] = {
      {"--upload-max", "LATHE_UPLOAD_MAX", "4294967296", 1, INT64_MAX / 2},
      {"--lease-s", "LATHE_LEASE_S", "30", 1, 3600},
      {"--backoff-ms", "LATHE_BACKOFF_MS", "2000", 0, 3600000},
      {"--max-connections", "LATHE_MAX_CONNECTIONS", "512", 4, 10000},
      {"--max-per-ip", "LATHE_MAX_PER_IP", "128", 1, 10000},
      {"--timeout-s", "LATHE_TIMEOUT_S", "60", 5, 3600},
      {"--inspect-timeout-s", "LATHE_INSPECT_TIMEOUT_S", "120", 1, 86400},
      {"--inspect-mem-mb", "LATHE_INSPECT_MEM_MB", "4096", 0, 1 << 24},
      {"--db-connections", "LATHE_DB_CONNECTIONS", "8", 1, 64},
  };
  enum { N_INTS = sizeof ints / sizeof ints[0] };
  int64_t vals[N_INTS];
  const char *texts[N_INTS];
  for (int i = 0; i < N_INTS; i++) texts[i] = main_env(ints[i].env, ints[i].def);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      fputs(server_usage, stdout);
      exit(0);
    }
    int matched = 0;
    if (v && strcmp(a, "--listen") == 0) listen = v, matched = 1;
    else if (v && strcmp(a, "--data") == 0) snprintf(c->data_dir, sizeof c->data_dir, "%s", v), matched = 1;
    else if (v && strcmp(a, "--web") == 0) snprintf(c->web_dir, sizeof c->web_dir, "%s", v), matched = 1;
    else if (v && strcmp(a, "--vendor") == 0) snprintf(c->vendor_dir, sizeof c->vendor_dir, "%s", v), matched = 1;
    else if (v && strcmp(a, "--tls-cert") == 0) snprintf(c->tls_cert, sizeof c->tls_cert, "%s", v), matched = 1;
    else if (v && strcmp(a, "--tls-key") == 0) snprintf(c->tls_key, sizeof c->tls_key, "%s", v), matched = 1;
    for (int k = 0; v && !matched && k < N_INTS; k++)
      if (strcmp(a, ints[k].opt) == 0) texts[k] = v, matched = 1;
    if (!matched) {
      fprintf(stderr, "lathe-server: unknown or incomplete option %s\n%s", a, server_usage);
      return -1;
    }
    i++;
  }
  for (int i = 0; i < N_INTS; i++)
    if (main_int(ints[i].opt, texts[i], ints[i].lo, ints[i].hi, &vals[i]) != 0) return -1;
  c->upload_max = vals[0];
  c->queue = queue_cfg_default();
  c->queue.lease_ms = vals[1] * 1000;
  c->queue.backoff_base_ms = vals[2];
  c->max_connections = (int)vals[3];
  c->max_per_ip = (int)vals[4];
  c->conn_timeout_s = (int)vals[5];
  s->files.inspect_timeout_ms = vals[6] * 1000;
  s->files.inspect_cpu_s = vals[6];
  s->files.inspect_mem_bytes = vals[7] << 20;
#if defined(__SANITIZE_ADDRESS__)
  /* A sanitizer build's `lathe` reserves terabytes of shadow address space; an RLIMIT_AS would
   * stop it from starting. CPU and wall limits still apply. */
  s->files.inspect_mem_bytes = 0;
#endif
  c->db_connections = (int)vals[8];
  /* MHD zeroes a connection's whole memory pool before each keep-alive request, so this is a
   * per-request cost as well as a cap on header size and upload chunk size. */
  c->conn_memory = 64 * 1024;
  if (main_parse_listen(listen, c) != 0) {
    fprintf(stderr, "lathe-server: --listen wants HOST:PORT (e.g. 127.0.0.1:8080), got \"%s\"\n",
            listen);
    return -1;
  }
  if (!c->tls_cert[0] != !c->tls_key[0]) {
    fprintf(stderr, "lathe-server: --tls-cert and --tls-key go together\n");
    return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "token") == 0 && strcmp(argv[2], "create") == 0)
    return main_token_create(argc - 3, argv + 3);
  if (argc >= 2 && strcmp(argv[1], "--version") == 0) {
    printf("lathe-server 0.1.0 (schema %d)\n", db_schema_version());
    return 0;
  }
  static server srv;
  if (main_parse_options(argc, argv, &srv) != 0) return 2;

  /* Signals are taken by sigwait in this thread only; every thread started below inherits the
   * mask. SIGPIPE from a client closing mid-response must not kill the server. */
  sigset_t stop_set;
  sigemptyset(&stop_set);
  sigaddset(&stop_set, SIGTERM);
  sigaddset(&stop_set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
  signal(SIGPIPE, SIG_IGN);

  srv_err e = {0};
  if (store_init(&srv.files, srv.cfg.data_dir, &e) != 0) {
    fprintf(stderr, "lathe-server: %s\n", e.message);
    return 1;
  }
  char db_path[1200];
  snprintf(db_path, sizeof db_path, "%s/lathe.db", srv.cfg.data_dir);
  srv.pool = db_pool_open(db_path, srv.cfg.db_connections, &e);
  main_reaper reaper = {.srv = &srv, .db = srv.pool ? db_open(db_path, &e) : NULL};
  if (!srv.pool || !reaper.db) {
    fprintf(stderr, "lathe-server: %s\n", e.message);
    db_pool_close(srv.pool);
    return 1;
  }
  int swept = store_sweep(&srv.files, reaper.db);
  if (swept > 0) fprintf(stderr, "lathe-server: removed %d leftover upload file(s)\n", swept);
  pthread_mutex_init(&reaper.mu, NULL);
  pthread_cond_init(&reaper.cond, NULL);
  pthread_t reaper_thread;
  if (pthread_create(&reaper_thread, NULL, main_reaper_run, &reaper) != 0) {
    fprintf(stderr, "lathe-server: cannot start the reaper thread\n");
    return 1;
  }
  int rc = 0;
  if (server_start(&srv, &e) != 0) {
    fprintf(stderr, "lathe-server: %s\n", e.message);
    rc = 1;
  } else {
    int tls = srv.cfg.tls_cert[0] != '\0';
    if (!tls && !main_is_loopback(srv.cfg.listen_host))
      fprintf(stderr,
              "lathe-server: WARNING: plain HTTP on non-loopback %s: bearer tokens cross the "
              "network in clear text; use --tls-cert/--tls-key or a TLS-terminating proxy\n",
              srv.cfg.listen_host);
    fprintf(stderr, "lathe-server: listening on %s://%s:%d (data %s)\n", tls ? "https" : "http",
            srv.cfg.listen_host, srv.cfg.listen_port, srv.cfg.data_dir);
    int sig = 0;
    sigwait(&stop_set, &sig);
    fprintf(stderr, "lathe-server: %s, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  }
  server_stop(&srv);
  pthread_mutex_lock(&reaper.mu);
  reaper.stop = 1;
  pthread_cond_signal(&reaper.cond);
  pthread_mutex_unlock(&reaper.mu);
  pthread_join(reaper_thread, NULL);
  db_close(reaper.db);
  db_pool_close(srv.pool);
  return rc;
}
