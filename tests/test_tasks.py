"""tasks.py: each loader on a tiny file in its task's official format, the metrics, the errors."""
import bz2
import json
import types

import pytest

import tasks
from config import UserError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=1))
    return str(path)


# ------------------------------------------------------------------------------------- loaders

def test_gsm8k(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [
        {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
        {"question": "What is 1000+234?", "answer": "It is 1,234.\n#### 1,234"}])
    ex = tasks.load_task("gsm8k", path)
    assert ex[0].prefix == "Question: Tom has 3 apples and buys 4. How many?\nAnswer:"
    assert ex[0].target == " 3+4=<<3+4=7>>7\n#### 7"
    assert [e.answers for e in ex] == [["7"], ["1234"]]


SQUAD = {"version": "1.1", "data": [{"title": "Super_Bowl_50", "paragraphs": [{
    "context": "Super Bowl 50 was won by the Denver Broncos.",
    "qas": [{"id": "56be4db0acb8001400a502ec", "question": "Who won Super Bowl 50?",
             "answers": [{"answer_start": 25, "text": "the Denver Broncos"},
                         {"answer_start": 29, "text": "Denver Broncos"},
                         {"answer_start": 29, "text": "Denver Broncos"}]}]}]}]}


def test_squad(tmp_path):
    [ex] = tasks.load_task("squad", write_json(tmp_path / "dev-v1.1.json", SQUAD))
    assert ex.prefix == ("Title: Super_Bowl_50\n\nBackground: Super Bowl 50 was won by the Denver Broncos.\n\n"
                         "Question: Who won Super Bowl 50?\n\nAnswer:")
    assert (ex.target, ex.answers) == (" the Denver Broncos", ["the Denver Broncos", "Denver Broncos"])


COQA = {"version": "1.0", "data": [{
    "source": "mctest", "id": "3dr23u6we5exclen4th8uq9rb42tel", "filename": "mc160.test.41",
    "story": "Once upon a time there was a white kitten named Cotton.",
    "questions": [{"input_text": "What color was Cotton?", "turn_id": 1},
                  {"input_text": "What was it?", "turn_id": 2}],
    "answers": [{"span_start": 30, "span_end": 50, "span_text": "white kitten", "input_text": "white", "turn_id": 1},
                {"span_start": 36, "span_end": 42, "span_text": "kitten", "input_text": "a kitten", "turn_id": 2}],
    "additional_answers": {
        "0": [{"input_text": "White", "turn_id": 1}, {"input_text": "kitten", "turn_id": 2}],
        "1": [{"input_text": "white", "turn_id": 1}, {"input_text": "a cat", "turn_id": 2}]}}]}


def test_coqa_turn_holds_story_and_history(tmp_path):
    ex = tasks.load_task("coqa", write_json(tmp_path / "coqa-dev-v1.0.json", COQA))
    story = "Once upon a time there was a white kitten named Cotton.\n\n"
    assert ex[0].prefix == story + "Q: What color was Cotton?\n\nA:"
    assert ex[1].prefix == story + "Q: What color was Cotton?\n\nA: white\n\nQ: What was it?\n\nA:"
    assert ex[1].target == " a kitten"


def test_coqa_answers_include_additional_ones(tmp_path):
    ex = tasks.load_task("coqa", write_json(tmp_path / "coqa-dev-v1.0.json", COQA))
    assert [e.answers for e in ex] == [["white"], ["a kitten", "kitten", "a cat"]]


def test_commonsenseqa(tmp_path):
    path = write_jsonl(tmp_path / "dev_rand_split.jsonl", [{
        "answerKey": "B", "id": "1afa02df02c908a558b4036e80242fac",
        "question": {"question_concept": "revolving door", "stem": "A revolving door is convenient for?",
                     "choices": [{"label": "A", "text": "bank"}, {"label": "B", "text": "library"},
                                 {"label": "C", "text": "mall"}]}}])
    [ex] = tasks.load_task("commonsenseqa", path)
    assert ex.prefix == "Question: A revolving door is convenient for?\nA. bank\nB. library\nC. mall\nAnswer:"
    assert (ex.target, ex.answers) == (" library", ["library", "B"])


PIQA = [{"id": "a", "goal": "How do I ready a guinea pig cage?", "sol1": "Use shredded paper.", "sol2": "Use jello."},
        {"id": "b", "goal": "dresser", "sol1": "replace drawer with bobby pin", "sol2": "finish, woodgrain"}]


def test_piqa_finds_labels_beside(tmp_path):
    path = write_jsonl(tmp_path / "valid.jsonl", PIQA)
    (tmp_path / "valid-labels.lst").write_text("0\n1\n")
    ex = tasks.load_task("piqa", path)
    assert ex[0].prefix == "Question: How do I ready a guinea pig cage?\nAnswer:"
    assert ex[0].choices == [" Use shredded paper.", " Use jello."]
    assert [(e.label, e.target) for e in ex] == [(0, " Use shredded paper."), (1, " finish, woodgrain")]


def test_piqa_explicit_labels_path(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", PIQA)
    (tmp_path / "answers.lst").write_text("1\n1\n")
    assert [e.label for e in tasks.load_task("piqa", f"{path}:{tmp_path / 'answers.lst'}")] == [1, 1]


def test_hellaswag_lm_eval_preprocessing(tmp_path):
    path = write_jsonl(tmp_path / "hellaswag_val.jsonl", [{
        "ind": 4, "activity_label": "Home and Garden", "ctx_a": "[header] How to clean a grill.",
        "ctx_b": "you", "ctx": "[header] How to clean a grill. you", "split": "val", "split_type": "indomain",
        "label": 2, "endings": ["scrub it [title] Rinse.", "burn it", "brush the grates.", "sell it"],
        "source_id": "wikihow~1"}])
    [ex] = tasks.load_task("hellaswag", path)
    assert ex.prefix == "Home and Garden: How to clean a grill. You"
    assert ex.choices == [" scrub it. Rinse.", " burn it", " brush the grates.", " sell it"]
    assert (ex.label, ex.target) == (2, " brush the grates.")


def test_lambada(tmp_path):
    path = write_jsonl(tmp_path / "lambada_test.jsonl", [{"text": "he handed her the old brass key"}])
    [ex] = tasks.load_task("lambada", path)
    assert (ex.prefix, ex.target, ex.answers) == ("he handed her the old brass", " key", ["key"])


def test_webquestions_target_value_parsing():
    value = '(list (description "Jazmine Sullivan") (description Jamaica) (description "The \\"Wall\\" (film)"))'
    assert tasks.webquestions_answers(value) == ["Jazmine Sullivan", "Jamaica", 'The "Wall" (film)']


def test_webquestions_reads_bz2_release(tmp_path):
    rows = [{"url": "http://www.freebase.com/view/en/justin_bieber", "utterance": "what is justin bieber brother name?",
             "targetValue": "(list (description \"Jaxon Bieber\"))"}]
    path = tmp_path / "webquestions.examples.test.json.bz2"
    path.write_bytes(bz2.compress(json.dumps(rows).encode()))
    [ex] = tasks.load_task("webquestions", str(path))
    assert (ex.prefix, ex.target) == ("Question: what is justin bieber brother name?\nAnswer:", " Jaxon Bieber")


def test_nq_open(tmp_path):
    path = write_jsonl(tmp_path / "NQ-open.dev.jsonl", [
        {"question": "who sings does he love me with reba", "answer": ["Linda Davis"]},
        {"question": "when was the first capitol built", "answer": ["1793", "1800"]}])
    ex = tasks.load_task("nq_open", path)
    assert ex[0].prefix == "Answer these questions:\n\nQ: who sings does he love me with reba?\nA:"
    assert (ex[1].target, ex[1].answers) == (" 1793", ["1793", "1800"])


# -------------------------------------------------------------------------------------- errors

def test_missing_file_names_it_and_the_command_that_fetches_it(tmp_path):
    with pytest.raises(UserError, match=r"nowhere.jsonl does not exist; `python tasks.py download --task=gsm8k`"):
        tasks.load_task("gsm8k", str(tmp_path / "nowhere.jsonl"))


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q", "answer\n')
    with pytest.raises(UserError, match=r"test\.jsonl, line 2"):
        tasks.load_task("gsm8k", str(path))


def test_bad_json_file_names_line(tmp_path):
    path = tmp_path / "dev-v1.1.json"
    path.write_text('{"version": "1.1",\n "data": [\n  {"title": oops}]}')
    with pytest.raises(UserError, match=r"dev-v1\.1\.json, line 3"):
        tasks.load_task("squad", str(path))


def test_missing_field_is_named(tmp_path):
    path = write_jsonl(tmp_path / "NQ-open.dev.jsonl", [{"question": "who?", "answers": ["x"]}])
    with pytest.raises(UserError, match=r"NQ-open\.dev\.jsonl, line 1: missing field 'answer'"):
        tasks.load_task("nq_open", path)


def test_piqa_label_count_mismatch(tmp_path):
    path = write_jsonl(tmp_path / "valid.jsonl", PIQA)
    (tmp_path / "valid-labels.lst").write_text("0\n")
    with pytest.raises(UserError, match="valid-labels.lst has 1 labels"):
        tasks.load_task("piqa", path)


def test_unknown_task():
    with pytest.raises(UserError, match="unknown task 'squad2'"):
        tasks.load_task("squad2", "x.json")


def test_download_task_fetches_piqa_labels_too(tmp_path, monkeypatch):
    calls = []
    stub = types.SimpleNamespace(download_file=lambda url, dest, sha256=None, desc=None, git_blob=None:
                                 calls.append((url, dest)))
    monkeypatch.setattr(tasks, "download_file", stub.download_file)  # runtime.download_file's signature, no network
    paths = tasks.download_task("piqa", str(tmp_path), splits=("eval",))
    assert paths == {"eval": str(tmp_path / "valid.jsonl")}
    assert [url.rsplit("/", 1)[1] for url, _ in calls] == ["valid.jsonl", "valid-labels.lst"]
