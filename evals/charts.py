"""PNG charts of job and eval results, for people who would rather look than read.

Contracts:

* `loss_curve_png(rows)` takes the metrics event data of a fine-tuning job, oldest first, each
  ``{"step": int, "train_loss": float, "valid_loss"?: float, "full_valid_loss"?: float, ...}``. A step
  reported twice (a resumed attempt re-ran it after its last checkpoint) keeps its latest report, as the
  results CSV does; the steps where an attempt resumed are marked with a dotted line. The y axis turns
  logarithmic when the plotted losses span more than two decades. Empty input, or input with nothing
  plottable, gives a PNG that says "no training metrics": it never raises for empty input, and rows
  without a usable step or with non-finite values are skipped rather than failing a job over a picture.
* `base_vs_tuned_png(report)` takes an eval report (``eval_report.schema.json``) and draws, per split,
  base and tuned accuracy side by side (Wilson intervals as error bars when the report has them), grouped
  memorization, generalization, auxiliary, then the controls. Splits without an accuracy (n = 0) are
  left empty and labelled "n=0". The title carries the headline means. A report without splits or
  controls gives a PNG that says so.
* `comparison_png(report)` takes a comparison report (evals.comparison) and draws each rate (agreement,
  similar, tool calls, JSON validity, the judge's verdicts) as a bar with its Wilson interval.

All return the bytes of a PNG of a fixed size for a given input shape, rendered at a fixed dpi. The
output is deterministic: the same input gives the same bytes (no version or date is written into the
file). Rendering uses `matplotlib.figure.Figure` with the Agg canvas directly, never pyplot, so it
selects no global backend, registers no figure with a global manager and is safe to call from worker
threads. Styling is explicit where it matters, but still reads the process's rcParams (the defaults
in the worker).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 100
LOSS_SIZE = (9.0, 5.0)  # inches
PNG_METADATA: dict[str, str | None] = {"Software": None}  # no matplotlib version in the file

BASE_COLOR = "#a9b4c2"
TUNED_COLOR = "#1f6fb4"
TRAIN_COLOR = "#1f6fb4"
VALID_COLOR = "#e07b00"
FULL_VALID_COLOR = "#2a9d4b"
MUTED = "#555555"

GROUP_ORDER = ("memorization", "generalization", "auxiliary")
GROUP_ABBREVIATIONS = {"memorization": "mem.", "generalization": "gen.", "auxiliary": "aux.", "controls": "ctrl."}
MAX_LABEL_CHARS = 44
LOG_SCALE_DECADES = 2.0


# ------------------------------------------------------------------------------------------ helpers
def _finite(value: Any) -> float | None:
    """The value as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _render(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI, metadata=PNG_METADATA)
    return out.getvalue()


def _message_png(message: str, *, title: str | None = None, size: tuple[float, float] = LOSS_SIZE) -> bytes:
    """A placeholder chart that states why there is nothing to draw."""
    fig = Figure(figsize=size, dpi=DPI)
    ax = fig.add_subplot()
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=13)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, color=MUTED, transform=ax.transAxes)
    return _render(fig)


def _shorten(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _middle(text: str, limit: int) -> str:
    """Text cut in the middle, so both its start and its (often distinguishing) end stay visible."""
    if len(text) <= limit:
        return text
    head = limit // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head):]


def _pair_label(left: str, right: str, limit: int = MAX_LABEL_CHARS) -> str:
    """"left / right" within limit characters; the right part (the split or control id, which tells
    neighbouring bars apart) keeps as much as it can, the left part gives way first."""
    sep = " / "
    right = _middle(right, max(limit - len(sep) - min(len(left), 14), 8))
    room = limit - len(sep) - len(right)
    return f"{_shorten(left, max(room, 4))}{sep}{right}"


# ------------------------------------------------------------------------------------------ loss curve
def _latest_per_step(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[int, Mapping[str, Any]], list[int]]:
    """Rows keyed by step, the latest report of each step winning, and the steps where an attempt resumed
    (a row whose step is not above the step of the row before it)."""
    by_step: dict[int, Mapping[str, Any]] = {}
    resumed_at: list[int] = []
    previous: int | None = None
    for row in rows:
        if not isinstance(row, Mapping) or isinstance(row.get("step"), bool):
            continue
        try:
            step = int(row["step"])
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
        if previous is not None and step <= previous:
            resumed_at.append(step)
        previous = step
        by_step[step] = row
    return by_step, resumed_at


def _series(by_step: Mapping[int, Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps: list[int] = []
    values: list[float] = []
    for step in sorted(by_step):
        value = _finite(by_step[step].get(key))
        if value is not None:
            steps.append(step)
            values.append(value)
    return steps, values


def loss_curve_png(rows: Sequence[Mapping[str, Any]], *, title: str = "Training loss") -> bytes:
    """PNG of the training loss per step, with the validation losses where they were measured."""
    return _curve_png(rows, [
        ("train_loss", "train loss", TRAIN_COLOR, "o", 1.6),
        ("valid_loss", "validation loss (batch)", VALID_COLOR, "o", 1.2),
        ("full_valid_loss", "full validation loss", FULL_VALID_COLOR, "s", 1.2),
    ], title=title, quantity="loss", log_scale=True)


def reward_curve_png(rows: Sequence[Mapping[str, Any]], *, title: str = "Reward") -> bytes:
    """PNG of a reinforcement job's mean grader reward per step: its training samples', and its validation
    prompts' where they were measured."""
    return _curve_png(rows, [
        ("train_reward_mean", "train reward (mean of the step's samples)", TRAIN_COLOR, "o", 1.6),
        ("valid_reward_mean", "validation reward", VALID_COLOR, "s", 1.2),
    ], title=title, quantity="reward", log_scale=False, main="train_reward_mean")


def _curve_png(rows: Sequence[Mapping[str, Any]], series: list[tuple[str, str, str, str, float]], *, title: str,
               quantity: str, log_scale: bool, main: str = "train_loss") -> bytes:
    """A line per series (key, label, colour, marker, width) over the steps where it has values."""
    by_step, resumed_at = _latest_per_step(rows or [])
    main_label = next(label for key, label, *_ in series if key == main)
    plotted = [(label, color, marker, width, *_series(by_step, key)) for key, label, color, marker, width in series]
    plotted = [entry for entry in plotted if entry[4]]
    if not plotted:
        return _message_png(f"no {quantity} metrics", title=title)

    fig = Figure(figsize=LOSS_SIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for label, color, marker, width, steps, values in plotted:
        sparse = len(steps) <= 60
        ax.plot(steps, values, label=label, color=color, linewidth=width,
                marker=marker if sparse or label != main_label else None,
                markersize=4 if label == main_label else 5, zorder=3 if label == main_label else 4)

    everything = [value for *_, values in plotted for value in values]
    low, high = min(everything), max(everything)
    if log_scale and low > 0 and math.log10(high / low) > LOG_SCALE_DECADES:
        ax.set_yscale("log")
    for index, step in enumerate(resumed_at):
        ax.axvline(step, color=MUTED, linestyle=":", linewidth=1.0, zorder=1,
                   label="resumed" if index == 0 else None)

    all_steps = sorted({step for entry in plotted for step in entry[4]})
    if all_steps[0] == all_steps[-1]:
        ax.set_xlim(all_steps[0] - 1, all_steps[0] + 1)
    locator = ax.xaxis.get_major_locator()
    if isinstance(locator, MaxNLocator):  # matplotlib's default (AutoLocator) is one
        locator.set_params(integer=True)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{quantity} (log scale)" if ax.get_yscale() == "log" else quantity)
    ax.set_title(title, fontsize=13)
    ax.grid(True, which="major", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="upper right" if quantity == "loss" else "lower right", frameon=False, fontsize=9)
    return _render(fig)


# ------------------------------------------------------------------------------------------ base vs tuned
@dataclass(frozen=True)
class _Bar:
    label: str
    group: str
    base: Mapping[str, Any]
    tuned: Mapping[str, Any]


def _bars(report: Mapping[str, Any]) -> list[_Bar]:
    splits = [s for s in report.get("splits") or [] if isinstance(s, Mapping)]
    known = list(GROUP_ORDER)
    extra = sorted({str(s.get("counts_toward")) for s in splits} - set(known))
    bars: list[_Bar] = []
    for group in known + extra:
        for split in splits:
            if str(split.get("counts_toward")) == group:
                label = _pair_label(str(split.get("dataset_id", "?")), str(split.get("split_id", "?")))
                bars.append(_Bar(label, group, split.get("base") or {}, split.get("tuned") or {}))
    for control in report.get("controls") or []:
        if isinstance(control, Mapping):
            bars.append(_Bar(_pair_label("control", str(control.get("control_id", "?"))), "controls",
                             control.get("base") or {}, control.get("tuned") or {}))
    return bars


def _fmt(value: Any) -> str:
    number = _finite(value)
    return "n/a" if number is None else f"{number:.2f}"


def _headline(report: Mapping[str, Any]) -> str:
    summary = report.get("summary") or {}
    parts = []
    for name in ("memorization", "generalization"):
        block = summary.get(name) or {}
        parts.append(f"{name} base {_fmt(block.get('mean_base'))} → tuned {_fmt(block.get('mean_tuned'))}")
    return ", ".join(parts)


def _subtitle(report: Mapping[str, Any]) -> str:
    spec = report.get("spec") or {}
    base = report.get("base_model") or {}
    tuned = report.get("tuned_model") or {}
    bits = []
    if spec.get("name"):
        bits.append(f"spec {spec['name']}")
    if report.get("run_id"):
        bits.append(f"run {report['run_id']}")
    if base.get("id"):
        bits.append(f"base {base['id']}")
    if tuned.get("training_job_id"):
        bits.append(f"tuned by {tuned['training_job_id']}")
    return _shorten("  ·  ".join(str(b) for b in bits), 140)


def base_vs_tuned_png(report: Mapping[str, Any]) -> bytes:
    """PNG of base vs tuned accuracy per split and control, grouped by what each split counts toward."""
    # Long on purpose: one figure's layout (bars, intervals, labels, legend) reads best top to bottom.
    bars = _bars(report)
    headline = _headline(report)
    if not bars:
        return _message_png("no splits or controls in this report", title=headline, size=(10.0, 5.0))

    count = len(bars)
    crowded = count > 10
    labels = [bar.label for bar in bars]
    longest = max(len(label) for label in labels)
    width = min(max(8.0, 1.6 + 0.62 * count), 26.0)
    height = 5.2 + 0.055 * longest
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()

    bar_width = 0.38
    value_size = 7 if crowded else 8.5
    top = 1.16 if crowded else 1.1
    for offset, side, color, name in ((-bar_width / 2, "base", BASE_COLOR, "base"),
                                      (bar_width / 2, "tuned", TUNED_COLOR, "tuned")):
        xs, heights, err_x, err_low, err_high = [], [], [], [], []
        for index, bar in enumerate(bars):
            acc = getattr(bar, side)
            x = index + offset
            value = _finite(acc.get("accuracy"))
            if value is None:
                n = acc.get("n")
                ax.text(x, 0.015, "n=0" if n in (0, None) else f"n={n}", ha="center", va="bottom",
                        rotation=90, fontsize=value_size, color="#333333")
                continue
            xs.append(x)
            heights.append(value)
            ci_low, ci_high = _finite(acc.get("ci_low")), _finite(acc.get("ci_high"))
            label_y = value
            if ci_low is not None and ci_high is not None:
                err_x.append(x)
                err_low.append(max(value - ci_low, 0.0))
                err_high.append(max(ci_high - value, 0.0))
                label_y = max(value, ci_high)
            ax.text(x, label_y + 0.015, f"{value:.2f}", ha="center", va="bottom", fontsize=value_size,
                    rotation=90 if crowded else 0, color="#222222")
        ax.bar(xs, heights, width=bar_width, color=color, label=name, zorder=2)
        if err_x:
            ax.errorbar(err_x, [heights[xs.index(x)] for x in err_x], yerr=[err_low, err_high], fmt="none",
                        ecolor="#333333", elinewidth=0.9, capsize=2.5, zorder=3)

    # groups: alternate shading, and a top axis naming each group over its span
    spans: list[tuple[str, int, int]] = []
    for index, bar in enumerate(bars):
        if spans and spans[-1][0] == bar.group:
            spans[-1] = (bar.group, spans[-1][1], index)
        else:
            spans.append((bar.group, index, index))
    inches_per_slot = (width - 1.2) / count
    centers, names = [], []
    for position, (group, first, last) in enumerate(spans):
        if position % 2 == 1:
            ax.axvspan(first - 0.5, last + 0.5, color="#f1f3f6", zorder=0, linewidth=0)
        if position > 0:
            ax.axvline(first - 0.5, color="#c5cbd3", linewidth=0.8, zorder=1)
        centers.append((first + last) / 2)
        fits = (last - first + 1) * inches_per_slot >= 0.085 * len(group) + 0.1
        names.append(group if fits else GROUP_ABBREVIATIONS.get(group, _shorten(group, 6)))
    groups_axis = ax.secondary_xaxis("top")
    groups_axis.set_xticks(centers, names, fontsize=9, color=MUTED)
    groups_axis.tick_params(length=0)

    ax.set_xlim(-0.6, count - 0.4)
    ax.set_ylim(0, top)
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("accuracy")
    ax.set_xticks(range(count), labels, fontsize=8 if crowded else 9,
                  rotation=40 if crowded or longest > 14 else 0,
                  ha="right" if crowded or longest > 14 else "center", rotation_mode="anchor")
    ax.grid(True, axis="y", color="#e3e3e3", linewidth=0.8, zorder=0)
    ax.set_axisbelow(True)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    groups_axis.spines["top"].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=9)
    fig.suptitle(headline, fontsize=12)
    subtitle = _subtitle(report)
    if subtitle:
        ax.set_title(subtitle, fontsize=8.5, color=MUTED, pad=22)
    return _render(fig)


# ------------------------------------------------------------------------------------------ comparison
def _comparison_rows(summary: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    rows: list[tuple[str, Mapping[str, Any]]] = [("exact agreement", summary.get("agreement") or {}),
                                                 ("similar", summary.get("similar") or {})]
    tools = summary.get("tool_calls") or {}
    if tools:
        rows += [("tool call names", tools.get("names") or {}), ("tool call arguments", tools.get("arguments") or {})]
    formats = summary.get("json_validity") or {}
    if formats:
        rows += [("valid JSON: original", formats.get("reference") or {}),
                 ("valid JSON: copy", formats.get("candidate") or {})]
    judge = summary.get("judge") or {}
    if judge:
        rows += [("judge: copy preferred", judge.get("candidate_preferred") or {}),
                 ("judge: original preferred", judge.get("reference_preferred") or {}),
                 ("judge: copy at least as good", judge.get("candidate_at_least_as_good") or {})]
    return rows


def comparison_png(report: Mapping[str, Any]) -> bytes:
    """PNG of a comparison report's rates (evals.comparison), one horizontal bar each with its Wilson
    interval; the title names the two models."""
    summary = report.get("summary") or {}
    models = report.get("models") or {}
    title = _shorten(f"{models.get('candidate', '?')} vs {models.get('reference', '?')}", 90)
    rows = _comparison_rows(summary)
    if not summary.get("items"):
        return _message_png("no items were compared", title=title, size=(9.0, 4.0))
    fig = Figure(figsize=(9.0, 1.4 + 0.42 * len(rows)), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    for index, (label, block) in enumerate(rows):
        y = len(rows) - 1 - index
        rate = _finite(block.get("rate"))
        if rate is None:
            ax.text(0.01, y, "n/a", va="center", fontsize=9, color=MUTED)
            continue
        ax.barh(y, rate, height=0.6, color=TUNED_COLOR, zorder=2)
        low, high = _finite(block.get("ci_low")), _finite(block.get("ci_high"))
        if low is not None and high is not None:
            ax.errorbar([rate], [y], xerr=[[max(rate - low, 0.0)], [max(high - rate, 0.0)]], fmt="none",
                        ecolor="#333333", elinewidth=0.9, capsize=3, zorder=3)
        ax.text(min((high if high is not None else rate) + 0.015, 1.0), y,
                f"{rate:.2f} ({block.get('count')}/{block.get('n')})", va="center", fontsize=8.5, color="#222222")
    ax.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)], fontsize=9)
    ax.set_xlim(0, 1.18)
    ax.set_xticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_xlabel(f"rate, {summary.get('confidence_level', 0.95):.0%} Wilson intervals; "
                  f"{summary.get('items')} items, mean similarity {_fmt(summary.get('mean_similarity'))}")
    ax.grid(True, axis="x", color="#e3e3e3", linewidth=0.8, zorder=0)
    ax.set_axisbelow(True)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    fig.suptitle(title, fontsize=11)
    return _render(fig)
