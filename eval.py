"""Evaluate a checkpoint on a task for one or several numbers of inference pauses M_inf.

    python eval.py --ckpt=out/ft/ckpt.pt --task=gsm8k --task_file=data/gsm8k/test.jsonl --m_inf=0,1,2,5,10,20

The task defaults to the one a finetuned checkpoint was finetuned on (its official test file unless
--task_file is given; a checkpoint finetuned on another file, e.g. the study's synthetic task, needs --task_file).

Decode tasks: greedy decoding with the KV cache after [prompt, <pause> x M_inf] -> EM (and F1), each
answer up to the task's budget (GSM8K 256 tokens, the others 32; --max_new_tokens overrides it).
Scored tasks: log-likelihood of each choice after [context, <pause> x M_inf] -> acc, acc_norm.
A prompt too long for the block loses its beginning, as in finetuning (the pauses and the answer are
kept); each result counts such prompts in "n_truncated".

--out writes a JSON list with one record per (M_inf, metric): task, task_file, split, checkpoint, variant,
what made it (pretrain_pause_frac, m_ft and ft_m, finetune_filler, inference_token), m_inf, n, metric, value,
stderr (over the examples), n_truncated, infer_flops_per_example. With --log_samples (the default) the first metric's record of each
M_inf also holds "samples", one per example: doc_id (its index in the task file), truncated, scores, and
generated (the raw text) + answer (what was scored) + target (decode tasks) or logliks + label (scored).
It writes the file whole or not at all, and replaces an existing one only with --overwrite.
"""
import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

import flops
import metrics
import tasks
from checkpoint import load_model, pretrain_pause_frac
from config import DEVICES, DTYPES, UserError, check_config, opt, parse_config, run_main
from pause import banned_tokens, prompt_in_block
from runtime import check_memory, ensure_writable_file, memory_needed, setup_runtime, write_json
from sample import generate
from tokenizer import inserted_token


@dataclass
class EvalConfig:
    """Evaluate a checkpoint on a task, sweeping the number of pauses appended at inference."""
    ckpt: str = opt("out/finetune/ckpt.pt", "checkpoint to evaluate (or gpt2 ... gpt2-xl, or a Hugging Face GPT-2 "
                                            "folder)")
    task: str = opt("", "task name (default: a finetuned checkpoint's own task)", choices=("",) + tuple(tasks.TASKS))
    task_file: str = opt("", "the task's evaluation file in its official format (default: data/tasks/TASK/<eval file>)")
    m_inf: list[int] = opt([-1], "pauses at inference, one value or a list like 0,1,2,5,10,20 (-1 = the checkpoint's m_ft)",
                           ge=-1)
    filler: str = opt("", "ablation: this ordinary one-token text instead of <pause> (default: the checkpoint's)")
    prepend: bool = opt(False, "ablation: pauses before the prompt (also on when the checkpoint was finetuned so)")
    max_examples: int = opt(0, "evaluate only the first N examples (0 = all)", ge=0)
    batch_size: int = opt(32, "sequences per forward pass (refused up front if such a batch cannot fit the device's "
                              "memory)", ge=1)
    max_new_tokens: int = opt(0, "longest decoded answer (0 = the task's budget: 256 for GSM8K, 32 for the others)",
                              ge=0)
    out: str = opt("", "write the results as JSON here, whole or not at all (default: print only)")
    overwrite: bool = opt(False, "replace an existing --out file (without it, such a run is refused before any work, "
                                 "as train.py refuses an out_dir holding an earlier run)")
    log_samples: bool = opt(True, "keep each example's record (text or choice log-likelihoods, scores) in the JSON")
    device: str = opt("auto", "where to run", choices=DEVICES)
    dtype: str = opt("auto", "auto: bfloat16 on GPU, float32 on CPU", choices=DTYPES)
    bpe_file: str = opt("", "local GPT-2 BPE file (r50k_base.tiktoken) for offline use")

    def validate(self) -> None:
        if not self.m_inf:
            raise UserError("--m_inf is empty: give one value or a list, e.g. --m_inf=0,5,10")


def variant_name(meta: dict, filler: str = "") -> str:
    """The arm as the study names it: StdPT/PausePT from the pretraining pause_frac, StdFT/PauseFT/FillerFT
    from the finetuning (a pretrained model: no FT), then _rand (a range of M_ft), _prepend, _rope, and
    _InfFiller when `filler` replaces the token the model was finetuned with."""
    name = "PausePT" if pretrain_pause_frac(meta) > 0 else "StdPT"
    if meta.get("kind") == "finetune":
        name += "_FillerFT" if meta.get("filler") else "_PauseFT" if meta.get("m_ft", 0) > 0 else "_StdFT"
        lo, hi = meta.get("m_ft_range", [0, 0])
        name += ("_rand" if lo != hi else "") + ("_prepend" if meta.get("prepend") else "")
    name += "_rope" if meta.get("model", {}).get("pos") == "rope" else ""
    return name + ("_InfFiller" if filler and filler != meta.get("filler", "") else "")


def made_of(meta: dict, filler: str) -> dict:
    """What a result's model is, for plots and tables: pretraining pause_frac, finetuning M_ft (a lo:hi range
    as such) and filler, and the token appended at inference."""
    lo, hi = meta.get("m_ft_range", [meta.get("m_ft", 0)] * 2)
    return {"pretrain_pause_frac": pretrain_pause_frac(meta), "ft_m": f"{lo}:{hi}" if lo != hi else hi,
            "finetune_filler": meta.get("filler", ""), "inference_token": filler or meta.get("filler") or "<pause>"}


def task_of(cfg: "EvalConfig", meta: dict) -> tuple[str, str]:
    """(task, task file): the given ones, else the checkpoint's task and that task's official test file. A
    checkpoint finetuned on a file of its own (the study's synthetic task) must be given --task_file."""
    task = cfg.task or meta.get("task") or ""
    if not task:
        raise UserError(f"{cfg.ckpt} is not finetuned on a task: give --task ({', '.join(tasks.TASKS)})")
    if task not in tasks.TASKS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(tasks.TASKS)}")
    if cfg.task_file:
        return task, cfg.task_file
    own = meta.get("config", {}).get("task_file", "") if task == meta.get("task") else ""
    if own and os.path.dirname(os.path.normpath(own)) != os.path.join("data", "tasks", task):  # not download's
        test = os.path.join(os.path.dirname(own), "test.jsonl")
        hint = f"--task_file={test}" if os.path.exists(test) else "--task_file=<its test file>"
        raise UserError(f"{cfg.ckpt} was finetuned on {own}, not on the official {task} files: pass {hint}")
    return task, tasks.default_path(task, "eval")


def split_of(path: str) -> str:
    """A task file's split as the tables name it: its file name without extension (test, val, ...)."""
    return os.path.basename(path).split(".")[0]


@torch.no_grad()
def decode_answers(model, tok, prompts: list[list[int]], budgets: list[int], batch_size: int, bar) -> list[str]:
    """Greedy answers, row i up to budgets[i] tokens. Rows of similar length share a batch (prompts sorted,
    little padding); a batch closes before its longest prompt would leave another row less than its budget."""
    block = model.config.block_size
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [""] * len(prompts)
    s = 0
    while s < len(order):
        chunk, most = [order[s]], budgets[order[s]]
        while s + len(chunk) < len(order) and len(chunk) < batch_size:
            nxt = order[s + len(chunk)]  # the longest prompt of the batch if it joins
            if len(prompts[nxt]) + max(most, budgets[nxt]) > block:
                break
            chunk.append(nxt)
            most = max(most, budgets[nxt])
        rows = generate(model, [prompts[i] for i in chunk], [budgets[i] for i in chunk], tok.vocab_size,
                        stop_id=tok.eot_id)
        for i, row in zip(chunk, rows):
            answers[i] = tok.decode(row)
        bar.update(len(chunk))
        s += len(chunk)
    return answers


@torch.no_grad()
def choice_logliks(model, seqs: list[tuple[list[int], list[int]]], vocab_size: int, batch_size: int,
                   bar) -> list[float]:
    """Sum of log p(choice tokens | context) for each (context_ids, choice_ids), batched and right-padded;
    p is over the tokens decoding may emit (<pause> and the padded vocab slots masked, as in generate)."""
    block = model.config.block_size
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]) - len(seqs[i][1]))
    out = [0.0] * len(seqs)
    device = model.lm_head.weight.device
    banned = banned_tokens(model.config.vocab_size, vocab_size, model.config.pause_id, device)
    for s in range(0, len(order), batch_size):
        chunk = order[s: s + batch_size]
        full = [seqs[i][0] + seqs[i][1] for i in chunk]
        if max(len(f) for f in full) > block + 1:  # evaluate() cuts contexts to fit (prompt_in_block)
            raise ValueError(f"a context with its choice is longer than block_size + 1 = {block + 1}")
        T = max(len(f) for f in full) - 1
        x = torch.zeros(len(chunk), T, dtype=torch.long)
        y = torch.full((len(chunk), T), -1, dtype=torch.long)
        for r, (i, f) in enumerate(zip(chunk, full)):
            n_choice = len(seqs[i][1])
            x[r, : len(f) - 1] = torch.tensor(f[:-1])
            y[r, len(f) - 1 - n_choice: len(f) - 1] = torch.tensor(f[-n_choice:])  # only the choice is scored
        logp = F.log_softmax(model(x.to(device))[0].float().masked_fill(banned, float("-inf")), dim=-1)
        picked = logp.gather(-1, y.clamp(min=0).to(device)[..., None])[..., 0].masked_fill((y < 0).to(device), 0.0)
        for r, i in enumerate(chunk):
            out[i] = picked[r].sum().item()
        bar.update(len(chunk))
    return out


def check_batch_memory(model, plans: dict, choices: list, decode: bool, budget: int, batch_size: int) -> None:
    """Refuse, before any model work, a batch of the longest sequences that the device's memory cannot hold: the
    rows decoded together (their KV cache), or scored together (their logits at every position)."""
    block = model.config.block_size
    if decode:
        rows = min(batch_size, len(choices))  # one row per example
        longest = max(len(p) + min(budget, block - len(p)) for plan in plans.values() for p, _ in plan)
    else:
        rows = min(batch_size, sum(map(len, choices)))
        longest = max(len(context) + len(c) - 1 for plan in plans.values() for k, cs in enumerate(plan)
                      for (context, _), c in zip(cs, choices[k]))
    device = model.lm_head.weight.device
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else torch.float32
    need = memory_needed(model.config, rows, longest, dtype, logit_rows=rows if decode else rows * longest,
                         weights=False)
    check_memory(need, device, f"evaluating {rows} sequences of up to {longest} tokens at once", "lower --batch_size")


def evaluate(model, tok, meta: dict, task: str, examples: list, m_infs: list[int], cfg: EvalConfig) -> list[dict]:
    """One result per (M_inf, metric): value, standard error, how many prompts were truncated, and for the
    first metric the per-example records (see the module doc)."""
    spec = tasks.get_spec(task)
    pause = inserted_token(tok, cfg.filler or meta.get("filler", ""))
    prepend = cfg.prepend or meta.get("prepend", False)
    block = model.config.block_size
    budget = cfg.max_new_tokens or spec.max_new_tokens
    # Room kept for the answer after every prompt: the whole budget, unless it is over half the block (a small
    # model given GSM8K's 256), where cutting every prompt to make room would leave it almost nothing.
    reserve = min(budget, block // 2)
    prefixes = [tok.encode(e.prefix) for e in examples]  # encoded once, before any model work
    choices = [[tok.encode(c) for c in e.choices] for e in examples]

    def in_block(k: int, m: int, answer: int) -> tuple[list[int], bool]:
        try:
            return prompt_in_block(prefixes[k], m, pause, prepend, answer, block)
        except ValueError as err:
            raise UserError(f"{task} example {k}, m_inf={m}: {err}") from None

    answer = reserve if spec.kind == "decode" else max((len(c) - 1 for cs in choices for c in cs), default=0)
    if max(m_infs) > (fits := block - answer - 1):  # prompt_in_block keeps one prompt token at least
        raise UserError(f"--m_inf={max(m_infs)} leaves no room for the {task} prompts in block_size {block} (with "
                        f"{answer} answer tokens): the largest M_inf that fits is {fits}")
    # every prompt is built, and an impossible one refused, before any model work
    if spec.kind == "decode":
        plans = {m: [in_block(k, m, reserve) for k in range(len(examples))] for m in m_infs}
    else:
        plans = {m: [[in_block(k, m, len(c) - 1) for c in cs] for k, cs in enumerate(choices)] for m in m_infs}
    check_batch_memory(model, plans, choices, spec.kind == "decode", budget, cfg.batch_size)
    results = []
    total = len(m_infs) * sum(len(c) or 1 for c in choices)
    with tqdm(total=total, desc=f"eval {task}", dynamic_ncols=True) as bar:
        for m in m_infs:
            if spec.kind == "decode":
                prompts, cut = [p for p, _ in plans[m]], [c for _, c in plans[m]]
                budgets = [min(budget, block - len(p)) for p in prompts]  # a short prompt may use more than the reserve
                answers = decode_answers(model, tok, prompts, budgets, cfg.batch_size, bar)
                scores = [metrics.score_decode(spec, a, e.answers) for a, e in zip(answers, examples)]
                samples = [{"doc_id": k, "truncated": cut[k], "generated": a, "answer": metrics.truncate(a, spec.stop),
                            "target": e.answers, "scores": s}
                           for k, (a, e, s) in enumerate(zip(answers, examples, scores))]
                # decoded tokens: the answer re-encoded, plus the stop token unless its budget ran out
                cost = [flops.infer_flops(model.config, len(p), min(len(tok.encode(a)) + 1, n))
                        for p, a, n in zip(prompts, answers, budgets)]
            else:
                seqs, owner = [], []
                for k, plan in enumerate(plans[m]):
                    for (context, _), c in zip(plan, choices[k]):
                        seqs.append((context, c))
                        owner.append(k)
                cut = [any(c for _, c in plan) for plan in plans[m]]
                ll = choice_logliks(model, seqs, tok.vocab_size, cfg.batch_size, bar)
                per = [[] for _ in examples]
                for k, v in zip(owner, ll):
                    per[k].append(v)
                scores = [metrics.score_choices(p, e.choices, e.label) for e, p in zip(examples, per)]
                samples = [{"doc_id": k, "truncated": cut[k], "logliks": p, "label": e.label, "scores": s}
                           for k, (p, e, s) in enumerate(zip(per, examples, scores))]
                cost = [0] * len(examples)  # one forward pass over context + choice per choice
                for k, (context, c) in zip(owner, seqs):
                    cost[k] += flops.forward_flops(model.config, len(context) + len(c) - 1)
            for i, metric in enumerate(spec.metrics):
                values = [s[metric] for s in scores]
                p = sum(values) / len(values)
                results.append({"task": task, "task_file": cfg.task_file, "split": split_of(cfg.task_file),
                                "checkpoint": cfg.ckpt, "variant": variant_name(meta, cfg.filler),
                                "m_ft": meta.get("m_ft", 0), **made_of(meta, cfg.filler), "m_inf": m,
                                "n": len(scores), "metric": metric,
                                "value": p, "stderr": metrics.stderr(values), "n_truncated": sum(cut),
                                "infer_flops_per_example": sum(cost) / len(cost)})
                if i == 0 and cfg.log_samples:  # once per M_inf: the scores of every metric are in each sample
                    results[-1]["samples"] = samples
    return results


def main(cfg: EvalConfig) -> list[dict]:
    check_config(cfg)
    if cfg.out:
        ensure_writable_file(cfg.out)  # now, not after the whole evaluation
        if os.path.exists(cfg.out) and not cfg.overwrite:
            raise UserError(f"--out: {cfg.out} exists (earlier results): pass --overwrite to replace it, or choose "
                            "another --out")
    rt = setup_runtime(cfg.device, cfg.dtype)
    model, tok, meta = load_model(cfg.ckpt, rt.device, cfg.bpe_file or None)
    task, task_file = task_of(cfg, meta)
    cfg = dataclasses.replace(cfg, task=task, task_file=task_file)
    examples = tasks.load_task(cfg.task, cfg.task_file)
    examples = examples[: cfg.max_examples or None]
    if not examples:
        raise UserError(f"no examples to evaluate for {cfg.task}")
    m_infs = [meta.get("m_ft", 0) if m == -1 else m for m in cfg.m_inf]
    if any(m < 0 for m in m_infs):
        raise UserError(f"--m_inf values must be >= 0 (or -1 for the checkpoint's m_ft), got {cfg.m_inf}")
    with rt.autocast():
        results = evaluate(model, tok, meta, cfg.task, examples, m_infs, cfg)
    for r in results:  # as summary.md reads: split, arm, M_ft, M_inf, value in % ± its standard error
        print(f"{r['split']} split, {r['variant']} (M_ft={r['ft_m']}) M_inf={r['m_inf']:>3}: {r['task']} {r['metric']} = "
              f"{100 * r['value']:.1f} ± {100 * r['stderr']:.1f} % (stderr over n={r['n']}, "
              f"{r['n_truncated']} prompts truncated)")
    if cfg.out:
        write_json(cfg.out, results)
    return results


if __name__ == "__main__":
    run_main(lambda: main(parse_config(EvalConfig, prog="eval.py")))
