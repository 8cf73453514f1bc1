"""The study: from a StdPT and a PausePT checkpoint, finetune the four variants (StdFT and PauseFT
from each), evaluate every one over an M_inf sweep on a validation and a test split, and write summary.md,
summary.json and the plots. Ablations are options: more M_ft values, random M_ft, the paper's filler
("." at inference only) and a finetuned-filler control, pauses prepended, rotary positions, and
compute-matched baselines. --seeds=N repeats everything and reports mean ± std and paired differences.

Choices belong on the validation split and the test split is only reported; the cpu preset's own settings
were carried over from earlier runs, not tuned on its val split (docs/RESULTS.md says which came from what).

    python -m experiments.study --preset=cpu                     # the whole CPU demo (synthetic data, both pretrainings)
    python -m experiments.study --task=gsm8k --std_ckpt=out/std/ckpt.pt --pause_ckpt=out/pause/ckpt.pt --m_ft=10
"""
import dataclasses
import functools
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass

import finetune
import tasks
import train
from config import DEVICES, DTYPES, UserError, check_config, opt, parse_config, run_main
from experiments import lab, report, synth
from experiments.lab import arm
from pause import VARIANTS

BASELINE = "StdPT_StdFT"
MATCHED = "StdPT_StdFT_matched"
SPLITS = ("val", "test")

# The CPU demonstration: the largest-gap task with 8 to 16 numbers per question (a fixed count puts every
# answer at the same absolute position), a 3-layer 64-wide model, one token per number, in LAMBADA's format
# (--task=gsm8k: GSM8K's, whose prompt gives models without pauses more room).
CPU_PRESET = {"task": "lambada", "m_ft": 12, "m_inf": [0, 3, 6, 12, 18, 24], "finetune_filler": "\\n",
              "inference_filler": ".", "compute_matched": True, "ft_iters": 2500, "ft_batch_size": 64, "ft_lr": 1e-3,
              "max_examples": 1000, "jobs": 2}  # two one-thread workers: 1.26x sooner on 2 cores (docs/RESULTS.md)


@dataclass
class StudyConfig:
    """Run the four variants (and ablations) of one task over an M_inf sweep; write tables and plots."""
    out_dir: str = opt("out/study", "everything goes here: seed*/, synth/, data/, summary.md, summary.json, *.png")
    preset: str = opt("", "'cpu': the synthetic largest-gap demo, from data generation to plots (sets the defaults below)")
    task: str = opt("gsm8k", "task name", choices=tuple(tasks.TASKS))
    task_train: str = opt("", "finetuning file (default: data/tasks/TASK/<train file>)")
    task_val: str = opt("", "validation file, where choices are made (cpu preset: its val split; none: test only)")
    task_eval: str = opt("", "test file (default: data/tasks/TASK/<eval file>)")
    std_ckpt: str = opt("", "StdPT checkpoint (train.py --pause_frac=0)")
    pause_ckpt: str = opt("", "PausePT checkpoint (train.py --pause_frac=0.1)")
    m_ft: int = opt(10, "pauses in PauseFT", ge=1)
    m_inf: list[int] = opt([0, 1, 2, 5, 10, 20], "the M_inf sweep", ge=0)
    extra_m_ft: list[int] = opt([], "ablation: more M_ft values for PausePT_PauseFT (e.g. 50)", ge=1)
    random_m_ft: str = opt("", "ablation (beyond the paper): *_PauseFT_rand arms finetuned with M_ft drawn from lo:hi "
                               "per example (e.g. 0:24), compared at M_inf = m_ft")
    inference_filler: str = opt("", "the paper's filler ablation: *_InfFiller arms evaluate StdPT_StdFT and "
                                    "PausePT_PauseFT with this ordinary token ('.') instead of <pause>, at inference only")
    finetune_filler: str = opt("", "control: StdPT_FillerFT, finetuned and evaluated with M_ft copies of this "
                                   "ordinary token ('\\n'): do extra positions help without a dedicated token?")
    prepend: bool = opt(False, "ablation: PausePT_PauseFT with the pauses before the prompt")
    compute_matched: bool = opt(False, "add StdPT_StdFT_matched: StdFT on as many input tokens as PauseFT, pauses counted")
    rope: bool = opt(False, "ablation (cpu preset): pretrain with rotary positions too; *_rope arms")
    cpu_n: list[int] = opt([8, 16], "cpu preset: numbers per question, lo,hi (12 = the old fixed-length task)", ge=2)
    seeds: int = opt(1, "repeat with seeds 0..N-1 (cpu preset: pretraining too); report mean ± std and paired differences",
                     ge=1)
    only_seed: int = opt(-1, "run only this seed and write no summary (parallel runs; then --seeds=N reuses them)", ge=-1)
    arms: list[str] = opt([], "run only these arms (e.g. PausePT_PauseFT_rope); the others are left as they are")
    aggregate: bool = opt(False, "train and evaluate nothing: summarise the results files already in out_dir "
                                 "(e.g. copied from another machine without checkpoints); arms without one are left out")
    jobs: int = opt(1, "worker processes, each on cores/jobs threads: pretrainings first, then every arm as soon "
                       "as its pretraining is finished (one bar for the whole study, with its ETA)", ge=1)
    ft_iters: int = opt(1000, "finetuning steps", ge=1)
    ft_batch_size: int = opt(16, "finetuning batch size", ge=1)
    ft_lr: float = opt(1e-4, "finetuning peak learning rate", gt=0, le=train.MAX_LR)
    max_examples: int = opt(0, "evaluate on the first N examples of each split only (0 = all)", ge=0)
    eval_batch_size: int = opt(256, "sequences per evaluation forward pass", ge=1)
    device: str = opt("auto", "where to run", choices=DEVICES)
    dtype: str = opt("auto", "auto: bfloat16 on GPU, float32 on CPU", choices=DTYPES)


StudyConfig.__doc__ += "\n--preset=cpu sets, for the keys not given: " + " ".join(  # shown by --help
    f"--{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in CPU_PRESET.items()) + \
    "; and it makes the synthetic task and corpus and pretrains config/tiny.toml's model on them"


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


def variants(cfg: StudyConfig) -> list[dict]:
    """Every arm (lab.arm): the four variants, then the ablations and controls the options ask for."""
    runs = [arm(n, n.split("_")[0], cfg.m_ft if n.endswith("PauseFT") else 0) for n in VARIANTS]
    runs += [arm(f"PausePT_PauseFT_mft{m}", "PausePT", m) for m in cfg.extra_m_ft]
    if cfg.random_m_ft:
        lo, hi = finetune.parse_m_ft(cfg.random_m_ft)
        runs += [arm(f"{pt}_PauseFT_rand", pt, cfg.m_ft, ft_m=f"{lo}:{hi}", pauses=(lo + hi) / 2)
                 for pt in ("StdPT", "PausePT")]
    if cfg.finetune_filler:
        runs.append(arm("StdPT_FillerFT", "StdPT", cfg.m_ft, filler=cfg.finetune_filler))
    if cfg.inference_filler:
        runs += [arm(f"{src}_InfFiller", src.split("_")[0], cfg.m_ft, source=src, eval_filler=cfg.inference_filler)
                 for src in ("StdPT_StdFT", "PausePT_PauseFT")]
    if cfg.prepend:
        runs.append(arm("PausePT_PauseFT_prepend", "PausePT", cfg.m_ft, prepend=True))
    if cfg.compute_matched:  # one baseline per mean number of pauses among the pause arms
        for pauses in sorted({r.get("pauses", r["m_ft"]) for r in runs if r["m_ft"] and "source" not in r}):
            name = MATCHED if pauses == cfg.m_ft else f"{MATCHED}_m{pauses:g}"
            runs.append(arm(name, "StdPT", 0, matched=pauses))
    if cfg.rope:
        keep = {"StdPT_StdFT", "StdPT_PauseFT", "PausePT_PauseFT", MATCHED}
        runs += [{**r, "name": r["name"] + "_rope", "pt": r["pt"] + "_rope"} for r in runs if r["name"] in keep]
    return runs


def aggregate(records: list[dict]) -> list[dict]:
    """Mean over seeds per (variant, split, m_inf, metric), with the standard error over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["variant"], r.get("split", "test"), r["m_inf"], r["metric"]), []).append(r)
    out = []
    for rs in groups.values():
        vals = [r["value"] for r in rs]
        if len(vals) > 1:
            sd = statistics.stdev(vals)
            err = sd / math.sqrt(len(vals))
        else:
            sd, err = 0.0, rs[0]["stderr"]
        cost = {k: statistics.fmean(r[k] for r in rs) for k in ("train_flops", "ft_flops", "infer_flops_per_example")
                if all(k in r for r in rs)}  # seeds differ a little (their batches' padding)
        out.append({**rs[0], "value": statistics.fmean(vals), "std": sd, "stderr": err, "n_seeds": len(vals),
                    "values": vals, "seeds": [r["seed"] for r in rs], **cost})
    return sorted(out, key=lambda r: (r["variant"], r.get("split", "test"), r["metric"], r["m_inf"]))


def paired(records: list[dict], metric: str, m_inf_of: dict[str, int], baseline: str = BASELINE) -> list[dict]:
    """Each variant minus `baseline`, seed by seed, each at its own M_inf (M_ft; the baseline's too)."""
    at = {(r["variant"], r["seed"]): r["value"] for r in records
          if r["metric"] == metric and r["m_inf"] == m_inf_of.get(r["variant"], -1)}
    seeds = sorted({s for _, s in at})
    out = []
    for v in m_inf_of:
        diffs = [at[(v, s)] - at[(baseline, s)] for s in seeds if (v, s) in at and (baseline, s) in at]
        if v != baseline and diffs:
            out.append({"variant": v, "vs": baseline, "metric": metric, **lab.paired_stats(diffs),
                        "m_inf": m_inf_of[v], "vs_m_inf": m_inf_of[baseline]})
    return out


def comparisons(records: list[dict], metric: str, runs: list[dict], m_infs: list[int]) -> list[dict]:
    """The paired comparisons the summary reports (records of one split): every arm vs StdPT_StdFT (equal steps);
    the pause and filler arms vs their compute-matched baseline; PausePT_PauseFT vs StdPT_PauseFT at every
    M_inf (robustness), and the same for the _rand and _rope pairs."""
    m_inf_of = {v["name"]: v["m_ft"] for v in runs}
    pairs = paired(records, metric, {k: m for k, m in m_inf_of.items() if not k.endswith("_rope")})
    if "StdPT_StdFT_rope" in m_inf_of:
        pairs += paired(records, metric, {k: m for k, m in m_inf_of.items() if k.endswith("_rope")}, "StdPT_StdFT_rope")
    for v in runs:
        if "matched" in v:  # the arms whose mean number of pauses this baseline matches, with the same positions
            rope = v["name"].endswith("_rope")
            arms = {r["name"]: r["m_ft"] for r in runs if r["name"].endswith("_rope") == rope and "matched" not in r
                    and r["m_ft"] and r.get("pauses", r["m_ft"]) == v["matched"] and "source" not in r}
            pairs += paired(records, metric, {v["name"]: 0, **arms}, v["name"])
    for suffix in ("", "_rand", "_rope"):
        std, pause = f"StdPT_PauseFT{suffix}", f"PausePT_PauseFT{suffix}"
        if {std, pause} <= m_inf_of.keys():
            for m in m_infs:
                pairs += paired(records, metric, {std: m, pause: m}, std)
    return pairs


def summarise(cfg: StudyConfig, records: list[dict], runs: list[dict], timing: dict) -> dict:
    """summary.json and summary.md (report.py): the tables per split and the paired comparisons."""
    metric = tasks.get_spec(cfg.task).metrics[0]
    splits = [s for s in SPLITS if any(r.get("split", "test") == s for r in records)]
    pairs = {s: comparisons([r for r in records if r.get("split", "test") == s], metric, runs, cfg.m_inf) for s in splits}
    summary = {"task": cfg.task, "metric": metric, "config": dataclasses.asdict(cfg), **timing,
               "aggregated": aggregate(records), "paired": pairs.get("test", []), "paired_by_split": pairs,
               "arms": runs, "records": records}
    return report.write_summary(cfg.out_dir, summary, runs)


def main(cfg: StudyConfig) -> None:
    """Every arm of every seed (in a pool with --jobs), then summary.md/json and the figures."""
    t0 = time.time()
    check_config(cfg)
    os.makedirs(cfg.out_dir, exist_ok=True)
    if cfg.preset != "cpu" and not (cfg.std_ckpt or cfg.pause_ckpt):
        raise UserError("give --std_ckpt and/or --pause_ckpt (pretraining checkpoints, or gpt2), or --preset=cpu")
    if cfg.rope and cfg.preset != "cpu":
        raise UserError("--rope pretrains its own models: it needs --preset=cpu")
    runs = variants(cfg)
    unknown = set(cfg.arms) - {v["name"] for v in runs}
    if unknown:
        raise UserError(f"--arms: no arm {sorted(unknown)[0]!r} in this study; it has {', '.join(v['name'] for v in runs)}")
    if cfg.arms:
        sources = {a.get("source") for a in runs if a["name"] in cfg.arms}  # an evaluation-only arm needs its source
        runs = [v for v in runs if v["name"] in cfg.arms or v["name"] in sources]
    if cfg.preset != "cpu":  # e.g. --std_ckpt=gpt2 alone: the arms that start from it
        given = {"StdPT": cfg.std_ckpt, "PausePT": cfg.pause_ckpt}
        skipped = [v["name"] for v in runs if not given[v["pt"]]]
        runs = [v for v in runs if given[v["pt"]]]
        if skipped:
            print(f"skipping {', '.join(skipped)}: no --{'pause' if not cfg.pause_ckpt else 'std'}_ckpt given")
    seeds, worked = lab.seeds_of(cfg), False
    with lab.own_seeds(cfg.out_dir, [] if cfg.aggregate else seeds):  # one experiment at a time per seed folder
        if cfg.jobs > 1 and not cfg.aggregate:
            before, start = sum(map(lambda s: n_results(cfg, s), seeds)), time.time()
            lab.run_pool(pool_plan(cfg, runs, seeds), functools.partial(run_stage, cfg),
                         lambda key: os.path.join(cfg.out_dir, f"seed{key[0]}", f"{key[1]}.out"), cfg.jobs, "study runs")
            worked = sum(map(lambda s: n_results(cfg, s), seeds)) > before
            for seed in seeds if worked else []:  # the pool's wall time, shared out: summed over seeds it is the run's
                lab.add_work_s(cfg.out_dir, seed, (time.time() - start) / len(seeds))
        records = []
        for seed in seeds:  # with a pool, everything is finished: this reads the records
            t_seed, before = time.time(), n_results(cfg, seed)
            records += lab.run_arms(cfg, seed, *pretrainings_and_files(cfg, seed, runs), runs)
            if n_results(cfg, seed) > before:  # this pass trained or evaluated something: its time is the run's
                lab.add_work_s(cfg.out_dir, seed, time.time() - t_seed)
                worked = True
    if cfg.only_seed >= 0:
        print(f"seed {cfg.only_seed} done in {(time.time() - t0) / 60:.1f} min; --seeds=N writes the summary")
        return
    if cfg.aggregate:
        runs = [v for v in runs if any(r["variant"] == v["name"] for r in records)]
        if not runs:
            raise UserError(f"no results files under {cfg.out_dir}/seed*/ to summarise")
    kind = "aggregate-only" if cfg.aggregate else "ran" if worked else "reuse"
    summary = summarise(cfg, records, runs, lab.run_time(cfg.out_dir, seeds, time.time() - t0, kind))
    pre = pretrainings_and_files(cfg, 0, runs)[0] if 0 in seeds and cfg.preset != "cpu" and not cfg.aggregate else {}
    logs = {name: lab.pretrain_log(pre[name]) if pre else os.path.join(cfg.out_dir, "seed0", name, "log.jsonl")
            for name in ("StdPT", "PausePT")}
    logs |= {v["name"]: os.path.join(cfg.out_dir, "seed0", v["name"], "log.jsonl") for v in runs}
    report.draw(cfg.out_dir, summary, runs, logs)
    print(f"study written to {cfg.out_dir}; {lab.time_line(summary)}")


def pretrainings_and_files(cfg: StudyConfig, seed: int, runs: list[dict]) -> tuple[dict, dict]:
    """The checkpoints the arms start from (the cpu preset's pretrained first if they are not yet) and the task
    files; nothing with --aggregate."""
    if cfg.aggregate:
        return {}, {}
    if cfg.preset != "cpu":
        return {"StdPT": cfg.std_ckpt, "PausePT": cfg.pause_ckpt}, {
            "train": cfg.task_train or tasks.default_path(cfg.task, "train"), "val": cfg.task_val,
            "test": cfg.task_eval or tasks.default_path(cfg.task, "eval")}
    files = lab.cpu_data(cfg.out_dir, cfg.cpu_n, cfg.task)
    return {pt: lab.cpu_pretrain(cfg.out_dir, seed, files["data"], pt, cfg.device, cfg.dtype)
            for pt in sorted({v["pt"] for v in runs})}, files


def pool_plan(cfg: StudyConfig, runs: list[dict], seeds: list[int]) -> list[tuple[tuple, list[tuple]]]:
    """((seed, name), the keys it waits for) for the pool: every pretraining, then the arms longest first (compute-matched
    ones run more steps), each after its pretraining (an evaluation-only arm after its source)."""
    pts = sorted({v["pt"] for v in runs}) if cfg.preset == "cpu" else []
    plan = [((seed, pt), []) for pt in pts for seed in seeds]
    for v in sorted(runs, key=lambda v: ("source" in v, "matched" not in v)):
        for seed in seeds:
            waits = [(seed, v["source"])] if "source" in v else [(seed, v["pt"])] if v["pt"] in pts else []
            plan.append(((seed, v["name"]), waits))
    return plan


def run_stage(cfg: StudyConfig, seed: int, name: str) -> None:
    """One pretraining or one arm (finetuned, then evaluated on every split) of one seed, in a pool worker."""
    runs = variants(cfg)
    chosen = [v for v in runs if v["name"] == name]
    pre, files = pretrainings_and_files(cfg, seed, chosen or [arm(name, name, 0)])
    if chosen:
        lab.run_arms(cfg, seed, pre, files, chosen)


def n_results(cfg: StudyConfig, seed: int) -> int:
    """Results files of a seed so far (a pass that adds any has done work)."""
    folder = os.path.join(cfg.out_dir, f"seed{seed}")
    return sum(f.startswith("results_") for _, _, fs in os.walk(folder) for f in fs)


def cli() -> None:
    cfg = parse_config(StudyConfig, prog="python -m experiments.study")
    main(apply_preset(cfg, sys.argv[1:]))


if __name__ == "__main__":
    run_main(cli)
