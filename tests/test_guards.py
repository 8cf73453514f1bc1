"""Nothing unchecked: every option of every script within its declared range, one writer per output
directory, every write whole or not at all, and inputs (meta.json, checkpoints, prompts) checked at the door."""
import dataclasses
import errno
import gzip
import io
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import checkpoint
import data
import runtime
import eval as evaluation
import finetune
import sample
import train
from checkpoint import save_checkpoint
from config import UserError, parse_config, run_main
from model import GPT, GPTConfig
from test_faults import full_disk
from tokenizer import CharTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def one_line_error(capsys, fn, *args, status: int = 2) -> str:
    """The one line that fn(*args) under run_main printed last on stderr (after any progress bar), with `status`."""
    with pytest.raises(SystemExit) as e:
        run_main(fn, *args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == status and "Traceback" not in err, err
    return err.splitlines()[-1]


# ----------------------------------------------------------------------------- 1. options

BAD = [  # (script, config class, a bad value, what the error says)
    ("eval", "EvalConfig", "--batch_size=0", "--batch_size must be an integer >= 1, got 0"),
    ("eval", "EvalConfig", "--max_examples=-1", "--max_examples must be an integer >= 0"),
    ("eval", "EvalConfig", "--max_new_tokens=-5", "--max_new_tokens must be an integer >= 0"),
    ("finetune", "FinetuneConfig", "--val_frac=-0.5", "--val_frac must be a finite number in [0, 1), got -0.5"),
    ("finetune", "FinetuneConfig", "--max_examples=-1", "--max_examples must be"),
    ("experiments.curriculum", "CurriculumConfig", "--cot_frac=2", "--cot_frac must be a finite number in (0, 1]"),
    ("experiments.curriculum", "CurriculumConfig", "--cot_mix=-1", "--cot_mix must be a finite number in [0, 1]"),
    ("data", "ShowConfig", "--n=0", "--n must be an integer >= 1"),
    ("data", "ShowConfig", "--pause_frac=5", "--pause_frac must be a finite number in [0, 1)"),
    ("data", "ShowConfig", "--block_size=0", "--block_size must be"),
    ("data", "InjectConfig", "--pause_frac=nan", "--pause_frac must be a finite number in [0, 1), got nan"),
    ("data", "PrepareConfig", "--workers=0", "--workers must be"),
    ("data", "DownloadConfig", "--n_val=9", "--n_val must be an integer in [0, 8]"),
    ("train", "TrainConfig", "--learning_rate=nan", "--learning_rate must be a finite number in (0, 1e+30], got nan"),
    ("train", "TrainConfig", "--learning_rate=1e38", "--learning_rate must be a finite number in (0, 1e+30]"),
    ("train", "TrainConfig", "--seed=-1", "--seed must be an integer >= 0, got -1"),
    ("train", "TrainConfig", "--mlp_hidden=-5", "--mlp_hidden must be an integer >= 0"),
    ("train", "TrainConfig", "--device=tpu", "--device must be one of auto, cpu, cuda, cuda:N, got 'tpu'"),
    ("train", "TrainConfig", "--beta2=inf", "--beta2 must be a finite number in [0, 1), got inf"),
    ("sample", "SampleConfig", "--temperature=inf", "--temperature must be a finite number >= 0, got inf"),
    ("sample", "SampleConfig", "--temperature=nan", "--temperature must be a finite number >= 0, got nan"),
    ("tasks", "DownloadTasksConfig", "--task=gsm8k,nope", "--task (each value) must be one of"),
    ("bench", "BenchConfig", "--rounds=0", "--rounds must be"),
    ("bench_data", "DataBenchConfig", "--mb=nan", "--mb must be a finite number > 0"),
    ("experiments.study", "StudyConfig", "--ft_lr=nan", "--ft_lr must be a finite number"),
    ("experiments.compute_study", "ComputeStudyConfig", "--seeds=0", "--seeds must be"),
    ("experiments.synth", "SynthConfig", "--n_train=0", "--n_train must be"),
    ("experiments.separation", "ParityConfig", "--ns=12,1", "--ns (each value) must be"),
    ("experiments.separation", "ParityConfig", "--anneal_frac=nan", "--anneal_frac must be"),
    ("experiments.equal_compute", "EqualComputeConfig", "--queries=inf", "--queries must be a finite number"),
    ("experiments.equal_compute", "EqualComputeConfig", "--stages=StdPT,nope", "--stages (each value) must be one of"),
]


@pytest.mark.parametrize("module,name,arg,says", BAD)
def test_a_bad_value_is_one_line_naming_the_option(module, name, arg, says, capsys):
    import importlib
    cls = getattr(importlib.import_module(module), name)
    assert f"error: {says}" in one_line_error(capsys, lambda: parse_config(cls, [arg]))


@pytest.mark.parametrize("cmd", ["eval.py --batch_size=0", "sample.py --temperature=nan", "data.py show --n=0",
                                 "-m experiments.curriculum --cot_frac=2"])
def test_a_bad_value_on_the_command_line_exits_2_before_any_work(cmd):
    p = subprocess.run([sys.executable, *cmd.split()], cwd=ROOT, capture_output=True, text=True, env=ENV)
    option = cmd.split("--")[1].split("=")[0]
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith(f"error: --{option} must be")


@pytest.mark.parametrize("main,config", [
    (train.main, train.TrainConfig(learning_rate=float("nan"))),
    (finetune.main, finetune.FinetuneConfig(val_frac=-0.5)),
    (evaluation.main, evaluation.EvalConfig(batch_size=0)),
    (sample.main, sample.SampleConfig(temperature=float("inf"))),
    (data.show, data.ShowConfig(n=0)),
])
def test_a_config_built_in_code_is_checked_too(main, config):
    with pytest.raises(UserError, match="must be"):
        main(config)


def test_help_shows_what_each_option_accepts(capsys):
    with pytest.raises(SystemExit):
        parse_config(evaluation.EvalConfig, ["--help"])
    out = capsys.readouterr().out
    assert "sequences per forward pass" in out and "memory) [32] (an integer >= 1)" in out
    assert "(one of auto, cpu, cuda, cuda:N)" in out


def test_an_unknown_option_suggests_the_nearest(capsys):
    err = one_line_error(capsys, lambda: parse_config(train.TrainConfig, ["--max_iter=5"]))
    assert "unknown option --max_iter (did you mean --max_iters?)" in err


def test_config_files_apply_left_to_right_like_repeated_config(tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text("n_layer = 2\nn_head = 2\n")
    b.write_text("n_layer = 3\n")
    for argv in ([str(a), str(b)], [f"--config={a}", f"--config={b}"]):
        cfg = parse_config(train.TrainConfig, argv)
        assert (cfg.n_layer, cfg.n_head) == (3, 2), argv
    assert parse_config(train.TrainConfig, ["--n_layer=5", str(a), str(b)]).n_layer == 5  # overrides come last


# ----------------------------------------------------------------------------- 2. one writer per directory

TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=32", "--batch_size=4", "--device=cpu",
        "--warmup_iters=2", "--eval_iters=2", "--eval_interval=100", "--max_iters=3"]


@pytest.fixture(scope="module")
def char_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("chars")
    words = "the a pause token model thinks before it speaks".split()
    rng = np.random.default_rng(0)
    with gzip.open(d / "c4-train.00000-of-01024.json.gz", "wt") as f:
        for i in range(200):
            f.write(json.dumps({"text": " ".join(rng.choice(words, 20)), "url": "u", "timestamp": "t"}) + "\n")
    data.prepare(data.PrepareConfig(input=[str(d / "c4-train.00000-of-01024.json.gz")], out_dir=str(d / "out"),
                                    tokenizer="char", val_frac=0.1, workers=1))
    return str(d / "out")


def run_train(char_data, out, *extra):
    train.main(parse_config(train.TrainConfig, [f"--data_dir={char_data}", f"--out_dir={out}", *TINY, *extra]))


def test_a_second_writer_of_an_out_dir_is_refused(char_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with runtime.lock_dir(str(out), "train.py or finetune.py run", "train"):  # a live run holds the directory
        with pytest.raises(UserError, match="is being written by another train.py or finetune.py run"):
            run_train(char_data, out)
    assert not (out / "log.jsonl").exists()
    run_train(char_data, out)  # once it has ended, the directory is free


def test_a_fresh_run_into_a_used_out_dir_is_refused_unless_overwrite(char_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"config": {}}\n{"step": 0, "loss": 9.0}\n')  # a run that died before a checkpoint
    # it has no checkpoint: the refusal names the flag that works, and --resume (had it been tried) names it too
    with pytest.raises(UserError, match=r"holds an earlier run's log.jsonl: .*nothing to resume: pass --overwrite") as e:
        run_train(char_data, out)
    assert "--resume" not in str(e.value)
    with pytest.raises(UserError, match=r"--resume: .* holds no ckpt.pt .*pass --overwrite"):
        run_train(char_data, out, "--resume")
    run_train(char_data, out, "--overwrite")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert sum("config" in r for r in records) == 1 and [r["step"] for r in records if "loss" in r] == [0, 1, 2]
    with pytest.raises(UserError, match="holds an earlier run's ckpt.pt and log.jsonl"):
        run_train(char_data, out)


def test_resume_removes_stale_temp_files(char_data, tmp_path):
    out = tmp_path / "run"
    run_train(char_data, out)
    stale = out / "ckpt.pt.0123abcd.tmp"  # what a SIGKILL during a checkpoint write leaves
    stale.write_bytes(b"partial")
    (out / "notes.tmp").write_text("not ours")
    run_train(char_data, out, "--resume", "--max_iters=4")
    assert not stale.exists() and (out / "notes.tmp").exists()


# ----------------------------------------------------------------------------- 3. guarded writes

def test_a_full_disk_in_synth_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    from experiments import synth
    full_disk(monkeypatch, ".tmp", after=100)
    out = tmp_path / "synth"
    err = one_line_error(capsys, synth.main, [f"--out_dir={out}", "--n_train=50", "--n_val=10", "--n_test=20",
                                              "--corpus_docs=5", "--val_docs=2"])
    assert err.startswith("error: cannot write") and "No space left on device" in err
    assert os.listdir(out) == []


def test_a_full_disk_in_the_metrics_log_is_one_line_and_no_partial_record(char_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    full_disk(monkeypatch, "log.jsonl", after=10, nth_open=3)  # the header and the first evaluation are written
    err = one_line_error(capsys, run_train, char_data, out)
    assert err == f"error: cannot write {out / 'log.jsonl'}: No space left on device"
    text = (out / "log.jsonl").read_text()
    assert text.endswith("\n") and len([json.loads(line) for line in text.splitlines()]) == 2


def test_ctrl_c_during_a_checkpoint_write_is_an_interruption(tmp_path, monkeypatch, capsys):
    full_disk(monkeypatch, "ckpt.pt", after=100, error=KeyboardInterrupt())
    model = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=1, n_embd=8, pause_id=15))
    err = one_line_error(capsys, save_checkpoint, str(tmp_path / "ckpt.pt"), model, None, {}, status=130)
    assert err == "interrupted" and os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- 4. inputs at the door

@pytest.mark.parametrize("damage,says", [
    (lambda m: "{not json", "is not valid JSON"),
    (lambda m: json.dumps([m]), "not a JSON object but a list"),
    (lambda m: json.dumps({k: v for k, v in m.items() if k != "shards"}), "field shards"),
    (lambda m: json.dumps({**m, "pause_id": m["vocab_size"]}), "field pause_id"),
    (lambda m: json.dumps({**m, "eot_id": m["pause_id"]}), "fields pause_id and eot_id"),
    (lambda m: json.dumps({**m, "vocab_size": m["vocab_size"] + 1}), "field tokenizer.vocab_size"),
])
def test_a_damaged_meta_json_is_one_line_naming_the_field(char_data, tmp_path, capsys, damage, says):
    import shutil
    d = tmp_path / "d"
    shutil.copytree(char_data, d)
    (d / "meta.json").write_text(damage(json.loads((d / "meta.json").read_text())))
    for command in (["verify", f"--data_dir={d}"], ["show", f"--data_dir={d}"]):
        assert says in one_line_error(capsys, data.main, command)
    assert says in one_line_error(capsys, run_train, str(d), tmp_path / "run")


def test_verify_catches_an_id_not_below_vocab_size(char_data, tmp_path, capsys):
    import shutil
    d = tmp_path / "d"
    shutil.copytree(char_data, d)
    meta = json.loads((d / "meta.json").read_text())
    entry = meta["shards"]["train"][0]
    ids = np.fromfile(d / entry["file"], dtype=np.uint16)
    ids[5] = 50256  # an id of another tokenizer: the right size, and now the right checksum too
    ids.tofile(d / entry["file"])
    entry["sha256"] = hashlib.sha256(ids.tobytes()).hexdigest()
    (d / "meta.json").write_text(json.dumps(meta))
    err = one_line_error(capsys, data.main, ["verify", f"--data_dir={d}"])
    assert f"{entry['file']} holds id 50256, not below vocab_size {meta['vocab_size']}" in err


def tiny_checkpoint(path, model_meta: dict | None = None, poison: bool = False, **meta) -> str:
    tok = CharTokenizer.build(["abc \n"])
    conf = GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=1, n_embd=8, pause_id=tok.pause_id)
    model = GPT(conf)
    if poison:
        with torch.no_grad():
            model.lm_head.weight[3, 2] = float("nan")
    state = {"model": model.state_dict(), "optimizer": None,  # written as a damaged file would be, unguarded
             "meta": {"model": model_meta or dataclasses.asdict(conf), "tokenizer": tok.meta(), "kind": "finetune",
                      "m_ft": 0, **meta}}
    torch.save(state, path)
    return str(path)


def test_a_checkpoint_config_with_an_unknown_key_is_named(tmp_path, capsys):
    conf = {**dataclasses.asdict(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=1, n_embd=8, pause_id=6)),
            "n_experts": 4}
    path = tiny_checkpoint(tmp_path / "ckpt.pt", conf)
    err = one_line_error(capsys, sample.main, sample.SampleConfig(ckpt=path, device="cpu"))
    assert "unknown model config key 'n_experts'" in err


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path / "ckpt.pt", poison=True)
    for main, cfg in ((evaluation.main, evaluation.EvalConfig(ckpt=path, device="cpu", task="lambada")),
                      (sample.main, sample.SampleConfig(ckpt=path, device="cpu")),
                      (finetune.main, finetune.FinetuneConfig(init_from=path, out_dir=str(tmp_path / "ft")))):
        assert "tensor(s) hold inf or NaN" in one_line_error(capsys, main, cfg)


@pytest.mark.parametrize("damage,says", [({"tokenizer": "char"}, "tokenizer is not a table"),
                                         ({"tokenizer": {"kind": "char", "vocab_size": "9"}}, "must be integers"),
                                         ({"step": "7"}, "step is not a number"), ({"config": [1]}, "config is not")])
def test_a_damaged_checkpoint_meta_is_one_line_for_every_script(char_data, tmp_path, capsys, damage, says):
    path = tiny_checkpoint(tmp_path / "ckpt.pt", **damage)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ckpt.pt").write_bytes(open(path, "rb").read())
    for main, cfg in ((evaluation.main, evaluation.EvalConfig(ckpt=path, device="cpu", task="lambada")),
                      (sample.main, sample.SampleConfig(ckpt=path, device="cpu")),
                      (finetune.main, finetune.FinetuneConfig(init_from=path, out_dir=str(tmp_path / "ft"))),
                      (train.main, parse_config(train.TrainConfig, [f"--out_dir={tmp_path / 'run'}", "--resume",
                                                                    f"--data_dir={char_data}", *TINY]))):
        err = one_line_error(capsys, main, cfg)
        assert "its meta is damaged" in err and says in err, err


def test_a_disk_that_fills_when_the_log_closes_is_one_line_and_leaves_no_partial_record(tmp_path, monkeypatch):
    """The write fits in the buffer; the close flushes it and fails: the guard covers the close too."""
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 0}\n')

    class FullOnClose(io.FileIO):
        def close(self):
            if not self.closed:
                self.write(b"{partial")  # what reached the disk before it filled
                super().close()
                raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(runtime, "open", lambda p, mode: FullOnClose(p, mode), raising=False)
    with pytest.raises(UserError, match="No space left on device"):
        runtime.append_line(str(path), '{"step": 1}')
    assert path.read_text() == '{"step": 0}\n'


def test_an_empty_prompt_is_a_clear_error(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path / "ckpt.pt")
    (tmp_path / "empty.txt").write_text("")
    for prompt in ("", f"FILE:{tmp_path / 'empty.txt'}"):
        err = one_line_error(capsys, sample.main, sample.SampleConfig(ckpt=path, device="cpu", prompt=prompt))
        assert "the prompt is empty" in err
    model, tok, _ = checkpoint.load_model(path, "cpu")
    with pytest.raises(UserError, match="a prompt is empty"):
        sample.generate(model, [[1, 2], []], 3, tok.vocab_size)


@pytest.mark.parametrize("damage,says", [(lambda c: c["meta"].pop("rng"), "lacks the step, RNG or optimizer state"),
                                         (lambda c: c.update(optimizer=None), "lacks the step, RNG or optimizer state"),
                                         (lambda c: c["meta"].pop("step"), "lacks the step, RNG or optimizer state"),
                                         (lambda c: c["optimizer"]["state"].clear() or c["optimizer"].update(
                                             param_groups=[]), "cannot restore")])
def test_resume_from_a_checkpoint_missing_what_a_resume_needs_is_one_line(char_data, tmp_path, capsys, damage, says):
    out = tmp_path / "run"
    run_train(char_data, out)
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    damage(ckpt)
    torch.save(ckpt, out / "ckpt.pt")
    err = one_line_error(capsys, run_train, char_data, out, "--resume", "--max_iters=4")
    assert says in err, err
