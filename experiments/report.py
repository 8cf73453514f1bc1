"""The study's report: summary.md and summary.json (tables, paired differences, the run's time) and its
figures. `python -m experiments.report docs/RUN/summary.json ...` redraws the figures (and rewrites
summary.md) of finished studies from their summary.json alone, for the study and compute_study.
"""
import json
import os
import statistics
import sys

import plots
from config import UserError, run_main
from runtime import write_json, write_text
from plots import fmt_num
from experiments import figures, lab
from experiments.figures import PALETTE

LAYOUT_NAMES = {"lambada": "LAMBADA", "gsm8k": "GSM8K"}


def task_title(task: str, preset: str) -> str:
    """What the plots call the task: the cpu preset's is synthetic, only laid out like a real dataset."""
    return f"synthetic largest-gap, {LAYOUT_NAMES.get(task, task)} format" if preset == "cpu" else task


def relative_out_dir(config: dict) -> dict:
    """The config as a committed record may hold it: out_dir relative to the working directory, or left
    out where it lies elsewhere (a machine's temp folder means nothing on another machine)."""
    rel = os.path.relpath(os.path.abspath(config["out_dir"])) if config.get("out_dir") else None
    keep = rel is not None and not rel.startswith("..")
    return {k: (rel if k == "out_dir" else v) for k, v in config.items() if k != "out_dir" or keep}


def split_table(agg: list[dict], runs: list[dict], split: str, metric: str, m_infs: list[int]) -> list[str]:
    rows = [a for a in agg if a.get("split", "test") == split and a["metric"] == metric]
    if not rows:
        return []
    lines = [f"### {split} split ({rows[0]['n']} questions)", "",
             "| variant | M_ft | " + " | ".join(f"M_inf={m}" for m in m_infs) + " | train TFLOPs | inference "
             "MFLOPs/example |", "|---|---|" + "---|" * (len(m_infs) + 2)]
    for v in runs:
        at = next((a for a in rows if a["variant"] == v["name"] and a["m_inf"] == v["m_ft"]), {})
        cost = [f"{at[k] / scale:.3f}" if k in at else "—" for k, scale in (("train_flops", 1e12),
                                                                           ("infer_flops_per_example", 1e6))]
        cells = []
        for m in m_infs:
            r = next((a for a in rows if a["variant"] == v["name"] and a["m_inf"] == m), None)
            spread = r["std"] if r and r["n_seeds"] > 1 else (r["stderr"] if r else 0)
            cell = "" if r is None else f"{100 * r['value']:.1f} ± {fmt_num(100 * spread)}"
            cells.append(f"**{cell}**" if m == v["m_ft"] else cell)
        ft = v.get("ft_m", v["m_ft"]) if "source" not in v else f"{v['source']}, {v['eval_filler']!r} at inference"
        lines.append(f"| {v['name']} | {ft} | " + " | ".join(cells + cost) + " |")
    return lines + [""]


def pair_table(pairs: list[dict], split: str) -> list[str]:
    if not pairs:
        return []
    lines = [f"Paired differences on the {split} split (same seed; in points; M_inf of each side in brackets; "
             "— where one seed leaves a spread undefined):", "",
             "| variant | vs | seeds | mean diff | std | stderr | mean/stderr | wins |", "|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        lines.append(f"| {p['variant']} [{p['m_inf']}] | {p['vs']} [{p['vs_m_inf']}] | {p['n_seeds']} | "
                     f"{100 * p['mean_diff']:+.1f} | {fmt_num(100 * p['std'])} | {fmt_num(100 * p['stderr'])} | "
                     f"{fmt_num(p['t'])} | {p['wins']}/{p['n_seeds']} |")
    return lines + [""]


def summary_md(summary: dict, runs: list[dict]) -> str:
    """summary.md of a study from its summary.json's content."""
    cfg, metric, records, agg = summary["config"], summary["metric"], summary["records"], summary["aggregated"]
    splits = [s for s in ("val", "test") if any(r.get("split", "test") == s for r in records)]
    n_seeds = len({r["seed"] for r in records})
    lines = [f"# Study: {task_title(summary['task'], cfg.get('preset', ''))}, {metric}, {n_seeds} seed(s), "
             f"M_ft = {cfg['m_ft']}", "",
             f"Mean ± std over seeds (± stderr over the questions with one seed), in %; {lab.time_line(summary)}.", ""]
    for s in splits:
        lines += split_table(agg, runs, s, metric, cfg["m_inf"])
    lines += ["Bold: M_inf = M_ft, where each variant is compared. FLOPs (flops.py, mean over seeds): training is "
              "pretraining + finetuning from the runs' ledgers; inference is per example at M_inf = M_ft.", ""]
    names = {v["name"] for v in runs if "matched" in v}
    matched = {r["variant"]: r["ft_iters"] for r in records if r["variant"] in names}
    if matched:
        lines += [f"Compute-matched baselines: StdFT for ft_iters × Σ(prefix + pauses + target) / Σ(prefix + target) "
                  f"steps (input tokens, pauses counted, over the finetuning file) instead of {cfg['ft_iters']}: "
                  + ", ".join(f"{k} {n} steps" for k, n in matched.items()) + ".", ""]
    by_split = summary.get("paired_by_split", {"test": summary.get("paired", [])})
    for s in splits:
        lines += pair_table(by_split.get(s, []), s)
    return "\n".join(lines) + "\n"


def inside(obj, root: str):
    """obj with every path under `root` written relative to it: a record names no folder of the machine that made it."""
    if isinstance(obj, dict):
        return {k: inside(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [inside(v, root) for v in obj]
    if isinstance(obj, str) and obj.startswith(root + os.sep):
        return os.path.relpath(obj, root)
    return obj


def write_summary(out_dir: str, summary: dict, runs: list[dict]) -> dict:
    """summary.json (out_dir relative or left out, paths inside it relative to it) and summary.md; the markdown
    is printed too."""
    summary = inside({**summary, "config": relative_out_dir(summary["config"])}, os.path.abspath(out_dir))
    write_json(os.path.join(out_dir, "summary.json"), summary)
    text = summary_md(summary, runs)
    write_text(os.path.join(out_dir, "summary.md"), text)
    print(text)
    return summary


def draw(out_dir: str, summary: dict, runs: list[dict], logs: dict[str, str] | None = None) -> None:
    """The study's figures from its summary (test split): M_inf curves, variants, FLOPs, and loss curves
    from the training logs that exist."""
    task, metric, title = summary["task"], summary["metric"], task_title(summary["task"], summary["config"].get("preset", ""))
    rank = {v["name"]: i for i, v in enumerate(runs)}  # the arms in the tables' order
    agg = sorted([a for a in summary["aggregated"] if a.get("split", "test") == "test"],
                 key=lambda a: rank.get(a["variant"], len(rank)))
    plots.minf_curve(agg, task, metric, os.path.join(out_dir, "minf_curve.png"), title=title, palette=PALETTE)
    headline = {"StdPT_StdFT", "StdPT_PauseFT", "PausePT_PauseFT", "StdPT_PauseFT_rand", "PausePT_PauseFT_rand"}
    plots.minf_curve([a for a in agg if a["variant"] in headline], task, metric,  # the paper's Figure 4, uncluttered
                     os.path.join(out_dir, "minf_curve_pauseft.png"), title=title, palette=PALETTE)
    plots.variants_bar(agg, task, metric, os.path.join(out_dir, "variants.png"), title=title, palette=PALETTE)
    flops_plots(out_dir, [r for r in summary["records"] if r.get("split", "test") == "test" and r["metric"] == metric], runs, title)
    existing = {k: p for k, p in (logs or {}).items() if os.path.exists(p)}
    pre_logs = {k: p for k, p in existing.items() if k in ("StdPT", "PausePT")}
    if pre_logs:
        plots.loss_curves(pre_logs, os.path.join(out_dir, "pretrain_loss.png"), "pretraining", palette=PALETTE)
    ft_logs = {k: p for k, p in existing.items() if k not in pre_logs}
    if ft_logs:
        plots.loss_curves(ft_logs, os.path.join(out_dir, "finetune_loss.png"), "finetuning (seed 0)", palette=PALETTE)


def flops_plots(out_dir: str, records: list[dict], runs: list[dict], title: str) -> None:
    """Accuracy vs training FLOPs and vs inference FLOPs per example, each arm at its own M_inf (test split);
    only for results whose runs carry the FLOPs ledger."""
    at = {v["name"]: v["m_ft"] for v in runs}
    pts = [{"arm": r["variant"], "value": r["value"], "train_flops": r["train_flops"],
            "infer_flops": r["infer_flops_per_example"]} for r in records
           if r["m_inf"] == at.get(r["variant"]) and "train_flops" in r and "infer_flops_per_example" in r]
    rows = []
    for v in runs:
        ps = [p for p in pts if p["arm"] == v["name"]]
        if ps:
            vals = [p["value"] for p in ps]
            rows.append({"arm": v["name"], "mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1
                         else 0.0, **{k: statistics.fmean(p[k] for p in ps) for k in ("train_flops", "infer_flops")}})
    if rows:
        flops_figures(out_dir, rows, pts, title)


def flops_figures(out_dir: str, rows: list[dict], records: list[dict], title: str) -> None:
    for key, label in (("train_flops", "training FLOPs (pretraining + finetuning)"),
                       ("infer_flops", "inference FLOPs per example")):
        figures.accuracy_vs_flops(rows, records, key, label, os.path.join(out_dir, f"acc_vs_{key}.png"), title)


COMPUTE_TITLES = {"curriculum": "synthetic largest-gap (12 numbers), LAMBADA format", "separation": "synthetic parity"}


def compute_title(cfg: dict) -> str:
    what = f"synthetic {cfg.get('bits', 12)}-bit parity" if cfg["experiment"] == "separation" else COMPUTE_TITLES["curriculum"]
    return f"{cfg['experiment']}: {what}"


def redraw(path: str) -> None:
    """Redraw a finished study's figures (and rewrite its summary.md) from its summary.json and the arms it records."""
    try:
        summary = json.load(open(path))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path} as a summary.json: {e}") from None
    out_dir = os.path.dirname(path) or "."
    if "experiment" in summary:  # compute_study's
        flops_figures(out_dir, summary["arms"], summary["records"], compute_title(summary["config"]))
        return
    if "arms" not in summary:
        raise UserError(f"{path} records no arms: it is not a study's summary.json")
    write_summary(out_dir, summary, summary["arms"])
    draw(out_dir, summary, summary["arms"])
    print(f"redrew {out_dir} from {path}")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0)
    for p in sys.argv[1:]:
        run_main(redraw, p)
