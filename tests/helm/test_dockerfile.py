"""The image the chart runs (no Docker engine here, so its build is not run: its contract is checked)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_the_image_is_multi_stage_with_cpu_and_cuda_variants() -> None:
    stages = re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE, re.MULTILINE)
    assert {"builder", "runtime-cpu", "runtime-cuda", "runtime"} <= set(stages)
    assert "ARG VARIANT=cpu" in DOCKERFILE and "FROM runtime-${VARIANT} AS runtime" in DOCKERFILE
    assert "COPY --from=builder /opt/ftaas /opt/ftaas" in DOCKERFILE
    assert "torch==2.13.0" in DOCKERFILE and 'torch==2.13.0",' in (ROOT / "pyproject.toml").read_text()


def test_the_image_runs_as_the_non_root_user_the_chart_expects() -> None:
    user = re.findall(r"^USER (\d+):(\d+)$", DOCKERFILE, re.MULTILINE)
    assert user == [("10001", "10001")]
    helpers = (ROOT / "helm" / "ftaas" / "templates" / "_helpers.tpl").read_text()
    assert "runAsUser: 10001" in helpers and "runAsGroup: 10001" in helpers
    assert 'ENTRYPOINT ["ftaas"]' in DOCKERFILE  # the chart's args are ftaas subcommands


def test_every_package_the_project_installs_is_copied_into_the_image() -> None:
    packages = yaml.safe_load("x: " + re.search(r'include = (\[[^\]]*\])', (ROOT / "pyproject.toml").read_text())
                              .group(1))["x"]
    copied = set(re.findall(r"^COPY (\w+) \./\1$", DOCKERFILE, re.MULTILINE))
    assert {p.rstrip("*") for p in packages} == copied
