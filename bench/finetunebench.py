"""FineTuneBench's fictional-people protocol run through ftaas, as a user would run it, beside the paper's rows
for the hosted fine-tuning APIs.

Reads your copy of FineTuneBench (default ../shared/data/finetunebench; never copied into the repository),
imports the fictional_people dataset with ftaas's importer (`ftaas eval import-finetunebench`), starts
`ftaas up` in a temporary data directory, and through the official SDK:

1. uploads the suite file (`purpose="evals"`) and makes its training file (the 150 original question/answer
   pairs, the prompt's answer-format instruction included) with `POST /v1/knowledge_evals/training_files`;
2. creates a fine-tune with every hyperparameter "auto" and the suite (plus `builtin:world_knowledge` as the
   forgetting control) attached as a knowledge eval;
3. follows its events live and prints the report's original, rephrased, secondary and comparison splits for
   base and tuned, beside the paper's figures.

    python bench/finetunebench.py [--data DIR] [--model smollm2-135m-instruct] [--json out.json]

Scoring: original and rephrased answers by exact match after normalisation (the paper used an LLM judge for
short answers, which accepts more phrasings; the tuned model answers with the bare trained string, so exact
match undercounts the base model most), secondary and comparison by the Yes/No label the answer opens with.
Results for this repository: docs/evals.md ("FineTuneBench through ftaas").
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contracts.settings import PACKAGED_BASE_MODEL  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "finetunebench"
CONTROL = "builtin:world_knowledge"
SPLITS = ("memorization", "rephrased", "secondary", "comparison")

#: Wu, Wu and Zou (2024), FineTuneBench, fictional people (Fig. 2 and the secondary/comparison figure of the
#: project site): (memorization, rephrased) tuned; (secondary, comparison) as base -> tuned.
PAPER = {
    "gpt-4o-mini-2024-07-18": {"memorization": (None, 1.00), "rephrased": (None, 0.89),
                               "secondary": (0.38, 0.45), "comparison": (0.24, 0.16)},
    "gpt-3.5-turbo-0125": {"memorization": (None, 0.99), "rephrased": (None, 0.35),
                           "secondary": (0.63, 0.54), "comparison": (0.40, 0.16)},
    "gpt-4o-2024-08-06": {"memorization": (None, 0.91), "rephrased": (None, 0.19),
                          "secondary": (0.57, 0.61), "comparison": (0.40, 0.28)},
    "gemini-1.5-pro-002": {"memorization": (None, 0.04), "rephrased": (None, 0.02),
                           "secondary": (0.54, 0.58), "comparison": (0.24, 0.24)},
    "gemini-1.5-flash-002": {"memorization": (None, 0.05), "rephrased": (None, 0.01),
                             "secondary": (0.61, 0.59), "comparison": (0.36, 0.24)},
}


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = "sk-ftaas-bench-" + secrets.token_urlsafe(16)
    env = {**os.environ, "FTAAS_DATA_DIR": str(data_dir), "FTAAS_BOOTSTRAP_API_KEY": key}
    log = (data_dir.parent / "server.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "ftaas.cli", "up", "--port", str(port), "--data-dir",
                                str(data_dir), "--verbose"], env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # the first start converts the packaged model
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"ftaas up exited with {process.returncode}; see {log.name}")
        try:
            if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                return process, url, key
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("ftaas up did not become ready")


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from evals.finetunebench import import_finetunebench
    from evals.items import dump_suite

    items = import_finetunebench(args.data, datasets=["fictional_people"])["fictional_people"]
    suite_path = work / "fictional_people.jsonl"
    suite_path.write_bytes(dump_suite(items))
    counts = {split: sum(i.split_id == split for i in items) for split in {i.split_id for i in items}}
    print(f"imported fictional_people: {counts}", flush=True)

    process, url, key = start_server(work / "data")
    try:
        client = OpenAI(base_url=url + "/v1", api_key=key, max_retries=5)
        suite = client.files.create(file=("fictional_people.jsonl", suite_path.read_bytes()), purpose="evals")
        made = httpx.post(url + "/v1/knowledge_evals/training_files", json={"suite": suite.id},
                          headers={"Authorization": f"Bearer {key}"}, timeout=60)
        made.raise_for_status()
        training = client.files.wait_for_processing(made.json()["id"], poll_interval=0.5, max_wait_seconds=120)
        started = time.monotonic()
        job = client.fine_tuning.jobs.create(model=args.model, training_file=training.id, suffix="finetunebench",
                                             extra_body={"knowledge_eval": {"suites": [suite.id, CONTROL]}})
        seen: set[str] = set()
        while True:
            job = client.fine_tuning.jobs.retrieve(job.id)
            events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
            for event in reversed(events):
                if event.id not in seen and event.type != "metrics":
                    seen.add(event.id)
                    print(f"[{time.monotonic() - started:7.0f}s] {event.message}", flush=True)
            if job.status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(5)
        if job.status != "succeeded":
            raise SystemExit(f"job {job.status}: {job.error}")
        files = {client.files.retrieve(f).filename: f for f in job.result_files}
        report_id = next(f for name, f in files.items() if name.endswith("report.json"))
        report = json.loads(client.files.content(report_id).read())
        return {"job": {"id": job.id, "hyperparameters": job.hyperparameters.model_dump(),
                        "trained_tokens": job.trained_tokens, "seconds": round(time.monotonic() - started)},
                "counts": counts, "report": report}
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def table(result: dict[str, Any], model: str) -> str:
    splits = {s["split_id"]: s for s in result["report"]["splits"]}

    def ours(split: str) -> str:
        entry = splits.get(split)
        if entry is None:
            return "-"
        return f"{entry['base']['accuracy']:.2f} -> {entry['tuned']['accuracy']:.2f}"

    def paper(values: tuple[float | None, float]) -> str:
        before, after = values
        return f"{after:.2f}" if before is None else f"{before:.2f} -> {after:.2f}"

    lines = ["| model | original (memorization) | rephrased | secondary (Yes/No) | comparison (Yes/No) |",
             "|---|---|---|---|---|",
             f"| ftaas, {model}, auto (base -> tuned) | " + " | ".join(ours(s) for s in SPLITS) + " |"]
    lines += [f"| {name} (paper) | " + " | ".join(paper(row[s]) for s in SPLITS) + " |" for name, row in PAPER.items()]
    controls = result["report"].get("controls") or []
    for control in controls:
        known = control["base_correct_items"]
        lines.append(f"\nControl {control['control_id']}: base {control['base']['accuracy']:.2f} -> tuned "
                     f"{control['tuned']['accuracy']:.2f}; of the {known['n']} the base model answered right, the "
                     f"tuned model still answers {known['tuned']['correct']}")
    job = result["job"]
    lines.append(f"\nResolved hyperparameters: {job['hyperparameters']}; job {job['seconds']} s end to end "
                 f"(training and both models' answers), {job['trained_tokens']} trained tokens.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="your FineTuneBench copy")
    parser.add_argument("--model", default=PACKAGED_BASE_MODEL)
    parser.add_argument("--json", type=Path, help="write the job summary and the full report here")
    args = parser.parse_args()
    if not (args.data / "datasets" / "fictional_people").is_dir():
        raise SystemExit(f"no FineTuneBench copy at {args.data} (datasets/fictional_people)")
    with tempfile.TemporaryDirectory(prefix="ftaas-ftb-") as folder:
        result = run(args, Path(folder))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(table(result, args.model))
    for split in result["report"]["splits"]:
        extra = split.get("extra_metrics") or {}
        if "format_violation_rate" in extra:
            print(f"{split['split_id']}: format violations (no Yes/No opening) {extra}")


if __name__ == "__main__":
    main()
