"""The layering rule, read from the code's own imports (docs/architecture.md draws it):

    ftaas                      the launcher and the CLIs: the composition root
    api          worker        edges: HTTP routes; Celery tasks and the work they run
      |         /     \\
      |    serving     |       worker may call serving's entry points (the evaluator runs the engine)
      |     /          |
    db  storage  basemodels  evals  adapters  graders  transfer   data, artifacts, base models; the domain libraries
                  contracts                        what crosses a process boundary

A package may import the packages below it, never one beside or above it:

* `contracts` imports no other ftaas package, and no torch, numpy, transformers, peft or safetensors
  anywhere (not even inside a function): it is what the API process, the workers and the engine share.
* the domain libraries `evals`, `adapters`, `graders` and `transfer` import only `contracts` (and third-party libraries): no api,
  worker, serving or db, so each is one home for its domain, callable from any process.
* db and storage import only contracts; basemodels contracts and the storage interface.
* serving stands on those; api never imports serving or worker (it reaches the engine through
  contracts.inference.backend, wired in by ftaas); worker imports serving only through `serving.service`,
  `serving.reference`, `serving.sampler` and `serving.fast_paths`.

Imports inside functions count as much as module-level ones. The API process also validates requests
without torch: importing it and answering a validation error leaves torch out of `sys.modules`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contracts", "db", "storage", "basemodels", "evals", "adapters", "graders", "transfer", "serving", "api",
            "worker", "ftaas", "migrations")

#: package -> the packages it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "contracts": set(),
    "db": {"contracts"},
    "storage": {"contracts"},
    "basemodels": {"contracts", "storage"},
    "evals": {"contracts"},
    "adapters": {"contracts"},
    "graders": {"contracts"},
    "transfer": {"contracts"},
    "migrations": {"contracts", "db"},
    "serving": {"contracts", "db", "storage", "basemodels", "adapters"},
    "api": {"contracts", "db", "storage", "basemodels", "evals", "adapters", "graders"},
    "worker": {"contracts", "db", "storage", "basemodels", "evals", "adapters", "graders", "serving"},
    "ftaas": set(PACKAGES) - {"ftaas"},
}
#: The modules of serving that worker may use: the engine's service, the transformers reference path, the
#: sampler that reinforcement fine-tuning draws from the model it trains, and the precision measurement that
#: serving and training share (one cache per machine and model).
SERVING_ENTRY_POINTS = {"serving.service", "serving.reference", "serving.sampler", "serving.fast_paths"}
#: Third-party packages `contracts` must never import: the API validates every request without them.
HEAVY = {"torch", "numpy", "transformers", "peft", "safetensors"}


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


def violations_in(package: str, path: Path, where: str) -> list[str]:
    """What the imports of `path`, a module of `package`, break of the rules above."""
    found = []
    for line, module in imports_of(path):
        top = module.split(".")[0]
        at = f"{where}:{line} imports {module}"
        if package == "contracts" and top in HEAVY:
            found.append(f"{at} (contracts imports none of {sorted(HEAVY)})")
        if top not in PACKAGES or top == package:
            continue
        if top not in ALLOWED[package]:
            found.append(f"{at} ({package} may import only {sorted(ALLOWED[package])})")
        elif package == "worker" and top == "serving" and module != "serving" and not any(
                module == entry or module.startswith(entry + ".") for entry in SERVING_ENTRY_POINTS):
            found.append(f"{at} (worker uses serving only through {sorted(SERVING_ENTRY_POINTS)})")
    return found


def violations() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += violations_in(package, path, str(path.relative_to(ROOT)))
    return found


def test_no_package_imports_one_beside_or_above_it() -> None:
    assert violations() == []


def test_every_top_level_package_has_a_rule() -> None:
    """A new top-level package must be placed in the layering before anything may import it."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench", "helm"}
    assert packages == set(PACKAGES)


def test_the_check_reads_imports_wherever_they_are_written(tmp_path: Path) -> None:
    wrong = tmp_path / "upward.py"
    wrong.write_text("def f():\n    from worker.jobs import runner\n    from serving import service\n")
    assert imports_of(wrong) == [(2, "worker.jobs"), (2, "worker.jobs.runner"), (3, "serving"), (3, "serving.service")]


@pytest.mark.parametrize(("package", "source", "broken"), [
    ("contracts", "def f():\n    import torch\n", "contracts imports none of"),
    ("contracts", "from numpy import ndarray\n", "contracts imports none of"),
    ("contracts", "from evals.spec import EvalSpec\n", "contracts may import only []"),
    ("evals", "from db import files\n", "evals may import only ['contracts']"),
    ("adapters", "def f():\n    from worker.training import adapters\n", "adapters may import only ['contracts']"),
    ("api", "from serving.engine import Engine\n", "api may import only"),
    ("worker", "from serving.engine import Engine\n", "worker uses serving only through"),
    ("db", "from storage import layout\n", "db may import only ['contracts']"),
])
def test_the_check_catches_each_broken_rule(tmp_path: Path, package: str, source: str, broken: str) -> None:
    module = tmp_path / "module.py"
    module.write_text(source)
    found = violations_in(package, module, "module.py")
    assert found and all(broken in line for line in found), found


@pytest.mark.parametrize(("package", "source"), [
    ("evals", "import matplotlib\nfrom contracts.errors import InvalidRequest\n"),
    ("adapters", "import torch\nfrom contracts.errors import InvalidRequest\n"),
    ("worker", "from serving.service import InferenceService\nfrom evals.run import EvalRun\n"),
    ("api", "from evals.requests import spec_for_request\nfrom adapters.archive import extract_adapter\n"),
])
def test_the_check_lets_allowed_imports_pass(tmp_path: Path, package: str, source: str) -> None:
    module = tmp_path / "module.py"
    module.write_text(source)
    assert violations_in(package, module, "module.py") == []


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
db = Database(settings.database.url)
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


#: Modules that read tensors, and so import torch by nature: the worker and the engine import them, the API
#: never does.
TENSOR_MODULES = {"adapters.compeft", "adapters.compress", "adapters.export", "adapters.lora_files", "adapters.merge"}


@pytest.mark.parametrize("package", ["contracts", "db", "storage", "evals", "adapters", "graders", "api"])
def test_the_lower_layers_and_the_api_import_without_torch(package: str) -> None:
    modules = sorted(p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
                     for p in (ROOT / package).rglob("*.py") if p.name != "__init__.py")
    modules = [m for m in modules if m not in TENSOR_MODULES]
    script = ("import importlib, sys\n"
              f"for name in {modules!r}:\n    importlib.import_module(name)\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft')))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
