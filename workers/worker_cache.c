/* workers/worker_cache.c — lathe-worker's input cache: uploads by SHA-256.
 *
 * An input is stored once as cache_dir/files/<sha256>, whatever id or name it was uploaded
 * under, so re-uploads and several jobs over one dataset download it once. A download goes to a
 * temporary file in the same folder, is hashed while it streams, and is renamed into place only
 * when its SHA-256 matches what the server says the upload is; a cached copy is re-hashed before
 * every use, so a file damaged on disk is fetched again rather than fed to a job. A file's mtime
 * is its last use; past --cache-max-gb the least recently used go first.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "job.h"
#include "worker.h"

static int wk_cache_is_sha256(const char *s) {
  if (!s || strlen(s) != 64) return 0;
  for (const char *c = s; *c; c++)
    if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f'))) return 0;
  return 1;
}

/* What the server says the upload's SHA-256 is. */
static int wk_cache_expected_sha(wk_http *h, const char *collection, const char *id, char sha[65],
                                 char *why, size_t whycap) {
  char path[256];
  snprintf(path, sizeof path, "/api/v1/%s/%s", collection, id);
  wk_resp r;
  if (wk_http_json(h, "GET", path, NULL, 30, 1, &r) != 0) {
    snprintf(why, whycap, "asking the server about %s failed: %s", id, r.error);
    wk_resp_free(&r);
    return JOB_EXIT_FAILED;
  }
  int rc = 0;
  cJSON *obj = r.status == 200 && r.body ? cJSON_Parse(r.body) : NULL;
  const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(obj, "sha256"));
  if (r.status == 404) {
    snprintf(why, whycap, "%s does not exist on the server (deleted after the job was submitted?)", id);
    rc = JOB_EXIT_BAD_INPUT;
  } else if (r.status != 200 || !wk_cache_is_sha256(s)) {
    snprintf(why, whycap, "GET %s answered %ld without a sha256", path, r.status);
    rc = JOB_EXIT_FAILED;
  } else {
    memcpy(sha, s, 65);
  }
  cJSON_Delete(obj);
  wk_resp_free(&r);
  return rc;
}

static int wk_cache_mkdir(const char *dir) {
  return mkdir(dir, 0700) == 0 || errno == EEXIST ? 0 : -1;
}

int wk_cache_fetch(const wk_config *c, wk_http *h, const char *file_kind, const char *id,
                   char *path, size_t pathcap, char *why, size_t whycap) {
  const char *collection = !strcmp(file_kind, "model") ? "models" : "datasets";
  char sha[65];
  int rc = wk_cache_expected_sha(h, collection, id, sha, why, whycap);
  if (rc) return rc;
  char files[4096];
  snprintf(files, sizeof files, "%s/files", c->cache_dir);
  if (wk_cache_mkdir(c->cache_dir) || wk_cache_mkdir(files)) {
    snprintf(why, whycap, "cannot create the cache folder %s: %s", files, strerror(errno));
    return JOB_EXIT_FAILED;
  }
  snprintf(path, pathcap, "%s/%s", files, sha);
  char have[65];
  if (wk_sha256_file(path, have) == 0) {
    if (!strcmp(have, sha)) {
      utimensat(AT_FDCWD, path, NULL, 0); /* mtime = last use, for wk_cache_trim */
      return 0;                           /* a verified hit */
    }
    unlink(path);                     /* damaged on disk: fetch it again */
  }
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s/.partial-%s-XXXXXX", files, sha);
  int fd = mkstemp(tmp);
  if (fd < 0) {
    snprintf(why, whycap, "cannot create a file in %s: %s", files, strerror(errno));
    return JOB_EXIT_FAILED;
  }
  char url[256];
  snprintf(url, sizeof url, "/api/v1/%s/%s/content", collection, id);
  char got[65];
  wk_resp r;
  int dl = wk_http_download(h, url, fd, got, &r);
  int synced = dl == 0 ? fsync(fd) : 0;
  close(fd);
  if (dl != 0) {
    rc = r.status == 404 ? JOB_EXIT_BAD_INPUT : JOB_EXIT_FAILED;
    if (r.status)
      snprintf(why, whycap, "downloading %s failed: HTTP %ld", id, r.status);
    else
      snprintf(why, whycap, "downloading %s failed: %s", id, r.error);
  } else if (synced != 0) {
    rc = JOB_EXIT_FAILED;
    snprintf(why, whycap, "saving %s in the cache failed: %s", id, strerror(errno));
  } else if (strcmp(got, sha)) {
    rc = JOB_EXIT_FAILED;
    snprintf(why, whycap, "downloaded %s hashes to %.16s…, not the server's %.16s…; retrying later",
             id, got, sha);
  } else if (rename(tmp, path) != 0) {
    rc = JOB_EXIT_FAILED;
    snprintf(why, whycap, "cannot move the download into %s: %s", path, strerror(errno));
  }
  wk_resp_free(&r);
  if (rc) unlink(tmp);
  return rc;
}

void wk_cache_sweep(const wk_config *c) {
  char files[4096];
  snprintf(files, sizeof files, "%s/files", c->cache_dir);
  DIR *d = opendir(files);
  if (!d) return;
  struct dirent *e;
  time_t now = time(NULL);
  while ((e = readdir(d))) {
    if (strncmp(e->d_name, ".partial-", 9)) continue;
    struct stat st;
    if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
        now - st.st_mtime > 600)
      unlinkat(dirfd(d), e->d_name, 0);
  }
  closedir(d);
}

typedef struct wk_cached {
  char name[65];
  off_t size;
  time_t used;
} wk_cached;

static int wk_cached_older(const void *a, const void *b) {
  const wk_cached *x = a, *y = b;
  return x->used < y->used ? -1 : x->used > y->used;
}

void wk_cache_trim(const wk_config *c, const cJSON *keep) {
  if (c->cache_max_bytes <= 0) return;
  char files[4096];
  snprintf(files, sizeof files, "%s/files", c->cache_dir);
  DIR *d = opendir(files);
  if (!d) return;
  wk_cached *list = NULL;
  size_t n = 0, cap = 0;
  double total = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    struct stat st;
    if (!wk_cache_is_sha256(e->d_name) || fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        !S_ISREG(st.st_mode))
      continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      wk_cached *grown = realloc(list, cap * sizeof *list);
      if (!grown) break;
      list = grown;
    }
    memcpy(list[n].name, e->d_name, 65);
    list[n].size = st.st_size;
    list[n].used = st.st_mtime;
    total += (double)st.st_size;
    n++;
  }
  qsort(list, n, sizeof *list, wk_cached_older);
  for (size_t i = 0; i < n && total > c->cache_max_bytes; i++) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", files, list[i].name);
    int kept = 0;
    const cJSON *k;
    cJSON_ArrayForEach(k, keep) kept |= cJSON_IsString(k) && !strcmp(k->valuestring, path);
    if (kept) continue;
    if (unlinkat(dirfd(d), list[i].name, 0) == 0) total -= (double)list[i].size;
  }
  free(list);
  closedir(d);
}
