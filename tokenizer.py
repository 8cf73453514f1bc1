"""Tokenizers with a real <pause> token: GPT-2 BPE (tiktoken), and tiny char/word vocabularies.

Every tokenizer has `encode(text, allow_pause=False)`, `decode(ids)`, `vocab_size`, `pause_id`,
`eot_id` and `meta()`; `from_meta(meta)` rebuilds it from the dict stored in a dataset's meta.json.

    python tokenizer.py fetch     # the GPT-2 BPE file into assets/, once, for offline use
"""
import base64
import glob
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass

import tiktoken
import tiktoken.load

from config import UserError, opt, run_commands, run_main
from pause import PAUSE
from runtime import atomic_open, ensure_writable_file, file_sha256

EOT = "<|endoftext|>"

# GPT-2 BPE: tiktoken's r50k_base has exactly GPT-2's ranks; we add <pause> right after EOT.
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
R50K_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
BPE_ENV = "PAUSEGPT_BPE"  # path of a local r50k_base.tiktoken / whisper gpt2.tiktoken
BPE_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "gpt2.tiktoken")
GPT2_EOT, GPT2_PAUSE = 50256, 50257


def padded_vocab(n: int, multiple: int = 64) -> int:
    """Model vocab size: n rounded up to a multiple of 64 (50258 -> 50304, as in nanoGPT)."""
    return (n + multiple - 1) // multiple * multiple


def load_bpe_file(path: str) -> dict:
    """Mergeable ranks from a local .tiktoken file, refused unless its sha256 is GPT-2's."""
    if not os.path.isfile(path):
        raise UserError(f"BPE file {path} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != R50K_SHA256:
        raise UserError(f"BPE file {path} has sha256 {digest[:12]}…, not GPT-2's {R50K_SHA256[:12]}…; "
                        "use r50k_base.tiktoken or openai-whisper's assets/gpt2.tiktoken")
    return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in data.splitlines() if line)}


def local_bpe_path(bpe_file: str | None = None) -> str | None:
    """The GPT-2 BPE file to use, without the network: bpe_file, $PAUSEGPT_BPE, assets/gpt2.tiktoken,
    then the copy in tiktoken's cache (where tiktoken.load keeps what it downloaded); None if none is there."""
    if bpe_file or os.environ.get(BPE_ENV):
        return bpe_file or os.environ[BPE_ENV]
    cache = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR",
                                                                os.path.join(tempfile.gettempdir(), "data-gym-cache")))
    cached = os.path.join(cache, hashlib.sha1(R50K_URL.encode()).hexdigest()) if cache else ""
    return next((p for p in (BPE_DEFAULT, cached) if p and os.path.isfile(p)), None)


def gpt2_ranks(bpe_file: str | None = None) -> dict:
    """GPT-2 ranks from local_bpe_path's file, else downloaded by tiktoken from its URL."""
    if path := local_bpe_path(bpe_file):
        return load_bpe_file(path)
    try:
        return tiktoken.load.load_tiktoken_bpe(R50K_URL, expected_hash=R50K_SHA256)
    except Exception as e:  # offline, proxy, bad cache: all end in the same advice
        raise UserError(f"GPT-2 BPE is neither cached nor reachable ({type(e).__name__}); run `python tokenizer.py "
                        f"fetch`, or pass --bpe_file=PATH or set {BPE_ENV}=PATH to a local r50k_base.tiktoken "
                        "(see README, 'Offline')") from None


class GPT2Tokenizer:
    """GPT-2 BPE with <pause> registered as special token 50257 (inside the padded vocab 50304)."""

    def __init__(self, bpe_file: str | None = None):
        self.enc = tiktoken.Encoding(name="gpt2_pause", pat_str=R50K_PAT, mergeable_ranks=gpt2_ranks(bpe_file),
                                     special_tokens={EOT: GPT2_EOT, PAUSE: GPT2_PAUSE})
        self.vocab_size, self.eot_id, self.pause_id = GPT2_PAUSE + 1, GPT2_EOT, GPT2_PAUSE

    def encode(self, text: str, allow_pause: bool = False) -> list[int]:
        # Document text is ordinary text: "<pause>" in it becomes plain BPE unless asked for.
        if allow_pause:
            return self.enc.encode(text, allowed_special={PAUSE}, disallowed_special=())
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=1)

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])

    def meta(self) -> dict:
        return {"kind": "gpt2", "vocab_size": self.vocab_size, "eot_id": self.eot_id, "pause_id": self.pause_id}


class _VocabTokenizer:
    """Base of the toy tokenizers: symbols get ids 0..n-1, then EOT, then <pause> as the last id."""
    kind = ""

    def __init__(self, symbols: list[str]):
        self.symbols = list(symbols)
        self.eot_id, self.pause_id = len(self.symbols), len(self.symbols) + 1
        self.vocab_size = len(self.symbols) + 2
        self.stoi = {s: i for i, s in enumerate(self.symbols)}
        self.itos = self.symbols + [EOT, PAUSE]

    @classmethod
    def build(cls, texts) -> "_VocabTokenizer":
        """A tokenizer whose vocabulary is every symbol of `texts`, sorted."""
        found = set()
        for t in texts:
            found.update(cls.split(t))
        found -= {EOT, PAUSE}
        return cls(sorted(found))

    def encode(self, text: str, allow_pause: bool = False) -> list[int]:
        ids, unknown = [], set()
        for piece in (text.split(PAUSE) if allow_pause else [text]):
            for s in self.split(piece):
                i = self.stoi.get(s)
                unknown.add(s) if i is None else ids.append(i)
            ids.append(self.pause_id)
        ids.pop()  # one pause fewer than pieces
        if unknown:
            raise UserError(f"{self.kind} tokenizer: {len(unknown)} symbol(s) not in the vocabulary, "
                            f"e.g. {sorted(unknown)[:5]}; rebuild the vocabulary from data that contains them")
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def meta(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eot_id": self.eot_id,
                "pause_id": self.pause_id, "symbols": self.symbols}


class CharTokenizer(_VocabTokenizer):
    """One id per character (like nanoGPT's shakespeare_char)."""
    kind = "char"

    @staticmethod
    def split(text: str) -> list[str]:
        return list(text)

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)


class WordTokenizer(_VocabTokenizer):
    """One id per whitespace-separated word, plus "\\n" as a word: each number of a task is one token."""
    kind = "word"

    @staticmethod
    def split(text: str) -> list[str]:
        return re.findall(r"\n|[^\s]+", text)

    def decode(self, ids) -> str:
        out = []
        for i in ids:
            s = self.itos[int(i)]
            if out and s != "\n" and out[-1] != "\n":
                out.append(" ")
            out.append(s)
        return "".join(out)


def get_tokenizer(kind: str, bpe_file: str | None = None, texts=None):
    """gpt2 (needs no texts), or char/word built from `texts`."""
    if kind == "gpt2":
        return GPT2Tokenizer(bpe_file)
    if kind in ("char", "word"):
        return (CharTokenizer if kind == "char" else WordTokenizer).build(texts or [])
    raise UserError(f"unknown tokenizer {kind!r}; choose gpt2, char or word")


def from_meta(meta: dict, bpe_file: str | None = None):
    """Rebuild the tokenizer described by `meta` (the "tokenizer" entry of a dataset's meta.json)."""
    kind = meta.get("kind")
    if kind == "gpt2":
        return GPT2Tokenizer(bpe_file)
    if kind in ("char", "word"):
        return (CharTokenizer if kind == "char" else WordTokenizer)(meta["symbols"])
    raise UserError(f"meta.json names an unknown tokenizer {kind!r}")


def inserted_token(tok, filler: str = "") -> int:
    """The id the pause layouts insert: <pause>, or for the filler ablations an ordinary one-token text."""
    if not filler:
        return tok.pause_id
    ids = tok.encode(filler.replace("\\n", "\n"))  # "\n" typed on a command line means a newline
    if len(ids) != 1:
        raise UserError(f"--filler={filler!r} must be exactly one token, it is {len(ids)}")
    return ids[0]


# -------------------- fetch: the GPT-2 BPE file from PyPI, for machines that reach only a package registry
WHISPER = "openai-whisper==20250625"  # its sdist ships whisper/assets/gpt2.tiktoken, byte-identical to r50k_base


@dataclass
class FetchConfig:
    """Put the GPT-2 BPE file in place for offline use, taken from openai-whisper's sdist (pip download)."""
    dest: str = opt(BPE_DEFAULT, "where to write it (assets/gpt2.tiktoken is found without any option)")


def fetch(cfg: FetchConfig) -> None:
    """Write GPT-2's r50k_base.tiktoken to cfg.dest, sha256-checked; nothing to do if it is there already."""
    if os.path.isfile(cfg.dest) and file_sha256(cfg.dest) == R50K_SHA256:
        print(f"GPT-2 BPE already in {cfg.dest}")
        return
    ensure_writable_file(cfg.dest)
    with tempfile.TemporaryDirectory() as tmp:
        pip = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary=:all:",
                              WHISPER, "-d", tmp], capture_output=True, text=True)
        sdists = glob.glob(os.path.join(tmp, "*.tar.gz"))
        if pip.returncode or not sdists:
            why = (pip.stderr.strip().splitlines() or ["no sdist"])[-1]
            raise UserError(f"pip download {WHISPER} failed ({why}); get r50k_base.tiktoken another way and put "
                            f"it at {cfg.dest} (README, 'Offline')")
        with tarfile.open(sdists[0]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("/whisper/assets/gpt2.tiktoken")), None)
            if member is None:
                raise UserError(f"{os.path.basename(sdists[0])} holds no whisper/assets/gpt2.tiktoken")
            blob = tar.extractfile(member).read()
    if (digest := hashlib.sha256(blob).hexdigest()) != R50K_SHA256:
        raise UserError(f"the gpt2.tiktoken of {WHISPER} has sha256 {digest[:12]}…, not GPT-2's "
                        f"{R50K_SHA256[:12]}…; nothing written")
    with atomic_open(cfg.dest) as f:
        f.write(blob)
    print(f"GPT-2 BPE (sha256 {R50K_SHA256[:12]}…) written to {cfg.dest}")


def main(argv: list[str]) -> None:
    run_commands("tokenizer.py", __doc__, {"fetch": (FetchConfig, fetch)}, argv)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
