"""Pauses at equal compute: an experiment whose every result carries its FLOPs (flops.py), each
pause arm paired, seed by seed, with no-pause baselines matched in training and in inference FLOPs.

  curriculum  the cpu study's largest-gap task, corpus and 3-layer StdPT pretraining (study.py --preset=cpu);
              finetuning arms: StdFT; PauseFT (M_ft = 12); CurriculumFT (curriculum.py: a sorted-numbers chain of
              thought replaced by pauses stage by stage, ending in PauseFT's format); StdFT_matched (as many
              finetuning FLOPs as PauseFT); Deep_StdFT (the fewest layers whose inference FLOPs per example reach
              PauseFT's, pretrained and finetuned on as many FLOPs as the 3-layer PauseFT route).

(Parity, the capability-separation experiment, is experiments/separation.py.)

Every arm of every seed is its own folder and can run as its own process; a second call reuses finished work:

    python -m experiments.compute_study --experiment=curriculum --only_seed=0                  # one seed, every arm
    python -m experiments.compute_study --experiment=curriculum --only_seed=0 --only_arm=PauseFT
    python -m experiments.compute_study --experiment=curriculum --seeds=5 --aggregate          # summary.md/json + two plots

(Arms of one seed share its pretraining: to run them in parallel, run --only_arm=pretrain first.)
"""
import dataclasses
import json
import os
import statistics
import time
from dataclasses import dataclass


import checkpoint
import data
import eval as evaluation
import finetune
import flops
import tasks
import train
from config import DEVICES, UserError, check_config, opt, parse_config, run_main
from runtime import write_json, write_text
from experiments import lab, report, synth
from experiments.curriculum import COT_KINDS, CurriculumConfig, CurriculumData
from experiments.lab import CPU_PRETRAIN, CPU_SYNTH, deeper, finished
from model import GPTConfig
from plots import fmt_num
from tokenizer import from_meta, padded_vocab

EXPERIMENTS = {  # arm -> (which model, M_ft, finetuning options); the first arm of each pair list is the reference
    "curriculum": ["StdFT", "PauseFT", "CurriculumFT", "StdFT_matched", "Deep_StdFT"],
}
PAUSE_ARMS = {"curriculum": ["PauseFT", "CurriculumFT"]}
MATCHED = {"curriculum": ["StdFT_matched", "Deep_StdFT"]}


@dataclass
class ComputeStudyConfig:
    """An experiment that looks for a pause gain surviving compute matching; see the module doc."""
    experiment: str = opt("curriculum", "which experiment", choices=tuple(EXPERIMENTS))
    out_dir: str = opt("out/compute", "results go to OUT_DIR/EXPERIMENT/ (seedK/ARM/, summary.md, summary.json, plots)")
    seeds: int = opt(5, "seeds 0..N-1 (each a fresh pretraining, finetuning and initialisation)", ge=1)
    only_seed: int = opt(-1, "run this seed only (-1 = all); for running seeds as separate processes", ge=-1)
    only_arm: str = opt("", "run this arm only ('pretrain' = the seed's pretraining only); default all")
    aggregate: bool = opt(False, "train nothing: collect the finished runs of --seeds and write the summary and plots")
    pt_iters: int = opt(CPU_PRETRAIN["max_iters"], "curriculum: pretraining steps of the 3-layer StdPT (config/tiny.toml; "
                                                   "the deep model gets as many FLOPs)")
    m_ft: int = opt(12, "curriculum: pauses of PauseFT and CurriculumFT (the CoT is 12 sorted numbers)", ge=1)
    ft_iters: int = opt(2500, "curriculum: finetuning steps of StdFT, PauseFT and CurriculumFT", ge=1)
    ft_batch_size: int = opt(64, "curriculum: finetuning batch size", ge=1)
    ft_lr: float = opt(1e-3, "curriculum: finetuning peak learning rate", gt=0, le=train.MAX_LR)
    cot: str = opt("sorted", "curriculum: the chain of thought (curriculum.py)", choices=COT_KINDS)
    cot_frac: float = opt(0.5, "curriculum: share of the steps walking the CoT stages", gt=0, le=1)
    cot_mix: float = opt(0.3, "curriculum: probability of an example from an earlier stage", ge=0, le=1)
    max_examples: int = opt(1000, "test questions evaluated (0 = all)", ge=0)
    device: str = opt("cpu", "where to run (the budgets above are for 2 CPU cores)", choices=DEVICES)


def mean_step_flops(ft: finetune.FinetuneConfig, tok, conf: GPTConfig, steps: int = 20) -> float:
    """Training FLOPs of one step of a finetuning config, averaged over its first batches (no model needed)."""
    d = data_for(ft)(ft, tok, conf.block_size)
    return statistics.fmean(flops.train_flops(conf, *d.batch(s)[0].shape) for s in range(steps))


def data_for(ft: finetune.FinetuneConfig):
    """The batches of a finetuning arm: the curriculum's for a CurriculumConfig, else finetune.py's own."""
    return CurriculumData if isinstance(ft, CurriculumConfig) else finetune.FinetuneData


def ft_config(cfg: ComputeStudyConfig, out: str, init: str, task_file: str, seed: int, m_ft: int, iters: int,
              **kw) -> finetune.FinetuneConfig:
    return lab.ft_config(out, init, "lambada", task_file, seed, iters, cfg.ft_batch_size, cfg.ft_lr, m_ft, cfg.device,
                         cls=CurriculumConfig if "cot" in kw else finetune.FinetuneConfig, **kw)


def run_ft(ft: finetune.FinetuneConfig) -> None:
    if not finished(os.path.join(ft.out_dir, "ckpt.pt"), ft.max_iters):
        finetune.main(ft, make_data=data_for(ft))


def pretrain(cfg: ComputeStudyConfig, root: str, seed: int, prepared: str, conf: GPTConfig, iters: int, name: str,
             build: bool) -> str:
    """The checkpoint of a StdPT run of the cpu study's recipe at conf's depth (trained first if build and not done)."""
    out = os.path.join(root, f"seed{seed}", name)
    ckpt = os.path.join(out, "ckpt.pt")
    if build and not finished(ckpt, iters):
        overrides = {**CPU_PRETRAIN, "n_layer": conf.n_layer, "max_iters": iters}
        train.main(train.TrainConfig(**overrides, data_dir=prepared, out_dir=out, seed=seed, device=cfg.device,
                                     **checkpoint.resume_or_restart(out)))
    return ckpt


def curriculum_seed(cfg: ComputeStudyConfig, root: str, seed: int, build: bool = True) -> dict[str, dict]:
    """The arms of one seed (arm -> run description); with build, the data and the pretrainings they need first."""
    raw, prepared = os.path.join(root, "synth"), os.path.join(root, "data")
    if not os.path.exists(os.path.join(prepared, "meta.json")):
        # fixed n = 12: the chain of thought (the sorted numbers) then has exactly M_ft = 12 tokens
        synth.main(CPU_SYNTH + ["--n=12", "--corpus_n=4,12", "--layout=lambada", f"--out_dir={raw}"])
        data.prepare(data.PrepareConfig(input=[os.path.join(raw, synth.TRAIN_CORPUS)],
                                        val_input=[os.path.join(raw, synth.VAL_CORPUS)], out_dir=prepared,
                                        tokenizer="word", workers=1))
    meta = data.load_meta(prepared)
    tok = from_meta(meta["tokenizer"])
    conf = GPTConfig(block_size=CPU_PRETRAIN["block_size"], vocab_size=padded_vocab(tok.vocab_size),
                     n_layer=CPU_PRETRAIN["n_layer"], n_head=CPU_PRETRAIN["n_head"], n_embd=CPU_PRETRAIN["n_embd"],
                     pause_id=tok.pause_id)
    train_file = os.path.join(raw, "train.jsonl")
    prompt_len = len(tok.encode(tasks.load_task("lambada", train_file)[0].prefix))  # every question has n numbers
    deep = deeper(conf, prompt_len, 2, cfg.m_ft)  # answer word + EOT decoded
    pt_step = lambda c: flops.train_flops(c, CPU_PRETRAIN["batch_size"], c.block_size)
    deep_pt_iters = round(cfg.pt_iters * pt_step(conf) / pt_step(deep))
    std = pretrain(cfg, root, seed, prepared, conf, cfg.pt_iters, "StdPT",
                   build and cfg.only_arm != "Deep_StdFT")
    deep_ckpt = pretrain(cfg, root, seed, prepared, deep, deep_pt_iters, "StdPT_deep",
                         build and cfg.only_arm in ("", "pretrain", "Deep_StdFT"))
    base = lambda arm, init, m, iters, **kw: ft_config(cfg, os.path.join(root, f"seed{seed}", arm), init, train_file,
                                                       seed, m, iters, **kw)
    pause = base("PauseFT", std, cfg.m_ft, cfg.ft_iters)
    plain = base("StdFT", std, 0, cfg.ft_iters)
    pause_flops = mean_step_flops(pause, tok, conf) * cfg.ft_iters
    runs = {"StdFT": plain, "PauseFT": pause,
            "CurriculumFT": base("CurriculumFT", std, cfg.m_ft, cfg.ft_iters, cot=cfg.cot, cot_frac=cfg.cot_frac,
                                 cot_mix=cfg.cot_mix),
            "StdFT_matched": base("StdFT_matched", std, 0, round(pause_flops / mean_step_flops(plain, tok, conf))),
            "Deep_StdFT": base("Deep_StdFT", deep_ckpt, 0, round(pause_flops / mean_step_flops(plain, tok, deep)))}
    return {arm: {"ft": ft, "pt_log": os.path.join(os.path.dirname(ft.init_from), "log.jsonl"), "m_inf": int(ft.m_ft),
                  "n_layer": (deep if arm == "Deep_StdFT" else conf).n_layer} for arm, ft in runs.items()}


def run_arm(cfg: ComputeStudyConfig, root: str, seed: int, arm: str, run: dict) -> dict:
    """Finetune (if not done), evaluate at M_inf = M_ft (if not done), and return the arm's record with its FLOPs."""
    ft = run["ft"]
    run_ft(ft)
    res_path = os.path.join(ft.out_dir, "results.json")
    if os.path.exists(res_path):
        res = json.load(open(res_path))
    else:
        res = evaluation.main(evaluation.EvalConfig(
            ckpt=os.path.join(ft.out_dir, "ckpt.pt"), task="lambada", task_file=os.path.join(root, "synth", "test.jsonl"), m_inf=[run["m_inf"]],
            max_examples=cfg.max_examples, batch_size=256, max_new_tokens=4, out=res_path, device=cfg.device))
    ledger = flops.run_totals(os.path.join(ft.out_dir, "log.jsonl"))
    pre = flops.run_totals(run["pt_log"]) if run["pt_log"] else dict.fromkeys(flops.Ledger.KEYS, 0)
    return {"arm": arm, "seed": seed, "value": res[0]["value"], "m_inf": run["m_inf"], "n_layer": run["n_layer"],
            "ft_iters": ft.max_iters, "ft_flops": ledger["train_flops"], "pt_flops": pre["train_flops"],
            "train_flops": ledger["train_flops"] + pre["train_flops"],
            "infer_flops": res[0]["infer_flops_per_example"],
            **{f"ft_{k}": ledger[k] for k in ("real_tokens", "pause_tokens", "pad_tokens")}}


def paired(records: list[dict], arm: str, baseline: str) -> dict | None:
    """arm minus baseline, seed by seed (lab.paired_stats); None where no seed has both."""
    at = {(r["arm"], r["seed"]): r["value"] for r in records}
    diffs = [at[(arm, s)] - at[(baseline, s)] for s in sorted({r["seed"] for r in records})
             if (arm, s) in at and (baseline, s) in at]
    return {"arm": arm, "vs": baseline, **lab.paired_stats(diffs)} if diffs else None


def summarise(cfg: ComputeStudyConfig, root: str, records: list[dict], arms: list[str]) -> dict:
    """summary.json, summary.md (per-arm table with FLOPs, paired differences) and the two FLOPs plots."""
    rows = []
    for arm in arms:
        rs = [r for r in records if r["arm"] == arm]
        if not rs:
            continue
        vals = [r["value"] for r in rs]
        rows.append({"arm": arm, "n_seeds": len(rs), "mean": statistics.fmean(vals),
                     "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                     **{k: statistics.fmean(r[k] for r in rs) for k in ("train_flops", "pt_flops", "ft_flops", "infer_flops",
                                                                       "ft_real_tokens", "ft_pause_tokens", "ft_pad_tokens")},
                     "m_inf": rs[0]["m_inf"], "n_layer": rs[0]["n_layer"], "ft_iters": rs[0]["ft_iters"]})
    pairs = [p for a in PAUSE_ARMS[cfg.experiment] for b in [arms[0]] + MATCHED[cfg.experiment]
             if (p := paired(records, a, b))]
    summary = {"experiment": cfg.experiment, "config": report.relative_out_dir(dataclasses.asdict(cfg)), "arms": rows, "paired": pairs,
               "records": records}
    write_json(os.path.join(root, "summary.json"), summary)
    n_seeds = len({r["seed"] for r in records})
    lines = [f"# Pauses at equal compute: {cfg.experiment}, {n_seeds} seed(s)", "",
             "Exact match on the test questions at M_inf = M_ft, mean ± std over seeds. FLOPs from flops.py: training "
             "= pretraining + finetuning as the ledger counted them; inference = per test example.", "",
             "| arm | layers | M | steps | EM % | train TFLOPs | of which finetuning | inference MFLOPs/example | "
             "finetuning tokens real / pause / pad (M) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['n_layer']} | {r['m_inf']} | {r['ft_iters']} | {100 * r['mean']:.1f} ± "
                     f"{fmt_num(100 * r['std']) if r['n_seeds'] > 1 else '—'} | {r['train_flops'] / 1e12:.2f} | {r['ft_flops'] / 1e12:.2f} | "
                     f"{r['infer_flops'] / 1e6:.2f} | {r['ft_real_tokens'] / 1e6:.2f} / {r['ft_pause_tokens'] / 1e6:.2f} / "
                     f"{r['ft_pad_tokens'] / 1e6:.2f} |")
    lines += ["", "Paired differences (same seed), in points; stderr = std of the differences / √seeds:", "",
              "| pause arm | vs | seeds | mean diff | stderr | mean/stderr | wins |", "|---|---|---|---|---|---|---|"]
    for p in pairs:
        lines.append(f"| {p['arm']} | {p['vs']} | {p['n_seeds']} | {100 * p['mean_diff']:+.1f} | "
                     f"{fmt_num(100 * p['stderr'])} | {fmt_num(p['t'])} | {p['wins']}/{p['n_seeds']} |")
    write_text(os.path.join(root, "summary.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    report.flops_figures(root, rows, records, report.compute_title(summary["config"]))
    return summary


def main(cfg: ComputeStudyConfig) -> dict | None:
    check_config(cfg)
    arms = EXPERIMENTS[cfg.experiment]
    if cfg.only_arm not in ("", "pretrain", *arms):
        raise UserError(f"--only_arm must be one of pretrain, {', '.join(arms)}; got {cfg.only_arm!r}")
    if cfg.only_seed >= cfg.seeds:
        raise UserError(f"--only_seed={cfg.only_seed} must be below --seeds={cfg.seeds}")
    root = os.path.join(cfg.out_dir, cfg.experiment)
    os.makedirs(root, exist_ok=True)
    seeds = [cfg.only_seed] if cfg.only_seed >= 0 else list(range(cfg.seeds))
    setup = curriculum_seed
    records = []
    for seed in seeds:
        if cfg.aggregate:  # only what is finished
            runs = setup(cfg, root, seed, build=False) if os.path.isdir(os.path.join(root, f"seed{seed}")) else {}
            runs = {a: r for a, r in runs.items() if os.path.exists(os.path.join(r["ft"].out_dir, "results.json"))}
        else:
            t0 = time.time()
            runs = setup(cfg, root, seed)
            if cfg.only_arm == "pretrain":
                continue
            runs = {a: r for a, r in runs.items() if cfg.only_arm in ("", a)}
        records += [run_arm(cfg, root, seed, arm, run) for arm, run in runs.items()]
        if not cfg.aggregate:
            print(f"seed {seed}: {', '.join(runs)} done in {(time.time() - t0) / 60:.1f} min")
    if cfg.aggregate or cfg.only_seed < 0:
        return summarise(cfg, root, records, arms)
    return None


if __name__ == "__main__":
    run_main(lambda: main(parse_config(ComputeStudyConfig, prog="python -m experiments.compute_study")))
