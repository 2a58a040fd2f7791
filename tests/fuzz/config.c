/*
 * tests/fuzz/config.c: libFuzzer target for the configuration loader
 * (gateway/config/): any bytes as a config file must give a config or
 * FILE:LINE:COL messages, never a crash or a leak.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../../gateway/config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("ratewall-fuzz-config", 0);
    if (fd < 0)
        return 0;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    cfg_messages_t msgs;
    memset(&msgs, 0, sizeof msgs);
    config_t *c = config_load(path, &msgs);
    if (c) {
        if (msgs.n_errors)
            abort(); /* a config comes with no error */
        config_unref(c);
    } else {
        if (!msgs.n_errors)
            abort(); /* a refusal says why */
        for (size_t i = 0; i < msgs.n_errors; i++)
            if (strncmp(msgs.errors[i], path, strlen(path)) != 0)
                abort(); /* every message names the file */
    }
    cfg_messages_free(&msgs);
    close(fd);
    return 0;
}
