wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Authorization"] = "Bearer sk_prof_855a49e65bfc2016d52407e9d6b4dd75"
