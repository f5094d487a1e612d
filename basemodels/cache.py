"""Build a model folder once under the model cache, safely across concurrent processes."""

from __future__ import annotations

import fcntl
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

#: Written last by every recipe: its presence means the folder is complete.
RECIPE_FILE = "ftaas-recipe.json"


def build_once(cache_dir: Path, recipe_version: str, build: Callable[[Path], None]) -> Path:
    """`<cache_dir>/builtin/<recipe_version>`, made by `build(staging)` the first time.

    `build` writes into a fresh staging folder that must end up holding RECIPE_FILE; the folder is renamed
    into place under an exclusive file lock, so concurrent processes build it once and never see half a model.
    """
    target = cache_dir / "builtin" / recipe_version
    if (target / RECIPE_FILE).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{recipe_version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / RECIPE_FILE).exists():
            return target
        staging = target.parent / f".{recipe_version}.{uuid.uuid4().hex}"
        try:
            build(staging)
            if not (staging / RECIPE_FILE).exists():
                raise RuntimeError(f"the {recipe_version} recipe wrote no {RECIPE_FILE}")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
