"""data.py: prepare (documents -> uint16 shards), inject_pauses, PretrainData, the inject/show commands, the CLI.
Tests marked bpe need the GPT-2 BPE file (tests/conftest.py)."""
import dataclasses
import gzip
import json
import os
import pathlib
import random
import subprocess
import sys

import numpy as np
import pytest

import data
import tokenizer as tokmod
from config import UserError
from tokenizer import EOT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "the a pause token model thinks before it speaks and then answers with care 42 of C4".split()
BAD_LINES = [b"{not json", b"[1, 2]", b'{"url": "x"}', b'{"text": 5}', b'{"text": " \\n "}', b'{"text": "caf\xff"}']


def make_docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))).capitalize() + ".\n" for _ in range(n)]


def write_c4(path, docs: list[str], bad: list[bytes] = ()) -> str:
    """A C4-format .json.gz or .jsonl (url, text, timestamp per line); raw `bad` lines and a blank one in the middle."""
    lines = [json.dumps({"url": f"https://example.com/{i}", "text": d, "timestamp": "2019-04-25T12:57:54Z"}).encode()
             for i, d in enumerate(docs)]
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(b"\n".join(lines[:2] + list(bad) + [b""] + lines[2:]) + b"\n")
    return str(path)


def shard(out_dir, name: str) -> np.ndarray:
    return np.fromfile(os.path.join(out_dir, name), dtype=np.uint16)


def prep(out_dir, train: list[str], val: list[str] = (), **kw) -> dict:
    cfg = data.PrepareConfig(input=list(train), val_input=list(val), out_dir=str(out_dir), workers=2, **kw)
    return data.prepare(cfg)


@pytest.fixture(scope="module")
def gpt2():
    return tokmod.GPT2Tokenizer()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Three C4 train files (the second with one bad line of each kind) and a validation file, prepared with GPT-2."""
    d = tmp_path_factory.mktemp("c4")
    docs = {str(d / f"c4-train.{i:05d}-of-01024.json.gz"): make_docs(20 + i, seed=i) for i in range(3)}
    docs[str(d / "c4-validation.00000-of-00008.json.gz")] = make_docs(10, seed=99)
    for i, (path, texts) in enumerate(docs.items()):
        write_c4(path, texts, BAD_LINES if i == 1 else [])
    *train, val = docs
    return d / "out", docs, prep(d / "out", train, [val])

# ----------------------------------------------------------------------------- prepare


@pytest.mark.bpe
def test_prepare_shards_decode_to_documents_joined_by_eot(prepared, gpt2):
    out_dir, docs, meta = prepared
    entries = meta["shards"]["train"] + meta["shards"]["val"]
    assert [e["file"] for e in entries] == ["train_00000.bin", "train_00001.bin", "train_00002.bin", "val_00000.bin"]
    for e in entries:
        assert gpt2.decode(shard(out_dir, e["file"])) == EOT.join(docs[e["source"]]) + EOT


@pytest.mark.bpe
def test_prepare_meta_describes_the_tokenizer_and_shards(prepared):
    out_dir, _, meta = prepared
    assert json.loads((out_dir / "meta.json").read_text()) == meta
    assert (meta["pause_id"], meta["eot_id"], meta["dtype"]) == (50257, 50256, "uint16")
    assert meta["tokenizer"]["kind"] == "gpt2"
    assert all(e["tokens"] == len(shard(out_dir, e["file"])) for e in meta["shards"]["train"])


@pytest.mark.bpe
def test_prepare_counts_and_skips_bad_lines_per_file_and_reason(prepared):
    _, docs, meta = prepared
    files = list(docs)  # write_c4 puts one blank line into every file, and BAD_LINES into the second
    assert meta["bad_lines"] == {**{f: {"blank line": 1} for f in files},
                                 files[1]: {"invalid json": 1, "not an object": 1, "missing text": 1, "blank line": 1,
                                            "text not a string": 1, "empty text": 1, "invalid utf-8": 1}}


@pytest.mark.bpe
@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_prepare_names_a_bad_gzip_and_finishes_the_others(tmp_path, damage):
    good = [write_c4(tmp_path / f"good{i}.json.gz", make_docs(30, i)) for i in range(2)]
    blob = pathlib.Path(good[0]).read_bytes()
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(b"not a gzip file at all" if damage == "corrupt" else blob[:len(blob) // 2])
    with pytest.raises(UserError, match="bad.json.gz"):
        prep(tmp_path / "out", [good[0], str(bad), good[1]], val_frac=0.1)
    meta = data.load_meta(tmp_path / "out")
    assert [e["file"] for e in meta["shards"]["train"]] == ["train_00000.bin", "train_00002.bin"]
    assert (tmp_path / "out" / "train_00002.bin").exists() and not (tmp_path / "out" / "train_00001.bin").exists()


@pytest.mark.bpe
def test_prepare_resumes_skipping_finished_shards_and_redoing_temp_ones(tmp_path, gpt2):
    docs = [make_docs(25, i) for i in range(2)]
    files = [write_c4(tmp_path / f"in{i}.json.gz", d) for i, d in enumerate(docs)]
    out = tmp_path / "out"
    prep(out, files, val_frac=0.2)
    os.utime(out / "train_00000.bin", ns=(10**9, 10**9))
    os.remove(out / "train_00001.bin")
    (out / "train_00001.bin.tmp").write_bytes(b"partial")
    meta = prep(out, files, val_frac=0.2)
    assert os.stat(out / "train_00000.bin").st_mtime_ns == 10**9
    assert gpt2.decode(shard(out, "train_00001.bin")).split(EOT)[:3] == docs[1][:3]
    assert len(meta["shards"]["train"]) == len(meta["shards"]["val"]) == 2
    assert not list(out.glob("*.tmp"))


def test_prepare_refuses_an_out_dir_of_other_settings(tmp_path):
    files = [write_c4(tmp_path / "in.json.gz", make_docs(5, 0))]
    prep(tmp_path / "out", files, tokenizer="char")
    with pytest.raises(UserError, match="other inputs or settings"):
        prep(tmp_path / "out", files, tokenizer="word")


@pytest.mark.bpe
def test_prepare_holds_out_every_kth_document_for_val(tmp_path, gpt2):
    docs = make_docs(20, 7)
    prep(tmp_path / "out", [write_c4(tmp_path / "in.json.gz", docs)], val_frac=0.25)
    assert gpt2.decode(shard(tmp_path / "out", "val_00000.bin")) == EOT.join(docs[3::4]) + EOT
    kept = [d for i, d in enumerate(docs) if i % 4 != 3]
    assert gpt2.decode(shard(tmp_path / "out", "train_00000.bin")) == EOT.join(kept) + EOT


@pytest.mark.parametrize("kind", ["char", "word"])
def test_prepare_with_a_toy_tokenizer_builds_the_vocab_from_train_and_val(tmp_path, kind):
    train, val = make_docs(8, 1), ["Zebra ß only in val.\n"]
    meta = prep(tmp_path / "out", [write_c4(tmp_path / "t.json.gz", train)],
                [write_c4(tmp_path / "v.jsonl", val)], tokenizer=kind)  # .jsonl is read the same way, uncompressed
    tok = tokmod.from_meta(meta["tokenizer"])
    assert ("ß" if kind == "char" else "Zebra") in tok.symbols
    expect = [i for d in train for i in tok.encode(d) + [tok.eot_id]]
    assert shard(tmp_path / "out", "train_00000.bin").tolist() == expect


@pytest.mark.bpe
def test_prepare_reads_txt_as_one_document_per_file(tmp_path, gpt2):
    (tmp_path / "a.txt").write_text("First line.\n\nSecond paragraph.")
    prep(tmp_path / "out", [str(tmp_path / "*.txt")], val_frac=0.0)
    assert gpt2.decode(shard(tmp_path / "out", "train_00000.bin")) == "First line.\n\nSecond paragraph." + EOT

# ----------------------------------------------------------------------------- PretrainData


@pytest.fixture(scope="module")
def char_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("char")
    train = [write_c4(d / f"t{i}.json.gz", make_docs(60, i)) for i in range(2)]
    prep(d / "out", train, [write_c4(d / "v.json.gz", make_docs(40, 9))], tokenizer="char")
    return str(d / "out")


def pd(char_dir, pause_frac=0.25, seed=0):
    return data.PretrainData(char_dir, block_size=32, batch_size=8, pause_frac=pause_frac, seed=seed)


def test_batch_masks_exactly_the_targets_that_are_pauses(char_dir):
    d = pd(char_dir)
    x, y = d.batch(0)
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == data.torch.int64
    assert ((y[:, :-1] == -1) == (x[:, 1:] == d.pause_id)).all()
    real = y[:, :-1] != -1
    assert (y[:, :-1][real] == x[:, 1:][real]).all()


def test_batch_keeps_the_real_target_of_a_pause_input(char_dir):
    d = pd(char_dir)
    x, y = d.batch(1)
    before_real = (x[:, :-1] == d.pause_id) & (x[:, 1:] != d.pause_id)
    assert before_real.any() and (y[:, :-1][before_real] == x[:, 1:][before_real]).all()


def test_batch_without_pause_frac_is_plain_shard_windows(char_dir):
    d = pd(char_dir, pause_frac=0.0)
    x, y = d.batch(2)
    assert not (x == d.pause_id).any() and not (y == -1).any()
    stream = b"".join(np.asarray(s).tobytes() for s in d.train)
    for xr, yr in zip(x, y):
        window = np.concatenate([xr.numpy(), yr.numpy()[-1:]]).astype(np.uint16).tobytes()
        assert stream.find(window) % 2 == 0


def test_batch_has_at_most_n_pause_per_row(char_dir):
    d = pd(char_dir)
    counts = (d.batch(3)[0] == d.pause_id).sum(1)
    assert d.n_pause == 8 and counts.max() <= 8 and counts.sum() > 0


def test_batch_is_a_function_of_seed_step_and_index(char_dir):
    a, b = pd(char_dir), pd(char_dir)
    assert all((u == v).all() for u, v in zip(a.batch(5, 3), b.batch(5, 3)))
    assert not (a.batch(5, 3)[0] == a.batch(5, 4)[0]).all()
    assert not (a.batch(5, 3)[0] == a.batch(6, 3)[0]).all()
    assert not (a.batch(5, 3)[0] == pd(char_dir, seed=1).batch(5, 3)[0]).all()


@pytest.mark.parametrize("inject", [False, True])
def test_val_batch_is_fixed(char_dir, inject):
    a, b = pd(char_dir), pd(char_dir)
    x = a.val_batch(1, inject)[0]
    assert (x == a.val_batch(1, inject)[0]).all() and (x == b.val_batch(1, inject)[0]).all()
    assert (x == a.pause_id).any() == inject


def test_val_batch_reads_consecutive_windows_and_wraps(char_dir):
    d = pd(char_dir, pause_frac=0.0)
    x, y = d.val_batch(0)
    first = np.asarray(d.val[0][:8 * 33]).reshape(8, 33)  # the val shard holds more than 8 windows
    assert (x.numpy() == first[:, :-1]).all() and (y.numpy() == first[:, 1:]).all()
    assert (d.val_batch(len(d.val_windows))[0] == x).all()


def test_loader_errors_are_user_errors(tmp_path, char_dir):
    with pytest.raises(UserError, match="no meta.json"):
        data.PretrainData(str(tmp_path), 32, 8)
    with pytest.raises(UserError, match="block_size"):
        data.PretrainData(char_dir, 10**6, 8)

# ----------------------------------------------------------------------------- inject / show commands, CLI


def test_inject_command_writes_injected_windows(char_dir, tmp_path):
    data.inject(data.InjectConfig(data_dir=char_dir, out_dir=str(tmp_path), block_size=32, pause_frac=0.25))
    meta, pause = data.load_meta(str(tmp_path)), data.load_meta(char_dir)["pause_id"]
    windows = shard(tmp_path, "train_00000.bin").reshape(-1, 32)
    original = shard(char_dir, "train_00000.bin")[:windows.size].reshape(-1, 32)
    assert meta["pause_frac"] == 0.25 and ((windows == pause).sum(1) <= 8).all() and (windows == pause).any()
    for w, o in zip(windows, original):
        real = w[w != pause]
        assert (real == o[:len(real)]).all()


def test_show_prints_pauses(char_dir, capsys):
    data.show(data.ShowConfig(data_dir=char_dir, n=2, block_size=32, pause_frac=0.25))
    assert "<pause>" in capsys.readouterr().out


def test_help_lists_every_option_of_every_command(capsys):
    data.main(["--help"])
    top = capsys.readouterr().out
    for name, (cls, _) in data.COMMANDS.items():
        with pytest.raises(SystemExit):
            data.main([name, "--help"])
        own = capsys.readouterr().out
        assert all(f"--{f.name}=" in top and f"--{f.name}=" in own for f in dataclasses.fields(cls))
        assert f"  {name} " in top


@pytest.mark.parametrize("args", [["prepare", "--no_such_option=1"], ["inject", "--block_size=big"]])
def test_cli_mistakes_exit_2_with_one_line(args):
    r = subprocess.run([sys.executable, "data.py", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
