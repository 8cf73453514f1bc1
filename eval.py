"""Evaluate a checkpoint on a task for one or several numbers of inference pauses M_inf.

    python eval.py --ckpt=out/ft/ckpt.pt --task=gsm8k --task_file=data/gsm8k/test.jsonl --m_inf=0,1,2,5,10,20

Decode tasks: greedy decoding with the KV cache after [prompt, <pause> x M_inf] -> EM (and F1).
Scored tasks: log-likelihood of each choice after [context, <pause> x M_inf] -> acc, acc_norm.
"""
import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

import flops
import tasks
from common import UserError, opt, parse_config, run_main, setup_runtime
from finetune import pause_id_for, pretrain_pause_frac
from sample import generate, load_model, with_pauses


@dataclass
class EvalConfig:
    """Evaluate a checkpoint on a task, sweeping the number of pauses appended at inference."""
    ckpt: str = opt("out/finetune/ckpt.pt", "checkpoint to evaluate")
    task: str = opt("gsm8k", f"task name: {', '.join(tasks.TASKS)}")
    task_file: str = opt("", "the task's evaluation file in its official format (default: data/tasks/TASK/<eval file>)")
    m_inf: list[int] = opt([-1], "pauses at inference, one value or a list like 0,1,2,5,10,20 (-1 = the checkpoint's m_ft)")
    filler: str = opt("", "ablation: this ordinary one-token text instead of <pause> (default: the checkpoint's)")
    prepend: bool = opt(False, "ablation: pauses before the prompt (also on when the checkpoint was finetuned so)")
    max_examples: int = opt(0, "evaluate only the first N examples (0 = all)")
    batch_size: int = opt(32, "sequences per forward pass")
    max_new_tokens: int = opt(32, "longest decoded answer")
    out: str = opt("", "write the results as JSON here (default: print only)")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    dtype: str = opt("auto", "auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16 or float16")
    bpe_file: str = opt("", "local GPT-2 BPE file (r50k_base.tiktoken) for offline use")


def variant_name(meta: dict) -> str:
    """StdPT/PausePT from the pretraining pause_frac, StdFT/PauseFT from m_ft (a pretrained model: no FT)."""
    pt = "PausePT" if pretrain_pause_frac(meta) > 0 else "StdPT"
    if meta.get("kind") != "finetune":
        return pt
    return f"{pt}_{'PauseFT' if meta.get('m_ft', 0) > 0 else 'StdFT'}"


@torch.no_grad()
def decode_answers(model, tok, prompts: list[list[int]], max_new: int, batch_size: int, bar) -> list[str]:
    """Greedy answers, batched by similar length (prompts sorted) to waste little padding."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [""] * len(prompts)
    for s in range(0, len(order), batch_size):
        chunk = order[s: s + batch_size]
        rows = generate(model, [prompts[i] for i in chunk], max_new, tok.vocab_size, stop_id=tok.eot_id)
        for i, row in zip(chunk, rows):
            answers[i] = tok.decode(row)
        bar.update(len(chunk))
    return answers


@torch.no_grad()
def choice_logliks(model, seqs: list[tuple[list[int], list[int]]], batch_size: int, bar) -> list[float]:
    """Sum of log p(choice tokens | context) for each (context_ids, choice_ids), batched and right-padded."""
    block = model.config.block_size
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]) - len(seqs[i][1]))
    out = [0.0] * len(seqs)
    device = model.lm_head.weight.device
    for s in range(0, len(order), batch_size):
        chunk = order[s: s + batch_size]
        full = [(seqs[i][0] + seqs[i][1])[-(block + 1):] for i in chunk]  # keep the end if too long
        T = max(len(f) for f in full) - 1
        x = torch.zeros(len(chunk), T, dtype=torch.long)
        y = torch.full((len(chunk), T), -1, dtype=torch.long)
        for r, (i, f) in enumerate(zip(chunk, full)):
            n_choice = len(seqs[i][1])
            x[r, : len(f) - 1] = torch.tensor(f[:-1])
            y[r, len(f) - 1 - n_choice: len(f) - 1] = torch.tensor(f[-n_choice:])  # only the choice is scored
        logp = F.log_softmax(model(x.to(device))[0].float(), dim=-1)
        picked = logp.gather(-1, y.clamp(min=0).to(device)[..., None])[..., 0] * (y >= 0).to(device)
        for r, i in enumerate(chunk):
            out[i] = picked[r].sum().item()
        bar.update(len(chunk))
    return out


def evaluate(model, tok, meta: dict, task: str, examples: list, m_infs: list[int], cfg: EvalConfig) -> list[dict]:
    """One result per (M_inf, metric): value and standard error over the examples."""
    spec = tasks.get_spec(task)
    pause = pause_id_for(tok, cfg.filler or meta.get("filler", ""))
    prepend = cfg.prepend or meta.get("prepend", False)
    results = []
    prefixes = [tok.encode(e.prefix) for e in examples]  # encoded once, before any model work
    choices = [[tok.encode(c) for c in e.choices] for e in examples]
    total = len(m_infs) * sum(len(c) or 1 for c in choices)
    with tqdm(total=total, desc=f"eval {task}", dynamic_ncols=True) as bar:
        for m in m_infs:
            if spec.kind == "decode":
                prompts = [with_pauses(p, m, pause, prepend) for p in prefixes]
                answers = decode_answers(model, tok, prompts, cfg.max_new_tokens, cfg.batch_size, bar)
                scores = [tasks.score_decode(task, a, e) for a, e in zip(answers, examples)]
                # decoded tokens: the answer re-encoded, plus the stop token unless the budget ran out
                cost = [flops.infer_flops(model.config, len(p), min(len(tok.encode(a)) + 1, cfg.max_new_tokens))
                        for p, a in zip(prompts, answers)]
            else:
                seqs, owner = [], []
                for k, (p, cs) in enumerate(zip(prefixes, choices)):
                    context = with_pauses(p, m, pause, prepend)
                    for c in cs:
                        seqs.append((context, c))
                        owner.append(k)
                ll = choice_logliks(model, seqs, cfg.batch_size, bar)
                per = [[] for _ in examples]
                for k, v in zip(owner, ll):
                    per[k].append(v)
                scores = [tasks.score_choices(e, p) for e, p in zip(examples, per)]
                cost = [0] * len(examples)  # one forward pass over context + choice per choice
                for k, (context, c) in zip(owner, seqs):
                    cost[k] += flops.forward_flops(model.config, len(context) + len(c) - 1)
            for metric in spec.metrics:
                p = sum(s[metric] for s in scores) / len(scores)
                results.append({"task": task, "checkpoint": cfg.ckpt, "variant": variant_name(meta),
                                "m_ft": meta.get("m_ft", 0), "m_inf": m, "n": len(scores), "metric": metric,
                                "value": p, "stderr": tasks.stderr(p, len(scores)),
                                "infer_flops_per_example": sum(cost) / len(cost)})
    return results


def main(cfg: EvalConfig) -> list[dict]:
    if cfg.task not in tasks.TASKS:
        raise UserError(f"unknown task {cfg.task!r}; choose one of {', '.join(tasks.TASKS)}")
    rt = setup_runtime(cfg.device, cfg.dtype)
    model, tok, meta = load_model(cfg.ckpt, rt.device, cfg.bpe_file or None)
    examples = tasks.load_task(cfg.task, cfg.task_file or tasks.default_path(cfg.task, "eval"))
    examples = examples[: cfg.max_examples or None]
    if not examples:
        raise UserError(f"no examples to evaluate for {cfg.task}")
    m_infs = [meta.get("m_ft", 0) if m == -1 else m for m in cfg.m_inf]
    if any(m < 0 for m in m_infs):
        raise UserError(f"--m_inf values must be >= 0 (or -1 for the checkpoint's m_ft), got {cfg.m_inf}")
    with rt.autocast():
        results = evaluate(model, tok, meta, cfg.task, examples, m_infs, cfg)
    for r in results:
        print(f"{r['task']} {r['variant']} m_ft={r['m_ft']} m_inf={r['m_inf']:>3} {r['metric']}="
              f"{r['value']:.4f} ± {r['stderr']:.4f} (n={r['n']})")
    if cfg.out:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        with open(cfg.out + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(cfg.out + ".tmp", cfg.out)
    return results


if __name__ == "__main__":
    run_main(lambda: main(parse_config(EvalConfig, prog="eval.py")))
