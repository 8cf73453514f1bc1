"""Finetuning on a downstream task, standard (m_ft=0, StdFT) or with pauses (m_ft>0, PauseFT): the
layout is pause.assemble's, [prefix, <pause> x m_ft, target, EOT], loss on the target and EOT only.

    python finetune.py --init_from=out/pause/ckpt.pt --task=gsm8k --task_file=data/gsm8k/train.jsonl --m_ft=10
    python finetune.py --init_from=gpt2 --task=gsm8k --m_ft=10     # OpenAI's GPT-2 small (StdPT_PauseFT)

The loop, DDP, checkpoints and resume are train.py's (`fit`); only the batches differ.
"""
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

import tasks
from checkpoint import checked_model_config, load_checkpoint, open_run, own_out_dir, pretrain_pause_frac, read_meta
from config import UserError, check_config, opt, parse_config, run_main
from pause import IGNORE, assemble
from runtime import ddp_run, setup_runtime
from tokenizer import from_meta, inserted_token
from train import MAX_LR, LoopConfig, fit


@dataclass
class FinetuneConfig(LoopConfig):
    """Finetune a pretrained checkpoint on a task's (prefix, target) pairs, with m_ft pauses between them."""
    init_from: str = opt("out/pretrain/ckpt.pt", "the pretrained checkpoint to start from, or OpenAI's GPT-2: gpt2, "
                         "gpt2-medium, gpt2-large, gpt2-xl (downloaded once) or a Hugging Face GPT-2 folder")
    task: str = opt("gsm8k", "task name", choices=tuple(tasks.TASKS))
    task_file: str = opt("", "the task's training file in its official format (default: data/tasks/TASK/<train file>)")
    m_ft: str = opt("0", "pauses between prefix and target: 0 = StdFT, e.g. 10 = PauseFT; lo:hi = a number "
                         "drawn uniformly from lo..hi for each example of each batch (beyond the paper)")
    filler: str = opt("", "ablation: this ordinary one-token text (e.g. '.') instead of <pause>")
    prepend: bool = opt(False, "ablation: put the pauses before the prefix instead of after it")
    max_examples: int = opt(0, "use only the first N examples of the file (0 = all)", ge=0)
    val_frac: float = opt(0.05, "held-out share of the examples for the validation loss", ge=0, lt=1)
    # finetuning defaults of the loop options (see train.py)
    out_dir: str = opt("out/finetune", "where ckpt.pt and log.jsonl are written")
    batch_size: int = opt(16, "examples per micro-batch, per process", ge=1)
    learning_rate: float = opt(1e-4, "peak learning rate", gt=0, le=MAX_LR)
    min_lr: float = opt(1e-5, "learning rate at the end of the cosine decay", ge=0, le=MAX_LR)
    warmup_iters: int = opt(50, "linear warmup steps", ge=0)
    weight_decay: float = opt(0.0, "AdamW weight decay (matrices only)", ge=0)
    eval_interval: int = opt(200, "validation loss every this many steps (and at the end)", ge=1)
    eval_iters: int = opt(10, "validation batches per evaluation", ge=1)
    bpe_file: str = opt("", "local GPT-2 BPE file (r50k_base.tiktoken) for offline use")

    def validate(self) -> None:
        super().validate()
        parse_m_ft(self.m_ft)


def parse_m_ft(m_ft) -> tuple[int, int]:
    """--m_ft as (lo, hi): "12" -> (12, 12); "0:24" -> (0, 24), both ends included."""
    lo, _, hi = str(m_ft).partition(":")
    try:
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        raise UserError(f"--m_ft must be a number or a range lo:hi (e.g. 10 or 0:24), got {m_ft!r}") from None
    if not 0 <= lo <= hi:
        raise UserError(f"--m_ft needs 0 <= lo <= hi, got {m_ft!r}")
    return lo, hi


def encode_example(tok, prefix: str, target: str, m: int, pause_id: int, prepend: bool, block_size: int):
    """pause.assemble on text: [prefix, pauses, target, EOT] as (x, y), loss on the target and EOT only."""
    return assemble(tok.encode(prefix), tok.encode(target) + [tok.eot_id], m, pause_id, prepend, block_size)


def collate(pairs: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a list of (x, y) to a batch; padded targets are -1 (ignored by the loss)."""
    T = max(len(x) for x, _ in pairs)
    X = np.zeros((len(pairs), T), dtype=np.int64)
    Y = np.full((len(pairs), T), IGNORE, dtype=np.int64)
    for i, (x, y) in enumerate(pairs):
        X[i, : len(x)], Y[i, : len(y)] = x, y
    return torch.from_numpy(X), torch.from_numpy(Y)


class FinetuneData:
    """Encoded examples; batch(step, index) is a deterministic draw, like the pretraining loader.
    With a range of M_ft, each drawn example gets its own number of pauses from the same draw."""

    def __init__(self, cfg: FinetuneConfig, tok, block_size: int):
        path = cfg.task_file or tasks.default_path(cfg.task, "train")
        examples = tasks.load_task(cfg.task, path)[: cfg.max_examples or None]
        self.pause, self.prepend, self.block_size = inserted_token(tok, cfg.filler), cfg.prepend, block_size
        self.m_lo, self.m_hi = parse_m_ft(cfg.m_ft)
        self.ids = [(tok.encode(e.prefix), tok.encode(e.target) + [tok.eot_id]) for e in examples]
        # fixed M_ft: encoded once; a range: the longest is encoded once to check that it fits the block
        try:
            self.pairs = [assemble(p, t, self.m_hi, self.pause, self.prepend, block_size) for p, t in self.ids]
        except ValueError as e:
            raise UserError(f"{path}: {e}") from None
        n_val = int(len(self.pairs) * cfg.val_frac)
        if len(self.pairs) - n_val < 1:
            raise UserError(f"{path}: no examples to finetune on")
        order = np.random.default_rng(cfg.seed).permutation(len(self.pairs))
        self.val, self.train = order[:n_val], order[n_val:]
        self.batch_size, self.seed = cfg.batch_size, cfg.seed

    def _examples(self, idx, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.m_lo == self.m_hi:
            return collate([self.pairs[i] for i in idx])
        ms = rng.integers(self.m_lo, self.m_hi + 1, size=len(idx))  # random M_ft: one draw per example
        return collate([assemble(*self.ids[i], int(m), self.pause, self.prepend, self.block_size)
                        for i, m in zip(idx, ms)])

    def batch(self, step: int, index: int = 0):
        rng = np.random.default_rng((self.seed, step, index))
        return self._examples(rng.choice(self.train, self.batch_size), rng)

    def val_batch(self, i: int):
        idx = np.resize(self.val, (i + 1) * self.batch_size)[i * self.batch_size:]  # fixed, wraps around
        return self._examples(idx, np.random.default_rng((self.seed, i, 0, 0)))  # 4 keys: never a training draw


@torch.no_grad()
def finetune_eval(model, data: FinetuneData, cfg: FinetuneConfig, rt) -> dict:
    if not len(data.val):
        return {}
    model.eval()
    losses = []
    for i in range(cfg.eval_iters):
        x, y = data.val_batch(i)
        with rt.autocast():
            losses.append(model(x.to(rt.device), y.to(rt.device))[1].item())
    return {"val_loss": sum(losses) / len(losses)}


def main(cfg: FinetuneConfig, make_data=None) -> None:
    """Finetune `init_from`; `make_data(cfg, tok, block_size)` builds the batches (default FinetuneData;
    experiments plug in their own, e.g. experiments/curriculum.py)."""
    check_config(cfg)
    m_lo, m_hi = parse_m_ft(cfg.m_ft)
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    with ddp_run(rt):
        with own_out_dir(cfg, rt):  # before the model and the task are loaded
            pre = read_meta(cfg.init_from)
            tok = from_meta(pre["tokenizer"], cfg.bpe_file or None)
            gpt_config = dataclasses.replace(checked_model_config(cfg.init_from, pre["model"]), dropout=cfg.dropout)
            data = (make_data or FinetuneData)(cfg, tok, gpt_config.block_size)
            model, optimizer, step, log = open_run(cfg, rt, gpt_config)
            if not cfg.resume:  # start from the pretrained weights (the optimizer starts afresh)
                model.load_state_dict(load_checkpoint(cfg.init_from, rt.device)["model"])
            meta = {"kind": "finetune", "config": dataclasses.asdict(cfg), "model": dataclasses.asdict(gpt_config),
                    "tokenizer": pre["tokenizer"], "task": cfg.task, "filler": cfg.filler,
                    "m_ft": m_hi, "m_ft_range": [m_lo, m_hi],  # a range's default M_inf is its largest value
                    "prepend": cfg.prepend, "pretrain_pause_frac": pretrain_pause_frac(pre),
                    "init_from": cfg.init_from, **({"source": pre["source"]} if "source" in pre else {})}
            fit(cfg, rt, model, optimizer, data.batch, lambda m: finetune_eval(m, data, cfg, rt), meta, step, log)


if __name__ == "__main__":
    run_main(lambda: main(parse_config(FinetuneConfig, prog="finetune.py")))
