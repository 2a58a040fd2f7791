/* gateway/errjson.h: the one shape of every JSON error body (docs/http-api.md):
 * {"error":{"type":…,"code":…,"message":…,"details":{…}}}. Used by the
 * gateway's answers (respond.c), the admin listener and the HTTP layer. */
#ifndef RW_GATEWAY_ERRJSON_H
#define RW_GATEWAY_ERRJSON_H

#include <jansson.h>

/* A new error body; details is stolen (NULL: {}). NULL when out of memory. */
static inline json_t *error_json(const char *type, const char *code, const char *message,
                                 json_t *details)
{
    json_t *err = json_pack("{s:s, s:s, s:s}", "type", type, "code", code, "message", message);
    if (err)
        json_object_set_new(err, "details", details ? details : json_object());
    else
        json_decref(details);
    return json_pack("{s:o*}", "error", err);
}

#endif
