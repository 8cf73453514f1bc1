"""The capability-separation task of compute_study.py: n-bit parity in the LAMBADA layout.

    {"text": "parity 1 0 1 1 0 odd"}     the last word, even or odd, is the number of ones mod 2

Why parity: with pauses, a two-layer transformer can express it at any length (London & Kanade 2025: pause j
checks "exactly j ones", the answer sums those with alternating signs), while without them the one answering
position must turn a count into its parity alone; and one layer cannot compute it at all. It is also the
standard hard case for gradient descent (Hahn & Rofin 2024), which is what our pilot found (README).
Training questions may be shorter than the test ones (train_n = lo,hi): short parities give the gradient
something to hold on to. Splits: train, val and test are disjoint as bit strings; test is drawn first.

    python -m experiments.separation --out_dir=data/parity --n=8 --train_n=2,8
"""
import json
import os
import random
from dataclasses import dataclass

from common import UserError, atomic_open, opt, parse_config, run_main

WORDS = ("parity", "0", "1", "even", "odd")


def parity_text(bits: list[int]) -> str:
    """One solved question, e.g. parity_text([1, 0, 1]) == "parity 1 0 1 even"."""
    return f"parity {' '.join(map(str, bits))} {'odd' if sum(bits) % 2 else 'even'}"


def _draw(rng: random.Random, count: int, n_range: tuple[int, int], used: set) -> list[list[int]]:
    """`count` bit strings of n_range[0]..n_range[1] bits (uniform length), none in `used` (which grows)."""
    room = sum(2 ** n for n in range(n_range[0], n_range[1] + 1)) - sum(n_range[0] <= len(u) <= n_range[1] for u in used)
    if count > room // 2:  # keep redraws rare
        raise UserError(f"{count} questions is too many for {n_range[0]}..{n_range[1]} bits; lower the counts or raise --n")
    out = []
    while len(out) < count:
        bits = tuple(rng.randrange(2) for _ in range(rng.randint(*n_range)))
        if bits not in used:
            used.add(bits)
            out.append(list(bits))
    return out


def write_parity(out_dir: str, n: int = 8, train_n: tuple[int, int] | None = None, n_train: int = 2000,
                 n_val: int = 200, n_test: int = 500, seed: int = 0) -> dict:
    """Write train.jsonl, val.jsonl, test.jsonl (val and test of exactly n bits; train of train_n bits)."""
    lo, hi = train_n or (n, n)
    if not 1 <= lo <= hi:
        raise UserError(f"--train_n needs 1 <= lo <= hi, got {lo},{hi}")
    rng, used = random.Random(seed), set()
    splits = {"test": _draw(rng, n_test, (n, n), used), "val": _draw(rng, n_val, (n, n), used)}
    splits["train"] = _draw(rng, n_train, (lo, hi), used)
    os.makedirs(out_dir, exist_ok=True)
    for name, rows in splits.items():
        with atomic_open(os.path.join(out_dir, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps({"text": parity_text(bits)}) + "\n" for bits in rows)
    return {name: len(rows) for name, rows in splits.items()}


@dataclass
class ParityConfig:
    """Write the n-bit parity task (LAMBADA layout) as train/val/test.jsonl."""
    out_dir: str = opt("data/parity", "folder for train.jsonl, val.jsonl and test.jsonl")
    n: int = opt(8, "bits per val and test question", ge=1)
    train_n: list[int] = opt([], "bits per training question: lo,hi drawn uniformly (default: n)", ge=1)
    n_train: int = opt(2000, "training questions", ge=1)
    n_val: int = opt(200, "validation questions", ge=0)
    n_test: int = opt(500, "test questions (reported only)", ge=1)
    seed: int = opt(0, "seed of all three splits", ge=0)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(ParityConfig, argv, prog="python -m experiments.separation")
    if cfg.train_n and len(cfg.train_n) != 2:
        raise UserError(f"--train_n expects lo,hi, got {cfg.train_n}")
    counts = write_parity(cfg.out_dir, cfg.n, tuple(cfg.train_n) or None, cfg.n_train, cfg.n_val, cfg.n_test, cfg.seed)
    print(f"parity of {cfg.n} bits: {counts} in {cfg.out_dir}")


if __name__ == "__main__":
    run_main(main)
