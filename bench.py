"""Speed, measured in one run: a training step of StdPT and of PausePT in alternating rounds (median, spread,
ratio, achieved GFLOP/s beside a matmul of the model's shapes), decoding one row with and without the KV cache,
the time to the first answer token with M_inf = 0 and 10 pauses, and batched evaluation over an M_inf sweep.

    python bench.py                                    # 6 x 384 model, GPT-2 vocabulary, on this machine
    python bench.py --compare_to=/tmp/old              # also: this checkout's training vs another's, alternating
    python bench.py --preset=config/130m.toml --batch_size=16 --compile   # on a GPU
"""
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

import flops
from config import DEVICES, DTYPES, UserError, check_config, load_toml, opt, parse_config, run_main
from runtime import setup_runtime
from data import PretrainData
from model import GPT, GPTConfig
from pause import with_pauses
from sample import generate
from tokenizer import GPT2_EOT, GPT2_PAUSE, padded_vocab
from train import TrainConfig

VOCAB = GPT2_PAUSE + 1  # GPT-2's tokens and <pause>


@dataclass
class BenchConfig:
    """Benchmark training, decoding and batched evaluation on random GPT-2 tokens with a preset's model."""
    preset: str = opt("config/cpu_bench.toml", "train.py config file giving the model and batch sizes")
    batch_size: int = opt(0, "override the preset's micro-batch size (0 = keep)", ge=0)
    rounds: int = opt(10, "timed rounds; each times one training step of every variant, in alternating order", ge=1)
    warmup: int = opt(2, "untimed steps of every variant first (compilation, allocator)", ge=0)
    prompt_len: int = opt(64, "prompt tokens for the decoding benchmarks", ge=16)
    new_tokens: int = opt(96, "tokens decoded in the one-row decoding benchmark", ge=1)
    eval_examples: int = opt(32, "prompts (random lengths 16..prompt_len) per M_inf of the batched evaluation", ge=1)
    eval_batch: int = opt(8, "rows decoded together in the batched evaluation", ge=1)
    compare_to: str = opt("", "another checkout (e.g. a git worktree of an older commit): train StdPT in its processes "
                              "and this one's, alternately, same seed (process-wide settings are part of its speed)")
    compare_rounds: int = opt(3, "processes per checkout for --compare_to; each trains 20 steps, the first 2 untimed",
                              ge=1)
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
    meta = {"tokenizer": {"kind": "gpt2", "vocab_size": VOCAB, "eot_id": GPT2_EOT, "pause_id": GPT2_PAUSE},
            "vocab_size": VOCAB, "pause_id": GPT2_PAUSE, "eot_id": GPT2_EOT, "dtype": "uint16",
            "shards": {"train": shard, "val": [{**shard[0], "file": "val_00000.bin"}]}}
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(meta, f)
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def spread(times: list[float]) -> str:
    """'median ms (min-max)' of a list of seconds."""
    return f"{1e3 * statistics.median(times):.1f} ms ({1e3 * min(times):.1f}-{1e3 * max(times):.1f})"


def gpt_config_of(tc: TrainConfig) -> GPTConfig:
    return GPTConfig(block_size=tc.block_size, vocab_size=padded_vocab(VOCAB), n_layer=tc.n_layer, n_head=tc.n_head,
                     n_embd=tc.n_embd, mlp_hidden=tc.mlp_hidden, pause_id=GPT2_PAUSE, pos=tc.pos)


# One training process of a checkout (run in its folder, so its own model.py, runtime.py and settings): StdPT
# steps on seeded random tokens, printing the step times and losses as JSON.
STEP_PROCESS = """
import json, sys, time, torch
try:
    from runtime import setup_runtime
except ImportError:  # a checkout from before runtime.py (--compare_to an older commit)
    from common import setup_runtime
from model import GPT, GPTConfig
a = json.loads(sys.argv[1])
rt = setup_runtime(a["device"], "float32", a["seed"])
model = GPT(GPTConfig(**a["model"])).to(rt.device)
opt = model.configure_optimizers(a["weight_decay"], a["lr"], (0.9, 0.95), rt.device.type)
gen = torch.Generator().manual_seed(a["seed"])
times, losses = [], []
for step in range(a["steps"]):
    xy = torch.randint(0, a["vocab"], (a["batch"], a["block"] + 1), generator=gen).to(rt.device)
    t0 = time.perf_counter()
    _, loss = model(xy[:, :-1], xy[:, 1:])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(loss.item())  # .item() waits for the device
    times.append(time.perf_counter() - t0)
print(json.dumps({"times": times[2:], "losses": losses}))
"""


def compare_checkouts(cfg: BenchConfig, tc: TrainConfig, rt) -> dict[str, dict]:
    """StdPT step times of this checkout and cfg.compare_to, each in processes of its own, alternating
    (this, other, other, this, ...), and the losses of their 20 steps from the same seed."""
    if not os.path.isfile(os.path.join(cfg.compare_to, "model.py")):
        raise UserError(f"--compare_to={cfg.compare_to}: no model.py there")
    args = json.dumps({"model": dataclasses.asdict(gpt_config_of(tc)), "device": str(rt.device), "seed": cfg.seed,
                       "weight_decay": tc.weight_decay, "lr": tc.learning_rate, "vocab": VOCAB,
                       "batch": tc.batch_size, "block": tc.block_size, "steps": 20})
    here = os.path.dirname(os.path.abspath(__file__))
    out = {"this": {"times": [], "rounds": []}, "compared": {"times": [], "rounds": []}}
    for r in tqdm(range(cfg.compare_rounds), desc="checkouts", leave=False):
        for name in ("this", "compared")[::1 if r % 2 == 0 else -1]:
            folder = here if name == "this" else cfg.compare_to
            proc = subprocess.run([sys.executable, "-c", STEP_PROCESS, args], cwd=folder, capture_output=True,
                                  text=True)
            if proc.returncode:
                raise UserError(f"the training process in {folder} failed: {proc.stderr.strip()[-300:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            out[name]["times"] += res["times"]
            out[name]["rounds"].append(statistics.median(res["times"]))
            out[name]["losses"] = res["losses"]
    return out


def bench_training(cfg: BenchConfig, tc: TrainConfig, rt, data_dir: str) -> dict[str, dict]:
    """Every variant's step time over cfg.rounds alternating rounds (each round one step of each, the order
    reversed every round, so load from other processes falls on all alike), and its losses."""
    runs = {}
    for name, frac in (("StdPT", 0.0), ("PausePT", 0.1)):
        torch.manual_seed(cfg.seed)
        model = GPT(gpt_config_of(tc)).to(rt.device)
        runs[name] = {"model": model, "opt": model.configure_optimizers(tc.weight_decay, tc.learning_rate, (tc.beta1, tc.beta2), rt.device.type), "losses": [], "times": [],
                      "step": torch.compile(model) if cfg.compile else model,
                      "data": PretrainData(data_dir, tc.block_size, tc.batch_size, frac, cfg.seed)}
    for step in range(cfg.warmup + cfg.rounds):
        for name in (list(runs) if step % 2 == 0 else list(runs)[::-1]):
            r = runs[name]
            x, y = r["data"].batch(step)
            sync(rt.device)
            t0 = time.perf_counter()
            with rt.autocast():
                _, loss = r["step"](x.to(rt.device), y.to(rt.device))
            loss.backward()
            r["opt"].step()
            r["opt"].zero_grad(set_to_none=True)
            sync(rt.device)
            r["losses"].append(loss.item())
            if step >= cfg.warmup:
                r["times"].append(time.perf_counter() - t0)
    return runs


def gemm_gflops(m: int, k: int, n: int, device: torch.device, repeats: int = 5) -> float:
    """Float32 GFLOP/s of (m x k) @ (k x n), the median of `repeats`."""
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * m * k * n / statistics.median(times[1:]) / 1e9


def timed(fn, device: torch.device, repeats: int) -> list[float]:
    fn()  # warmup
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def bench_decoding(cfg: BenchConfig, tc: TrainConfig, rt) -> dict:
    """One row: tokens/s with and without the KV cache, time to the first answer token; batched evaluation:
    examples/s of greedy answers (16 tokens) for M_inf in 0, 5, 10, rows of similar length batched together."""
    torch.manual_seed(cfg.seed)
    model = GPT(gpt_config_of(tc)).to(rt.device).eval()
    if rt.device.type == "cpu":
        model.column_major_()  # as checkpoint.load_model does
    rng = np.random.default_rng(cfg.seed)
    prompt = rng.integers(0, GPT2_EOT, cfg.prompt_len).tolist()
    n_new = min(cfg.new_tokens, tc.block_size - cfg.prompt_len)
    out = {"n_new": n_new}
    with rt.autocast():
        for use_cache, repeats in ((True, 5), (False, 1)):
            t = timed(lambda: generate(model, [prompt], n_new, VOCAB, use_cache=use_cache), rt.device, repeats)
            out["cache" if use_cache else "nocache"] = [n_new / s for s in t]
        for m_inf in (0, 10):  # time to the first answer token: one prefill of prompt + pauses
            out[f"first_m{m_inf}"] = timed(
                lambda: generate(model, [with_pauses(prompt, m_inf, GPT2_PAUSE)], 1, VOCAB), rt.device, 10)
        prompts = sorted((rng.integers(0, GPT2_EOT, rng.integers(16, cfg.prompt_len + 1)).tolist()
                          for _ in range(cfg.eval_examples)), key=len)
        for m_inf in (0, 5, 10):
            batches = [[with_pauses(p, m_inf, GPT2_PAUSE) for p in prompts[s:s + cfg.eval_batch]]
                       for s in range(0, len(prompts), cfg.eval_batch)]
            t = timed(lambda: [generate(model, b, 16, VOCAB) for b in batches], rt.device, 1)
            out[f"eval_m{m_inf}"] = len(prompts) / t[0]
    return out


def main(cfg: BenchConfig) -> None:
    check_config(cfg)
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    tc = check_config(TrainConfig(**load_toml(TrainConfig, cfg.preset)))
    if cfg.batch_size:
        tc.batch_size = cfg.batch_size
    where = torch.cuda.get_device_name() if rt.device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device {rt.device} ({where}), torch {torch.__version__}, dtype {str(rt.dtype).split('.')[-1]}, "
          f"preset {cfg.preset}: {tc.n_layer} layers x {tc.n_embd}, {tc.n_head} heads, block {tc.block_size}, "
          f"batch {tc.batch_size}, vocab {padded_vocab(VOCAB)}, compile {cfg.compile}")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = random_data_dir(tmp, max(1 << 20, 4 * tc.batch_size * (tc.block_size + 1)), cfg.seed)
        runs = bench_training(cfg, tc, rt, data_dir)
    step_flops = flops.train_flops(gpt_config_of(tc), tc.batch_size, tc.block_size)
    rows = tc.batch_size * tc.block_size
    for name, r in runs.items():
        med = statistics.median(r["times"])
        mfu = r["model"].estimate_mfu(rows / med, rt.device, tc.block_size)
        print(f"train {name:15s} step {spread(r['times'])} over {cfg.rounds} rounds, {rows / med:,.0f} tokens/s, "
              f"{step_flops / med / 1e9:.0f} GFLOP/s" + (f", MFU {mfu:.1%}" if mfu is not None else ""))
    gemm, hidden = gemm_gflops(rows, tc.n_embd, padded_vocab(VOCAB), rt.device), flops.mlp_width(tc)
    print(f"matmul limit: {rows}x{tc.n_embd}x{padded_vocab(VOCAB)} (the output layer) at {gemm:.0f} GFLOP/s, "
          f"{rows}x{tc.n_embd}x{hidden} (the MLP) at {gemm_gflops(rows, tc.n_embd, hidden, rt.device):.0f}"
          f"; a step is {step_flops / 1e9:.0f} GFLOP (flops.py)")

    def ratio(a: str, b: str) -> str:
        per_round = [x / y for x, y in zip(runs[a]["times"], runs[b]["times"])]
        return (f"{statistics.median(runs[a]['times']) / statistics.median(runs[b]['times']):.3f} "
                f"(per round {min(per_round):.3f}-{max(per_round):.3f})")
    print(f"train PausePT/StdPT step time: {ratio('PausePT', 'StdPT')}")
    if cfg.compare_to:
        c = compare_checkouts(cfg, tc, rt)
        this, other = (statistics.median(c[k]["times"]) for k in ("this", "compared"))
        per_round = [a / b for a, b in zip(c["this"]["rounds"], c["compared"]["rounds"])]
        diff = max(abs(a - b) for a, b in zip(c["this"]["losses"], c["compared"]["losses"]))
        print(f"train StdPT, this checkout {spread(c['this']['times'])}, {cfg.compare_to} "
              f"{spread(c['compared']['times'])}, {cfg.compare_rounds} processes each, alternating: this/compared "
              f"{this / other:.3f} (per process pair {min(per_round):.3f}-{max(per_round):.3f}); the losses of "
              f"{len(c['this']['losses'])} steps from one seed differ by at most {diff:.1e}")
    s = bench_decoding(cfg, tc, rt)
    med = {k: statistics.median(v) for k, v in s.items() if isinstance(v, list)}
    print(f"decode one row, {cfg.prompt_len}-token prompt + {s['n_new']}: {med['cache']:,.0f} tokens/s with the KV "
          f"cache ({min(s['cache']):,.0f}-{max(s['cache']):,.0f}), {med['nocache']:,.0f} without "
          f"(x{med['cache'] / med['nocache']:.2f})")
    print(f"first answer token: {1e3 * med['first_m0']:.2f} ms with M_inf=0, {1e3 * med['first_m10']:.2f} ms with "
          f"M_inf=10 (x{med['first_m10'] / med['first_m0']:.2f})")
    print(f"batched evaluation, {cfg.eval_examples} prompts of 16-{cfg.prompt_len} tokens, {cfg.eval_batch} a batch, "
          f"16 greedy tokens each: " + ", ".join(f"{s[f'eval_m{m}']:.1f} examples/s at M_inf={m}" for m in (0, 5, 10)))


if __name__ == "__main__":
    run_main(lambda: main(parse_config(BenchConfig, prog="bench.py")))
