"""What every experiment shares: one shape, arms -> runs per seed -> records -> statistics, tables, figures.

An arm (`arm`) names the pretraining it starts from, how it is finetuned and the M_inf it is compared at. A
study runs its arms for each of its seeds (`seeds_of`: --seeds=N, --only_seed=K, --aggregate), skipping
the runs that are `finished`, in this process or in a pool of workers (`run_pool`); then it pairs its records
seed by seed (`paired_stats`), applies the verdict rule (`verdict`) and writes markdown tables (`md_table`)
with its wall time (`run_time`). The CPU recipe (`CPU_PRETRAIN`, `cpu_data`, `cpu_pretrain`, `ft_config`) and
the compute-matched model shapes (`deeper`, `wider`) are here too, so no study borrows from another.
"""
import contextlib
import dataclasses
import fcntl
import json
import math
import os
import statistics

import data
import eval as evaluation
import finetune
import flops
import tasks
import train
from checkpoint import load_checkpoint, resume_or_restart
from config import UserError, load_toml
from model import GPTConfig
from runtime import lock_dir, write_json
from tokenizer import from_meta
from experiments import synth
from experiments.pool import run_pool  # the studies call it as lab.run_pool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_PRETRAIN = load_toml(train.TrainConfig, os.path.join(REPO, "config", "tiny.toml"))
CPU_SYNTH = ["--lo=0", "--hi=64", "--n_train=20000", "--n_val=1000", "--n_test=1000", "--corpus_docs=2000"]
T_CRIT = 2.78  # two-sided 5 % t with 4 degrees of freedom (5 seeds): the registered criterion
# two-sided 5 % t by degrees of freedom (seeds − 1); beyond 9, df 9's (conservative)
T_CRIT_DF = {1: 12.71, 2: 4.30, 3: 3.18, 4: T_CRIT, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def arm(name: str, start: str, m_inf: int, **how) -> dict:
    """An arm: `name`, the pretraining it starts from (`pt`), the M_inf it is compared at (`m_ft`), and how it is
    finetuned: ft_m (M_ft or lo:hi), filler, prepend, matched (mean pauses whose tokens StdFT matches), or
    source + eval_filler (no training: another arm's checkpoint evaluated with an ordinary token)."""
    return {"name": name, "pt": start, "m_ft": m_inf, **how}


def seeds_of(cfg) -> list[int]:
    """The seeds a run covers: --only_seed=K alone (seeds run as processes of their own), else 0..--seeds-1."""
    return [cfg.only_seed] if cfg.only_seed >= 0 else list(range(cfg.seeds))


@contextlib.contextmanager
def own_seeds(out_dir: str, seeds: list[int]):
    """While a run trains or evaluates, it is the only experiment writing out_dir/seedK for each of its seeds (a
    lock each); a second one is refused in one line. --only_seed=K processes of other seeds run side by side."""
    with contextlib.ExitStack() as held:
        for seed in seeds:
            folder = os.path.join(out_dir, f"seed{seed}")
            os.makedirs(folder, exist_ok=True)
            held.enter_context(lock_dir(folder, "experiment", "experiment"))
        yield


def finished(ckpt: str, steps: int | None = None) -> bool:
    """The run of this checkpoint reached `steps` (default: its own max_iters)."""
    if not os.path.exists(ckpt):
        return False
    meta = load_checkpoint(ckpt)["meta"]
    return meta["step"] >= (meta["config"]["max_iters"] if steps is None else steps)


def check_rate(run_dir: str, lr: float) -> None:
    """A finished finetuning is reused (or aggregated) only under the learning rate it ran at (its log's first line
    holds its config): asking another rate of the same folder would report the old run under the new rate."""
    log = os.path.join(run_dir, "log.jsonl")
    if os.path.exists(log):
        with open(log) as f:
            was = json.loads(f.readline() or "{}").get("config", {}).get("learning_rate")  # empty: killed at start
        if was is not None and was != lr:
            raise UserError(f"{run_dir} was finetuned at lr {was:g}; this run asks {lr:g} of it: use another --out_dir")


# ----------------------------------------------------------------------------- the CPU recipe
def cpu_data(out_dir: str, cpu_n, layout: str, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Generate the synthetic task and corpus into out_dir/synth and prepare the corpus into out_dir/data, once (a
    lock serialises parallel seeds; synth marks itself finished last, so a killed one is redone)."""
    raw, prepared = os.path.join(out_dir, "synth"), os.path.join(out_dir, "data")  # extra: more synth options
    n_lo, n_hi = synth.n_range_of(cpu_n)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, ".data.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(raw, synth.VAL_CORPUS)):  # synth writes it last
            synth.main(CPU_SYNTH + [f"--n={n_lo},{n_hi}", f"--corpus_n=4,{max(n_hi, 12)}", f"--layout={layout}",
                                    f"--out_dir={raw}", *extra])
        # always: prepare is resumable and skips verified shards, so an interrupted one is finished here
        data.prepare(data.PrepareConfig(input=[os.path.join(raw, synth.TRAIN_CORPUS)],
                                        val_input=[os.path.join(raw, synth.VAL_CORPUS)], out_dir=prepared,
                                        tokenizer="word", workers=1))
    return {"data": prepared, **{s: os.path.join(raw, f"{s}.jsonl") for s in ("train", "val", "test")}}


def cpu_pretrain(out_dir: str, seed: int, prepared: str, name: str, device: str = "auto", dtype: str = "auto",
                 **overrides) -> str:
    """out_dir/seedK/NAME/ckpt.pt, config/tiny.toml's pretraining (PausePT* with pause_frac 0.1, *_rope with rotary
    positions), trained or finished first if it is not."""
    out = os.path.join(out_dir, f"seed{seed}", name)
    ckpt = os.path.join(out, "ckpt.pt")
    recipe = {**CPU_PRETRAIN, **({"pos": "rope"} if name.endswith("_rope") else {}), **overrides}
    if not finished(ckpt, recipe["max_iters"]):
        train.main(train.TrainConfig(**recipe, data_dir=prepared, out_dir=out, seed=seed,
                                     pause_frac=0.1 if name.startswith("PausePT") else 0.0, device=device,
                                     dtype=dtype, **resume_or_restart(out)))
    return ckpt


def ft_config(out: str, init: str, task: str, task_file: str, seed: int, iters: int, batch_size: int, lr: float,
              m_ft="0", device: str = "auto", dtype: str = "auto", cls=finetune.FinetuneConfig,
              **how) -> finetune.FinetuneConfig:
    """A finetuning run of the studies' recipe: cosine from lr to lr/10, warmup min(100, steps/10), four
    evaluations; resumed if out holds a checkpoint."""
    return cls(init_from=init, task=task, task_file=task_file, out_dir=out, m_ft=str(m_ft), max_iters=iters,
               batch_size=batch_size, learning_rate=lr, min_lr=lr / 10, warmup_iters=min(100, iters // 10),
               eval_interval=max(1, iters // 4), seed=seed, device=device, dtype=dtype, log_interval=50,
               **resume_or_restart(out), **how)


def deeper(conf: GPTConfig, prompt_len: int, target_len: int, pauses: int) -> GPTConfig:
    """The shallowest deeper copy of conf whose inference FLOPs without pauses reach conf's with `pauses`."""
    goal = flops.infer_flops(conf, prompt_len + pauses, target_len)
    for n_layer in range(conf.n_layer + 1, 64):
        deep = dataclasses.replace(conf, n_layer=n_layer)
        if flops.infer_flops(deep, prompt_len, target_len) >= goal:
            return deep
    raise UserError("no depth below 64 layers matches the pause model's inference FLOPs")


def wider(conf: GPTConfig, prompt_lens: list[int], pauses: int, decoded: int = 2) -> GPTConfig:
    """The copy of conf, width a multiple of n_head, whose mean inference FLOPs without pauses come closest to
    conf's with `pauses` (prompts of prompt_lens, `decoded` tokens: the answer word and the stop token)."""
    cost = lambda c, m: sum(flops.infer_flops(c, p + m, decoded) for p in prompt_lens)
    goal = cost(conf, pauses)
    widths = range(conf.n_embd, 8 * conf.n_embd + 1, conf.n_head)
    return min((dataclasses.replace(conf, n_embd=d) for d in widths), key=lambda c: abs(cost(c, 0) - goal))


def matched_steps(ft: finetune.FinetuneConfig, tok, conf: GPTConfig, target: float) -> int:
    """The number of steps of `ft` whose ledger (its batches, step by step, at conf's size) comes closest to target."""
    data = finetune.FinetuneData(ft, tok, conf.block_size)
    total, step = 0, 0
    while True:
        cost = flops.train_flops(conf, *data.batch(step)[0].shape)
        if total + cost >= target:
            return step + 1 if total + cost - target < target - total else max(step, 1)
        total, step = total + cost, step + 1


def ft_flops(ft: finetune.FinetuneConfig, tok, conf: GPTConfig, steps: int) -> int:
    """The finetuning FLOPs of `steps` steps of `ft`, from its batches alone: what its ledger will sum."""
    data = finetune.FinetuneData(ft, tok, conf.block_size)
    return sum(flops.train_flops(conf, *data.batch(s)[0].shape) for s in range(steps))


# ----------------------------------------------------------------------------- an arm's runs, seed by seed
def run_arms(cfg, seed: int, pre: dict[str, str], files: dict[str, str], runs: list[dict]) -> list[dict]:
    """Finetune and evaluate each arm of `runs` for one seed on every split of `files` (all but train and data),
    the study's way (cfg: a study's config; an arm's own `steps`, `lr` and `eval_at` M_inf list override it);
    finished runs and results files are reused. Returns the records."""
    records = []
    for v in runs:
        ckpt = os.path.join(cfg.out_dir, f"seed{seed}", v.get("source", v["name"]), "ckpt.pt")
        iters = v.get("steps", cfg.ft_iters)
        check_rate(os.path.dirname(ckpt), v.get("lr", cfg.ft_lr))
        if cfg.aggregate:
            records += saved_records(cfg, seed, v)
            continue
        if "matched" in v:
            iters = matched_iters(cfg, files["train"], pre[v["pt"]], v["matched"])
        if "source" not in v and not finished(ckpt, iters):
            finetune.main(ft_config(os.path.dirname(ckpt), pre[v["pt"]], cfg.task, files["train"], seed, iters,
                                    cfg.ft_batch_size, v.get("lr", cfg.ft_lr), v.get("ft_m", v["m_ft"]), cfg.device,
                                    cfg.dtype, filler=v.get("filler", ""), prepend=v.get("prepend", False)))
        for split in [s for s in files if s not in ("train", "data")]:
            if not files.get(split):
                continue
            res_path = os.path.join(cfg.out_dir, f"seed{seed}", v["name"], f"results_{split}.json")
            if os.path.exists(res_path):
                res = json.load(open(res_path))
            else:
                os.makedirs(os.path.dirname(res_path), exist_ok=True)
                res = evaluation.main(evaluation.EvalConfig(
                    ckpt=ckpt, task=cfg.task, task_file=files[split], m_inf=v.get("eval_at", cfg.m_inf),
                    max_examples=cfg.max_examples,
                    filler=v.get("eval_filler", ""), batch_size=cfg.eval_batch_size, out=res_path,
                    device=cfg.device, dtype=cfg.dtype))
            records += [{**{k: x for k, x in r.items() if k != "samples"}, "variant": v["name"], "m_ft": v["m_ft"],
                         "seed": seed, "split": split, "ft_iters": iters,
                         **ledger_fields(os.path.join(os.path.dirname(ckpt), "log.jsonl"), pretrain_log(pre[v["pt"]]))}
                        for r in res]
    return records


def pretrain_log(ckpt: str) -> str:
    """The training log beside a pretraining checkpoint; none for a model this project did not train (gpt2)."""
    return os.path.join(os.path.dirname(ckpt), "log.jsonl") if os.path.isfile(ckpt) else ""


def ledger_fields(ft_log: str, pt_log: str) -> dict:
    """An arm's training FLOPs (its pretraining's + its finetuning's, from the ledgers in their logs) and its
    finetuning tokens, real / pause / pad; nothing for runs logged before the ledger existed."""
    ft = flops.run_totals(ft_log) if os.path.exists(ft_log) else {}
    if not ft.get("train_flops"):
        return {}
    pt = flops.run_totals(pt_log) if os.path.exists(pt_log) else {}
    return {"train_flops": ft["train_flops"] + pt.get("train_flops", 0), "ft_flops": ft["train_flops"],
            **{f"ft_{k}": ft[k] for k in ("real_tokens", "pause_tokens", "pad_tokens")}}


def saved_records(cfg, seed: int, v: dict) -> list[dict]:
    """An arm's records from its results files alone, its steps from its training log (--aggregate)."""
    run = os.path.join(cfg.out_dir, f"seed{seed}", v.get("source", v["name"]))
    if not os.path.exists(os.path.join(run, "log.jsonl")):
        return []
    with open(os.path.join(run, "log.jsonl")) as f:
        iters = max(r.get("step", 0) for r in map(json.loads, f))
    records, folder = [], os.path.join(cfg.out_dir, f"seed{seed}", v["name"])
    found = [f[len("results_"):-len(".json")] for f in os.listdir(folder) if f.startswith("results_")] \
        if os.path.isdir(folder) else []
    for split in sorted(found, key=lambda s: (s != "val", s != "test", s)):
        path = os.path.join(folder, f"results_{split}.json")
        if os.path.exists(path):
            cost = ledger_fields(os.path.join(run, "log.jsonl"),
                                 os.path.join(cfg.out_dir, f"seed{seed}", v["pt"], "log.jsonl"))
            records += [{**{k: x for k, x in r.items() if k != "samples"}, "variant": v["name"], "m_ft": v["m_ft"],
                         "seed": seed, "split": split, "ft_iters": iters, **cost} for r in json.load(open(path))]
    return records


def matched_iters(cfg, train_file: str, ckpt: str, pauses: float) -> int:
    """StdFT steps that feed the model as many input tokens as PauseFT's ft_iters steps with `pauses` pauses
    per example (mean): ft_iters × Σ(prefix + pauses + target) / Σ(prefix + target) over the training file.
    An input is [prefix, pauses, target] (the closing EOT is only a target); padding is left out."""
    tok = from_meta(load_checkpoint(ckpt)["meta"]["tokenizer"])
    examples = tasks.load_task(cfg.task, train_file)
    n_std = sum(len(tok.encode(e.prefix)) + len(tok.encode(e.target)) for e in examples)
    return round(cfg.ft_iters * (n_std + pauses * len(examples)) / n_std)


# ----------------------------------------------------------------------------- statistics and tables
def paired_stats(diffs: list[float]) -> dict:
    """Mean, std, stderr, mean/stderr and wins (> 0) of paired differences over seeds; NaN where undefined."""
    sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    se = sd / math.sqrt(len(diffs)) if diffs else float("nan")
    mean = statistics.fmean(diffs) if diffs else float("nan")
    return {"n_seeds": len(diffs), "diffs": diffs, "mean_diff": mean, "std": sd, "stderr": se,
            "t": mean / se if se > 0 else float("nan"), "wins": sum(d > 0 for d in diffs),
            "losses": sum(d < 0 for d in diffs)}


def verdict(p: dict, seeds: int = 5, t_crit: float | None = None) -> str:
    """The registered rule over paired differences (paired_stats): a gain only if mean/stderr > t_crit (by default
    the two-sided 5 % t of seeds − 1 degrees of freedom: 2.78 for 5 seeds, 4.30 for 3) and every one of `seeds`
    seeds is positive; a loss likewise the other way."""
    if p["n_seeds"] != seeds:
        return f"no verdict: {p['n_seeds']} of {seeds} seeds finished"
    if seeds < 2:
        return "no verdict: one seed"
    t_crit = t_crit or T_CRIT_DF[min(seeds - 1, 9)]
    if p["t"] > t_crit and p["wins"] == seeds:
        return "gain"
    if p["t"] < -t_crit and p["losses"] == seeds:
        return "loss (the no-pause arm is better)"
    return "no gain established"


def md_table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(map(str, r)) + " |" for r in rows]


# ----------------------------------------------------------------------------- wall time
def add_work_s(out_dir: str, seed: int, seconds: float) -> None:
    """Add a pass's training and evaluation seconds to seedK/time.json."""
    path = os.path.join(out_dir, f"seed{seed}", "time.json")
    before = json.load(open(path))["work_s"] if os.path.exists(path) else 0.0
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, {"work_s": before + seconds})


def run_time(out_dir: str, seeds: list[int], pass_s: float, kind: str) -> dict:
    """The run's time, kept apart from this pass's: the seeds' recorded work, else the previous summary's."""
    paths = [os.path.join(out_dir, f"seed{s}", "time.json") for s in seeds]
    found = [json.load(open(p))["work_s"] for p in paths if os.path.exists(p)]
    work = sum(found) if found else None
    prev_path = os.path.join(out_dir, "summary.json")
    prev = json.load(open(prev_path)).get("elapsed_s") if work is None and os.path.exists(prev_path) else None
    source = ("training and evaluation, summed over seeds" if work is not None
              else "from the previous summary of this run" if prev is not None else "not recorded here")
    return {"elapsed_s": work if work is not None else prev, "elapsed_from": source, "pass_s": pass_s, "pass": kind}


def time_line(timing: dict) -> str:
    run = timing.get("elapsed_s")
    src = f" ({timing['elapsed_from']})" if timing.get("elapsed_from") else ""
    said = f"run time {run / 60:.1f} min{src}" if run is not None else "run time not recorded here"
    if timing.get("pass", "ran") == "ran":
        return said
    return f"{said}; this {timing['pass']} pass took {timing['pass_s']:.1f} s"
