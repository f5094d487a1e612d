"""`ftaas adapters ...`: merges, LiNeS, compression, export and import of adapters on a running server.

    ftaas adapters merge --model ft:A --model ft:B [--weight 0.5 --weight 0.5] [--method ties --density 0.5]
                         [--rank 16] [--lines 0.5 0.5] [--suffix soup]
    ftaas adapters lines --model ft:A --alpha 0.5 --beta 0.5
    ftaas adapters compress --model ft:A [--density 0.1]
    ftaas adapters export --model ft:A [--format merged|adapter] -o model.tar
    ftaas adapters import adapter.zip --base-model ftaas-tiny [--suffix external]
    ftaas adapters show adop_...      ftaas adapters list

Each waits for the operation (a progress spinner while it is queued or running) and prints the new model.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from ftaas.cli_http import check, server_options
from ftaas.cli_http import client as http_client


@click.group("adapters")
def adapters_group() -> None:
    """Adapter operations: merge, LiNeS, compress, export, import (each makes a new servable model)."""


def _run(base_url: str, api_key: str, body: dict[str, Any], *, wait: bool, poll: float = 0.5) -> dict[str, Any]:
    from tqdm import tqdm

    with http_client(base_url, api_key) as client:
        operation = check(client.post("/adapter_operations", json=body)).json()
        click.echo(operation["id"], err=True)
        if not wait:
            return operation
        with tqdm(desc=f"{body['type']} {operation['id']}", bar_format="{desc}: {elapsed} {postfix}",
                  file=sys.stderr) as spinner:
            while operation["status"] not in ("succeeded", "failed", "cancelled"):
                time.sleep(poll)
                operation = check(client.get(f"/adapter_operations/{operation['id']}")).json()
                spinner.set_postfix_str(operation["status"])
        if operation["status"] != "succeeded":
            raise click.ClickException(f"the {body['type']} {operation['status']}: "
                                       f"{(operation.get('error') or {}).get('message')}")
    return operation


def _print(operation: dict[str, Any]) -> None:
    if operation.get("model"):
        click.echo(operation["model"])
    if operation.get("result"):
        click.echo(" ".join(f"{k}={v}" for k, v in operation["result"].items()), err=True)


def _common(function: Any) -> Any:
    function = click.option("--suffix", default=None, help="Suffix of the new model's name.")(function)
    function = click.option("--wait/--no-wait", default=True, show_default=True)(function)
    return server_options(function)


@adapters_group.command("merge")
@click.option("--model", "models", multiple=True, required=True, help="A parent model (repeat: 2-16).")
@click.option("--weight", "weights", multiple=True, type=float, help="One per model (default: equal).")
@click.option("--method", type=click.Choice(["linear", "ties", "dare_linear", "dare_ties"]), default="linear",
              show_default=True)
@click.option("--density", type=float, default=None, help="TIES/DARE: share of each update kept.")
@click.option("--majority-sign", type=click.Choice(["total", "frequency"]), default="total", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="DARE's random drop.")
@click.option("--rank", type=int, default=None, help="Rank of the result (SVD re-factorisation).")
@click.option("--lines", type=(float, float), default=None, help="LiNeS ALPHA BETA applied to the merge.")
@_common
def merge(models: tuple[str, ...], weights: tuple[float, ...], method: str, density: float | None,
          majority_sign: str, seed: int, rank: int | None, lines: tuple[float, float] | None, suffix: str | None,
          wait: bool, base_url: str, api_key: str) -> None:
    """Merge adapters of one base model into a new model."""
    body: dict[str, Any] = {"type": "merge", "models": list(models), "method": method,
                            "majority_sign": majority_sign, "seed": seed}
    for key, value in (("weights", list(weights) or None), ("density", density), ("rank", rank),
                       ("suffix", suffix), ("lines", {"alpha": lines[0], "beta": lines[1]} if lines else None)):
        if value is not None:
            body[key] = value
    _print(_run(base_url, api_key, body, wait=wait))


@adapters_group.command("lines")
@click.option("--model", required=True)
@click.option("--alpha", type=float, required=True, help="Factor of the first layer's update.")
@click.option("--beta", type=float, required=True, help="Added linearly with depth (last layer: alpha + beta).")
@_common
def lines(model: str, alpha: float, beta: float, suffix: str | None, wait: bool, base_url: str, api_key: str) -> None:
    """LiNeS: scale each layer's update by a factor rising linearly with depth."""
    body: dict[str, Any] = {"type": "lines", "model": model, "lines": {"alpha": alpha, "beta": beta}}
    if suffix:
        body["suffix"] = suffix
    _print(_run(base_url, api_key, body, wait=wait))


@adapters_group.command("compress")
@click.option("--model", required=True)
@click.option("--density", type=float, default=0.1, show_default=True, help="Share of each tensor's entries kept.")
@_common
def compress(model: str, density: float, suffix: str | None, wait: bool, base_url: str, api_key: str) -> None:
    """ComPEFT compression: sparsify and ternary-quantise the adapter (it still serves)."""
    body: dict[str, Any] = {"type": "compress", "model": model, "density": density}
    if suffix:
        body["suffix"] = suffix
    _print(_run(base_url, api_key, body, wait=wait))


@adapters_group.command("export")
@click.option("--model", required=True)
@click.option("--format", "format_", type=click.Choice(["merged", "adapter"]), default="merged", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the tar.")
@server_options
def export(model: str, format_: str, output: Path, base_url: str, api_key: str) -> None:
    """Export a model: the base model with the adapter folded in (plain transformers), or the adapter."""
    operation = _run(base_url, api_key, {"type": "export", "model": model, "format": format_}, wait=True)
    with http_client(base_url, api_key) as client, client.stream(
            "GET", f"/files/{operation['result_file']}/content") as response:
        check(response)
        with output.open("wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
    click.echo(f"{output} ({output.stat().st_size} bytes)")


@adapters_group.command("import")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--base-model", required=True)
@_common
def import_(archive: Path, base_model: str, suffix: str | None, wait: bool, base_url: str, api_key: str) -> None:
    """Import a PEFT LoRA adapter (a zip or tar of its folder) as a model of the project."""
    with http_client(base_url, api_key) as client, archive.open("rb") as data:
        uploaded = check(client.post("/files", files={"file": (archive.name, data)},
                                     data={"purpose": "user_data"})).json()
    body: dict[str, Any] = {"type": "import", "file": uploaded["id"], "base_model": base_model}
    if suffix:
        body["suffix"] = suffix
    _print(_run(base_url, api_key, body, wait=wait))


@adapters_group.command("show")
@click.argument("operation_id")
@server_options
def show(operation_id: str, base_url: str, api_key: str) -> None:
    with http_client(base_url, api_key) as client:
        operation = check(client.get(f"/adapter_operations/{operation_id}")).json()
    click.echo(f"{operation['id']}  {operation['type']}  {operation['status']}  {operation.get('model') or ''}")
    _print(operation)


@adapters_group.command("list")
@server_options
def list_operations(base_url: str, api_key: str) -> None:
    with http_client(base_url, api_key) as client:
        for operation in check(client.get("/adapter_operations", params={"limit": 100})).json()["data"]:
            click.echo(f"{operation['id']}  {operation['type']:<8}  {operation['status']:<9}  "
                       f"{operation.get('model') or operation.get('result_file') or ''}")
