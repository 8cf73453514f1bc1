"""Checkpoints and run directories, in one place. A checkpoint is {"model": state_dict, "optimizer":
state_dict | None, "meta": dict} of tensors and plain values, so torch.load(weights_only=True) reads it (no
pickle); its meta (config, model, tokenizer, step, RNG) is checked here, the one place that reads it. A run
directory has one writer (a lock), never mixes a fresh run with an earlier one's files (--resume continues,
--overwrite deletes), and a resumed run continues bit for bit.
"""
import contextlib
import dataclasses
import json
import os
import re

import torch

from config import UserError
from model import GPT, GPTConfig, gpt2_config, gpt2_folder, gpt2_state_dict
from runtime import GPT2_HUB, append_line, atomic_open, ensure_writable_dir, hub_url, lock_dir
from tokenizer import GPT2_EOT, GPT2_PAUSE, from_meta


# ----------------------------------------------------------------------------- the file
def nonfinite_tensors(model: torch.nn.Module | dict) -> list[str]:
    """Names of the parameters and buffers (of a model, or in a state dict) holding an inf or NaN."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    return [name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]


def save_checkpoint(path: str, model: torch.nn.Module, optimizer, meta: dict) -> None:
    """Write atomically (atomic_open), so a kill or a full disk never leaves a broken checkpoint;
    weights that are not finite are never written."""
    if bad := nonfinite_tensors(model):
        raise UserError(f"not writing {path}: {len(bad)} tensor(s) of the model are not finite (e.g. {bad[0]})")
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None, "meta": meta}
    with atomic_open(path) as f:
        try:
            torch.save(state, f)
        except RuntimeError as e:  # torch reports a failed write (full disk) as a RuntimeError caused by the OSError
            if isinstance(e.__context__, KeyboardInterrupt):  # Ctrl-C inside the write: not a disk error
                raise KeyboardInterrupt from None
            cause = e.__context__.strerror if isinstance(e.__context__, OSError) else str(e).splitlines()[0]
            raise UserError(f"cannot write {path}: {cause}") from None


def load_checkpoint(path: str, device: str | torch.device = "cpu") -> dict:
    """A checkpoint written by save_checkpoint with a well-formed meta, or OpenAI's GPT-2 (is_gpt2) as one; else
    a UserError saying what is wrong."""
    if is_gpt2(path):
        conf, state = gpt2_state_dict(gpt2_folder(path), device)
        return {"model": state, "optimizer": None, "meta": gpt2_meta(path, conf)}
    if os.path.isdir(path):
        raise UserError(f"checkpoint {path} is a directory; give the file in it (e.g. {os.path.join(path, 'ckpt.pt')}) "
                        "or a folder holding a Hugging Face GPT-2's config.json and model.safetensors")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickled objects: all unusable
        raise UserError(f"checkpoint {path} is corrupt or not a pausegpt checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or not {"model", "meta"} <= set(ckpt) or not isinstance(ckpt["meta"], dict):
        raise UserError(f"checkpoint {path} is not a pausegpt checkpoint (no model/meta)")
    if problem := meta_problem(ckpt["meta"]):
        raise UserError(f"checkpoint {path}: its meta is damaged ({problem})")
    return ckpt


def meta_problem(meta: dict) -> str | None:
    """What is wrong with the fields a checkpoint's meta holds (the first one, named), or None."""
    tok = meta.get("tokenizer", {"kind": "gpt2", "vocab_size": 0, "pause_id": 0, "eot_id": 0})
    if not isinstance(tok, dict) or tok.get("kind") not in ("gpt2", "char", "word"):
        return "tokenizer is not a table naming gpt2, char or word"
    if any(type(tok.get(k)) is not int or tok[k] < 0 for k in ("vocab_size", "pause_id", "eot_id")):
        return "tokenizer.vocab_size, pause_id and eot_id must be integers >= 0"
    if tok["kind"] != "gpt2" and not (isinstance(tok.get("symbols"), list) and
                                      all(isinstance(x, str) for x in tok["symbols"])):
        return "tokenizer.symbols must be a list of strings"
    for key, kind in (("model", dict), ("config", dict), ("rng", dict), ("step", int), ("pretrain_pause_frac", float)):
        if key in meta and not (isinstance(meta[key], kind) or kind is float and type(meta[key]) is int):
            return f"{key} is not {'a table' if kind is dict else 'a number'}"
    return None


# ----------------------------------------------------------------------------- OpenAI's GPT-2 as a checkpoint
def is_gpt2(path: str) -> bool:
    """Whether `path` names GPT-2 on the hub (gpt2, gpt2-medium, gpt2-large, gpt2-xl; a file or folder of that
    name wins) or a folder holding a Hugging Face GPT-2 (config.json)."""
    return os.path.isfile(os.path.join(path, "config.json")) or (path in GPT2_HUB and not os.path.exists(path))


def gpt2_meta(path: str, conf: GPTConfig) -> dict:
    """The meta of GPT-2 as a StdPT pretraining (pause_frac 0) with the GPT-2 BPE, and where it came from."""
    return {"kind": "pretrain", "model": dataclasses.asdict(conf), "config": {"pause_frac": 0.0},
            "tokenizer": {"kind": "gpt2", "vocab_size": GPT2_PAUSE + 1, "eot_id": GPT2_EOT, "pause_id": GPT2_PAUSE},
            "source": hub_url(path, "model.safetensors") if path in GPT2_HUB else os.path.abspath(path)}


def read_meta(path: str) -> dict:
    """The meta of a checkpoint that can start a run (a model config, a tokenizer, finite weights), without
    building its model (GPT-2: from its config.json; load_model checks its weights)."""
    if is_gpt2(path):
        return gpt2_meta(path, gpt2_config(gpt2_folder(path)))
    ckpt = load_checkpoint(path)
    if "model" not in ckpt["meta"] or "tokenizer" not in ckpt["meta"]:
        raise UserError(f"checkpoint {path} has no model config or tokenizer in its meta")
    if bad := nonfinite_tensors(ckpt["model"]):
        raise UserError(f"checkpoint {path}: {len(bad)} tensor(s) hold inf or NaN (e.g. {bad[0]}); it cannot be used")
    return ckpt["meta"]


def checked_model_config(path: str, saved: dict) -> GPTConfig:
    """The GPTConfig a checkpoint's meta records, checked key by key (a key it lacks keeps its default)."""
    fields = {f.name: f.type for f in dataclasses.fields(GPTConfig)}
    for key, value in saved.items():
        if key not in fields:
            raise UserError(f"checkpoint {path}: unknown model config key {key!r}")
        want = {int: int, float: (int, float), bool: bool, str: str}[fields[key]]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise UserError(f"checkpoint {path}: model config {key}={value!r} is not a {fields[key].__name__}")
    return GPTConfig(**saved)


def load_model(path: str, device, bpe_file: str | None = None) -> tuple[GPT, object, dict]:
    """(model in eval mode, its tokenizer, checkpoint meta) from any pausegpt checkpoint."""
    ckpt = load_checkpoint(path, device)
    meta = ckpt["meta"]
    if "model" not in meta or "tokenizer" not in meta:
        raise UserError(f"checkpoint {path} has no model config or tokenizer in its meta")
    tok_meta, conf = meta["tokenizer"], checked_model_config(path, meta["model"])
    if conf.vocab_size < tok_meta["vocab_size"] or conf.pause_id != tok_meta["pause_id"]:
        raise UserError(f"checkpoint {path}: its model (vocab {conf.vocab_size}, pause id {conf.pause_id}) does not "
                        f"fit its tokenizer (vocab {tok_meta['vocab_size']}, pause id {tok_meta['pause_id']})")
    model = GPT(conf)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint {path}: weights do not match its config ({str(e).splitlines()[0]})") from None
    if bad := nonfinite_tensors(model):
        raise UserError(f"checkpoint {path}: {len(bad)} tensor(s) hold inf or NaN (e.g. {bad[0]}); it cannot be used")
    model = model.to(device).eval()
    if model.lm_head.weight.device.type == "cpu":
        model.column_major_()  # decoding one row on a CPU: about twice the tokens/s, the same logits
    return model, from_meta(tok_meta, bpe_file), meta


def pretrain_pause_frac(meta: dict) -> float:
    """The pause_frac the model was pretrained with (0 = StdPT): the one a finetuning carried over, else a
    pretraining's own."""
    return meta.get("pretrain_pause_frac", meta.get("config", {}).get("pause_frac", 0.0))


def rng_state() -> dict:
    """Torch RNG states (dropout), saved so that a resumed run continues bit for bit."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    # a checkpoint loaded with map_location=cuda holds these on the GPU; RNG states must be CPU byte tensors
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ----------------------------------------------------------------------------- the run directory
# Options that --resume may change: how long the run goes, how often it evaluates, logs and saves, where it runs.
# The model, the data and the optimiser stay (max_iters also moves the end of the decay if lr_decay_iters is 0).
RESUMABLE = {"out_dir", "resume", "max_iters", "eval_interval", "eval_iters", "log_interval", "ckpt_interval",
             "device", "compile", "on_nonfinite", "max_skips", "bpe_file", "overwrite"}


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
            how = "pass --resume to continue it, " if "ckpt.pt" in used else \
                "it stopped before its first checkpoint, so there is nothing to resume: pass "
            raise UserError(f"{cfg.out_dir} holds an earlier run's {' and '.join(used)}: {how}--overwrite to replace it, "
                            "or choose another --out_dir")
        if cfg.resume and "ckpt.pt" not in used:
            raise UserError(f"--resume: {cfg.out_dir} holds no ckpt.pt (a run stopped before its first checkpoint has "
                            "none); pass --overwrite to start it again")
        for name in used if cfg.overwrite else []:
            os.remove(os.path.join(cfg.out_dir, name))
        yield


def resume_or_restart(out_dir: str) -> dict:
    """The options of a run into out_dir that an experiment reruns: resume its checkpoint, or start afresh (deleting
    the log of a run that was stopped before its first checkpoint)."""
    has_ckpt = os.path.exists(os.path.join(out_dir, "ckpt.pt"))
    return {"resume": has_ckpt, "overwrite": not has_ckpt}


def open_run(cfg, rt, gpt_config: GPTConfig) -> tuple[GPT, torch.optim.Optimizer, int, MetricsLog]:
    """Build the model and its AdamW, restore both from out_dir/ckpt.pt if cfg.resume, open the metrics log."""
    model = GPT(gpt_config).to(rt.device)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), rt.device.type)
    step, ckpt_path, changed, log_offset = 0, os.path.join(cfg.out_dir, "ckpt.pt"), None, None
    if cfg.resume:
        ckpt = load_checkpoint(ckpt_path, rt.device)
        meta = ckpt["meta"]
        if checked_model_config(ckpt_path, meta.get("model", {})) != gpt_config:
            raise UserError(f"{ckpt_path} holds a model of another config {meta.get('model')}; "
                            "resume with the same model options")
        if type(meta.get("step")) is not int or not isinstance(meta.get("rng"), dict) or not ckpt.get("optimizer"):
            raise UserError(f"{ckpt_path} lacks the step, RNG or optimizer state a resume needs; it can only start "
                            "a new run (e.g. finetune.py --init_from)")
        step, changed = meta["step"], config_changes(ckpt_path, meta.get("config", {}), cfg)
        if cfg.max_iters < step:
            raise UserError(f"--max_iters={cfg.max_iters} is below the step {step} of {ckpt_path}")
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            set_rng_state(meta["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{ckpt_path}: cannot restore its weights, optimizer or RNG state "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        log_offset = meta.get("log_offset")
    log = MetricsLog(os.path.join(cfg.out_dir, "log.jsonl") if rt.master else None,
                     {"config": dataclasses.asdict(cfg), "resumed_at": step if cfg.resume else None,
                      **({"changed_on_resume": changed} if changed else {}),
                      "world_size": rt.world_size, "n_params": model.num_params()}, truncate_to=log_offset)
    return model, optimizer, step, log


class Checkpointer:
    """Writes out_dir/ckpt.pt (rank 0) from weights that just gave a finite loss and gradient, and says which
    checkpoint is kept when a run stops."""

    def __init__(self, cfg, rt, model: GPT, optimizer, meta: dict, log: MetricsLog, saved: int | None):
        self.path, self.rt, self.model, self.optimizer, self.meta, self.log = (
            os.path.join(cfg.out_dir, "ckpt.pt"), rt, model, optimizer, meta, log)
        self.saved = saved  # the step of the checkpoint on disk (None: none yet)

    def save(self, step: int, rng: dict) -> None:
        """`step` optimizer steps are done; `rng` is the RNG state as that step began."""
        if bad := nonfinite_tensors(self.model):  # on every rank (the weights are the same): all stop together
            raise UserError(f"{len(bad)} tensor(s) of the model are not finite at step {step} (e.g. {bad[0]}): "
                            f"stopped without writing them; {self.kept()}")
        if self.rt.master:
            save_checkpoint(self.path, self.model, self.optimizer,
                            {**self.meta, "step": step, "rng": rng, "log_offset": self.log.size()})
        self.saved = step

    def kept(self) -> str:
        return f"the last good checkpoint {self.path} (step {self.saved}) is kept" if self.saved is not None else \
            "no checkpoint was written"


def config_changes(ckpt_path: str, old: dict, cfg) -> dict:
    """{key: [old, new]} of the options that differ from the checkpoint's run; a UserError if one of them
    would alter the run (see RESUMABLE). Keys the checkpoint's run did not have yet are not compared."""
    changed = {k: [old[k], v] for k, v in dataclasses.asdict(cfg).items() if k in old and old[k] != v and k != "resume"}
    if fixed := [k for k in changed if k not in RESUMABLE]:
        raise UserError(f"--resume continues {ckpt_path} with its own config, but " + ", ".join(
            f"{k}={changed[k][1]} (was {changed[k][0]})" for k in fixed) + "; only " + ", ".join(sorted(RESUMABLE -
            {"resume"})) + " may change. Start a new --out_dir to change the others")
    return changed
