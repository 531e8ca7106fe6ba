/* server/util.h — small pieces every server module uses: errors that carry an HTTP status,
 * ids, RFC 3339 times, hex, page tokens and JSON helpers.
 *
 *   srv_err e = {0};
 *   if (queue_job_cancel(db, id, &e) != 0) respond_error(con, &e);   // e.status = 404, ...
 *   char id[24]; util_id_new("job_", id);                             // "job_3f2a…" (16 hex)
 *
 * Not for: anything that needs HTTP or SQLite.
 */
#ifndef LATHE_SERVER_UTIL_H
#define LATHE_SERVER_UTIL_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

/* An error as the API reports it: status 4xx/5xx, {"code", "message", "path"?}. */
typedef struct srv_err {
  int status;        /* HTTP status */
  char code[48];     /* snake_case */
  char message[512]; /* what went wrong and what to do */
  char path[256];    /* JSON path of the fault, or "" */
} srv_err;

/* Fills e and returns -1, so a failure is one line: return srv_err_set(e, 404, ...). */
int srv_err_set(srv_err *e, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int srv_err_set_path(srv_err *e, int status, const char *code, const char *path, const char *fmt,
                     ...) __attribute__((format(printf, 5, 6)));

#define UTIL_ID_LEN 24 /* longest prefix "mdl_"/"art_" (4) + 16 hex + NUL, rounded */

int64_t util_now_ms(void);
/* "2026-11-26T13:20:00.123Z"; out holds at least 32 bytes. */
void util_time_format(int64_t unix_ms, char *out);
/* Adds the time as a string, or JSON null when unix_ms <= 0 (not happened yet). */
void util_json_add_time(cJSON *obj, const char *key, int64_t unix_ms);

/* prefix + 16 random lowercase hex digits; out holds UTIL_ID_LEN bytes. 0, or -1 when the
 * kernel's random source fails. */
int util_id_new(const char *prefix, char *out);
/* 1 when s is exactly prefix + 16 lowercase hex digits. Every path parameter goes through this,
 * so "../", "%2e%2e" (decoded by MHD) and NUL tricks never reach SQL or the file system. */
int util_id_valid(const char *s, const char *prefix);

/* 0–15 for a hex digit (either case), else -1. */
int util_hex_digit(char c);
void util_hex(const unsigned char *in, size_t n, char *out); /* out: 2n+1 bytes */
void util_sha256_hex(const void *data, size_t n, char out[65]);
/* Fills buf with n random bytes from the kernel; 0 or -1. */
int util_random(void *buf, size_t n);

/* Opaque page tokens over a sequence number: "p" + base64url-ish hex, checked on decode. */
void util_page_token_encode(int64_t seq, char out[40]);
int util_page_token_decode(const char *token, int64_t *seq); /* 0, or -1 when malformed */

/* Depth of [ and { nesting in JSON text (strings skipped). Checked before cJSON parses, so a
 * hostile "[[[[…" costs one linear scan and no recursion. */
int util_json_depth(const char *text, size_t n);

/* Strict integer parse of a whole string within [lo, hi]; 0 or -1. */
int util_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out);

/* The string at key, or NULL when absent or not a string. */
const char *util_json_str(const cJSON *obj, const char *key);

#endif
