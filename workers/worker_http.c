/* workers/worker_http.c — lathe-worker's HTTP client over libcurl, and SHA-256 of files.
 *
 * One wk_http (one curl easy handle, so connections are reused) per thread: the main loop has
 * one, the heartbeat thread its own. Response bodies are capped, since a server is trusted but
 * a proxy in between may not be; downloads stream to a file descriptor and are hashed on the
 * way, so a dataset never sits in memory.
 */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker.h"

enum { WK_BODY_MAX = 16 << 20 };

struct wk_http {
  CURL *curl;
  const wk_config *c;
  struct curl_slist *json_headers; /* Authorization + JSON content type */
  struct curl_slist *raw_headers;  /* Authorization + octet-stream */
};

static struct curl_slist *wk_http_headers(const char *token, const char *content_type) {
  char auth[1024];
  snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
  struct curl_slist *l = curl_slist_append(NULL, auth);
  char ct[128];
  snprintf(ct, sizeof ct, "Content-Type: %s", content_type);
  l = curl_slist_append(l, ct);
  return curl_slist_append(l, "Expect:"); /* no 100-continue round trip on uploads */
}

wk_http *wk_http_open(const wk_config *c) {
  wk_http *h = calloc(1, sizeof *h);
  if (!h) return NULL;
  h->c = c;
  h->curl = curl_easy_init();
  h->json_headers = wk_http_headers(c->token, "application/json");
  h->raw_headers = wk_http_headers(c->token, "application/octet-stream");
  if (!h->curl || !h->json_headers || !h->raw_headers) {
    wk_http_close(h);
    return NULL;
  }
  return h;
}

void wk_http_close(wk_http *h) {
  if (!h) return;
  if (h->curl) curl_easy_cleanup(h->curl);
  curl_slist_free_all(h->json_headers);
  curl_slist_free_all(h->raw_headers);
  free(h);
}

void wk_resp_free(wk_resp *r) {
  free(r->body);
  r->body = NULL;
  r->len = 0;
}

char *wk_http_escape(wk_http *h, const char *s) {
  char *e = curl_easy_escape(h->curl, s, 0);
  char *copy = e ? strdup(e) : NULL;
  curl_free(e);
  return copy;
}

static size_t wk_http_collect(char *data, size_t size, size_t n, void *user) {
  wk_resp *r = user;
  size_t bytes = size * n;
  if (r->len + bytes > WK_BODY_MAX) return 0; /* aborts the transfer */
  char *grown = realloc(r->body, r->len + bytes + 1);
  if (!grown) return 0;
  memcpy(grown + r->len, data, bytes);
  r->body = grown;
  r->len += bytes;
  r->body[r->len] = 0;
  return bytes;
}

static int wk_http_abort_check(void *user, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un) {
  return wk_shutdown ? 1 : 0;
}

/* Options common to every request. */
static void wk_http_prepare(wk_http *h, const char *path, long timeout_s, int abortable,
                            wk_resp *r) {
  CURL *c = h->curl;
  curl_easy_reset(c);
  char url[4096];
  snprintf(url, sizeof url, "%s%s", h->c->server, path);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, timeout_s);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L); /* never send the token elsewhere */
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, wk_http_collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
  if (abortable) {
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, wk_http_abort_check);
  }
  memset(r, 0, sizeof *r);
}

static int wk_http_perform(wk_http *h, wk_resp *r) {
  CURLcode rc = curl_easy_perform(h->curl);
  if (rc != CURLE_OK) {
    snprintf(r->error, sizeof r->error, "%s", curl_easy_strerror(rc));
    r->status = 0;
    return -1;
  }
  curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &r->status);
  return 0;
}

int wk_http_json(wk_http *h, const char *method, const char *path, const cJSON *body,
                 long timeout_s, int abortable, wk_resp *r) {
  wk_http_prepare(h, path, timeout_s, abortable, r);
  char *text = body ? cJSON_PrintUnformatted(body) : NULL;
  curl_easy_setopt(h->curl, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, h->json_headers);
  if (text) curl_easy_setopt(h->curl, CURLOPT_POSTFIELDS, text);
  else if (!strcmp(method, "POST")) curl_easy_setopt(h->curl, CURLOPT_POSTFIELDS, "");
  int rc = wk_http_perform(h, r);
  free(text);
  return rc;
}

typedef struct wk_download {
  int fd;
  EVP_MD_CTX *md;
  int failed;
  wk_resp *r;
} wk_download;

static size_t wk_http_to_file(char *data, size_t size, size_t n, void *user) {
  wk_download *d = user;
  size_t bytes = size * n;
  size_t done = 0;
  while (done < bytes) {
    ssize_t w = write(d->fd, data + done, bytes - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      d->failed = errno ? errno : EIO;
      return 0;
    }
    done += (size_t)w;
  }
  EVP_DigestUpdate(d->md, data, bytes);
  return bytes;
}

static void wk_hex(const unsigned char *bytes, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[bytes[i] >> 4];
    out[2 * i + 1] = digits[bytes[i] & 15];
  }
  out[2 * n] = 0;
}

int wk_http_download(wk_http *h, const char *path, int fd, char sha256_hex[65], wk_resp *r) {
  wk_http_prepare(h, path, 0, 1, r);
  wk_download d = {fd, EVP_MD_CTX_new(), 0, r};
  if (!d.md || EVP_DigestInit_ex(d.md, EVP_sha256(), NULL) != 1) {
    EVP_MD_CTX_free(d.md);
    snprintf(r->error, sizeof r->error, "cannot start SHA-256");
    return -1;
  }
  curl_easy_setopt(h->curl, CURLOPT_HTTPGET, 1L);
  curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, h->json_headers);
  curl_easy_setopt(h->curl, CURLOPT_FAILONERROR, 1L); /* an error status is not file content */
  curl_easy_setopt(h->curl, CURLOPT_WRITEFUNCTION, wk_http_to_file);
  curl_easy_setopt(h->curl, CURLOPT_WRITEDATA, &d);
  /* no overall timeout for large files, but a stalled transfer is given up after a minute */
  curl_easy_setopt(h->curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(h->curl, CURLOPT_LOW_SPEED_TIME, 60L);
  CURLcode rc = curl_easy_perform(h->curl);
  curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &r->status);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  EVP_DigestFinal_ex(d.md, md, &mdlen);
  EVP_MD_CTX_free(d.md);
  wk_hex(md, mdlen, sha256_hex);
  if (rc != CURLE_OK) {
    if (d.failed)
      snprintf(r->error, sizeof r->error, "writing the download failed: %s", strerror(d.failed));
    else
      snprintf(r->error, sizeof r->error, "%s", curl_easy_strerror(rc));
    if (rc != CURLE_HTTP_RETURNED_ERROR) r->status = 0;
    return -1;
  }
  return 0;
}

int wk_http_upload(wk_http *h, const char *path, const char *file_path, wk_resp *r) {
  FILE *fp = fopen(file_path, "rb");
  if (!fp) {
    memset(r, 0, sizeof *r);
    snprintf(r->error, sizeof r->error, "cannot open %s: %s", file_path, strerror(errno));
    return -1;
  }
  fseeko(fp, 0, SEEK_END);
  off_t size = ftello(fp);
  rewind(fp);
  wk_http_prepare(h, path, 0, 1, r);
  curl_easy_setopt(h->curl, CURLOPT_UPLOAD, 1L); /* PUT */
  curl_easy_setopt(h->curl, CURLOPT_READDATA, fp);
  curl_easy_setopt(h->curl, CURLOPT_INFILESIZE_LARGE, (curl_off_t)size);
  curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, h->raw_headers);
  curl_easy_setopt(h->curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(h->curl, CURLOPT_LOW_SPEED_TIME, 60L);
  int rc = wk_http_perform(h, r);
  fclose(fp);
  return rc;
}

int wk_sha256_file(const char *path, char out[65]) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
    EVP_MD_CTX_free(md);
    close(fd);
    return -1;
  }
  static __thread unsigned char buf[1 << 16];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
    if (n > 0) EVP_DigestUpdate(md, buf, (size_t)n);
  close(fd);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(md, digest, &len);
  EVP_MD_CTX_free(md);
  if (n < 0) return -1;
  wk_hex(digest, len, out);
  return 0;
}
