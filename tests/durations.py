"""Summarise a test run's per-test durations for docs/testing.md.

    python -m pytest --durations=0 | tee run.log
    python -m tests.durations run.log            # per-directory totals and the 25 slowest phases

pytest's `--durations=0` prints one line per test phase ("12.34s call tests/x.py::test_y"). Under xdist
the phases overlap (two workers), so the totals add up to more than the run's wall time.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

PHASE = re.compile(r"^([\d.]+)s (setup|call|teardown)\s+(\S+)", re.M)


def area(path: str) -> str:
    """tests/<directory> for tests in a directory, the file for the top-level ones."""
    parts = path.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else path


def summarise(log: str, slowest: int = 25) -> str:
    # under xdist's loadgroup a node id ends in "@<group>"
    phases = [(float(seconds), phase, node.split("@", 1)[0]) for seconds, phase, node in PHASE.findall(log)]
    by_area: Counter[str] = Counter()
    for seconds, _, node in phases:
        by_area[area(node.split("::", 1)[0])] += seconds
    total = sum(by_area.values())
    lines = ["| tests | seconds | share |", "|---|---:|---:|"]
    lines += [f"| {name} | {seconds:.0f} | {100 * seconds / total:.0f} % |" for name, seconds in by_area.most_common()]
    lines += [f"| all | {total:.0f} | |", "", "| seconds | phase | test |", "|---:|---|---|"]
    for seconds, phase, node in sorted(phases, reverse=True)[:slowest]:
        lines.append(f"| {seconds:.1f} | {phase} | `{node}` |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help="the output of `python -m pytest --durations=0`")
    parser.add_argument("--slowest", type=int, default=25)
    args = parser.parse_args()
    print(summarise(args.log.read_text(errors="replace"), args.slowest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
