"""Pretraining runs: DDP ≡ one process, kill + resume ≡ uninterrupted, atomic checkpoints, NaN stop, clear errors."""
import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from checkpoint import load_checkpoint
from config import UserError, parse_config, run_main
from train import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=32", "--batch_size=4", "--device=cpu",
        "--learning_rate=3e-3", "--warmup_iters=2", "--eval_iters=2", "--log_interval=1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small char-level corpus in C4 format, prepared by data.py."""
    tmp = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = ["pause", "think", "before", "you", "speak", "token", "model", "the", "a", "of"]
    with gzip.open(tmp / "c4-train.00000-of-01024.json.gz", "wt") as f:
        for i in range(300):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(10, 40)))
            f.write(json.dumps({"text": text, "url": f"http://x/{i}", "timestamp": "2019-04-25T12:00:00Z"}) + "\n")
    out = tmp / "prepared"
    subprocess.run([sys.executable, "data.py", "prepare", f"--input={tmp}/c4-train.00000-of-01024.json.gz",
                    f"--out_dir={out}", "--tokenizer=char", "--val_frac=0.1", "--workers=1"],
                   cwd=ROOT, env=ENV, check=True, capture_output=True)
    return str(out)


def train_cmd(data_dir, out_dir, *extra):
    return [sys.executable, "train.py", f"--data_dir={data_dir}", f"--out_dir={out_dir}", *TINY, *extra]


def step_losses(out_dir) -> dict[int, float]:
    """Training loss per step from log.jsonl (the last record of a step wins, as after a resume)."""
    losses = {}
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        for rec in map(json.loads, f):
            if "loss" in rec:
                losses[rec["step"]] = rec["loss"]
    return losses


def test_ddp_two_processes_match_one_with_grad_accum(data_dir, tmp_path):
    common = ["--max_iters=6", "--grad_accum=2", "--pause_frac=0.1", "--eval_interval=100"]
    subprocess.run(train_cmd(data_dir, tmp_path / "one", *common), cwd=ROOT, env=ENV, check=True, capture_output=True)
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           *train_cmd(data_dir, tmp_path / "two", *common)[2:]]
    p = subprocess.run(ddp, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]  # a failure shows what the ranks said
    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(6))
    for s in one:
        assert one[s] == pytest.approx(two[s], rel=1e-5, abs=1e-6)
    w1 = load_checkpoint(str(tmp_path / "one" / "ckpt.pt"))["model"]
    w2 = load_checkpoint(str(tmp_path / "two" / "ckpt.pt"))["model"]
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5)


def test_kill_and_resume_is_bit_identical(data_dir, tmp_path):
    # Dropout makes the RNG state part of what must be restored. The step-4 checkpoint is written during
    # step 4 (once its loss is known to be finite); the long final evaluation after step 7 gives a
    # deterministic window to SIGKILL the run in, with steps after the checkpoint already logged.
    common = ["--max_iters=8", "--eval_interval=4", "--eval_iters=400", "--dropout=0.1", "--pause_frac=0.1"]
    subprocess.run(train_cmd(data_dir, tmp_path / "full", *common), cwd=ROOT, env=ENV, check=True, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(data_dir, out, *common), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "ckpt.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(str(out / "ckpt.pt"))["meta"]["step"] == 4, "the kill came too late"
    assert set(step_losses(out)) >= {0, 1, 2, 3}

    subprocess.run(train_cmd(data_dir, out, *common, "--resume"), cwd=ROOT, env=ENV, check=True, capture_output=True)
    assert step_losses(out) == step_losses(tmp_path / "full")  # exact float equality, every step
    with open(out / "log.jsonl") as f:
        records = [json.loads(line) for line in f]
    trained = [r["step"] for r in records if "loss" in r]
    evaluated = [r["step"] for r in records if "val_loss" in r]
    assert trained == list(range(8)) and evaluated == [0, 4, 8]  # the replayed steps appear once
    assert [r.get("resumed_at") for r in records if "config" in r] == [None, 4]


def test_kill_during_checkpoint_write_keeps_previous(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    writer = (
        "import sys, torch; sys.path.insert(0, %r)\n"
        "from checkpoint import save_checkpoint\n"
        "m = torch.nn.Linear(1000, 2000)\n"
        "i = 0\n"
        "while True:\n"
        "    with torch.no_grad(): m.weight.fill_(i)\n"
        "    save_checkpoint(%r, m, None, {'step': i}); i += 1\n" % (ROOT, path))
    for delay in (0.5, 0.73, 0.91):
        proc = subprocess.Popen([sys.executable, "-c", writer], env=ENV)
        deadline = time.time() + 60
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(delay)  # mid-write most of the time: each write takes a few tens of ms
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = load_checkpoint(path)
        assert torch.all(ckpt["model"]["weight"] == ckpt["meta"]["step"])


def test_nan_loss_stops_and_keeps_checkpoint(data_dir, tmp_path, monkeypatch):
    forward, calls = train.GPT.forward, []

    def nan_after_three_steps(self, idx, targets=None, **kw):
        logits, loss = forward(self, idx, targets, **kw)
        if targets is not None and self.training:
            calls.append(1)
            if len(calls) > 3:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(train.GPT, "forward", nan_after_three_steps)
    cfg = parse_config(TrainConfig, [f"--data_dir={data_dir}", f"--out_dir={tmp_path}", *TINY,
                                     "--max_iters=10", "--ckpt_interval=2", "--eval_interval=100"])
    with pytest.raises(UserError, match="nan at step 3.*last good checkpoint"):
        train.main(cfg)
    assert load_checkpoint(str(tmp_path / "ckpt.pt"))["meta"]["step"] == 2


def run_train_cli(args, capsys) -> str:
    """train.py's main as the CLI runs it: the exit status must be 2 and stderr one line."""
    with pytest.raises(SystemExit) as e:
        run_main(lambda: train.main(parse_config(TrainConfig, args, prog="train.py")))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_inputs_give_one_line_and_keep_files(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    subprocess.run(train_cmd(data_dir, out, "--max_iters=2"), cwd=ROOT, env=ENV, check=True, capture_output=True)
    before = (out / "ckpt.pt").read_bytes()
    base = [f"--data_dir={data_dir}", f"--out_dir={out}", *TINY]
    assert "unknown option --n_layers" in run_train_cli(base + ["--n_layers=3"], capsys)
    assert "--max_iters expects int" in run_train_cli(base + ["--max_iters=ten"], capsys)
    assert "--resume" in run_train_cli(base + ["--max_iters=4"], capsys)  # would overwrite a run
    assert "another config" in run_train_cli(base + ["--max_iters=4", "--resume", "--n_embd=32"], capsys)
    assert (out / "ckpt.pt").read_bytes() == before
    assert "holds no ckpt.pt" in run_train_cli([f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'none'}", *TINY,
                                              "--resume"], capsys)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ckpt.pt").write_bytes(before[: len(before) // 2])
    assert "corrupt" in run_train_cli([f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'bad'}", *TINY,
                                       "--resume"], capsys)
    assert "data.py prepare" in run_train_cli([f"--data_dir={tmp_path / 'nodata'}", f"--out_dir={tmp_path / 'x'}",
                                               *TINY], capsys)


def test_checkpoint_loads_with_weights_only_and_holds_everything(data_dir, tmp_path):
    subprocess.run(train_cmd(data_dir, tmp_path, "--max_iters=3", "--pause_frac=0.1"), cwd=ROOT, env=ENV,
                   check=True, capture_output=True)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    meta = ckpt["meta"]
    assert meta["step"] == 3 and meta["kind"] == "pretrain" and meta["config"]["pause_frac"] == 0.1
    assert meta["model"]["pause_id"] == meta["tokenizer"]["pause_id"]
    assert ckpt["optimizer"]["state"] and "cpu" in meta["rng"]
    with open(tmp_path / "log.jsonl") as f:
        first = json.loads(f.readline())
    assert first["config"] == meta["config"]  # the log starts with the full config
    evals = [r for r in map(json.loads, open(tmp_path / "log.jsonl")) if "val_loss" in r]
    assert evals and all("val_loss_pause" in r for r in evals)


def test_resume_a_checkpoint_written_before_a_config_field_existed(data_dir, tmp_path):
    args = [f"--data_dir={data_dir}", f"--out_dir={tmp_path}", *TINY, "--eval_interval=100"]
    train.main(parse_config(TrainConfig, args + ["--max_iters=2"]))
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    del ckpt["meta"]["model"]["mlp_hidden"]  # as written before GPTConfig had it: the default is meant
    torch.save(ckpt, tmp_path / "ckpt.pt")
    train.main(parse_config(TrainConfig, args + ["--max_iters=3", "--resume"]))
    assert load_checkpoint(str(tmp_path / "ckpt.pt"))["meta"]["step"] == 3


def test_rng_state_loaded_onto_another_device_is_restored():
    """A checkpoint loaded with map_location=cuda holds its RNG states on the GPU, where torch.set_rng_state
    refuses them (a resume on GPU crashed); set_rng_state brings them back to the CPU first."""
    from checkpoint import rng_state, set_rng_state

    class OnGPU:  # what torch.load(map_location="cuda") gives: not a CPU ByteTensor until .cpu()
        def __init__(self, t):
            self.t = t

        def cpu(self):
            return self.t

    state = rng_state()
    expected = torch.rand(3)
    set_rng_state({"cpu": OnGPU(state["cpu"])})
    assert torch.equal(torch.rand(3), expected)


def test_ctrl_c_before_the_first_checkpoint_then_the_flag_the_error_names_works(data_dir, tmp_path):
    out = tmp_path / "run"
    slow = ["--max_iters=3", "--eval_iters=100000"]  # step 0's evaluation: a long window before any checkpoint
    proc = subprocess.Popen(train_cmd(data_dir, out, *slow), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "log.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into the evaluation
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().endswith("interrupted") and not (out / "ckpt.pt").exists()
    flags = []
    for attempt in ([], ["--resume"]):  # the plain rerun and --resume: each refused, naming the flag that works
        p = subprocess.run(train_cmd(data_dir, out, "--max_iters=3", *attempt), cwd=ROOT, env=ENV, capture_output=True,
                           text=True)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith("error: "), p.stderr
        flags.append(re.search(r"pass (--\w+)", p.stderr).group(1))
    assert flags == ["--overwrite", "--overwrite"]
    p = subprocess.run(train_cmd(data_dir, out, "--max_iters=3", flags[0]), cwd=ROOT, env=ENV, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(rf"step 3: val_loss \d+\.\d{{4}}; checkpoint {out}/ckpt.pt", p.stdout.strip().splitlines()[-1])
