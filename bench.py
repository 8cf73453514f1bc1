"""Speed, measured in one run: training tokens/s and MFU for StdPT vs PausePT, the share of a step
spent building batches, sampling tokens/s with and without the KV cache, and the time to the
first answer token with M_inf = 0 and M_inf = 10 pauses.

    python bench.py                                   # tiny preset on this machine
    python bench.py --preset=config/130m.toml --batch_size=8 --compile   # on a GPU
"""
import json
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from common import DEVICES, DTYPES, check_config, load_toml, opt, parse_config, run_main, setup_runtime
from data import PretrainData
from model import GPT, GPTConfig
from sample import generate, with_pauses
from tokenizer import GPT2_EOT, GPT2_PAUSE, padded_vocab
from train import TrainConfig, make_optimizer


@dataclass
class BenchConfig:
    """Benchmark training and sampling on random GPT-2-sized tokens with a preset's model."""
    preset: str = opt("config/tiny.toml", "train.py config file giving the model and batch sizes")
    batch_size: int = opt(0, "override the preset's micro-batch size (0 = keep)", ge=0)
    steps: int = opt(5, "timed training steps per run (after warmup)", ge=1)
    warmup: int = opt(2, "untimed steps first (compilation, allocator)", ge=0)
    prompt_len: int = opt(64, "prompt tokens for the sampling benchmarks", ge=1)
    new_tokens: int = opt(32, "tokens decoded in the sampling benchmark", ge=1)
    device: str = opt("auto", "where to run", choices=DEVICES)
    dtype: str = opt("auto", "auto: bfloat16 on GPU, float32 on CPU", choices=DTYPES)
    compile: bool = opt(False, "torch.compile the model for the training benchmark")
    seed: int = opt(0, "seed of the random tokens and weights", ge=0)


def random_data_dir(path: str, n_tokens: int, seed: int) -> str:
    """A prepared-data directory of random GPT-2 token ids (the loader's speed does not depend on text)."""
    tokens = np.random.default_rng(seed).integers(0, GPT2_EOT, n_tokens, dtype=np.uint16)
    for split in ("train", "val"):
        tokens.tofile(os.path.join(path, f"{split}_00000.bin"))
    shard = [{"file": "train_00000.bin", "tokens": n_tokens}]
    meta = {"tokenizer": {"kind": "gpt2", "vocab_size": GPT2_PAUSE + 1, "eot_id": GPT2_EOT, "pause_id": GPT2_PAUSE},
            "vocab_size": GPT2_PAUSE + 1, "pause_id": GPT2_PAUSE, "eot_id": GPT2_EOT, "dtype": "uint16",
            "shards": {"train": shard, "val": [{**shard[0], "file": "val_00000.bin"}]}}
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(meta, f)
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_training(cfg: BenchConfig, tc: TrainConfig, rt, data_dir: str, pause_frac: float) -> dict:
    """Median-free, honest wall clock over cfg.steps full steps; batch building timed on its own too."""
    data = PretrainData(data_dir, tc.block_size, tc.batch_size, pause_frac, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(block_size=tc.block_size, vocab_size=padded_vocab(data.vocab_size), n_layer=tc.n_layer,
                          n_head=tc.n_head, n_embd=tc.n_embd, mlp_hidden=tc.mlp_hidden,
                          pause_id=data.pause_id, pos=tc.pos)).to(rt.device)
    optimizer = make_optimizer(model, tc)
    step_fn = torch.compile(model) if cfg.compile else model
    for step in range(cfg.warmup + cfg.steps):
        if step == cfg.warmup:
            sync(rt.device)
            t0 = time.perf_counter()
        x, y = data.batch(step)
        with rt.autocast():
            _, loss = step_fn(x.to(rt.device), y.to(rt.device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(rt.device)
    dt = (time.perf_counter() - t0) / cfg.steps
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        data.batch(step)
    batch_dt = (time.perf_counter() - t0) / cfg.steps
    tok_s = tc.batch_size * tc.block_size / dt
    return {"step_ms": dt * 1e3, "tokens_per_sec": tok_s, "mfu": model.estimate_mfu(tok_s, rt.device),
            "batch_ms": batch_dt * 1e3, "batch_share": batch_dt / dt, "n_params": model.num_params()}


@torch.no_grad()
def bench_sampling(cfg: BenchConfig, tc: TrainConfig, rt) -> dict:
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(block_size=tc.block_size, vocab_size=padded_vocab(GPT2_PAUSE + 1), n_layer=tc.n_layer,
                          n_head=tc.n_head, n_embd=tc.n_embd, mlp_hidden=tc.mlp_hidden,
                          pause_id=GPT2_PAUSE, pos=tc.pos)).to(rt.device).eval()
    prompt = torch.randint(0, GPT2_EOT, (cfg.prompt_len,)).tolist()
    n_new = min(cfg.new_tokens, tc.block_size - cfg.prompt_len - 10)

    def timed(fn, repeats=3) -> float:
        fn()  # warmup
        sync(rt.device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync(rt.device)
        return (time.perf_counter() - t0) / repeats

    out = {}
    with rt.autocast():
        for use_cache in (True, False):
            dt = timed(lambda: generate(model, [prompt], n_new, GPT2_PAUSE + 1, use_cache=use_cache))
            out[f"sample_tok_s_{'cache' if use_cache else 'nocache'}"] = n_new / dt
        for m_inf in (0, 10):  # time to the first answer token: one prefill of prompt + pauses
            out[f"first_token_ms_m{m_inf}"] = 1e3 * timed(
                lambda: generate(model, [with_pauses(prompt, m_inf, GPT2_PAUSE)], 1, GPT2_PAUSE + 1), repeats=10)
    return out


def main(cfg: BenchConfig) -> None:
    check_config(cfg)
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    tc = check_config(TrainConfig(**load_toml(TrainConfig, cfg.preset)))
    if cfg.batch_size:
        tc.batch_size = cfg.batch_size
    print(f"device {rt.device} ({torch.cuda.get_device_name() if rt.device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"dtype {str(rt.dtype).split('.')[-1]}, preset {cfg.preset}: {tc.n_layer}x{tc.n_embd}, "
          f"block {tc.block_size}, batch {tc.batch_size}, compile {cfg.compile}")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = random_data_dir(tmp, max(1 << 20, 4 * tc.batch_size * (tc.block_size + 1)), cfg.seed)
        runs = {name: bench_training(cfg, tc, rt, data_dir, frac) for name, frac in (("StdPT", 0.0), ("PausePT", 0.1))}
    for name, r in runs.items():
        mfu = "n/a (CPU: no defined peak)" if r["mfu"] is None else f"{r['mfu']:.1%}"
        print(f"train {name:8s} {r['tokens_per_sec']:>12,.0f} tokens/s  {r['step_ms']:8.1f} ms/step  MFU {mfu}  "
              f"batch building {r['batch_ms']:.2f} ms = {r['batch_share']:.1%} of a step")
    print(f"train PausePT/StdPT tokens/s ratio: {runs['PausePT']['tokens_per_sec'] / runs['StdPT']['tokens_per_sec']:.3f}")
    s = bench_sampling(cfg, tc, rt)
    print(f"sample {s['sample_tok_s_cache']:,.0f} tokens/s with KV cache, {s['sample_tok_s_nocache']:,.0f} without "
          f"(x{s['sample_tok_s_cache'] / s['sample_tok_s_nocache']:.2f}), prompt {cfg.prompt_len} tokens")
    print(f"first answer token: {s['first_token_ms_m0']:.2f} ms with M_inf=0, {s['first_token_ms_m10']:.2f} ms with "
          f"M_inf=10 (x{s['first_token_ms_m10'] / s['first_token_ms_m0']:.2f})")


if __name__ == "__main__":
    run_main(lambda: main(parse_config(BenchConfig, prog="bench.py")))
