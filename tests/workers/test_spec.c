/* The job-spec validator (workers/spec.c): every keyword of the subset, fault paths and
 * messages, defaults, oneOf, x-lathe-file references, and hostile specs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec.h"
#include "test.h"

static cJSON *parse(const char *text) {
  cJSON *j = cJSON_Parse(text);
  if (!j) fprintf(stderr, "test bug: cannot parse %s\n", text);
  return j;
}

/* Validates text against schema_text; returns the validator's result and keeps the fault. */
static int check(const char *schema_text, const char *text, spec_fault *f, cJSON **out) {
  cJSON *schema = parse(schema_text), *spec = parse(text);
  memset(f, 0, sizeof *f);
  int rc = spec_validate_schema(schema, spec, f);
  cJSON_Delete(schema);
  if (out)
    *out = spec;
  else
    cJSON_Delete(spec);
  return rc;
}

static const char *TRAINISH =
    "{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"dataset\"],"
    "\"properties\":{"
    "\"dataset\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":8,\"x-lathe-file\":\"dataset\"},"
    "\"epochs\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":1000,\"default\":5},"
    "\"lr\":{\"type\":\"number\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":10,\"default\":0.1},"
    "\"optimizer\":{\"enum\":[\"sgd\",\"adam\"],\"default\":\"sgd\"},"
    "\"shuffle\":{\"type\":\"boolean\",\"default\":true},"
    "\"note\":{\"type\":[\"string\",\"null\"]},"
    "\"widths\":{\"type\":\"array\",\"minItems\":1,\"maxItems\":3,\"items\":{\"type\":\"integer\",\"minimum\":1}},"
    "\"loader\":{\"type\":\"object\",\"default\":{},\"properties\":{"
    "  \"buffer\":{\"type\":\"integer\",\"default\":64},"
    "  \"models\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"x-lathe-file\":\"model\"}}}}"
    "}}";

TEST_CASE(spec_defaults_filled_nested_too) {
  spec_fault f;
  cJSON *spec;
  REQUIRE(check(TRAINISH, "{\"dataset\":\"ds_1\"}", &f, &spec) == 0);
  CHECK(cJSON_GetObjectItem(spec, "epochs")->valuedouble == 5);
  CHECK(cJSON_GetObjectItem(spec, "lr")->valuedouble == 0.1);
  CHECK(!strcmp(cJSON_GetObjectItem(spec, "optimizer")->valuestring, "sgd"));
  CHECK(cJSON_IsTrue(cJSON_GetObjectItem(spec, "shuffle")));
  cJSON *loader = cJSON_GetObjectItem(spec, "loader");
  REQUIRE(cJSON_IsObject(loader));
  CHECK(cJSON_GetObjectItem(loader, "buffer")->valuedouble == 64);
  CHECK(!cJSON_GetObjectItem(spec, "note")); /* no default: stays absent */
  cJSON_Delete(spec);
}

TEST_CASE(spec_given_values_not_overwritten_by_defaults) {
  spec_fault f;
  cJSON *spec;
  REQUIRE(check(TRAINISH, "{\"dataset\":\"d\",\"epochs\":7,\"loader\":{\"buffer\":3}}", &f, &spec) == 0);
  CHECK(cJSON_GetObjectItem(spec, "epochs")->valuedouble == 7);
  CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(spec, "loader"), "buffer")->valuedouble == 3);
  cJSON_Delete(spec);
}

TEST_CASE(spec_type_faults_name_path_and_expectation) {
  spec_fault f;
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"epochs\":\"5\"}", &f, NULL) == -1);
  CHECK(!strcmp(f.path, "$.spec.epochs"));
  CHECK_STR_CONTAINS(f.message, "must be an integer, got \"5\"");
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"epochs\":2.5}", &f, NULL) == -1);
  CHECK_STR_CONTAINS(f.message, "integer");
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"shuffle\":1}", &f, NULL) == -1);
  CHECK_STR_CONTAINS(f.message, "must be a boolean, got 1");
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"note\":3}", &f, NULL) == -1);
  CHECK_STR_CONTAINS(f.message, "string or null");
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"note\":null}", &f, NULL) == 0);
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"lr\":2}", &f, NULL) == 0); /* integer is a number */
  CHECK(check(TRAINISH, "[1]", &f, NULL) == -1);
  CHECK(!strcmp(f.path, "$.spec"));
  CHECK_STR_CONTAINS(f.message, "must be an object");
}

TEST_CASE(spec_numeric_bounds) {
  spec_fault f;
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"epochs\":0}", &f, NULL) == -1);
  CHECK(!strcmp(f.path, "$.spec.epochs"));
  CHECK(!strcmp(f.message, "must be >= 1, got 0"));
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"epochs\":1001}", &f, NULL) == -1);
  CHECK(!strcmp(f.message, "must be <= 1000, got 1001"));
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"epochs\":1000}", &f, NULL) == 0);
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"lr\":0}", &f, NULL) == -1);
  CHECK(!strcmp(f.message, "must be > 0, got 0"));
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"lr\":10}", &f, NULL) == -1);
  CHECK(!strcmp(f.message, "must be < 10, got 10"));
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"lr\":1e-9}", &f, NULL) == 0);
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"epochs\":1e300}", &f, NULL) == -1);
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"lr\":1e999}", &f, NULL) == -1);
  CHECK(!strcmp(f.path, "$.spec.lr"));
  CHECK_STR_CONTAINS(f.message, "finite");
}

TEST_CASE(spec_string_lengths_count_characters) {
  spec_fault f;
  CHECK(check(TRAINISH, "{\"dataset\":\"\"}", &f, NULL) == -1);
  CHECK(!strcmp(f.path, "$.spec.dataset"));
  CHECK_STR_CONTAINS(f.message, "at least 1 characters");
  CHECK(check(TRAINISH, "{\"dataset\":\"123456789\"}", &f, NULL) == -1);
  CHECK_STR_CONTAINS(f.message, "at most 8 characters long, got 9");
  /* eight characters, sixteen bytes */
  CHECK(check(TRAINISH, "{\"dataset\":\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\"}", &f, NULL) == 0);
}

TEST_CASE(spec_enum_lists_allowed_values) {
  spec_fault f;
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"optimizer\":\"rmsprop\"}", &f, NULL) == -1);
  CHECK(!strcmp(f.path, "$.spec.optimizer"));
  CHECK_STR_CONTAINS(f.message, "must be one of \"sgd\", \"adam\", got \"rmsprop\"");
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"optimizer\":\"adam\"}", &f, NULL) == 0);
}

TEST_CASE(spec_arrays_items_and_counts) {
  spec_fault f;
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"widths\":[]}", &f, NULL) == -1);
  CHECK(!strcmp(f.path, "$.spec.widths"));
  CHECK_STR_CONTAINS(f.message, "at least 1 items, got 0");
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"widths\":[1,2,3,4]}", &f, NULL) == -1);
  CHECK_STR_CONTAINS(f.message, "at most 3 items, got 4");
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"widths\":[1,0]}", &f, NULL) == -1);
  CHECK(!strcmp(f.path, "$.spec.widths[1]"));
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"loader\":{\"models\":[\"a\",7]}}", &f, NULL) == -1);
  CHECK(!strcmp(f.path, "$.spec.loader.models[1]"));
}

TEST_CASE(spec_required_and_unknown_properties) {
  spec_fault f;
  CHECK(check(TRAINISH, "{}", &f, NULL) == -1);
  CHECK(!strcmp(f.path, "$.spec.dataset"));
  CHECK_STR_CONTAINS(f.message, "is required");
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"epoch\":3}", &f, NULL) == -1);
  CHECK(!strcmp(f.path, "$.spec.epoch"));
  CHECK_STR_CONTAINS(f.message, "unknown property; expected one of: dataset, epochs");
  /* no additionalProperties: unknown properties are still refused (a typo must not pass) */
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"loader\":{\"bufer\":1}}", &f, NULL) == -1);
  CHECK(!strcmp(f.path, "$.spec.loader.bufer"));
  /* an odd key is quoted in the path */
  CHECK(check(TRAINISH, "{\"dataset\":\"d\",\"a \\\"b\":1}", &f, NULL) == -1);
  CHECK(!strcmp(f.path, "$.spec[\"a \\\"b\"]"));
}

TEST_CASE(spec_additional_properties_schema_and_true) {
  spec_fault f;
  const char *s = "{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}";
  CHECK(check(s, "{\"a\":1,\"b\":2}", &f, NULL) == 0);
  CHECK(check(s, "{\"a\":1,\"b\":\"x\"}", &f, NULL) == -1);
  CHECK(!strcmp(f.path, "$.spec.b"));
  CHECK(check("{\"type\":\"object\",\"additionalProperties\":true}", "{\"z\":[1]}", &f, NULL) == 0);
}

static const char *ONEOF =
    "{\"type\":\"object\",\"oneOf\":["
    "{\"type\":\"object\",\"required\":[\"model\"],\"additionalProperties\":false,"
    " \"properties\":{\"model\":{\"type\":\"string\",\"x-lathe-file\":\"model\"},"
    "               \"exact\":{\"type\":\"boolean\",\"default\":false}}},"
    "{\"type\":\"object\",\"required\":[\"dataset\"],\"additionalProperties\":false,"
    " \"properties\":{\"dataset\":{\"type\":\"string\",\"x-lathe-file\":\"dataset\"},"
    "               \"split\":{\"enum\":[\"train\",\"test\"],\"default\":\"test\"}}}]}";

TEST_CASE(spec_one_of_picks_exactly_one_and_fills_only_its_defaults) {
  spec_fault f;
  cJSON *spec;
  REQUIRE(check(ONEOF, "{\"dataset\":\"ds_1\"}", &f, &spec) == 0);
  CHECK(!strcmp(cJSON_GetObjectItem(spec, "split")->valuestring, "test"));
  CHECK(!cJSON_GetObjectItem(spec, "exact")); /* the model branch's default is not leaked */
  cJSON_Delete(spec);
  CHECK(check(ONEOF, "{}", &f, NULL) == -1);
  CHECK(!strcmp(f.path, "$.spec"));
  CHECK_STR_CONTAINS(f.message, "an object with \"model\" or an object with \"dataset\"");
  CHECK(check(ONEOF, "{\"model\":\"m\",\"dataset\":\"d\"}", &f, NULL) == -1);
  CHECK_STR_CONTAINS(f.message, "must be an object with");
  /* the branch singled out by its required property reports its own fault */
  CHECK(check(ONEOF, "{\"dataset\":\"d\",\"split\":\"val\"}", &f, NULL) == -1);
  CHECK(!strcmp(f.path, "$.spec.split"));
  CHECK_STR_CONTAINS(f.message, "must be one of \"train\", \"test\"");
  const char *both = "{\"oneOf\":[{\"type\":\"integer\"},{\"type\":\"number\"}]}";
  CHECK(check(both, "{}", &f, NULL) == -1);
  CHECK(check("{\"type\":\"object\",\"properties\":{\"n\":{\"oneOf\":[{\"type\":\"integer\"},{\"type\":\"number\"}]}}}",
              "{\"n\":1}", &f, NULL) == -1);
  CHECK(!strcmp(f.path, "$.spec.n"));
  CHECK_STR_CONTAINS(f.message, "more than one");
}

typedef struct refs_seen {
  int n;
  char all[512];
} refs_seen;

static int refs_collect(void *user, const char *file_kind, const char *ref, const char *path) {
  refs_seen *s = user;
  size_t len = strlen(s->all);
  snprintf(s->all + len, sizeof s->all - len, "%s%s=%s@%s", s->n ? ";" : "", file_kind, ref, path);
  s->n++;
  return 0;
}

static int refs_stop(void *user, const char *file_kind, const char *ref, const char *path) {
  (*(int *)user)++;
  return 42;
}

TEST_CASE(spec_file_refs_of_inspect_kind) {
  spec_fault f;
  cJSON *spec = parse("{\"dataset\":\"ds_0123456789abcdef\"}");
  REQUIRE(spec_validate("inspect", spec, &f) == 0);
  CHECK(cJSON_IsFalse(cJSON_GetObjectItem(spec, "exact")));
  refs_seen s = {0, ""};
  CHECK(spec_file_refs("inspect", spec, refs_collect, &s) == 0);
  CHECK(s.n == 1);
  CHECK(!strcmp(s.all, "dataset=ds_0123456789abcdef@$.spec.dataset"));
  int calls = 0;
  CHECK(spec_file_refs("inspect", spec, refs_stop, &calls) == 42);
  CHECK(calls == 1);
  cJSON_Delete(spec);
  spec = parse("{\"model\":\"mdl_0123456789abcdef\"}");
  REQUIRE(spec_validate("inspect", spec, &f) == 0);
  s.n = 0;
  s.all[0] = 0;
  spec_file_refs("inspect", spec, refs_collect, &s);
  CHECK(!strcmp(s.all, "model=mdl_0123456789abcdef@$.spec.model"));
  cJSON_Delete(spec);
}

TEST_CASE(spec_kinds_and_schema_text) {
  int has_inspect = 0;
  for (const char *const *k = spec_kinds(); *k; k++) {
    has_inspect |= !strcmp(*k, "inspect");
    /* every embedded schema loads and passes its own lint */
    spec_fault f;
    cJSON *empty = cJSON_CreateObject();
    spec_validate(*k, empty, &f);
    CHECK_MSG(!strstr(f.message, "cannot check"), "kind %s: %s", *k, f.message);
    cJSON_Delete(empty);
    CHECK(spec_schema_text(*k) != NULL);
  }
  CHECK(has_inspect);
  CHECK(spec_schema_text("nope") == NULL);
  spec_fault f;
  cJSON *spec = parse("{}");
  CHECK(spec_validate("nope", spec, &f) == -1);
  CHECK(!strcmp(f.path, "$.kind"));
  CHECK_STR_CONTAINS(f.message, "unknown job kind \"nope\"; known: ");
  CHECK_STR_CONTAINS(f.message, "inspect");
  CHECK(spec_validate(NULL, spec, &f) == -1);
  CHECK(spec_validate("inspect", NULL, &f) == -1);
  cJSON_Delete(spec);
}

TEST_CASE(spec_hostile_deep_nesting_refused) {
  /* 10,000 levels: cJSON's own nesting limit (1000) refuses to parse it; build it by hand */
  cJSON *root = cJSON_CreateObject(), *cur = root;
  for (int i = 0; i < 10000; i++) {
    cJSON *next = cJSON_CreateArray();
    cJSON_AddItemToObject(cur, "a", next);
    cJSON *obj = cJSON_CreateObject();
    cJSON_AddItemToArray(next, obj);
    cur = obj;
  }
  spec_fault f;
  CHECK(spec_validate("inspect", root, &f) == -1);
  CHECK_STR_CONTAINS(f.message, "nesting is deeper than the limit of 32");
  CHECK_STR_CONTAINS(f.path, "$.spec.a[0].a[0]");
  cJSON_Delete(root);
  /* 32 levels of arrays inside an additionalProperties:true object are fine */
  char text[256] = "{\"x\":";
  for (int i = 0; i < 31; i++) strcat(text, "[");
  for (int i = 0; i < 31; i++) strcat(text, "]");
  strcat(text, "}");
  CHECK(check("{\"type\":\"object\",\"additionalProperties\":true}", text, &f, NULL) == 0);
}

TEST_CASE(spec_hostile_huge_strings_refused) {
  size_t n = 1 << 20;
  char *big = malloc(n + 1);
  REQUIRE(big);
  memset(big, 'x', n);
  big[n] = 0;
  cJSON *spec = cJSON_CreateObject();
  cJSON_AddStringToObject(spec, "dataset", big);
  spec_fault f;
  CHECK(spec_validate("inspect", spec, &f) == -1);
  CHECK(!strcmp(f.path, "$.spec.dataset"));
  CHECK_STR_CONTAINS(f.message, "longer than the limit of 4096 bytes");
  cJSON_Delete(spec);
  /* a huge key: refused, and the path shows it abbreviated */
  spec = cJSON_CreateObject();
  cJSON_AddStringToObject(spec, "dataset", "d");
  cJSON_AddNumberToObject(spec, big, 1);
  CHECK(spec_validate("inspect", spec, &f) == -1);
  CHECK_STR_CONTAINS(f.message, "property name");
  CHECK(strlen(f.path) < sizeof f.path);
  cJSON_Delete(spec);
  /* a long but allowed key is abbreviated in the unknown-property path */
  big[300] = 0;
  spec = cJSON_CreateObject();
  cJSON_AddStringToObject(spec, "dataset", "d");
  cJSON_AddNumberToObject(spec, big, 1);
  CHECK(spec_validate("inspect", spec, &f) == -1);
  CHECK_STR_CONTAINS(f.path, "...\"]");
  CHECK_STR_CONTAINS(f.message, "unknown property");
  cJSON_Delete(spec);
  free(big);
}

TEST_CASE(spec_schema_outside_subset_refused) {
  spec_fault f;
  CHECK(check("{\"type\":\"object\",\"patternProperties\":{}}", "{}", &f, NULL) == -1);
  CHECK_STR_CONTAINS(f.message, "keyword \"patternProperties\" is not in the supported subset");
  CHECK(check("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\",\"default\":\"x\"}}}",
              "{}", &f, NULL) == -1);
  CHECK_STR_CONTAINS(f.message, "default does not satisfy");
  CHECK(check("{\"properties\":{\"a\":{\"x-lathe-file\":\"weights\"}}}", "{}", &f, NULL) == -1);
  CHECK_STR_CONTAINS(f.message, "x-lathe-file");
}

TEST_CASE(spec_example_files_validate) {
  /* every schema/jobs/<kind>.example.json is a valid job file for its kind */
  for (const char *const *k = spec_kinds(); *k; k++) {
    char path[512];
    snprintf(path, sizeof path, "%s/schema/jobs/%s.example.json", LATHE_SOURCE_DIR, *k);
    FILE *fp = fopen(path, "rb");
    CHECK_MSG(fp != NULL, "%s: missing example for kind %s", path, *k);
    if (!fp) continue;
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = 0;
    cJSON *job = cJSON_Parse(buf);
    REQUIRE(job);
    CHECK(!strcmp(cJSON_GetObjectItem(job, "kind")->valuestring, *k));
    spec_fault f;
    CHECK_MSG(spec_validate(*k, cJSON_GetObjectItem(job, "spec"), &f) == 0, "%s: %s: %s", path,
              f.path, f.message);
    cJSON_Delete(job);
  }
}

/* A small deterministic generator (xorshift) of random JSON trees over the names the schemas use,
 * so the walk meets every type in every position. */
static unsigned long long fuzz_state = 88172645463325252ull;
static unsigned fuzz_next(unsigned n) {
  fuzz_state ^= fuzz_state << 13;
  fuzz_state ^= fuzz_state >> 7;
  fuzz_state ^= fuzz_state << 17;
  return (unsigned)(fuzz_state % n);
}

static cJSON *fuzz_tree(int depth) {
  static const char *const keys[] = {"dataset", "model", "exact", "epochs", "lr", "loader",
                                     "buffer", "widths", "note", "optimizer", "x", ""};
  switch (depth > 36 ? fuzz_next(5) : fuzz_next(8)) {
  case 0: return cJSON_CreateNull();
  case 1: return cJSON_CreateBool(fuzz_next(2));
  case 2: {
    static const double nums[] = {0, 1, -1, 0.5, 1e300, -1e300, 9007199254740993.0, 1000, 1001, 5};
    return cJSON_CreateNumber(nums[fuzz_next(10)]);
  }
  case 3: {
    static const char *const strs[] = {"", "ds_0123456789abcdef", "mdl_0123456789abcdef", "sgd",
                                       "\xc3\xa9", "12345678", "adam"};
    return cJSON_CreateString(strs[fuzz_next(7)]);
  }
  case 4: return cJSON_CreateString("x");
  case 5: {
    cJSON *a = cJSON_CreateArray();
    for (unsigned i = fuzz_next(4); i > 0; i--) cJSON_AddItemToArray(a, fuzz_tree(depth + 1));
    return a;
  }
  default: {
    cJSON *o = cJSON_CreateObject();
    for (unsigned i = fuzz_next(5); i > 0; i--) cJSON_AddItemToObject(o, keys[fuzz_next(12)], fuzz_tree(depth + 1));
    return o;
  }
  }
}

static int refs_count(void *user, const char *file_kind, const char *ref, const char *path) {
  (*(int *)user)++;
  return 0;
}

TEST_CASE(spec_random_specs_get_an_answer_never_a_crash) {
  cJSON *schema = parse(TRAINISH), *one_of = parse(ONEOF);
  int valid = 0, invalid = 0;
  for (int i = 0; i < 3000; i++) {
    cJSON *spec = fuzz_tree(0);
    const cJSON *sch = i % 3 == 0 ? schema : i % 3 == 1 ? one_of : NULL;
    spec_fault f;
    memset(&f, 0, sizeof f);
    int rc = sch ? spec_validate_schema(sch, spec, &f) : spec_validate("inspect", spec, &f);
    if (rc == 0) {
      valid++;
      /* a filled spec is valid again, unchanged */
      cJSON *copy = cJSON_Duplicate(spec, 1);
      CHECK((sch ? spec_validate_schema(sch, copy, &f) : spec_validate("inspect", copy, &f)) == 0);
      CHECK(cJSON_Compare(copy, spec, 1));
      cJSON_Delete(copy);
      int n = 0;
      if (!sch) CHECK(spec_file_refs("inspect", spec, refs_count, &n) == 0 && n == 1);
    } else {
      invalid++;
      CHECK_MSG(rc == -1 && !strncmp(f.path, "$.", 2) && f.message[0], "rc %d path %s", rc, f.path);
    }
    cJSON_Delete(spec);
  }
  CHECK(valid > 0 && invalid > 0);
  cJSON_Delete(schema);
  cJSON_Delete(one_of);
}

int main(void) {
  RUN(spec_defaults_filled_nested_too);
  RUN(spec_given_values_not_overwritten_by_defaults);
  RUN(spec_type_faults_name_path_and_expectation);
  RUN(spec_numeric_bounds);
  RUN(spec_string_lengths_count_characters);
  RUN(spec_enum_lists_allowed_values);
  RUN(spec_arrays_items_and_counts);
  RUN(spec_required_and_unknown_properties);
  RUN(spec_additional_properties_schema_and_true);
  RUN(spec_one_of_picks_exactly_one_and_fills_only_its_defaults);
  RUN(spec_file_refs_of_inspect_kind);
  RUN(spec_kinds_and_schema_text);
  RUN(spec_hostile_deep_nesting_refused);
  RUN(spec_hostile_huge_strings_refused);
  RUN(spec_schema_outside_subset_refused);
  RUN(spec_example_files_validate);
  RUN(spec_random_specs_get_an_answer_never_a_crash);
  return test_summary();
}
