"""Is it the pause, or the missing separator? The equal-compute gain against its first objection.

Every no-pause baseline of the equal-compute experiment answers at the position of its question's last number,
with no token between question and answer. Here every arm starts from its seed's StdPT or PausePT (the cpu
study's recipe, --n_layer layers of width 64) and is finetuned on as many finetuning FLOPs as PausePT_PauseFT
with 12 pauses in 2500 steps (the FLOPs ledger: steps whose batches sum closest), then compared at M_inf = its M:
  StdFT_flops        StdPT, nothing between question and answer (the equal-compute baseline)
  SepFT_1, SepFT_3   StdPT finetuned and evaluated with 1 or 3 separator tokens (an ordinary word: --separator)
  PauseFT_1, _3      PausePT finetuned and evaluated with 1 or 3 pauses
  PausePT_PauseFT    PausePT with 12 pauses, 2500 steps (the budget)
Splits: val (where the best baseline is chosen), test, and fresh_test_2 (synth.FRESH_TEST_2: a new seed, checked
disjoint from every split, corpus and earlier test split), the registered test split (docs/RESULTS.md). --kind=
second runs the same arms on the second task (the second-largest number), --n_layer at another depth.

    python -m experiments.separator --out_dir=out/separator --seeds=5 --jobs=2     # every run of 5 seeds
    python -m experiments.separator --out_dir=out/separator --seeds=5 --aggregate  # separator.md/.json
"""
import dataclasses
import fcntl
import functools
import json
import os
import statistics
import time
from dataclasses import dataclass

from matplotlib.ticker import ScalarFormatter

import plots
from plots import fmt_num
from config import DEVICES, DTYPES, UserError, check_config, opt, parse_config, run_main
from experiments import figures, lab, synth
from experiments.lab import arm
from model import GPTConfig
from runtime import write_json, write_text
from tokenizer import from_meta, padded_vocab

PAUSE_ARM, M = "PausePT_PauseFT", 12
BASELINES = ("StdFT_flops", "SepFT_1", "SepFT_3")  # the primary test's B is the best of these on val
SPLITS = ("val", "test", "fresh_test_2")


@dataclass
class SeparatorConfig:
    """Pause arms against separator and no-pause arms at equal finetuning FLOPs; see the module doc."""
    out_dir: str = opt("out/separator", "data, pretrainings, seedK/ARM/ runs, separator.md and separator.json")
    kind: str = opt("gap", "the task: gap (largest gap, the registered task) or second (second-largest number)",
                    choices=synth.TASK_KINDS)
    n_layer: int = opt(3, "layers of the 64-wide model (the depth experiment: 1, 2, 3, 6)", ge=1)
    separator: str = opt("\\n", "the separator token of the SepFT arms (one ordinary word of the corpus)")
    seeds: int = opt(5, "seeds 0..N-1", ge=1)
    only_seed: int = opt(-1, "run this seed only (-1 = all)", ge=-1)
    jobs: int = opt(1, "worker processes (pretrainings first, then each arm once its pretraining is finished)", ge=1)
    aggregate: bool = opt(False, "train nothing: collect the finished results, write separator.md/.json")
    cpu_n: list[int] = opt([8, 16], "numbers per question, lo,hi (the registered task: 8 to 16)", ge=2)
    n_fresh: int = opt(1000, "questions of the fresh test split", ge=1)
    max_examples: int = opt(1000, "questions evaluated per split (0 = all)", ge=0)
    task: str = opt("lambada", "the task's format (the synthetic task is written in it)", choices=("lambada",))
    ft_iters: int = opt(2500, "PausePT_PauseFT's steps: the finetuning FLOPs every other arm matches", ge=1)
    ft_batch_size: int = opt(64, "finetuning batch size", ge=1)
    ft_lr: float = opt(1e-3, "finetuning peak learning rate (the cpu study's)", gt=0, le=1)
    m_inf: list[int] = opt([M], "unused: each arm is evaluated at its own M", ge=0)
    eval_batch_size: int = opt(256, "sequences per evaluation forward pass", ge=1)
    baseline: str = opt("", "experiment 2: the no-pause or separator arm tuned and swept beside the pause arm",
                        choices=("",) + BASELINES)
    lr_grid: list[float] = opt([], "experiment 2: learning rates tried (seed 0) by the pause arm and --baseline, "
                                   "as arms NAME_lrX; the one with the best val accuracy is chosen", gt=0, le=1)
    curve: list[float] = opt([], "experiment 2: --baseline at these multiples of the pause arm's finetuning FLOPs "
                                 "(arms NAME_xM, at --baseline_lr), e.g. 1,2,4", gt=0)
    pause_curve: list[float] = opt([], "experiment 2: the pause arm at these multiples (at --pause_lr), e.g. 0.5,1,2",
                                   gt=0)
    pause_lr: float = opt(1e-3, "experiment 2: the pause arm's learning rate on the curve", gt=0, le=1)
    baseline_lr: float = opt(1e-3, "experiment 2: --baseline's learning rate on the curve", gt=0, le=1)
    only_arms: list[str] = opt([], "run and report only these registered arms (default: all six); the pause arm "
                                   "always runs", choices=(PAUSE_ARM,) + BASELINES + ("PauseFT_1", "PauseFT_3"))
    depths_from: list[str] = opt([], "experiment 4: no runs; read the separator.json of these out_dirs (one per "
                                     "depth) and write depth.md and depth.png into out_dir")
    device: str = opt("auto", "where to run", choices=DEVICES)
    dtype: str = opt("auto", "auto: bfloat16 on GPU, float32 on CPU", choices=DTYPES)


def arms(cfg: SeparatorConfig) -> list[dict]:
    """The registered arms, each compared (and evaluated) at its own M; with --lr_grid and --curve, the pause arm
    and --baseline again at other learning rates (`lr`) and FLOPs multiples (`mult`)."""
    base = [arm(PAUSE_ARM, "PausePT", M, eval_at=[M]),
            arm("StdFT_flops", "StdPT", 0, eval_at=[0]),
            *[arm(f"SepFT_{k}", "StdPT", k, filler=cfg.separator, eval_at=[k]) for k in (1, 3)],
            *[arm(f"PauseFT_{k}", "PausePT", k, eval_at=[k]) for k in (1, 3)]]
    if cfg.only_arms:
        base = [v for v in base if v["name"] in (PAUSE_ARM, *cfg.only_arms)]
    tuned = [v for v in base if v["name"] in (PAUSE_ARM, cfg.baseline)]
    extra = [{**v, "name": f"{v['name']}_lr{lr:g}", "lr": lr, "seeds": [0]} for v in tuned for lr in cfg.lr_grid]
    for v in tuned:
        lr = cfg.pause_lr if v["name"] == PAUSE_ARM else cfg.baseline_lr
        for m in cfg.pause_curve if v["name"] == PAUSE_ARM else cfg.curve:
            # 1x at the study's rate is the registered arm itself: its checkpoint is reused, not trained again
            same = {"source": v["name"]} if m == 1 and lr == cfg.ft_lr else {}
            extra.append({**v, "name": f"{v['name']}_x{m:g}", "mult": m, "lr": lr, **same})
    return base + extra


def chosen_lr(rows: list[dict], name: str) -> float | None:
    """The learning rate of NAME_lrX with the best mean accuracy on val (only val decides)."""
    val = {r["lr"]: r["mean"] for r in rows if r["split"] == "val" and r["arm"].startswith(f"{name}_lr")}
    return max(val, key=val.get) if val else None


def data_files(cfg: SeparatorConfig) -> dict[str, str]:
    """The task, corpus and prepared shards (lab.cpu_data), then the first and the second fresh test split, once."""
    files = lab.cpu_data(cfg.out_dir, cfg.cpu_n, cfg.task, (f"--task_kind={cfg.kind}",))
    lo, hi = (int(a.split("=")[1]) for a in lab.CPU_SYNTH[:2])
    task_dir = os.path.dirname(files["test"])
    with open(os.path.join(cfg.out_dir, ".data.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name, seed in ((synth.FRESH_TEST, synth.FRESH_TEST_SEED), (synth.FRESH_TEST_2, synth.FRESH_TEST_2_SEED)):
            if not os.path.exists(os.path.join(task_dir, name)):
                info = synth.write_fresh_test(task_dir, cfg.n_fresh, cfg.cpu_n, lo, hi, cfg.task, seed, name, cfg.kind)
                print(f"{name}: {info['n']} questions, seed {seed}, disjoint from {', '.join(info['checked_against'])}")
    return {**files, "fresh_test_2": os.path.join(task_dir, synth.FRESH_TEST_2)}


def budgeted(cfg: SeparatorConfig, seed: int, files: dict[str, str], pre: dict[str, str]) -> list[dict]:
    """The arms with their steps: PausePT_PauseFT's ft_iters, every other arm the steps whose finetuning FLOPs
    come closest to PausePT_PauseFT's (from the batches alone, before any finetuning)."""
    tok = from_meta(json.load(open(os.path.join(files["data"], "meta.json")))["tokenizer"])
    p = {**lab.CPU_PRETRAIN, "n_layer": cfg.n_layer}
    conf = GPTConfig(block_size=p["block_size"], vocab_size=padded_vocab(tok.vocab_size), n_layer=p["n_layer"],
                     n_head=p["n_head"], n_embd=p["n_embd"], pause_id=tok.pause_id)
    probe = lambda v: lab.ft_config(os.path.join(cfg.out_dir, "probe"), pre[v["pt"]], cfg.task, files["train"], seed,
                                    1, cfg.ft_batch_size, cfg.ft_lr, v["m_ft"], filler=v.get("filler", ""))
    budget = lab.ft_flops(probe(arms(cfg)[0]), tok, conf, cfg.ft_iters)
    return [{**v, "steps": cfg.ft_iters if v["name"] == PAUSE_ARM else
             lab.matched_steps(probe(v), tok, conf, budget * v.get("mult", 1))} for v in arms(cfg)]


def pretrain(cfg: SeparatorConfig, seed: int, files: dict[str, str]) -> dict[str, str]:
    return {pt: lab.cpu_pretrain(cfg.out_dir, seed, files["data"], pt, cfg.device, cfg.dtype, n_layer=cfg.n_layer)
            for pt in ("StdPT", "PausePT")}


def run_stage(cfg: SeparatorConfig, seed: int, name: str) -> None:
    """One pretraining, or one arm finetuned and evaluated on every split, of one seed."""
    done = os.path.join(cfg.out_dir, f"seed{seed}", name, "results_{}.json")
    if name not in ("StdPT", "PausePT") and all(os.path.exists(done.format(s)) for s in SPLITS):
        v = next(v for v in arms(cfg) if v["name"] == name)
        lab.check_rate(os.path.join(cfg.out_dir, f"seed{seed}", v.get("source", name)), v.get("lr", cfg.ft_lr))
        return  # its results files are written last: nothing to budget, train or evaluate again
    files = data_files(cfg)
    if name in ("StdPT", "PausePT"):
        lab.cpu_pretrain(cfg.out_dir, seed, files["data"], name, cfg.device, cfg.dtype, n_layer=cfg.n_layer)
        return
    pre = pretrain(cfg, seed, files)
    lab.run_arms(cfg, seed, pre, files, [v for v in budgeted(cfg, seed, files, pre) if v["name"] == name])


def seeds_of_arm(v: dict, seeds: list[int]) -> list[int]:
    return [s for s in seeds if s in v.get("seeds", seeds)]


def summarise(cfg: SeparatorConfig, records: list[dict]) -> dict:
    """Per arm and split: accuracy mean ± std over seeds and both FLOPs axes; the primary test; the frontier."""
    at = [r for r in records if r["m_inf"] == r["m_ft"] and r["metric"] == "em"]
    rows = []
    for split in SPLITS:
        for v in arms(cfg):
            rs = [r for r in at if r["variant"] == v["name"] and r["split"] == split]
            if rs:
                vals = [r["value"] for r in rs]
                rows.append({"arm": v["name"], "split": split, "m": v["m_ft"], "n_seeds": len(rs),
                             "lr": v.get("lr", cfg.ft_lr), "mult": v.get("mult", 1),
                             "mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                             "steps": statistics.fmean(r["ft_iters"] for r in rs),
                             **{k: statistics.fmean(r[k] for r in rs) for k in
                                ("train_flops", "ft_flops", "infer_flops_per_example")}})
    val = {r["arm"]: r["mean"] for r in rows if r["split"] == "val" and r["arm"] in BASELINES}
    best = max(val, key=val.get) if val else None
    pairs = [{"arm": PAUSE_ARM, "vs": b, "split": s, **lab.paired_stats(diffs(at, s, PAUSE_ARM, b))}
             for s in SPLITS for b in BASELINES]
    primary = next((p for p in pairs if p["vs"] == best and p["split"] == "fresh_test_2"), None)
    tuning = {n: chosen_lr(rows, n) for n in (PAUSE_ARM, cfg.baseline) if n and cfg.lr_grid}
    # experiment 2: the pause arm at 1x (its chosen rate) against --baseline at each multiple, with the verdict
    curve = [{"arm": f"{PAUSE_ARM}_x1", "vs": f"{cfg.baseline}_x{m:g}", "split": "fresh_test_2",
              **lab.paired_stats(diffs(at, "fresh_test_2", f"{PAUSE_ARM}_x1", f"{cfg.baseline}_x{m:g}"))}
             for m in cfg.curve if 1 in cfg.pause_curve]
    for c in curve:
        c["verdict"] = lab.verdict(c, cfg.seeds)
    # descriptive, not registered: the two arms at each other multiple both ran (equal finetuning FLOPs there)
    same = [{"arm": f"{PAUSE_ARM}_x{m:g}", "vs": f"{cfg.baseline}_x{m:g}", "split": "fresh_test_2",
             **lab.paired_stats(diffs(at, "fresh_test_2", f"{PAUSE_ARM}_x{m:g}", f"{cfg.baseline}_x{m:g}"))}
            for m in cfg.curve if m in cfg.pause_curve and m != 1]
    return {"chosen_lr_on_val": tuning, "curve_paired": curve, "curve_same_multiple": same,
            "config": {k: v for k, v in vars(cfg).items() if k != "out_dir"}, "best_baseline_on_val": best,
            "primary": primary, "verdict": lab.verdict(primary, cfg.seeds) if primary else "no val results",
            "rows": rows, "paired": pairs, "frontier": {s: frontier([r for r in rows if r["split"] == s])
                                                        for s in SPLITS}, "records": records}


def diffs(records: list[dict], split: str, arm_name: str, base: str) -> list[float]:
    at = {(r["variant"], r["seed"]): r["value"] for r in records if r["split"] == split}
    return [at[(arm_name, s)] - at[(base, s)] for s in sorted({s for _, s in at}) if (arm_name, s) in at
            and (base, s) in at]


def frontier(rows: list[dict], within: float = 0.01) -> dict | None:
    """The best arm of a split and the cheapest (inference FLOPs per example) arm within `within` of it."""
    if not rows:
        return None
    best = max(rows, key=lambda r: r["mean"])
    near = [r for r in rows if r["mean"] >= best["mean"] - within]
    return {"best": best["arm"], "cheapest_within_1_point": min(near, key=lambda r: r["infer_flops_per_example"])["arm"]}


def pair_table(pairs: list[dict], verdict: bool = False) -> list[str]:
    """Paired differences (lab.paired_stats) as a markdown table, in points; with each one's verdict if asked."""
    return lab.md_table(
        ["arm", "vs", "split", "seeds", "mean diff", "stderr", "mean/stderr", "+ / −"] + ["verdict"] * verdict,
        [[q["arm"], q["vs"], q["split"], q["n_seeds"], fmt_num(100 * q["mean_diff"], "+.1f"),
          fmt_num(100 * q["stderr"]), fmt_num(q["t"], ".2f"), f"{q['wins']} / {q['losses']}"]
         + ([q["verdict"]] if verdict else []) for q in pairs])


def write_report(cfg: SeparatorConfig, summary: dict, wall_s: float | None) -> None:
    p = summary["primary"]
    lines = [f"# Is it the pause, or the missing separator? {cfg.kind} task, {cfg.n_layer} layers, "
             f"{len({r['seed'] for r in summary['records']})} seed(s)", "",
             f"Wall time of this pass: {wall_s / 60:.1f} min." if wall_s else "Wall time: see the run's log.", ""]
    if p:
        lines += [f"**Primary test** (fresh_test_2): {PAUSE_ARM} minus {summary['best_baseline_on_val']} (the best "
                  f"of {', '.join(BASELINES)} on val): {100 * p['mean_diff']:+.1f} points, stderr "
                  f"{fmt_num(100 * p['stderr'])}, mean/stderr {fmt_num(p['t'], '.2f')}, seeds + / −: {p['wins']} / "
                  f"{p['losses']} -> **{summary['verdict']}**.", ""]
    for split in SPLITS:
        rows = [r for r in summary["rows"] if r["split"] == split]
        if rows:
            lines += [f"### {split} split (exact match %, mean ± std over seeds)", ""] + lab.md_table(
                ["arm", "M", "steps", "accuracy %", "training TFLOPs", "of which finetuning", "inference MFLOPs/example"],
                [[r["arm"], r["m"], f"{r['steps']:.0f}", f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}",
                  f"{r['train_flops'] / 1e12:.3f}", f"{r['ft_flops'] / 1e12:.3f}",
                  f"{r['infer_flops_per_example'] / 1e6:.3f}"] for r in rows])
            f = summary["frontier"][split]
            lines += ["", f"Best: {f['best']}; cheapest within 1 point of it: {f['cheapest_within_1_point']}.", ""]
    lines += ["Paired differences (same seed), in points:", ""] + pair_table(
        [q for q in summary["paired"] if q["n_seeds"]])
    if summary["curve_paired"]:
        lines += ["", "Experiment 2, at the chosen rates (" + ", ".join(f"{k}: {v:g}" for k, v in
                  summary["chosen_lr_on_val"].items()) + " on seed 0's val):", ""] + pair_table(
            summary["curve_paired"], verdict=True)
    if summary.get("curve_same_multiple"):
        lines += ["", "Descriptive (not registered): both arms at the same other multiple:", ""] + pair_table(
            summary["curve_same_multiple"])
    write_text(os.path.join(cfg.out_dir, "separator.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(cfg: SeparatorConfig) -> dict | None:
    check_config(cfg)
    if cfg.depths_from:
        os.makedirs(cfg.out_dir, exist_ok=True)
        return depth_report(cfg)
    if (cfg.lr_grid or cfg.curve or cfg.pause_curve) and not cfg.baseline:
        raise UserError("--lr_grid and --curve tune and sweep the pause arm beside --baseline: name it")
    if len(cfg.separator.replace("\\n", "\n").split(" ")) != 1:
        raise UserError(f"--separator must be one word, got {cfg.separator!r}")
    t0, seeds = time.time(), lab.seeds_of(cfg)
    os.makedirs(cfg.out_dir, exist_ok=True)
    with lab.own_seeds(cfg.out_dir, [] if cfg.aggregate else seeds):  # one experiment at a time per seed folder
        if not cfg.aggregate:
            data_files(cfg)  # once, before any worker
            plan = [((s, pt), []) for pt in ("StdPT", "PausePT") for s in seeds]
            plan += [((s, v["name"]), [(s, v["pt"])]) for v in arms(cfg) for s in seeds_of_arm(v, seeds)]
            if cfg.jobs > 1:
                lab.run_pool(plan, functools.partial(run_stage, cfg),
                             lambda key: os.path.join(cfg.out_dir, f"seed{key[0]}", f"{key[1]}.out"), cfg.jobs, "runs")
            else:
                for (seed, name), _ in plan:
                    run_stage(cfg, seed, name)
            write_json(os.path.join(cfg.out_dir, f"time_{'_'.join(map(str, seeds))}.json"),
                       {"seeds": seeds, "jobs": cfg.jobs, "start": t0, "end": time.time()})
    if cfg.only_seed >= 0:
        return None
    records = []
    for seed in seeds:
        records += lab.run_arms(dataclasses.replace(cfg, aggregate=True), seed, {}, {},
                                [v for v in arms(cfg) if seed in seeds_of_arm(v, [seed])])
    if not records:
        raise UserError(f"no results under {cfg.out_dir}/seed*/: run without --aggregate first")
    summary = summarise(cfg, records)
    write_json(os.path.join(cfg.out_dir, "separator.json"), summary)
    write_report(cfg, summary, None if cfg.aggregate else time.time() - t0)
    if cfg.curve or cfg.pause_curve:
        curve_plot(summary["rows"], cfg, os.path.join(cfg.out_dir, "flops_curve.png"))
    return summary


def curve_plot(rows: list[dict], cfg: SeparatorConfig, out_png: str) -> None:
    """Accuracy on fresh_test_2 against finetuning FLOPs: the pause arm and --baseline at each multiple (the
    registered arms at 1x, the learning rate of the study, are left out: the curve is at the chosen rates)."""
    fig, ax = plots.plt.subplots(figsize=(6, 4))
    data = {}
    for i, (name, lr) in enumerate(((PAUSE_ARM, cfg.pause_lr), (cfg.baseline, cfg.baseline_lr))):
        pts = sorted(((r["ft_flops"], 100 * r["mean"], 100 * r["std"]) for r in rows if r["split"] == "fresh_test_2"
                      and r["arm"].startswith(f"{name}_x")))
        if pts:
            ax.errorbar(*zip(*[(x / 1e12, y) for x, y, _ in pts]), yerr=[e for *_, e in pts], marker=plots.MARKERS[i],
                        capsize=3, label=f"{name} (lr {lr:g})", color=figures.arm_color(name))
            data[name] = [{"ft_flops": x, "accuracy": y, "std": e} for x, y, e in pts]
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())  # 2, 5, 10: not 2 x 10^0
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.set(xlabel="finetuning TFLOPs (ledger)", ylabel="exact match % (fresh_test_2)",
           title="accuracy against finetuning FLOPs (mean ± std over seeds)")
    ax.legend(fontsize=8)
    plots.save_figure(fig, out_png, {"series": data})


def depth_report(cfg: SeparatorConfig) -> dict:
    """Experiment 4: at each depth's out_dir, PausePT_PauseFT against the best baseline on val (the registered
    comparison, t by its seeds) and, descriptive, against StdFT_flops (the bare layout): depth.md/.png."""
    rows = []
    for d in cfg.depths_from:
        s = json.load(open(os.path.join(d, "separator.json")))
        at = {(r["arm"], r["split"]): r for r in s["rows"]}
        p, best = s["primary"], s["best_baseline_on_val"]
        bare = next(q for q in s["paired"] if q["vs"] == "StdFT_flops" and q["split"] == "fresh_test_2")
        rows.append({"n_layer": s["config"]["n_layer"], "pause": at[(PAUSE_ARM, "fresh_test_2")]["mean"],
                     "baseline": best, "baseline_acc": at[(best, "fresh_test_2")]["mean"],
                     "bare_acc": at[("StdFT_flops", "fresh_test_2")]["mean"], "bare_diff": bare["mean_diff"],
                     "bare_stderr": bare["stderr"], "verdict": lab.verdict(p, p["n_seeds"]), **p})
    rows.sort(key=lambda r: r["n_layer"])
    lines = ["# Depth: PausePT_PauseFT against the best baseline on val (fresh_test_2, exact match %)", ""]
    lines += lab.md_table(["layers", "seeds", "PausePT_PauseFT", "best baseline (val)", "its accuracy", "mean diff",
                           "stderr", "mean/stderr", "+ / −", "verdict", "StdFT_flops", "pause − StdFT_flops"],
                          [[r["n_layer"], r["n_seeds"], f"{100 * r['pause']:.1f}", r["baseline"],
                            f"{100 * r['baseline_acc']:.1f}", fmt_num(100 * r["mean_diff"], "+.1f"),
                            fmt_num(100 * r["stderr"]), fmt_num(r["t"], ".2f"), f"{r['wins']} / {r['losses']}",
                            r["verdict"], f"{100 * r['bare_acc']:.1f}",
                            f"{fmt_num(100 * r['bare_diff'], '+.1f')} ± {fmt_num(100 * r['bare_stderr'])}"]
                           for r in rows])
    write_text(os.path.join(cfg.out_dir, "depth.md"), "\n".join(lines) + "\n")
    fig, ax = plots.plt.subplots(figsize=(6, 4))
    for i, (key, label, colour) in enumerate((("pause", PAUSE_ARM, PAUSE_ARM),
                                              ("baseline_acc", "best baseline on val", "SepFT_1"),
                                              ("bare_acc", "StdFT_flops (nothing before the answer)",
                                               "StdFT_flops"))):
        ax.plot([r["n_layer"] for r in rows], [100 * r[key] for r in rows], marker=plots.MARKERS[i], label=label,
                color=figures.arm_color(colour))
    ax.set(xlabel="layers (width 64)", ylabel="exact match % (fresh_test_2)",
           title="accuracy against depth at equal training FLOPs (mean over seeds)")
    ax.set_xticks([r["n_layer"] for r in rows])
    ax.legend(fontsize=8)
    plots.save_figure(fig, os.path.join(cfg.out_dir, "depth.png"), {"rows": rows})
    print("\n".join(lines))
    return {"rows": rows}

if __name__ == "__main__":
    run_main(lambda: main(parse_config(SeparatorConfig, prog="python -m experiments.separator")))
