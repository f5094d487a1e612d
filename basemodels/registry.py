"""Base model registry: name -> source, from settings. No ML imports (the API uses it on its hot path)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BaseModel:
    name: str
    #: builtin://tiny-chat, an HF hub id (optionally id@revision), file:///dir, or s3://bucket/dir.
    source: str


class BaseModelRegistry:
    def __init__(self, sources: dict[str, str]) -> None:
        self._models = {name: BaseModel(name, source) for name, source in sources.items()}

    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str) -> BaseModel | None:
        return self._models.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._models
