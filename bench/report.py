"""Tables (markdown) and the plot from a bench/run.py results file.

.venv/bin/python bench/report.py bench/out/results-XXXX.json --plot bench/results.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

PIPELINE_STEPS = [
    "validate",
    "backup",
    "migrate",
    "verify-indexes",
    "integrity",
    "query-plan-benchmark",
]
NAIVE_STEPS = ["backup", "quick_check", "create_index", "analyze_commit", "integrity_check", "queries"]


def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def rows_label(n: str) -> str:
    return f"{int(n):,}"


def summary_table(sizes: dict[str, Any]) -> list[str]:
    out = [
        "| Rows | DB MB | Runs | Pipeline median s (range) | sqlite3 CLI median s (range) | Ratio a/b "
        "| Pairwise ratios | Steps without timing the queries, s | ratio to CLI |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for n, s in sizes.items():
        a = [r["wall_s"] for r in s["runs"]["pipeline"]]
        b = [r["wall_s"] for r in s["runs"]["naive"]]
        pairs = ", ".join(f"{x / y:.2f}" for x, y in zip(a, b, strict=False))
        work = [r["wall_s"] - r["fixed_s"] - _bench_s(r) for r in s["runs"]["pipeline"]]
        out.append(
            f"| {rows_label(n)} | {s['template_bytes'] / 1e6:.0f} | {len(a)} | {med(a):.2f} ({spread(a)}) "
            f"| {med(b):.2f} ({spread(b)}) | **{med(a) / med(b):.2f}x** | {pairs} | {med(work):.2f} "
            f"| {med(work) / med(b):.2f}x |"
        )
    return out


def _bench_s(run: dict[str, Any]) -> float:
    return float(run["steps"].get("query-plan-benchmark", 0))


def fixed_table(sizes: dict[str, Any]) -> list[str]:
    """Embedded API against a running server: wall, fixed cost (wall - steps), start to lock."""
    out = [
        "| Rows | API | Runs | wall s | fixed s (wall - steps) | start to write lock s "
        "| wall / sqlite3 CLI |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n, s in sizes.items():
        cli = med([r["wall_s"] for r in s["runs"]["naive"]])
        for kind, label in (("pipeline", "embedded"), ("pipeline-server", "server")):
            runs = s["runs"].get(kind)
            if not runs:
                continue
            wall, fixed = med([r["wall_s"] for r in runs]), med([r["fixed_s"] for r in runs])
            out.append(
                f"| {rows_label(n)} | {label} | {len(runs)} | {wall:.2f} | {fixed:.2f} "
                f"| {med([r['to_lock_s'] for r in runs]):.2f} | **{wall / cli:.2f}x** |"
            )
    return out


def steps_table(sizes: dict[str, Any]) -> list[str]:
    out = [
        "| Rows | " + " | ".join(PIPELINE_STEPS) + " | fixed (wall - steps) | flow total |",
        "|---:|" + "---:|" * (len(PIPELINE_STEPS) + 2),
    ]
    for n, s in sizes.items():
        runs = s["runs"]["pipeline"]
        cells = [f"{med([r['steps'].get(k, 0) for r in runs]):.2f}" for k in PIPELINE_STEPS]
        out.append(
            f"| {rows_label(n)} | "
            + " | ".join(cells)
            + f" | {med([r['fixed_s'] for r in runs]):.2f} | {med([r['flow_seconds'] for r in runs]):.2f} |"
        )
    out += ["", "| Rows | " + " | ".join(NAIVE_STEPS) + " |", "|---:|" + "---:|" * len(NAIVE_STEPS)]
    for n, s in sizes.items():
        runs = s["runs"]["naive"]
        out.append(
            f"| {rows_label(n)} | "
            + " | ".join(f"{med([r['steps'][k] for r in runs]):.2f}" for k in NAIVE_STEPS)
            + " |"
        )
    return out


def backup_table(sizes: dict[str, Any]) -> list[str]:
    out = [
        "| Rows | DB MB | liteshift copy s | + fsync s | copy+fsync MB/s | sqlite3 .backup s (MB/s) "
        "| (copy+fsync) / .backup | liteshift verify s | cp s (MB/s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, s in sizes.items():
        p, nv, bare = s["runs"]["pipeline"], s["runs"]["naive"], s["runs"]["bare"]
        mb = s["template_bytes"] / 1e6
        copy = med([r["backup"]["seconds"] for r in p])
        sync = med([r["backup"]["sync_seconds"] for r in p])
        both = med([r["backup"]["seconds"] + r["backup"]["sync_seconds"] for r in p])
        cli = med([r["steps"]["backup"] for r in nv])
        cp = med([r["cp_s"] for r in bare])
        out.append(
            f"| {rows_label(n)} | {mb:.0f} | {copy:.2f} | {sync:.2f} | {mb / both:.0f} "
            f"| {cli:.2f} ({mb / cli:.0f}) "
            f"| **{both / cli:.2f}x** | {med([r['backup']['verify_seconds'] for r in p]):.2f} "
            f"| {cp:.2f} ({mb / cp:.0f}) |"
        )
    return out


def lock_table(sizes: dict[str, Any]) -> list[str]:
    out = [
        "| Rows | liteshift write lock s | bare CREATE INDEX s | lock / CREATE INDEX "
        "| bare CREATE INDEX + ANALYZE + COMMIT s | lock / that "
        "| checkpoint after commit s (liteshift, bare) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, s in sizes.items():
        p, bare = s["runs"]["pipeline"], s["runs"]["bare"]
        lock = med([r["lock_s"] for r in p])
        ci = med([r["create_index_s"] for r in bare])
        full = med([r["create_index_s"] + r["analyze_s"] + r["commit_s"] for r in bare])
        ck = med([r["checkpoint_s"] or 0 for r in p])
        out.append(
            f"| {rows_label(n)} | {lock:.2f} | {ci:.2f} | **{lock / ci:.2f}x** | {full:.2f} "
            f"| **{lock / full:.2f}x** "
            f"| {ck:.2f}, {med([r['checkpoint_s'] for r in bare]):.2f} |"
        )
    return out


def memory_table(sizes: dict[str, Any]) -> list[str]:
    out = ["| Rows | liteshift run peak RSS MB (median, max) | sqlite3 CLI peak RSS MB |", "|---:|---:|---:|"]
    for n, s in sizes.items():
        p = [r["rss_mb"] for r in s["runs"]["pipeline"]]
        b = [r["rss_mb"] for r in s["runs"]["naive"]]
        out.append(f"| {rows_label(n)} | {med(p):.0f}, {max(p):.0f} | {med(b):.0f} |")
    return out


def storage_table(sizes: dict[str, Any]) -> list[str]:
    first = next(iter(sizes.values()))["runs"]["pipeline"][0]
    names = list(first["index_bytes"])
    out = [
        "| Rows | before MB | after MB | growth | " + " | ".join(names) + " |",
        "|---:|---:|---:|---:|" + "---:|" * len(names),
    ]
    for n, s in sizes.items():
        r = s["runs"]["pipeline"][0]
        out.append(
            f"| {rows_label(n)} | {r['size_before'] / 1e6:.1f} | {r['size_after'] / 1e6:.1f} "
            f"| {r['growth_pct']:+.1f}% | "
            + " | ".join(f"{r['index_bytes'][k] / 1e6:.1f} MB" for k in names)
            + " |"
        )
    return out


def _timings(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {}
    for q in run["queries"]:
        found[(q["name"], "before")] = q["before"]
        found[(q["name"], "after")] = q["after"]
        if q.get("suggestion_timing"):
            found[(q["name"], "range rewrite")] = q["suggestion_timing"]
    return found


def query_table(sizes: dict[str, Any]) -> list[str]:
    out = [
        "| Rows | Query | Phase | p50 ms (median over runs) | p95 ms | executions x batch | rows "
        "| p50 spread between pipeline runs |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for n, s in sizes.items():
        runs = [_timings(r) for r in s["runs"]["pipeline"]]
        for key in runs[0]:
            t = [r[key] for r in runs if r.get(key)]
            p50 = [x["p50_ms"] for x in t]
            worst = 100 * (max(p50) - min(p50)) / min(p50)
            batch = t[0].get("batch", 1)
            out.append(
                f"| {rows_label(n)} | {key[0]} | {key[1]} | {med(p50):.4f} "
                f"| {med([x['p95_ms'] for x in t]):.4f} "
                f"| {t[0]['runs']} x {batch} | {t[0]['rows']} | {worst:.1f}% |"
            )
    return out


def plot(sizes: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [int(n) for n in sizes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    runs = {n: [_timings(r) for r in s["runs"]["pipeline"]] for n, s in sizes.items()}
    keys = list(next(iter(runs.values()))[0])
    for i, name in enumerate(dict.fromkeys(k[0] for k in keys)):
        for phase, style in (("before", "o--"), ("after", "o-"), ("range rewrite", "x:")):
            if (name, phase) not in keys:
                continue
            ys = [med([r[(name, phase)]["p50_ms"] for r in runs[n]]) for n in sizes]
            left.plot(ns, ys, style, color=f"C{i}", label=f"{name} ({phase})")
    left.set(xscale="log", yscale="log", xlabel="worklog rows", ylabel="p50 latency, ms")
    left.set_title("Declared queries before / after migration 001")
    left.legend(fontsize=7)
    for kind, label in (("pipeline", "liteshift run (whole pipeline)"), ("naive", "sqlite3 CLI by hand")):
        ys = [med([r["wall_s"] for r in s["runs"][kind]]) for s in sizes.values()]
        right.plot(ns, ys, "o-", label=label)
    ys = [med([r["create_index_s"] for r in s["runs"]["bare"]]) for s in sizes.values()]
    right.plot(ns, ys, "s:", label="bare CREATE INDEX (floor)")
    right.set(xscale="log", yscale="log", xlabel="worklog rows", ylabel="wall seconds (median)")
    right.set_title("Pipeline time against database size")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("results", type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args()
    data = json.loads(args.results.read_text())
    sizes = data["sizes"]
    m = data["machine"]
    print(
        f"Machine: {m['nproc']} x {m['cpu']}, {m['mem']} RAM, kernel {m['kernel']}; Python {m['python']}, "
        f"SQLite {m['sqlite_python']} (CLI {m['sqlite_cli']}), Prefect {m['prefect']}\n"
    )
    for title, table in (
        ("Whole pipeline against the sqlite3 CLI", summary_table),
        ("Fixed cost: embedded API and a running server", fixed_table),
        ("Per-step medians (seconds)", steps_table),
        ("Backup (medians)", backup_table),
        ("Write lock (medians)", lock_table),
        ("Peak memory", memory_table),
        ("Storage (dbstat per index, first run)", storage_table),
        ("Declared queries", query_table),
    ):
        print(f"### {title}\n")
        print("\n".join(table(sizes)) + "\n")
    if args.plot:
        plot(sizes, args.plot)


if __name__ == "__main__":
    main()
