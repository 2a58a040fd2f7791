"""Redis with a password and a database number: the gateway authenticates
(the password from the environment through ${ENV}), selects the database,
keeps its keys under its prefix there; a wrong password is an outage
(503 under on_error deny), reported once in the log."""
from harness import base_config, eq, free_port, poll, redis_cli, run


def setup(env, password):
    redis = env.start_redis(extra=["--requirepass", "s3cret-pw"])
    env.start_mock()
    cfg = base_config(env.mock_port, free_port())
    cfg["storage"] = {"driver": "redis", "address": "127.0.0.1:%d" % redis.port,
                      "password": "${RW_TEST_REDIS_PW}", "db": 3, "key_prefix": "auth:",
                      "timeout_ms": 200}
    cfg["tiers"]["t"] = {"limits": [{"metric": "requests", "per": "minute", "limit": 2}]}
    cfg["accounts"] = {"acme": {"tier": "t"}}
    env.add_key(cfg, "k1", "acme")
    env.start_gateway(cfg, env={"RW_TEST_REDIS_PW": password})
    return redis


def test_auth_and_db(env):
    redis = setup(env, "s3cret-pw")
    key = env.keys["k1"]
    statuses = [env.req("POST", "/v3/img2img", key=key, body={}).status for _ in range(3)]
    eq(statuses, [200, 200, 429], "counted in Redis")
    keys = redis_cli(redis.port, "KEYS", "*", password="s3cret-pw", db=3)
    assert keys and all(k.startswith("auth:{acme}:") for k in keys), \
        "every key in db 3 under the prefix: %r" % keys
    eq(redis_cli(redis.port, "DBSIZE", password="s3cret-pw", db=0), 0, "nothing in db 0")


def test_wrong_password(env):
    setup(env, "wrong")
    r = env.req("POST", "/v3/img2img", key=env.keys["k1"], body={})
    eq((r.status, r.json()["error"]["code"], r.h("retry-after")),
       (503, "LIMITER_UNAVAILABLE", "1"), "not authenticated: unavailable")
    # The warning is written by the log thread: wait for it.
    poll(lambda: "WRONGPASS" in env.gw.output().upper(), 10, "WRONGPASS in the log")
    out = env.gw.output()
    assert "setup failed" in out, "the log says the Redis setup failed:\n" + out[-2000:]
    assert "s3cret-pw" not in out and "wrong" not in out.replace("WRONGPASS", ""), \
        "the password must not be logged"


run([test_auth_and_db, test_wrong_password])
