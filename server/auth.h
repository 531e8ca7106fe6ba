/* server/auth.h — bearer tokens: creation, lookup by SHA-256, scopes and what each allows.
 *
 *   char secret[AUTH_SECRET_LEN];
 *   auth_token_create(db, "admin", "first", &tok, secret, &e);   // secret shown once
 *   if (auth_token_lookup(db, bearer, &tok, &e) != 0) ... 401
 *   if (!auth_scope_allows(tok.scope, AUTH_NEED_SUBMIT)) ... 403
 *
 * Only the SHA-256 of a secret is stored; the stored and computed digests are compared with
 * CRYPTO_memcmp. Not for: sessions or passwords.
 */
#ifndef LATHE_SERVER_AUTH_H
#define LATHE_SERVER_AUTH_H

#include <stdint.h>

#include "db.h"

typedef enum auth_scope {
  AUTH_SCOPE_NONE = 0,
  AUTH_SCOPE_READ,
  AUTH_SCOPE_SUBMIT,
  AUTH_SCOPE_ADMIN,
  AUTH_SCOPE_WORKER
} auth_scope;

/* What a route needs; auth_scope_allows maps scopes onto these (schema/CONTRACT.md "Auth"). */
typedef enum auth_need {
  AUTH_NEED_NONE,        /* public: /healthz */
  AUTH_NEED_READ,        /* GET of everything but tokens */
  AUTH_NEED_WORKER_READ, /* GET of models/datasets (and their content) and jobs: read or worker */
  AUTH_NEED_SUBMIT,      /* uploads, create/cancel/retry jobs, delete own uploads */
  AUTH_NEED_WORKER,      /* the worker protocol routes under /api/v1/workers/ */
  AUTH_NEED_ADMIN        /* tokens */
} auth_need;

#define AUTH_SECRET_LEN 52 /* "lathe_" + 43 base64url + NUL, rounded */

typedef struct auth_token {
  char id[UTIL_ID_LEN];
  char name[128];
  auth_scope scope;
  int64_t created_at; /* unix ms */
  int64_t revoked_at; /* unix ms, 0 when live */
} auth_token;

const char *auth_scope_name(auth_scope s);
auth_scope auth_scope_parse(const char *s); /* AUTH_SCOPE_NONE when unknown */
int auth_scope_allows(auth_scope s, auth_need need);

/* Creates a token; secret receives the bearer string. 0 or -1 with e filled. */
int auth_token_create(db_conn *db, const char *scope, const char *name, auth_token *out,
                      char secret[AUTH_SECRET_LEN], srv_err *e);
/* 0 and *out filled for a live token; -1 with e = 401 for unknown, revoked or malformed. */
int auth_token_lookup(db_conn *db, const char *secret, auth_token *out, srv_err *e);
/* Marks a token revoked; 404 when unknown. */
int auth_token_revoke(db_conn *db, const char *id, auth_token *out, srv_err *e);
cJSON *auth_token_json(const auth_token *t);
/* {"items": [...]} of all tokens, newest first, without secrets. */
cJSON *auth_token_list(db_conn *db, srv_err *e);

#endif
