"""The tokenizers: GPT-2 BPE with <pause> at 50257, and the char/word toy vocabularies."""
import pathlib
import shutil

import pytest

import tokenizer as tokmod
from common import UserError
from tokenizer import EOT, PAUSE, CharTokenizer, GPT2Tokenizer, WordTokenizer


@pytest.fixture(scope="module")
def gpt2():
    return GPT2Tokenizer()


def test_gpt2_round_trip_with_pause_and_eot(gpt2):
    ids = gpt2.encode("The answer is<pause><pause> 42.", allow_pause=True) + [gpt2.eot_id] + gpt2.encode("Next.")
    assert ids.count(gpt2.pause_id) == 2
    assert gpt2.decode(ids) == "The answer is<pause><pause> 42." + EOT + "Next."


def test_pause_in_ordinary_text_is_plain_bpe(gpt2):
    ids = gpt2.encode("a <pause> b")
    assert gpt2.pause_id not in ids and gpt2.decode(ids) == "a <pause> b"


def test_gpt2_ids_fit_the_padded_vocab(gpt2):
    assert (gpt2.eot_id, gpt2.pause_id, tokmod.padded_vocab(gpt2.vocab_size)) == (50256, 50257, 50304)


def test_local_bpe_file_explicit_and_from_env(tmp_path, monkeypatch):
    copy = tmp_path / "r50k_base.tiktoken"
    shutil.copy(tokmod.BPE_DEFAULT, copy)
    assert GPT2Tokenizer(bpe_file=str(copy)).encode("hello world") == [31373, 995]
    monkeypatch.setenv(tokmod.BPE_ENV, str(copy))
    assert GPT2Tokenizer().encode("hello world") == [31373, 995]


@pytest.mark.parametrize("via_env", [False, True])
def test_wrong_bpe_file_is_refused(tmp_path, monkeypatch, via_env):
    wrong = tmp_path / "wrong.tiktoken"
    wrong.write_bytes(pathlib.Path(tokmod.BPE_DEFAULT).read_bytes()[:-100])  # different bytes
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


@pytest.mark.parametrize("kind", ["gpt2", "char", "word"])
def test_from_meta_rebuilds_the_same_ids(kind):
    text = "Pause, then 12 + 30 = 42.\nDone"
    tok = tokmod.get_tokenizer(kind, texts=[text])
    assert tokmod.from_meta(tok.meta()).encode(text) == tok.encode(text)

