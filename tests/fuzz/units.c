/*
 * tests/fuzz/units.c: libFuzzer target for the units reader
 * (gateway/units.c): any request body gives units within bounds or a 400
 * message, never a crash.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../../gateway/units.h"

static const char cfg_text[] =
    "{\"server\": {\"listen\": \"127.0.0.1:1\"},"
    " \"backends\": {\"b\": {\"url\": \"http://127.0.0.1:2\"}},"
    " \"endpoints\": {\"e\": {\"method\": \"POST\", \"path\": \"/e\", \"backend\": \"b\","
    "   \"units\": [{\"pointer\": \"/n\", \"default\": 1},"
    "             {\"pointer\": \"/size\", \"default\": 1, \"map\": {\"720p\": 1, \"4k\": 4}},"
    "             {\"pointer\": \"/a/0/x\", \"default\": 2, \"min\": 0.5}],"
    "   \"price\": {\"per_request\": \"0.01\", \"per_unit\": \"0.0015\"}}},"
    " \"tiers\": {\"t\": {\"limits\": []}}, \"accounts\": {}, \"keys\": []}";

static const cfg_endpoint_t *endpoint(void)
{
    static config_t *c;
    if (!c) {
        int fd = memfd_create("ratewall-fuzz-units", 0);
        if (fd < 0 || write(fd, cfg_text, sizeof cfg_text - 1) != (ssize_t)(sizeof cfg_text - 1))
            abort();
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        cfg_messages_t m;
        memset(&m, 0, sizeof m);
        c = config_load(path, &m);
        cfg_messages_free(&m);
        close(fd);
        if (!c)
            abort();
    }
    return &c->endpoints[0];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const cfg_endpoint_t *ep = endpoint();
    int64_t units = -1;
    char err[256];
    if (units_from_body(ep, (const char *)data, size, &units, err, sizeof err) == 0) {
        if (units < 0 || units > LIM_UNITS_MAX)
            abort();
        int64_t p = price_of(ep, units);
        if (p < 0 || p > LIM_PRICE_MAX)
            abort();
    } else if (!err[0]) {
        abort(); /* a 400 says why */
    }
    return 0;
}
