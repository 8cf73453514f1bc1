"""The study: from a StdPT and a PausePT checkpoint, finetune the four variants (StdFT and PauseFT
from each), evaluate every one over an M_inf sweep, and write summary.md, summary.json and the plots.
Ablations are options: more M_ft values, filler tokens instead of <pause>, pauses prepended, and a
compute-matched baseline. --seeds=N repeats everything and reports mean ± std and paired differences.

    python study.py --preset=cpu                     # the whole CPU demo (synthetic data, both pretrainings)
    python study.py --task=gsm8k --std_ckpt=out/std/ckpt.pt --pause_ckpt=out/pause/ckpt.pt --m_ft=10
"""
import dataclasses
import json
import math
import os
import statistics
import time
from dataclasses import dataclass

import data
import eval as evaluation
import finetune
import plots
import synth
import tasks
import train
from common import UserError, load_checkpoint, load_toml, opt, parse_config, run_main

VARIANTS = ("StdPT_StdFT", "StdPT_PauseFT", "PausePT_StdFT", "PausePT_PauseFT")
BASELINE = "StdPT_StdFT"
MATCHED = "StdPT_StdFT_matched"

# The CPU demonstration: the largest-gap task, a 3-layer 64-wide model, one token per number. Its task
# is written in LAMBADA's format (--task=gsm8k: GSM8K's, whose prompt gives models without pauses more room).
CPU_PRESET = {"task": "lambada", "m_ft": 12, "m_inf": [0, 3, 6, 12, 18, 24], "filler": "\\n", "compute_matched": True,
              "ft_iters": 2500, "ft_batch_size": 64, "ft_lr": 1e-3, "max_examples": 1000}
CPU_SYNTH = ["--n=12", "--lo=0", "--hi=64", "--n_train=20000", "--n_test=1000", "--corpus_docs=2000"]
CPU_PRETRAIN = load_toml(train.TrainConfig, os.path.join(os.path.dirname(os.path.abspath(__file__)), "config", "tiny.toml"))


@dataclass
class StudyConfig:
    """Run the four variants (and ablations) of one task over an M_inf sweep; write tables and plots."""
    out_dir: str = opt("out/study", "everything goes here: runs/, results/, summary.md, summary.json, *.png")
    preset: str = opt("", "'cpu': the synthetic largest-gap demo, from data generation to plots (sets the defaults below)")
    task: str = opt("gsm8k", f"task name: {', '.join(tasks.TASKS)}")
    task_train: str = opt("", "finetuning file (default: data/tasks/TASK/<train file>)")
    task_eval: str = opt("", "evaluation file (default: data/tasks/TASK/<eval file>)")
    std_ckpt: str = opt("", "StdPT checkpoint (train.py --pause_frac=0)")
    pause_ckpt: str = opt("", "PausePT checkpoint (train.py --pause_frac=0.1)")
    m_ft: int = opt(10, "pauses in PauseFT")
    m_inf: list[int] = opt([0, 1, 2, 5, 10, 20], "the M_inf sweep")
    extra_m_ft: list[int] = opt([], "ablation: more M_ft values for PausePT_PauseFT (e.g. 50)")
    filler: str = opt("", "ablation: StdPT_FillerFT, finetuned and evaluated with M_ft copies of this ordinary token ('.')")
    prepend: bool = opt(False, "ablation: PausePT_PauseFT with the pauses before the prompt")
    compute_matched: bool = opt(False, "add StdPT_StdFT_matched: StdFT on as many tokens as PausePT_PauseFT, pauses counted")
    seeds: int = opt(1, "repeat with seeds 0..N-1 (cpu preset: pretraining too); report mean ± std and paired differences")
    ft_iters: int = opt(1000, "finetuning steps")
    ft_batch_size: int = opt(16, "finetuning batch size")
    ft_lr: float = opt(1e-4, "finetuning peak learning rate")
    max_examples: int = opt(0, "evaluate on the first N examples only (0 = all)")
    eval_batch_size: int = opt(256, "sequences per evaluation forward pass")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")


def apply_preset(cfg: StudyConfig, argv: list[str]) -> StudyConfig:
    """Preset values for the keys not given on the command line."""
    if cfg.preset not in ("", "cpu"):
        raise UserError(f"unknown preset {cfg.preset!r}; the only preset is 'cpu'")
    given = {a[2:].split("=")[0] for a in argv if a.startswith("--")}
    if cfg.preset == "cpu":
        cfg = dataclasses.replace(cfg, **{k: v for k, v in CPU_PRESET.items() if k not in given})
        if cfg.task not in synth.LAYOUTS:
            raise UserError(f"the cpu preset writes its task as {' or '.join(synth.LAYOUTS)}, not {cfg.task!r}")
    return cfg


def cpu_pretrain(cfg: StudyConfig, seed: int) -> tuple[str, str, str, str]:
    """Generate the synthetic task and corpus, prepare the corpus, pretrain StdPT and PausePT."""
    raw, prepared = os.path.join(cfg.out_dir, "synth"), os.path.join(cfg.out_dir, "data")
    if not os.path.exists(os.path.join(raw, "test.jsonl")):
        synth.main(CPU_SYNTH + [f"--layout={cfg.task}", f"--out_dir={raw}"])
    if not os.path.exists(os.path.join(prepared, "meta.json")):
        data.prepare(data.PrepareConfig(input=[os.path.join(raw, synth.TRAIN_CORPUS)],
                                        val_input=[os.path.join(raw, synth.VAL_CORPUS)], out_dir=prepared,
                                        tokenizer="word", workers=1))
    ckpts = []
    for name, frac in (("StdPT", 0.0), ("PausePT", 0.1)):
        out = os.path.join(cfg.out_dir, f"seed{seed}", name)
        ckpts.append(os.path.join(out, "ckpt.pt"))
        if not finished(ckpts[-1], CPU_PRETRAIN["max_iters"]):
            tc = train.TrainConfig(**CPU_PRETRAIN, data_dir=prepared, out_dir=out, pause_frac=frac, seed=seed,
                                   device=cfg.device, resume=os.path.exists(ckpts[-1]))
            train.main(tc)
    return ckpts[0], ckpts[1], os.path.join(raw, "train.jsonl"), os.path.join(raw, "test.jsonl")


def finished(ckpt: str, steps: int) -> bool:
    return os.path.exists(ckpt) and load_checkpoint(ckpt)["meta"]["step"] >= steps


def variants(cfg: StudyConfig) -> list[dict]:
    """name, which pretraining, and the finetuning options of every run."""
    runs = [{"name": n, "pt": n.split("_")[0], "m_ft": cfg.m_ft if n.endswith("PauseFT") else 0} for n in VARIANTS]
    runs += [{"name": f"PausePT_PauseFT_mft{m}", "pt": "PausePT", "m_ft": m} for m in cfg.extra_m_ft]
    if cfg.filler:
        runs.append({"name": "StdPT_FillerFT", "pt": "StdPT", "m_ft": cfg.m_ft, "filler": cfg.filler})
    if cfg.prepend:
        runs.append({"name": "PausePT_PauseFT_prepend", "pt": "PausePT", "m_ft": cfg.m_ft, "prepend": True})
    if cfg.compute_matched:
        runs.append({"name": MATCHED, "pt": "StdPT", "m_ft": 0, "matched": True})
    return runs


def token_ratio(train_file: str, task: str, ckpt: str, m_ft: int, limit: int = 2000) -> float:
    """Tokens of a PauseFT example over those of a StdFT one (the cost of the pauses in finetuning)."""
    from tokenizer import from_meta
    tok = from_meta(load_checkpoint(ckpt)["meta"]["tokenizer"])
    lengths = [len(tok.encode(e.prefix)) + len(tok.encode(e.target)) + 1 for e in tasks.load_task(task, train_file)[:limit]]
    mean = sum(lengths) / len(lengths)
    return (mean + m_ft) / mean


def run_seed(cfg: StudyConfig, seed: int, pre: dict[str, str], train_file: str, eval_file: str) -> list[dict]:
    """Finetune and evaluate every variant for one seed; finished runs and results are reused."""
    records = []
    for v in variants(cfg):
        out = os.path.join(cfg.out_dir, f"seed{seed}", v["name"])
        iters = cfg.ft_iters
        if v.get("matched"):
            iters = round(cfg.ft_iters * token_ratio(train_file, cfg.task, pre["StdPT"], cfg.m_ft))
        ckpt = os.path.join(out, "ckpt.pt")
        if not finished(ckpt, iters):
            finetune.main(finetune.FinetuneConfig(
                init_from=pre[v["pt"]], task=cfg.task, task_file=train_file, out_dir=out, m_ft=v["m_ft"],
                filler=v.get("filler", ""), prepend=v.get("prepend", False), max_iters=iters,
                batch_size=cfg.ft_batch_size, learning_rate=cfg.ft_lr, min_lr=cfg.ft_lr / 10,
                warmup_iters=min(100, iters // 10), eval_interval=max(1, iters // 4), seed=seed, device=cfg.device,
                resume=os.path.exists(ckpt), log_interval=50))
        res_path = os.path.join(out, "results.json")
        if os.path.exists(res_path):
            res = json.load(open(res_path))
        else:
            res = evaluation.main(evaluation.EvalConfig(
                ckpt=ckpt, task=cfg.task, task_file=eval_file, m_inf=cfg.m_inf, max_examples=cfg.max_examples,
                batch_size=cfg.eval_batch_size, out=res_path, device=cfg.device))  # each task's own answer budget
        res = [{k: x for k, x in r.items() if k != "samples"} for r in res]  # per-example records stay in res_path
        records += [{**r, "variant": v["name"], "seed": seed, "ft_iters": iters} for r in res]
    return records


def aggregate(records: list[dict]) -> list[dict]:
    """Mean over seeds per (variant, m_inf, metric), with the standard error over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["variant"], r["m_inf"], r["metric"]), []).append(r)
    out = []
    for (variant, m_inf, metric), rs in groups.items():
        vals = [r["value"] for r in rs]
        if len(vals) > 1:
            sd = statistics.stdev(vals)
            err = sd / math.sqrt(len(vals))
        else:
            sd, err = 0.0, rs[0]["stderr"]
        out.append({**rs[0], "value": statistics.fmean(vals), "std": sd, "stderr": err, "n_seeds": len(vals),
                    "values": vals, "seeds": [r["seed"] for r in rs]})
    return sorted(out, key=lambda r: (r["variant"], r["metric"], r["m_inf"]))


def paired(records: list[dict], metric: str, m_inf_of: dict[str, int], baseline: str = BASELINE) -> list[dict]:
    """Each variant minus `baseline`, seed by seed, each at its own M_inf (M_ft; the baseline's too)."""
    at = {(r["variant"], r["seed"]): r["value"] for r in records
          if r["metric"] == metric and r["m_inf"] == m_inf_of.get(r["variant"], -1)}
    seeds = sorted({s for _, s in at})
    out = []
    for v in m_inf_of:
        diffs = [at[(v, s)] - at[(baseline, s)] for s in seeds if (v, s) in at and (baseline, s) in at]
        if v == baseline or not diffs:
            continue
        sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
        se = sd / math.sqrt(len(diffs))
        out.append({"variant": v, "vs": baseline, "metric": metric, "n_seeds": len(diffs), "mean_diff": statistics.fmean(diffs),
                    "std": sd, "stderr": se, "t": statistics.fmean(diffs) / se if se > 0 else float("nan"),
                    "wins": sum(d > 0 for d in diffs), "diffs": diffs, "m_inf": m_inf_of[v], "vs_m_inf": m_inf_of[baseline]})
    return out


def comparisons(records: list[dict], metric: str, runs: list[dict], m_infs: list[int]) -> list[dict]:
    """The paired comparisons the summary reports: every variant vs StdPT_StdFT (equal steps); the pause and
    filler variants vs the compute-matched baseline; PausePT_PauseFT vs StdPT_PauseFT at every M_inf (robustness)."""
    m_inf_of = {v["name"]: v["m_ft"] for v in runs}
    pairs = paired(records, metric, m_inf_of)
    if MATCHED in m_inf_of:
        pairs += paired(records, metric, {MATCHED: 0, **{n: m for n, m in m_inf_of.items() if m > 0}}, MATCHED)
    if {"PausePT_PauseFT", "StdPT_PauseFT"} <= m_inf_of.keys():
        for m in m_infs:
            pairs += paired(records, metric, {"StdPT_PauseFT": m, "PausePT_PauseFT": m}, "StdPT_PauseFT")
    return pairs


def write_summary(cfg: StudyConfig, records: list[dict], runs: list[dict], elapsed: float) -> dict:
    agg = aggregate(records)
    metric = tasks.get_spec(cfg.task).metrics[0]
    pairs = comparisons(records, metric, runs, cfg.m_inf)
    summary = {"task": cfg.task, "metric": metric, "config": dataclasses.asdict(cfg), "elapsed_s": elapsed,
               "aggregated": agg, "paired": pairs, "records": records}
    with open(os.path.join(cfg.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    n_seeds = len({r["seed"] for r in records})
    lines = [f"# Study: {cfg.task}, {metric}, {n_seeds} seed(s), M_ft = {cfg.m_ft}", "",
             f"Mean ± std over seeds (± stderr of the estimate with one seed); n = {agg[0]['n']} test examples; "
             f"{elapsed / 60:.1f} min.", "",
             "| variant | M_ft | " + " | ".join(f"M_inf={m}" for m in cfg.m_inf) + " |",
             "|---|---|" + "---|" * len(cfg.m_inf)]
    for v in runs:
        cells = []
        for m in cfg.m_inf:
            r = next((a for a in agg if a["variant"] == v["name"] and a["m_inf"] == m and a["metric"] == metric), None)
            spread = r["std"] if r and r["n_seeds"] > 1 else (r["stderr"] if r else 0)
            cell = "" if r is None else f"{100 * r['value']:.1f} ± {100 * spread:.1f}"
            cells.append(f"**{cell}**" if m == v["m_ft"] else cell)
        lines.append(f"| {v['name']} | {v['m_ft']} | " + " | ".join(cells) + " |")
    lines += ["", "Bold: M_inf = M_ft, where each variant is compared.", ""]
    if pairs:
        lines += ["Paired differences (same seed; in points; M_inf of each side in brackets):", "",
                  "| variant | vs | seeds | mean diff | std | stderr | mean/stderr | wins |", "|---|---|---|---|---|---|---|---|"]
        for p in pairs:
            lines.append(f"| {p['variant']} [{p['m_inf']}] | {p['vs']} [{p['vs_m_inf']}] | {p['n_seeds']} | {100 * p['mean_diff']:+.1f} | "
                         f"{100 * p['std']:.1f} | {100 * p['stderr']:.1f} | {p['t']:.1f} | {p['wins']}/{p['n_seeds']} |")
    with open(os.path.join(cfg.out_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


def main(cfg: StudyConfig) -> None:
    t0 = time.time()
    os.makedirs(cfg.out_dir, exist_ok=True)
    if cfg.task not in tasks.TASKS:
        raise UserError(f"unknown task {cfg.task!r}; choose one of {', '.join(tasks.TASKS)}")
    if cfg.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {cfg.seeds}")
    if cfg.preset != "cpu" and not (cfg.std_ckpt and cfg.pause_ckpt):
        raise UserError("give --std_ckpt and --pause_ckpt (pretraining checkpoints), or --preset=cpu")
    records, logs = [], {}
    for seed in range(cfg.seeds):
        if cfg.preset == "cpu":
            std, pause, train_file, eval_file = cpu_pretrain(cfg, seed)
        else:
            std, pause = cfg.std_ckpt, cfg.pause_ckpt
            train_file = cfg.task_train or tasks.default_path(cfg.task, "train")
            eval_file = cfg.task_eval or tasks.default_path(cfg.task, "eval")
        records += run_seed(cfg, seed, {"StdPT": std, "PausePT": pause}, train_file, eval_file)
        if seed == 0:
            logs = {name: os.path.join(os.path.dirname(p), "log.jsonl") for name, p in (("StdPT", std), ("PausePT", pause))}
            logs |= {v["name"]: os.path.join(cfg.out_dir, "seed0", v["name"], "log.jsonl") for v in variants(cfg)}
    summary = write_summary(cfg, records, variants(cfg), time.time() - t0)
    metric, agg = summary["metric"], summary["aggregated"]
    plots.minf_curve(agg, cfg.task, metric, os.path.join(cfg.out_dir, "minf_curve.png"))
    plots.variants_bar(agg, cfg.task, metric, os.path.join(cfg.out_dir, "variants.png"))
    existing = {k: p for k, p in logs.items() if os.path.exists(p)}
    pre = {k: p for k, p in existing.items() if k in ("StdPT", "PausePT")}
    if pre:
        plots.loss_curves(pre, os.path.join(cfg.out_dir, "pretrain_loss.png"), "pretraining")
    plots.loss_curves({k: p for k, p in existing.items() if k not in pre}, os.path.join(cfg.out_dir, "finetune_loss.png"),
                      "finetuning (seed 0)")
    print(f"study written to {cfg.out_dir} in {(time.time() - t0) / 60:.1f} min")


def cli() -> None:
    import sys
    cfg = parse_config(StudyConfig, prog="study.py")
    main(apply_preset(cfg, sys.argv[1:]))


if __name__ == "__main__":
    run_main(cli)
