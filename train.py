"""Pretraining: standard (pause_frac=0, StdPT) or with random pauses (pause_frac=0.1, PausePT).

    python train.py config/tiny.toml --data_dir=data/tiny --pause_frac=0.1 --out_dir=out/pause
    torchrun --standalone --nproc_per_node=8 train.py config/130m.toml --data_dir=data/c4

The pause method lives in the data (data.PretrainData injects pauses and masks pause targets);
this file is the plain optimisation loop, `fit`, which finetune.py reuses.
"""
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import flops
from common import (UserError, all_mean, cosine_lr, load_checkpoint, opt, parse_config, rng_state, run_main,
                    save_checkpoint, set_rng_state, setup_runtime, teardown)
from model import GPT, GPTConfig
from tokenizer import padded_vocab


@dataclass
class LoopConfig:
    """The options of the optimisation loop `fit`, shared by train.py and finetune.py."""
    out_dir: str = opt("out/pretrain", "where ckpt.pt and the metrics log log.jsonl are written")
    resume: bool = opt(False, "continue exactly from out_dir/ckpt.pt (same config)")
    batch_size: int = opt(8, "sequences per micro-batch, per process")
    grad_accum: int = opt(1, "micro-batches per optimizer step, summed over all processes (divisible by their number)")
    max_iters: int = opt(1000, "optimizer steps")
    learning_rate: float = opt(6e-4, "peak learning rate")
    min_lr: float = opt(6e-5, "learning rate at the end of the cosine decay")
    warmup_iters: int = opt(100, "linear warmup steps")
    lr_decay_iters: int = opt(0, "step where the cosine decay reaches min_lr (0 = max_iters)")
    weight_decay: float = opt(0.1, "AdamW weight decay (matrices only)")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0 = off)")
    dropout: float = opt(0.0, "dropout probability")
    eval_interval: int = opt(250, "evaluate every this many steps (and at the end)")
    eval_iters: int = opt(20, "validation batches per evaluation (the same fixed ones every time)")
    log_interval: int = opt(10, "update the progress bar every this many steps")
    ckpt_interval: int = opt(0, "write ckpt.pt every this many steps (0 = at each evaluation) and at the end")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    dtype: str = opt("auto", "auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16 or float16")
    compile: bool = opt(False, "torch.compile the model (recommended on GPU)")
    seed: int = opt(1337, "seeds model init, dropout and the batches")


@dataclass
class TrainConfig(LoopConfig):
    """Pretrain a GPT on prepared token shards, with (pause_frac > 0) or without pauses."""
    data_dir: str = opt("data/c4", "prepared shards and meta.json (python data.py prepare)")
    pause_frac: float = opt(0.0, "pauses injected per window, as a fraction of block_size: 0 = StdPT, 0.1 = PausePT")
    n_layer: int = opt(12, "transformer blocks")
    n_head: int = opt(12, "attention heads")
    n_embd: int = opt(768, "embedding width")
    block_size: int = opt(1024, "context length T")
    bias: bool = opt(False, "biases in Linear and LayerNorm layers")


class MetricsLog:
    """JSONL metrics in out_dir/log.jsonl (master only); the first line of each run is its full config."""

    def __init__(self, path: str | None, header: dict):
        self.path = path
        self.write(header)

    def write(self, record: dict) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def make_optimizer(model: GPT, cfg) -> torch.optim.Optimizer:
    return model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), model_device(model))


def model_device(model: torch.nn.Module) -> str:
    return next(model.parameters()).device.type


def fit(cfg, rt, model: GPT, optimizer, get_batch: Callable, evaluate: Callable, meta: dict, start_step: int,
        log: MetricsLog) -> None:
    """Optimise model for steps start_step..cfg.max_iters-1 with DDP, grad accumulation, clipping and
    a cosine LR; `get_batch(step, index)` gives micro-batch `index` (global over ranks) of a step;
    `evaluate(model)` returns a dict of metrics. ckpt.pt is (re)written atomically with `meta`."""
    if cfg.grad_accum % rt.world_size:
        raise UserError(f"grad_accum={cfg.grad_accum} must be divisible by the {rt.world_size} processes")
    accum = cfg.grad_accum // rt.world_size
    raw = model
    if cfg.compile:
        model = torch.compile(model)
    if rt.ddp:
        model = DDP(model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    ckpt_every = cfg.ckpt_interval or cfg.eval_interval
    decay = cfg.lr_decay_iters or cfg.max_iters
    bar = tqdm(range(start_step, cfg.max_iters), initial=start_step, total=cfg.max_iters,
               disable=not rt.master, dynamic_ncols=True, desc=os.path.basename(cfg.out_dir.rstrip("/")))

    def save(step: int) -> None:  # `step` optimizer steps are done
        if rt.master:
            save_checkpoint(ckpt_path, raw, optimizer, {**meta, "step": step, "rng": rng_state()})

    ledger = flops.Ledger(raw.config, meta.get("kind") == "finetune", rt.world_size, log.path, start_step)
    t0 = time.time()
    for step in bar:
        if step % cfg.eval_interval == 0 and not (cfg.resume and step == start_step):
            log.write({"step": step, **evaluate(model)})
            t0 = time.time()  # evaluation is not training throughput
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
        loss = all_mean(rt, loss_sum.item() / accum)  # one sync per step, needed for the NaN check
        if not math.isfinite(loss):
            kept = f"the last good checkpoint {ckpt_path} is kept" if os.path.exists(ckpt_path) else "no checkpoint yet"
            raise UserError(f"loss is {loss} at step {step}: stopped; {kept}. Try a lower learning_rate or dtype=float32")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf")).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dt, t0 = time.time() - t0, time.time()
        tok_s = n_tokens / dt  # pauses and padding count: they cost compute
        mfu = raw.estimate_mfu(tok_s / rt.world_size, rt.device)  # per GPU, against one GPU's peak
        log.write({"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_sec": tok_s, "mfu": mfu,
                   **ledger.record()})
        if step % cfg.log_interval == 0 or step == cfg.max_iters - 1:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}",
                            mfu="n/a" if mfu is None else f"{mfu:.1%}")
        if (step + 1) % ckpt_every == 0 or step + 1 == cfg.max_iters:
            save(step + 1)
    if cfg.max_iters > start_step:
        log.write({"step": cfg.max_iters, **evaluate(model)})


def start(cfg, rt, gpt_config: GPTConfig) -> tuple[GPT, torch.optim.Optimizer, int, MetricsLog]:
    """Build the model and optimizer, restore them from out_dir/ckpt.pt if cfg.resume, open the log."""
    model = GPT(gpt_config).to(rt.device)
    optimizer = make_optimizer(model, cfg)
    step, ckpt_path = 0, os.path.join(cfg.out_dir, "ckpt.pt")
    if cfg.resume:
        ckpt = load_checkpoint(ckpt_path, rt.device)
        if ckpt["meta"].get("model") != dataclasses.asdict(gpt_config):
            raise UserError(f"{ckpt_path} holds a model of another config {ckpt['meta'].get('model')}; "
                            "resume with the same model options")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["meta"]["step"]
        set_rng_state(ckpt["meta"]["rng"])
    elif rt.master and os.path.exists(ckpt_path):
        raise UserError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out_dir")
    if rt.master:
        os.makedirs(cfg.out_dir, exist_ok=True)
    log = MetricsLog(os.path.join(cfg.out_dir, "log.jsonl") if rt.master else None,
                     {"config": dataclasses.asdict(cfg), "resumed_at": step if cfg.resume else None,
                      "world_size": rt.world_size, "n_params": model.num_params()})
    return model, optimizer, step, log


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
    from data import PretrainData
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    try:
        data = PretrainData(cfg.data_dir, cfg.block_size, cfg.batch_size, cfg.pause_frac, cfg.seed)
        gpt_config = GPTConfig(block_size=cfg.block_size, vocab_size=padded_vocab(data.vocab_size),
                               n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout,
                               bias=cfg.bias, pause_id=data.pause_id)
        model, optimizer, step, log = start(cfg, rt, gpt_config)
        meta = {"kind": "pretrain", "config": dataclasses.asdict(cfg), "model": dataclasses.asdict(gpt_config),
                "tokenizer": data.meta["tokenizer"]}
        fit(cfg, rt, model, optimizer, data.batch, lambda m: pretrain_eval(m, data, cfg, rt), meta, step, log)
    finally:
        teardown(rt)


if __name__ == "__main__":
    run_main(lambda: main(parse_config(TrainConfig, prog="train.py")))
