/* tests/fuzz/fuzz_trailer.c: libFuzzer target for the chunked-trailer
 * scanner (gateway/trailer.c). The input's first byte picks the size of the
 * pieces it is fed in; the field found (or not) and whether the trailer
 * ended must be the same as when the whole input is fed at once. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../gateway/trailer.h"

static void run(const uint8_t *p, size_t n, size_t step, trailer_scan_t *t)
{
    trailer_scan_init(t, "X-Units-Used");
    for (size_t i = 0; i < n; i += step)
        trailer_scan_feed(t, (const char *)p + i, i + step > n ? n - i : step);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = 1 + data[0] % 7;
    static trailer_scan_t a, b;
    run(data + 1, size - 1, size, &a);
    run(data + 1, size - 1, step, &b);
    if (a.done != b.done || (a.value == NULL) != (b.value == NULL) ||
        (a.value && strcmp(a.value, b.value) != 0))
        abort();
    trailer_scan_free(&a);
    trailer_scan_free(&b);
    return 0;
}
