"""Run every benchmark in bench/ one after another, stream their output, and summarise their tables.

Each runs in its own Python process (so one's threads, workers and memory do not touch the next),
with ``--quick`` passed through. The summary at the end repeats each benchmark's last table.

    python bench/run_all.py --quick            # this CPU, a few minutes
    python bench/run_all.py                    # a GPU machine, full sizes
    python bench/run_all.py --quick rle tta    # only some
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
BENCHMARKS = ("rle", "tta", "engine_overhead", "data_pipeline", "cache_build", "inference", "gpu_data", "threads",
              "memory")


@dataclass
class Outcome:
    name: str
    returncode: int
    seconds: float
    table: str


def last_table(lines: list[str]) -> str:
    """The block of lines after the last blank line of the output: each benchmark prints its table last."""
    blocks = "".join(lines).strip().split("\n\n")
    return blocks[-1].strip() if blocks else ""


def run(name: str, quick: bool) -> Outcome:
    """Run ``bench/<name>.py``, echoing its stdout line by line (stderr goes straight through)."""
    command = [sys.executable, "-u", str(BENCH / f"{name}.py"), *(["--quick"] if quick else [])]
    print(f"\n===== {name}: {' '.join(command[2:])}", flush=True)
    started = time.perf_counter()
    lines = []
    with subprocess.Popen(command, cwd=BENCH.parent, stdout=subprocess.PIPE, text=True, bufsize=1) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    seconds = time.perf_counter() - started
    return Outcome(name, process.returncode, seconds, last_table(lines) if process.returncode == 0 else "")


def print_summary(outcomes: list[Outcome], quick: bool) -> None:
    print(f"\n\n===== summary ({'quick' if quick else 'full'} sizes)")
    for outcome in outcomes:
        status = "ok" if outcome.returncode == 0 else f"FAILED (exit {outcome.returncode})"
        print(f"\n--- {outcome.name}: {status}, {outcome.seconds:.0f} s")
        if outcome.table:
            print(outcome.table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark (this CPU)")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    args = parser.parse_args()
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(BENCHMARKS)}")
    outcomes = [run(name, args.quick) for name in args.names or BENCHMARKS]
    print_summary(outcomes, args.quick)
    sys.exit(0 if all(outcome.returncode == 0 for outcome in outcomes) else 1)


if __name__ == "__main__":
    main()
