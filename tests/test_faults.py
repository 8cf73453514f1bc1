"""Nothing lost, nothing silently wrong: shards that no killed or concurrent run can corrupt, a NaN guard
that never keeps poisoned weights, disk errors and bad options as one line and exit 2, logs that add up."""
import errno
import gzip
import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import checkpoint
import data
import prepare
import runtime
import train
from config import UserError, parse_config, run_main
from model import GPT, GPTConfig
from tokenizer import CharTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
WORDS = "the a pause token model thinks before it speaks".split()


def write_corpus(path, n_docs: int, seed: int, extra: list[bytes] = ()) -> list[str]:
    """A C4-format .json.gz of n_docs documents (plus raw `extra` lines); returns the documents."""
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for _ in range(n_docs)]
    lines = [json.dumps({"url": f"u{i}", "text": d, "timestamp": "t"}).encode() for i, d in enumerate(docs)]
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(lines[:1] + list(extra) + lines[1:]) + b"\n")
    return docs


@pytest.fixture
def corpus(tmp_path):
    """Two small input files and the documents of each."""
    files = [str(tmp_path / f"c4-train.{i:05d}-of-01024.json.gz") for i in range(2)]
    return {f: write_corpus(f, 40, seed=i, extra=[b"{oops", b""] if i == 0 else []) for i, f in enumerate(files)}


def prep(corpus: dict, out_dir, **kw) -> dict:
    return data.prepare(data.PrepareConfig(input=list(corpus), out_dir=str(out_dir), tokenizer="char", val_frac=0.0,
                                           workers=2, **kw))


def assert_shards_hold(corpus: dict, out_dir) -> None:
    """Every train shard is exactly its input's documents, each followed by EOT, and `verify` agrees."""
    meta = data.load_meta(str(out_dir))
    tok = CharTokenizer(meta["tokenizer"]["symbols"])
    for i, docs in enumerate(corpus.values()):
        expect = [t for d in docs for t in tok.encode(d) + [tok.eot_id]]
        assert np.fromfile(out_dir / f"train_{i:05d}.bin", dtype=np.uint16).tolist() == expect
    data.verify(data.VerifyConfig(data_dir=str(out_dir)))
    assert not list(out_dir.glob("*.tmp"))


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def cli_error(capsys, main, *args) -> str:
    """main(*args) as run_main runs a script: exit status 2 and one error line (after any progress bars)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(main, *args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("error: ") and err.count("error: ") == 1, err
    return err.splitlines()[-1]

# ----------------------------------------------------------------------------- 1. prepare: shards stay right


SLOW_WORKERS = """
import os, sys, time
sys.path.insert(0, {root!r})
import prepare, tokenizer
def slow(self, texts):  # a worker says who it is, then tokenizes forever
    open(os.path.join({pids!r}, str(os.getpid())), "w").close()
    time.sleep(120)
tokenizer._VocabTokenizer.encode_batch = slow
prepare.prepare(prepare.PrepareConfig(input={inputs!r}, out_dir={out!r}, tokenizer="char", val_frac=0.0, workers=2))
"""


def test_prepare_workers_die_with_their_killed_main_process_and_a_rerun_is_right(corpus, tmp_path):
    out, pids = tmp_path / "out", tmp_path / "pids"
    pids.mkdir()
    script = SLOW_WORKERS.format(root=ROOT, pids=str(pids), inputs=list(corpus), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], env=ENV, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(os.listdir(pids)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    workers = [int(p) for p in os.listdir(pids)]
    assert len(workers) == 2, "the workers did not start"
    proc.kill()  # SIGKILL to the main process only, not to its process group
    proc.wait()
    deadline = time.time() + 10
    while any(map(alive, workers)) and time.time() < deadline:
        time.sleep(0.05)
    try:
        assert not any(map(alive, workers)), "orphaned workers live on"
    finally:
        for pid in filter(alive, workers):
            os.kill(pid, signal.SIGKILL)
    prep(corpus, out)  # at once, as a user would
    assert_shards_hold(corpus, out)


ORPHAN = """
import os, sys, time
sys.path.insert(0, {root!r})
import prepare
os.makedirs({out!r}, exist_ok=True)
lock = prepare.lock_out_dir({out!r})
pid = os.fork()
if pid == 0:  # a worker: it inherits the lock and outlives its parent
    time.sleep(120)
    os._exit(0)
print(pid, flush=True)
os._exit(0)
"""


def test_prepare_refuses_an_out_dir_that_an_orphaned_worker_still_writes(corpus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", ORPHAN.format(root=ROOT, out=str(out))], env=ENV,
                            stdout=subprocess.PIPE, text=True)
    orphan = int(proc.stdout.readline())
    proc.wait()
    proc.stdout.close()
    monkeypatch.setattr(prepare, "LOCK_WAIT_S", 0.3)
    try:
        assert alive(orphan)
        with pytest.raises(UserError, match="being written by another data.py prepare"):
            prep(corpus, out)
    finally:
        os.kill(orphan, signal.SIGKILL)
    deadline = time.time() + 10
    while alive(orphan) and time.time() < deadline:
        time.sleep(0.05)
    prep(corpus, out)
    assert_shards_hold(corpus, out)


FOREIGN_WRITER = """
import os, sys
f = open({tmp!r}, "wb")  # the temp name an older run (or an orphan of one) writes through
print("ready", flush=True)
sys.stdin.readline()
f.seek(0)
f.write(bytes(4000))  # it writes on at its old offset...
f.close()
try:
    os.replace({tmp!r}, {tmp!r}[:-4])  # ...and renames its file over the shard
except FileNotFoundError:
    pass
print("done", flush=True)
"""


def test_a_writer_holding_a_temp_file_cannot_reach_the_shard(corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", FOREIGN_WRITER.format(tmp=str(out / "train_00000.bin.tmp"))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert writer.stdout.readline().strip() == "ready"
        prep(corpus, out)
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "done"
    finally:
        writer.kill()
        writer.wait()
    assert_shards_hold(corpus, out)


def test_a_damaged_shard_is_refused_by_name_and_prepared_again(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    meta = prep(corpus, out)
    entry = meta["shards"]["train"][0]
    assert entry["tokens"] == os.path.getsize(out / "train_00000.bin") // 2 and len(entry["sha256"]) == 64
    path = out / "train_00000.bin"
    good = path.read_bytes()
    path.write_bytes(good[:100] + bytes(len(good) - 200) + good[-100:])  # zeros inside, the same length
    err = cli_error(capsys, data.main, ["verify", f"--data_dir={out}"])
    assert "train_00000.bin does not match the sha256" in err and "train_00001" not in err

    path.write_bytes(good[:-64])  # a truncated shard: the loader's cheap check sees it
    with pytest.raises(UserError, match="train_00000.bin has .* bytes where meta.json records"):
        data.PretrainData(str(out), block_size=8, batch_size=2)
    mtime = os.stat(out / "train_00001.bin").st_mtime_ns
    prep(corpus, out)  # a rerun redoes exactly the shard that does not match
    assert "train_00000.bin has" in capsys.readouterr().out
    assert os.stat(out / "train_00001.bin").st_mtime_ns == mtime
    assert_shards_hold(corpus, out)


def test_bad_lines_are_counted_per_file_and_reason_and_survive_a_resume(corpus, tmp_path):
    out = tmp_path / "out"
    first, second = corpus
    expect = {first: {"invalid json": 1, "blank line": 1}}
    assert prep(corpus, out)["bad_lines"] == expect
    os.remove(out / "train_00001.bin")  # a resume tokenizes only the second file again
    assert prep(corpus, out)["bad_lines"] == expect
    assert data.load_meta(str(out))["bad_lines"] == expect

# ----------------------------------------------------------------------------- 2. the NaN guard

TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=32", "--batch_size=4", "--device=cpu",
        "--learning_rate=3e-3", "--warmup_iters=2", "--eval_iters=2", "--log_interval=1", "--eval_interval=100"]


@pytest.fixture(scope="module")
def char_data(tmp_path_factory):
    """A small char-level corpus, prepared."""
    d = tmp_path_factory.mktemp("chars")
    write_corpus(d / "c4-train.00000-of-01024.json.gz", 300, seed=0)
    data.prepare(data.PrepareConfig(input=[str(d / "c4-train.00000-of-01024.json.gz")], out_dir=str(d / "out"),
                                    tokenizer="char", val_frac=0.1, workers=1))
    return str(d / "out")


def train_cfg(char_data, out_dir, *extra):
    return parse_config(train.TrainConfig, [f"--data_dir={char_data}", f"--out_dir={out_dir}", *TINY, *extra])


@pytest.fixture
def saved(monkeypatch) -> list:
    """(step, names of non-finite tensors) of every checkpoint train.py writes."""
    writes, real = [], checkpoint.save_checkpoint

    def recording(path, model, optimizer, meta):
        writes.append((meta["step"], checkpoint.nonfinite_tensors(model)))
        real(path, model, optimizer, meta)

    monkeypatch.setattr(checkpoint, "save_checkpoint", recording)
    return writes


def loss_of_checkpoint(path: str, char_data: str) -> float:
    """The training loss of a checkpoint's weights on the batch of its own step: what --resume computes first."""
    ckpt = checkpoint.load_checkpoint(path)
    model = GPT(GPTConfig(**ckpt["meta"]["model"]))
    model.load_state_dict(ckpt["model"])
    batches = data.PretrainData(char_data, 32, 4, 0.0, seed=ckpt["meta"]["config"]["seed"])
    with torch.no_grad():
        return model(*batches.batch(ckpt["meta"]["step"]))[1].item()


def test_a_diverging_run_keeps_a_checkpoint_that_is_finite_and_gives_a_finite_loss(char_data, tmp_path, saved):
    # lr 100 diverges after a few steps; a checkpoint every step would catch the first poisoned weights
    cfg = train_cfg(char_data, tmp_path, "--learning_rate=100", "--warmup_iters=30", "--max_iters=40",
                    "--ckpt_interval=1")
    with pytest.raises(UserError, match=r"is (nan|inf) at step (\d+): stopped; the last good checkpoint") as e:
        train.main(cfg)
    stopped_at = int(e.value.args[0].split(" at step ")[1].split(":")[0])
    assert saved and all(not bad for _, bad in saved)  # no checkpoint ever held an inf or NaN
    ckpt = str(tmp_path / "ckpt.pt")
    assert checkpoint.load_checkpoint(ckpt)["meta"]["step"] == stopped_at - 1
    assert math.isfinite(loss_of_checkpoint(ckpt, char_data))


class InfiniteGradient(torch.autograd.Function):
    """The identity forward; an infinite gradient backward: a finite loss whose gradient norm is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def infinite_gradient_at(monkeypatch, steps: set[int]) -> None:
    """Training forward passes number 0, 1, 2... (one per step here) give an infinite gradient at `steps`."""
    forward, calls = train.GPT.forward, []

    def patched(self, idx, targets=None, **kw):
        logits, loss = forward(self, idx, targets, **kw)
        if targets is not None and self.training:
            calls.append(1)
            if len(calls) - 1 in steps:
                loss = InfiniteGradient.apply(loss)
        return logits, loss

    monkeypatch.setattr(train.GPT, "forward", patched)


def test_an_infinite_gradient_stops_the_run_before_it_reaches_the_weights(char_data, tmp_path, monkeypatch, saved):
    infinite_gradient_at(monkeypatch, {3})
    with pytest.raises(UserError, match=r"gradient norm is (nan|inf) at step 3: stopped; the last good checkpoint "
                                        r".* \(step 2\) is kept"):
        train.main(train_cfg(char_data, tmp_path, "--max_iters=8", "--ckpt_interval=2"))
    assert saved == [(2, [])]
    assert math.isfinite(loss_of_checkpoint(str(tmp_path / "ckpt.pt"), char_data))


def test_skip_drops_the_update_logs_it_and_stops_after_max_skips_in_a_row(char_data, tmp_path, monkeypatch, saved):
    infinite_gradient_at(monkeypatch, {3, 4})
    train.main(train_cfg(char_data, tmp_path / "skip", "--max_iters=8", "--ckpt_interval=2", "--on_nonfinite=skip"))
    records = [json.loads(line) for line in open(tmp_path / "skip" / "log.jsonl")]
    skipped = [(r["step"], r["skipped_steps"]) for r in records if r.get("skipped")]
    assert skipped == [(3, 1), (4, 2)]
    assert sorted(r["step"] for r in records if "loss" in r) == list(range(8))
    assert [s for s, _ in saved] == [2, 6, 8] and all(not bad for _, bad in saved)  # step 4 was skipped: no save

    infinite_gradient_at(monkeypatch, set(range(3, 100)))
    with pytest.raises(UserError, match=r"at step 5 \(3 non-finite steps in a row\): stopped"):
        train.main(train_cfg(char_data, tmp_path / "stop", "--max_iters=8", "--on_nonfinite=skip", "--max_skips=3"))

# ----------------------------------------------------------------------------- 3. disk errors: one line, exit 2


def full_disk(monkeypatch, name_part: str, after: int = 0, code: int = errno.ENOSPC, nth_open: int = 0,
              error: BaseException | None = None) -> None:
    """Files written through runtime (atomic_open, appends, the probes) whose name contains `name_part` take
    `after` bytes, then fail with `code` (or raise `error`), as on a full (or read-only) disk; in prepare's
    workers too. nth_open > 0: only the nth such file fails."""
    real, opened = open, [0]

    class Failing:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            room, self.n = after - self.n, self.n + len(b)
            if self.n > after:
                self.f.write(b[:max(room, 0)])  # what still fits, as a disk that fills up mid-write
                self.f.flush()
                raise error or OSError(code, os.strerror(code))
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *args, **kw):
        f = real(path, mode, *args, **kw)
        if name_part not in os.path.basename(str(path)) or not ("x" in mode or "a" in mode):
            return f
        opened[0] += 1
        return Failing(f) if nth_open in (0, opened[0]) else f

    monkeypatch.setattr(runtime, "open", fake_open, raising=False)


def test_a_full_disk_at_a_checkpoint_is_one_line_keeps_the_last_checkpoint_and_no_temp(char_data, tmp_path,
                                                                                       monkeypatch, capsys):
    train.main(train_cfg(char_data, tmp_path, "--max_iters=2"))
    before = (tmp_path / "ckpt.pt").read_bytes()
    full_disk(monkeypatch, "ckpt.pt", after=1000)
    err = cli_error(capsys, train.main, train_cfg(char_data, tmp_path, "--max_iters=4", "--resume"))
    assert err == f"error: cannot write {tmp_path / 'ckpt.pt'}: No space left on device"
    assert (tmp_path / "ckpt.pt").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [".train.lock", "ckpt.pt", "log.jsonl"]


def test_a_full_disk_in_prepare_names_the_shard_and_leaves_no_temp(corpus, tmp_path, monkeypatch, capsys):
    full_disk(monkeypatch, "train_00001.bin", after=100)
    err = cli_error(capsys, data.main, ["prepare", f"--input={','.join(corpus)}", f"--out_dir={tmp_path / 'o'}",
                                        "--tokenizer=char", "--val_frac=0", "--workers=1"])
    assert "train_00001.bin: No space left on device" in err and "1 input file(s) failed" in err
    assert sorted(os.listdir(tmp_path / "o")) == [".prepare.lock", "meta.json", "train_00000.bin"]


def test_a_read_only_out_dir_is_one_line_before_any_work(char_data, tmp_path, monkeypatch, capsys):
    full_disk(monkeypatch, ".write-probe", code=errno.EROFS)
    err = cli_error(capsys, train.main, train_cfg(char_data, tmp_path / "ro"))
    assert err == f"error: cannot write {tmp_path / 'ro'}: Read-only file system"
    assert not os.listdir(tmp_path / "ro")


def scripts_writing_under(blocker: str, char_data: str) -> dict:
    """Each script's main, with its output under `blocker`, a file where a directory should be."""
    import eval as evaluation
    import finetune
    from experiments import synth
    out = os.path.join(blocker, "out")
    return {
        "train": lambda: train.main(train_cfg(char_data, out)),
        "finetune": lambda: finetune.main(finetune.FinetuneConfig(out_dir=out, init_from="missing.pt")),
        "eval --out": lambda: evaluation.main(evaluation.EvalConfig(ckpt="missing.pt", out=out + "/r.json")),
        "prepare": lambda: data.prepare(data.PrepareConfig(input=[os.path.join(os.path.dirname(char_data),
                                        "c4-train.00000-of-01024.json.gz")], out_dir=out, tokenizer="char")),
        "inject": lambda: data.inject(data.InjectConfig(data_dir=char_data, out_dir=out, block_size=32)),
        "synth": lambda: synth.main([f"--out_dir={out}"]),
    }


@pytest.mark.parametrize("script", ["train", "finetune", "eval --out", "prepare", "inject", "synth"])
def test_an_unwritable_output_is_one_line_naming_it_before_any_work(script, char_data, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    err = cli_error(capsys, scripts_writing_under(str(blocker), char_data)[script])
    assert err.startswith(f"error: cannot write {blocker}/out") and "Not a directory" in err
    assert blocker.read_text() == "not a directory"

# ----------------------------------------------------------------------------- 4. options checked up front


@pytest.mark.parametrize("option,message", [
    ("--batch_size=0", "--batch_size must be an integer >= 1, got 0"),
    ("--n_head=5", "--n_head=5 must divide --n_embd=16"),
    ("--pause_frac=1.5", "--pause_frac must be a finite number in [0, 1), got 1.5"),
    ("--on_nonfinite=ignore", "--on_nonfinite must be one of stop, skip, got 'ignore'"),
])
def test_a_bad_train_option_is_one_line(option, message, char_data, tmp_path, capsys):
    assert cli_error(capsys, lambda: train.main(train_cfg(char_data, tmp_path, option))) == f"error: {message}"
    assert not os.path.exists(tmp_path / "log.jsonl")


@pytest.mark.parametrize("option,message", [
    ("--prompt=FILE:/no/such/prompt.txt", "no such file /no/such/prompt.txt"),
    ("--num_samples=0", "--num_samples must be an integer >= 1, got 0"),
])
def test_a_bad_sample_option_is_one_line(option, message, capsys):
    import sample
    assert message in cli_error(capsys, lambda: sample.main(parse_config(sample.SampleConfig, ["--ckpt=missing.pt", option])))


def test_resume_refuses_a_changed_run_and_logs_allowed_changes(char_data, tmp_path, capsys):
    train.main(train_cfg(char_data, tmp_path, "--max_iters=2"))
    for changed in ("--pause_frac=0.1", "--learning_rate=1e-3"):
        err = cli_error(capsys, train.main, train_cfg(char_data, tmp_path, "--max_iters=4", "--resume", changed))
        assert f"{changed[2:].split('=')[0]}=" in err and "Start a new --out_dir" in err
    train.main(train_cfg(char_data, tmp_path, "--max_iters=4", "--resume", "--eval_iters=3"))
    headers = [r for r in map(json.loads, open(tmp_path / "log.jsonl")) if "config" in r]
    assert headers[-1]["changed_on_resume"] == {"max_iters": [2, 4], "eval_iters": [2, 3]}
    assert checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))["meta"]["step"] == 4
