"""Base models resolve from every kind of source and load safely (safetensors only, no remote code)."""

from __future__ import annotations

import shutil
from pathlib import Path

import boto3
import pytest
import torch

from basemodels import tiny
from basemodels.loader import BaseModelLoader
from basemodels.registry import BaseModelRegistry
from contracts.errors import InvalidRequest, NotFound
from contracts.settings import Settings
from storage import open_store
from tests.conftest import S3_CREDENTIALS


def generates(loader: BaseModelLoader, name: str) -> bool:
    tokenizer, model = loader.load_tokenizer(name), loader.load_model(name)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        output = model.generate(**prompt, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return output.shape[1] > prompt["input_ids"].shape[1]


def test_the_demo_model_is_built_deterministically(tmp_path: Path, model_cache_dir: Path) -> None:
    rebuilt = tmp_path / "again"
    tiny.build(rebuilt)
    reference = model_cache_dir / "builtin" / tiny.RECIPE_VERSION
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (rebuilt / name).read_bytes() == (reference / name).read_bytes(), name


def test_a_file_source_loads_from_its_directory(tmp_path: Path, model_cache_dir: Path) -> None:
    directory = tmp_path / "my-model"
    shutil.copytree(model_cache_dir / "builtin" / tiny.RECIPE_VERSION, directory)
    loader = BaseModelLoader(BaseModelRegistry({"mine": directory.as_uri()}), tmp_path / "cache")
    assert generates(loader, "mine")


def test_an_s3_source_is_copied_once_without_unsafe_files(tmp_path: Path, model_cache_dir: Path, s3_endpoint: str,
                                                          s3_bucket: str) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **S3_CREDENTIALS)
    for path in (model_cache_dir / "builtin" / tiny.RECIPE_VERSION).iterdir():
        client.upload_file(str(path), s3_bucket, f"base/tiny/{path.name}")
    client.put_object(Bucket=s3_bucket, Key="base/tiny/pytorch_model.bin", Body=b"a pickle would execute code")
    settings = Settings(data_dir=tmp_path, s3_endpoint_url=s3_endpoint,
                        s3_access_key_id=S3_CREDENTIALS["aws_access_key_id"],
                        s3_secret_access_key=S3_CREDENTIALS["aws_secret_access_key"])
    loader = BaseModelLoader(BaseModelRegistry({"tiny-s3": f"s3://{s3_bucket}/base/tiny"}), tmp_path / "cache",
                             open_store=lambda uri: open_store(uri, settings.storage))
    assert generates(loader, "tiny-s3")
    local = Path(loader.resolve("tiny-s3")[0])
    assert (local / "model.safetensors").exists() and not (local / "pytorch_model.bin").exists()


def test_unknown_names_and_sources_are_reported(tmp_path: Path) -> None:
    loader = BaseModelLoader(BaseModelRegistry({"odd": "ftp://somewhere/model"}), tmp_path)
    with pytest.raises(NotFound):
        loader.resolve("nope")
    with pytest.raises(InvalidRequest, match="unsupported base model source"):
        loader.resolve("odd")


def test_hub_ids_resolve_with_their_revision_and_never_download_when_offline(tmp_path: Path) -> None:
    loader = BaseModelLoader(BaseModelRegistry({"hub": "someorg/some-model@abc123"}), tmp_path, hf_offline=True)
    assert loader.resolve("hub") == ("someorg/some-model", "abc123")
    with pytest.raises(OSError):  # not in the local cache, and the hub is not contacted
        loader.load_tokenizer("hub")
