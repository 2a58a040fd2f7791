wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Authorization"] = "Bearer "
