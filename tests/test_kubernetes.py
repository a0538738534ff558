"""deploy/kubernetes/ checked offline: every manifest against the Kubernetes schemas (kubernetes-validate, which
bundles them; the version is pinned below), and against the code — the variables exist in Settings and parse, the
probes hit real routes, the ports match, the security settings are there, no secret value is committed."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from hypercheckout.api import health
from hypercheckout.app import STOP_STEP_TIMEOUT, routes
from hypercheckout.settings import Settings, documentation

KUBERNETES_VERSION = "1.33.0"
ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
MANIFESTS = {name: yaml.safe_load((FOLDER / name).read_text()) for name in KUSTOMIZATION["resources"]}
SECRET_KEYS = [line.split("=", 1)[0] for line in (FOLDER / "secrets.env.example").read_text().splitlines()
               if line and not line.startswith("#")]


def kind(name: str) -> dict:  # type: ignore[type-arg]
    found = [m for m in MANIFESTS.values() if m["kind"] == name]
    assert len(found) == 1, name
    return found[0]


DEPLOYMENT = kind("Deployment")
CONTAINER = DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]
CONFIG = kind("ConfigMap")["data"]


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_each_manifest_is_valid_kubernetes(name: str) -> None:
    kubernetes_validate.validate(MANIFESTS[name], KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest_and_generates_the_secret_from_an_ignored_file() -> None:
    on_disk = {p.name for p in FOLDER.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(KUSTOMIZATION["resources"]) == on_disk
    [generator] = KUSTOMIZATION["secretGenerator"]
    assert generator["envs"] == ["secrets.env"] and not (FOLDER / "secrets.env").exists()
    assert "deploy/kubernetes/secrets.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_every_variable_is_a_setting_and_the_configuration_parses() -> None:
    known = {env for env, _, _ in documentation()}
    env_names = [e["name"] for e in CONTAINER["env"] if e["name"].startswith("HC_")]
    assert set(CONFIG) | set(SECRET_KEYS) | set(env_names) <= known
    assert not set(CONFIG) & set(SECRET_KEYS)
    # The secrets must be set for real; here stand-ins, to see that the whole configuration parses.
    stand_ins = {key: "x" for key in SECRET_KEYS} | {"HC_DATABASE_URL": "postgresql://h@db/h",
                                                     "HC_REDIS_URL": "redis://cache:6379/0"}
    settings = Settings.from_env({**CONFIG, **stand_ins})
    assert settings.host == "0.0.0.0" and settings.public_urls == ("https://shop.example",)


def test_buyers_are_verified_and_the_issuers_keys_can_be_reached() -> None:
    settings = Settings.from_env({**CONFIG, "HC_DATABASE_URL": "postgresql://h@db/h", "HC_REDIS_URL": "redis://c/0",
                                  "HC_STRIPE_API_KEY": "x", "HC_STRIPE_WEBHOOK_SECRET": "x"})
    assert settings.buyer_auth == "jwt" and settings.jwks_url.startswith("https://") and settings.jwt_issuer
    policy = next(m for m in MANIFESTS.values() if m["kind"] == "NetworkPolicy")
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert 443 in ports  # the JWKS is fetched over https


def test_no_secret_value_is_committed() -> None:
    for key in ("HC_ADMIN_TOKEN", "HC_COOKIE_SECRET", "HC_DATABASE_URL", "HC_REDIS_URL", "HC_STRIPE_API_KEY",
                "HC_STRIPE_WEBHOOK_SECRET"):
        assert key in SECRET_KEYS and key not in CONFIG
    assert not [m for m in MANIFESTS.values() if m["kind"] == "Secret"]
    example = (FOLDER / "secrets.env.example").read_text()
    assert all(re.fullmatch(r"[A-Z_]+=", line) for line in example.splitlines() if line and line[0] != "#")


def test_probes_hit_real_routes_and_the_ports_agree() -> None:
    routes = {pattern for pattern, _ in health.default_handlers}
    assert CONTAINER["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    assert CONTAINER["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    [port] = CONTAINER["ports"]
    assert port["containerPort"] == int(CONFIG["HC_PORT"]) and port["name"] == "http"
    service = kind("Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == DEPLOYMENT["spec"]["selector"]["matchLabels"]
    assert f"EXPOSE {CONFIG['HC_PORT']}" in (ROOT / "Dockerfile").read_text()
    for path in kind("Ingress")["spec"]["rules"][0]["http"]["paths"]:
        assert path["backend"]["service"] == {"name": service["metadata"]["name"], "port": {"name": "http"}}


def test_replicas_run_locked_down_and_drain_before_they_are_killed() -> None:
    pod = DEPLOYMENT["spec"]["template"]["spec"]
    assert DEPLOYMENT["spec"]["replicas"] == 3
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The image's own user is the one the pod runs as.
    assert f"--uid {pod['securityContext']['runAsUser']}" in (ROOT / "Dockerfile").read_text()
    security = CONTAINER["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"requests", "limits"} <= set(CONTAINER["resources"])
    pre_stop = CONTAINER["lifecycle"]["preStop"]["sleep"]["seconds"]
    # Kubernetes kills after the grace period: it must cover the pause, the drain and a bounded shutdown step.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + float(CONFIG["HC_SHUTDOWN_GRACE"]) + STOP_STEP_TIMEOUT
    assert kind("PodDisruptionBudget")["spec"]["minAvailable"] < DEPLOYMENT["spec"]["replicas"]
    assert kind("HorizontalPodAutoscaler")["spec"]["minReplicas"] == DEPLOYMENT["spec"]["replicas"]
    assert kind("Job")["spec"]["template"]["spec"]["containers"][0]["args"] == ["hypercheckout", "migrate"]


def test_the_ingress_keeps_the_front_doors_rules_and_hides_the_metrics() -> None:
    ingress = kind("Ingress")
    notes = ingress["metadata"]["annotations"]
    # Never re-send a purchase that reached a replica: no non_idempotent.
    assert notes["nginx.ingress.kubernetes.io/proxy-next-upstream"] == "error timeout"
    assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == "16k"
    paths = {p["path"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert "/purchase" in paths and not any(p == "/" or "/metrics".startswith(p) for p in paths)


def test_the_ingress_routes_every_public_route_of_the_application() -> None:
    """A buyer reaches every route but /metrics: joining a queue without its polls (/queue/…) or the shop page
    (/shop/…) would strand every buyer of a product with a waiting room."""
    paths = kind("Ingress")["spec"]["rules"][0]["http"]["paths"]

    def routed(url: str) -> bool:
        return any(url == p["path"] if p["pathType"] == "Exact" else
                   url == p["path"] or url.startswith(p["path"].rstrip("/") + "/") for p in paths)

    samples = [re.sub(r"\([^)]*\)", "7", pattern).replace("/?", "") for pattern, _ in routes()]
    assert "/queue/7" in samples and "/shop/7" in samples and "/purchase" in samples
    public = [url for url in samples if url != "/metrics"] + ["/static/dashboard.js"]
    assert [url for url in public if not routed(url)] == []
    assert not routed("/metrics")


def test_priced_products_are_paid_through_stripe_with_keys_in_the_secret() -> None:
    assert CONFIG["HC_PAYMENTS"] == "stripe" and "HC_STRIPE_API_BASE" not in CONFIG  # Stripe itself
    assert {"HC_STRIPE_API_KEY", "HC_STRIPE_WEBHOOK_SECRET"} <= set(SECRET_KEYS)
    policy = next(m for m in MANIFESTS.values() if m["kind"] == "NetworkPolicy")
    assert 443 in {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}  # api.stripe.com
