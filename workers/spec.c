/* workers/spec.c — the job-spec validator: a JSON Schema subset over cJSON (schema/CONTRACT.md).
 *
 * The schemas of schema/jobs/<kind>.json are embedded at build time (spec_schemas.c, generated)
 * and parsed once, on first use, under pthread_once, so lathe-server may validate from any
 * thread. Each schema is itself checked when it is loaded: a keyword outside the supported subset
 * or a default that its own schema refuses makes every validation of that kind fail with a
 * message naming the schema fault, rather than silently accepting specs the author meant to
 * refuse.
 *
 * A spec is hostile input: before the schema walk, a bounded pre-pass refuses nesting deeper
 * than SPEC_MAX_DEPTH and strings (values or keys) longer than SPEC_MAX_STRING, so the walk
 * never recurses deeper than the schema itself. Unknown properties are refused unless a schema
 * says "additionalProperties": true (or gives a schema for them): a typo in a spec must not be
 * silently ignored.
 */
#include "spec.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec_schemas.h"

enum {
  SPEC_MAX_DEPTH = 32,     /* nesting of objects and arrays in a spec */
  SPEC_MAX_STRING = 4096,  /* bytes in one string value or key */
  SPEC_PATH_CAP = 4096,    /* internal path buffer; the fault keeps the first 255 bytes */
  SPEC_KEY_SHOWN = 64      /* a longer key is abbreviated in paths */
};

/* The largest integer a double holds exactly: integers beyond it are refused, since the spec
 * travels through cJSON (doubles) and an engine int64 must get exactly what the user wrote. */
#define SPEC_INT_LIMIT 9007199254740992.0

typedef struct spec_path {
  char buf[SPEC_PATH_CAP];
  size_t len;
} spec_path;

typedef struct spec_loaded {
  const char *kind;
  cJSON *schema;      /* parsed; NULL when broken */
  char broken[512];   /* why the schema could not be used; empty when fine */
} spec_loaded;

static spec_loaded *spec_table;
static size_t spec_table_len;
static pthread_once_t spec_table_once = PTHREAD_ONCE_INIT;

static int spec_check(const cJSON *schema, cJSON *value, spec_path *p, spec_fault *f);

/* ---- faults and paths ---- */

static int spec_faultf(spec_fault *f, const spec_path *p, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int spec_faultf(spec_fault *f, const spec_path *p, const char *fmt, ...) {
  if (f) {
    snprintf(f->path, sizeof f->path, "%.*s", (int)sizeof f->path - 1, p->buf);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->message, sizeof f->message, fmt, ap);
    va_end(ap);
  }
  return -1;
}

static int spec_key_is_plain(const char *key) {
  if (!((*key >= 'a' && *key <= 'z') || (*key >= 'A' && *key <= 'Z') || *key == '_')) return 0;
  for (const char *c = key; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
          *c == '_'))
      return 0;
  return 1;
}

/* Appends ".key" (or ["ke\"y"] for keys that are not identifiers) and returns the old length,
 * which spec_path_pop restores. Long keys are abbreviated so a path stays readable. */
static size_t spec_path_push_key(spec_path *p, const char *key) {
  size_t old = p->len;
  char seg[SPEC_KEY_SHOWN * 6 + 16];
  size_t n = 0;
  if (spec_key_is_plain(key) && strlen(key) <= SPEC_KEY_SHOWN) {
    n = (size_t)snprintf(seg, sizeof seg, ".%s", key);
  } else {
    seg[n++] = '[';
    seg[n++] = '"';
    size_t shown = 0;
    for (const unsigned char *c = (const unsigned char *)key; *c; c++, shown++) {
      if (shown == SPEC_KEY_SHOWN) {
        n += (size_t)snprintf(seg + n, sizeof seg - n, "...");
        break;
      }
      if (*c == '"' || *c == '\\')
        n += (size_t)snprintf(seg + n, sizeof seg - n, "\\%c", *c);
      else if (*c < 0x20 || *c == 0x7f)
        n += (size_t)snprintf(seg + n, sizeof seg - n, "\\u%04x", *c);
      else
        seg[n++] = (char)*c;
    }
    seg[n++] = '"';
    seg[n++] = ']';
    seg[n] = 0;
  }
  if (p->len + n < sizeof p->buf) {
    memcpy(p->buf + p->len, seg, n + 1);
    p->len += n;
  }
  return old;
}

static size_t spec_path_push_index(spec_path *p, int index) {
  size_t old = p->len;
  char seg[24];
  int n = snprintf(seg, sizeof seg, "[%d]", index);
  if (p->len + (size_t)n < sizeof p->buf) {
    memcpy(p->buf + p->len, seg, (size_t)n + 1);
    p->len += (size_t)n;
  }
  return old;
}

static void spec_path_pop(spec_path *p, size_t old) {
  p->len = old;
  p->buf[old] = 0;
}

static void spec_path_init(spec_path *p) {
  strcpy(p->buf, "$.spec");
  p->len = strlen(p->buf);
}

/* ---- types ---- */

static int spec_is_integer(const cJSON *v) {
  return cJSON_IsNumber(v) && isfinite(v->valuedouble) && floor(v->valuedouble) == v->valuedouble;
}

static const char *spec_value_type(const cJSON *v) {
  if (cJSON_IsObject(v)) return "object";
  if (cJSON_IsArray(v)) return "array";
  if (cJSON_IsString(v)) return "string";
  if (cJSON_IsBool(v)) return "boolean";
  if (cJSON_IsNull(v)) return "null";
  if (spec_is_integer(v)) return "integer";
  if (cJSON_IsNumber(v)) return "number";
  return "invalid";
}

static int spec_type_matches(const char *type, const cJSON *v) {
  if (!strcmp(type, "object")) return cJSON_IsObject(v);
  if (!strcmp(type, "array")) return cJSON_IsArray(v);
  if (!strcmp(type, "string")) return cJSON_IsString(v);
  if (!strcmp(type, "boolean")) return cJSON_IsBool(v);
  if (!strcmp(type, "null")) return cJSON_IsNull(v);
  if (!strcmp(type, "integer")) return spec_is_integer(v);
  if (!strcmp(type, "number")) return cJSON_IsNumber(v);
  return 0;
}

/* Counts UTF-8 code points, as JSON Schema's minLength/maxLength do. */
static size_t spec_utf8_length(const char *s) {
  size_t n = 0;
  for (const unsigned char *c = (const unsigned char *)s; *c; c++)
    if ((*c & 0xC0) != 0x80) n++;
  return n;
}

/* A short rendering of a value for messages, e.g. "got \"fast\"" or "got 0". */
static void spec_value_show(const cJSON *v, char *out, size_t cap) {
  if (cJSON_IsString(v)) {
    if (strlen(v->valuestring) > 40)
      snprintf(out, cap, "a string of %zu bytes", strlen(v->valuestring));
    else
      snprintf(out, cap, "\"%s\"", v->valuestring);
  } else if (cJSON_IsNumber(v)) {
    snprintf(out, cap, "%.17g", v->valuedouble);
  } else if (cJSON_IsBool(v)) {
    snprintf(out, cap, "%s", cJSON_IsTrue(v) ? "true" : "false");
  } else {
    snprintf(out, cap, "%s %s", !strcmp(spec_value_type(v), "array") ? "an" : "a",
             spec_value_type(v));
  }
}

/* ---- the bounded pre-pass over hostile input ---- */

static int spec_check_bounds(const cJSON *v, int depth, spec_path *p, spec_fault *f) {
  if (cJSON_IsString(v) && strlen(v->valuestring) > SPEC_MAX_STRING)
    return spec_faultf(f, p, "string of %zu bytes is longer than the limit of %d bytes",
                       strlen(v->valuestring), SPEC_MAX_STRING);
  if (cJSON_IsNumber(v) && !isfinite(v->valuedouble))
    return spec_faultf(f, p, "number is out of range; give a finite number");
  if (!cJSON_IsObject(v) && !cJSON_IsArray(v)) return 0;
  if (depth >= SPEC_MAX_DEPTH)
    return spec_faultf(f, p, "nesting is deeper than the limit of %d levels", SPEC_MAX_DEPTH);
  int index = 0;
  for (const cJSON *c = v->child; c; c = c->next, index++) {
    size_t old;
    if (cJSON_IsObject(v)) {
      if (!c->string) return spec_faultf(f, p, "object member without a name");
      if (strlen(c->string) > SPEC_MAX_STRING)
        return spec_faultf(f, p, "a property name of %zu bytes is longer than the limit of %d",
                           strlen(c->string), SPEC_MAX_STRING);
      old = spec_path_push_key(p, c->string);
    } else {
      old = spec_path_push_index(p, index);
    }
    int rc = spec_check_bounds(c, depth + 1, p, f);
    spec_path_pop(p, old);
    if (rc) return rc;
  }
  return 0;
}

/* ---- the schema walk ---- */

static int spec_check_type(const cJSON *schema, const cJSON *v, spec_path *p, spec_fault *f) {
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(schema, "type");
  if (!type) return 0;
  char expected[128] = "";
  char shown[96];
  if (cJSON_IsString(type)) {
    if (spec_type_matches(type->valuestring, v)) return 0;
    snprintf(expected, sizeof expected, "%s", type->valuestring);
  } else {
    const cJSON *t;
    cJSON_ArrayForEach(t, type) {
      if (spec_type_matches(t->valuestring, v)) return 0;
      size_t n = strlen(expected);
      snprintf(expected + n, sizeof expected - n, "%s%s", n ? " or " : "", t->valuestring);
    }
  }
  spec_value_show(v, shown, sizeof shown);
  return spec_faultf(f, p, "must be %s %s, got %s",
                     strchr("aeiou", expected[0]) ? "an" : "a", expected, shown);
}

static int spec_check_enum(const cJSON *schema, const cJSON *v, spec_path *p, spec_fault *f) {
  const cJSON *en = cJSON_GetObjectItemCaseSensitive(schema, "enum");
  if (!en) return 0;
  const cJSON *e;
  char allowed[384] = "";
  cJSON_ArrayForEach(e, en) {
    if (cJSON_Compare(e, v, 1)) return 0;
    char one[96];
    spec_value_show(e, one, sizeof one);
    size_t n = strlen(allowed);
    snprintf(allowed + n, sizeof allowed - n, "%s%s", n ? ", " : "", one);
  }
  char shown[96];
  spec_value_show(v, shown, sizeof shown);
  return spec_faultf(f, p, "must be one of %s, got %s", allowed, shown);
}

static int spec_check_number(const cJSON *schema, const cJSON *v, spec_path *p, spec_fault *f) {
  if (!cJSON_IsNumber(v)) return 0;
  double x = v->valuedouble;
  const cJSON *k;
  if (spec_is_integer(v) && fabs(x) > SPEC_INT_LIMIT) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(schema, "type");
    if (cJSON_IsString(type) && !strcmp(type->valuestring, "integer"))
      return spec_faultf(f, p, "integer %.17g is too large; the limit is 2^53", x);
  }
  if ((k = cJSON_GetObjectItemCaseSensitive(schema, "minimum")) && x < k->valuedouble)
    return spec_faultf(f, p, "must be >= %.17g, got %.17g", k->valuedouble, x);
  if ((k = cJSON_GetObjectItemCaseSensitive(schema, "maximum")) && x > k->valuedouble)
    return spec_faultf(f, p, "must be <= %.17g, got %.17g", k->valuedouble, x);
  if ((k = cJSON_GetObjectItemCaseSensitive(schema, "exclusiveMinimum")) && x <= k->valuedouble)
    return spec_faultf(f, p, "must be > %.17g, got %.17g", k->valuedouble, x);
  if ((k = cJSON_GetObjectItemCaseSensitive(schema, "exclusiveMaximum")) && x >= k->valuedouble)
    return spec_faultf(f, p, "must be < %.17g, got %.17g", k->valuedouble, x);
  return 0;
}

static int spec_check_string(const cJSON *schema, const cJSON *v, spec_path *p, spec_fault *f) {
  if (!cJSON_IsString(v)) return 0;
  size_t len = spec_utf8_length(v->valuestring);
  const cJSON *k;
  if ((k = cJSON_GetObjectItemCaseSensitive(schema, "minLength")) && (double)len < k->valuedouble)
    return spec_faultf(f, p, "must be at least %.0f characters long, got %zu", k->valuedouble,
                       len);
  if ((k = cJSON_GetObjectItemCaseSensitive(schema, "maxLength")) && (double)len > k->valuedouble)
    return spec_faultf(f, p, "must be at most %.0f characters long, got %zu", k->valuedouble, len);
  return 0;
}

static int spec_check_array(const cJSON *schema, cJSON *v, spec_path *p, spec_fault *f) {
  if (!cJSON_IsArray(v)) return 0;
  int n = cJSON_GetArraySize(v);
  const cJSON *k;
  if ((k = cJSON_GetObjectItemCaseSensitive(schema, "minItems")) && n < k->valuedouble)
    return spec_faultf(f, p, "must have at least %.0f items, got %d", k->valuedouble, n);
  if ((k = cJSON_GetObjectItemCaseSensitive(schema, "maxItems")) && n > k->valuedouble)
    return spec_faultf(f, p, "must have at most %.0f items, got %d", k->valuedouble, n);
  const cJSON *items = cJSON_GetObjectItemCaseSensitive(schema, "items");
  if (!items) return 0;
  int index = 0;
  for (cJSON *c = v->child; c; c = c->next, index++) {
    size_t old = spec_path_push_index(p, index);
    int rc = spec_check(items, c, p, f);
    spec_path_pop(p, old);
    if (rc) return rc;
  }
  return 0;
}

static int spec_check_object(const cJSON *schema, cJSON *v, spec_path *p, spec_fault *f) {
  if (!cJSON_IsObject(v)) return 0;
  const cJSON *props = cJSON_GetObjectItemCaseSensitive(schema, "properties");
  const cJSON *extra = cJSON_GetObjectItemCaseSensitive(schema, "additionalProperties");
  /* A schema that only says oneOf leaves the properties to its branches. */
  if (!props && !extra && cJSON_GetObjectItemCaseSensitive(schema, "oneOf")) return 0;
  for (cJSON *c = v->child; c; c = c->next) {
    const cJSON *sub = props ? cJSON_GetObjectItemCaseSensitive(props, c->string) : NULL;
    size_t old = spec_path_push_key(p, c->string);
    int rc = 0;
    if (sub) {
      rc = spec_check(sub, c, p, f);
    } else if (cJSON_IsObject(extra)) {
      rc = spec_check(extra, c, p, f);
    } else if (!cJSON_IsTrue(extra)) {
      char known[384] = "";
      const cJSON *k;
      cJSON_ArrayForEach(k, props) {
        size_t n = strlen(known);
        snprintf(known + n, sizeof known - n, "%s%s", n ? ", " : "", k->string);
      }
      rc = spec_faultf(f, p, "unknown property; expected one of: %s",
                       known[0] ? known : "(none)");
    }
    spec_path_pop(p, old);
    if (rc) return rc;
  }
  const cJSON *req = cJSON_GetObjectItemCaseSensitive(schema, "required");
  const cJSON *r;
  cJSON_ArrayForEach(r, req) {
    if (cJSON_GetObjectItemCaseSensitive(v, r->valuestring)) continue;
    size_t old = spec_path_push_key(p, r->valuestring);
    const cJSON *sub = props ? cJSON_GetObjectItemCaseSensitive(props, r->valuestring) : NULL;
    const cJSON *desc = sub ? cJSON_GetObjectItemCaseSensitive(sub, "description") : NULL;
    int rc = spec_faultf(f, p, "is required%s%s", cJSON_IsString(desc) ? ": " : "",
                         cJSON_IsString(desc) ? desc->valuestring : "");
    spec_path_pop(p, old);
    return rc;
  }
  /* Defaults last: the spec is known good, and a filled default gets its own nested defaults. */
  const cJSON *prop;
  cJSON_ArrayForEach(prop, props) {
    const cJSON *def = cJSON_GetObjectItemCaseSensitive(prop, "default");
    if (!def || cJSON_GetObjectItemCaseSensitive(v, prop->string)) continue;
    cJSON *copy = cJSON_Duplicate(def, 1);
    if (!copy) return spec_faultf(f, p, "out of memory while filling defaults");
    cJSON_AddItemToObject(v, prop->string, copy);
    size_t old = spec_path_push_key(p, prop->string);
    int rc = spec_check(prop, copy, p, f);
    spec_path_pop(p, old);
    if (rc) return rc;
  }
  return 0;
}

/* Describes a oneOf branch for messages by its required properties: "{model}". */
static void spec_branch_describe(const cJSON *branch, char *out, size_t cap) {
  const cJSON *req = cJSON_GetObjectItemCaseSensitive(branch, "required");
  size_t n = (size_t)snprintf(out, cap, "an object with ");
  const cJSON *r;
  int first = 1;
  cJSON_ArrayForEach(r, req) {
    if (n < cap) n += (size_t)snprintf(out + n, cap - n, "%s\"%s\"", first ? "" : " and ",
                                       r->valuestring);
    first = 0;
  }
  if (first) snprintf(out, cap, "an object");
}

static int spec_branch_required_present(const cJSON *branch, const cJSON *v) {
  const cJSON *req = cJSON_GetObjectItemCaseSensitive(branch, "required");
  const cJSON *r;
  if (!cJSON_IsObject(v) || !req) return 0;
  cJSON_ArrayForEach(r, req)
    if (!cJSON_GetObjectItemCaseSensitive(v, r->valuestring)) return 0;
  return 1;
}

/* Finds the one oneOf branch that v matches, checking copies so that a failing branch leaves
 * no defaults behind. Returns the branch, or NULL with the fault filled. */
static const cJSON *spec_one_of_pick(const cJSON *one_of, const cJSON *v, spec_path *p,
                                     spec_fault *f) {
  const cJSON *match = NULL, *branch, *keyed = NULL;
  int matches = 0, keyed_count = 0;
  spec_fault keyed_fault = {{0}, {0}};
  char alternatives[384] = "";
  cJSON_ArrayForEach(branch, one_of) {
    cJSON *copy = cJSON_Duplicate(v, 1);
    if (!copy) {
      spec_faultf(f, p, "out of memory while checking the spec");
      return NULL;
    }
    spec_fault bf;
    size_t old = p->len;
    int rc = spec_check(branch, copy, p, &bf);
    spec_path_pop(p, old);
    cJSON_Delete(copy);
    if (rc == 0) {
      matches++;
      match = branch;
    } else if (spec_branch_required_present(branch, v)) {
      keyed_count++;
      keyed = branch;
      keyed_fault = bf;
    }
    char one[128];
    spec_branch_describe(branch, one, sizeof one);
    size_t n = strlen(alternatives);
    snprintf(alternatives + n, sizeof alternatives - n, "%s%s", n ? " or " : "", one);
  }
  if (matches == 1) return match;
  if (matches > 1) {
    spec_faultf(f, p, "matches more than one alternative (%s); give exactly one", alternatives);
    return NULL;
  }
  /* When the required properties single out one branch, its own fault is the useful one. */
  if (keyed_count == 1 && keyed) {
    if (f) *f = keyed_fault;
    return NULL;
  }
  spec_faultf(f, p, "must be %s", alternatives);
  return NULL;
}

static int spec_check(const cJSON *schema, cJSON *v, spec_path *p, spec_fault *f) {
  int rc;
  if ((rc = spec_check_type(schema, v, p, f))) return rc;
  if ((rc = spec_check_enum(schema, v, p, f))) return rc;
  if ((rc = spec_check_number(schema, v, p, f))) return rc;
  if ((rc = spec_check_string(schema, v, p, f))) return rc;
  if ((rc = spec_check_array(schema, v, p, f))) return rc;
  if ((rc = spec_check_object(schema, v, p, f))) return rc;
  const cJSON *one_of = cJSON_GetObjectItemCaseSensitive(schema, "oneOf");
  if (one_of) {
    const cJSON *branch = spec_one_of_pick(one_of, v, p, f);
    if (!branch) return -1;
    return spec_check(branch, v, p, f); /* again on the real spec, to fill its defaults */
  }
  return 0;
}

/* ---- loading and checking the embedded schemas ---- */

static const char *const spec_keywords[] = {
    "type",      "properties", "required",         "additionalProperties", "enum",
    "minimum",   "maximum",    "exclusiveMinimum", "exclusiveMaximum",     "minLength",
    "maxLength", "items",      "minItems",         "maxItems",             "default",
    "oneOf",     "x-lathe-file", "description",    "title",                "$schema",
    "$id",       "examples",   NULL};

static int spec_schema_lint(const cJSON *s, int depth, char *why, size_t cap);

static int spec_schema_lint_children(const cJSON *s, const char *key, int is_map, int depth,
                                     char *why, size_t cap) {
  const cJSON *k = cJSON_GetObjectItemCaseSensitive(s, key);
  if (!k) return 0;
  const cJSON *c;
  if (!is_map) return spec_schema_lint(k, depth + 1, why, cap);
  if (!cJSON_IsObject(k) && !cJSON_IsArray(k)) {
    snprintf(why, cap, "\"%s\" must be an object or array of schemas", key);
    return -1;
  }
  cJSON_ArrayForEach(c, k) if (spec_schema_lint(c, depth + 1, why, cap)) return -1;
  return 0;
}

/* Refuses schema keywords the validator does not implement and malformed keyword values, so a
 * schema author learns at the first test run, not from a spec that slipped through. */
static int spec_schema_lint(const cJSON *s, int depth, char *why, size_t cap) {
  if (depth > SPEC_MAX_DEPTH) {
    snprintf(why, cap, "schema nesting deeper than %d", SPEC_MAX_DEPTH);
    return -1;
  }
  if (cJSON_IsBool(s)) return 0; /* additionalProperties: true/false */
  if (!cJSON_IsObject(s)) {
    snprintf(why, cap, "a schema must be an object");
    return -1;
  }
  const cJSON *k;
  cJSON_ArrayForEach(k, s) {
    int known = 0;
    for (const char *const *w = spec_keywords; *w; w++) known |= !strcmp(*w, k->string);
    if (!known) {
      snprintf(why, cap, "keyword \"%s\" is not in the supported subset (schema/CONTRACT.md)",
               k->string);
      return -1;
    }
  }
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
  if (type) {
    int ok = cJSON_IsString(type) || cJSON_IsArray(type);
    const cJSON *t;
    if (cJSON_IsString(type)) ok = 1;
    else cJSON_ArrayForEach(t, type) ok &= cJSON_IsString(t);
    if (!ok) {
      snprintf(why, cap, "\"type\" must be a string or an array of strings");
      return -1;
    }
  }
  static const char *const numeric[] = {"minimum",  "maximum",  "exclusiveMinimum",
                                        "exclusiveMaximum", "minLength", "maxLength",
                                        "minItems", "maxItems", NULL};
  for (const char *const *w = numeric; *w; w++) {
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(s, *w);
    if (n && !cJSON_IsNumber(n)) {
      snprintf(why, cap, "\"%s\" must be a number", *w);
      return -1;
    }
  }
  const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
  if (req) {
    int ok = cJSON_IsArray(req);
    const cJSON *r;
    cJSON_ArrayForEach(r, req) ok &= cJSON_IsString(r);
    if (!ok) {
      snprintf(why, cap, "\"required\" must be an array of strings");
      return -1;
    }
  }
  const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
  if (en && !cJSON_IsArray(en)) {
    snprintf(why, cap, "\"enum\" must be an array");
    return -1;
  }
  const cJSON *file = cJSON_GetObjectItemCaseSensitive(s, "x-lathe-file");
  if (file && !(cJSON_IsString(file) && (!strcmp(file->valuestring, "model") ||
                                         !strcmp(file->valuestring, "dataset")))) {
    snprintf(why, cap, "\"x-lathe-file\" must be \"model\" or \"dataset\"");
    return -1;
  }
  const cJSON *one_of = cJSON_GetObjectItemCaseSensitive(s, "oneOf");
  if (one_of && !cJSON_IsArray(one_of)) {
    snprintf(why, cap, "\"oneOf\" must be an array of schemas");
    return -1;
  }
  if (spec_schema_lint_children(s, "properties", 1, depth, why, cap) ||
      spec_schema_lint_children(s, "oneOf", 1, depth, why, cap) ||
      spec_schema_lint_children(s, "items", 0, depth, why, cap) ||
      spec_schema_lint_children(s, "additionalProperties", 0, depth, why, cap))
    return -1;
  /* A default must satisfy its own schema, or every spec relying on it would be invalid. */
  const cJSON *def = cJSON_GetObjectItemCaseSensitive(s, "default");
  if (def) {
    cJSON *copy = cJSON_Duplicate(def, 1);
    spec_path p;
    spec_fault f;
    spec_path_init(&p);
    int rc = copy ? spec_check(s, copy, &p, &f) : -1;
    cJSON_Delete(copy);
    if (rc) {
      snprintf(why, cap, "a default does not satisfy its schema: %.400s", copy ? f.message : "");
      return -1;
    }
  }
  return 0;
}

static void spec_table_load(void) {
  size_t n = 0;
  while (spec_embedded_schemas[n].kind) n++;
  spec_table = calloc(n ? n : 1, sizeof *spec_table);
  if (!spec_table) return;
  spec_table_len = n;
  for (size_t i = 0; i < n; i++) {
    spec_loaded *l = &spec_table[i];
    l->kind = spec_embedded_schemas[i].kind;
    l->schema = cJSON_Parse(spec_embedded_schemas[i].text);
    if (!l->schema) {
      snprintf(l->broken, sizeof l->broken, "schema/jobs/%s.json is not valid JSON", l->kind);
    } else if (spec_schema_lint(l->schema, 0, l->broken, sizeof l->broken)) {
      char why[sizeof l->broken];
      snprintf(why, sizeof why, "%s", l->broken);
      snprintf(l->broken, sizeof l->broken, "schema/jobs/%s.json: %.400s", l->kind, why);
      cJSON_Delete(l->schema);
      l->schema = NULL;
    }
  }
}

static const spec_loaded *spec_find(const char *kind) {
  pthread_once(&spec_table_once, spec_table_load);
  if (!kind) return NULL;
  for (size_t i = 0; i < spec_table_len; i++)
    if (!strcmp(spec_table[i].kind, kind)) return &spec_table[i];
  return NULL;
}

/* ---- public ---- */

const char *const *spec_kinds(void) { return spec_embedded_kinds; }

const char *spec_schema_text(const char *kind) {
  if (!kind) return NULL;
  for (const spec_embedded *e = spec_embedded_schemas; e->kind; e++)
    if (!strcmp(e->kind, kind)) return e->text;
  return NULL;
}

/* The checks shared by spec_validate and spec_validate_schema, on a schema known to be sound. */
static int spec_validate_checked(const cJSON *schema, cJSON *spec, spec_fault *fault) {
  spec_path p;
  spec_path_init(&p);
  if (!spec) return spec_faultf(fault, &p, "is required: the job spec object");
  if (spec_check_bounds(spec, 0, &p, fault)) return -1;
  spec_path_init(&p);
  if (!cJSON_IsObject(spec)) {
    char shown[96];
    spec_value_show(spec, shown, sizeof shown);
    return spec_faultf(fault, &p, "must be an object, got %s", shown);
  }
  return spec_check(schema, spec, &p, fault);
}

int spec_validate(const char *kind, cJSON *spec, spec_fault *fault) {
  spec_path p;
  spec_path_init(&p);
  const spec_loaded *l = spec_find(kind);
  if (!l) {
    char known[256] = "";
    for (const char *const *k = spec_kinds(); *k; k++) {
      size_t n = strlen(known);
      snprintf(known + n, sizeof known - n, "%s%s", n ? ", " : "", *k);
    }
    if (fault) snprintf(fault->path, sizeof fault->path, "$.kind");
    if (fault)
      snprintf(fault->message, sizeof fault->message, "unknown job kind \"%.64s\"; known: %s",
               kind ? kind : "(none)", known);
    return -1;
  }
  if (!l->schema) return spec_faultf(fault, &p, "cannot check this kind: %s", l->broken);
  return spec_validate_checked(l->schema, spec, fault);
}

int spec_validate_schema(const cJSON *schema, cJSON *spec, spec_fault *fault) {
  char why[512];
  spec_path p;
  spec_path_init(&p);
  if (spec_schema_lint(schema, 0, why, sizeof why))
    return spec_faultf(fault, &p, "cannot check against this schema: %s", why);
  return spec_validate_checked(schema, spec, fault);
}

static int spec_refs_walk(const char *kind, const cJSON *schema, const cJSON *v, spec_path *p,
                          spec_file_fn fn, void *user) {
  const cJSON *file = cJSON_GetObjectItemCaseSensitive(schema, "x-lathe-file");
  if (file && cJSON_IsString(v)) {
    int rc = fn(user, file->valuestring, v->valuestring, p->buf);
    if (rc) return rc;
  }
  const cJSON *one_of = cJSON_GetObjectItemCaseSensitive(schema, "oneOf");
  if (one_of) {
    const cJSON *branch = spec_one_of_pick(one_of, v, p, NULL);
    if (branch) {
      int rc = spec_refs_walk(kind, branch, v, p, fn, user);
      if (rc) return rc;
    }
  }
  if (cJSON_IsObject(v)) {
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(schema, "properties");
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(schema, "additionalProperties");
    for (const cJSON *c = v->child; c; c = c->next) {
      const cJSON *sub = props ? cJSON_GetObjectItemCaseSensitive(props, c->string) : NULL;
      if (!sub && cJSON_IsObject(extra)) sub = extra;
      if (!sub) continue;
      size_t old = spec_path_push_key(p, c->string);
      int rc = spec_refs_walk(kind, sub, c, p, fn, user);
      spec_path_pop(p, old);
      if (rc) return rc;
    }
  } else if (cJSON_IsArray(v)) {
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(schema, "items");
    int index = 0;
    for (const cJSON *c = v->child; items && c; c = c->next, index++) {
      size_t old = spec_path_push_index(p, index);
      int rc = spec_refs_walk(kind, items, c, p, fn, user);
      spec_path_pop(p, old);
      if (rc) return rc;
    }
  }
  return 0;
}

int spec_file_refs(const char *kind, const cJSON *spec, spec_file_fn fn, void *user) {
  const spec_loaded *l = spec_find(kind);
  if (!l || !l->schema || !spec || !fn) return 0;
  spec_path p;
  spec_path_init(&p);
  return spec_refs_walk(kind, l->schema, spec, &p, fn, user);
}
