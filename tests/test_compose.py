"""docker-compose.yml cannot run here (no Docker engine), so it is checked statically: valid YAML, the same
topology as `hypercheckout up`, variables that Settings accepts, and the nginx template it renders."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from hypercheckout.cluster import FILES_KEPT_BACK, HERD_CONNECTIONS, render_nginx_config
from hypercheckout.processes import free_port
from hypercheckout.settings import Settings, documentation
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_ENV = SERVICES["app"]["environment"]


# What an operator would export before `docker compose up` (compose refuses to start without them).
SECRETS = {"HC_ADMIN_TOKEN": "t0ken", "HC_COOKIE_SECRET": "c00kie", "POSTGRES_PASSWORD": "pgpw",
           "REDIS_PASSWORD": "rdpw", "HC_STRIPE_API_KEY": "sk_test_x", "HC_STRIPE_WEBHOOK_SECRET": "whsec_x"}
# Required, not secret: the buyers' token issuer and its keys.
REQUIRED = {"HC_JWT_ISSUER": "https://login.example", "HC_JWKS_URL": "https://login.example/jwks.json"}


def expand(value: str) -> str:
    """Compose's interpolation with only SECRETS set: ${VAR:-default} gives the default, ${VAR:?message} the
    secret."""
    value = re.sub(r"\$\{([A-Z_]+):\?[^}]*\}", lambda m: {**SECRETS, **REQUIRED}[m.group(1)], str(value))
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_the_topology_matches_hypercheckout_up() -> None:
    assert {"postgres", "redis", "app", "nginx"} <= set(SERVICES)
    assert SERVICES["app"]["deploy"]["replicas"] == 3
    for name in ("postgres", "redis", "app", "nginx"):
        assert SERVICES[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert SERVICES["app"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert SERVICES["nginx"]["depends_on"]["app"]["condition"] == "service_healthy"


def test_every_app_variable_is_a_setting_and_parses() -> None:
    known = {env for env, _, _ in documentation()}
    assert set(APP_ENV) <= known, set(APP_ENV) - known
    assert SERVICES["migrate"]["environment"] == APP_ENV
    settings = Settings.from_env({k: expand(v) for k, v in APP_ENV.items()})
    assert settings.host == "0.0.0.0"


def test_buyers_are_verified_by_default_and_the_issuer_must_be_named() -> None:
    settings = Settings.from_env({k: expand(v) for k, v in APP_ENV.items()})
    assert (settings.buyer_auth, settings.jwt_issuer, settings.jwks_url) == (
        "jwt", REQUIRED["HC_JWT_ISSUER"], REQUIRED["HC_JWKS_URL"])
    text = (ROOT / "docker-compose.yml").read_text()
    for name in REQUIRED:
        assert re.search(r"\$\{" + name + r":\?[^}]+\}", text), f"{name} is not required"


def test_priced_products_are_paid_through_stripe_with_keys_from_the_operator() -> None:
    settings = Settings.from_env({k: expand(v) for k, v in APP_ENV.items()})
    assert (settings.payments, settings.stripe_api_key, settings.stripe_webhook_secret) == (
        "stripe", SECRETS["HC_STRIPE_API_KEY"], SECRETS["HC_STRIPE_WEBHOOK_SECRET"])
    assert settings.stripe_api_base == ""  # Stripe's own API, not a simulator


def test_the_app_reaches_the_services_by_their_compose_names() -> None:
    db = urlsplit(expand(APP_ENV["HC_DATABASE_URL"]))
    pg_env = {k: expand(v) for k, v in SERVICES["postgres"]["environment"].items()}
    assert db.hostname == "postgres"
    assert (db.username, db.password, db.path.lstrip("/")) == (
        pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"])
    cache = urlsplit(expand(APP_ENV["HC_REDIS_URL"]))
    assert (cache.hostname, cache.password) == ("redis", expand(SERVICES["redis"]["environment"]["REDIS_PASSWORD"]))
    assert "--requirepass" in " ".join(SERVICES["redis"]["command"])
    subnet = COMPOSE["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert APP_ENV["HC_TRUSTED_PROXIES"] == subnet  # only nginx, on that network, may set X-Real-IP


def test_no_secret_has_a_default_value() -> None:
    """Anyone can read a default: compose must refuse to start until each secret is set."""
    text = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in text
    for name in SECRETS:
        assert re.search(r"\$\{" + name + r":\?[^}]+\}", text), f"{name} is not required"
        assert not re.search(r"\$\{" + name + r":?-", text), f"{name} has a default"
    for value in (APP_ENV["HC_ADMIN_TOKEN"], APP_ENV["HC_COOKIE_SECRET"],
                  SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"]):
        assert value.startswith("${") and ":?" in value


def test_the_image_installs_the_wheel_built_from_the_whole_source() -> None:
    """The wheel carries what the app reads at run time (tests/test_package.py installs one and runs `up` from it);
    the image must be built from it, not from a source tree that happens to have the folders beside the package."""
    build, final = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.M)[1:]
    for directory in ("hypercheckout", "nginx", "templates", "static"):
        assert re.search(rf"^COPY {directory} \./{directory}$", build, re.M), f"{directory}/ is not in the build"
    assert re.search(r"^ && python -m build --wheel", build, re.M)
    assert re.search(r"^COPY --from=wheel ", final, re.M)
    assert re.search(r"pip install --no-cache-dir /tmp/dist/hypercheckout-\*\.whl", final)
    copied = re.findall(r"^COPY (?!--from)", final, re.M)
    assert not copied and " -e " not in final, "the image's final stage must hold the installed wheel only"


def test_prometheus_scrapes_every_replica_directly() -> None:
    prometheus = SERVICES["prometheus"]
    assert prometheus["profiles"] == ["monitoring"] and "ports" not in prometheus
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    [target] = job["dns_sd_configs"]
    assert (target["names"], target["port"], job["metrics_path"]) == (["app"], int(APP_ENV["HC_PORT"]), "/metrics")


def test_nginx_is_configured_from_the_same_template_for_the_app_port() -> None:
    command = shlex.split(SERVICES["nginx-config"]["command"][-1].split(">")[0])
    assert command[:2] == ["hypercheckout", "nginx-config"]
    done = run_cli(*command[1:])
    assert done.returncode == 0, done.stderr
    assert f"server app:{APP_ENV['HC_PORT']} " in done.stdout
    assert "listen 80 backlog=4096;" in done.stdout and "user nginx;" in done.stdout
    # A herd of 10,000 clients fits in one worker, with its connections to the replicas, and the files to hold them.
    connections = int(re.search(r"worker_connections (\d+);", done.stdout).group(1))
    files = int(re.search(r"worker_rlimit_nofile (\d+);", done.stdout).group(1))
    assert connections >= HERD_CONNECTIONS and files >= connections + FILES_KEPT_BACK
    assert SERVICES["nginx"]["ulimits"]["nofile"] == {"soft": files, "hard": files}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"HC_PORT={APP_ENV['HC_PORT']}" in dockerfile and "COPY nginx" in dockerfile


@pytest.mark.skipif(not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()), reason="nginx not installed")
def test_the_nginx_template_is_valid_nginx(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    defaults = Settings.from_env({})
    conf.write_text(render_nginx_config(listen=f"127.0.0.1:{free_port()}", upstreams=["127.0.0.1:8000"],
                                        purchase_concurrency=defaults.front_door_in_flight,
                                        join_concurrency=defaults.max_joins_in_flight,
                                        overload_answers=defaults.overload_answers,
                                        runtime_dir=str(tmp_path), log_dir=str(tmp_path)))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    done = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "e.log")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "server_tokens off;" in conf.read_text()  # no version in headers or error pages
    # /metrics is for the machine itself; everything else is public.
    metrics = conf.read_text().split("location = /metrics {")[1].split("}")[0]
    assert "allow 127.0.0.1;" in metrics and "deny all;" in metrics


@pytest.mark.skipif(not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()), reason="nginx not installed")
def test_nginx_config_with_a_real_certificate_serves_https_only(tmp_path: Path) -> None:
    """How compose gets https (docs/security.md): mount a certificate, render with --tls-certificate/--tls-key."""
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=shop",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    done = run_cli("nginx-config", "--listen", "443", "--upstream", "app:8000", "--runtime-dir", str(tmp_path),
                   "--log-dir", str(tmp_path), "--tls-certificate", str(cert), "--tls-key", str(key))
    assert done.returncode == 0, done.stderr
    assert "listen 443 ssl backlog=4096;" in done.stdout and f"ssl_certificate {cert};" in done.stdout
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in done.stdout and "Strict-Transport-Security" in done.stdout
    conf = tmp_path / "nginx.conf"
    conf.write_text(done.stdout.replace("app:8000", "127.0.0.1:8000"))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    checked = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "e.log")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    alone = run_cli("nginx-config", "--upstream", "app:8000", "--tls-certificate", str(cert))
    assert alone.returncode == 2 and "go together" in alone.stderr
