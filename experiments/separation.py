"""Parity of n bits: can pauses give a two-layer transformer what it cannot do answering at once, and at what compute?

Every training step draws fresh bit strings (a deterministic function of seed and step), of 2..n bits; the
score is exact match on a fixed held-out set of n-bit strings per n (its own seed, 1000 strings). Arms:

  NoPause       the answer right after the bits                            parity 1 0 1 -> even
  Deep_NoPause  the same, with the fewest layers whose inference FLOPs reach Pause's, trained on Pause's FLOPs
  Pause         M = n pauses, the answer read at the last one; no loss on any other pause
  Pause_dense   Pause, plus dense, parallel targets at the pauses: pause j (1 <= j < M) predicts whether at least j
                ones were seen (count, the default: London & Kanade's two-layer construction, where each pause checks
                one threshold and the answer sums them with alternating signs) or the parity of the first j bits
                (prefix); their weight is annealed from 1 to 0 over the first --anneal_frac of the steps, after
                which the loss is on the answer only, as in Pause. Pfau et al. 2024: filler tokens are learned only
                with dense, parallelisable supervision.
  CoT           no pauses; a chain of thought: the running parity of the last i bits, i = 1..L, the last = answer
                (the positive control: serial supervision the model can follow one step at a time)

Positions: a question of L < n bits is left-padded with "_" to n bits, so every sequence has the same layout and
pause j always sits at position n + j: the learned absolute position embedding tells pause j its index (no
separate pause-index embedding). Step i of the CoT, written at position n + i - 1, needs the bit at n - i + 1:
a fixed position for each step. Every record carries the ledger's FLOPs (flops.py): training (pads and pauses
count) and inference per test example.

    python -m experiments.separation --out_dir=runs/parity --ns=12,16 --seeds=3 --shard=0 --shards=2   # process 1
    python -m experiments.separation --out_dir=runs/parity --ns=12,16 --seeds=3 --shard=1 --shards=2   # process 2
    python -m experiments.separation --out_dir=runs/parity --ns=12,16 --seeds=3 --aggregate            # summary
"""
import dataclasses
import json
import math
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import flops
import plots
from config import UserError, check_config, opt, parse_config, run_main
from runtime import write_json, write_text
from experiments import figures
from experiments.lab import deeper
from model import GPT, GPTConfig
from tokenizer import WordTokenizer, padded_vocab
from train import cosine_lr

WORDS = ("parity", "0", "1", "even", "odd", "_")  # "_" left-pads a short question
ARMS = ("NoPause", "Deep_NoPause", "Pause", "Pause_dense", "CoT")
TOK = WordTokenizer(list(WORDS))
ID = {w: TOK.stoi[w] for w in WORDS}


def parity_word(bits) -> str:
    return "odd" if sum(bits) % 2 else "even"


def parity_text(bits: list[int]) -> str:
    """One solved question, e.g. parity_text([1, 0, 1]) == "parity 1 0 1 even"."""
    return f"parity {' '.join(map(str, bits))} {parity_word(bits)}"


def draw(rng: np.random.Generator, count: int, lo: int, hi: int) -> list[list[int]]:
    """`count` uniform bit strings, each of a length drawn uniformly from lo..hi."""
    return [rng.integers(0, 2, size=int(k)).tolist() for k in rng.integers(lo, hi + 1, size=count)]


def train_strings(seed: int, step: int, count: int, n: int) -> list[list[int]]:
    """The training strings of one step: fresh at every step, the same for every arm and every rerun."""
    return draw(np.random.default_rng([0, seed, step]), count, 2, n)


def heldout_strings(n: int, count: int = 1000) -> list[list[int]]:
    """The fixed test set for n: n-bit strings from a stream of their own (not a training seed's)."""
    return draw(np.random.default_rng([1, n]), count, n, n)


def seen_in_training(n: int, seed: int, steps: int, batch_size: int, n_test: int) -> float:
    """Share of the held-out strings that also came up among a run's training strings (fresh draws can repeat)."""
    seen = {tuple(s) for step in range(steps) for s in train_strings(seed, step, batch_size, n) if len(s) == n}
    return sum(tuple(s) in seen for s in heldout_strings(n, n_test)) / n_test


def dense_target(bits: list[int], j: int, dense: str) -> str:
    """What pause j predicts under dense supervision: count -> at least j ones ("1"/"0"); prefix -> parity of bits[:j]."""
    return ("1" if sum(bits) >= j else "0") if dense == "count" else parity_word(bits[:j])


def encode(bits: list[int], n: int, arm: str, dense: str = "") -> tuple[list[int], list[int], list[bool]]:
    """One row: inputs, targets (-1 = no loss) and the dense-pause mask. `dense` = "" puts no target on a pause but
    the last (the answer), as in the annealed-off phase. Position p's output is scored against targets[p]."""
    L = len(bits)
    x = [ID["_"]] * (n - L) + [ID["parity"]] + [ID[str(b)] for b in bits]  # n + 1 positions, bits end at n
    y, mask = [-1] * len(x), [False] * len(x)
    if arm in ("NoPause", "Deep_NoPause"):
        y[n] = ID[parity_word(bits)]
    elif arm == "CoT":  # step i (written at position n + i - 1) = parity of the last i bits
        chain = [ID[parity_word(bits[L - i:])] for i in range(1, L + 1)]
        x += chain[:-1] + [ID["_"]] * (n - L)
        y[n:] = chain + [-1] * (n - L)
        mask += [False] * (n - 1)
    else:  # pause arms: M = n pauses, pause j at position n + j, the answer at the last one
        m = n
        x += [TOK.pause_id] * m
        y += [-1] * m
        mask += [False] * m
        y[n + m] = ID[parity_word(bits)]
        if arm == "Pause_dense" and dense:
            for j in range(1, m):
                y[n + j], mask[n + j] = ID[dense_target(bits, j, dense)], True
    return x, y, mask


def dense_weight(step: int, iters: int, anneal_frac: float) -> float:
    """The dense targets' weight: 1 at step 0, falling linearly to 0 at anneal_frac * iters, then 0."""
    end = anneal_frac * iters
    return max(0.0, 1.0 - step / end) if end > 0 else 0.0


def batch(rows: list[list[int]], n: int, arm: str, dense: str = "") -> tuple[torch.Tensor, ...]:
    x, y, mask = zip(*(encode(bits, n, arm, dense) for bits in rows))
    return torch.tensor(x), torch.tensor(y), torch.tensor(mask)


def parity_loss(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, weight: float) -> torch.Tensor:
    """Mean cross-entropy over the answer (and CoT) targets, plus weight x the mean over the dense pause targets."""
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1, reduction="none").view_as(y)
    loss = ce[(y != -1) & ~mask].mean()
    if weight > 0 and mask.any():
        loss = loss + weight * ce[mask].mean()
    return loss


@dataclass
class ParityConfig:
    """The parity sweep: every (n, arm, seed) is one run, skipped if finished; see the module doc."""
    out_dir: str = opt("runs/parity", "runs go to OUT_DIR/nN/ARM/seedS/ (results.json, log.jsonl); the summary to OUT_DIR")
    ns: list[int] = opt([12, 16, 24, 32], "bits of the test questions (training questions have 2..n bits)", ge=2)
    arms: list[str] = opt(list(ARMS), "arms to run", choices=ARMS)
    seeds: int = opt(3, "seeds 0..N-1 (initialisation and training strings)", ge=1)
    shard: int = opt(0, "run the runs i with i % shards == shard (for parallel processes)", ge=0)
    shards: int = opt(1, "number of parallel processes the runs are split over", ge=1)
    aggregate: bool = opt(False, "train nothing: summarise the finished runs (summary.md, summary.json, plot)")
    dense: str = opt("count", "Pause_dense's targets: count (pause j: at least j ones) or prefix (parity of first j bits)",
                     choices=("count", "prefix"))
    anneal_frac: float = opt(0.5, "Pause_dense: the dense weight falls from 1 to 0 over this share of the steps",
                             ge=0, le=1)
    iters: int = opt(2000, "steps of every arm but Deep_NoPause (which gets Pause's training FLOPs)", ge=1)
    batch_size: int = opt(64, "strings per step", ge=1)
    n_layer: int = opt(2, "layers (Deep_NoPause: more)", ge=1)
    n_embd: int = opt(64, "width", ge=1)
    n_head: int = opt(4, "attention heads", ge=1)
    lr: float = opt(1e-3, "peak learning rate (100 warmup steps, cosine to lr/10)", gt=0, le=1)
    weight_decay: float = opt(0.1, "AdamW weight decay (matrices)", ge=0)
    n_test: int = opt(1000, "held-out n-bit strings per n", ge=1)

    def validate(self):
        if self.shard >= self.shards or self.n_embd % self.n_head:
            raise UserError(f"need --shard < --shards and --n_head dividing --n_embd, got --shard={self.shard} "
                            f"--shards={self.shards} --n_head={self.n_head} --n_embd={self.n_embd}")


def parity_model(cfg: ParityConfig, n: int, arm: str) -> GPTConfig:
    conf = GPTConfig(block_size=2 * n + 1, vocab_size=padded_vocab(TOK.vocab_size), n_layer=cfg.n_layer,
                     n_head=cfg.n_head, n_embd=cfg.n_embd, pause_id=TOK.pause_id)
    return deeper(conf, n + 1, 1, n) if arm == "Deep_NoPause" else conf


def seq_len(n: int, arm: str) -> int:
    return len(encode([0] * n, n, arm)[0])


def steps_for(cfg: ParityConfig, n: int, arm: str) -> int:
    """cfg.iters, but Deep_NoPause gets as many training FLOPs as Pause (rounded to whole steps)."""
    if arm != "Deep_NoPause":
        return cfg.iters
    pause = flops.train_flops(parity_model(cfg, n, "Pause"), cfg.batch_size, seq_len(n, "Pause"))
    return round(cfg.iters * pause / flops.train_flops(parity_model(cfg, n, arm), cfg.batch_size, seq_len(n, arm)))


@torch.no_grad()
def accuracy(model: GPT, n: int, arm: str, strings: list[list[int]]) -> float:
    """Exact match of the answer, greedy: the CoT writes its n steps itself and is scored on the last."""
    model.eval()
    x, y, _ = batch(strings, n, arm)
    if arm == "CoT":
        seq = x[:, :n + 1]
        for _ in range(n):
            seq = torch.cat([seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)], 1)
        pred, want = seq[:, -1], y[:, -1]
    else:
        pred, want = model(x)[0][:, -1].argmax(-1), y[:, -1]
    model.train()
    return (pred == want).float().mean().item()


def step_batch(cfg: ParityConfig, n: int, arm: str, seed: int, step: int, steps: int) -> tuple:
    """The batch of one training step and its dense weight; once the weight is 0 no pause but the last has a target."""
    w = dense_weight(step, steps, cfg.anneal_frac) if arm == "Pause_dense" else 0.0
    return *batch(train_strings(seed, step, cfg.batch_size, n), n, arm, cfg.dense if w > 0 else ""), w


def train_run(cfg: ParityConfig, n: int, arm: str, seed: int, out: str) -> dict:
    """Train one arm from random initialisation, score it on the held-out set, and return its record."""
    t0 = time.time()
    conf, steps, T = parity_model(cfg, n, arm), steps_for(cfg, n, arm), seq_len(n, arm)
    torch.manual_seed(seed)
    model = GPT(conf)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, (0.9, 0.95), "cpu")
    os.makedirs(out, exist_ok=True)
    log = []
    for step in range(steps):
        x, y, mask, w = step_batch(cfg, n, arm, seed, step, steps)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, cfg.lr, cfg.lr / 10, 100, steps)
        loss = parity_loss(model(x)[0], y, mask, w)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            log.append(json.dumps({"step": step, "loss": loss.item(), "dense_weight": w}) + "\n")
    write_text(os.path.join(out, "log.jsonl"), "".join(log))
    prompt, decoded = n + 1, (n if arm == "CoT" else 1)  # the CoT decodes its chain; the pause arms prefill M = n
    record = {"n": n, "arm": arm, "seed": seed, "steps": steps, "n_layer": conf.n_layer, "seq_len": T,
              "pauses": n if arm.startswith("Pause") else 0, "dense": cfg.dense if arm == "Pause_dense" else "",
              "value": accuracy(model, n, arm, heldout_strings(n, cfg.n_test)),
              "train_flops": steps * flops.train_flops(conf, cfg.batch_size, T),
              "infer_flops": flops.infer_flops(conf, prompt + (n if arm.startswith("Pause") else 0), decoded),
              "final_loss": loss.item(), "start": t0, "wall_s": time.time() - t0}
    write_json(os.path.join(out, "results.json"), record)
    return record


def run_dir(cfg: ParityConfig, n: int, arm: str, seed: int) -> str:
    return os.path.join(cfg.out_dir, f"n{n}", arm, f"seed{seed}")


def summarise(cfg: ParityConfig, records: list[dict]) -> dict:
    """summary.json, summary.md (accuracy mean ± std per n and arm, both FLOPs axes, run times) and the plot."""
    rows = []
    for n in cfg.ns:
        for arm in cfg.arms:
            rs = [r for r in records if r["n"] == n and r["arm"] == arm]
            if rs:
                vals = [r["value"] for r in rs]
                rows.append({"n": n, "arm": arm, "n_seeds": len(rs), "mean": statistics.fmean(vals),
                             "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "values": vals,
                             **{k: rs[0][k] for k in ("steps", "n_layer", "pauses", "train_flops", "infer_flops")},
                             "wall_s": statistics.fmean(r["wall_s"] for r in rs)})
    seen = {n: statistics.fmean(seen_in_training(n, seed, cfg.iters, cfg.batch_size, cfg.n_test)
                                for seed in {r["seed"] for r in records if r["n"] == n}) for n in {r["n"] for r in records}}
    wall = busy_s(records)
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out_dir", "shard", "shards", "aggregate")}
    summary = {"config": config, "rows": rows, "records": records, "heldout_seen_in_training": seen, "sweep_wall_s": wall,
               "run_s_total": sum(r["wall_s"] for r in records)}
    write_json(os.path.join(cfg.out_dir, "summary.json"), summary)
    lines = [f"# Parity, fresh strings every step (up to {len({r['seed'] for r in records})} seeds: see each row's)", "",
             f"Exact match on {cfg.n_test} held-out n-bit strings per n, mean ± std over seeds (seed values in "
             f"summary.json). Training strings of 2..n bits, {cfg.batch_size} per step; {cfg.n_layer} layers x "
             f"{cfg.n_embd}, lr {cfg.lr}; Pause_dense targets: {cfg.dense}, annealed to 0 over the first "
             f"{cfg.anneal_frac:.0%} of the steps. FLOPs from flops.py: training (pads and pauses counted), "
             "inference per test example.", "",
             "| n | arm | layers | pauses | steps | accuracy % | per seed | train TFLOPs | inference MFLOPs/example | s/run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['arm']} | {r['n_layer']} | {r['pauses']} | {r['steps']} | "
                     f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f} | {', '.join(f'{100 * v:.1f}' for v in r['values'])} | "
                     f"{r['train_flops'] / 1e12:.3f} | "
                     f"{r['infer_flops'] / 1e6:.2f} | {r['wall_s']:.0f} |")
    lines += ["", "Held-out strings that also came up in training (fresh draws repeat at small n), mean over seeds: " +
              ", ".join(f"n = {n}: {100 * v:.1f} %" for n, v in sorted(seen.items())) + "."]
    lines += ["", f"Sweep wall time {wall / 60:.1f} min (while at least one run was going); runs summed "
                  f"{summary['run_s_total'] / 60:.1f} min."]
    write_text(os.path.join(cfg.out_dir, "summary.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, os.path.join(cfg.out_dir, "accuracy_vs_n.png"))
    return summary


def busy_s(records: list[dict]) -> float:
    """Seconds while at least one run was going (the union of their intervals): phases run on different days
    do not count the days between them."""
    total, end = 0.0, -math.inf
    for start, stop in sorted((r["start"], r["start"] + r["wall_s"]) for r in records):
        total, end = total + max(0.0, stop - max(start, end)), max(end, stop)
    return total


def plot(rows: list[dict], out_png: str) -> None:
    """Accuracy against n, one line per arm, error bars = std over seeds."""
    fig, ax = plots.plt.subplots(figsize=(6, 4))
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for i, arm in enumerate(arms):  # a small sideways shift per arm, so that equal scores stay visible
        rs = [r for r in rows if r["arm"] == arm]
        ax.errorbar([r["n"] + 0.2 * (i - len(arms) // 2) for r in rs], [100 * r["mean"] for r in rs],
                    yerr=[100 * r["std"] for r in rs], marker=plots.MARKERS[i], capsize=3, label=arm,
                    color=figures.arm_color(arm))
    ax.axhline(50, color="gray", lw=0.8, ls=":")
    ax.set(xlabel="n (bits of the test strings)", ylabel="exact match % (held-out)", ylim=(40, 102),
           title="Parity: accuracy vs n (mean ± std over seeds)")
    ax.legend(fontsize=8)
    plots.save_figure(fig, out_png, {"rows": rows, "colors": {arm: figures.arm_color(arm) for arm in arms}, "unit": "%"})


def main(argv: list[str] | None = None) -> dict | None:
    cfg = parse_config(ParityConfig, argv, prog="python -m experiments.separation")
    check_config(cfg)
    runs = [(n, arm, seed) for n in cfg.ns for seed in range(cfg.seeds) for arm in cfg.arms]
    records = []
    for i, (n, arm, seed) in enumerate(runs):
        path = os.path.join(run_dir(cfg, n, arm, seed), "results.json")
        if os.path.exists(path):
            records.append(json.load(open(path)))
        elif not cfg.aggregate and i % cfg.shards == cfg.shard:
            r = train_run(cfg, n, arm, seed, run_dir(cfg, n, arm, seed))
            print(f"n={n} {arm} seed {seed}: {100 * r['value']:.1f} % in {r['wall_s']:.0f} s", flush=True)
            records.append(r)
    if cfg.aggregate:
        if not records:
            raise UserError(f"no finished runs under {cfg.out_dir}")
        return summarise(cfg, records)
    return None


if __name__ == "__main__":
    run_main(main)
