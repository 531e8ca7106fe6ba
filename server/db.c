/* server/db.c — connections, migrations, statement cache and the connection pool (see db.h). */
#include "db.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embed.h"

int db_fail_at(db_conn *db, srv_err *e, const char *file, int line) {
  return srv_err_set(e, 500, "internal", "database error at %s:%d: %s", file, line,
                     db && db->db ? sqlite3_errmsg(db->db) : "no connection");
}

int db_schema_version(void) {
  int v = 0;
  for (const embed_migration *m = embed_migrations; m->version; m++)
    if (m->version > v) v = m->version;
  return v;
}

static int db_exec(db_conn *db, const char *sql, srv_err *e) {
  char *msg = NULL;
  if (sqlite3_exec(db->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    srv_err_set(e, 500, "internal", "database error: %s", msg ? msg : sqlite3_errmsg(db->db));
    sqlite3_free(msg);
    return -1;
  }
  return 0;
}

/* Each pending migration runs in its own transaction together with its user_version bump, so a
 * crash mid-migration leaves the previous version intact. */
static int db_migrate(db_conn *db, srv_err *e) {
  if (db_begin(db, e) != 0) return -1;
  sqlite3_stmt *st = NULL;
  int current = -1;
  if (sqlite3_prepare_v2(db->db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW)
    current = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  if (current < 0) {
    db_rollback(db);
    return DB_FAIL(db, e);
  }
  if (current > db_schema_version()) {
    db_rollback(db);
    return srv_err_set(e, 500, "schema_too_new",
                       "database schema version %d is newer than this lathe-server (%d); run "
                       "the newer lathe-server or restore a matching backup",
                       current, db_schema_version());
  }
  for (const embed_migration *m = embed_migrations; m->version; m++) {
    if (m->version <= current) continue;
    char bump[64];
    snprintf(bump, sizeof bump, "PRAGMA user_version = %d", m->version);
    if (db_exec(db, m->sql, e) != 0 || db_exec(db, bump, e) != 0) {
      db_rollback(db);
      snprintf(e->message + strlen(e->message), sizeof e->message - strlen(e->message),
               " (migration %s)", m->name);
      return -1;
    }
  }
  return db_commit(db, e);
}

/* SQLite's memory statistics take a process-wide mutex on every allocation, which serialises
 * the server's threads; they are not used, so they are switched off before the first open. */
static pthread_once_t db_config_once = PTHREAD_ONCE_INIT;
static void db_config(void) { sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0); }

db_conn *db_open(const char *path, srv_err *e) {
  pthread_once(&db_config_once, db_config);
  db_conn *db = calloc(1, sizeof *db);
  if (!db) {
    srv_err_set(e, 500, "internal", "out of memory");
    return NULL;
  }
  int rc = sqlite3_open_v2(path, &db->db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK) {
    srv_err_set(e, 500, "internal", "cannot open database %s: %s", path,
                db->db ? sqlite3_errmsg(db->db) : sqlite3_errstr(rc));
    db_close(db);
    return NULL;
  }
  sqlite3_busy_timeout(db->db, 5000);
  if (db_exec(db,
              "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; "
              "PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY; "
              "PRAGMA wal_autocheckpoint = 0;",
              e) != 0 ||
      db_migrate(db, e) != 0) {
    db_close(db);
    return NULL;
  }
  return db;
}

void db_close(db_conn *db) {
  if (!db) return;
  for (int i = 0; i < db->n_cached; i++) sqlite3_finalize(db->cache[i].st);
  sqlite3_close(db->db);
  free(db);
}

sqlite3_stmt *db_stmt(db_conn *db, const char *sql, srv_err *e) {
  for (int i = 0; i < db->n_cached; i++) {
    if (db->cache[i].sql == sql) {
      sqlite3_reset(db->cache[i].st);
      sqlite3_clear_bindings(db->cache[i].st);
      return db->cache[i].st;
    }
  }
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v3(db->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
    DB_FAIL(db, e);
    return NULL;
  }
  if (db->n_cached < DB_STMT_CACHE) {
    db->cache[db->n_cached].sql = sql;
    db->cache[db->n_cached].st = st;
    db->n_cached++;
    return st;
  }
  /* The cache is sized above the number of distinct statements; overflowing it is a bug. */
  sqlite3_finalize(st);
  srv_err_set(e, 500, "internal", "statement cache full (raise DB_STMT_CACHE)");
  return NULL;
}

static pthread_mutex_t db_write_mu = PTHREAD_MUTEX_INITIALIZER;

static void db_write_release(db_conn *db) {
  if (!db->writing) return;
  db->writing = 0;
  pthread_mutex_unlock(&db_write_mu);
}

void db_checkpoint(db_conn *db) {
  sqlite3_wal_checkpoint_v2(db->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
}

int db_begin(db_conn *db, srv_err *e) {
  pthread_mutex_lock(&db_write_mu);
  db->writing = 1;
  if (db_exec(db, "BEGIN IMMEDIATE", e) != 0) {
    db_write_release(db);
    return -1;
  }
  return 0;
}

int db_commit(db_conn *db, srv_err *e) {
  if (db_exec(db, "COMMIT", e) != 0) {
    db_rollback(db);
    return -1;
  }
  db_write_release(db);
  return 0;
}

void db_rollback(db_conn *db) {
  if (!sqlite3_get_autocommit(db->db)) sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL);
  db_write_release(db);
}

struct db_pool {
  pthread_mutex_t mu;
  pthread_cond_t freed;
  int n;          /* connections opened */
  int n_free;     /* entries of free_list in use */
  db_conn **all;  /* (n) owned */
  db_conn **free_list;
};

db_pool *db_pool_open(const char *path, int n, srv_err *e) {
  db_pool *p = calloc(1, sizeof *p);
  if (!p) {
    srv_err_set(e, 500, "internal", "out of memory");
    return NULL;
  }
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->freed, NULL);
  p->all = calloc((size_t)n, sizeof *p->all);
  p->free_list = calloc((size_t)n, sizeof *p->free_list);
  if (!p->all || !p->free_list) {
    srv_err_set(e, 500, "internal", "out of memory");
    db_pool_close(p);
    return NULL;
  }
  for (int i = 0; i < n; i++) {
    p->all[i] = db_open(path, e);
    if (!p->all[i]) {
      db_pool_close(p);
      return NULL;
    }
    p->n++;
    p->free_list[p->n_free++] = p->all[i];
  }
  return p;
}

void db_pool_close(db_pool *p) {
  if (!p) return;
  for (int i = 0; i < p->n; i++) db_close(p->all[i]);
  free(p->all);
  free(p->free_list);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->freed);
  free(p);
}

db_conn *db_pool_acquire(db_pool *p) {
  pthread_mutex_lock(&p->mu);
  while (p->n_free == 0) pthread_cond_wait(&p->freed, &p->mu);
  db_conn *db = p->free_list[--p->n_free];
  pthread_mutex_unlock(&p->mu);
  return db;
}

void db_pool_release(db_pool *p, db_conn *db) {
  if (!db) return;
  /* A handler that bailed out mid-transaction must not leak its lock, and a statement left
   * mid-step would pin an old WAL snapshot and block checkpoints. */
  db_rollback(db);
  for (int i = 0; i < db->n_cached; i++)
    if (sqlite3_stmt_busy(db->cache[i].st)) sqlite3_reset(db->cache[i].st);
  pthread_mutex_lock(&p->mu);
  p->free_list[p->n_free++] = db;
  pthread_cond_signal(&p->freed);
  pthread_mutex_unlock(&p->mu);
}

cJSON *db_page_collect(db_conn *db, sqlite3_stmt *st, int limit, cJSON *(*row)(sqlite3_stmt *st),
                       int seq_col, srv_err *e) {
  cJSON *out = cJSON_CreateObject();
  cJSON *items = cJSON_AddArrayToObject(out, "items");
  int rc, n = 0;
  int64_t last = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (n == limit) break;
    cJSON_AddItemToArray(items, row(st));
    last = sqlite3_column_int64(st, seq_col);
    n++;
  }
  int more = rc == SQLITE_ROW;
  sqlite3_reset(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    cJSON_Delete(out);
    DB_FAIL(db, e);
    return NULL;
  }
  if (more) {
    char tok[40];
    util_page_token_encode(last, tok);
    cJSON_AddStringToObject(out, "next_page_token", tok);
  } else {
    cJSON_AddNullToObject(out, "next_page_token");
  }
  return out;
}
