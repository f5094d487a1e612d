"""The image the chart runs: its contract with the chart, a daemonless check that its builder stage
installs a complete ftaas from exactly the files it copies, and the real `docker build` wherever a Docker
daemon answers (skipped, saying so, where none does)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
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


def builder_copies() -> list[str]:
    """The project paths the builder stage copies into /src (`COPY <path>... <dest>`, not `--from`)."""
    builder = DOCKERFILE.split(" AS builder", 1)[1].split("\nFROM ", 1)[0]
    paths = []
    for line in re.findall(r"^COPY (?!--)(.+)$", builder, re.MULTILINE):
        paths += line.split()[:-1]
    return paths


def test_the_builder_stage_installs_a_complete_ftaas_from_exactly_what_it_copies(tmp_path: Path) -> None:
    """What `RUN pip install .` does in the builder, without a daemon: build the wheel from a folder holding
    only the copied paths, offline, and find every package, its data files and the `ftaas` command in it."""
    source = tmp_path / "src"
    source.mkdir()
    for path in builder_copies():
        origin = ROOT / path
        if origin.is_dir():
            shutil.copytree(origin, source / path, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(origin, source / path)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True,
                           check=False, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("ftaas-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = yaml.safe_load("x: " + re.search(r'include = (\[[^\]]*\])', (ROOT / "pyproject.toml").read_text())
                              .group(1))["x"]
    for package in (p.rstrip("*") for p in packages):
        assert f"{package}/__init__.py" in names, package
    for data in ("evals/schemas/eval_spec.schema.json", "migrations/alembic.ini", "migrations/script.py.mako"):
        assert data in names, data
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "ftaas = ftaas.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_image_builds_where_a_docker_daemon_answers(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    daemon = docker and subprocess.run([docker, "info"], capture_output=True, check=False, timeout=30).returncode == 0
    if not daemon:
        pytest.skip("no Docker daemon answers here (`docker info` fails), so the image is not built; "
                    "test_the_builder_stage_installs_a_complete_ftaas_from_exactly_what_it_copies checks its "
                    "builder stage without one")
    built = subprocess.run([docker, "build", "--target", "runtime", "-t", "ftaas:test-cpu", str(ROOT)],
                           capture_output=True, text=True, check=False, timeout=3600)
    assert built.returncode == 0, built.stderr[-5000:]
    version = subprocess.run([docker, "run", "--rm", "ftaas:test-cpu", "--help"], capture_output=True, text=True,
                             check=False, timeout=300)
    assert version.returncode == 0 and "up" in version.stdout, version.stderr[-3000:]
