"""The layering rule, read from the code's own imports (docs/architecture.md draws it):

    ftaas (launcher, CLIs: the composition root)
      api            worker
        |           /    \\
        |      serving    |        worker may call serving's entry points (the evaluator runs the engine)
        |      /          |
    db   storage   basemodels
              contracts

A package may import the packages below it, never one beside or above it: `contracts` imports no other
ftaas package; db, storage and basemodels only contracts (and basemodels the storage interface); serving
stands on those; api never imports serving or worker (it reaches the engine through
contracts.inference.backend, wired in by ftaas); worker imports serving only through `serving.service`
and `serving.reference`. Imports inside functions count as much as module-level ones.

The API process also validates requests without torch: importing it and answering a validation error
leaves torch out of `sys.modules`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contracts", "db", "storage", "basemodels", "serving", "api", "worker", "ftaas", "migrations")

#: package -> the packages it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "contracts": set(),
    "db": {"contracts"},
    "storage": {"contracts"},
    "basemodels": {"contracts", "storage"},
    "migrations": {"contracts", "db"},
    "serving": {"contracts", "db", "storage", "basemodels"},
    "api": {"contracts", "db", "storage", "basemodels"},
    "worker": {"contracts", "db", "storage", "basemodels", "serving"},
    "ftaas": set(PACKAGES) - {"ftaas"},
}
#: The modules of serving that worker may use: the engine's service and the transformers reference path.
SERVING_ENTRY_POINTS = {"serving.service", "serving.reference"}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every absolute import in the file, wherever it is written."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            # `from serving import service` names the module `serving.service`
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if (ROOT / node.module.replace(".", "/") / f"{alias.name}.py").is_file()]
    return found


def violations() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, module in imports_of(path):
                top = module.split(".")[0]
                if top not in PACKAGES or top == package:
                    continue
                where = f"{path.relative_to(ROOT)}:{line} imports {module}"
                if top not in ALLOWED[package]:
                    found.append(f"{where} ({package} may import only {sorted(ALLOWED[package])})")
                elif package == "worker" and top == "serving" and module != "serving" and not any(
                        module == entry or module.startswith(entry + ".") for entry in SERVING_ENTRY_POINTS):
                    found.append(f"{where} (worker uses serving only through {sorted(SERVING_ENTRY_POINTS)})")
    return found


def test_no_package_imports_one_beside_or_above_it() -> None:
    assert violations() == []


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    wrong = tmp_path / "upward.py"
    wrong.write_text("def f():\n    from worker.jobs import runner\n    from serving import service\n")
    assert imports_of(wrong) == [(2, "worker.jobs"), (2, "worker.jobs.runner"), (3, "serving"), (3, "serving.service")]


def test_the_api_validates_a_request_without_importing_torch(tmp_path: Path) -> None:
    """A fresh interpreter builds the API on SQLite, rejects a malformed fine-tuning job with the OpenAI error
    shape, and has not imported torch (nor transformers, peft, the worker or the engine)."""
    script = f"""
import sys
from fastapi.testclient import TestClient
from api.app import create_app
from contracts.settings import Settings
from db.session import Database
from db import projects

from db.migrate import upgrade

settings = Settings(data_dir={str(tmp_path)!r}, database_url="sqlite:///{tmp_path}/ftaas.db")
db = Database(settings.database_url)
upgrade(db)
with db.write() as session:
    _, key = projects.create_api_key(session, projects.ensure_project(session, "default"), name="test")
app = create_app(settings)
with TestClient(app) as client:
    reply = client.post("/v1/fine_tuning/jobs", json={{"model": "ftaas-tiny", "training_file": 7}},
                        headers={{"authorization": "Bearer " + key}})
assert reply.status_code == 400, reply.text
assert reply.json()["error"]["param"] == "training_file", reply.text
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "peft", "worker", "serving"))
assert not loaded, loaded
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


@pytest.mark.parametrize("package", ["contracts", "db", "storage", "api"])
def test_the_lower_layers_and_the_api_import_without_torch(package: str) -> None:
    modules = sorted(p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
                     for p in (ROOT / package).rglob("*.py") if p.name != "__init__.py")
    # contracts.adapters.compeft is the stored form of compressed tensors: torch by nature, and imported only
    # where tensors are read (the worker and the engine).
    modules = [m for m in modules if m != "contracts.adapters.compeft"]
    script = ("import importlib, sys\n"
              f"for name in {modules!r}:\n    importlib.import_module(name)\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft')))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
