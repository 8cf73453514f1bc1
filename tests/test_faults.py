"""Nothing lost, nothing silently wrong: shards that no killed or concurrent run can corrupt, a NaN guard
that never keeps poisoned weights, disk errors and bad options as one line and exit 2, logs that add up."""
import errno
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import common
import data
import prepare
from common import UserError, run_main
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
