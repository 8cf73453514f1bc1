"""Measure data.py: `prepare` throughput with the GPT-2 tokenizer, and the cost of one PretrainData.batch.

    python bench_data.py [--mb=20] [--workers=2]

The corpus is generated, C4-style: documents are random spans of 50-1000 words of the CPython
documentation that ships with Python (pydoc_data.topics), written as json.gz files.
"""
import dataclasses
import gzip
import json
import os
import random
import shutil
import statistics
import tempfile
import time

from pydoc_data.topics import topics

import data
from config import check_config, opt, parse_config, run_main


@dataclasses.dataclass
class DataBenchConfig:
    """Benchmark data.py prepare and PretrainData.batch on a generated corpus."""
    mb: float = opt(20.0, "corpus size in MB of document text", gt=0)
    files: int = opt(4, "number of json.gz input files", ge=1)
    workers: int = opt(2, "prepare worker processes", ge=1)
    block_size: int = opt(2048, "tokens per training window", ge=1)
    batch_size: int = opt(8, "windows per batch", ge=1)
    pause_frac: float = opt(0.1, "pauses per window as a fraction of block_size", ge=0, lt=1)
    calls: int = opt(50, "timed batch() calls (the median is reported)", ge=1)


def write_corpus(dir: str, mb: float, n_files: int) -> list[str]:
    words, rng = " ".join(topics.values()).split(), random.Random(0)
    paths = [os.path.join(dir, f"c4-train.{i:05d}-of-01024.json.gz") for i in range(n_files)]
    size, outs = 0, [gzip.open(p, "wt", compresslevel=1) for p in paths]
    while size < mb * 1e6:
        start, n = rng.randrange(len(words) - 1000), rng.randint(50, 1000)
        text = " ".join(words[start:start + n])
        outs[rng.randrange(n_files)].write(json.dumps({"url": "u", "text": text, "timestamp": "t"}) + "\n")
        size += len(text.encode())
    for f in outs:
        f.close()
    return paths


def main(cfg: DataBenchConfig) -> None:
    check_config(cfg)
    tmp = tempfile.mkdtemp(prefix="bench_data_")
    try:
        files = write_corpus(tmp, cfg.mb, cfg.files)
        t0 = time.perf_counter()
        meta = data.prepare(data.PrepareConfig(input=files, out_dir=os.path.join(tmp, "out"), val_frac=0.01,
                                               workers=cfg.workers))
        dt = time.perf_counter() - t0
        tokens = sum(s["tokens"] for split in meta["shards"].values() for s in split)
        print(f"prepare (gpt2, {cfg.workers} workers, {cfg.mb:g} MB, {cfg.files} files): {tokens:,} tokens in "
              f"{dt:.2f} s = {tokens / dt:,.0f} tokens/s end to end ({cfg.mb / dt:.2f} MB/s)")
        for pause_frac in (cfg.pause_frac, 0.0):
            d = data.PretrainData(os.path.join(tmp, "out"), cfg.block_size, cfg.batch_size, pause_frac)
            times = []
            for step in range(cfg.calls + 5):
                t0 = time.perf_counter()
                d.batch(step)
                times.append(time.perf_counter() - t0)
            print(f"PretrainData.batch ({cfg.batch_size} x {cfg.block_size}, pause_frac={pause_frac:g}): "
                  f"median {1e3 * statistics.median(times[5:]):.2f} ms over {cfg.calls} calls")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    run_main(lambda: main(parse_config(DataBenchConfig, prog="bench_data.py")))
