"""Where and how a process runs, and what it writes: device, dtype, DDP and seeding (`setup_runtime`);
files written whole or not at all, one writer per directory, and resumable checksummed downloads.
A full disk, a read-only or missing directory, a failed download: one line naming the path, never a
traceback, and no temp or partial file taken as whole. A run too big for the device's memory: one line
too, before it is allocated (`memory_needed`, an estimate).
"""
import contextlib
import ctypes
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import secrets
import time
import urllib.error
import urllib.request
from http.client import HTTPException

import torch
import torch.distributed as dist
from tqdm import tqdm

from config import UserError


# ----------------------------------------------------------------------------- the runtime
@dataclasses.dataclass
class Runtime:
    """Where and how this process runs: device, autocast dtype, and its place in DDP."""
    device: torch.device
    dtype: torch.dtype
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def ddp(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    def autocast(self):
        """bf16/fp16 autocast on GPU; plain float32 elsewhere."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def keep_freed_memory() -> None:
    """Keep freed memory in the process (glibc): by default each big block goes back to the OS, and on a CPU every
    training step page-faults its logits and activations in again, zeroed (10-20 % of a step)."""
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX = 0: big blocks come from the heap, where freed ones are reused ...
        libc.mallopt(-1, 2**31 - 1)  # ... M_TRIM_THRESHOLD: and the heap's top is not handed back


GLOO_TIMEOUT = datetime.timedelta(seconds=60)


def setup_runtime(device: str = "auto", dtype: str = "auto", seed: int = 0) -> Runtime:
    """Pick the device and dtype, join DDP if launched by torchrun (NCCL on GPU, gloo on CPU), seed."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device=cuda but no CUDA device is available; use --device=cpu")
    rank, local_rank, world = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    if world > 1:
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        # gloo (CPU): a rank that stops answering (hung, or its host gone) ends the others' wait after a minute,
        # not gloo's default 30 (a killed rank on this host is noticed at once); NCCL keeps its own 10
        gloo = not device.startswith("cuda")
        dist.init_process_group(backend="gloo" if gloo else "nccl", timeout=GLOO_TIMEOUT if gloo else None)
    dev = torch.device(device)
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"--dtype must be auto, float32, bfloat16 or float16, not {dtype!r}")
    if dev.type == "cpu":
        keep_freed_memory()
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(seed)  # same on every rank: identical init (DDP also broadcasts rank 0's weights)
    return Runtime(dev, getattr(torch, dtype), rank, local_rank, world)


def teardown(rt: Runtime) -> None:
    if rt.ddp and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def ddp_run(rt: Runtime):
    """Leave DDP when the run ends. Another rank lost mid-run (killed, or silent past GLOO_TIMEOUT) is one line
    naming this rank, not gloo's traceback; torchrun then ends the rest and prints its own report."""
    try:
        yield
    except RuntimeError as e:
        if not (rt.ddp and "gloo/transport/" in str(e)):  # gloo's errors name their source file
            raise
        why = str(e).split("] ", 1)[-1].split(". ")[0]  # e.g. "Read error [127.0.0.1]:1234: Connection reset by peer"
        raise UserError(f"rank {rt.rank}: lost another rank of this run ({why}); run the same command with --resume "
                        "to continue from the last checkpoint") from None
    finally:
        teardown(rt)


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


# ----------------------------------------------------------------------------- memory: refused before it is allocated
def memory_needed(config, rows: int, seq_len: int, dtype: torch.dtype = torch.float32, training: bool = False,
                  logit_rows: int = 1, weights: bool = True) -> int:
    """Bytes a GPT of `config` (a GPTConfig) needs for batches of `rows` sequences of `seq_len` positions, with
    `logit_rows` rows of logits held at once, its float32 weights (4 P) counted unless they are loaded already
    (`weights` False): an estimate, not exact. With V vocab, T block, L layers, d width, h MLP width,
    P = V d + T d (learned positions) + L (4 d^2 + 2 d h) parameters (LayerNorm and bias vectors left out) and
    e = 2 bytes under 16-bit autocast, else 4:

      training   16 P, + 2 P under autocast       float32 weights, gradient, AdamW's two moments; autocast's copies
                 + rows seq_len L (e (8 d + 2 h) + 16 d)   what backward keeps of each layer: q, k, v, attention out,
                                                  the MLP's two h-wide tensors (e bytes); residual, LayerNorm outs
      inference  4 P + 8 L rows seq_len d         float32 weights, the KV cache's keys and values
                 + 4 rows seq_len (8 d + 2 h)     one layer's activations at a time
      both       + (4 + 2 e) V logit_rows         logits and their gradient (e each), their float32 log-softmax

    Against measurements: config/1b.toml (eager, bfloat16, batch 8 x 2048) 66.2 GiB, its comment's 65 GiB on one
    H200; cpu_bench.toml's shape (float32, batch 8 / 32) 1.37 / 2.43 GiB, 1.43-1.69 / 2.66-3.24 GiB of peak RSS on a
    CPU (below by up to 25 %: the allocator's slack); 130m.toml with --compile (all 16 x 2048 rows of logits) 27.9 GiB,
    not measured. Left out: DDP's gradient buckets (4 P)."""
    d, L, V, T = config.n_embd, config.n_layer, config.vocab_size, config.block_size
    h = config.mlp_hidden or 4 * d
    P = V * d + (T * d if config.pos == "learned" else 0) + L * (4 * d * d + 2 * d * h)
    e = torch.finfo(dtype).bits // 8
    logits = (4 + 2 * e) * V * logit_rows
    if training:
        return (12 + 4 * weights + 2 * (e == 2)) * P + rows * seq_len * L * (e * (8 * d + 2 * h) + 16 * d) + logits
    return 4 * P * weights + 8 * L * rows * seq_len * d + 4 * rows * seq_len * (8 * d + 2 * h) + logits


def available_memory(device: torch.device) -> int:
    """Bytes still free on `device`: CUDA's free memory, else the RAM Linux calls available (free + reclaimable
    caches), else all physical RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            return int(next(line for line in f if line.startswith("MemAvailable:")).split()[1]) * 1024
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(need: int, device: torch.device, what: str, fix: str) -> None:
    """Refuse, in one line, a run whose estimate (memory_needed) exceeds what `device` has free."""
    size = lambda n: f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"  # noqa: E731
    if need > (have := available_memory(device)):
        raise UserError(f"{what} needs about {size(need)} (an estimate), {device} has {size(have)} available: {fix}")


# ----------------------------------------------------------------------------- files
def _cannot_write(path: str, e: OSError) -> UserError:
    return UserError(f"cannot write {path}: {e.strerror or e}")


def ensure_writable_dir(path: str) -> None:
    """Create directory `path` if needed and prove it writable with a small file of its own."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"cannot write {path}: it is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-probe.{secrets.token_hex(4)}")
        try:
            with open(probe, "xb") as f:
                f.write(b"ok")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(probe)
    except OSError as e:
        raise _cannot_write(path, e) from None


def ensure_writable_file(path: str) -> None:
    """The directory of `path` is writable (created if needed) and `path` is not a directory."""
    if os.path.isdir(path):
        raise UserError(f"cannot write {path}: it is a directory")
    ensure_writable_dir(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb"):
    """A file for writing `path` whole or not at all: a temp file of its own (no other process ever
    opens it) in the same directory, fsynced, then renamed over `path`. On any error the temp file is
    removed and an OSError becomes a UserError naming `path`."""
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise _cannot_write(path, e) from None
        raise


def append_line(path: str, line: str) -> None:
    """Append `line` and a newline to `path` whole or not at all: on a disk error the file is cut back to its
    old end (no partial last line) and the error is a UserError naming `path`."""
    end = os.path.getsize(path) if os.path.exists(path) else 0
    try:
        with open(path, "ab") as f:  # closing flushes too: a full disk can fail there, inside the guard
            f.write(line.encode() + b"\n")
    except OSError as e:
        with contextlib.suppress(OSError):
            os.truncate(path, end)
        raise _cannot_write(path, e) from None


def lock_dir(directory: str, who: str, name: str, wait_s: float = 0.0):
    """Hold directory/.NAME.lock (an open file; closing it releases the lock) or, after wait_s, refuse with one
    line: one writer per directory. Child processes forked from this one inherit it."""
    f = open(os.path.join(directory, f".{name}.lock"), "a+")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                f.close()
                raise UserError(f"{directory} is being written by another {who} (started by pid {holder}); "
                                "wait for it to end or kill it, then run again") from None
            time.sleep(0.1)
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def write_json(path: str, obj) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=1)


def write_text(path: str, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_git_blob(path: str) -> str:
    """The id git gives a file's bytes (SHA-1 of b"blob SIZE\\0" + bytes): it pins a file known only from a
    repository's tree, where no checksum is published."""
    h = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _mismatch(path: str, sha256: str | None, git_blob: str | None) -> str | None:
    """What is wrong with path's digest ("sha256 1a2b…, expected 3c4d…"); None when it matches every pin given."""
    for name, want, digest in (("sha256", sha256, file_sha256), ("git blob", git_blob, file_git_blob)):
        if want is not None and (got := digest(path)) != want:
            return f"{name} {got[:12]}…, expected {want[:12]}…"
    return None


def download_file(url: str, dest: str, sha256: str | None = None, desc: str | None = None,
                  git_blob: str | None = None) -> str:
    """Download url to dest, resuming a partial dest.part; check sha256 and/or git_blob (file_git_blob) if given.
    Skips a good existing dest."""
    if os.path.exists(dest) and _mismatch(dest, sha256, git_blob) is None:
        return dest
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            if r.status != 206:  # the server ignored the Range header: start over
                have = 0
            total = None if r.length is None else have + r.length
            with open(part, "ab" if have else "wb") as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                               desc=desc or os.path.basename(dest)) as bar:
                while chunk := r.read(1 << 20):
                    bar.update(f.write(chunk))
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # .part is already whole (or longer than the file): fetch it again
            os.remove(part)
            return download_file(url, dest, sha256, desc, git_blob)
        raise UserError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (OSError, HTTPException) as e:  # URLError, timeouts and disk errors are OSErrors
        raise UserError(f"download of {url} failed ({e}); run the command again to resume") from None
    if total is not None and os.path.getsize(part) != total:
        raise UserError(f"download of {url} stopped at {os.path.getsize(part)} of {total} bytes; run again to resume")
    if (wrong := _mismatch(part, sha256, git_blob)) is not None:
        os.remove(part)
        raise UserError(f"download of {url} has {wrong}; deleted it")
    os.replace(part, dest)
    return dest


# ----------------------------------------------------------------------------- GPT-2 from the Hugging Face hub
HF_URL_ENV, CACHE_ENV = "PAUSEGPT_HF_URL", "PAUSEGPT_CACHE"  # a mirror of the hub; where downloads are kept
# sha256 of each file where a published value was found (gpt2: hub revision 607a30d, 665 and 548,105,171 bytes).
# The others are checked by what can be: the length the server announced, then reading them (safetensors' header,
# every tensor's name and shape against config.json: model.gpt2_state_dict).
GPT2_HUB = {"gpt2": {"config.json": "0daed7749b4f02b8f76240d5444551d7b08712dab4d0adb8239c56ba823bb7b4",
                     "model.safetensors": "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707"},
            "gpt2-medium": {}, "gpt2-large": {}, "gpt2-xl": {}}


def hub_url(name: str, file: str) -> str:
    return f"{(os.environ.get(HF_URL_ENV) or 'https://huggingface.co').rstrip('/')}/{name}/resolve/main/{file}"


def hub_folder(name: str) -> str:
    """The folder ($PAUSEGPT_CACHE or ~/.cache/pausegpt)/NAME holding GPT-2 `name`'s config.json and
    model.safetensors from the hub, downloaded once (resumable: a partial file stays FILE.part, never taken whole)."""
    cache = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "pausegpt")
    folder = os.path.join(cache, name)
    for file in ("config.json", "model.safetensors"):
        try:
            download_file(hub_url(name, file), os.path.join(folder, file), GPT2_HUB[name].get(file), f"{name}/{file}")
        except UserError as e:
            raise UserError(f"{e} (a mirror: set {HF_URL_ENV}; offline: pass a folder holding a Hugging Face GPT-2's "
                            "config.json and model.safetensors)") from None
    return folder
