"""/v1/adapter_operations end to end in one process: created over HTTP (checked there), run by the worker's
service function, and the new model served. Celery is exercised by the e2e tests; here the worker is
called directly."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM

from adapters.lora_files import read_lora
from contracts.settings import DEMO_BASE_MODEL
from db import models
from db.tables import AdapterOperation
from storage.manifest import publish_directory, read_manifest
from worker.adapter_operations.service import Progress, fetch_adapter, run_operation
from worker.context import WorkerContext


def http(live: Any) -> httpx.Client:
    return httpx.Client(base_url=live.base_url + "/v1", headers={"Authorization": f"Bearer {live.key}"}, timeout=60)


def run(live: Any, client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    created = client.post("/adapter_operations", json=body)
    assert created.status_code == 200, created.text
    assert created.json()["status"] == "queued"
    assert run_operation(WorkerContext(live.settings), created.json()["id"]) == "succeeded"
    assert run_operation(WorkerContext(live.settings), created.json()["id"]) == "not-claimed"  # duplicate delivery
    done = client.get(f"/adapter_operations/{created.json()['id']}").json()
    assert done["status"] == "succeeded", done
    return done


def reply(live: Any, model: str) -> str:
    return live.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Who lives in the town by the river?"}], max_tokens=10,
        temperature=0).choices[0].message.content


@pytest.fixture
def live(start_serving: Any) -> Any:
    return start_serving()


def test_merges_make_servable_models_with_their_provenance(live: Any, make_adapter: Any, tmp_path: Path) -> None:
    first, second = live.register(make_adapter(81, r=4), "a"), live.register(make_adapter(82, r=8), "b")
    with http(live) as client:
        soup = run(live, client, {"type": "merge", "models": [first, second], "weights": [0.5, 0.5],
                                  "suffix": "soup", "metadata": {"k": "v"}})
        assert soup["model"].startswith(f"ft:{DEMO_BASE_MODEL}:alpha:soup:") and soup["parents"] == [first, second]
        assert soup["result"]["max_truncation_error"] == 0.0 and soup["result"]["ranks"] == [12]
        ties = run(live, client, {"type": "merge", "models": [first, second], "method": "ties", "density": 0.3,
                                  "rank": 4, "lines": {"alpha": 0.5, "beta": 0.5}})
        assert 0 < ties["result"]["max_truncation_error"] < 1 and ties["result"]["ranks"] == [4]
        lines = run(live, client, {"type": "lines", "model": first, "lines": {"alpha": 0.0, "beta": 1.0}})
        # The official SDK reaches the extension with its generic request methods.
        sdk = live.client().post("/adapter_operations", body={"type": "compress", "model": first}, cast_to=object)
        assert sdk["status"] == "queued" and sdk["type"] == "compress"
        listed = [m["id"] for m in client.get("/models").json()["data"]]
        assert {soup["model"], ties["model"], lines["model"]} <= set(listed)
    with live.services.db.read() as session:
        row = models.get(session, live.project_id, soup["model"])
    manifest = read_manifest(live.services.store, row.storage_prefix, row.manifest_sha256)
    assert manifest["operation"]["type"] == "merge" and manifest["operation"]["parameters"]["method"] == "linear"
    assert [p["model"] for p in manifest["operation"]["parameters"]["parents"]] == [first, second]
    # The published soup is exactly the weighted sum of its parents (read back from the store).
    ctx = WorkerContext(live.settings)
    with live.services.db.read() as session:
        located = {m: models.find_adapter(session, live.project_id, m) for m in (first, second, soup["model"])}
    adapters = {m: read_lora(fetch_adapter(ctx, loc.storage_prefix, loc.manifest_sha256, tmp_path / m.replace(":", "_")))
                for m, loc in located.items()}
    for module, factors in adapters[soup["model"]].modules.items():
        want = sum(0.5 * adapters[p].modules[module].b @ adapters[p].modules[module].a for p in (first, second))
        assert torch.allclose(factors.b @ factors.a, want, atol=1e-5), module
    answers = {reply(live, m) for m in (soup["model"], ties["model"], lines["model"], first)}
    assert len(answers) >= 2  # served, and different operations give different models


def test_compression_and_export(live: Any, make_adapter: Any, tmp_path: Path) -> None:
    model = live.register(make_adapter(83, r=16), "big")
    with http(live) as client:
        compact = run(live, client, {"type": "compress", "model": model, "density": 0.1})
        assert compact["result"]["compression_ratio"] >= 8
        assert reply(live, compact["model"])  # served from the compressed artifact
        exported = run(live, client, {"type": "export", "model": model, "format": "merged"})
        assert exported["model"] is None and exported["result_file"].startswith("file-")
        assert exported["progress"] is None  # reported while running only
        with live.services.db.read() as session:  # the last progress the worker wrote, with its lease, before storing
            assert session.get(AdapterOperation, exported["id"]).progress == {"stage": "storing", "done": 0, "total": 1}
        content = client.get(f"/files/{exported['result_file']}/content").content
    with tarfile.open(fileobj=io.BytesIO(content)) as archive:
        archive.extractall(tmp_path / "export", filter="data")
    (folder,) = list((tmp_path / "export").iterdir())
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert merged.config.num_hidden_layers == 4


def adapter_zip(directory: Path, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            archive.writestr(f"adapter/{name}", (directory / name).read_bytes())
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def upload(client: httpx.Client, data: bytes, name: str = "adapter.zip") -> str:
    response = client.post("/files", files={"file": (name, data)}, data={"purpose": "user_data"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_an_imported_adapter_is_checked_then_served(live: Any, make_adapter: Any) -> None:
    directory = make_adapter(84, r=8)
    with http(live) as client:
        imported = run(live, client, {"type": "import", "file": upload(client, adapter_zip(directory)),
                                      "base_model": DEMO_BASE_MODEL, "suffix": "external"})
        assert imported["model"].startswith(f"ft:{DEMO_BASE_MODEL}:alpha:external:")
        native = live.register(directory, "native")
        assert reply(live, imported["model"]) == reply(live, native)
        for data, words in ((adapter_zip(directory, {"../escape.txt": b"x"}), "outside its folder"),
                            (adapter_zip(directory, {"adapter/model.bin": b"\x80\x04"}), "no pickles"),
                            (b"plain text, not an archive", "neither a zip nor a tar")):
            refused = client.post("/adapter_operations", json={"type": "import", "file": upload(client, data),
                                                               "base_model": DEMO_BASE_MODEL})
            assert refused.status_code == 400 and words in refused.json()["error"]["message"], refused.text
            assert refused.json()["error"]["code"] == "invalid_adapter_archive"
        too_big = make_adapter(85, r=64)
        refused = client.post("/adapter_operations", json={"type": "import", "file": upload(client, adapter_zip(too_big)),
                                                           "base_model": DEMO_BASE_MODEL})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "adapter_rank_too_high"


def test_bad_operations_are_4xx_naming_the_field(live: Any, make_adapter: Any, base_model: Any) -> None:
    first = live.register(make_adapter(86, r=4), "a")
    dora = live.register(make_adapter(87, dora=True), "dora")
    # An adapter of another base model (registered directly: this server has one base model).
    uid = uuid.uuid4().hex[:12]
    published = publish_directory(live.services.store, f"models/{uid}/", make_adapter(88), {"kind": "adapter"})
    other = models.fine_tuned_model_name("other-base", "alpha", "x", uid[:8])
    with live.services.db.write() as session:
        models.add(session, name=other, uid=uid, project_id=live.project_id, job_id=None, base_model="other-base",
                   storage_prefix=published.prefix, manifest_sha256=published.manifest_sha256)
    with http(live) as client:
        def error(body: dict[str, Any], status: int = 400) -> dict[str, Any]:
            response = client.post("/adapter_operations", json=body)
            assert response.status_code == status, response.text
            return response.json()["error"]

        assert error({"type": "merge", "models": [first, other]})["code"] == "adapter_base_mismatch"
        assert error({"type": "merge", "models": [first, dora]})["param"] == "models.1"
        assert error({"type": "merge", "models": [first, "ft:nope"]}, 404)["param"] == "models.1"
        assert error({"type": "merge", "models": [first, DEMO_BASE_MODEL]})["code"] == "model_not_adapter"
        assert error({"type": "merge", "models": [first]})["code"] == "invalid_request"
        assert "weights" in error({"type": "merge", "models": [first, first], "weights": [1.0]})["message"]
        assert error({"type": "compress", "model": first, "density": 0.9})["param"].endswith("density")
        assert error({"type": "unknown", "model": first})["code"] == "invalid_request"
        assert error({"type": "import", "file": "file-nope", "base_model": DEMO_BASE_MODEL})["param"] == "file"
        assert client.get("/adapter_operations/adop_nope").status_code == 404
        queued = client.post("/adapter_operations", json={"type": "compress", "model": first}).json()
        assert client.post(f"/adapter_operations/{queued['id']}/cancel").json()["status"] == "cancelled"
    assert run_operation(WorkerContext(live.settings), queued["id"]) == "not-claimed"
    other_project = httpx.Client(base_url=live.base_url + "/v1", headers={"Authorization": f"Bearer {live.other_key}"})
    assert other_project.get(f"/adapter_operations/{queued['id']}").status_code == 404
    assert json.loads(other_project.get("/adapter_operations").text)["data"] == []


def test_unreadable_adapter_files_in_an_archive_are_a_400(live: Any, make_adapter: Any) -> None:
    """Corrupt weights, a config that is not an object, vectors for factors, saved modules: the archive
    unpacks safely, and what it holds is refused with a 400 (never a 500)."""
    directory = make_adapter(89, r=8)
    config = json.loads((directory / "adapter_config.json").read_text())
    cases = {
        "corrupt weights": {"adapter/adapter_model.safetensors": b"\xff" * 64},
        "config not an object": {"adapter/adapter_config.json": b"[1, 2]"},
        "config not JSON": {"adapter/adapter_config.json": b"{not json"},
        "saved modules": {"adapter/adapter_config.json": json.dumps({**config, "modules_to_save": ["lm_head"]}).encode()},
    }
    with http(live) as client:
        for label, replaced in cases.items():
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                for name in ("adapter_config.json", "adapter_model.safetensors"):
                    member = f"adapter/{name}"
                    archive.writestr(member, replaced.get(member, (directory / name).read_bytes()))
            response = client.post("/adapter_operations", json={
                "type": "import", "file": upload(client, buffer.getvalue()), "base_model": DEMO_BASE_MODEL})
            assert response.status_code == 400, (label, response.text)
            assert response.json()["error"]["param"] == "file" and response.json()["error"]["message"], label


def test_progress_is_written_at_each_stage_at_each_stage_end_and_otherwise_at_most_once_a_second() -> None:
    written: list[dict[str, Any]] = []
    progress = Progress(written.append)
    progress("downloading", 0, 1)
    for done in range(1, 201):  # a fast loop: its first step (a new stage), its last, nothing between
        progress("exporting", done, 200)
    progress("storing", 0, 1)
    assert written == [{"stage": "downloading", "done": 0, "total": 1}, {"stage": "exporting", "done": 1, "total": 200},
                       {"stage": "exporting", "done": 200, "total": 200}, {"stage": "storing", "done": 0, "total": 1}]


def test_output_layer_adapters_merge_and_serve_and_lines_is_refused_for_them(live: Any, make_adapter: Any) -> None:
    """LoRA on the output layer (what the training API trains by default) is a module like the others: a merge
    keeps it and serves; LiNeS, which scales by decoder-layer depth, is refused at creation for it. The merged
    model's provenance names the operation."""
    head = live.register(make_adapter(83, r=4, targets=["q_proj", "lm_head"]), "head")
    plain = live.register(make_adapter(84, r=4), "plain")
    with http(live) as client:
        merged = run(live, client, {"type": "merge", "models": [head, plain], "suffix": "with-head"})
        assert reply(live, merged["model"]) != reply(live, plain)
        refused = client.post("/adapter_operations", json={"type": "merge", "models": [head, plain],
                                                            "lines": {"alpha": 0.5, "beta": 0.5}})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "lines", refused.text
        assert refused.json()["error"]["code"] == "unsupported_adapter"
        model = client.get(f"/models/{merged['model']}").json()
        assert model["provenance"] == {"type": "adapter_operation", "adapter_operation": merged["id"],
                                       "operation": "merge"}
