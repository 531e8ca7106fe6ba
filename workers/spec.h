/* workers/spec.h — the one job-spec validator, shared by `lathe run` and lathe-server.
 *
 * The JSON Schemas in schema/jobs/<kind>.json are compiled into the binary at build time; a spec
 * is checked against its kind's schema, defaults are filled in place, and the first fault is
 * reported with its JSON path, so the server can answer 400 {"path": "$.spec.epochs", ...}.
 *
 *   spec_fault f;
 *   if (spec_validate("train", spec, &f) != 0)
 *     printf("%s: %s\n", f.path, f.message);   // "$.spec.epochs: must be >= 1, got 0"
 *
 * Not for: checking that referenced files exist (the server and `lathe run` do that with
 * spec_file_refs) or anything kind-specific beyond the schema.
 */
#ifndef LATHE_WORKERS_SPEC_H
#define LATHE_WORKERS_SPEC_H

#include <cjson/cJSON.h>
#include <stddef.h>

typedef struct spec_fault {
  char path[256];    /* JSON path of the fault, rooted at "$.spec" */
  char message[512]; /* what is wrong and what is expected */
} spec_fault;

/* Known job kinds, NULL-terminated: {"inspect", "train", ...}. */
const char *const *spec_kinds(void);
/* The JSON Schema text of a kind (served by the API), or NULL for an unknown kind. */
const char *spec_schema_text(const char *kind);
/* 0 when valid (defaults are then filled into spec), -1 with *fault filled otherwise. Also
 * refuses unknown kinds, unknown properties, nesting deeper than 32 and strings over 4 KiB. */
int spec_validate(const char *kind, cJSON *spec, spec_fault *fault);

/* The same checks against a schema given as a parsed cJSON tree (not one of the embedded
 * kinds): for tests of the keyword subset and for tools that check ad-hoc documents. The schema
 * is checked first; a keyword outside the subset is a fault at "$.spec". */
int spec_validate_schema(const cJSON *schema, cJSON *spec, spec_fault *fault);

/* Calls fn for every string in spec that the schema marks with "x-lathe-file" (after a
 * successful spec_validate): file_kind is "model" or "dataset", ref the string, path its JSON
 * path. Stops and returns fn's value when it is non-zero. */
typedef int (*spec_file_fn)(void *user, const char *file_kind, const char *ref, const char *path);
int spec_file_refs(const char *kind, const cJSON *spec, spec_file_fn fn, void *user);

#endif
