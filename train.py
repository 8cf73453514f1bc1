"""Pretraining: standard (pause_frac=0, StdPT) or with random pauses (pause_frac=0.1, PausePT).

    python train.py config/tiny.toml --data_dir=data/tiny --pause_frac=0.1 --out_dir=out/pause
    torchrun --standalone --nproc_per_node=8 train.py config/130m.toml --data_dir=data/c4

The pause method lives in the data (data.PretrainData injects pauses and masks pause targets);
this file is the plain optimisation loop, `fit`, which finetune.py reuses.
"""
import contextlib
import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import flops
from common import (DEVICES, DTYPES, Runtime, UserError, append_line, check_config, ensure_writable_dir,
                    load_checkpoint, lock_dir, nonfinite_tensors, opt, parse_config, rng_state,
                    run_main, save_checkpoint, set_rng_state, setup_runtime, teardown)
from model import GPT, GPTConfig
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


# Options that --resume may change: how long the run goes, how often it evaluates, logs and saves, where it runs.
# The model, the data and the optimiser stay (max_iters also moves the end of the decay if lr_decay_iters is 0).
RESUMABLE = {"out_dir", "resume", "max_iters", "eval_interval", "eval_iters", "log_interval", "ckpt_interval",
             "device", "compile", "on_nonfinite", "max_skips", "bpe_file", "overwrite"}


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


class MetricsLog:
    """JSONL metrics in out_dir/log.jsonl (master only); the first line of each run is its full config.
    A resumed run first cuts the log back to where its checkpoint was written (`truncate_to`), so the
    steps it replays appear once, with the values of the run that continued."""

    def __init__(self, path: str | None, header: dict, truncate_to: int | None = None):
        self.path = path
        if path and truncate_to is not None and os.path.exists(path) and os.path.getsize(path) >= truncate_to:
            os.truncate(path, truncate_to)
        self.write(header)

    def write(self, record: dict) -> None:
        if self.path:
            append_line(self.path, json.dumps(record))  # a full disk: one line, and no partial record

    def size(self) -> int | None:
        return os.path.getsize(self.path) if self.path and os.path.exists(self.path) else None


def all_mean(rt: Runtime, value: float | torch.Tensor) -> float | torch.Tensor:
    """Mean of a scalar, or elementwise of a tensor, over DDP ranks (the value itself in a single process)."""
    if not rt.ddp:
        return value
    if isinstance(value, torch.Tensor):
        t = value.detach().clone()
        dist.all_reduce(t)
        return t / rt.world_size
    t = torch.tensor([value], dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return t.item() / rt.world_size


def cosine_lr(step: int, lr: float, min_lr: float, warmup: int, decay_steps: int) -> float:
    """Linear warmup, then cosine decay to min_lr at decay_steps, then min_lr."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= decay_steps:
        return min_lr
    ratio = (step - warmup) / max(1, decay_steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def make_optimizer(model: GPT, cfg) -> torch.optim.Optimizer:
    return model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), model_device(model))


def model_device(model: torch.nn.Module) -> str:
    return next(model.parameters()).device.type


def fit(cfg, rt, model: GPT, optimizer, get_batch: Callable, evaluate: Callable, meta: dict, start_step: int,
        log: MetricsLog) -> None:
    """Optimise model for steps start_step..cfg.max_iters-1 with DDP, grad accumulation, clipping and
    a cosine LR; `get_batch(step, index)` gives micro-batch `index` (global over ranks) of a step;
    `evaluate(model)` returns a dict of metrics. ckpt.pt is (re)written atomically with `meta`.

    A step whose loss or gradient norm is inf/NaN never reaches the weights: the run stops, or skips
    that update (cfg.on_nonfinite). A checkpoint is written only from weights that have just given a
    finite loss and gradient: the one of step k at step k, before its update; the last one after the
    final evaluation. So the checkpoint kept after a divergence is good, and resuming from it gives
    the same finite loss."""
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
    saved = start_step if cfg.resume else None  # the step of the checkpoint on disk

    def save(step: int, rng: dict) -> None:  # `step` optimizer steps are done; `rng` as that step began
        nonlocal saved
        if bad := nonfinite_tensors(raw):  # on every rank (the weights are the same), so that all stop together
            raise UserError(f"{len(bad)} tensor(s) of the model are not finite at step {step} (e.g. {bad[0]}): "
                            f"stopped without writing them; {kept()}")
        if rt.master:
            save_checkpoint(ckpt_path, raw, optimizer, {**meta, "step": step, "rng": rng, "log_offset": log.size()})
        saved = step

    def kept() -> str:
        return f"the last good checkpoint {ckpt_path} (step {saved}) is kept" if saved is not None else \
            "no checkpoint was written"

    ledger = flops.Ledger(raw.config, meta.get("kind") == "finetune", rt.world_size, log.path, start_step)
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
        # one sync per step: the mean loss, and a grad norm that is non-finite on every rank if it is on one,
        # so that all ranks take the same decision below
        loss, grad_norm = all_mean(rt, torch.stack([loss_sum.double() / accum, grad_norm.double()])).tolist()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)  # this update never reaches the weights
            skipped, in_a_row = skipped + 1, in_a_row + 1
            what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {grad_norm}"
            if cfg.on_nonfinite == "stop" or in_a_row >= cfg.max_skips:
                why = "" if cfg.on_nonfinite == "stop" else f" ({in_a_row} non-finite steps in a row)"
                raise UserError(f"{what} at step {step}{why}: stopped; {kept()}. Try a lower learning_rate or "
                                "dtype=float32")
            log.write({"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "skipped": True,
                       "skipped_steps": skipped})
            t0 = time.time()
            continue
        in_a_row = 0
        if rng is not None:  # these weights just gave a finite loss and gradient
            save(step, rng)
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
            raise UserError(f"the final evaluation gave {metrics}: stopped without writing these weights; {kept()}")
        save(cfg.max_iters, rng_state())


def remove_stale_temps(directory: str) -> None:
    """Delete the temp files atomic_open left in `directory` when its process was killed; call it only while
    holding the directory's lock (lock_dir), so that no live writer owns them."""
    for name in os.listdir(directory):
        if re.fullmatch(r".+\.[0-9a-f]{8}\.tmp", name):  # atomic_open's names: PATH.<8 hex digits>.tmp
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))


@contextlib.contextmanager
def own_out_dir(cfg, rt):
    """While the run lasts, it is out_dir's only writer (a lock); a fresh run never mixes its log with an earlier
    run's (--resume continues that run, --overwrite deletes it); temp files of killed writers are deleted."""
    if not rt.master:
        yield
        return
    ensure_writable_dir(cfg.out_dir)  # a read-only out_dir is one line now, not at the first checkpoint
    with lock_dir(cfg.out_dir, "train.py or finetune.py run", "train"):
        remove_stale_temps(cfg.out_dir)
        used = [name for name in ("ckpt.pt", "log.jsonl") if os.path.exists(os.path.join(cfg.out_dir, name))]
        if used and not cfg.resume and not cfg.overwrite:
            raise UserError(f"{cfg.out_dir} holds an earlier run's {' and '.join(used)}: pass --resume to continue it, "
                            "--overwrite to replace it, or choose another --out_dir")
        for name in used if cfg.overwrite else []:
            os.remove(os.path.join(cfg.out_dir, name))
        yield


def resume_or_restart(out_dir: str) -> dict:
    """The options of a run into out_dir that an experiment reruns: resume its checkpoint, or start afresh (deleting
    the log of a run that was stopped before its first checkpoint)."""
    has_ckpt = os.path.exists(os.path.join(out_dir, "ckpt.pt"))
    return {"resume": has_ckpt, "overwrite": not has_ckpt}


def start(cfg, rt, gpt_config: GPTConfig) -> tuple[GPT, torch.optim.Optimizer, int, MetricsLog]:
    """Build the model and optimizer, restore them from out_dir/ckpt.pt if cfg.resume, open the log."""
    model = GPT(gpt_config).to(rt.device)
    optimizer = make_optimizer(model, cfg)
    step, ckpt_path, changed, log_offset = 0, os.path.join(cfg.out_dir, "ckpt.pt"), None, None
    if cfg.resume:
        ckpt = load_checkpoint(ckpt_path, rt.device)
        saved = {**dataclasses.asdict(GPTConfig()), **ckpt["meta"].get("model", {})}  # older: fewer keys, defaults
        if saved != dataclasses.asdict(gpt_config):
            raise UserError(f"{ckpt_path} holds a model of another config {ckpt['meta'].get('model')}; "
                            "resume with the same model options")
        step, changed = ckpt["meta"]["step"], config_changes(ckpt_path, ckpt["meta"].get("config", {}), cfg)
        if cfg.max_iters < step:
            raise UserError(f"--max_iters={cfg.max_iters} is below the step {step} of {ckpt_path}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["meta"]["rng"])
        log_offset = ckpt["meta"].get("log_offset")
    log = MetricsLog(os.path.join(cfg.out_dir, "log.jsonl") if rt.master else None,
                     {"config": dataclasses.asdict(cfg), "resumed_at": step if cfg.resume else None,
                      **({"changed_on_resume": changed} if changed else {}),
                      "world_size": rt.world_size, "n_params": model.num_params()}, truncate_to=log_offset)
    return model, optimizer, step, log


def config_changes(ckpt_path: str, old: dict, cfg) -> dict:
    """{key: [old, new]} of the options that differ from the checkpoint's run; a UserError if one of them
    would alter the run (see RESUMABLE). Keys the checkpoint's run did not have yet are not compared."""
    changed = {k: [old[k], v] for k, v in dataclasses.asdict(cfg).items() if k in old and old[k] != v and k != "resume"}
    if fixed := [k for k in changed if k not in RESUMABLE]:
        raise UserError(f"--resume continues {ckpt_path} with its own config, but " + ", ".join(
            f"{k}={changed[k][1]} (was {changed[k][0]})" for k in fixed) + "; only " + ", ".join(sorted(RESUMABLE -
            {"resume"})) + " may change. Start a new --out_dir to change the others")
    return changed


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
    check_config(cfg)
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    try:
        with own_out_dir(cfg, rt):
            pretrain(cfg, rt)
    finally:
        teardown(rt)


def pretrain(cfg: TrainConfig, rt) -> None:
    """Build the data and model (or restore them, with --resume) and run `fit`."""
    from data import PretrainData
    data = PretrainData(cfg.data_dir, cfg.block_size, cfg.batch_size, cfg.pause_frac, cfg.seed)
    gpt_config = GPTConfig(block_size=cfg.block_size, vocab_size=padded_vocab(data.vocab_size),
                           n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, mlp_hidden=cfg.mlp_hidden,
                           dropout=cfg.dropout, bias=cfg.bias, pause_id=data.pause_id, pos=cfg.pos)
    model, optimizer, step, log = start(cfg, rt, gpt_config)
    meta = {"kind": "pretrain", "config": dataclasses.asdict(cfg), "model": dataclasses.asdict(gpt_config),
            "tokenizer": data.meta["tokenizer"]}
    fit(cfg, rt, model, optimizer, data.batch, lambda m: pretrain_eval(m, data, cfg, rt), meta, step, log)


if __name__ == "__main__":
    run_main(lambda: main(parse_config(TrainConfig, prog="train.py")))
