import pytest

from hypercheckout.redisclient import cluster_seeds, connect, is_cluster
from hypercheckout.settings import Settings, SettingsError, documentation, parse_rate
from tests.helpers import run_cli


def test_defaults_work_without_any_variable() -> None:
    s = Settings.from_env({})
    assert s.strategy == "batched"
    assert s.rate_limit == 20.0
    assert s.database_url.startswith("postgresql://")
    assert s.replica_id and s.admin_token and s.cookie_secret


@pytest.mark.parametrize(("text", "per_second"), [("20/s", 20.0), ("600/m", 10.0), ("3600/h", 1.0), ("off", None)])
def test_rates_are_read_in_any_unit(text: str, per_second: float | None) -> None:
    assert parse_rate(text) == per_second


def test_variables_override_defaults() -> None:
    s = Settings.from_env({"HC_STRATEGY": "atomic", "HC_RATE_LIMIT": "off", "HC_MAX_QUANTITY": "3",
                           "HC_TRUSTED_PROXIES": "10.0.0.0/8, ::1", "HC_ACCESS_LOG": "yes"})
    assert (s.strategy, s.rate_limit, s.max_quantity, s.access_log) == ("atomic", None, 3, True)
    assert [str(n) for n in s.trusted_proxies] == ["10.0.0.0/8", "::1/128"]


@pytest.mark.parametrize(("env", "value"), [
    ("HC_STRATEGY", "optimistic"), ("HC_RATE_LIMIT", "fast"), ("HC_MAX_QUANTITY", "0"),
    ("HC_PORT", "99999"), ("HC_BAN_SECONDS", "-1"), ("HC_TRUSTED_PROXIES", "not-an-ip"), ("HC_DB_POOL_SIZE", "x"),
    # Periods of background loops: 0 would spin on the event loop; timeouts of 0 would fail every call.
    ("HC_SOLDOUT_RECHECK_MS", "0"), ("HC_STATS_FLUSH_MS", "0"), ("HC_STATS_FLUSH_MS", "nan"),
    ("HC_DB_TIMEOUT", "0"), ("HC_REDIS_TIMEOUT", "0"),
    # A Redis Cluster is named by its nodes; braces in the prefix would pin every key to one slot.
    ("HC_REDIS_URL", "http://127.0.0.1:6379"), ("HC_REDIS_URL", "redis+cluster://:pw@127.0.0.1"),
    ("HC_REDIS_URL", "redis+cluster://127.0.0.1:7000,:7001"), ("HC_REDIS_PREFIX", "{hc}:"),
])
def test_a_bad_value_names_its_variable(env: str, value: str) -> None:
    with pytest.raises(SettingsError, match=env):
        Settings.from_env({env: value})


def test_a_redis_cluster_url_names_its_seed_nodes() -> None:
    settings = Settings.from_env({"HC_REDIS_URL": "redis+cluster://:s3cr:et@127.0.0.1:7000, 127.0.0.2:7001"})
    assert cluster_seeds(settings.redis_url) == [("127.0.0.1", 7000), ("127.0.0.2", 7001)]
    client = connect(settings.redis_url, timeout=0.5, max_connections=4)  # connects on first use, not here
    assert is_cluster(client)
    assert [n.name for n in client.startup_nodes] == ["127.0.0.1:7000", "127.0.0.2:7001"]
    assert client.connection_kwargs["password"] == "s3cr:et"
    assert not is_cluster(connect("redis://127.0.0.1:6379/0", timeout=0.5, max_connections=4))


def test_the_command_refuses_to_start_on_a_bad_value() -> None:
    done = run_cli("serve", env={"HC_STRATEGY": "optimistic"})
    assert done.returncode == 2
    assert "HC_STRATEGY" in done.stderr


def test_every_setting_is_documented() -> None:
    rows = documentation()
    assert all(env.startswith("HC_") and doc for env, _, doc in rows)
    assert len({env for env, _, _ in rows}) == len(rows)


@pytest.mark.parametrize("env", [
    {"HC_DEMO_SIGNIN": "/tmp/issuer"},  # buyers not verified at all
    {"HC_DEMO_SIGNIN": "/tmp/issuer", "HC_BUYER_AUTH": "jwt", "HC_JWT_ISSUER": "https://id.shop.example",
     "HC_JWKS_URL": "https://id.shop.example/jwks"},  # a real issuer: a passwordless sign-in must never mint for it
])
def test_the_demo_sign_in_is_only_ever_the_local_issuers(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="HC_DEMO_SIGNIN"):
        Settings.from_env(env)
    local = {"HC_DEMO_SIGNIN": "/tmp/issuer", "HC_BUYER_AUTH": "jwt", "HC_JWT_ISSUER": "hypercheckout-local-issuer",
             "HC_JWKS_FILE": "/tmp/issuer/jwks.json"}
    assert Settings.from_env(local).demo_signin == "/tmp/issuer"
