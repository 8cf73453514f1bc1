"""The doors of the task files: a download that is not the official file, never taken as whole and fetched
again on a rerun; a task file that is not text; a config file with a key twice. Each is one line, exit status 2."""
import bz2
import hashlib
import json

import pytest

import runtime
import tasks
from test_download import server  # noqa: F401  (the local HTTP server on 127.0.0.1, a fixture)
from test_faults import cli_error

LAMBADA = b"".join(json.dumps({"text": f"passage {i} ends with the word key{i}"}).encode() + b"\n" for i in range(200))
PATH = "/lambada/lambada_test.jsonl"  # a mirror holds TASK/<official file name>, as --out_dir does


@pytest.fixture
def lambada(server, tmp_path, monkeypatch):  # noqa: F811
    """`tasks.py download` of LAMBADA from the local server, the file served pinned; returns its argv."""
    monkeypatch.setitem(tasks.SHA256, "lambada/lambada_test.jsonl", hashlib.sha256(LAMBADA).hexdigest())
    server.files = {PATH: LAMBADA}
    return ["download", "--task=lambada", f"--out_dir={tmp_path}", f"--base_url={server.url}/"]


def test_download_takes_a_mirror_and_a_rerun_keeps_the_file(server, lambada, tmp_path):
    tasks.main(lambada)
    assert (tmp_path / "lambada" / "lambada_test.jsonl").read_bytes() == LAMBADA
    tasks.main(lambada)  # whole and pinned: not fetched again
    assert server.ranges == [None]


@pytest.mark.parametrize("served", [LAMBADA[:-700], LAMBADA.replace(b"key7", b"lock")], ids=["truncated", "wrong"])
def test_a_file_that_is_not_the_pinned_one_is_refused_and_a_rerun_fetches_it(capsys, server, lambada, tmp_path,
                                                                             served):
    server.files[PATH] = served  # announced with its own (short or right) Content-Length
    assert "sha256" in cli_error(capsys, tasks.main, lambada)
    assert list((tmp_path / "lambada").iterdir()) == []  # neither the file nor a .part to resume from
    server.files[PATH] = LAMBADA
    tasks.main(lambada)
    assert (tmp_path / "lambada" / "lambada_test.jsonl").read_bytes() == LAMBADA


def test_a_404_is_one_line_naming_the_url(capsys, server, lambada, tmp_path):
    server.files = {}
    assert cli_error(capsys, tasks.main, lambada).endswith(f"{server.url}{PATH} failed: HTTP 404 Not Found")
    assert list((tmp_path / "lambada").iterdir()) == []


def test_a_dropped_connection_keeps_a_part_that_a_rerun_resumes(capsys, server, lambada, tmp_path):
    server.truncate = True  # Content-Length of the whole file, then half of it and the connection closes
    assert "run again to resume" in cli_error(capsys, tasks.main, lambada)
    assert [p.name for p in (tmp_path / "lambada").iterdir()] == ["lambada_test.jsonl.part"]
    server.truncate = False
    tasks.main(lambada)
    assert server.ranges[-1] == f"bytes={len(LAMBADA) // 2}-"
    assert (tmp_path / "lambada" / "lambada_test.jsonl").read_bytes() == LAMBADA
    assert tasks.load_task("lambada", str(tmp_path / "lambada" / "lambada_test.jsonl"))[7].answers == ["key7"]


def test_every_official_file_is_pinned():
    files = {f"{spec.name}/{url.rsplit('/', 1)[1]}" for spec in tasks.TASKS.values() for url in spec.files.values()}
    assert files == set(tasks.SHA256) | set(tasks.GIT_BLOB) and not set(tasks.SHA256) & set(tasks.GIT_BLOB)
    assert all(len(h) == 64 and set(h) <= set("0123456789abcdef") for h in tasks.SHA256.values())
    assert all(len(h) == 40 and set(h) <= set("0123456789abcdef") for h in tasks.GIT_BLOB.values())


def test_a_git_blob_id_is_the_one_git_gives(tmp_path):
    (tmp_path / "a").write_bytes(b"hello\n")  # `printf 'hello\n' | git hash-object --stdin`
    assert runtime.file_git_blob(str(tmp_path / "a")) == "ce013625030ba8dba906f756967f9e9ca394464a"
    (tmp_path / "b").write_bytes(b"")  # git's empty blob
    assert runtime.file_git_blob(str(tmp_path / "b")) == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


PIQA = b"".join(json.dumps({"goal": f"goal {i}", "sol1": "a", "sol2": "b"}).encode() + b"\n" for i in range(50))
PIQA_LABELS = b"".join(b"%d\n" % (i % 2) for i in range(50))


@pytest.mark.parametrize("served", [PIQA[:-300], PIQA.replace(b"goal 7", b"goal 8")], ids=["truncated", "wrong"])
def test_piqas_train_questions_not_the_pinned_ones_are_refused_and_a_rerun_fetches_them(capsys, server, tmp_path,
                                                                                      monkeypatch, served):
    (tmp_path / "pinned").write_bytes(PIQA)
    monkeypatch.setitem(tasks.GIT_BLOB, "piqa/train.jsonl", runtime.file_git_blob(str(tmp_path / "pinned")))
    monkeypatch.setitem(tasks.SHA256, "piqa/train-labels.lst", hashlib.sha256(PIQA_LABELS).hexdigest())
    server.files = {"/piqa/train.jsonl": served, "/piqa/train-labels.lst": PIQA_LABELS}
    argv = ["download", "--task=piqa", "--splits=train", f"--out_dir={tmp_path}", f"--base_url={server.url}/"]
    assert "train.jsonl has git blob" in cli_error(capsys, tasks.main, argv)
    assert list((tmp_path / "piqa").iterdir()) == []
    (tmp_path / "piqa" / "train.jsonl").write_bytes(served)  # a wrong file left by an older version: fetched again
    server.files["/piqa/train.jsonl"] = PIQA
    tasks.main(argv)
    assert (tmp_path / "piqa" / "train.jsonl").read_bytes() == PIQA
    assert len(tasks.load_task("piqa", str(tmp_path / "piqa" / "train.jsonl"))) == 50


# ----------------------------------------------------------------------------- task files that are not text

GSM8K = b'{"question": "What is 2+3?", "answer": "2+3=5\\n#### 5"}\n'
FILES = {  # task -> (file name, its bytes with line 2 damaged by BAD, how the file is stored)
    "gsm8k": ("test.jsonl", GSM8K + b"BAD\n" + GSM8K, bytes),
    "squad": ("dev-v1.1.json", b'{"version": "1.1",\n "data": "BAD"}\n', bytes),
    "webquestions": ("webquestions.examples.test.json.bz2", b'[\n {"utterance": "BAD"}]\n', bz2.compress),
}


@pytest.mark.parametrize("bad,says", [(b'{"question": "\xff\xfe"}', "not UTF-8"), (b"\x00\x00\x00\x00", "NUL byte")],
                         ids=["invalid-utf8", "nul"])
@pytest.mark.parametrize("task", FILES)
def test_a_task_file_that_is_not_text_is_one_line_naming_file_and_line(capsys, tmp_path, task, bad, says):
    name, content, store = FILES[task]
    path = tmp_path / name
    path.write_bytes(store(content.replace(b"BAD", bad)))
    assert cli_error(capsys, tasks.load_task, task, str(path)).startswith(f"error: {path}, line 2: {says}")


def test_piqa_labels_with_a_nul_byte_name_their_file_and_line(capsys, tmp_path):
    (tmp_path / "valid.jsonl").write_text(json.dumps({"goal": "g", "sol1": "a", "sol2": "b"}) + "\n")
    (tmp_path / "valid-labels.lst").write_bytes(b"\x000\n")
    line = cli_error(capsys, tasks.load_task, "piqa", str(tmp_path / "valid.jsonl"))
    assert line.startswith(f"error: {tmp_path / 'valid-labels.lst'}, line 1: NUL byte")


def test_a_line_separator_inside_a_json_string_is_not_a_line_break(tmp_path):
    path = tmp_path / "test.jsonl"  # JSON allows U+2028 and U+0085 raw in a string; str.splitlines() breaks there
    path.write_text(json.dumps({"question": "a\u2028b\x85c?", "answer": "#### 1"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    [ex] = tasks.load_task("gsm8k", str(path))
    assert ex.prefix == "Question: a\u2028b\x85c?\nAnswer:"


# ----------------------------------------------------------------------------- a config file with a key twice

def test_a_config_file_with_a_key_twice_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tasks.toml"
    path.write_text('out_dir = "a"\nsplits = ["eval"]\nout_dir = "b"\n')
    line = cli_error(capsys, tasks.main, ["download", str(path)])
    assert line.startswith(f"error: config file {path} is not valid TOML") and "line 3" in line
    assert list(tmp_path.iterdir()) == [path]  # refused before any work
