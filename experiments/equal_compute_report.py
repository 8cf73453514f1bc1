"""The equal-compute report: tables with both FLOPs axes beside accuracy, the pre-registered primary test, and the
compute frontier plot (python -m experiments.equal_compute --aggregate writes them; see equal_compute.py)."""
import glob
import json
import os
import statistics

import plots
from config import UserError
from runtime import write_json, write_text
from experiments import figures, lab
from experiments.lab import T_CRIT, verdict

PAUSE_ARM, M_FT = "PausePT_PauseFT", 12
BASELINES = ("StdFT_flops", "StdFT_orderings", "StdFT_pair", "Wide_StdFT")
ARMS = (PAUSE_ARM, "StdPT_StdFT") + BASELINES
SPLITS = ("val", "test", "fresh_test")


def load(out_dir: str, seeds: int) -> list[dict]:
    """Every seedK/ARM/equal_SPLIT.json of seeds 0..seeds-1."""
    records = []
    for s in range(seeds):
        for arm in ARMS:
            for split in SPLITS:
                path = os.path.join(out_dir, f"seed{s}", arm, f"equal_{split}.json")
                if os.path.exists(path):
                    records.append(json.load(open(path)))
    return records


def summarise(records: list[dict]) -> list[dict]:
    """Mean and std over seeds of accuracy and of every FLOPs figure, per (arm, split)."""
    out = []
    for split in SPLITS:
        for arm in ARMS:
            rs = [r for r in records if r["arm"] == arm and r["split"] == split]
            if rs:
                vals = [r["value"] for r in rs]
                out.append({"arm": arm, "split": split, "m_inf": rs[0]["m_inf"], "votes": rs[0]["votes"],
                            "n": rs[0]["n"], "n_seeds": len(rs), "mean": statistics.fmean(vals),
                            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                            **{k: statistics.fmean(r[k] for r in rs) for k in
                               ("train_flops", "pt_flops", "ft_flops", "infer_flops_per_example")}})
    return out


def paired(records: list[dict], split: str, arm: str, base: str) -> dict:
    """arm minus base, seed by seed, on one split (lab.paired_stats)."""
    at = {(r["arm"], r["seed"]): r["value"] for r in records if r["split"] == split}
    diffs = [at[(arm, s)] - at[(base, s)] for s in sorted({s for _, s in at}) if (arm, s) in at and (base, s) in at]
    return {"arm": arm, "vs": base, "split": split, **lab.paired_stats(diffs)}


def best_on_val(rows: list[dict]) -> str:
    """The no-pause arm (of BASELINES) with the highest mean val accuracy."""
    val = {r["arm"]: r["mean"] for r in rows if r["split"] == "val" and r["arm"] in BASELINES}
    return max(val, key=val.get)


def table(rows: list[dict], split: str) -> list[str]:
    ref = next((r for r in rows if r["arm"] == PAUSE_ARM and r["split"] == split), None)
    lines = ["| arm | M_inf | votes | seeds | accuracy % | training TFLOPs (pretraining + finetuning) | inference MFLOPs / example |"
             " training / PauseFT's | inference / PauseFT's |", "|---|---|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["split"] == split):
        ratio = lambda k: f"{r[k] / ref[k]:.3f}" if ref else ""
        lines.append(f"| {r['arm']} | {r['m_inf']} | {r['votes']} | {r['n_seeds']} | {100 * r['mean']:.1f} ± {100 * r['std']:.1f} | "
                     f"{r['train_flops'] / 1e12:.3f} ({r['pt_flops'] / 1e12:.3f} + {r['ft_flops'] / 1e12:.3f}) | "
                     f"{r['infer_flops_per_example'] / 1e6:.2f} | {ratio('train_flops')} | "
                     f"{ratio('infer_flops_per_example')} |")
    return [f"### {split} split ({rows[0]['n']} questions; mean ± std over seeds)", ""] + lines + [""]


def pair_lines(pairs: list[dict]) -> list[str]:
    lines = ["| PausePT_PauseFT minus | split | seeds | mean diff (points) | std | stderr | mean/stderr | + / − seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        lines.append(f"| {p['vs']} | {p['split']} | {p['n_seeds']} | {100 * p['mean_diff']:+.1f} | {100 * p['std']:.1f} | "
                     f"{100 * p['stderr']:.1f} | {p['t']:.2f} | {p['wins']} / {p['losses']} |")
    return lines + [""]


def study_ledger(out_dir: str) -> list[str]:
    """Every arm of the study in out_dir/summary.json at its own M_inf, val and test, with both FLOPs axes."""
    path = os.path.join(out_dir, "summary.json")
    if not os.path.exists(path):
        return []
    summary = json.load(open(path))
    recs = [r for r in summary["records"] if r["metric"] == summary["metric"] and r["m_inf"] == r["m_ft"]
            and "train_flops" in r]
    lines = ["### Every arm of the study on the ledger (each at M_inf = M_ft; mean ± std over seeds)", "",
             "| arm | M_inf | val % | test % | training TFLOPs | finetuning TFLOPs | inference MFLOPs / example (test) |",
             "|---|---|---|---|---|---|---|"]
    for arm in dict.fromkeys(r["variant"] for r in recs):
        by = {s: [r for r in recs if r["variant"] == arm and r["split"] == s] for s in ("val", "test")}
        if not by["test"]:
            continue
        acc = lambda rs: (f"{100 * statistics.fmean(r['value'] for r in rs):.1f} ± "
                          f"{100 * (statistics.stdev([r['value'] for r in rs]) if len(rs) > 1 else 0):.1f}") if rs else ""
        mean = lambda k: statistics.fmean(r[k] for r in by["test"])
        lines.append(f"| {arm} | {by['test'][0]['m_inf']} | {acc(by['val'])} | {acc(by['test'])} | "
                     f"{mean('train_flops') / 1e12:.3f} | {mean('ft_flops') / 1e12:.3f} | "
                     f"{mean('infer_flops_per_example') / 1e6:.2f} |")
    return lines + [""]


def frontier_points(out_dir: str, rows: list[dict]) -> list[dict]:
    """(arm, accuracy, training FLOPs, inference FLOPs per example) on the test split: the equal-compute arms and
    the study's arms at their own M_inf (those not already among the former)."""
    pts = [{"arm": r["arm"], "acc": r["mean"], "train": r["train_flops"], "infer": r["infer_flops_per_example"]}
           for r in rows if r["split"] == "test"]
    path = os.path.join(out_dir, "summary.json")
    if os.path.exists(path):
        summary = json.load(open(path))
        recs = [r for r in summary["records"] if r["split"] == "test" and r["metric"] == summary["metric"]
                and r["m_inf"] == r["m_ft"] and "train_flops" in r]
        for arm in dict.fromkeys(r["variant"] for r in recs):
            if arm in {p["arm"] for p in pts}:
                continue
            rs = [r for r in recs if r["variant"] == arm]
            pts.append({"arm": arm, "acc": statistics.fmean(r["value"] for r in rs),
                        "train": statistics.fmean(r["train_flops"] for r in rs),
                        "infer": statistics.fmean(r["infer_flops_per_example"] for r in rs)})
    return pts


def on_frontier(pts: list[dict], cost, tol: float = 0.01) -> set[str]:
    """The arms no other arm beats in accuracy at no more than cost(p) (1 + tol): the same model answering in
    fewer tokens is a hair cheaper, which is no reason to call a less accurate arm efficient."""
    return {p["arm"] for p in pts if not any(q["acc"] > p["acc"] and cost(q) <= cost(p) * (1 + tol) for q in pts)}


def frontier_plot(pts: list[dict], queries: float, path: str) -> None:
    """Left: each arm at (training FLOPs, inference FLOPs per example), its test accuracy in the legend. Right:
    accuracy against total FLOPs (training + `queries` answers); the frontier's arms joined by a line."""
    fig, (a, b) = plots.plt.subplots(1, 2, figsize=(13, 5.2))
    total = lambda p: p["train"] + queries * p["infer"]
    best = on_frontier(pts, total)
    for i, p in enumerate(pts):
        colour, marker = figures.arm_color(p["arm"]), plots.MARKERS[i % len(plots.MARKERS)]
        a.scatter(p["train"] / 1e12, p["infer"] / 1e6, s=30 + 300 * p["acc"], color=colour, marker=marker, alpha=0.6,
                  label=f"{p['arm']}: {100 * p['acc']:.1f} %")  # a legend, not labels: several arms share one cost
        b.scatter(total(p) / 1e12, 100 * p["acc"], color=colour, marker=marker,
                  facecolors=colour if p["arm"] in best else "none")
        b.annotate(p["arm"], (total(p) / 1e12, 100 * p["acc"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    line = sorted((p for p in pts if p["arm"] in best), key=total)
    b.plot([total(p) / 1e12 for p in line], [100 * p["acc"] for p in line], color="grey", lw=1)
    xs = [p["train"] / 1e12 for p in pts]
    a.set_xlim(0.9 * min(xs), 1.1 * max(xs))  # arms matched in training FLOPs sit within a few parts per million
    a.set_ylim(0, 1.15 * max(p["infer"] / 1e6 for p in pts))
    a.ticklabel_format(useOffset=False)
    a.set(xlabel="training FLOPs (pretraining + finetuning), TFLOPs", ylabel="inference MFLOPs per example",
          title="cost of each arm (marker area: test accuracy)")
    a.legend(fontsize=7, loc="lower right", markerscale=0.5)
    b.set(xlabel=f"total TFLOPs: training + {queries:.0e} answers", ylabel="test accuracy %",
          title="accuracy vs total compute (filled: on the frontier)")
    fig.suptitle("synthetic largest-gap, LAMBADA format: test split")
    fig.tight_layout()
    plots.save_figure(fig, path, {"points": pts, "queries": queries, "frontier": sorted(best), "unit": "%",
                                  "colors": {p["arm"]: figures.arm_color(p["arm"]) for p in pts}})


def report(cfg) -> dict:
    """Write equal_compute.md, equal_compute.json and frontier.png into cfg.out_dir."""
    records = load(cfg.out_dir, cfg.seeds)
    if not records:
        raise UserError(f"no equal_*.json results under {cfg.out_dir}/seed*/")
    rows = summarise(records)
    best = best_on_val(rows)
    primary = paired(records, "fresh_test", PAUSE_ARM, best)
    pairs = [p for s in SPLITS for b in ("StdPT_StdFT",) + BASELINES if (p := paired(records, s, PAUSE_ARM, b))["n_seeds"]]
    times = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(cfg.out_dir, "seed*", "equal_time_*.json"))
                                                + glob.glob(os.path.join(cfg.out_dir, "equal_time_*.json")))]  # pool
    wall = (max(t["end"] for t in times) - min(t["start"] for t in times)) if times else float("nan")
    lines = [f"# Equal compute: PausePT_PauseFT against no-pause arms within its FLOPs ({cfg.seeds} seeds)", "",
             f"Wall time of the recorded runs (first start to last end, over its processes or its pool): "
             f"{wall / 60:.1f} min.", "",
             f"**Primary test** (fresh test split): PausePT_PauseFT minus {best} (the best no-pause arm on val): "
             f"{100 * primary['mean_diff']:+.1f} points, stderr {100 * primary['stderr']:.1f}, mean/stderr "
             f"{primary['t']:.2f} (threshold {T_CRIT}), seeds + / −: {primary['wins']} / {primary['losses']} "
             f"-> **{verdict(primary, cfg.seeds)}**.", ""]
    for s in SPLITS:
        lines += table(rows, s)
    lines += pair_lines(pairs) + study_ledger(cfg.out_dir)
    pts = frontier_points(cfg.out_dir, rows)
    frontier_plot(pts, cfg.queries, os.path.join(cfg.out_dir, "frontier.png"))
    lines += [f"Frontier (test split, training + {cfg.queries:.0e} answers): "
              + ", ".join(sorted(on_frontier(pts, lambda p: p["train"] + cfg.queries * p["infer"]))) + ".", ""]
    out = {"best_no_pause_on_val": best, "primary": primary, "verdict": verdict(primary, cfg.seeds), "rows": rows,
           "paired": pairs, "wall_s": wall, "seed_times": times, "records": records, "frontier": pts}
    write_json(os.path.join(cfg.out_dir, "equal_compute.json"), out)
    write_text(os.path.join(cfg.out_dir, "equal_compute.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return out
