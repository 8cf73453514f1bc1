"""Doors at the limits: a run too big for memory is refused before it is allocated, extreme temperatures sample
without NaN, a meta.json whose vocabulary is smaller than its shards' ids is one line, and eval's --out is never
replaced unasked nor half-written."""
import errno
import gzip
import json
import os
import random
import shutil

import pytest
import torch

import data
import eval as evaluation
import runtime
import sample
import train
from checkpoint import save_checkpoint
from config import parse_config
from model import GPT, GPTConfig
from tokenizer import WordTokenizer, padded_vocab
from test_faults import cli_error

TINY = ["--device=cpu", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=32", "--batch_size=2",
        "--max_iters=1", "--eval_iters=1"]
WORDS = ["gap", *map(str, range(20))]


@pytest.fixture(scope="module")
def char_data(tmp_path_factory):
    """A prepared char-level data_dir: a train and a val shard of a few thousand tokens each."""
    d = tmp_path_factory.mktemp("doors")
    rng, files = random.Random(0), []
    for name in ("c4-train.00000-of-01024.json.gz", "c4-train.00001-of-01024.json.gz"):
        docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for _ in range(60)]
        with gzip.open(d / name, "wt") as f:
            f.write("".join(json.dumps({"text": doc}) + "\n" for doc in docs))
        files.append(str(d / name))
    data.prepare(data.PrepareConfig(input=files[:1], val_input=files[1:], out_dir=str(d / "data"), tokenizer="char",
                                    workers=1))
    return str(d / "data")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A random tiny model over a word vocabulary, as a checkpoint, and a LAMBADA-format task file."""
    d = tmp_path_factory.mktemp("ckpt")
    tok = WordTokenizer.build([" ".join(WORDS)])
    torch.manual_seed(0)
    conf = GPTConfig(block_size=64, vocab_size=padded_vocab(tok.vocab_size), n_layer=1, n_head=2, n_embd=16,
                     pause_id=tok.pause_id)
    save_checkpoint(str(d / "ckpt.pt"), GPT(conf), None, {"kind": "pretrain", "model": conf.__dict__,
                                                          "tokenizer": tok.meta()})
    rng = random.Random(1)
    (d / "task.jsonl").write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(6))}) + "\n"
                                          for _ in range(40)))
    return str(d / "ckpt.pt"), str(d / "task.jsonl")

# ----------------------------------------------------------------------------- 1. sizes that cannot fit


@pytest.mark.parametrize("override", ["--batch_size=1000000", "--n_layer=100000", "--n_embd=1200000"])
def test_train_refuses_a_run_too_big_for_memory_before_building_it(override, char_data, tmp_path, capsys):
    cfg = parse_config(train.TrainConfig, [f"--data_dir={char_data}", f"--out_dir={tmp_path}", "--device=cpu",
                                           "--block_size=1024", override])
    err = cli_error(capsys, train.main, cfg)
    assert "needs about" in err and " GiB (an estimate), cpu has " in err and "available" in err, err
    assert not (tmp_path / "log.jsonl").exists()  # refused before the model and its log


def test_the_estimate_matches_the_measured_1b_peak_and_fits_the_presets_on_an_80gb_gpu():
    bf16, gib = torch.bfloat16, 2**30
    one_b = GPTConfig(block_size=2048, n_layer=48, n_head=16, n_embd=1024, mlp_hidden=8192)
    eager = runtime.memory_needed(one_b, 8, 2048, bf16, training=True, logit_rows=GPT.loss_chunk)
    assert 65 * gib < eager < 70 * gib  # config/1b.toml: 65 GiB measured on one H200, eager, batch 8 x 2048
    compiled = runtime.memory_needed(one_b, 8, 2048, bf16, training=True, logit_rows=8 * 2048)
    small = runtime.memory_needed(GPTConfig(block_size=2048), 16, 2048, bf16, training=True, logit_rows=16 * 2048)
    assert compiled < 78 * gib and 10 * gib < small < 40 * gib  # 130m.toml with --compile: about 28 GiB
    tiny = runtime.memory_needed(GPTConfig(block_size=128, vocab_size=64, n_layer=3, n_head=4, n_embd=64), 32, 128,
                                 torch.float32, training=True, logit_rows=GPT.loss_chunk)
    assert tiny < 2**28  # config/tiny.toml: well under 256 MiB


def test_eval_refuses_a_batch_too_big_for_the_memory_it_has(ckpt, monkeypatch, capsys):
    path, task = ckpt
    monkeypatch.setattr(runtime, "available_memory", lambda device: 2**20, raising=False)  # a device with 1 MiB
    args = [f"--ckpt={path}", f"--task_file={task}", "--task=lambada", "--device=cpu", "--m_inf=0"]
    evaluation.main(parse_config(evaluation.EvalConfig, args + ["--batch_size=4"]))  # 4 rows fit
    huge = parse_config(evaluation.EvalConfig, args + ["--batch_size=1000000"])  # 40 rows: the examples, all at once
    err = cli_error(capsys, evaluation.main, huge)
    assert "needs about" in err and "cpu has 1.0 MiB available: lower --batch_size" in err, err


class Stop(Exception):
    """Raised by a stub to end a run after its first batch."""


def test_a_million_samples_are_drawn_a_batch_at_a_time(ckpt, monkeypatch):
    rows = []

    def first_batch(model, prompts, *args, **kwargs):
        rows.append(len(prompts))
        raise Stop

    monkeypatch.setattr(sample, "generate", first_batch)
    with pytest.raises(Stop):
        sample.main(parse_config(sample.SampleConfig, [f"--ckpt={ckpt[0]}", "--device=cpu", "--prompt=gap",
                                                       "--num_samples=1000000"]))
    assert rows == [64]


def test_samples_are_printed_batch_by_batch(ckpt, capsys):
    sample.main(parse_config(sample.SampleConfig, [f"--ckpt={ckpt[0]}", "--device=cpu", "--prompt=gap 1 2",
                                                   "--num_samples=5", "--batch_size=2", "--max_new_tokens=3"]))
    err = capsys.readouterr().err
    assert [f"--- sample {i} " in err for i in range(6)] == [True] * 5 + [False]


def test_sample_refuses_a_batch_too_big_for_memory(ckpt, capsys):
    args = [f"--ckpt={ckpt[0]}", "--device=cpu", "--prompt=gap", f"--num_samples={10**9}", f"--batch_size={10**9}"]
    err = cli_error(capsys, lambda: sample.main(parse_config(sample.SampleConfig, args)))
    assert "needs about" in err and "--batch_size" in err, err

# ----------------------------------------------------------------------------- 2. extreme temperatures


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16, pause_id=59)).eval()
    with torch.no_grad():  # sharper logits: greedy and uniform sampling then differ clearly
        for p in m.parameters():
            p.mul_(4.0)
    return m


def test_a_tiny_temperature_samples_the_greedy_tokens(model):
    prompts = [[1, 2, 3], [4, 5], [7]] * 4
    greedy = sample.generate(model, prompts, 8, 60)
    gen = torch.Generator().manual_seed(0)
    assert sample.generate(model, prompts, 8, 60, temperature=1e-45, generator=gen) == greedy
    assert sample.generate(model, prompts, 8, 60, temperature=5e-324, top_k=3, generator=gen) == greedy


def test_a_huge_temperature_samples_every_allowed_token_alike(model):
    rows = sample.generate(model, [[1, 2, 3]] * 600, 1, 60, temperature=1e308,
                           generator=torch.Generator().manual_seed(0))
    tokens = [r[0] for r in rows]
    assert max(tokens) < 59 and len(set(tokens)) >= 55  # 59 allowed tokens (<pause> 59, padding 60-63 banned)
    assert max(map(tokens.count, set(tokens))) < 30  # about 10 each, where greedy would give one token 600 times

# ----------------------------------------------------------------------------- 3. meta.json too small for the ids


@pytest.fixture
def small_vocab(char_data, tmp_path):
    """char_data whose meta.json is self-consistent but lists 3 symbols fewer than the shards use."""
    out = tmp_path / "small"
    shutil.copytree(char_data, out)
    meta = json.loads((out / "meta.json").read_text())
    symbols = meta["tokenizer"]["symbols"][:-3]
    fields = {"vocab_size": len(symbols) + 2, "eot_id": len(symbols), "pause_id": len(symbols) + 1}
    meta.update(fields)
    meta["tokenizer"].update(fields, symbols=symbols)
    (out / "meta.json").write_text(json.dumps(meta))
    return str(out)


def test_train_on_ids_beyond_the_vocabulary_is_one_line(small_vocab, tmp_path, capsys):
    cfg = parse_config(train.TrainConfig, [f"--data_dir={small_vocab}", f"--out_dir={tmp_path / 'run'}", *TINY])
    err = cli_error(capsys, train.main, cfg)
    assert "train_00000.bin holds id" in err and "not below vocab_size" in err, err


def test_inject_refuses_ids_beyond_the_vocabulary_and_writes_nothing(small_vocab, tmp_path, capsys):
    out = tmp_path / "injected"
    err = cli_error(capsys, data.inject, data.InjectConfig(data_dir=small_vocab, out_dir=str(out), block_size=32))
    assert "holds id" in err and "not below vocab_size" in err, err
    assert not out.exists() or not os.listdir(out)


def test_show_of_ids_beyond_the_vocabulary_or_of_a_char_vocabulary_without_symbols_is_one_line(small_vocab, capsys):
    err = cli_error(capsys, data.main, ["show", f"--data_dir={small_vocab}", "--block_size=16"])
    assert "holds id" in err, err
    path = os.path.join(small_vocab, "meta.json")
    with open(path) as f:
        meta = json.load(f)
    del meta["tokenizer"]["symbols"]
    runtime.write_json(path, meta)
    err = cli_error(capsys, data.main, ["show", f"--data_dir={small_vocab}", "--block_size=16"])
    assert "tokenizer.symbols" in err, err

# ----------------------------------------------------------------------------- 4. eval --out


def eval_args(ckpt, out: str, *more: str) -> list[str]:
    return [f"--ckpt={ckpt[0]}", f"--task_file={ckpt[1]}", "--task=lambada", "--device=cpu", "--m_inf=0",
            "--max_examples=4", "--max_new_tokens=1", f"--out={out}", *more]


def test_eval_out_onto_an_existing_file_needs_overwrite(ckpt, tmp_path, capsys):
    out = tmp_path / "results.json"
    out.write_text("[]")
    err = cli_error(capsys, lambda: evaluation.main(parse_config(evaluation.EvalConfig, eval_args(ckpt, out))))
    assert f"{out} exists" in err and "--overwrite" in err, err
    assert out.read_text() == "[]"
    evaluation.main(parse_config(evaluation.EvalConfig, eval_args(ckpt, out, "--overwrite")))
    assert len(json.loads(out.read_text())) == 1
    capsys.readouterr()
    with pytest.raises(SystemExit):
        parse_config(evaluation.EvalConfig, ["--help"])
    assert "--overwrite" in capsys.readouterr().out


def test_eval_onto_a_full_disk_keeps_the_old_results_whole(ckpt, tmp_path, capsys, monkeypatch):
    out = tmp_path / "results.json"
    out.write_text("[]")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runtime.os, "fsync", full)
    args = eval_args(ckpt, out, "--overwrite")
    err = cli_error(capsys, lambda: evaluation.main(parse_config(evaluation.EvalConfig, args)))
    assert f"cannot write {out}: No space left on device" in err, err
    assert out.read_text() == "[]" and os.listdir(tmp_path) == ["results.json"]


def test_eval_into_a_read_only_folder_is_one_line_before_any_work(ckpt, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "results.json").write_text("[]")
    real_open = open

    def read_only(path, mode="r", *args, **kwargs):  # what a read-only folder does to any user, root included
        if os.path.dirname(os.path.abspath(path)) == str(folder) and set(mode) & set("wxa+"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only)
    args = eval_args(ckpt, folder / "results.json", "--overwrite")
    err = cli_error(capsys, lambda: evaluation.main(parse_config(evaluation.EvalConfig, args)))
    assert f"cannot write {folder}: Permission denied" in err, err
    assert (folder / "results.json").read_text() == "[]" and os.listdir(folder) == ["results.json"]
