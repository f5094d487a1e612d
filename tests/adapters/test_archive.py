"""Uploaded adapter archives: a well-formed one unpacks; every malicious or malformed one is a 400, and
nothing is ever written outside the staging folder."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.archive import Limits, extract_adapter
from adapters.files import ModuleShape, check_fits_base, read_lora_shapes
from adapters.lora_files import module_shapes, read_lora
from contracts.errors import InvalidRequest

CONFIG = json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16}).encode()


def adapter_files(make_adapter: Any) -> dict[str, bytes]:
    directory = make_adapter(51)
    return {name: (directory / name).read_bytes() for name in ("adapter_config.json", "adapter_model.safetensors")}


def make_zip(path: Path, members: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # a symbolic link
            archive.writestr(info, target)
    return path


def make_tar(path: Path, add: Callable[[tarfile.TarFile], None]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        add(archive)
    return path


def tar_file(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def assert_refused(archive: Path, staging: Path, words: str, limits: Limits | None = None) -> None:
    before = set(archive.parent.rglob("*"))
    with pytest.raises(InvalidRequest) as caught:
        extract_adapter(archive, staging, limits or Limits())
    assert caught.value.code == "invalid_adapter_archive" and words in caught.value.message, caught.value.message
    created = set(archive.parent.rglob("*")) - before
    assert all(path == staging or staging in path.parents for path in created), created
    assert not any(path.is_file() for path in created), "refused before writing any file"


def test_a_well_formed_archive_unpacks_in_a_folder_or_at_the_root(tmp_path: Path, make_adapter: Any,
                                                                    model_cache_dir: Path) -> None:
    files = adapter_files(make_adapter)
    zipped = make_zip(tmp_path / "a.zip", {f"my-adapter/{k}": v for k, v in files.items()})
    out = extract_adapter(zipped, tmp_path / "stage-zip")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    tarred = make_tar(tmp_path / "a.tgz", lambda t: [tar_file(t, k, v) for k, v in files.items()])
    out = extract_adapter(tarred, tmp_path / "stage-tar")
    adapter = module_shapes(read_lora(out))
    _, header_only = read_lora_shapes(out)
    assert header_only == adapter  # the API's torch-free check reads the same shapes as the worker's
    config = json.loads((next(model_cache_dir.rglob("config.json"))).read_text())
    check_fits_base(adapter, config, max_rank=32)
    with pytest.raises(InvalidRequest, match="rank 8; the limit is 4"):
        check_fits_base(adapter, config, max_rank=4)
    with pytest.raises(InvalidRequest, match="does not exist in the base model"):
        check_fits_base(adapter, {**config, "num_hidden_layers": 2}, max_rank=32)
    with pytest.raises(InvalidRequest, match="weight, the base model's is"):
        check_fits_base(adapter, {**config, "hidden_size": 64, "num_attention_heads": 2}, max_rank=32)
    # The output layer's LoRA (the tinker SDK's train_unembed) fits a vocabulary x hidden weight
    head = ModuleShape(out=int(config["vocab_size"]), rank=8, fan_in=int(config["hidden_size"]))
    check_fits_base({**adapter, "base_model.model.lm_head": head}, config, max_rank=32)
    with pytest.raises(InvalidRequest, match="lm_head: the factors fit") as refused:
        check_fits_base({**adapter, "base_model.model.lm_head": head}, {**config, "vocab_size": 7}, max_rank=32)
    assert refused.value.code == "adapter_base_mismatch"


def test_path_tricks_links_and_pickles_are_refused(tmp_path: Path, make_adapter: Any) -> None:
    files = adapter_files(make_adapter)
    cases = [
        (make_zip(tmp_path / "dotdot.zip", {**files, "../evil.txt": b"x"}), "outside its folder"),
        (make_zip(tmp_path / "abs.zip", {**files, "/tmp/evil.txt": b"x"}), "absolute path"),
        (make_zip(tmp_path / "link.zip", files, symlinks={"adapter_extra": "/etc/passwd"}), "is a link"),
        (make_zip(tmp_path / "pickle.zip", {**files, "adapter_model.bin": b"\x80\x04pickle"}), "no pickles"),
        (make_zip(tmp_path / "pkl.zip", {**files, "x/../../y.pkl": b"x"}), "outside its folder"),
        (make_zip(tmp_path / "extra.zip", {**files, "run.sh": b"rm -rf /"}), "unexpected member"),
        (make_zip(tmp_path / "missing.zip", {"adapter_config.json": CONFIG}), "lacks adapter_model.safetensors"),
        (make_zip(tmp_path / "split.zip", {"a/adapter_config.json": CONFIG,
                                           "b/adapter_model.safetensors": files["adapter_model.safetensors"]}),
         "in one folder"),
    ]

    def with_symlink(archive: tarfile.TarFile) -> None:
        for name, data in files.items():
            tar_file(archive, name, data)
        link = tarfile.TarInfo("README.md")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)

    def with_hardlink(archive: tarfile.TarFile) -> None:
        for name, data in files.items():
            tar_file(archive, name, data)
        link = tarfile.TarInfo("README.md")
        link.type, link.linkname = tarfile.LNKTYPE, "adapter_config.json"
        archive.addfile(link)

    def with_device(archive: tarfile.TarFile) -> None:
        for name, data in files.items():
            tar_file(archive, name, data)
        device = tarfile.TarInfo("README.md")
        device.type = tarfile.CHRTYPE
        archive.addfile(device)

    cases += [
        (make_tar(tmp_path / "sym.tgz", with_symlink), "is a link"),
        (make_tar(tmp_path / "hard.tgz", with_hardlink), "is a link"),
        (make_tar(tmp_path / "dev.tgz", with_device), "not a regular file"),
        (make_tar(tmp_path / "dotdot.tgz", lambda t: [tar_file(t, "../" + k, v) for k, v in files.items()]),
         "outside its folder"),
    ]
    for index, (archive, words) in enumerate(cases):
        assert_refused(archive, tmp_path / f"stage-{index}", words)
    assert not (tmp_path.parent / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_bombs_and_oversized_members_are_refused_before_they_expand(tmp_path: Path, make_adapter: Any) -> None:
    files = adapter_files(make_adapter)
    bomb = make_zip(tmp_path / "bomb.zip", {"adapter_config.json": CONFIG,
                                            "adapter_model.safetensors": b"\0" * (64 * 1024 * 1024)})
    assert bomb.stat().st_size < 1024 * 1024  # 64 MiB of zeros compress ~1000-fold
    assert_refused(bomb, tmp_path / "stage-bomb", "zip bomb")
    big = make_tar(tmp_path / "big.tgz", lambda t: [tar_file(t, k, v) for k, v in files.items()])
    assert_refused(big, tmp_path / "stage-big", "the limit is", Limits(max_file_bytes=1024))
    assert_refused(big, tmp_path / "stage-total", "the limit is", Limits(max_total_bytes=2048))
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not an archive at all")
    assert_refused(junk, tmp_path / "stage-junk", "neither a zip nor a tar")
