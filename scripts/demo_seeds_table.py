"""One table over several finished demo runs (one per seed): placement / per-reference similarity /
background error of SFT and RL by reference count, RL − SFT paired per case with its 95% interval,
the verdict, and the wall time of each phase. For the results folder and the closing note.

    .venv/bin/python scripts/demo_seeds_table.py runs/demo-s0 runs/demo-s1 runs/demo-s2
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

METRICS = ("placement", "reference_similarity", "background_error")


def fmt(c: dict | None, signed: bool = False) -> str:
    if not c:
        return "–"
    lo, hi = c["ci95"]
    s = "+" if signed else ""
    return f"{c['mean']:{s}.3f} [{lo:{s}.3f}, {hi:{s}.3f}]" if lo is not None else f"{c['mean']:{s}.3f}"


def main(folders: list[str]) -> None:
    from dyref.demo_report import gain_verdict
    for folder in map(Path, folders):
        s = json.loads((folder / "summary.json").read_text())
        plan = json.loads((folder / "plan.json").read_text())
        ns = sorted({k for k in s["sft"]["placement"] if k != "all"}, key=int)
        ok, _ = gain_verdict(s["rl_minus_sft"])
        t = s.get("timings_s", {})
        print(f"### seed {plan['seed']} ({folder}): verdict **{'RL beats SFT' if ok else 'gain does not hold'}**, "
              f"DRS τ {s.get('drs_tau')}, wall " + ", ".join(f"{k} {v:.0f}s" for k, v in t.items()) + "\n")
        print("| metric | stage | " + " | ".join(f"{n} refs" for n in ns) + " | all |")
        print("|---|---|" + "---|" * (len(ns) + 1))
        for m in METRICS:
            for stage, cells, signed in (("sft", s["sft"][m], False), ("rl", s["rl"][m], False),
                                         ("RL − SFT", s["rl_minus_sft"][m], True)):
                print(f"| {m.replace('_', ' ')} | {stage} | " + " | ".join(fmt(cells.get(n), signed) for n in ns)
                      + f" | {fmt(cells.get('all'), signed)} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
