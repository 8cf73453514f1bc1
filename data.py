"""Data: download C4, tokenize it into flat uint16 shards (prepare.py), inject pauses, serve pretraining batches.

    python data.py download --n_train=1 --n_val=1 --out_dir=data/c4_raw
    python data.py prepare --input='data/c4_raw/c4-train.*' --val_input='data/c4_raw/c4-validation.*'
    python data.py verify --data_dir=data/c4
    python data.py show --data_dir=data/c4 --pause_frac=0.1
    python data.py inject --data_dir=data/c4 --out_dir=data/c4_pause --pause_frac=0.1

Pause-pretraining is two calls of pause.py in PretrainData: `inject_pauses` (insert pauses, trim) and
`ignore_pause_targets` (no loss where the target is a pause); everything else is ordinary nanoGPT-style data.
"""
import dataclasses
import hashlib
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

import tokenizer as tokmod
from config import UserError, check_config, opt, run_commands, run_main
from pause import ignore_pause_targets, inject_pauses
# the prepare step lives in prepare.py; data.prepare and data.PrepareConfig are its names here too
from prepare import PrepareConfig, VerifyConfig, check_shards, load_meta, prepare, verify
from runtime import atomic_open, download_file, ensure_writable_dir, write_json


# -------------------- download
C4_URL = "https://huggingface.co/datasets/allenai/c4/resolve/main/en"


@dataclasses.dataclass
class DownloadConfig:
    """Download C4 (allenai/c4, English) train and validation shards."""
    out_dir: str = opt("data/c4_raw", "directory for the .json.gz shards")
    n_train: int = opt(1, "number of train shards (of 1024, about 318 MB and 356k documents each)", ge=0, le=1024)
    n_val: int = opt(1, "number of validation shards (of 8, about 40 MB each)", ge=0, le=8)
    start: int = opt(0, "index of the first train shard", ge=0, lt=1024)
    base_url: str = opt(C4_URL, "URL of the directory holding the shards (a mirror, or a local server)")


def download(cfg: DownloadConfig) -> None:
    """Fetch the C4 shards named by cfg into cfg.out_dir (resumable, finished files are skipped)."""
    check_config(cfg)
    if cfg.start + cfg.n_train > 1024:
        raise UserError("C4 has train shards 0..1023 and validation shards 0..7; check --start, --n_train, --n_val")
    names = [f"c4-train.{i:05d}-of-01024.json.gz" for i in range(cfg.start, cfg.start + cfg.n_train)]
    names += [f"c4-validation.{i:05d}-of-00008.json.gz" for i in range(cfg.n_val)]
    ensure_writable_dir(cfg.out_dir)
    for name in names:
        download_file(f"{cfg.base_url.rstrip('/')}/{name}", os.path.join(cfg.out_dir, name))
    print(f"{len(names)} C4 shard(s) in {cfg.out_dir}; next: python data.py prepare "
          f"--input='{cfg.out_dir}/c4-train.*' --val_input='{cfg.out_dir}/c4-validation.*'")


# -------------------- the pretraining loader
def _open_shards(data_dir: str, meta: dict, split: str, min_len: int) -> list[np.ndarray]:
    """The split's shards that hold at least min_len tokens, memory-mapped (shorter ones are skipped)."""
    paths = [os.path.join(data_dir, s["file"]) for s in meta["shards"].get(split, []) if s["tokens"] >= min_len]
    if not paths:
        hint = " (--val_input, or a larger --val_frac)" if split == "val" else ""
        raise UserError(f"{data_dir} has no {split} shard of block_size+1 = {min_len} tokens or more; "
                        f"prepare more data{hint} or lower block_size")
    return [np.memmap(p, dtype=np.uint16, mode="r") for p in paths]


class PretrainData:
    """Pretraining batches from a prepared data_dir, with pause_frac * block_size pauses injected per window."""

    def __init__(self, data_dir: str, block_size: int, batch_size: int, pause_frac: float = 0.0, seed: int = 0):
        self.meta = load_meta(data_dir)
        check_shards(data_dir, self.meta, ids=True)  # sizes and ids: `data.py verify` reads every shard's sha256 too
        self.vocab_size, self.pause_id, self.eot_id = (self.meta[k] for k in ("vocab_size", "pause_id", "eot_id"))
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.n_pause = round(pause_frac * block_size)
        n = block_size + 1  # a window holds the inputs and, shifted by one, the targets
        self.train = _open_shards(data_dir, self.meta, "train", n)
        self.offsets = np.array([len(s) - n + 1 for s in self.train])  # valid start offsets per shard
        self.val = _open_shards(data_dir, self.meta, "val", n)
        self.val_windows = np.array([(k, o) for k, s in enumerate(self.val) for o in range(0, len(s) - n + 1, n)])

    def batch(self, step: int, index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of training micro-batch `index` (rank * grad_accum + micro) at `step`; a pure function of both."""
        rng = np.random.default_rng((self.seed, step, index))
        shard = rng.choice(len(self.train), size=self.batch_size, p=self.offsets / self.offsets.sum())
        start = rng.integers(0, self.offsets[shard])
        w = np.stack([self.train[k][o:o + self.block_size + 1] for k, o in zip(shard, start)])
        return self._xy(inject_pauses(w, self.n_pause, self.pause_id, rng))

    def val_batch(self, i: int, inject: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of the i-th batch of fixed validation windows, pause-injected (also fixed) if `inject`."""
        rows = self.val_windows[(i * self.batch_size + np.arange(self.batch_size)) % len(self.val_windows)]
        w = np.stack([self.val[k][o:o + self.block_size + 1] for k, o in rows])
        if inject:
            w = inject_pauses(w, self.n_pause, self.pause_id, np.random.default_rng((self.seed, i)))
        return self._xy(w)

    def _xy(self, w: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(w[:, :-1].astype(np.int64))
        y = torch.from_numpy(w[:, 1:].astype(np.int64))
        return x, ignore_pause_targets(y, self.pause_id)


# -------------------- inject and show
@dataclasses.dataclass
class InjectConfig:
    """Write pause-injected copies of a prepared data_dir's shards, in windows of block_size tokens."""
    data_dir: str = opt("data/c4", "prepared data directory (from data.py prepare)")
    out_dir: str = opt("data/c4_pause", "output directory for the injected shards and meta.json")
    block_size: int = opt(2048, "window length; each window gets round(pause_frac*block_size) pauses, then is "
                                "trimmed back to block_size (a shard's last partial window is dropped)", ge=1)
    pause_frac: float = opt(0.1, "pauses per window as a fraction of block_size", ge=0, lt=1)
    seed: int = opt(0, "random seed of the pause positions", ge=0)


def inject(cfg: InjectConfig) -> None:
    """Write pause-injected shards and their meta.json (with each shard's sha256) to cfg.out_dir."""
    check_config(cfg)
    meta = load_meta(cfg.data_dir)
    check_shards(cfg.data_dir, meta, ids=True)  # ids the vocabulary lacks would be copied as they are
    if os.path.realpath(cfg.out_dir) == os.path.realpath(cfg.data_dir):
        raise UserError("--out_dir must differ from --data_dir (inject writes copies)")
    ensure_writable_dir(cfg.out_dir)
    n_pause, B = round(cfg.pause_frac * cfg.block_size), cfg.block_size
    shards = {}
    for s_idx, (split, entries) in enumerate(meta["shards"].items()):
        shards[split] = []
        for k, s in enumerate(tqdm(entries, desc=f"inject {split}", unit="shard")):
            n_win = s["tokens"] // B
            if n_win == 0:
                continue
            windows = np.memmap(os.path.join(cfg.data_dir, s["file"]), dtype=np.uint16, mode="r")[:n_win * B]
            windows = windows.reshape(n_win, B)
            rng, digest = np.random.default_rng((cfg.seed, s_idx, k)), hashlib.sha256()
            with atomic_open(os.path.join(cfg.out_dir, s["file"])) as f:
                for i in range(0, n_win, 4096):  # in chunks, to bound memory on 300M-token shards
                    chunk = inject_pauses(windows[i:i + 4096], n_pause, meta["pause_id"], rng).tobytes()
                    f.write(chunk)
                    digest.update(chunk)
            shards[split].append({**s, "tokens": n_win * B, "sha256": digest.hexdigest()})
    write_json(os.path.join(cfg.out_dir, "meta.json"), {**meta, "shards": shards, "pause_frac": cfg.pause_frac,
                "block_size": B, "injected_from": os.path.abspath(cfg.data_dir)})
    print(f"inject: {sum(map(len, shards.values()))} shard(s), {n_pause} pauses per {B} tokens, in {cfg.out_dir}")


@dataclasses.dataclass
class ShowConfig:
    """Print a few decoded training windows of a prepared data_dir, with <pause> visible."""
    data_dir: str = opt("data/c4", "prepared data directory (from data.py prepare)")
    n: int = opt(2, "number of windows", ge=1)
    block_size: int = opt(64, "window length in tokens", ge=1)
    pause_frac: float = opt(0.0, "inject round(pause_frac*block_size) pauses per window", ge=0, lt=1)
    seed: int = opt(0, "random seed", ge=0)
    bpe_file: str = opt("", "local GPT-2 BPE file; empty: tokenizer.py's search order")


def show(cfg: ShowConfig) -> None:
    """Print the cfg.n windows of training batch 0, decoded."""
    check_config(cfg)
    data = PretrainData(cfg.data_dir, cfg.block_size, cfg.n, cfg.pause_frac, cfg.seed)
    tok = tokmod.from_meta(data.meta["tokenizer"], cfg.bpe_file or None)
    for r, row in enumerate(data.batch(0)[0].tolist()):
        print(f"----- window {r} of training batch 0: {row.count(data.pause_id)} pauses -----\n{tok.decode(row)}")


# -------------------- command line
COMMANDS = {"prepare": (PrepareConfig, prepare), "verify": (VerifyConfig, verify),
            "download": (DownloadConfig, download), "inject": (InjectConfig, inject), "show": (ShowConfig, show)}


def main(argv: list[str]) -> None:
    run_commands("data.py", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
