/* tests/unit/test_query.c: gateway/query.c reads a query parameter as
 * Python's parse_qs does (the expected values below are what parse_qs
 * gives for the same queries). */
#include <string.h>

#include "../../gateway/query.h"
#include "testutil.h"

static void expect(const char *q, const char *name, int count, const char *val, size_t vlen)
{
    char out[64];
    size_t n = 99;
    int c = query_param(q, name, out, sizeof out, &n);
    CHECK(c == count, "%s: %d parameters named %s, expected %d", q ? q : "(null)", c, name,
          count);
    CHECK(n == vlen && memcmp(out, val, vlen) == 0 && out[vlen] == '\0',
          "%s: value of %s is %.*s (%zu bytes), expected %s (%zu)", q ? q : "(null)", name,
          (int)n, out, n, val, vlen);
}

int main(void)
{
    /* Exact, case-sensitive names: a case variant is another parameter. */
    expect("task_id=a&TASK_ID=b", "task_id", 1, "a", 1);
    expect("TASK_ID=a&task_id=b", "task_id", 1, "b", 1);
    expect("Task_Id=1", "task_id", 0, "", 0);
    /* Names are decoded before they are compared: %5F is '_'. */
    expect("task%5Fid=x&task_id=y", "task_id", 2, "x", 1);
    expect("task%5fid=x", "task_id", 1, "x", 1);
    expect("task_id=1&task_id=1", "task_id", 2, "1", 1);
    /* '+' is a space, in names and values; %2B is a plus. */
    expect("task+id=1", "task_id", 0, "", 0);
    expect("task+id=1", "task id", 1, "1", 1);
    expect("task_id=a+b%20c%2Bd", "task_id", 1, "a b c+d", 7);
    /* Invalid escapes stay as written. */
    expect("task_id=%zz%4", "task_id", 1, "%zz%4", 5);
    expect("task_id=%4", "task_id", 1, "%4", 2);
    /* A part without '=' and a blank value both count. */
    expect("task_id", "task_id", 1, "", 0);
    expect("task_id=&x=1", "task_id", 1, "", 0);
    expect("task_id&task_id=z", "task_id", 2, "", 0);
    /* Empty parts are skipped; the value runs to the next '&'. */
    expect("a=1&&task_id=q%3D%26r&", "task_id", 1, "q=&r", 4);
    expect("task_id=x=y", "task_id", 1, "x=y", 3);
    /* A decoded NUL is a byte of the value. */
    expect("task_id=%00z", "task_id", 1, "\0z", 2);
    /* Nothing to read. */
    expect(NULL, "task_id", 0, "", 0);
    expect("", "task_id", 0, "", 0);
    expect("&&&", "task_id", 0, "", 0);
    /* A raw name longer than any encoding of the name never matches. */
    expect("task%5Fid%5F=1", "task_id", 0, "", 0);

    /* A value longer than the buffer: its prefix and its whole length. */
    {
        char out[4];
        size_t n = 0;
        CHECK(query_param("id=abcdef", "id", out, sizeof out, &n) == 1, "long value found");
        CHECK(n == 6 && strcmp(out, "abc") == 0, "prefix abc of 6 bytes, got %s of %zu", out,
              n);
    }
    /* Names the parser refuses. */
    {
        char out[8], big[300];
        size_t n;
        memset(big, 'a', sizeof big - 1);
        big[sizeof big - 1] = '\0';
        CHECK(query_param("a=1", "", out, sizeof out, &n) == -1, "empty name refused");
        CHECK(query_param("a=1", big, out, sizeof out, &n) == -1, "299-byte name refused");
    }
    /* The decoder alone. */
    {
        char out[16];
        size_t n = query_decode("a%2Fb+c", 7, 0, out, sizeof out);
        CHECK(n == 5 && memcmp(out, "a/b+c", 5) == 0, "path decoding keeps '+'");
        n = query_decode("%41%4", 5, 1, out, 1);
        CHECK(n == 3 && out[0] == 'A', "decoded length beyond cap: %zu", n);
    }
    if (failures)
        fprintf(stderr, "%d failures\n", failures);
    return failures != 0;
}
