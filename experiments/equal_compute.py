"""Equal compute: PausePT_PauseFT (M_ft = M_inf = 12) against no-pause models that spend as much training and
inference compute (the FLOPs ledger, flops.py), on the cpu study's variable-length largest-gap task.

It shares the study's out_dir (study.py --preset=cpu): its data, its StdPT and PausePT pretrainings and its
PausePT_PauseFT and StdPT_StdFT runs, seed by seed. The no-pause arms, each from that seed's StdPT unless said:
  StdFT_flops      StdFT for as many finetuning FLOPs as PausePT_PauseFT (the steps whose summed ledger comes closest)
  StdFT_orderings  StdFT_flops answering K orderings of the question's numbers (the given one first), majority vote;
                   K = the ratio of PausePT_PauseFT's inference FLOPs to StdFT_flops's on val, rounded
  StdFT_pair       two StdFT runs (batch seeds seed and seed + 100), each on half those FLOPs, voting
  Wide_StdFT       a wider StdPT_wide (the width whose inference FLOPs without pauses come closest to PausePT_PauseFT's
                   with them), pretrained on the same tokens (so on more pretraining FLOPs), then StdFT on
                   PausePT_PauseFT's finetuning FLOPs
A vote takes the answer with most votes; a tie goes to the tied answer whose votes' log-probabilities (each the sum
over the answer's tokens and the stop token) add up highest, then to the earliest vote.
Every arm is evaluated on val, test and the fresh test split (synth.write_fresh_test), the pause arm at M_inf = 12,
the others at 0. The primary test (docs/RESULTS.md): PausePT_PauseFT minus the best no-pause arm on val, paired
over seeds on the fresh test split.

    python -m experiments.equal_compute --out_dir=out/study --seeds=5 --jobs=2   # every stage of 5 seeds, 2 workers
    python -m experiments.equal_compute --out_dir=out/study --only_seed=0        # or one seed per process
    python -m experiments.equal_compute --out_dir=out/study --seeds=5 --aggregate
"""
import dataclasses
import fcntl
import functools
import json
import os
import random
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

import checkpoint
import eval as evaluation
import finetune
import flops
import metrics
import tasks
import train
from checkpoint import load_model
from config import DEVICES, check_config, opt, parse_config, run_main
from runtime import setup_runtime, write_json
from experiments import lab, study, synth
from experiments.equal_compute_report import ARMS, M_FT, PAUSE_ARM, SPLITS, report
from experiments.lab import CPU_PRETRAIN, finished, matched_steps, wider
from model import GPTConfig
from tokenizer import from_meta, padded_vocab

STARTS_FROM = {PAUSE_ARM: "PausePT", "StdFT_flops": "StdPT", "StdFT_half_a": "StdPT", "StdFT_half_b": "StdPT",
               "StdPT_StdFT": "StdPT", "Wide_StdFT": "StdPT_wide"}
# the order a pool starts ready stages in: pretrainings before finetunings, each kind longest first, so that the
# work left at the end is short (evaluation) and no worker waits long for the other
POOL_ORDER = ("StdPT_wide", "StdPT", "PausePT", "StdFT_flops", PAUSE_ARM, "Wide_StdFT", "StdFT_half_a",
              "StdFT_half_b", "StdPT_StdFT", "eval")
TASK = "lambada"
SHARED = {PAUSE_ARM: lab.arm(PAUSE_ARM, "PausePT", M_FT), "StdPT_StdFT": lab.arm("StdPT_StdFT", "StdPT", 0)}  # the study's
STAGES = ("StdPT", "PausePT", "StdPT_wide", PAUSE_ARM, "StdFT_flops", "StdFT_half_a", "StdFT_half_b", "Wide_StdFT",
          "StdPT_StdFT", "eval")


@dataclass
class EqualComputeConfig:
    """PausePT_PauseFT against four no-pause arms within its training and inference FLOPs; see the module doc."""
    out_dir: str = opt("out/study", "the cpu study's folder (python -m experiments.study --preset=cpu --out_dir=...)")
    seeds: int = opt(5, "seeds 0..N-1", ge=1)
    only_seed: int = opt(-1, "run this seed only (-1 = all); seeds can run as parallel processes", ge=-1)
    jobs: int = opt(1, "worker processes running the stages of every seed, a stage once the runs it starts from "
                       "are finished (pretrainings first, longest first); one per core, each on one thread, is "
                       "fastest: more processes than cores lose time to switching", ge=1)
    stages: list[str] = opt(list(STAGES), "run only these stages, in order (see STAGES); a stage's pretraining "
                                          "must be finished or come first", choices=STAGES)
    aggregate: bool = opt(False, "train nothing: collect the finished seeds, write equal_compute.md/.json and plots")
    plan: bool = opt(False, "train nothing: write the data and print each arm's FLOPs as planned (seed 0), from the "
                            "batches and the train prompts alone")
    k_orderings: int = opt(0, "orderings voted by StdFT_orderings (0 = from the inference FLOPs, see the module doc)",
                           ge=0)
    n_fresh: int = opt(1000, "questions of the fresh test split", ge=1)
    queries: float = opt(1e6, "queries served, for the plot of accuracy against total (training + inference) FLOPs",
                         ge=0)
    max_examples: int = opt(1000, "questions evaluated per split (0 = all)", ge=0)
    device: str = opt("cpu", "where to run (the plan is for 2 CPU cores)", choices=DEVICES)


def vote(answers: list[str], logprobs: list[float]) -> int:
    """The index of the vote that wins: most votes for its answer; a tie goes to the tied answer whose votes'
    log-probabilities sum highest, then to the answer voted first. Returns that answer's first vote."""
    count: dict[str, int] = {}
    score: dict[str, float] = {}
    for a, lp in zip(answers, logprobs):
        count[a] = count.get(a, 0) + 1
        score[a] = score.get(a, 0.0) + lp
    first = {a: answers.index(a) for a in count}
    best = max(count, key=lambda a: (count[a], score[a], -first[a]))
    return first[best]


def reorder(prefix: str, j: int, doc_id: int) -> str:
    """Ordering j of a question's numbers ("gap 3 17 8"): j = 0 is the given one, the others fixed random
    permutations (the same for every model and seed)."""
    kind, *numbers = prefix.split(" ")
    if j:
        random.Random(1_000_003 * j + doc_id).shuffle(numbers)
    return " ".join([kind, *numbers])


def arm_cost(pt_logs: list[str], ft_logs: list[str]) -> dict[str, int]:
    """An arm's training FLOPs from its runs' ledgers: pretraining(s) + finetuning(s) (an ensemble sums its members)."""
    pt = sum(flops.run_totals(p)["train_flops"] for p in pt_logs)
    ft = sum(flops.run_totals(p)["train_flops"] for p in ft_logs)
    return {"pt_flops": pt, "ft_flops": ft, "train_flops": pt + ft}


@torch.no_grad()
def answers_and_logprobs(model, tok, prompts: list[list[int]], batch_size: int = 256):
    """Greedy answers (text), each one's log-probability (answer tokens + stop token) and its inference FLOPs."""
    spec = tasks.get_spec(TASK)
    block = model.config.block_size
    budgets = [min(spec.max_new_tokens, block - len(p)) for p in prompts]
    bar = tqdm(disable=True)
    texts = evaluation.decode_answers(model, tok, prompts, budgets, batch_size, bar)
    ids = [(tok.encode(t) + [tok.eot_id])[: block + 1 - len(p)] for t, p in zip(texts, prompts)]
    # the log-probabilities are those of the decode's own logits; recomputed here in one pass, charged nothing
    logprobs = evaluation.choice_logliks(model, list(zip(prompts, ids)), tok.vocab_size, batch_size, bar)
    costs = [flops.infer_flops(model.config, len(p), min(len(tok.encode(t)) + 1, b))
             for p, t, b in zip(prompts, texts, budgets)]
    return texts, logprobs, costs


def vote_eval(members: list[tuple[str, int]], task_file: str, max_examples: int, device: str) -> dict:
    """Accuracy and inference FLOPs of a vote: each member (checkpoint, ordering) answers every question."""
    spec = tasks.get_spec(TASK)
    examples = tasks.load_task(TASK, task_file)[: max_examples or None]
    votes = []
    for ckpt, j in members:
        model, tok, _ = load_model(ckpt, device)
        prompts = [tok.encode(reorder(e.prefix, j, k)) for k, e in enumerate(examples)]
        votes.append(answers_and_logprobs(model, tok, prompts))
    scores, costs = [], []
    for k, e in enumerate(examples):
        texts = [v[0][k] for v in votes]
        win = vote([metrics.normalize_answer(metrics.truncate(t, spec.stop)) for t in texts], [v[1][k] for v in votes])
        scores.append(metrics.score_decode(spec, texts[win], e.answers)["em"])
        costs.append(sum(v[2][k] for v in votes))
    return {"value": sum(scores) / len(scores), "stderr": metrics.stderr(scores), "n": len(scores),
            "infer_flops_per_example": sum(costs) / len(costs), "votes": len(members)}


def seed_dir(cfg: EqualComputeConfig, seed: int, name: str = "") -> str:
    return os.path.join(cfg.out_dir, f"seed{seed}", name)


def study_config(cfg: EqualComputeConfig) -> study.StudyConfig:
    """The cpu study this experiment shares its data, pretrainings and two arms with."""
    return study.apply_preset(study.StudyConfig(out_dir=cfg.out_dir, preset="cpu", device=cfg.device), [])


def data_files(cfg: EqualComputeConfig, scfg: study.StudyConfig) -> dict[str, str]:
    """The study's files, and the fresh test split written once beside them (the study's lock serialises seeds)."""
    files = lab.cpu_data(scfg.out_dir, scfg.cpu_n, scfg.task)
    files["fresh_test"] = os.path.join(os.path.dirname(files["test"]), synth.FRESH_TEST)
    with open(os.path.join(cfg.out_dir, ".data.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(files["fresh_test"]):
            lo, hi = (int(a.split("=")[1]) for a in lab.CPU_SYNTH[:2])
            info = synth.write_fresh_test(os.path.dirname(files["test"]), cfg.n_fresh, scfg.cpu_n, lo, hi, scfg.task)
            print(f"fresh test split: {info['n']} questions, seed {info['seed']}, disjoint from {info['checked_against']}")
    return files


def ft_config(scfg: study.StudyConfig, name: str, init: str, train_file: str, seed: int, iters: int,
              batch_seed: int | None = None) -> finetune.FinetuneConfig:
    """StdFT with the study's recipe, to `iters` steps."""
    return lab.ft_config(os.path.join(scfg.out_dir, f"seed{seed}", name), init, TASK, train_file,
                         seed if batch_seed is None else batch_seed, iters, scfg.ft_batch_size, scfg.ft_lr, "0",
                         scfg.device, scfg.dtype)


def pause_ft_flops(scfg: study.StudyConfig, train_file: str, tok, conf: GPTConfig, seed: int) -> int:
    """PausePT_PauseFT's finetuning FLOPs, from its batches alone: what its ledger will sum (no run needed)."""
    ft = dataclasses.replace(ft_config(scfg, PAUSE_ARM, "", train_file, seed, 1), m_ft=str(M_FT))
    data = finetune.FinetuneData(ft, tok, conf.block_size)
    return sum(flops.train_flops(conf, *data.batch(s)[0].shape) for s in range(scfg.ft_iters))


def run_seed(cfg: EqualComputeConfig, seed: int, stages: tuple[str, ...] = STAGES) -> None:
    """Run `stages` of one seed in order (each trains one run, or evaluates every finished arm), the primary
    test's first; a stage whose run is finished is skipped. Stages of one seed can run as parallel processes
    once the pretraining they start from is finished."""
    scfg = study_config(cfg)
    files = data_files(cfg, scfg)
    path = lambda name: os.path.join(seed_dir(cfg, seed, name), "ckpt.pt")
    pre = {"StdPT": path("StdPT"), "PausePT": path("PausePT")}
    tok = from_meta(json.load(open(os.path.join(files["data"], "meta.json")))["tokenizer"])
    p = CPU_PRETRAIN
    conf = GPTConfig(block_size=p["block_size"], vocab_size=padded_vocab(tok.vocab_size), n_layer=p["n_layer"],
                     n_head=p["n_head"], n_embd=p["n_embd"], pause_id=tok.pause_id)
    wide = wider(conf, [len(tok.encode(e.prefix)) for e in tasks.load_task(TASK, files["train"])], M_FT)

    def finetune_matched(name: str, init: str, c: GPTConfig, goal: float, batch_seed: int | None = None) -> None:
        probe = ft_config(scfg, name, init, files["train"], seed, 1, batch_seed)
        ft = ft_config(scfg, name, init, files["train"], seed, matched_steps(probe, tok, c, goal), batch_seed)
        if not finished(ft.out_dir + "/ckpt.pt", ft.max_iters):
            finetune.main(ft)

    for stage in stages:
        if stage in ("StdPT", "PausePT"):
            lab.cpu_pretrain(scfg.out_dir, seed, files["data"], stage, scfg.device, scfg.dtype)
        elif stage == "StdPT_wide" and not finished(path(stage), p["max_iters"]):
            train.main(train.TrainConfig(**{**p, "n_embd": wide.n_embd}, data_dir=files["data"],
                                         out_dir=seed_dir(cfg, seed, stage), seed=seed, pause_frac=0.0,
                                         device=cfg.device, **checkpoint.resume_or_restart(seed_dir(cfg, seed, stage))))
        elif stage in SHARED:  # trained (and evaluated on val and test) exactly as in the study
            lab.run_arms(scfg, seed, pre, files, [SHARED[stage]])
        elif stage in ("StdFT_flops", "StdFT_half_a", "StdFT_half_b", "Wide_StdFT"):
            goal = pause_ft_flops(scfg, files["train"], tok, conf, seed) / (2 if "half" in stage else 1)
            init = path("StdPT_wide") if stage == "Wide_StdFT" else pre["StdPT"]
            finetune_matched(stage, init, wide if stage == "Wide_StdFT" else conf, goal,
                             seed + 100 if stage == "StdFT_half_b" else None)
        elif stage == "eval":
            for split in SPLITS:
                evaluate_seed(cfg, seed, split, files[split], ARMS)


def pool_plan(stages: list[str], seeds: list[int]) -> list[tuple[tuple[int, str], list[tuple[int, str]]]]:
    """Every (seed, stage) in the order a pool starts them (POOL_ORDER, then seed), each with the (seed, stage)s it
    waits for: the pretraining it starts from if that is among `stages` (else it must be finished already), and
    for eval every other stage of its seed."""
    plan = []
    for stage in sorted(stages, key=POOL_ORDER.index):
        for seed in seeds:
            before = [s for s in stages if s != "eval"] if stage == "eval" else \
                [STARTS_FROM[stage]] if STARTS_FROM.get(stage) in stages else []
            plan.append(((seed, stage), [(seed, s) for s in before]))
    return plan


def run_stage(cfg: EqualComputeConfig, seed: int, stage: str) -> None:
    run_seed(cfg, seed, (stage,))


def evaluate_seed(cfg: EqualComputeConfig, seed: int, split: str, task_file: str, arms: tuple[str, ...]) -> None:
    """Write seedK/ARM/equal_SPLIT.json for each of `arms` (once): accuracy, inference FLOPs per example and
    training FLOPs."""
    log = lambda name: os.path.join(seed_dir(cfg, seed, name), "log.jsonl")
    ckpt = lambda name: os.path.join(seed_dir(cfg, seed, name), "ckpt.pt")
    pt = lambda arm: log("PausePT" if arm == PAUSE_ARM else "StdPT_wide" if arm == "Wide_StdFT" else "StdPT")
    runs = {"StdFT_orderings": ["StdFT_flops"], "StdFT_pair": ["StdFT_half_a", "StdFT_half_b"]}
    for arm in arms:
        path = os.path.join(seed_dir(cfg, seed, arm), f"equal_{split}.json")
        if os.path.exists(path) or not all(finished(ckpt(r)) for r in runs.get(arm, [arm])):
            continue
        m_inf = M_FT if arm == PAUSE_ARM else 0
        if arm == "StdFT_orderings":
            cost = arm_cost([pt(arm)], [log("StdFT_flops")])
            res = vote_eval([(ckpt("StdFT_flops"), j) for j in range(orderings(cfg, seed))], task_file,
                            cfg.max_examples, cfg.device)
        elif arm == "StdFT_pair":
            cost = arm_cost([pt(arm)], [log("StdFT_half_a"), log("StdFT_half_b")])
            res = vote_eval([(ckpt("StdFT_half_a"), 0), (ckpt("StdFT_half_b"), 0)], task_file, cfg.max_examples,
                            cfg.device)
        else:
            cost = arm_cost([pt(arm)], [log(arm)])
            rt = setup_runtime(cfg.device, "auto")
            model, tok, meta = load_model(ckpt(arm), rt.device)
            examples = tasks.load_task(TASK, task_file)[: cfg.max_examples or None]
            ecfg = evaluation.EvalConfig(ckpt=ckpt(arm), task=TASK, m_inf=[m_inf], batch_size=256, log_samples=False)
            [res] = [r for r in evaluation.evaluate(model, tok, meta, TASK, examples, [m_inf], ecfg) if r["metric"] == "em"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        record = {"arm": arm, "seed": seed, "split": split, "m_inf": m_inf, "value": res["value"], "n": res["n"],
                  "stderr": res["stderr"], "infer_flops_per_example": res["infer_flops_per_example"],
                  "votes": res.get("votes", 1), **cost}
        write_json(path, record)
        print(f"seed {seed} {split} {arm}: {100 * record['value']:.1f} % at {record['infer_flops_per_example'] / 1e6:.2f} "
              f"MFLOPs/example, {record['train_flops'] / 1e12:.3f} training TFLOPs")


def orderings(cfg: EqualComputeConfig, seed: int) -> int:
    """K: given, or PausePT_PauseFT's inference FLOPs per example over StdFT_flops's on val, rounded (at least 1)."""
    if cfg.k_orderings:
        return cfg.k_orderings
    read = lambda arm: json.load(open(os.path.join(seed_dir(cfg, seed, arm), "equal_val.json")))
    return max(1, round(read(PAUSE_ARM)["infer_flops_per_example"] / read("StdFT_flops")["infer_flops_per_example"]))


def plan(cfg: EqualComputeConfig) -> dict:
    """Each arm's planned FLOPs for seed 0 before any training: pretraining and finetuning from the ledger of
    their batches, inference per example from the val prompts with two decoded tokens (answer word, stop)."""
    scfg = study_config(cfg)
    files = data_files(cfg, scfg)
    tok = from_meta(json.load(open(os.path.join(files["data"], "meta.json")))["tokenizer"])
    p = CPU_PRETRAIN
    conf = GPTConfig(block_size=p["block_size"], vocab_size=padded_vocab(tok.vocab_size), n_layer=p["n_layer"],
                     n_head=p["n_head"], n_embd=p["n_embd"], pause_id=tok.pause_id)
    wide = wider(conf, [len(tok.encode(e.prefix)) for e in tasks.load_task(TASK, files["train"])], M_FT)
    val = [len(tok.encode(e.prefix)) for e in tasks.load_task(TASK, files["val"])]
    infer = lambda c, m: sum(flops.infer_flops(c, n + m, 2) for n in val) / len(val)
    pt = lambda c: p["max_iters"] * flops.train_flops(c, p["batch_size"], c.block_size)
    ft = lambda c, m, steps, seed=0: sum(flops.train_flops(c, *d.batch(s)[0].shape) for d in
                                         [finetune.FinetuneData(dataclasses.replace(
                                             ft_config(scfg, "plan", "", files["train"], 0, 1, seed), m_ft=str(m)),
                                             tok, c.block_size)] for s in range(steps))
    target = ft(conf, M_FT, scfg.ft_iters)
    steps = {name: matched_steps(ft_config(scfg, name, "", files["train"], 0, 1, bs), tok, c, goal)
             for name, c, goal, bs in (("StdFT_flops", conf, target, None), ("StdFT_half_a", conf, target / 2, None),
                                       ("StdFT_half_b", conf, target / 2, 100), ("Wide_StdFT", wide, target, None))}
    out = {"n_embd_wide": wide.n_embd, "steps": steps, "pause_ft_steps": scfg.ft_iters,
           "pt_flops": pt(conf), "pt_flops_wide": pt(wide), "pause_ft_flops": target,
           "ft_flops": {n: ft(wide if n == "Wide_StdFT" else conf, 0, k, 100 if n.endswith("_b") else 0)
                        for n, k in steps.items()},
           "infer": {"PausePT_PauseFT": infer(conf, M_FT), "StdFT": infer(conf, 0), "Wide_StdFT": infer(wide, 0)}}
    print(json.dumps(out, indent=1))
    return out


def main(cfg: EqualComputeConfig) -> None:
    check_config(cfg)
    t0 = time.time()
    os.makedirs(cfg.out_dir, exist_ok=True)
    if cfg.plan:
        plan(cfg)
        return
    if cfg.aggregate:
        report(cfg)
        return
    seeds = [cfg.only_seed] if cfg.only_seed >= 0 else list(range(cfg.seeds))
    with lab.own_seeds(cfg.out_dir, seeds):  # one experiment at a time per seed folder
        if cfg.jobs > 1:
            start = time.time()
            lab.run_pool(pool_plan(cfg.stages, seeds), functools.partial(run_stage, cfg),
                         lambda key: os.path.join(seed_dir(cfg, key[0]), f"{key[1]}.out"), cfg.jobs, "equal compute stages")
            write_json(os.path.join(cfg.out_dir, "equal_time_pool.json"),  # this call's wall time
                       {"stages": cfg.stages, "seeds": seeds, "jobs": cfg.jobs, "start": start, "end": time.time()})
            seeds = []
        for seed in seeds:
            start = time.time()
            run_seed(cfg, seed, tuple(cfg.stages))
            stamp = "_".join(cfg.stages) if tuple(cfg.stages) != STAGES else "all"
            write_json(os.path.join(seed_dir(cfg, seed), f"equal_time_{stamp}.json"),  # this call's wall time
                       {"stages": cfg.stages, "start": start, "end": time.time()})
    print(f"equal compute: seed(s) done in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    run_main(lambda: main(parse_config(EqualComputeConfig, prog="python -m experiments.equal_compute")))
