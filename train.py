"""Pretraining: standard (pause_frac=0, StdPT) or with random pauses (pause_frac=0.1, PausePT).

    python train.py config/tiny.toml --data_dir=data/tiny --pause_frac=0.1 --out_dir=out/pause
    torchrun --standalone --nproc_per_node=8 train.py config/130m.toml --data_dir=data/c4

The pauses live in the data (data.PretrainData, through pause.py); this file is the plain optimisation
loop, `fit`, which finetune.py reuses. The run directory's rules (one writer, --resume, --overwrite) and
the checkpoint are checkpoint.py's.
"""
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import flops
from checkpoint import Checkpointer, MetricsLog, open_run, own_out_dir, rng_state
from config import DEVICES, DTYPES, UserError, check_config, opt, parse_config, run_main
from data import PretrainData
from model import GPT, GPTConfig
from runtime import all_mean, check_memory, ddp_run, memory_needed, setup_runtime
from tokenizer import padded_vocab

MAX_LR = 1e30  # far above any usable rate (divergence is stopped or skipped), below float32 overflow in AdamW


@dataclass
class LoopConfig:
    """The options of the optimisation loop `fit`, shared by train.py and finetune.py."""
    out_dir: str = opt("out/pretrain", "where ckpt.pt and the metrics log log.jsonl are written")
    resume: bool = opt(False, "continue exactly from out_dir/ckpt.pt; only max_iters, the eval/log/ckpt intervals, "
                              "eval_iters, device, compile and the non-finite policy may change")
    batch_size: int = opt(8, "sequences per micro-batch, per process", ge=1)
    grad_accum: int = opt(1, "micro-batches per optimizer step, summed over all processes (divisible by their number)",
                          ge=1)
    max_iters: int = opt(1000, "optimizer steps", ge=1)
    learning_rate: float = opt(6e-4, "peak learning rate", gt=0, le=MAX_LR)
    min_lr: float = opt(6e-5, "learning rate at the end of the cosine decay", ge=0, le=MAX_LR)
    warmup_iters: int = opt(100, "linear warmup steps", ge=0)
    lr_decay_iters: int = opt(0, "step where the cosine decay reaches min_lr (0 = max_iters)", ge=0)
    weight_decay: float = opt(0.1, "AdamW weight decay (matrices only)", ge=0)
    beta1: float = opt(0.9, "AdamW beta1", ge=0, lt=1)
    beta2: float = opt(0.95, "AdamW beta2", ge=0, lt=1)
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0 = off)", ge=0)
    dropout: float = opt(0.0, "dropout probability", ge=0, lt=1)
    eval_interval: int = opt(250, "evaluate every this many steps (and at the end)", ge=1)
    eval_iters: int = opt(20, "validation batches per evaluation (the same fixed ones every time)", ge=1)
    log_interval: int = opt(10, "update the progress bar every this many steps", ge=1)
    ckpt_interval: int = opt(0, "write ckpt.pt every this many steps (0 = at each evaluation) and at the end", ge=0)
    device: str = opt("auto", "where to run", choices=DEVICES)
    dtype: str = opt("auto", "auto: bfloat16 on GPU, float32 on CPU", choices=DTYPES)
    compile: bool = opt(False, "torch.compile the model (recommended on GPU)")
    seed: int = opt(1337, "seeds model init, dropout and the batches", ge=0)
    on_nonfinite: str = opt("stop", "a step whose loss or gradient norm is inf/NaN never updates the weights: 'stop' "
                                    "the run (ckpt.pt keeps the last good weights) or 'skip' that update",
                            choices=("stop", "skip"))
    max_skips: int = opt(10, "with on_nonfinite=skip: stop at this many non-finite steps in a row", ge=1)
    overwrite: bool = opt(False, "a fresh run into an out_dir holding an earlier run's log.jsonl or ckpt.pt deletes "
                                 "them first (without it, such a run is refused)")

    def validate(self) -> None:
        """The cross-option checks (check_config checks each option's range)."""
        if self.resume and self.overwrite:
            raise UserError("--resume continues out_dir's run and --overwrite deletes it: pass one of them")


@dataclass
class TrainConfig(LoopConfig):
    """Pretrain a GPT on prepared token shards, with (pause_frac > 0) or without pauses."""
    data_dir: str = opt("data/c4", "prepared shards and meta.json (python data.py prepare)")
    pause_frac: float = opt(0.0, "pauses injected per window, as a fraction of block_size: 0 = StdPT, 0.1 = PausePT",
                            ge=0, lt=1)
    n_layer: int = opt(12, "transformer blocks", ge=1)
    n_head: int = opt(12, "attention heads", ge=1)
    n_embd: int = opt(768, "embedding width", ge=1)
    mlp_hidden: int = opt(0, "MLP hidden width (0 = 4 x n_embd)", ge=0)
    block_size: int = opt(1024, "context length T", ge=1)
    bias: bool = opt(False, "biases in Linear and LayerNorm layers")
    pos: str = opt("learned", "position embeddings: learned (GPT-2) or rope (rotary, no position parameters)",
                   choices=("learned", "rope"))

    def validate(self) -> None:
        super().validate()
        if self.n_embd % self.n_head:
            raise UserError(f"--n_head={self.n_head} must divide --n_embd={self.n_embd}")


def cosine_lr(step: int, lr: float, min_lr: float, warmup: int, decay_steps: int) -> float:
    """Linear warmup, then cosine decay to min_lr at decay_steps, then min_lr."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= decay_steps:
        return min_lr
    ratio = (step - warmup) / max(1, decay_steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def fit(cfg, rt, model: GPT, optimizer, get_batch: Callable, evaluate: Callable, meta: dict, start_step: int,
        log: MetricsLog) -> None:
    """Optimise model for steps start_step..cfg.max_iters-1: DDP, gradient accumulation, clipping, a cosine LR.
    `get_batch(step, index)` gives micro-batch `index` (global over ranks) of a step; `evaluate(model)` a dict
    of metrics. A step whose loss or gradient norm is inf/NaN never reaches the weights (cfg.on_nonfinite:
    stop, or skip it), and ckpt.pt is written only from weights that just gave a finite loss and gradient,
    so resuming from it gives the same finite loss."""
    if cfg.grad_accum % rt.world_size:
        raise UserError(f"grad_accum={cfg.grad_accum} must be divisible by the {rt.world_size} processes")
    accum, raw = cfg.grad_accum // rt.world_size, model
    if cfg.compile:
        model = torch.compile(model)
    if rt.ddp:
        model = DDP(model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
    ckpt = Checkpointer(cfg, rt, raw, optimizer, meta, log, start_step if cfg.resume else None)
    ckpt_every, decay = cfg.ckpt_interval or cfg.eval_interval, cfg.lr_decay_iters or cfg.max_iters
    ledger = flops.Ledger(raw.config, meta.get("kind") == "finetune", rt.world_size, log.path, start_step)
    bar = tqdm(range(start_step, cfg.max_iters), initial=start_step, total=cfg.max_iters,
               disable=not rt.master, dynamic_ncols=True, desc=os.path.basename(cfg.out_dir.rstrip("/")))
    t0, skipped, in_a_row = time.time(), 0, 0
    for step in bar:
        if step % cfg.eval_interval == 0 and not (cfg.resume and step == start_step):
            log.write({"step": step, **evaluate(model)})
            t0 = time.time()  # evaluation is not training throughput
        rng = rng_state() if step > start_step and step % ckpt_every == 0 else None  # this step's checkpoint
        lr = cosine_lr(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, decay)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        loss_sum, n_tokens = torch.zeros((), device=rt.device), 0
        for micro in range(accum):
            x, y = get_batch(step, rt.rank * accum + micro)  # built on CPU while the GPU is still busy
            ledger.add(x, y)
            if rt.device.type == "cuda":
                x, y = x.pin_memory().to(rt.device, non_blocking=True), y.pin_memory().to(rt.device, non_blocking=True)
            if rt.ddp:  # all-reduce the gradients only on the last micro-batch
                model.require_backward_grad_sync = micro == accum - 1
            with rt.autocast():
                _, loss = model(x, y)
            (loss / accum).backward()
            loss_sum += loss.detach()
            n_tokens += x.numel() * rt.world_size
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        # one sync a step: the mean loss, and a grad norm non-finite on every rank if on one (all decide alike)
        loss, grad_norm = all_mean(rt, torch.stack([loss_sum.double() / accum, grad_norm.double()])).tolist()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)  # this update never reaches the weights
            skipped, in_a_row = skipped + 1, in_a_row + 1
            stop_on_nonfinite(cfg, step, loss, grad_norm, in_a_row, ckpt.kept())
            log.write({"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "skipped": True,
                       "skipped_steps": skipped})
            t0 = time.time()
            continue
        in_a_row = 0
        if rng is not None:  # these weights just gave a finite loss and gradient
            ckpt.save(step, rng)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dt, t0 = time.time() - t0, time.time()
        tok_s = n_tokens / dt  # pauses and padding count: they cost compute
        mfu = raw.estimate_mfu(tok_s / rt.world_size, rt.device, x.size(1))  # per GPU, at the batch's width
        log.write({"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_sec": tok_s, "mfu": mfu,
                   **ledger.record()})
        if step % cfg.log_interval == 0 or step == cfg.max_iters - 1:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}",
                            mfu="n/a" if mfu is None else f"{mfu:.1%}", **({"skipped": skipped} if skipped else {}))
    if cfg.max_iters > start_step:
        metrics = evaluate(model)
        log.write({"step": cfg.max_iters, **metrics})
        if not all(math.isfinite(v) for v in metrics.values()):
            raise UserError(f"the final evaluation gave {metrics}: stopped without writing these weights; {ckpt.kept()}")
        ckpt.save(cfg.max_iters, rng_state())
        if rt.master:
            bar.close()
            print(f"step {cfg.max_iters}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) +
                  f"; checkpoint {ckpt.path}")


def stop_on_nonfinite(cfg, step: int, loss: float, grad_norm: float, in_a_row: int, kept: str) -> None:
    """The non-finite policy: stop the run, or skip the update until max_skips of them come in a row."""
    if cfg.on_nonfinite == "stop" or in_a_row >= cfg.max_skips:
        what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {grad_norm}"
        why = "" if cfg.on_nonfinite == "stop" else f" ({in_a_row} non-finite steps in a row)"
        raise UserError(f"{what} at step {step}{why}: stopped; {kept}. Try a lower learning_rate or dtype=float32")


@torch.no_grad()
def pretrain_eval(model, data, cfg, rt) -> dict:
    """Validation loss on real-token targets of the same un-injected windows for StdPT and PausePT
    (so the two are comparable), plus the loss on pause-injected windows when pauses are used."""
    model.eval()
    out = {}
    for name, inject in [("val_loss", False)] + ([("val_loss_pause", True)] if data.n_pause else []):
        total = 0.0
        for i in range(rt.rank, cfg.eval_iters, rt.world_size):  # ranks split the fixed windows
            x, y = data.val_batch(i, inject=inject)
            with rt.autocast():
                total += model(x.to(rt.device), y.to(rt.device))[1].item()
        out[name] = all_mean(rt, total) * rt.world_size / cfg.eval_iters
    return out


def main(cfg: TrainConfig) -> None:
    """Data, model (or the run to resume), `fit`: evaluation and checkpoints happen inside the loop."""
    check_config(cfg)
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    with ddp_run(rt):
        with own_out_dir(cfg, rt):
            data = PretrainData(cfg.data_dir, cfg.block_size, cfg.batch_size, cfg.pause_frac, cfg.seed)
            gpt_config = GPTConfig(block_size=cfg.block_size, vocab_size=padded_vocab(data.vocab_size),
                                   n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, mlp_hidden=cfg.mlp_hidden,
                                   dropout=cfg.dropout, bias=cfg.bias, pause_id=data.pause_id, pos=cfg.pos)
            rows = cfg.batch_size * cfg.block_size  # --compile's plain loss holds all their logits at once
            need = memory_needed(gpt_config, cfg.batch_size, cfg.block_size, rt.dtype, training=True,
                                 logit_rows=rows if cfg.compile else min(rows, GPT.loss_chunk))
            check_memory(need, rt.device, f"training {cfg.n_layer} layers {cfg.n_embd} wide on {cfg.batch_size} x "
                         f"{cfg.block_size} tokens", "lower --batch_size (a larger --grad_accum keeps the tokens a step)"
                         " or the model's size")
            model, optimizer, step, log = open_run(cfg, rt, gpt_config)
            meta = {"kind": "pretrain", "config": dataclasses.asdict(cfg), "model": dataclasses.asdict(gpt_config),
                    "tokenizer": data.meta["tokenizer"]}
            fit(cfg, rt, model, optimizer, data.batch, lambda m: pretrain_eval(m, data, cfg, rt), meta, step, log)


if __name__ == "__main__":
    run_main(lambda: main(parse_config(TrainConfig, prog="train.py")))
