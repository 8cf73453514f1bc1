"""Prepare: documents (C4 .json.gz, .jsonl, .json, .txt) -> flat uint16 token shards + meta.json.

    python data.py prepare --input='data/c4_raw/c4-train.*' --val_input='data/c4_raw/c4-validation.*'

One worker process per input file; data.py's loader reads what this writes.
"""
import dataclasses
import glob
import gzip
import itertools
import json
import os
import time
import zlib
from collections import Counter
from multiprocessing import Pool
from typing import Iterator

import numpy as np
from tqdm import tqdm

import tokenizer as tokmod
from common import UserError, opt


# -------------------- documents
SUFFIXES = (".json.gz", ".jsonl", ".json", ".txt")


def _lines(path: str) -> Iterator[bytes]:
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            yield from f
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncation is an EOFError
        raise UserError(f"cannot read {path} ({type(e).__name__}: {e}); if it is a download, delete it and "
                        "fetch it again") from None


def _document(raw: bytes, is_json: bool) -> tuple[str | None, str | None]:
    """(text, None) for a good document, (None, reason) for a bad one."""
    try:
        obj = json.loads(raw.decode("utf-8")) if is_json else {"text": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return None, "invalid utf-8"
    except json.JSONDecodeError:
        return None, "invalid json"
    if not isinstance(obj, dict):
        return None, "not an object"
    if "text" not in obj:
        return None, "missing text"
    if not isinstance(obj["text"], str):
        return None, "text not a string"
    return (obj["text"], None) if obj["text"].strip() else (None, "empty text")


def read_documents(path: str, bad: Counter) -> Iterator[str]:
    """Document texts of one file; bad lines are counted in `bad` by reason and skipped.

    .json.gz (C4), .jsonl, .json: one JSON object with a "text" string per line (blank lines are
    skipped); .txt: the whole file is one document.
    """
    is_json = not path.endswith(".txt")
    for raw in (_lines(path) if is_json else [b"".join(_lines(path))]):
        if is_json and not raw.strip():
            continue
        text, reason = _document(raw, is_json)
        if reason:
            bad[reason] += 1
        else:
            yield text


def _expand(patterns: list[str]) -> list[str]:
    """Files named by `patterns` (paths or globs), in order, each once."""
    files = []
    for p in patterns:
        found = sorted(glob.glob(p)) if glob.has_magic(p) else [p]
        if not found or not os.path.isfile(found[0]):
            raise UserError(f"input {p} matches no file")
        for f in map(os.path.abspath, found):
            if not f.endswith(SUFFIXES):
                raise UserError(f"input {f} is not one of {', '.join(SUFFIXES)}")
            files += [] if f in files else [f]
    return files


# -------------------- prepare: documents -> flat uint16 token shards + meta.json
@dataclasses.dataclass
class PrepareConfig:
    """Tokenize documents into flat uint16 shards (one per input file, each document followed by EOT)."""
    input: list[str] = opt([], "training files or globs: .json.gz (C4), .jsonl, .json (a JSON object with "
                               "'text' per line) or .txt (one document per file)")
    val_input: list[str] = opt([], "validation files or globs (e.g. C4 validation shards); empty: hold out "
                                   "val_frac of each input's documents")
    out_dir: str = opt("data/c4", "output directory for the shards and meta.json")
    tokenizer: str = opt("gpt2", "gpt2, char or word")
    bpe_file: str = opt("", "local GPT-2 BPE file (r50k_base.tiktoken); empty: tokenizer.py's search order")
    val_frac: float = opt(0.005, "fraction of documents held out for validation when val_input is empty")
    workers: int = opt(os.cpu_count() or 1, "worker processes (one input file each at a time)")


_TOK = None  # the tokenizer of a worker process


def _init_worker(tok_meta: dict, bpe_file: str | None) -> None:
    global _TOK
    _TOK = tokmod.from_meta(tok_meta, bpe_file)


def _symbols_job(job: tuple[str, str]) -> list[str]:
    kind, path = job
    return tokmod.get_tokenizer(kind, texts=read_documents(path, Counter())).symbols


def _tokenize_job(job: tuple[str, list[str], float]) -> dict:
    """Worker: one input file -> outs[0] (and outs[1] for the held-out fraction frac), via temp files."""
    src, outs, frac = job
    bad, n_docs, n_tokens = Counter(), 0, [0] * len(outs)
    files = [open(p + ".tmp", "wb") for p in outs]
    try:
        docs = read_documents(src, bad)
        while batch := list(itertools.islice(docs, 1000)):
            # document i is held out (dest 1) when i*frac crosses an integer: every (1/frac)-th one, evenly spread
            dest = [int(int((i + 1) * frac) > int(i * frac)) for i in range(n_docs, n_docs + len(batch))]
            n_docs += len(batch)
            ids = _TOK.encode_batch(batch)
            for d, f in enumerate(files):
                a = np.fromiter(itertools.chain.from_iterable(t + [_TOK.eot_id] for t, k in zip(ids, dest) if k == d),
                                dtype=np.uint16)
                n_tokens[d] += f.write(a.tobytes()) // 2
    except UserError as e:
        return {"error": str(e)}
    finally:
        for f in files:
            f.close()
    for p in outs:
        os.replace(p + ".tmp", p)
    return {"docs": n_docs, "tokens": sum(n_tokens), "bad": bad}


def _parallel(fn, jobs: list, workers: int, desc: str, initargs: tuple | None = None) -> list:
    """fn over jobs in worker processes, with a progress bar over files."""
    with Pool(max(1, min(workers, len(jobs))), _init_worker if initargs else None, initargs or ()) as pool:
        return list(tqdm(pool.imap_unordered(fn, jobs), total=len(jobs), desc=desc, unit="file"))


def write_json(path: str, obj: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def prepare(cfg: PrepareConfig) -> dict:
    """Tokenize cfg.input (and cfg.val_input) into cfg.out_dir; resumable. Returns the meta written."""
    train, val = _expand(cfg.input), _expand(cfg.val_input)
    if not train:
        raise UserError("no --input given; e.g. --input='data/c4_raw/c4-train.*'")
    if not 0 <= cfg.val_frac < 1:
        raise UserError(f"--val_frac must be in [0, 1), got {cfg.val_frac}")
    held_out = cfg.val_frac > 0 and not val
    run = {"tokenizer": cfg.tokenizer, "val_frac": cfg.val_frac if held_out else 0, "input": train, "val_input": val}
    os.makedirs(cfg.out_dir, exist_ok=True)
    meta_path = os.path.join(cfg.out_dir, "meta.json")
    old = load_meta(cfg.out_dir) if os.path.exists(meta_path) else None
    if old and old.get("prepare") != run:
        raise UserError(f"{cfg.out_dir} was prepared from other inputs or settings; use a new --out_dir or delete it")
    bpe_file = cfg.bpe_file or None
    if old:  # a resumed run reuses the vocabulary it started with
        tok = tokmod.from_meta(old["tokenizer"], bpe_file)
    elif cfg.tokenizer in ("char", "word"):  # the vocabulary comes from ALL inputs, train and val
        symbols = set().union(*_parallel(_symbols_job, [(cfg.tokenizer, p) for p in train + val], cfg.workers, "vocab"))
        tok = tokmod.from_meta({"kind": cfg.tokenizer, "symbols": sorted(symbols)})
    else:
        tok = tokmod.get_tokenizer(cfg.tokenizer, bpe_file)
    if tok.vocab_size > 2**16:
        raise UserError(f"{tok.vocab_size} {cfg.tokenizer} ids do not fit uint16 shards; use gpt2 or char")
    meta = {"tokenizer": tok.meta(), "vocab_size": tok.vocab_size, "pause_id": tok.pause_id, "eot_id": tok.eot_id,
            "dtype": "uint16", "prepare": run, "shards": {"train": [], "val": []}, "bad_lines": {}}
    write_json(meta_path, meta)  # before tokenizing, so that a resumed run finds the same vocabulary

    out = lambda split, i: os.path.join(cfg.out_dir, f"{split}_{i:05d}.bin")  # noqa: E731
    jobs = [(p, [out("train", i), out("val", i)] if held_out else [out("train", i)], cfg.val_frac * held_out)
            for i, p in enumerate(train)]
    jobs += [(p, [out("val", i)], 0.0) for i, p in enumerate(val)]
    todo = [j for j in jobs if not all(os.path.exists(p) for p in j[1])]
    t0 = time.time()
    results = _parallel(_tokenize_job, todo, cfg.workers, "prepare", (tok.meta(), bpe_file)) if todo else []
    dt = time.time() - t0

    bad = sum((r["bad"] for r in results if "bad" in r), Counter())
    errors = [r["error"] for r in results if "error" in r]
    for src, outs, _ in jobs:
        if all(os.path.exists(p) for p in outs):
            for p in outs:
                split = os.path.basename(p).split("_")[0]
                meta["shards"][split].append({"file": os.path.basename(p), "tokens": os.path.getsize(p) // 2,
                                              "source": src})
    meta["bad_lines"] = dict(bad)
    write_json(meta_path, meta)
    docs, tokens = sum(r.get("docs", 0) for r in results), sum(r.get("tokens", 0) for r in results)
    print(f"prepare: {len(todo)} file(s) tokenized ({len(jobs) - len(todo)} already done): {docs:,} documents, "
          f"{tokens:,} tokens, {tokens / max(dt, 1e-9):,.0f} tokens/s; bad lines: "
          + (", ".join(f"{k} {v}" for k, v in sorted(bad.items())) or "none"))
    print(f"shards: train {sum(s['tokens'] for s in meta['shards']['train']):,} tokens, "
          f"val {sum(s['tokens'] for s in meta['shards']['val']):,} tokens, in {cfg.out_dir}")
    if errors:
        raise UserError(f"{len(errors)} input file(s) failed, the others are done: " + "; ".join(errors))
    return meta


def load_meta(data_dir: str) -> dict:
    """The meta.json of a prepared data directory."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.isfile(path):
        raise UserError(f"no meta.json in {data_dir}; run `python data.py prepare --out_dir={data_dir}` first")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("dtype") != "uint16":
        raise UserError(f"{path}: shards must be uint16, not {meta.get('dtype')}")
    return meta
