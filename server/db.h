/* server/db.h — SQLite connections for lathe-server: open with WAL and a busy timeout, apply
 * the embedded migrations by PRAGMA user_version, cache prepared statements per connection, and
 * lend connections to server threads from a fixed pool.
 *
 *   db_conn *db = db_pool_acquire(pool);
 *   sqlite3_stmt *st = db_stmt(db, "SELECT state FROM jobs WHERE id = ?1", &e);
 *   ... sqlite3_step(st) ...; sqlite3_reset(st) happens on the next db_stmt of that SQL
 *   db_pool_release(pool, db);
 *
 * A connection is used by one thread at a time; SQL text is cached by pointer, so pass string
 * literals. Not for: opening the database from any other process (the server is its only user).
 */
#ifndef LATHE_SERVER_DB_H
#define LATHE_SERVER_DB_H

#include <cjson/cJSON.h>
#include <sqlite3.h>

#include "util.h"

#define DB_STMT_CACHE 96

typedef struct db_conn {
  sqlite3 *db;
  struct {
    const char *sql;   /* the literal it was prepared from (pointer identity) */
    sqlite3_stmt *st;  /* owned */
  } cache[DB_STMT_CACHE];
  int n_cached;
  int writing; /* holds db_write_mu (between db_begin and commit/rollback) */
} db_conn;

/* Opens (creating) path, sets WAL, busy_timeout, foreign keys off, synchronous=NORMAL, and
 * brings the schema to the newest embedded migration. NULL with e filled on failure. */
db_conn *db_open(const char *path, srv_err *e);
void db_close(db_conn *db); /* accepts NULL */

/* A prepared, reset, unbound statement for sql (a literal). NULL with e filled (500). */
sqlite3_stmt *db_stmt(db_conn *db, const char *sql, srv_err *e);

/* BEGIN IMMEDIATE (writes take the lock up front, so two writers never deadlock upgrading),
 * COMMIT, ROLLBACK. begin/commit return 0 or -1 with e filled. Writers of this process also
 * queue on one mutex first: SQLite's busy handler waits by sleeping (1, 2, 5, 10 … ms), which
 * under contention turns into tail latency, while a mutex hands the lock over at once. */
int db_begin(db_conn *db, srv_err *e);
int db_commit(db_conn *db, srv_err *e);
void db_rollback(db_conn *db);

/* Copies committed WAL frames into the database without blocking writers. Connections opened
 * here never checkpoint on their own (wal_autocheckpoint = 0): an automatic checkpoint runs
 * inside some request's COMMIT and its fsync stalls every writer queued behind it, so the
 * server's reaper thread calls this once a second instead. */
void db_checkpoint(db_conn *db);

/* Turns a failed sqlite call into a 500 with file and line. */
int db_fail_at(db_conn *db, srv_err *e, const char *file, int line);
#define DB_FAIL(db, e) db_fail_at((db), (e), __FILE__, __LINE__)

/* Steps a bound statement that asks for limit + 1 rows in page order and returns
 * {"items": [row(st)...], "next_page_token": token of column seq_col of the last row, or null};
 * the extra row only says whether a next page exists. NULL with e set on a database error. */
cJSON *db_page_collect(db_conn *db, sqlite3_stmt *st, int limit, cJSON *(*row)(sqlite3_stmt *st),
                       int seq_col, srv_err *e);

/* Highest migration version compiled in. */
int db_schema_version(void);

typedef struct db_pool db_pool;
db_pool *db_pool_open(const char *path, int n, srv_err *e);
void db_pool_close(db_pool *p);
db_conn *db_pool_acquire(db_pool *p); /* blocks until one is free */
void db_pool_release(db_pool *p, db_conn *db);

#endif
