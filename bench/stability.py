"""Do two pipeline runs on equal copies agree on each declared query's p50? For a few budgets.

Runs `liteshift run --bench-budget B --json` on fresh copies of one template, alternating the
query-timing budget, and prints, per query and phase, the p50 of every run and the largest
disagreement between any two runs.

    .venv/bin/python bench/stability.py --rows 1000000 --budgets 0.25,1.0 --repeat 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def one_run(template: Path, work: Path, budget: float, env: dict[str, str]) -> dict[str, float]:
    for p in work.glob("*"):
        if p.is_file():
            p.unlink()
    db = work / "db.sqlite"
    subprocess.run(["cp", str(template), str(db)], check=True)
    liteshift = str(Path(sys.executable).with_name("liteshift"))
    where = ["--database", str(db), "--migrations", str(ROOT / "migrations")]
    timing = ["--bench-budget", str(budget), "--json"]
    out = subprocess.run(
        [liteshift, "run", *where, "--backup-dir", str(work), "--report-dir", str(work), *timing],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    p50 = {}
    for q in summary["queries"]:
        for phase in ("before", "after", "suggestion_timing"):
            if q.get(phase):
                p50[f"{q['name']} {phase.replace('suggestion_timing', 'range rewrite')}"] = q[phase]["p50_ms"]
    return p50


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--budgets", default="0.25,1.0")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    template = OUT / f"template-{args.rows}.db"
    work = OUT / "work-stability"
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(OUT / "prefect-home")
    env["LITESHIFT_LOCAL_API"] = ""  # the embedded API, as on a machine without a server
    budgets = [float(b) for b in args.budgets.split(",")]
    runs: dict[float, list[dict[str, float]]] = {b: [] for b in budgets}
    for i in range(args.repeat):
        for b in budgets if i % 2 == 0 else budgets[::-1]:
            runs[b].append(one_run(template, work, b, env))
            print(f"run {i + 1} budget {b} done", file=sys.stderr)
    print(f"{args.rows:,} rows, {args.repeat} pipeline runs per budget on fresh copies\n")
    print("| Budget s | Query, phase | p50 ms per run | largest pairwise disagreement |")
    print("|---:|---|---|---:|")
    for b, rs in runs.items():
        worst_all = 0.0
        for key in rs[0]:
            vals = [r[key] for r in rs]
            worst = max(abs(x - y) / min(x, y) for x, y in itertools.combinations(vals, 2)) * 100
            worst_all = max(worst_all, worst)
            print(f"| {b} | {key} | {', '.join(f'{v:.4f}' for v in vals)} | {worst:.1f}% |")
        print(f"| {b} | **all** | | **{worst_all:.1f}%** |")


if __name__ == "__main__":
    main()
