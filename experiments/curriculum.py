"""A chain-of-thought -> pause curriculum for finetuning (`python -m experiments.curriculum --cot=sorted ...`), after Coconut's "pause as
thought" ablation (Hao et al. 2024): first teach the answer through a short chain of thought, then replace
its tokens by pauses one at a time, until the example is exactly PauseFT's.

    stage k < C:  [question, <pause> x k, cot[k:], answer, EOT]   the first k CoT tokens replaced by k pauses
    stage C:      [question, <pause> x M_ft, answer, EOT]         PauseFT, what is evaluated

Loss only on real targets: the CoT tokens still there, the answer and EOT (never on a pause, nor the question).
The stages 0..C-1 take the first `cot_frac` of the steps in equal parts, one CoT token more each (adding
several at once was unstable for Coconut); the rest of the steps are at the final stage. With probability
`cot_mix` an example comes from an earlier stage (Coconut mixes earlier stages in, so the model keeps using
any number of pauses). The FLOPs ledger in train.fit counts every stage as it was computed.

The chain of thought of the largest-gap task (synth.py). `sorted` (the default): the question's numbers in
order. It is parallelisable in Pfau et al.'s sense: the k-th sorted value is the number with exactly k smaller
ones, a question every position can answer independently, so one pause can stand for one CoT token; and the
pretraining corpus already contains sort problems, so these are familiar tokens. `gaps`: the differences of
consecutive sorted values (the answer is their maximum); each needs two such rank queries and a subtraction.
"""
from dataclasses import dataclass

import numpy as np
import torch

import finetune
from config import UserError, opt, parse_config, run_main
from finetune import FinetuneConfig, FinetuneData, collate
from pause import assemble

COT_KINDS = ("sorted", "gaps")


@dataclass
class CurriculumConfig(FinetuneConfig):
    """finetune.py's options plus the curriculum's: finetune through a CoT whose tokens become pauses."""
    cot: str = opt("sorted", "the chain of thought whose tokens are replaced by pauses one stage at a time "
                             "(largest-gap task)", choices=COT_KINDS)
    cot_frac: float = opt(0.5, "share of the steps spent walking stages 0..C-1; the rest is PauseFT's format",
                          gt=0, le=1)
    cot_mix: float = opt(0.3, "probability that an example is drawn from an earlier stage", ge=0, le=1)


def largest_gap_cot(prefix: str, kind: str) -> str:
    """The chain of thought of a largest-gap question, e.g. ("gap 9 2 5", "sorted") -> " 2 5 9"."""
    words = prefix.split()
    if not words or words[0] != "gap":
        raise UserError(f"--cot needs largest-gap questions (synth.py), got {prefix[:40]!r}")
    s = sorted(int(w) for w in words[1:])
    if kind == "sorted":
        return " " + " ".join(map(str, s))
    if kind == "gaps":
        return " " + " ".join(str(b - a) for a, b in zip(s, s[1:]))
    raise UserError(f"unknown --cot={kind!r}; choose {', '.join(COT_KINDS)}")


def stage_example(prefix_ids: list[int], cot_ids: list[int], target_ids: list[int], k: int, m_ft: int,
                  pause_id: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of stage k: k pauses in place of the first k CoT tokens; from k = len(cot) on, PauseFT's M_ft pauses."""
    if k >= len(cot_ids):
        return assemble(prefix_ids, target_ids, m_ft, pause_id, False, block_size)
    return assemble(prefix_ids, cot_ids[k:] + target_ids, k, pause_id, False, block_size)


def stage_at(step: int, max_iters: int, n_cot: int, cot_frac: float) -> int:
    """The curriculum stage at `step`: 0..n_cot-1 in equal parts of the first cot_frac of the steps, then n_cot."""
    ramp = cot_frac * max_iters
    return n_cot if step >= ramp else int(step * n_cot / ramp)


class CurriculumData(FinetuneData):
    """FinetuneData whose training batches walk the curriculum; validation batches are PauseFT's (the final stage)."""

    def __init__(self, cfg, tok, block_size: int):
        super().__init__(cfg, tok, block_size)
        if self.m_lo != self.m_hi or self.m_hi < 1 or cfg.filler or cfg.prepend:
            raise UserError("--cot needs a fixed --m_ft >= 1 and no --filler or --prepend")
        self.cot = [tok.encode(largest_gap_cot(tok.decode(p), cfg.cot)) for p, _ in self.ids]
        self.n_cot = max(map(len, self.cot))
        self.max_iters, self.cot_frac, self.cot_mix = cfg.max_iters, cfg.cot_frac, cfg.cot_mix
        for (p, t), c in zip(self.ids, self.cot):  # stage 0 is the longest: check it fits
            stage_example(p, c, t, 0, self.m_hi, self.pause, block_size)

    def batch(self, step: int, index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, step, index))
        idx = rng.choice(self.train, self.batch_size)
        stage = stage_at(step, self.max_iters, self.n_cot, self.cot_frac)
        earlier = rng.random(len(idx)) < self.cot_mix
        stages = np.where(earlier & (stage > 0), rng.integers(0, max(stage, 1), size=len(idx)), stage)
        rows = []
        for i, k in zip(idx, stages):
            prefix, target = self.ids[i]
            rows.append(stage_example(prefix, self.cot[i], target, int(k), self.m_hi, self.pause, self.block_size))
        return collate(rows)


if __name__ == "__main__":  # finetune.py's loop, with the curriculum's batches plugged in
    run_main(lambda: finetune.main(parse_config(CurriculumConfig, prog="python -m experiments.curriculum"),
                                   make_data=CurriculumData))
