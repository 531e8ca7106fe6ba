/* server/auth.c — tokens and scopes (see auth.h). */
#include "auth.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

static const char *const auth_scope_names[] = {"", "read", "submit", "admin", "worker"};

const char *auth_scope_name(auth_scope s) {
  return (s > AUTH_SCOPE_NONE && s <= AUTH_SCOPE_WORKER) ? auth_scope_names[s] : "";
}

auth_scope auth_scope_parse(const char *s) {
  if (!s) return AUTH_SCOPE_NONE;
  for (int i = AUTH_SCOPE_READ; i <= AUTH_SCOPE_WORKER; i++)
    if (strcmp(s, auth_scope_names[i]) == 0) return (auth_scope)i;
  return AUTH_SCOPE_NONE;
}

int auth_scope_allows(auth_scope s, auth_need need) {
  if (need == AUTH_NEED_NONE) return 1;
  switch (s) {
  case AUTH_SCOPE_ADMIN: return 1;
  case AUTH_SCOPE_SUBMIT: return need == AUTH_NEED_READ || need == AUTH_NEED_WORKER_READ ||
                                 need == AUTH_NEED_SUBMIT;
  case AUTH_SCOPE_READ: return need == AUTH_NEED_READ || need == AUTH_NEED_WORKER_READ;
  case AUTH_SCOPE_WORKER: return need == AUTH_NEED_WORKER || need == AUTH_NEED_WORKER_READ;
  default: return 0;
  }
}

/* base64url without padding: 32 random bytes -> 43 characters. */
static void auth_secret_encode(const unsigned char raw[32], char *out) {
  static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (int i = 0; i < 32; i++) {
    acc = (acc << 8) | raw[i];
    bits += 8;
    while (bits >= 6) {
      out[o++] = tbl[(acc >> (bits - 6)) & 63];
      bits -= 6;
    }
  }
  if (bits > 0) out[o++] = tbl[(acc << (6 - bits)) & 63];
  out[o] = '\0';
}

int auth_token_create(db_conn *db, const char *scope, const char *name, auth_token *out,
                      char secret[AUTH_SECRET_LEN], srv_err *e) {
  auth_scope sc = auth_scope_parse(scope);
  if (sc == AUTH_SCOPE_NONE)
    return srv_err_set_path(e, 400, "invalid_scope", "$.scope",
                            "scope must be one of read, submit, admin, worker");
  if (!name) name = "";
  if (strlen(name) >= sizeof out->name)
    return srv_err_set_path(e, 400, "invalid_name", "$.name", "name is longer than %zu bytes",
                            sizeof out->name - 1);
  unsigned char raw[32];
  if (util_random(raw, sizeof raw) != 0 || util_id_new("tok_", out->id) != 0)
    return srv_err_set(e, 500, "internal", "the kernel random source failed");
  memcpy(secret, "lathe_", 6);
  auth_secret_encode(raw, secret + 6);
  char hash[65];
  util_sha256_hex(secret, strlen(secret), hash);
  snprintf(out->name, sizeof out->name, "%s", name);
  out->scope = sc;
  out->created_at = util_now_ms();
  out->revoked_at = 0;
  sqlite3_stmt *st = db_stmt(db,
                             "INSERT INTO tokens (id, name, scope, hash, created_at) "
                             "VALUES (?1, ?2, ?3, ?4, ?5)",
                             e);
  if (!st) return -1;
  sqlite3_bind_text(st, 1, out->id, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, out->name, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, auth_scope_name(sc), -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 4, hash, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 5, out->created_at);
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : DB_FAIL(db, e);
}

static void auth_token_from_row(sqlite3_stmt *st, auth_token *t) {
  snprintf(t->id, sizeof t->id, "%s", (const char *)sqlite3_column_text(st, 0));
  snprintf(t->name, sizeof t->name, "%s", (const char *)sqlite3_column_text(st, 1));
  t->scope = auth_scope_parse((const char *)sqlite3_column_text(st, 2));
  t->created_at = sqlite3_column_int64(st, 3);
  t->revoked_at = sqlite3_column_int64(st, 4);
}

int auth_token_lookup(db_conn *db, const char *secret, auth_token *out, srv_err *e) {
  if (!secret || strncmp(secret, "lathe_", 6) != 0 || strlen(secret) != 49)
    return srv_err_set(e, 401, "unauthorized",
                       "invalid token; send Authorization: Bearer lathe_… (create one with "
                       "lathe-server token create)");
  char hash[65];
  util_sha256_hex(secret, strlen(secret), hash);
  sqlite3_stmt *st = db_stmt(db,
                             "SELECT id, name, scope, created_at, coalesce(revoked_at, 0), hash "
                             "FROM tokens WHERE hash = ?1",
                             e);
  if (!st) return -1;
  sqlite3_bind_text(st, 1, hash, 64, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  int ok = 0;
  if (rc == SQLITE_ROW) {
    const void *stored = sqlite3_column_text(st, 5);
    ok = stored && sqlite3_column_bytes(st, 5) == 64 && CRYPTO_memcmp(stored, hash, 64) == 0;
    if (ok) auth_token_from_row(st, out);
  }
  sqlite3_reset(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return DB_FAIL(db, e);
  if (!ok || out->revoked_at != 0 || out->scope == AUTH_SCOPE_NONE)
    return srv_err_set(e, 401, "unauthorized", "unknown or revoked token");
  return 0;
}

int auth_token_revoke(db_conn *db, const char *id, auth_token *out, srv_err *e) {
  sqlite3_stmt *st = db_stmt(db,
                             "UPDATE tokens SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1 "
                             "RETURNING id, name, scope, created_at, revoked_at",
                             e);
  if (!st) return -1;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, util_now_ms());
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) auth_token_from_row(st, out);
  sqlite3_reset(st);
  if (rc == SQLITE_ROW) return 0;
  if (rc == SQLITE_DONE) return srv_err_set(e, 404, "not_found", "no token %s", id);
  return DB_FAIL(db, e);
}

cJSON *auth_token_json(const auth_token *t) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "id", t->id);
  cJSON_AddStringToObject(o, "name", t->name);
  cJSON_AddStringToObject(o, "scope", auth_scope_name(t->scope));
  util_json_add_time(o, "created_at", t->created_at);
  util_json_add_time(o, "revoked_at", t->revoked_at);
  return o;
}

cJSON *auth_token_list(db_conn *db, srv_err *e) {
  sqlite3_stmt *st = db_stmt(db,
                             "SELECT id, name, scope, created_at, coalesce(revoked_at, 0) "
                             "FROM tokens ORDER BY created_at DESC, id",
                             e);
  if (!st) return NULL;
  cJSON *out = cJSON_CreateObject();
  cJSON *items = cJSON_AddArrayToObject(out, "items");
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    auth_token t;
    auth_token_from_row(st, &t);
    cJSON_AddItemToArray(items, auth_token_json(&t));
  }
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    cJSON_Delete(out);
    DB_FAIL(db, e);
    return NULL;
  }
  return out;
}
