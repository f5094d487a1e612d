"""The Helm chart, rendered and linted by Helm's own Go library (helm-python-sdk) for every ci/ scenario,
every manifest checked against the Kubernetes schemas, and what the chart promises asserted on its output."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from contracts.settings import Settings, variables

CHART = Path(__file__).resolve().parents[2] / "helm" / "ftaas"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
KUBERNETES = kubernetes_validate.latest_version()
SECRET_SETTINGS = {"FTAAS_DATABASE_URL", "FTAAS_BROKER_URL", "FTAAS_S3_ACCESS_KEY_ID", "FTAAS_S3_SECRET_ACCESS_KEY",
                   "FTAAS_BOOTSTRAP_API_KEY", "FTAAS_EVAL_JUDGE_API_KEY"}


def render(values_file: Path, chart: Path = CHART) -> list[dict[str, Any]]:
    values = yaml.safe_load(values_file.read_text()) or {}
    rendered = helm.Chart.load(str(chart)).render(values, name="ftaas-test", namespace="ml", is_install=True)
    documents = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        documents += [doc for doc in yaml.safe_load_all(text) if doc]
    return documents


def of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def ftaas_containers(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    containers = []
    for doc in documents:
        if doc["kind"] in ("Deployment", "Job", "StatefulSet"):
            pod = doc["spec"]["template"]["spec"]
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                if "ftaas" in container["image"]:
                    containers.append(container)
    return containers


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_the_chart_lints_clean_in_strict_mode_and_every_manifest_is_valid_kubernetes(scenario: Path) -> None:
    report = helm.lint(str(CHART), yaml.safe_load(scenario.read_text()), strict=True, namespace="ml")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == [], report
    documents = render(scenario)
    assert len(documents) >= 10
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_there_is_a_scenario_for_each_dependency_mode() -> None:
    assert {p.stem for p in SCENARIOS} >= {"external-values", "existing-secret-values", "bundled-values"}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_gpu_workers_request_gpus_and_have_time_to_checkpoint(scenario: Path) -> None:
    values = yaml.safe_load(scenario.read_text())
    gpus = (values.get("workers", {}).get("gpu", {}) or {}).get("gpus", 1)
    deployment = next(d for d in of_kind(render(scenario), "Deployment") if d["metadata"]["name"].endswith("worker-gpu"))
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["worker", "--queues", "gpu"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
    assert pod["terminationGracePeriodSeconds"] >= 300  # a training step and a checkpoint upload
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    cpu = next(d for d in of_kind(render(scenario), "Deployment") if d["metadata"]["name"].endswith("worker-default"))
    assert "nvidia.com/gpu" not in str(cpu["spec"]["template"]["spec"]["containers"][0]["resources"])


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_every_ftaas_process_computes_on_the_cpu_its_pod_requested(scenario: Path) -> None:
    """Thread budgets come from each pod's CPU request, so a serving pod and a worker pod on one node do not
    each size their thread pools to every core of the node (contracts.machine)."""
    for deployment in of_kind(render(scenario), "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            if "ftaas" not in container["image"]:
                continue
            [cores] = [e for e in container.get("env", []) if e["name"] == "FTAAS_RESOURCES_CORES"]
            source = cores["valueFrom"]["resourceFieldRef"]
            assert source == {"containerName": container["name"], "resource": "requests.cpu", "divisor": "1"}
            assert {"name": "FTAAS_RESOURCES_SHARING", "value": "off"} in container["env"]
            assert "cpu" in container["resources"]["requests"], deployment["metadata"]["name"]


def test_probe_paths_are_routes_the_app_serves(tmp_path: Path) -> None:
    from api.app import create_app
    from api.inference.router import router as inference_router

    settings = Settings(data_dir=tmp_path)
    routes = set(create_app(settings, extra_routers=[inference_router]).openapi()["paths"])
    probed = set()
    for scenario in SCENARIOS:
        for container in ftaas_containers(render(scenario)):
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container:
                    probed.add(container[probe]["httpGet"]["path"])
    assert probed == {"/health/live", "/health/ready"} and probed <= routes


def test_every_environment_variable_the_chart_sets_is_a_setting() -> None:
    settings = {f"FTAAS_{flat.upper()}" for _, _, flat in variables()}
    for scenario in SCENARIOS:
        documents = render(scenario)
        names = set()
        for config_map in of_kind(documents, "ConfigMap"):
            names |= set(config_map["data"])
        for secret in of_kind(documents, "Secret"):
            names |= {k for k in secret.get("stringData", {}) if k.startswith("FTAAS_")}
        for container in ftaas_containers(documents):
            names |= {e["name"] for e in container.get("env", [])}
        assert names and names <= settings, names - settings


def test_secrets_come_only_from_secrets() -> None:
    for scenario in SCENARIOS:
        documents = render(scenario)
        for config_map in of_kind(documents, "ConfigMap"):
            assert not set(config_map["data"]) & SECRET_SETTINGS
            assert not any("password" in str(v).lower() or "@" in str(v) for v in config_map["data"].values())
        for doc in documents:
            if doc["kind"] not in ("Deployment", "Job", "StatefulSet"):
                continue
            for container in [*doc["spec"]["template"]["spec"].get("initContainers", []),
                              *doc["spec"]["template"]["spec"]["containers"]]:
                for env in container.get("env", []):
                    secretish = env["name"] in SECRET_SETTINGS or "PASSWORD" in env["name"] or "ROOT_USER" in env["name"]
                    assert not secretish or "secretKeyRef" in env.get("valueFrom", {}), (scenario.stem, env)
                if "ftaas" in container["image"]:
                    sources = container["envFrom"]
                    assert {"configMapRef", "secretRef"} == {next(iter(s)) for s in sources}
    existing = render(CHART / "ci" / "existing-secret-values.yaml")
    assert not [s for s in of_kind(existing, "Secret") if "FTAAS_DATABASE_URL" in s.get("stringData", {})]
    for container in ftaas_containers(existing):
        assert {"secretRef": {"name": "ftaas-credentials"}} in container["envFrom"]


def test_migrations_run_before_the_deployments_and_after_what_they_read() -> None:
    documents = render(CHART / "ci" / "external-values.yaml")
    (job,) = [d for d in of_kind(documents, "Job") if d["metadata"]["name"].endswith("migrate")]
    hook = job["metadata"]["annotations"]
    assert set(hook["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    # pre-* hooks complete before the release's ordinary resources (the Deployments) are applied; the
    # ConfigMap and Secret the Job reads are hooks of a lower weight, so they exist first.
    assert all("helm.sh/hook" not in (d["metadata"].get("annotations") or {}) for d in of_kind(documents, "Deployment"))
    for kind in ("ConfigMap", "Secret"):
        (config,) = of_kind(documents, kind)
        assert int(config["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(hook["helm.sh/hook-weight"])
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    # With the bundled PostgreSQL (which does not exist before the install) the API migrates at start.
    bundled = render(CHART / "ci" / "bundled-values.yaml")
    assert not [d for d in of_kind(bundled, "Job") if d["metadata"]["name"].endswith("migrate")]
    api = next(d for d in of_kind(bundled, "Deployment") if d["metadata"]["name"].endswith("-api"))
    assert api["spec"]["template"]["spec"]["initContainers"][0]["args"] == ["migrate"]


def test_selectors_are_stable_across_a_chart_version_bump(tmp_path: Path) -> None:
    bumped = tmp_path / "ftaas"
    shutil.copytree(CHART, bumped)
    chart_yaml = bumped / "Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text().replace("version: 0.1.0", "version: 9.9.9")
                          .replace('appVersion: "0.1.0"', 'appVersion: "9.9.9"'))

    def selectors(chart: Path) -> dict[str, Any]:
        found = {}
        for doc in render(CHART / "ci" / "bundled-values.yaml", chart):
            spec = doc.get("spec", {})
            if "selector" in spec:
                found[(doc["kind"], doc["metadata"]["name"])] = spec["selector"]
        return found

    before, after = selectors(CHART), selectors(bumped)
    assert before == after and len(before) >= 8
    assert "9.9.9" not in str(after) and "0.1.0" not in str(before)


def test_pods_run_as_non_root_with_read_only_root_filesystems() -> None:
    for scenario in SCENARIOS:
        documents = render(scenario)
        for doc in documents:
            if doc["kind"] not in ("Deployment", "Job", "StatefulSet"):
                continue
            pod = doc["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
            for container in pod["containers"]:
                assert container["securityContext"]["allowPrivilegeEscalation"] is False
        for container in ftaas_containers(documents):
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert {m["mountPath"] for m in container["volumeMounts"]} == {"/var/lib/ftaas", "/tmp"}


def test_ingress_sends_inference_to_serving_and_the_rest_to_the_api() -> None:
    (ingress,) = of_kind(render(CHART / "ci" / "existing-secret-values.yaml"), "Ingress")
    paths = {p["path"]: p["backend"]["service"]["name"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert paths["/v1/chat/completions"].endswith("-serving") and paths["/v1/completions"].endswith("-serving")
    assert paths["/"].endswith("-api")


def test_values_are_documented_and_schema_checked() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        key, _, value = stripped.partition(":")
        if value.strip():  # a leaf: documented on a comment line above it (or its section is)
            above = [lines[j].strip() for j in range(index - 1, -1, -1) if lines[j].strip()][:1]
            parent_comment = any(lines[j].strip().startswith("#") for j in range(max(0, index - 12), index))
            assert (above and above[0].startswith("#")) or parent_comment, f"values.yaml line {index + 1}: {key}"
    with pytest.raises(helm.HelmError):
        helm.Chart.load(str(CHART)).render({"api": {"replicas": "many"}}, name="x", namespace="ml")
