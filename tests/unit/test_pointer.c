/*
 * tests/unit/test_pointer.c: gateway/config/pointer.c, JSON pointers
 * (RFC 6901): which are valid, how member names are escaped, and what
 * they resolve to, escapes, array indexes and absent values included.
 */
#include <jansson.h>

#include "../../gateway/config/pointer.h"
#include "testutil.h"

static json_t *doc;

static json_t *at(const char *ptr)
{
    return json_pointer_get(doc, ptr);
}

static void resolves_to_int(const char *ptr, json_int_t want)
{
    json_t *v = at(ptr);
    CHECK(json_is_integer(v) && json_integer_value(v) == want, "%s resolves to %lld", ptr,
          (long long)want);
}

int main(void)
{
    /* Validity. */
    CHECK(json_pointer_problem("") == NULL, "the empty pointer is the whole document");
    CHECK(json_pointer_problem("/usage/total_tokens") == NULL, "a plain pointer");
    CHECK(json_pointer_problem("/a~0b/c~1d") == NULL, "both escapes");
    CHECK(json_pointer_problem("/") == NULL, "the member named \"\"");
    CHECK(json_pointer_problem("usage") != NULL, "no leading slash");
    CHECK(json_pointer_problem("/a~2") != NULL, "~ followed by 2");
    CHECK(json_pointer_problem("/a~") != NULL, "~ at the end");

    /* Escaping, byte by byte. */
    char e[2];
    CHECK(json_pointer_escape('~', e) == 2 && e[0] == '~' && e[1] == '0', "~ is ~0");
    CHECK(json_pointer_escape('/', e) == 2 && e[0] == '~' && e[1] == '1', "/ is ~1");
    CHECK(json_pointer_escape('x', e) == 1 && e[0] == 'x', "other bytes are themselves");

    /* Resolving. */
    json_error_t err;
    doc = json_loads("{\"usage\": {\"total_tokens\": 42}, \"a/b\": 1, \"m~n\": 2, \"\": 3,"
                     " \"list\": [10, 20, {\"x\": 30}], \"01\": 4, \"n\": null}",
                     0, &err);
    CHECK(doc != NULL, "the document parses: %s", err.text);
    resolves_to_int("/usage/total_tokens", 42);
    resolves_to_int("/a~1b", 1);
    resolves_to_int("/m~0n", 2);
    resolves_to_int("/", 3);
    resolves_to_int("/list/0", 10);
    resolves_to_int("/list/2/x", 30);
    resolves_to_int("/01", 4); /* an object member, not an index */
    CHECK(at("") == doc, "the empty pointer is the document itself");
    CHECK(at("/usage/missing") == NULL, "an absent member");
    CHECK(at("/list/3") == NULL, "an index past the end");
    CHECK(at("/list/01") == NULL, "an index with a leading zero");
    CHECK(at("/list/-") == NULL, "the past-the-end token names nothing to read");
    CHECK(at("/list/x") == NULL, "a name into an array");
    CHECK(at("/usage/total_tokens/deeper") == NULL, "a token into a number");
    CHECK(json_is_null(at("/n")), "null is a value (the caller decides what it means)");
    json_decref(doc);

    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("test_pointer: all passed\n");
    return 0;
}
