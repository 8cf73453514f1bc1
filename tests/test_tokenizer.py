"""The tokenizers: GPT-2 BPE with <pause> at 50257, and the char/word toy vocabularies; `tokenizer.py fetch`.
Tests marked bpe need the GPT-2 BPE file (tests/conftest.py)."""
import io
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest

import tokenizer as tokmod
from config import UserError
from tokenizer import EOT, PAUSE, CharTokenizer, GPT2Tokenizer, WordTokenizer


@pytest.fixture(scope="module")
def gpt2():
    return GPT2Tokenizer()


@pytest.mark.bpe
def test_gpt2_round_trip_with_pause_and_eot(gpt2):
    ids = gpt2.encode("The answer is<pause><pause> 42.", allow_pause=True) + [gpt2.eot_id] + gpt2.encode("Next.")
    assert ids.count(gpt2.pause_id) == 2
    assert gpt2.decode(ids) == "The answer is<pause><pause> 42." + EOT + "Next."


@pytest.mark.bpe
def test_pause_in_ordinary_text_is_plain_bpe(gpt2):
    ids = gpt2.encode("a <pause> b")
    assert gpt2.pause_id not in ids and gpt2.decode(ids) == "a <pause> b"


@pytest.mark.bpe
def test_gpt2_ids_fit_the_padded_vocab(gpt2):
    assert (gpt2.eot_id, gpt2.pause_id, tokmod.padded_vocab(gpt2.vocab_size)) == (50256, 50257, 50304)


@pytest.mark.bpe
def test_local_bpe_file_explicit_and_from_env(tmp_path, monkeypatch):
    copy = tmp_path / "r50k_base.tiktoken"
    shutil.copy(tokmod.local_bpe_path(), copy)
    assert GPT2Tokenizer(bpe_file=str(copy)).encode("hello world") == [31373, 995]
    monkeypatch.setenv(tokmod.BPE_ENV, str(copy))
    assert GPT2Tokenizer().encode("hello world") == [31373, 995]


@pytest.mark.parametrize("via_env", [False, True])
def test_wrong_bpe_file_is_refused(tmp_path, monkeypatch, via_env):
    wrong = tmp_path / "wrong.tiktoken"
    wrong.write_bytes(b"IQ== 0\nIg== 1\n")  # the format, not GPT-2's ranks
    if via_env:
        monkeypatch.setenv(tokmod.BPE_ENV, str(wrong))
    with pytest.raises(UserError, match="sha256"):
        GPT2Tokenizer(bpe_file=None if via_env else str(wrong))


@pytest.mark.parametrize("cls", [CharTokenizer, WordTokenizer])
def test_toy_tokenizers_round_trip_with_pause_last(cls):
    tok = cls.build(["the cat sat\non the mat"])
    text = f"the cat {PAUSE}{PAUSE} sat" if cls is CharTokenizer else f"the cat {PAUSE} {PAUSE} sat"
    ids = tok.encode(text, allow_pause=True)
    assert tok.pause_id == tok.vocab_size - 1 and ids.count(tok.pause_id) == 2
    assert tok.decode(ids) == text


def test_word_tokenizer_gives_each_number_one_token():
    tok = WordTokenizer.build(["12 + 345 = 357"])
    ids = tok.encode("357 = 12 + 345")
    assert [tok.decode([i]) for i in ids] == ["357", "=", "12", "+", "345"]


@pytest.mark.parametrize("kind", [pytest.param("gpt2", marks=pytest.mark.bpe), "char", "word"])
def test_from_meta_rebuilds_the_same_ids(kind):
    text = "Pause, then 12 + 30 = 42.\nDone"
    tok = tokmod.get_tokenizer(kind, texts=[text])
    assert tokmod.from_meta(tok.meta()).encode(text) == tok.encode(text)

# ----------------------------------------------------------------------------- fetch


def fake_pip(monkeypatch, content: bytes | None, calls: list) -> None:
    """`pip download` as tokenizer.fetch runs it: an sdist holding `content` as whisper's gpt2.tiktoken
    (None: pip fails, as offline)."""
    def run(cmd, **kw):
        calls.append(cmd)
        if content is None:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")
        with tarfile.open(os.path.join(cmd[cmd.index("-d") + 1], "openai_whisper-20250625.tar.gz"), "w:gz") as tar:
            info = tarfile.TarInfo("openai_whisper-20250625/whisper/assets/gpt2.tiktoken")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(subprocess, "run", run)


@pytest.mark.bpe
def test_fetch_writes_the_checked_file_once(tmp_path, monkeypatch):
    real, calls = pathlib.Path(tokmod.local_bpe_path()).read_bytes(), []
    fake_pip(monkeypatch, real, calls)
    dest = tmp_path / "assets" / "gpt2.tiktoken"
    tokmod.fetch(tokmod.FetchConfig(dest=str(dest)))
    assert dest.read_bytes() == real and "openai-whisper==20250625" in calls[0]
    tokmod.fetch(tokmod.FetchConfig(dest=str(dest)))  # already there: pip is not run again
    assert len(calls) == 1 and GPT2Tokenizer(bpe_file=str(dest)).encode("hello world") == [31373, 995]


@pytest.mark.parametrize("content,message", [(b"IQ== 0\n", "sha256"), (None, "No matching distribution")])
def test_fetch_refuses_a_wrong_file_or_a_failed_pip_in_one_line(tmp_path, monkeypatch, content, message):
    fake_pip(monkeypatch, content, [])
    with pytest.raises(UserError, match=message):
        tokmod.fetch(tokmod.FetchConfig(dest=str(tmp_path / "gpt2.tiktoken")))
    assert os.listdir(tmp_path) == []


def test_bpe_tests_skip_with_the_fix_named_unless_ci(tmp_path):
    """With no BPE file anywhere, a bpe test skips naming `python tokenizer.py fetch`; with CI set it fails."""
    root, repo = pathlib.Path(__file__).parents[1], tmp_path / "clone"  # a clone without assets/gpt2.tiktoken
    (repo / "tests").mkdir(parents=True)
    for name in ("tokenizer.py", "config.py", "runtime.py", "pause.py", "tests/conftest.py"):
        shutil.copy(root / name, repo / name)
    (repo / "tests" / "test_needs_bpe.py").write_text("import pytest\n\n@pytest.mark.bpe\ndef test_x():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", tokmod.BPE_ENV)}
    env.update(TIKTOKEN_CACHE_DIR=str(tmp_path / "empty_cache"), PYTHONPATH=str(repo))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests"]
    skipped = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert skipped.returncode == 0 and "python tokenizer.py fetch" in skipped.stdout, skipped.stdout
    failed = subprocess.run(cmd, cwd=repo, env={**env, "CI": "true"}, capture_output=True, text=True,
                                   timeout=120)
    assert failed.returncode == 1 and "CI requires it" in failed.stdout, failed.stdout
