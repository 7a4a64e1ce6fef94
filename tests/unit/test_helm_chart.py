"""The Helm chart (helm/radsentry), rendered by Helm's own Go library (the `helm-python-sdk`
wheel: a real `helm lint` and `helm template`, no helm binary or cluster needed).

Rendered with the default values and with values-production.example.yaml; every manifest is
validated against the Kubernetes OpenAPI schemas bundled in `kubernetes-validate` (1.27, the
chart's floor; 1.30; the newest bundled; strict: unknown fields fail), every pod is checked for
the hardening docs/deploy.md promises, and bad values are refused by values.schema.json or a
template check with a message naming the value.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from monitor.service.embedded_pg import migration_database_url
from monitor.service.environment import environment_problems
from monitor.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "radsentry"
PRODUCTION = CHART / "values-production.example.yaml"
RULES = ROOT / "dashboards" / "alerts" / "radsentry.rules.yaml"
PLANS = ROOT / "pccp" / "plans"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
KUBE_VERSION = "1.30"
# The Prometheus Operator's kinds: kubernetes-validate has no schema for CRDs, so the tests
# below check what these carry instead.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
WORKLOADS = {"Deployment", "Job"}
COMPONENTS = ("api", "consumer", "scheduler", "migrate")
Manifest = dict[str, Any]


EVALUATION: dict[str, Any] = {"auth": {"mode": "local", "allowLocalInProduction": True}}
"""The least a release needs besides the chart's defaults, which ask for an identity provider:
local tokens, allowed explicitly (an evaluation cluster). "default" below means this."""


def _values(name: str) -> dict[str, Any]:
    if name == "default":
        return EVALUATION
    loaded: dict[str, Any] = yaml.safe_load(PRODUCTION.read_text(encoding="utf-8"))
    return loaded


def _merged(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = _merged(base[key], value)
        else:
            merged[key] = value
    return merged


def render(
    values: dict[str, Any] | None = None, *, base: dict[str, Any] = EVALUATION
) -> list[Manifest]:
    """Every object `helm template rs helm/radsentry -n radsentry` would print, for ``values``
    over ``base`` (by default :data:`EVALUATION`; ``base={}``: the chart's own defaults)."""
    merged = _merged(base, values or {})
    rendered = helm_python.Chart.load(CHART).render(merged, name="rs", namespace="radsentry")
    return [
        doc
        for path in sorted(rendered)
        if not path.endswith("NOTES.txt")  # printed after an install, not applied
        for doc in yaml.safe_load_all(rendered[path])
        if doc  # templates disabled by a value render to nothing
    ]


@pytest.fixture(scope="module", params=["default", "production"])
def release(request: pytest.FixtureRequest) -> list[Manifest]:
    return render(_values(request.param))


@pytest.fixture(scope="module")
def defaults() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    return values


def of_kind(release: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in release if m["kind"] == kind]


def component(release: list[Manifest], kind: str, name: str) -> Manifest:
    found = [
        m
        for m in of_kind(release, kind)
        if m["metadata"]["labels"].get("app.kubernetes.io/component") == name
    ]
    assert len(found) == 1, f"expected one {kind} of component {name}, got {len(found)}"
    return found[0]


def pod_specs(release: list[Manifest]) -> Iterator[tuple[str, dict[str, Any]]]:
    for workload in release:
        if workload["kind"] in WORKLOADS:
            yield workload["metadata"]["name"], workload["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


# --- Helm itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("values", ["default", "production"])
def test_lint_is_clean(values: str) -> None:
    report = helm_python.lint(CHART, _values(values), strict=True, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert report["errors"] == [] and problems == [], report


# The chart's kubeVersion floor, the version the lint targets, the newest schemas bundled.
@pytest.mark.parametrize(
    "kube_version", ["1.27", KUBE_VERSION, kubernetes_validate.latest_version()]
)
def test_every_manifest_validates_against_kubernetes(
    release: list[Manifest], kube_version: str
) -> None:
    kinds = set()
    for manifest in release:
        kinds.add(manifest["kind"])
        if manifest["kind"] in OPERATOR_KINDS:
            continue
        kubernetes_validate.validate(manifest, kube_version, strict=True)
    assert {"Deployment", "Job", "Service", "ConfigMap", "NetworkPolicy"} <= kinds


# --- Pods -----------------------------------------------------------------------------------


def test_every_pod_is_hardened(release: list[Manifest]) -> None:
    pods = dict(pod_specs(release))
    assert len(pods) == 4  # api, consumer, scheduler, migration Job
    for name, pod in pods.items():
        assert pod["automountServiceAccountToken"] is False, name
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] != 0, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for container in containers(pod):
            where = f"{name}/{container['name']}"
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context.get("privileged", False) is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), where
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            # The writable places on a read-only root: data_dir and /tmp (HOME, caches).
            assert {"/var/lib/radsentry", "/tmp"} <= mounts, where


@pytest.mark.parametrize(
    ("name", "port", "number"),
    [("api", "http", 8000), ("consumer", "metrics", 9101), ("scheduler", "metrics", 9102)],
)
def test_each_component_is_probed_on_healthz_and_readyz(
    release: list[Manifest], name: str, port: str, number: int
) -> None:
    pod = component(release, "Deployment", name)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert ports == {port: number}
    if name != "api":  # the workers serve their probes on the port their command is given
        assert container["args"][-2:] == ["--metrics-port", str(number)]


def test_the_scheduler_is_a_singleton(release: list[Manifest]) -> None:
    scheduler = component(release, "Deployment", "scheduler")["spec"]
    assert scheduler["replicas"] == 1
    assert scheduler["strategy"] == {"type": "Recreate"}


def test_the_migration_job_is_a_pre_install_and_pre_upgrade_hook(
    release: list[Manifest], defaults: dict[str, Any]
) -> None:
    job = component(release, "Job", "migrate")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["args"] == defaults["commands"]["migrate"]
    # A pre-install hook runs before the release's other objects exist: it may use none.
    assert "envFrom" not in container
    assert "serviceAccountName" not in pod
    volumes = pod["volumes"]
    assert all("configMap" not in v and "persistentVolumeClaim" not in v for v in volumes)


def test_migrations_can_be_turned_off() -> None:
    release = render({"migrations": {"enabled": False}})
    assert of_kind(release, "Job") == []
    assert "rs-radsentry-migrate" not in {m["metadata"]["name"] for m in release}


def test_pod_disruption_budgets_cover_api_and_consumers(release: list[Manifest]) -> None:
    for name in ("api", "consumer"):
        budget = component(release, "PodDisruptionBudget", name)
        deployment = component(release, "Deployment", name)
        assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert len(of_kind(release, "PodDisruptionBudget")) == 2


# --- Secrets --------------------------------------------------------------------------------

SECRET_SETTINGS = re.compile(r"DATABASE__(MIGRATION_)?URL|LOCAL_SECRET|HMAC_KEY|PASSWORD|TOKEN")
DATABASE_URL = re.compile(r"DATABASE__(MIGRATION_)?URL$")


def test_secrets_are_only_referenced(release: list[Manifest]) -> None:
    assert of_kind(release, "Secret") == []
    for config_map in of_kind(release, "ConfigMap"):
        assert not any(SECRET_SETTINGS.search(key) for key in config_map["data"])
    for name, pod in pod_specs(release):
        for container in containers(pod):
            for variable in container.get("env", []):
                if SECRET_SETTINGS.search(variable["name"]):
                    assert "value" not in variable, f"{name}: {variable['name']} inlined"
                    assert "secretKeyRef" in variable["valueFrom"], name
            database = [v for v in container.get("env", []) if DATABASE_URL.search(v["name"])]
            assert database and "secretKeyRef" in database[0]["valueFrom"], name


def _environment(release: list[Manifest], container: dict[str, Any]) -> dict[str, str]:
    """A container's environment as Kubernetes would give it; Secrets get stand-ins."""
    config_maps = {m["metadata"]["name"]: m["data"] for m in of_kind(release, "ConfigMap")}
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            environment.update(config_maps[source["configMapRef"]["name"]])
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
        elif DATABASE_URL.search(variable["name"]):
            environment[variable["name"]] = "postgresql+psycopg://radsentry@postgres/radsentry"
        else:
            environment[variable["name"]] = "a-stand-in-for-the-secret-that-is-long-enough"
    return environment


@pytest.mark.parametrize("values", ["default", "production"])
def test_the_rendered_environment_is_valid_settings(
    values: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = render(_values(values))
    for name in ("api", "consumer", "scheduler"):
        [container] = component(release, "Deployment", name)["spec"]["template"]["spec"][
            "containers"
        ]
        environment = _environment(release, container)
        assert environment_problems(environment) == [], name  # no variable names no setting
        for key in [k for k in os.environ if k.startswith("RADSENTRY_")]:
            monkeypatch.delenv(key)
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.database.url is not None and settings.kafka.bootstrap_servers
        assert settings.api.host == "0.0.0.0" and settings.logging.json_output
        assert str(settings.data_dir) == "/var/lib/radsentry"
        if values == "production":
            assert settings.auth.mode == "oidc"
            assert settings.drift.window.size == 300
            assert settings.performance.refresh_s == 600
        # The processes that write the change log hold the audit key; the consumer does not.
        holds_key = settings.audit.signing_key_file is not None
        assert holds_key == (name in ("api", "scheduler")), name
        if name == "scheduler":
            assert settings.pccp.plans_dir is not None
    [job] = component(release, "Job", "migrate")["spec"]["template"]["spec"]["containers"]
    assert environment_problems(_environment(release, job)) == []
    for key in [k for k in os.environ if k.startswith("RADSENTRY_")]:
        monkeypatch.delenv(key)
    for key, value in _environment(release, job).items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert migration_database_url(settings).startswith("postgresql+psycopg://")
    if values == "production":
        assert settings.database.runtime_role == "radsentry_app"
        assert settings.database.consumer_role == "radsentry_consumer"


def _database_secrets(release: list[Manifest], kind: str, name: str) -> dict[str, str]:
    """A component's database settings: each Secret-backed one by its Secret, others' values."""
    [container] = component(release, kind, name)["spec"]["template"]["spec"]["containers"]
    return {
        v["name"]: v["valueFrom"]["secretKeyRef"]["name"] if "valueFrom" in v else v["value"]
        for v in container["env"]
        if "DATABASE__" in v["name"]
    }


def test_each_component_connects_as_its_own_database_role() -> None:
    """The production layout (docs/deploy.md, "Database roles"): the migration Job as the
    schema's owner, naming the roles it grants; the API and the scheduler as the runtime role;
    the consumers as theirs. No pod gets another's URL."""
    release = render(_values("production"))
    assert _database_secrets(release, "Job", "migrate") == {
        "RADSENTRY_DATABASE__MIGRATION_URL": "radsentry-database-owner",
        "RADSENTRY_DATABASE__RUNTIME_ROLE": "radsentry_app",
        "RADSENTRY_DATABASE__CONSUMER_ROLE": "radsentry_consumer",
    }
    for name in ("api", "scheduler"):
        assert _database_secrets(release, "Deployment", name) == {
            "RADSENTRY_DATABASE__URL": "radsentry-database"
        }
    assert _database_secrets(release, "Deployment", "consumer") == {
        "RADSENTRY_DATABASE__URL": "radsentry-database-consumer"
    }


SINGLE_ROLE = {
    "runtimeRole": "",
    "consumerRole": "",
    "consumer": {"existingSecret": ""},
    "migration": {"existingSecret": ""},
}


def test_one_role_for_everything_is_an_explicit_choice() -> None:
    """The default is the three roles; one role for every component (what releases before the
    roles rendered) is refused unless asked for, and then the release notes warn."""
    release = render()
    assert _database_secrets(release, "Deployment", "consumer") == {
        "RADSENTRY_DATABASE__URL": "radsentry-database-consumer"
    }
    with pytest.raises(helm_python.HelmRenderError) as refused:
        render({"database": SINGLE_ROLE})
    assert "database.runtimeRole is empty" in str(refused.value)
    single = {"database": {**SINGLE_ROLE, "allowSingleRole": True}}
    release = render(single)
    for kind, name in (("Job", "migrate"), *(("Deployment", n) for n in COMPONENTS[:3])):
        assert _database_secrets(release, kind, name) == {
            "RADSENTRY_DATABASE__URL": "radsentry-database"
        }, name
    notes = helm_python.Chart.load(CHART).render(
        {**EVALUATION, **single}, name="rs", namespace="radsentry"
    )
    [text] = [t for path, t in notes.items() if path.endswith("NOTES.txt")]
    assert "database.runtimeRole is empty" in text


@pytest.mark.parametrize(
    ("database", "message"),
    [
        (
            {"migration": {"existingSecret": ""}},
            "database.runtimeRole is set but database.migration.existingSecret is empty",
        ),
        (
            {"runtimeRole": "", "allowSingleRole": True},
            "database.migration.existingSecret is set but database.runtimeRole is empty",
        ),
        (
            {"consumerRole": ""},
            "database.consumerRole and database.consumer.existingSecret go together",
        ),
        (
            {"consumer": {"existingSecret": ""}},
            "database.consumerRole and database.consumer.existingSecret go together",
        ),
        (
            {"consumerRole": "radsentry_app"},
            "database.consumerRole equals database.runtimeRole",
        ),
    ],
)
def test_an_incomplete_role_layout_is_refused(database: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError) as refused:
        render({"database": database})
    assert message in str(refused.value)


# --- Monitoring -----------------------------------------------------------------------------


def test_operator_objects_only_when_enabled() -> None:
    assert not {m["kind"] for m in render()} & OPERATOR_KINDS
    assert {m["kind"] for m in render(_values("production"))} >= OPERATOR_KINDS


def test_the_prometheus_rule_carries_exactly_the_alert_rules() -> None:
    [rule] = of_kind(render(_values("production")), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))


def test_the_charts_copies_equal_their_sources() -> None:
    copies = [(RULES, CHART / "files" / RULES.name)]
    copies += [(plan, CHART / "files" / "pccp-plans" / plan.name) for plan in PLANS.iterdir()]
    assert sorted(p.name for p in (CHART / "files" / "pccp-plans").iterdir()) == sorted(
        p.name for p in PLANS.iterdir()
    )
    for source, copy in copies:
        assert copy.read_bytes() == source.read_bytes(), (
            f"{copy.relative_to(ROOT)} differs from {source.relative_to(ROOT)}: "
            f"cp {source.relative_to(ROOT)} {copy.relative_to(ROOT)}"
        )


def test_the_service_monitor_reaches_every_metrics_port() -> None:
    release = render(_values("production"))
    [monitor] = of_kind(release, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [
        s
        for s in of_kind(release, "Service")
        if selector.items() <= s["metadata"]["labels"].items()
    ]
    scraped = set()
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        for service in services:
            for port in service["spec"]["ports"]:
                if port["name"] == endpoint["port"]:
                    scraped.add(service["metadata"]["labels"]["app.kubernetes.io/component"])
                    _assert_target_port(release, service, port["targetPort"])
    assert scraped == {"api", "consumer", "scheduler"}


def _assert_target_port(release: list[Manifest], service: Manifest, target: str) -> None:
    name = service["metadata"]["labels"]["app.kubernetes.io/component"]
    pod = component(release, "Deployment", name)["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert target in ports
    if target == "metrics":  # the process serves its metrics on the port the pod declares
        args = container["args"]
        assert args[args.index("--metrics-port") + 1] == str(ports["metrics"])


# --- Network policies -----------------------------------------------------------------------


def _egress_ports(policy: Manifest) -> set[int]:
    return {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}


@pytest.mark.parametrize("values", ["default", "production"])
def test_network_policies_allow_only_what_each_component_needs(values: str) -> None:
    release = render(_values(values))
    policies = {
        m["metadata"]["labels"]["app.kubernetes.io/component"]: m
        for m in of_kind(release, "NetworkPolicy")
    }
    assert set(policies) == set(COMPONENTS)
    for name, policy in policies.items():
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        selected = [
            workload
            for workload in release
            if workload["kind"] in WORKLOADS
            and policy["spec"]["podSelector"]["matchLabels"].items()
            <= workload["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert [w["metadata"]["labels"]["app.kubernetes.io/component"] for w in selected] == [name]
    oidc = {443} if values == "production" else set()
    # DNS 53, PostgreSQL 5432, Kafka 9092, MLflow 5000, OIDC / DICOMweb 443.
    assert _egress_ports(policies["api"]) == {53, 5432, 9092, 5000} | oidc
    assert _egress_ports(policies["consumer"]) == {53, 5432, 9092}
    assert _egress_ports(policies["scheduler"]) == {53, 5432, 5000, 443}
    assert _egress_ports(policies["migrate"]) == {53, 5432}
    assert policies["migrate"]["spec"]["ingress"] == []
    [api_in] = policies["api"]["spec"]["ingress"]
    assert api_in["ports"] == [{"port": "http", "protocol": "TCP"}]
    for name in ("consumer", "scheduler"):
        rules = policies[name]["spec"]["ingress"]
        if values == "default":
            assert rules == []  # no metricsFrom: nobody may connect
        else:
            [rule] = rules
            assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
            assert rule["from"] == _values(values)["networkPolicy"]["metricsFrom"]


def test_the_service_monitor_needs_prometheus_let_in() -> None:
    with pytest.raises(helm_python.HelmRenderError, match=r"networkPolicy\.metricsFrom is empty"):
        render({"metrics": {"serviceMonitor": {"enabled": True}}})


# --- Consumers and partitions ----------------------------------------------------------------


def settings_of(release: list[Manifest]) -> dict[str, str]:
    """The settings ConfigMap's data: every process's RADSENTRY_* environment."""
    (found,) = [
        m for m in of_kind(release, "ConfigMap") if m["metadata"]["name"].endswith("-settings")
    ]
    data: dict[str, str] = found["data"]
    return data


def test_the_chart_defaults_to_oidc_and_asks_for_the_identity_provider() -> None:
    with pytest.raises(helm_python.HelmValuesError) as refused:
        render(base={})
    assert "at '/auth/issuer': minLength" in str(refused.value)
    oidc = {
        "auth": {"issuer": "https://idp.example.org", "jwksUrl": "https://idp.example.org/jwks"}
    }
    settings = settings_of(render(oidc, base={}))
    assert settings["RADSENTRY_AUTH__MODE"] == "oidc"


def test_local_mode_renders_only_when_allowed_explicitly() -> None:
    with pytest.raises(helm_python.HelmRenderError) as refused:
        render({"auth": {"mode": "local"}}, base={})
    assert "auth.allowLocalInProduction: true" in str(refused.value)
    assert "anyone with the shared secret could mint any identity" in str(refused.value)
    settings = settings_of(render(EVALUATION, base={}))
    assert settings["RADSENTRY_AUTH__MODE"] == "local"


def test_checkpoints_are_anchored_on_the_claim_named_for_them() -> None:
    plain = component(render(), "Deployment", "scheduler")["spec"]["template"]["spec"]
    assert "RADSENTRY_AUDIT__ANCHOR_DIR" not in {e["name"] for e in plain["containers"][0]["env"]}
    release = render({"audit": {"anchors": {"existingClaim": "worm-anchors"}}})
    pod = component(release, "Deployment", "scheduler")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RADSENTRY_AUDIT__ANCHOR_DIR"] == "/var/lib/radsentry-anchors"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["audit-anchors"] == "/var/lib/radsentry-anchors"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["audit-anchors"]["persistentVolumeClaim"]["claimName"] == "worm-anchors"


def test_consumers_up_to_the_partitions() -> None:
    release = render({"consumer": {"replicas": 6}, "kafka": {"partitions": 6}})
    assert component(release, "Deployment", "consumer")["spec"]["replicas"] == 6
    with pytest.raises(helm_python.HelmRenderError) as refused:
        render({"consumer": {"replicas": 7}, "kafka": {"partitions": 6}})
    assert "consumer.replicas (7) exceeds kafka.partitions (6)" in str(refused.value)


# --- Bad values -----------------------------------------------------------------------------

REFUSED = [
    pytest.param(
        {"consumer": {"replicas": "3"}},
        "at '/consumer/replicas': got string, want integer",
        id="replicas-string",
    ),
    pytest.param(
        {"database": {"password": "hunter2"}},
        "at '/database': additional properties 'password' not allowed",
        id="inline-password",
    ),
    pytest.param(
        {"database": {"url": "postgresql://u:p@db/x"}},
        "additional properties 'url' not allowed",
        id="inline-database-url",
    ),
    pytest.param(
        {"replicaCount": 3},
        "additional properties 'replicaCount' not allowed",
        id="unknown-top-level-key",
    ),
    pytest.param(
        {"settings": {"RADSENTRY_DATABASE__URL": "postgresql://u:p@db/x"}},
        "at '/settings/RADSENTRY_DATABASE__URL': false schema",
        id="secret-as-setting",
    ),
    pytest.param(
        {"settings": {"RADSENTRY_DATABASE__MIGRATION_URL": "postgresql://owner:p@db/x"}},
        "at '/settings/RADSENTRY_DATABASE__MIGRATION_URL': false schema",
        id="owner-url-as-setting",
    ),
    pytest.param(
        {"settings": {"RADSENTRY_DATABASE__RUNTIME_ROLE": "postgres"}},
        "at '/settings/RADSENTRY_DATABASE__RUNTIME_ROLE'",
        id="role-as-setting",
    ),
    pytest.param(
        {"database": {"runtimeRole": "Radsentry-App"}},
        "at '/database/runtimeRole'",
        id="role-name",
    ),
    pytest.param(
        {"database": {"migration": {"existingSecret": "x", "url": "postgresql://u:p@db/x"}}},
        "additional properties 'url' not allowed",
        id="inline-owner-url",
    ),
    pytest.param(
        {"settings": {"RADSENTRY_AUTH__LOCAL_SECRET": "x" * 40}},
        "at '/settings/RADSENTRY_AUTH__LOCAL_SECRET'",
        id="local-secret-as-setting",
    ),
    pytest.param(
        {"settings": {"RADSENTRY_API__PORT": "9000"}},
        "at '/settings/RADSENTRY_API__PORT'",
        id="setting-the-chart-owns",
    ),
    pytest.param({"settings": {"radsentry_api": "x"}}, "does not match pattern", id="setting-name"),
    pytest.param(
        {"scheduler": {"replicas": 2}},
        "at '/scheduler': additional properties 'replicas' not allowed",
        id="scheduler-replicas",
    ),
    pytest.param(
        {"auth": {"mode": "oidc"}}, "at '/auth/issuer': minLength", id="oidc-without-issuer"
    ),
    pytest.param({"auth": {"mode": "none"}}, "at '/auth/mode'", id="auth-mode"),
    pytest.param(
        {"api": {"resources": {"limits": None}}}, "missing property 'limits'", id="no-limits"
    ),
    pytest.param(
        {"kafka": {"bootstrapServers": []}},
        "at '/kafka/bootstrapServers': minItems",
        id="no-brokers",
    ),
    pytest.param(
        {"commands": {"consumer": ["serve"]}}, "at '/commands/consumer/0'", id="wrong-command"
    ),
    pytest.param({"image": {"digest": "latest"}}, "at '/image/digest'", id="digest"),
    pytest.param({"ports": {"api": 80}}, "at '/ports/api': minimum", id="privileged-port"),
]


@pytest.mark.parametrize(("values", "message"), REFUSED)
def test_bad_values_are_refused_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as refused:
        render(values)
    assert message in str(refused.value)


# --- One table of commands ------------------------------------------------------------------


def test_the_commands_are_the_documented_ones(defaults: dict[str, Any]) -> None:
    release = render()
    ports = defaults["ports"]
    documented = {
        "api": ["serve", "--no-consumer", "--no-jobs", "--no-migrate"],
        "consumer": ["consume", "--metrics-port", str(ports["consumerMetrics"])],
        "scheduler": ["scheduler", "--metrics-port", str(ports["schedulerMetrics"])],
        "migrate": ["migrate"],
    }
    doc = DEPLOY_DOC.read_text(encoding="utf-8")
    for name, args in documented.items():
        kind = "Job" if name == "migrate" else "Deployment"
        [container] = component(release, kind, name)["spec"]["template"]["spec"]["containers"]
        assert container["args"] == args, name
        assert args[: len(defaults["commands"][name])] == defaults["commands"][name]
        assert f"`radsentry {' '.join(args)}`" in doc, f"docs/deploy.md lacks {name}'s command"


def test_earlier_audit_keys_stay_trusted_in_the_processes_that_verify() -> None:
    values = {
        "audit": {
            "trustedPublicKeys": {
                "existingSecret": "radsentry-audit-old-keys",
                "keys": ["2025.pub", "2026.pub"],
            }
        }
    }
    release = render(values)
    for name in ("api", "scheduler"):
        spec = component(release, "Deployment", name)["spec"]["template"]["spec"]
        [container] = spec["containers"]
        environment = {v["name"]: v.get("value") for v in container["env"]}
        assert json.loads(environment["RADSENTRY_AUDIT__TRUSTED_PUBLIC_KEYS"]) == [
            "/etc/radsentry/audit-trusted/2025.pub",
            "/etc/radsentry/audit-trusted/2026.pub",
        ]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["audit-trusted-keys"]["secret"]["secretName"] == "radsentry-audit-old-keys"
    with pytest.raises(Exception, match=r"trustedPublicKeys\.existingSecret is required"):
        render({"audit": {"trustedPublicKeys": {"keys": ["2025.pub"]}}})
