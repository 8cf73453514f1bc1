"""Prepare: documents (C4 .json.gz, .jsonl, .json, .txt) -> flat uint16 token shards + meta.json.

    python data.py prepare --input='data/c4_raw/c4-train.*' --val_input='data/c4_raw/c4-validation.*'
    python data.py verify --data_dir=data/c4

One worker process per input file. A shard is done only once it is complete and checked: its worker
hashes the tokens as it writes them into a temp file of its own, reads the file back, and only then
renames it; meta.json then lists the shard with its token count and sha256, which the loader (size)
and `data.py verify` (size and sha256) check. A run holds a lock on out_dir that its workers inherit,
and the workers die with it, so no two runs (or a run and the orphans of a killed one) ever write
into the same out_dir.
"""
import ctypes
import dataclasses
import glob
import gzip
import hashlib
import itertools
import json
import os
import signal
import sys
import time
import zlib
from collections import Counter
from contextlib import ExitStack
from multiprocessing import Pool
from typing import Iterator

import numpy as np
from tqdm import tqdm

import tokenizer as tokmod
from config import UserError, check_config, opt
from runtime import atomic_open, ensure_writable_dir, file_sha256, lock_dir, write_json


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

    .json.gz (C4), .jsonl, .json: one JSON object with a "text" string per line (a blank line is
    skipped and counted too); .txt: the whole file is one document.
    """
    is_json = not path.endswith(".txt")
    for raw in (_lines(path) if is_json else [b"".join(_lines(path))]):
        text, reason = _document(raw, is_json) if raw.strip() or not is_json else (None, "blank line")
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
    tokenizer: str = opt("gpt2", "gpt2 (GPT-2 BPE), char or word", choices=("gpt2", "char", "word"))
    bpe_file: str = opt("", "local GPT-2 BPE file (r50k_base.tiktoken); empty: tokenizer.py's search order")
    val_frac: float = opt(0.005, "fraction of documents held out for validation when val_input is empty", ge=0, lt=1)
    workers: int = opt(os.cpu_count() or 1, "worker processes (one input file each at a time)", ge=1)


LOCK_WAIT_S = 5.0  # a killed run's workers take a moment to die (and release the lock they inherited)


def lock_out_dir(out_dir: str):
    """Hold out_dir/.prepare.lock for this run (runtime.lock_dir). Workers forked from this process inherit
    it, so an orphaned worker still holds it while it lives."""
    return lock_dir(out_dir, "data.py prepare or its orphaned workers", "prepare", LOCK_WAIT_S)


_TOK = None  # the tokenizer of a worker process


def _init_worker(parent: int, tok_meta: dict | None, bpe_file: str | None) -> None:
    global _TOK
    if sys.platform.startswith("linux"):  # die with the main process, even if it gets SIGKILL: no orphan writes on
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the main process died before prctl
        os._exit(1)
    if tok_meta:
        _TOK = tokmod.from_meta(tok_meta, bpe_file)


def _symbols_job(job: tuple[str, str]) -> list[str]:
    kind, path = job
    return tokmod.get_tokenizer(kind, texts=read_documents(path, Counter())).symbols


def _tokenize_job(job: tuple[str, list[str], float]) -> dict:
    """Worker: one input file -> outs[0] (and outs[1] for the held-out fraction frac), each written
    whole through a temp file of its own and read back against the hash of what was written."""
    src, outs, frac = job
    bad, n_docs, n_tokens, digests = Counter(), 0, [0] * len(outs), [hashlib.sha256() for _ in outs]
    try:
        with ExitStack() as stack:
            files = [stack.enter_context(atomic_open(p)) for p in outs]
            docs = read_documents(src, bad)
            while batch := list(itertools.islice(docs, 1000)):
                # document i is held out (dest 1) when i*frac crosses an integer: every (1/frac)-th one, evenly spread
                dest = [int(int((i + 1) * frac) > int(i * frac)) for i in range(n_docs, n_docs + len(batch))]
                n_docs += len(batch)
                ids = _TOK.encode_batch(batch)
                for d, f in enumerate(files):
                    a = np.fromiter(itertools.chain.from_iterable(t + [_TOK.eot_id] for t, k in zip(ids, dest)
                                                                  if k == d), dtype=np.uint16).tobytes()
                    try:
                        f.write(a)
                    except OSError as e:  # name the file here: atomic_open cannot tell which of two failed
                        raise UserError(f"cannot write {outs[d]}: {e.strerror}") from None
                    digests[d].update(a)
                    n_tokens[d] += len(a) // 2
            for f, h in zip(files, digests):
                f.flush()
                if file_sha256(f.name) != h.hexdigest():
                    raise UserError(f"{f.name} changed on disk while {src} was tokenized into it")
    except UserError as e:
        return {"error": str(e)}
    shards = [{"file": os.path.basename(p), "tokens": n, "sha256": h.hexdigest(), "source": src}
              for p, n, h in zip(outs, n_tokens, digests)]
    return {"source": src, "docs": n_docs, "tokens": sum(n_tokens), "bad": dict(bad), "shards": shards}


def _parallel(fn, jobs: list, workers: int, desc: str, initargs: tuple = (None, None)) -> Iterator:
    """fn over jobs in worker processes, results as they come, with a progress bar over files."""
    with Pool(max(1, min(workers, len(jobs))), _init_worker, (os.getpid(), *initargs)) as pool:
        yield from tqdm(pool.imap_unordered(fn, jobs), total=len(jobs), desc=desc, unit="file")


def prepare(cfg: PrepareConfig) -> dict:
    """Tokenize cfg.input (and cfg.val_input) into cfg.out_dir; resumable. Returns the meta written."""
    check_config(cfg)
    train, val = _expand(cfg.input), _expand(cfg.val_input)
    if not train:
        raise UserError("no --input given; e.g. --input='data/c4_raw/c4-train.*'")
    ensure_writable_dir(cfg.out_dir)
    lock = lock_out_dir(cfg.out_dir)
    try:
        return _prepare(cfg, train, val)
    finally:
        lock.close()


def _prepare(cfg: PrepareConfig, train: list[str], val: list[str]) -> dict:
    held_out = cfg.val_frac > 0 and not val
    run = {"tokenizer": cfg.tokenizer, "val_frac": cfg.val_frac if held_out else 0, "input": train, "val_input": val}
    meta_path = os.path.join(cfg.out_dir, "meta.json")
    old = load_meta(cfg.out_dir) if os.path.exists(meta_path) else None
    if old and old.get("prepare") != run:
        raise UserError(f"{cfg.out_dir} was prepared from other inputs or settings; use a new --out_dir or delete it")
    for stale in glob.glob(os.path.join(cfg.out_dir, "*.bin*.tmp")) + glob.glob(meta_path + "*.tmp"):
        os.remove(stale)  # a killed run's: nobody writes it any more, since we hold the lock
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

    out = lambda split, i: os.path.join(cfg.out_dir, f"{split}_{i:05d}.bin")  # noqa: E731
    jobs = [(p, [out("train", i), out("val", i)] if held_out else [out("train", i)], cfg.val_frac * held_out)
            for i, p in enumerate(train)]
    jobs += [(p, [out("val", i)], 0.0) for i, p in enumerate(val)]
    done = _finished_shards(cfg.out_dir, old) if old else {}  # file name -> its meta.json entry
    bad_lines = {src: c for src, c in old.get("bad_lines", {}).items() if isinstance(c, dict)} if old else {}
    finished = lambda outs: all(os.path.basename(p) in done for p in outs)  # noqa: E731

    def record() -> None:  # meta.json lists a shard once it is complete and checked, and each file's bad lines
        meta["shards"] = {"train": [], "val": []}
        for _, outs, _ in jobs:
            for p in outs if finished(outs) else []:
                meta["shards"][os.path.basename(p).split("_")[0]].append(done[os.path.basename(p)])
        meta["bad_lines"] = {src: bad_lines[src] for src, outs, _ in jobs if finished(outs) and bad_lines.get(src)}
        write_json(meta_path, meta)

    record()  # before tokenizing, so that a resumed run finds the same vocabulary
    todo = [j for j in jobs if not finished(j[1])]
    t0, docs, tokens, errors = time.time(), 0, 0, []
    for r in _parallel(_tokenize_job, todo, cfg.workers, "prepare", (tok.meta(), bpe_file)) if todo else []:
        if "error" in r:
            errors.append(r["error"])
            continue
        done.update({s["file"]: s for s in r["shards"]})
        bad_lines[r["source"]] = r["bad"]
        docs, tokens = docs + r["docs"], tokens + r["tokens"]
        record()
    dt = time.time() - t0

    bad = sum(map(Counter, meta["bad_lines"].values()), Counter())
    print(f"prepare: {len(todo)} file(s) tokenized ({len(jobs) - len(todo)} already done): {docs:,} documents, "
          f"{tokens:,} tokens, {tokens / max(dt, 1e-9):,.0f} tokens/s; bad lines: "
          + (", ".join(f"{k} {v}" for k, v in sorted(bad.items())) + " (per file in meta.json)" if bad else "none"))
    print(f"shards: train {sum(s['tokens'] for s in meta['shards']['train']):,} tokens, "
          f"val {sum(s['tokens'] for s in meta['shards']['val']):,} tokens, in {cfg.out_dir}")
    if errors:
        raise UserError(f"{len(errors)} input file(s) failed, the others are done: " + "; ".join(errors))
    return meta


def _finished_shards(out_dir: str, old: dict) -> dict:
    """The shards of an earlier run that meta.json lists with a checksum and that still have their size."""
    done = {}
    for entry in old["shards"]["train"] + old["shards"]["val"]:
        problem = shard_problem(out_dir, entry) or ("" if "sha256" in entry else "has no checksum in meta.json")
        if problem:
            print(f"prepare: {entry['file']} {problem}: tokenizing its input again")
        else:
            done[entry["file"]] = entry
    return done


# -------------------- meta.json, and checking shards against it
def load_meta(data_dir: str) -> dict:
    """The meta.json of a prepared data directory."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.isfile(path):
        raise UserError(f"no meta.json in {data_dir}; run `python data.py prepare --out_dir={data_dir}` first")
    try:
        with open(path, "rb") as f:
            meta = json.load(f)
    except ValueError as e:  # invalid JSON or text
        raise UserError(f"{path} is not valid JSON ({e}); run data.py prepare again") from None
    if problem := meta_problem(meta):
        raise UserError(f"{path}: {problem}; run data.py prepare again")
    return meta


def meta_problem(meta) -> str | None:
    """What is wrong with the fields of a meta.json (the first one, named), or None."""
    if not isinstance(meta, dict):
        return f"not a JSON object but a {type(meta).__name__}"
    if meta.get("dtype") != "uint16":
        return f"field dtype: shards must be uint16, not {meta.get('dtype')!r}"
    for key in ("vocab_size", "pause_id", "eot_id"):
        if type(meta.get(key)) is not int or not 0 <= meta[key] <= 65536:
            return f"field {key} must be an integer in [0, 65536], got {meta.get(key)!r}"
    for key in ("pause_id", "eot_id"):
        if meta[key] >= meta["vocab_size"]:
            return f"field {key}={meta[key]} is not below vocab_size={meta['vocab_size']}"
    if meta["pause_id"] == meta["eot_id"]:
        return f"fields pause_id and eot_id are both {meta['pause_id']}"
    tok = meta.get("tokenizer")
    if not isinstance(tok, dict):
        return "field tokenizer is missing or not an object"
    for key in ("vocab_size", "pause_id", "eot_id"):
        if tok.get(key) != meta[key]:
            return f"field tokenizer.{key}={tok.get(key)!r} disagrees with {key}={meta[key]}"
    if tok.get("kind") in ("char", "word"):  # its ids: the symbols, then EOT, then <pause> (tokenizer.py)
        n, symbols = meta["vocab_size"] - 2, tok.get("symbols")
        if not (isinstance(symbols, list) and len(symbols) == n and all(isinstance(x, str) for x in symbols)):
            return f"field tokenizer.symbols must be a list of vocab_size - 2 = {n} strings"
        if (meta["eot_id"], meta["pause_id"]) != (n, n + 1):
            return f"fields eot_id and pause_id of a {tok['kind']} vocabulary must be {n} and {n + 1}"
    shards = meta.get("shards")
    if not isinstance(shards, dict) or not all(isinstance(shards.get(s), list) for s in ("train", "val")):
        return "field shards must be an object with train and val lists"
    for split in ("train", "val"):
        for e in shards[split]:
            if not (isinstance(e, dict) and isinstance(e.get("file"), str) and os.path.basename(e["file"]) == e["file"]
                    and type(e.get("tokens")) is int and e["tokens"] >= 0):
                return f"field shards.{split} has an entry that is not {{file: NAME, tokens: N}}: {str(e)[:80]}"
    return None


def shard_problem(data_dir: str, entry: dict, checksum: bool = False) -> str | None:
    """What is wrong with a shard that meta.json lists (missing, other size, other sha256), or None."""
    path = os.path.join(data_dir, entry["file"])
    if not os.path.isfile(path):
        return "is missing"
    if (size := os.path.getsize(path)) != 2 * entry["tokens"]:
        return f"has {size} bytes where meta.json records {entry['tokens']} tokens ({2 * entry['tokens']} bytes)"
    if checksum and "sha256" in entry and file_sha256(path) != entry["sha256"]:
        return "does not match the sha256 that meta.json records"
    return None


def check_shards(data_dir: str, meta: dict, ids: bool = False) -> None:
    """The cheap check, before reading: every listed shard exists and has the size meta.json records; with `ids`,
    also every id below vocab_size (one np.max a shard: 0.012 s for 340 MB in the page cache, on a 2-core CPU)."""
    for entry in meta["shards"]["train"] + meta["shards"]["val"]:
        if problem := shard_problem(data_dir, entry) or (ids and id_problem(data_dir, entry, meta, pauses=False)):
            raise UserError(f"shard {os.path.join(data_dir, entry['file'])} {problem}; check all with `python data.py "
                            f"verify --data_dir={data_dir}` and run data.py prepare again")


def id_problem(data_dir: str, entry: dict, meta: dict, pauses: bool = True) -> str | None:
    """What is wrong with a shard's token ids: one not below vocab_size, or (`pauses`) a pause in a shard that was
    never pause-injected (data.py inject records pause_frac); or None."""
    ids = np.memmap(os.path.join(data_dir, entry["file"]), dtype=np.uint16, mode="r")
    if len(ids) and (top := int(ids.max())) >= meta["vocab_size"]:
        return f"holds id {top}, not below vocab_size {meta['vocab_size']}"
    if pauses and "pause_frac" not in meta and (ids == meta["pause_id"]).any():
        return f"holds the pause id {meta['pause_id']}, but meta.json records no pause injection"
    return None


@dataclasses.dataclass
class VerifyConfig:
    """Check every shard of a prepared data_dir against the size and sha256 that its meta.json records."""
    data_dir: str = opt("data/c4", "prepared data directory (from data.py prepare or data.py inject)")


def verify(cfg: VerifyConfig) -> None:
    """Read every shard and compare it with meta.json; a UserError names each one that does not match."""
    meta = load_meta(cfg.data_dir)
    entries = meta["shards"]["train"] + meta["shards"]["val"]
    bad = [f"{e['file']} {problem}" for e in tqdm(entries, desc="verify", unit="shard")
           if (problem := shard_problem(cfg.data_dir, e, checksum=True) or id_problem(cfg.data_dir, e, meta))]
    unchecked = sum("sha256" not in e for e in entries)
    if bad:
        raise UserError(f"{len(bad)} of {len(entries)} shard(s) in {cfg.data_dir} do not match meta.json: "
                        + "; ".join(bad) + ". Delete them and run data.py prepare again (same options)")
    print(f"verify: all {len(entries)} shard(s) in {cfg.data_dir} match meta.json (size"
          + (f"; {unchecked} without a recorded sha256: size only" if unchecked else
             " and sha256") + f"; every id below vocab_size {meta['vocab_size']})")


if __name__ == "__main__":
    from config import module_main, run_main
    run_main(module_main, "prepare.py", __doc__, "run python data.py prepare or verify (python data.py --help)",
             sys.argv[1:])
