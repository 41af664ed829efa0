/*
 * fuzz-config.c - the INI config file (dataplane/dp_config.h) on arbitrary
 * bytes: [serve] keys into options, [specialist.NAME] sections into the
 * specialist table (shm_spec validation). Never crashes; every refusal
 * comes with a message, and every table built passes shm_spec_add's
 * checks again.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dp.h"
#include "dp_config.h"
#include "favo_base.h"
#include "shm_spec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct shm_spec_table t, again;
    struct dp_opt opts[] = {
        { "port", 'p', DP_OPT_INT, "PORT", "8080", "port" },
        { "host", 0, DP_OPT_STR, "ADDR", "127.0.0.1", "host" },
        { "drain-timeout", 0, DP_OPT_DOUBLE, "S", "30", "drain" },
        { "verbose", 'v', DP_OPT_FLAG, NULL, NULL, "flag" },
        DP_OPT_END,
    };
    struct dp_config cfg;
    char path[64], err[512];
    int fd, rc;

    fd = memfd_create("fuzz-config", 0);
    if (fd < 0)
        return 0;
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    err[0] = 0;
    rc = dp_config_load(path, opts, &cfg, err, sizeof(err));
    close(fd);
    if (rc) {
        FAVO_ASSERT(err[0]);
        dp_config_free(&cfg); /* what was read before the error (dp_config.h) */
        return 0;
    }
    err[0] = 0;
    rc = dp_config_spec_table(&cfg, "fuzz.ini", "m", "/models/m.gguf", &t, err, sizeof(err));
    if (rc) {
        FAVO_ASSERT(err[0]);
    } else {
        memset(&again, 0, sizeof(again));
        for (uint32_t i = 0; i < t.n; i++)
            FAVO_ASSERT(shm_spec_add(&again, &t.specs[i], err, sizeof(err)) == 0);
    }
    dp_config_free(&cfg);
    return 0;
}
