"""The result files of one knowledge-eval run: their names and media types.

The worker stores them under the run's prefix (storage.layout.eval_prefix), the API serves each at
`/v1/knowledge_evals/{id}/{kind}`, and `ftaas eval --output` writes them under these names.
"""

from __future__ import annotations

REPORT = "report.json"
ITEMS = "items.jsonl"
SPEC = "spec.json"
CHART = "base_vs_tuned.png"
#: Comparisons (evals.comparison) draw their rates instead of base vs tuned.
COMPARISON_CHART = "comparison.png"
#: Only for evals attached to a fine-tuning job (the job's training loss).
LOSS_CURVE = "loss_curve.png"

#: kind (the API route's last segment) -> (file name, media type)
RESULT_FILES: dict[str, tuple[str, str]] = {
    "report": (REPORT, "application/json"),
    "items": (ITEMS, "application/jsonl"),
    "spec": (SPEC, "application/json"),
    "chart": (CHART, "image/png"),
    "comparison_chart": (COMPARISON_CHART, "image/png"),
    "loss_curve": (LOSS_CURVE, "image/png"),
}
