/* server/util.c — errors, ids, times, hex, page tokens and JSON helpers (see util.h). */
#include "util.h"

#include <errno.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static int srv_err_vset(srv_err *e, int status, const char *code, const char *path,
                        const char *fmt, va_list ap) {
  if (!e) return -1;
  e->status = status;
  snprintf(e->code, sizeof e->code, "%s", code);
  snprintf(e->path, sizeof e->path, "%s", path ? path : "");
  vsnprintf(e->message, sizeof e->message, fmt, ap);
  return -1;
}

int srv_err_set(srv_err *e, int status, const char *code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  srv_err_vset(e, status, code, NULL, fmt, ap);
  va_end(ap);
  return -1;
}

int srv_err_set_path(srv_err *e, int status, const char *code, const char *path, const char *fmt,
                     ...) {
  va_list ap;
  va_start(ap, fmt);
  srv_err_vset(e, status, code, path, fmt, ap);
  va_end(ap);
  return -1;
}

int64_t util_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void util_time_format(int64_t unix_ms, char *out) {
  time_t secs = (time_t)(unix_ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  /* Years past 9999 cannot occur for times this server records; the cast keeps the format's
   * width provable to the compiler. */
  snprintf(out, 32, "%04u-%02u-%02uT%02u:%02u:%02u.%03uZ", (unsigned)(tm.tm_year + 1900) % 10000u,
           (unsigned)(tm.tm_mon + 1) % 100u, (unsigned)tm.tm_mday % 100u,
           (unsigned)tm.tm_hour % 100u, (unsigned)tm.tm_min % 100u, (unsigned)tm.tm_sec % 100u,
           (unsigned)(unix_ms % 1000) % 1000u);
}

void util_json_add_time(cJSON *obj, const char *key, int64_t unix_ms) {
  if (unix_ms <= 0) {
    cJSON_AddNullToObject(obj, key);
    return;
  }
  char buf[32];
  util_time_format(unix_ms, buf);
  cJSON_AddStringToObject(obj, key, buf);
}

int util_random(void *buf, size_t n) {
  unsigned char *p = buf;
  while (n > 0) {
    ssize_t got = getrandom(p, n, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += got;
    n -= (size_t)got;
  }
  return 0;
}

int util_hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void util_hex(const unsigned char *in, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  out[2 * n] = '\0';
}

void util_sha256_hex(const void *data, size_t n, char out[65]) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(data, n, md);
  util_hex(md, sizeof md, out);
}

int util_id_new(const char *prefix, char *out) {
  unsigned char raw[8];
  if (util_random(raw, sizeof raw) != 0) return -1;
  size_t plen = strlen(prefix);
  if (plen + 17 > UTIL_ID_LEN) return -1;
  memcpy(out, prefix, plen);
  util_hex(raw, sizeof raw, out + plen);
  return 0;
}

static int util_is_lower_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

int util_id_valid(const char *s, const char *prefix) {
  if (!s) return 0;
  size_t plen = strlen(prefix);
  if (strncmp(s, prefix, plen) != 0) return 0;
  s += plen;
  for (int i = 0; i < 16; i++)
    if (!util_is_lower_hex(s[i])) return 0;
  return s[16] == '\0';
}

/* The sequence number is mixed with a fixed key so tokens do not read as counters; this is
 * opacity, not secrecy (a token grants nothing the list route does not already give). */
#define UTIL_PAGE_KEY 0x5a17e5eedc0ffee1ULL

void util_page_token_encode(int64_t seq, char out[40]) {
  uint64_t v = (uint64_t)seq ^ UTIL_PAGE_KEY;
  unsigned char raw[8];
  for (int i = 0; i < 8; i++) raw[i] = (unsigned char)(v >> (56 - 8 * i));
  out[0] = 'p';
  util_hex(raw, 8, out + 1);
}

int util_page_token_decode(const char *token, int64_t *seq) {
  if (!token || token[0] != 'p' || strlen(token) != 17) return -1;
  uint64_t v = 0;
  for (int i = 1; i <= 16; i++) {
    char c = token[i];
    if (!util_is_lower_hex(c)) return -1;
    v = (v << 4) | (uint64_t)(c <= '9' ? c - '0' : c - 'a' + 10);
  }
  v ^= UTIL_PAGE_KEY;
  if (v > (uint64_t)INT64_MAX) return -1;
  *seq = (int64_t)v;
  return 0;
}

int util_json_depth(const char *text, size_t n) {
  int depth = 0, max_depth = 0, in_string = 0;
  for (size_t i = 0; i < n; i++) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') i++;
      else if (c == '"') in_string = 0;
      continue;
    }
    if (c == '"') in_string = 1;
    else if (c == '[' || c == '{') {
      if (++depth > max_depth) max_depth = depth;
    } else if (c == ']' || c == '}') depth--;
  }
  return max_depth;
}

int util_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
  if (!s || !*s) return -1;
  errno = 0;
  char *end = NULL;
  long long v = strtoll(s, &end, 10);
  if (errno || *end != '\0' || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

const char *util_json_str(const cJSON *obj, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}
