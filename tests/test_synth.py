"""synth.py: the largest-gap task (LAMBADA or GSM8K format) and its pretraining corpus (C4 format)."""
import gzip
import json
import os
import random
import re

import pytest

from config import UserError
import tasks
from experiments.synth import (TRAIN_CORPUS, VAL_CORPUS, largest_gap, main, make_question, problem_text, task_text,
                   write_corpus, write_task)
from tokenizer import WordTokenizer

# A narrow range (n=3 from [5, 20)): without the exclusion, held-out questions would recur in the corpus.
N, LO, HI = 3, 5, 20
ARGS = ["--n=3", "--lo=5", "--hi=20", "--n_train=60", "--n_val=40", "--n_test=100", "--corpus_docs=20", "--val_docs=4",
        "--problems_per_doc=30", "--corpus_n=2,3"]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def corpus_rows(path, end_word=" ."):
    """The corpus documents, without the word that ends each of them."""
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    for r in rows:
        assert r["text"].endswith(end_word)
        r["text"] = r["text"].removesuffix(end_word)
    return rows


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """The GSM8K layout (the tests below read its files); `out_lambada` is the default layout."""
    d = str(tmp_path_factory.mktemp("synth"))
    main(ARGS + ["--layout=gsm8k", f"--out_dir={d}"])
    return d


@pytest.fixture(scope="module")
def out_lambada(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("synth_lambada"))
    main(ARGS + [f"--out_dir={d}"])
    return d


def test_largest_gap_hand_checked():
    assert largest_gap([1, 10, 4]) == 6
    assert largest_gap([0, 63]) == 63
    assert largest_gap([2, 3, 7, 8]) == 4
    assert largest_gap([8, 2, 7, 3]) == 4


def test_task_text_of_each_kind():
    assert task_text("gap", [1, 10, 4]) == ("gap 1 10 4", "#### 6")
    assert task_text("min", [5, 3, 9]) == ("min 5 3 9", "#### 3")
    assert task_text("max", [5, 3, 9]) == ("max 5 3 9", "#### 9")
    assert task_text("sort", [5, 3, 9]) == ("sort 5 3 9", "#### 3 5 9")


def test_problem_text_of_each_layout():
    assert problem_text("gap", [1, 10, 4], "lambada") == "gap 1 10 4 6"  # nothing between question and answer
    assert problem_text("gap", [1, 10, 4], "gsm8k") == "Question: gap 1 10 4\nAnswer: #### 6"
    assert problem_text("sort", [5, 3], "lambada") == "sort 5 3 3 5"
    with pytest.raises(UserError):
        problem_text("gap", [1, 2], "squad")


def test_lambada_layout_task_files_read_as_lambada_with_the_gap_as_last_word(out_lambada):
    for split, count in (("train", 60), ("test", 100)):
        rows = read_jsonl(os.path.join(out_lambada, f"{split}.jsonl"))
        assert len(rows) == count and all(set(r) == {"text"} for r in rows)
        examples = tasks.load_task("lambada", os.path.join(out_lambada, f"{split}.jsonl"))
        for e in examples:
            kind, *words = e.prefix.split(" ")
            values = [int(w) for w in words]
            assert kind == "gap" and len(set(values)) == N and all(LO <= v < HI for v in values)
            assert e.target == f" {largest_gap(values)}" and e.answers == [str(largest_gap(values))]


def test_lambada_layout_corpus_solved_and_without_test_questions(out_lambada):
    text = "\n\n".join(r["text"] for r in corpus_rows(os.path.join(out_lambada, TRAIN_CORPUS)))
    problems = [p.split(" ") for p in text.split("\n\n")]
    assert len(problems) >= 20 * 30 and "Question:" not in text
    for kind, *words in problems:
        n = (len(words) // 2) if kind == "sort" else len(words) - 1
        values = [int(w) for w in words[:n]]
        assert problem_text(kind, values, "lambada") == " ".join([kind] + words)
    test = {e.prefix for e in tasks.load_task("lambada", os.path.join(out_lambada, "test.jsonl"))}
    assert not test & {" ".join(p[:N + 1]) for p in problems if len(p) == N + 2}


def test_unknown_kind_is_a_user_error():
    with pytest.raises(UserError):
        task_text("median", [1, 2, 3])


def test_make_question_distinct_and_in_range():
    rng = random.Random(0)
    for _ in range(200):
        values = make_question(rng, 12, 10, 30)
        assert len(set(values)) == 12 and all(10 <= v < 30 for v in values)


def test_task_files_are_gsm8k_format(out):
    for split, count in (("train", 60), ("test", 100)):
        rows = read_jsonl(os.path.join(out, f"{split}.jsonl"))
        assert len(rows) == count
        for row in rows:
            assert set(row) == {"question", "answer"} and re.fullmatch(r"#### \d+", row["answer"])


def test_task_answers_are_largest_gaps_of_distinct_numbers_in_range(out):
    for row in read_jsonl(os.path.join(out, "test.jsonl")):
        kind, *words = row["question"].split(" ")
        values = [int(w) for w in words]
        assert kind == "gap" and len(set(values)) == N and all(LO <= v < HI for v in values)
        assert row["answer"] == f"#### {largest_gap(values)}"


def test_train_and_test_questions_disjoint_and_unique(out):
    train = [r["question"] for r in read_jsonl(os.path.join(out, "train.jsonl"))]
    test = [r["question"] for r in read_jsonl(os.path.join(out, "test.jsonl"))]
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test)


def test_corpus_is_c4_format(out):
    for name in (TRAIN_CORPUS, VAL_CORPUS):
        rows = corpus_rows(os.path.join(out, name))
        assert rows
        for row in rows:
            assert set(row) == {"text", "timestamp", "url"} and isinstance(row["text"], str) and row["text"]
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["timestamp"])
            assert row["url"].startswith("https://")


def test_corpus_problems_are_solved_correctly(out):
    text = "\n\n".join(r["text"] for r in corpus_rows(os.path.join(out, TRAIN_CORPUS)))
    problems = re.findall(r"Question: (\w+) ([\d ]+)\nAnswer: ([#\d ]+)", text)
    assert len(problems) >= 20 * 30
    for kind, numbers, answer in problems:
        assert task_text(kind, [int(w) for w in numbers.split()])[1] == answer


def test_no_test_question_in_either_corpus(out):
    text = "\n".join(r["text"] for name in (TRAIN_CORPUS, VAL_CORPUS) for r in corpus_rows(os.path.join(out, name)))
    for row in read_jsonl(os.path.join(out, "test.jsonl")):
        assert f"Question: {row['question']}\n" not in text


def test_corpus_covers_every_number_and_every_gap(tmp_path):
    # n=6 from [10, 20) never has a largest gap above 5, nor a number below 10: words 6..9 must be added.
    write_corpus(str(tmp_path / "c.json.gz"), 2, 10, n_range=(6, 6), lo=10, hi=20, seed=1, end_word="")
    words = set(" ".join(r["text"] for r in corpus_rows(str(tmp_path / "c.json.gz"), "")).split())
    assert {str(v) for v in range(10, 20)} | {str(g) for g in range(1, 10)} <= words


def test_word_tokenizer_from_corpus_encodes_task_with_one_token_per_number(out):
    tok = WordTokenizer.build(r["text"] for r in corpus_rows(os.path.join(out, TRAIN_CORPUS)))
    for split in ("train", "test"):
        for row in read_jsonl(os.path.join(out, f"{split}.jsonl")):
            q, a = row["question"], row["answer"]
            assert len(tok.encode(f"Question: {q}\nAnswer: {a}")) == len(q.split()) + len(a.split()) + 3


def test_same_seeds_give_same_bytes(tmp_path):
    for d in ("a", "b"):
        main(ARGS + ["--layout=gsm8k", f"--out_dir={tmp_path / d}"])
    for name in ("train.jsonl", "test.jsonl", TRAIN_CORPUS, VAL_CORPUS):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_corpus_gzip_header_has_no_clock_time(out):
    with open(os.path.join(out, TRAIN_CORPUS), "rb") as f:
        assert f.read(8)[4:8] == bytes(4)  # gzip MTIME field: zero, or the bytes would change every second


def test_test_split_depends_only_on_test_seed(tmp_path):
    for d, seed in (("a", 0), ("b", 1)):
        write_task(str(tmp_path / d), N, LO, HI, n_train=30, n_test=30, seed=seed, test_seed=7)
    assert (tmp_path / "a" / "test.jsonl").read_text() == (tmp_path / "b" / "test.jsonl").read_text()
    assert (tmp_path / "a" / "train.jsonl").read_text() != (tmp_path / "b" / "train.jsonl").read_text()


def test_default_test_seed_differs_from_train_seed(tmp_path):
    info = write_task(str(tmp_path), N, LO, HI, n_train=10, n_test=10, seed=3)
    assert info["test_seed"] != info["seed"]


def test_too_many_questions_for_the_range_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        write_task(str(tmp_path), n=2, lo=0, hi=4, n_train=10, n_test=10)


def test_unknown_corpus_kind_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        write_corpus(str(tmp_path / "c.json.gz"), 1, 1, n_range=(2, 3), lo=0, hi=8, kinds=("median",))


def test_variable_n_questions_have_every_length_and_right_gaps(tmp_path):
    write_task(str(tmp_path), [3, 7], 0, 30, n_train=300, n_test=200, n_val=100)
    lengths = set()
    for split in ("train", "val", "test"):
        for e in tasks.load_task("lambada", str(tmp_path / f"{split}.jsonl")):
            kind, *words = e.prefix.split(" ")
            values = [int(w) for w in words]
            lengths.add(len(values))
            assert kind == "gap" and len(set(values)) == len(values) and all(0 <= v < 30 for v in values)
            s = sorted(values)
            assert e.answers == [str(max(b - a for a, b in zip(s, s[1:])))]  # by hand, not with largest_gap
    assert lengths == {3, 4, 5, 6, 7}


def test_train_val_test_disjoint_as_number_sets_and_held_out_sets_not_in_corpus(out_lambada):
    sets = {}
    for split in ("train", "val", "test"):
        sets[split] = [frozenset(map(int, e.prefix.split()[1:]))
                       for e in tasks.load_task("lambada", os.path.join(out_lambada, f"{split}.jsonl"))]
    assert [len(sets[k]) for k in ("train", "val", "test")] == [60, 40, 100]
    assert not set(sets["train"]) & set(sets["val"]) and not set(sets["train"]) & set(sets["test"])
    assert not set(sets["val"]) & set(sets["test"])
    corpus = []
    for name in (TRAIN_CORPUS, VAL_CORPUS):
        for r in corpus_rows(os.path.join(out_lambada, name)):
            for p in r["text"].split("\n\n"):
                kind, *words = p.split(" ")
                n = (len(words) // 2) if kind == "sort" else len(words) - 1
                corpus.append(frozenset(int(w) for w in words[:n]))
    assert not set(corpus) & (set(sets["val"]) | set(sets["test"]))


def test_corpus_documents_end_with_the_filler_word_so_it_is_in_the_vocabulary(out_lambada):
    with gzip.open(os.path.join(out_lambada, TRAIN_CORPUS), "rt") as f:
        tok = WordTokenizer.build(json.loads(line)["text"] for line in f)
    assert tok.encode(".") == [tok.stoi["."]]


def test_bad_n_range_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        write_task(str(tmp_path), [7, 3], 0, 30, n_train=10, n_test=10)


def fresh_split(src, tmp_path, layout, monkeypatch, n_test=40):
    """write_fresh_test on a copy of a task folder, with an earlier test split on the same range (seed 77)."""
    import shutil
    from experiments import synth
    d = tmp_path / "task"
    shutil.copytree(src, d)
    monkeypatch.setattr(synth, "EARLIER_TESTS", (((N, N), LO, HI, 77),))
    monkeypatch.setattr(synth, "EARLIER_TEST_SIZE", 50)
    return synth.write_fresh_test(str(d), n_test, N, LO, HI, layout), d


def numbers(row):
    words = row["question"].split()[1:] if "question" in row else row["text"].split()[1:-1]
    return frozenset(map(int, words))


@pytest.mark.parametrize("layout", ["lambada", "gsm8k"])
def test_fresh_test_split_is_disjoint_from_every_split_corpus_and_earlier_test(layout, out, out_lambada, tmp_path,
                                                                              monkeypatch):
    info, d = fresh_split(out_lambada if layout == "lambada" else out, tmp_path, layout, monkeypatch)
    fresh = [numbers(r) for r in read_jsonl(d / "fresh_test.jsonl")]
    assert len(set(fresh)) == 40 and all(len(v) == N and all(LO <= x < HI for x in v) for v in fresh)
    held = {s: {numbers(r) for r in read_jsonl(d / f"{s}.jsonl")} for s in ("train", "val", "test")}
    for name in (TRAIN_CORPUS, VAL_CORPUS):  # every problem of any kind, read here independently of synth.py
        problems = [p for r in corpus_rows(d / name) for p in r["text"].split("\n\n")]
        if layout == "gsm8k":
            problems = [p.split("\n")[0].removeprefix("Question: ") + " answer" for p in problems]
        held[name] = {frozenset(map(int, w[1:1 + len(w[1:]) // 2] if w[0] == "sort" else w[1:-1]))
                      for w in (p.split() for p in problems)}
    write_task(str(tmp_path / "earlier"), N, LO, HI, n_train=0, n_test=50, test_seed=77)
    held["earlier test"] = {numbers(r) for r in read_jsonl(tmp_path / "earlier" / "test.jsonl")}
    # on this narrow range the sources cover most number sets: a fresh split drawn blind would hit them
    assert sum(map(len, held.values())) > 400
    for name, sets in held.items():
        assert not set(fresh) & sets, name
    assert info["seed"] == 5000 and len(info["checked_against"]) == 6


def test_fresh_test_split_checks_what_it_wrote(out_lambada, tmp_path, monkeypatch):
    from experiments import synth
    draw = synth._draw
    monkeypatch.setattr(synth, "_draw", lambda rng, count, n_range, lo, hi, banned: draw(rng, count, n_range, lo, hi,
                                                                                          set()))
    with pytest.raises(RuntimeError, match="shares"):  # drawn without the exclusions: caught by the read-back
        fresh_split(out_lambada, tmp_path, "lambada", monkeypatch)
