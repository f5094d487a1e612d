"""Wire shapes of the Models API (OpenAI's Models API)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

#: `owned_by` of the base models an installation offers.
SYSTEM_OWNER = "ftaas"


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    #: Unix seconds; 0 for base models, which have no creation time of their own here.
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool
