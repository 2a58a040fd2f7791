/* tests/unit/test_trailer.c: a chunked answer's trailer field
 * (gateway/trailer.c), fed in pieces of every size. */
#include <stdlib.h>

#include "../../gateway/trailer.h"
#include "testutil.h"

static void expect(const char *raw, const char *want, int done)
{
    size_t n = strlen(raw);
    for (size_t step = 1; step <= n; step++) {
        trailer_scan_t *t = malloc(sizeof *t);
        trailer_scan_init(t, "X-Units-Used");
        for (size_t i = 0; i < n; i += step)
            trailer_scan_feed(t, raw + i, i + step > n ? n - i : step);
        CHECK((want == NULL) == (t->value == NULL) && (!want || strcmp(t->value, want) == 0),
              "pieces of %zu of %.50s: got %s, want %s", step, raw,
              t->value ? t->value : "(none)", want ? want : "(none)");
        CHECK(t->done == done, "pieces of %zu of %.50s: done %d", step, raw, t->done);
        trailer_scan_free(t);
        free(t);
    }
}

int main(void)
{
    expect("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Units-Used: 5\r\n\r\n"
           "3\r\nabc\r\n10;ext=1\r\n0123456789abcdef\r\n0\r\nx-units-used:  777 \r\n\r\n",
           "777", 1);
    /* A value in the head is not the trailer's; chunk data that looks like
     * a field is data. */
    expect("HTTP/1.1 200 OK\r\nX-Units-Used: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
           "13\r\nX-Units-Used: 9\r\n\r\n\r\n0\r\n\r\n",
           NULL, 1);
    /* Interim answers come first; the last of two trailer values counts. */
    expect("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\n\n"
           "1\nx\n0\nX-Units-Used: 1\nOther: 2\nX-Units-Used: 2\n\n",
           "2", 1);
    /* Not chunked: nothing to read. */
    expect("HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n0\r\nX-Units-Used: 1\r\n\r\n", NULL, 0);
    /* A bad chunk size stops the scan. */
    expect("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n0\r\nX-Units-Used: 1\r\n\r\n",
           NULL, 0);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("test_trailer: all passed\n");
    return 0;
}
