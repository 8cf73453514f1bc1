"""The nine downstream tasks: their official files read as published, turned into finetuning pairs
(prefix, target) and evaluation items. Their metrics are in metrics.py.

Decode tasks are answered by greedy decoding and scored with EM (and F1 for SQuAD/CoQA); scored
tasks (PIQA, HellaSwag) compare the log-likelihood of each choice (acc, acc_norm). Prompts follow
EleutherAI's lm-evaluation-harness. A prefix never ends in a space; targets and choices start
with one. Every task has a "train" and an "eval" split in `TASKS[name].files` (LAMBADA: eval only).
"""
import bz2
import gzip
import json
import os
import re
import sys
from dataclasses import dataclass, field

from config import UserError, opt, run_commands, run_main
from metrics import gsm8k_number
from runtime import download_file


@dataclass
class Example:
    prefix: str  # the prompt, e.g. "Question: ...\nAnswer:"
    target: str  # gold continuation to finetune on (scored tasks: the right choice)
    answers: list[str] = field(default_factory=list)  # decode tasks: gold answers for EM/F1
    choices: list[str] = field(default_factory=list)  # scored tasks: continuations to score
    label: int = -1  # scored tasks: index of the right choice


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "decode" or "scored"
    metrics: tuple[str, ...]
    stop: tuple[str, ...]  # a decoded answer ends at the first of these (see metrics.truncate)
    files: dict  # split -> URL of the official file, kept under its own name; "eval_labels"/"train_labels" for PIQA
    max_new_tokens: int = 32  # decode budget: the longest answer generated (short answers need few tokens)


_GSM = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/"
_SQUAD = "https://rajpurkar.github.io/SQuAD-explorer/dataset/"
_COQA = "https://nlp.stanford.edu/data/coqa/"
_CSQA = "https://s3.amazonaws.com/commensenseqa/"
_PIQA = "https://yonatanbisk.com/piqa/data/"
_HS = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/"
# WebQuestions as released with SEMPRE by its authors (bz2; load_task reads it compressed or not).
_WEBQ = "https://nlp.stanford.edu/static/software/sempre/release-emnlp2013/lib/data/webquestions/dataset_11/"
_NQ = "https://raw.githubusercontent.com/google-research-datasets/natural-questions/master/nq_open/"
_EM, _EMF1, _ACC = ("em",), ("em", "f1"), ("acc", "acc_norm")

TASKS: dict[str, TaskSpec] = {s.name: s for s in [
    # The answer is a worked solution ending in "#### N" (40-150 GPT-2 tokens): lm-evaluation-harness's budget, 256.
    TaskSpec("gsm8k", "decode", _EM, ("\n\n", "Question:"), max_new_tokens=256,
             files={"train": _GSM + "train.jsonl", "eval": _GSM + "test.jsonl"}),
    TaskSpec("squad", "decode", _EMF1, ("\n",), {"train": _SQUAD + "train-v1.1.json",
                                                "eval": _SQUAD + "dev-v1.1.json"}),
    TaskSpec("coqa", "decode", _EMF1, ("\n",), {"train": _COQA + "coqa-train-v1.0.json",
                                               "eval": _COQA + "coqa-dev-v1.0.json"}),
    TaskSpec("commonsenseqa", "decode", _EM, ("\n",), {"train": _CSQA + "train_rand_split.jsonl",
                                                       "eval": _CSQA + "dev_rand_split.jsonl"}),
    TaskSpec("piqa", "scored", _ACC, (), {"train": _PIQA + "train.jsonl", "train_labels": _PIQA + "train-labels.lst",
                                          "eval": _PIQA + "valid.jsonl", "eval_labels": _PIQA + "valid-labels.lst"}),
    TaskSpec("hellaswag", "scored", _ACC, (), {"train": _HS + "hellaswag_train.jsonl",
                                               "eval": _HS + "hellaswag_val.jsonl"}),
    # A generated word is followed by a space or a newline; a trailing "." is dropped by normalize_answer.
    TaskSpec("lambada", "decode", _EM, (" ", "\n"),
             {"eval": "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl"}),
    TaskSpec("webquestions", "decode", _EM, ("\n",), {"train": _WEBQ + "webquestions.examples.train.json.bz2",
                                                      "eval": _WEBQ + "webquestions.examples.test.json.bz2"}),
    # lm-evaluation-harness's nq_open.yaml (version 4.0): its description line, and an answer ends at "\n", "." or ",".
    TaskSpec("nq_open", "decode", _EM, ("\n", ".", ","), {"train": _NQ + "NQ-open.train.jsonl",
                                                          "eval": _NQ + "NQ-open.dev.jsonl"}),
]}

# The sha256 of each official file, as "TASK/FILE": a truncated or changed download is refused (and fetched again
# on a rerun), never taken as the task. Unless said otherwise, the values Hugging Face datasets recorded for the
# same URLs in its dataset_infos.json.
SHA256 = {
    "gsm8k/train.jsonl": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    "gsm8k/test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    "squad/train-v1.1.json": "3527663986b8295af4f7fcdff1ba1ff3f72d07d61a20f487cb238a6ef92fd955",
    "squad/dev-v1.1.json": "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9",
    "coqa/coqa-train-v1.0.json": "b0fdb2bc1bd38dd3ca2ce5fa2ac3e02c6288ac914f241ac409a655ffb6619fa6",
    "coqa/coqa-dev-v1.0.json": "dfa367a9733ce53222918d0231d9b3bedc2b8ee831a2845f62dfc70701f2540a",
    "commonsenseqa/train_rand_split.jsonl": "58ffa3c8472410e24b8c43f423d89c8a003d8284698a6ed7874355dedd09a2fb",
    "commonsenseqa/dev_rand_split.jsonl": "3210497fdaae614ac085d9eb873dd7f4d49b6f965a93adadc803e1229fd8a02a",
    "hellaswag/hellaswag_train.jsonl": "dae5e69249868cb9fe4e23ff925c60b66169564cfb7072d793cd7356a2b69f8d",
    "hellaswag/hellaswag_val.jsonl": "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588",
    "nq_open/NQ-open.train.jsonl": "0c93aaf13b12f855628489665e4ef85ffb8573ad444646f11f4fabdc57a0aabf",
    "nq_open/NQ-open.dev.jsonl": "f15567f38099f3615f5b8a685c0aef449c11ad90d3da3735e8d1b98115b40616",
    # lm-evaluation-harness pinned it (lm_eval/tasks/lambada.py, commit 0601d0b, from storage.googleapis.com/gpt-2/);
    # EleutherAI/lambada_openai's dataset card gives the same for this URL (1,819,752 bytes).
    "lambada/lambada_test.jsonl": "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226",
    # huggingface/datasets, datasets/sempre/dataset_infos.json (commit 4da9621): these URLs, 100,725 and 60,689 bytes.
    "webquestions/webquestions.examples.train.json.bz2":
        "9eb719cf9adbf96c66dc363742f210ba21d34f4d72b8a3cdd0e61d57a82db187",
    "webquestions/webquestions.examples.test.json.bz2":
        "17f3d983209dcaebea2a2e8a2a8cdde30345009052057c70d48adf45c1510960",
    # PIQA: no checksum of these files is published. yonatanbisk.com serves the repository (see its CNAME)
    # github.com/ybisk/ybisk.github.io; these are the sha256 of its piqa/data files at commit 21edab4 (its tests.jsonl
    # there has the sha256 Hugging Face recorded for the served one). Its train.jsonl is pinned in GIT_BLOB below.
    "piqa/valid.jsonl": "93503cc97c679e459b065c3d13e848282e44b2a25213985bed3e5d458abef72d",
    "piqa/valid-labels.lst": "b4192dc3a2a0363d9d60ccf79800cbbe2f32ebb17726efdde6970e0b8131bceb",
    "piqa/train-labels.lst": "df8ae080c41f02f88e81f6932d425f4b7ee72f433ad552e6a30d45e358e8f8bb",
}
# Files whose bytes could not be found, only their git blob id (runtime.file_git_blob) in the repository that serves
# them: PIQA's train.jsonl in ybisk/ybisk.github.io at 21edab4, piqa/data (the same tree's valid.jsonl has blob
# da35972 and the sha256 pinned above, so the served files are the tree's bytes).
GIT_BLOB = {"piqa/train.jsonl": "f032ea264350c9cc30e7f872ea2a8576f4a97f2e"}


def get_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


# -------------------------------------------------------------------------- reading the files

def default_path(name: str, split: str) -> str:
    """Where `download_task` puts a split's file: data/tasks/NAME/<official file name>."""
    spec = get_spec(name)
    if split not in spec.files:
        raise UserError(f"{name} has no official {split} split; pass the file with --task_file")
    return os.path.join("data", "tasks", name, spec.files[split].rsplit("/", 1)[1])


def _read_text(path: str) -> str:
    """The file's text; .bz2 and .gz are read compressed (the WebQuestions release is bz2). Bytes that are not
    UTF-8 text (a damaged or binary file, a zero-filled tail) are a UserError naming the file and the line."""
    opener = bz2.open if path.endswith(".bz2") else gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise UserError(f"task file {path} does not exist (python tasks.py download fetches the official files)") from None
    except (OSError, EOFError) as e:
        raise UserError(f"task file {path} cannot be read: {e}") from None
    if (nul := raw.find(b"\0")) >= 0:  # valid UTF-8 but in no task file, and json's message would not say it
        line = raw.count(b"\n", 0, nul) + 1
        raise UserError(f"{path}, line {line}: NUL byte (a damaged or binary file?)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}, line {line}: not UTF-8 ({e.reason}, byte 0x{raw[e.start]:02x})") from None


def _jsonl(path: str) -> list[tuple[str, object]]:
    records = []
    for i, line in enumerate(_read_text(path).split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if line.strip():
            try:
                records.append((f"line {i}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}, line {i}: not valid JSON ({e.msg})") from None
    return records


def _json(path: str):
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None


def _json_items(path: str, key: str | None) -> list[tuple[str, object]]:
    """The items of the file's top-level list (key=None) or of its list under `key`."""
    obj = _json(path)
    items = obj if key is None else obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(items, list):
        raise UserError(f"{path}: expected {'a JSON list' if key is None else f'an object with a list {key!r}'}")
    return [(f"{key or 'item'}[{i}]", item) for i, item in enumerate(items)]


def _piqa_records(path: str) -> list[tuple[str, object]]:
    """PIQA's jsonl with its label file: `valid.jsonl` finds `valid-labels.lst` beside it,
    or pass both as "questions.jsonl:labels.lst"."""
    if ":" in path and not os.path.exists(path):
        path, labels_path = path.rsplit(":", 1)
    else:
        labels_path = re.sub(r"\.jsonl$", "", path) + "-labels.lst"
    records = _jsonl(path)
    labels = [s.strip() for s in _read_text(labels_path).splitlines() if s.strip()]
    if len(labels) != len(records):
        raise UserError(f"{labels_path} has {len(labels)} labels but {path} has {len(records)} questions")
    for i, s in enumerate(labels):
        if s not in ("0", "1"):
            raise UserError(f"{labels_path}, line {i + 1}: label {s!r} is not 0 or 1")
    return [(where, dict(rec, label=int(s)) if isinstance(rec, dict) else rec)
            for (where, rec), s in zip(records, labels)]


def _s(d: dict, key: str) -> str:
    value = d[key]
    if not isinstance(value, str):
        raise TypeError(f"field {key!r} is not a string")
    return value


# --------------------------------------------------------------------- one record -> examples

def _gsm8k(r: dict) -> list[Example]:
    answer = _s(r, "answer")
    number = gsm8k_number(answer)
    if number is None:
        raise ValueError("answer has no '#### N'")
    return [Example(f"Question: {_s(r, 'question')}\nAnswer:", " " + answer, [number])]


def _squad(article: dict) -> list[Example]:
    out = []
    for p in article["paragraphs"]:
        for qa in p["qas"]:
            golds = list(dict.fromkeys(_s(a, "text") for a in qa["answers"]))
            prefix = (f"Title: {_s(article, 'title')}\n\nBackground: {_s(p, 'context')}\n\n"
                      f"Question: {_s(qa, 'question')}\n\nAnswer:")
            out.append(Example(prefix, " " + golds[0], golds))
    return out


def _coqa(doc: dict) -> list[Example]:
    """One example per turn; the prefix holds the story and the earlier turns (lm-eval's format)."""
    questions = [_s(q, "input_text") for q in doc["questions"]]
    answers = [_s(a, "input_text") for a in doc["answers"]]
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    extra = list((doc.get("additional_answers") or {}).values())  # dev only: 3 more answers per turn
    out, history = [], _s(doc, "story") + "\n\n"
    for i, (q, a) in enumerate(zip(questions, answers)):
        golds: list[str] = []
        for g in [a] + [_s(alt[i], "input_text") for alt in extra]:
            if all(g.lower() != seen.lower() for seen in golds):  # as lm-eval: drop case-blind repeats
                golds.append(g)
        out.append(Example(history + f"Q: {q}\n\nA:", " " + a, golds))
        history += f"Q: {q}\n\nA: {a}\n\n"
    return out


def _commonsenseqa(r: dict) -> list[Example]:
    """Decoded, as in the paper: the prompt lists the labelled choices, the target is the right
    choice's text; EM accepts that text or its bare label (see score_decode)."""
    q = r["question"]
    choices = [(_s(c, "label"), _s(c, "text")) for c in q["choices"]]
    key = _s(r, "answerKey")
    text = next((t for lab, t in choices if lab == key), None)
    if text is None:
        raise ValueError(f"answerKey {key!r} is not a choice label")
    listed = "".join(f"{lab}. {t}\n" for lab, t in choices)
    return [Example(f"Question: {_s(q, 'stem')}\n{listed}Answer:", " " + text, [text, key])]


def _piqa(r: dict) -> list[Example]:
    choices = [" " + _s(r, "sol1"), " " + _s(r, "sol2")]
    return [Example(f"Question: {_s(r, 'goal')}\nAnswer:", choices[r["label"]], [], choices, r["label"])]


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")  # brackets are WikiHow artifacts (lm-eval)
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _hellaswag(r: dict) -> list[Example]:
    ctx = _s(r, "ctx_a") + " " + _s(r, "ctx_b").capitalize() if "ctx_a" in r else _s(r, "ctx")
    choices = [" " + _hellaswag_clean(e) for e in r["endings"]]
    label = int(r["label"])
    if not 0 <= label < len(choices):
        raise ValueError(f"label {label} out of range")
    prefix = _hellaswag_clean(f"{_s(r, 'activity_label')}: {ctx}")
    return [Example(prefix, choices[label], [], choices, label)]


def _lambada(r: dict) -> list[Example]:
    prefix, word = _s(r, "text").rsplit(" ", 1)
    return [Example(prefix, " " + word, [word])]


def webquestions_answers(target_value: str) -> list[str]:
    """All descriptions in a targetValue like '(list (description "Jazmine Sullivan") (description Jamaica))'."""
    found = re.findall(r'\(description\s+(?:"((?:[^"\\]|\\.)*)"|([^()"]+?))\s*\)', target_value)
    return [re.sub(r"\\(.)", r"\1", quoted) if quoted else bare for quoted, bare in found]


def _webquestions(r: dict) -> list[Example]:
    answers = webquestions_answers(_s(r, "targetValue"))
    if not answers:
        raise ValueError("targetValue has no (description ...)")
    return [Example(f"Question: {_s(r, 'utterance')}\nAnswer:", " " + answers[0], answers)]


def _nq_open(r: dict) -> list[Example]:
    answers = r["answer"]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise TypeError("field 'answer' is not a list of strings")
    return [Example(f"Answer these questions:\n\nQ: {_s(r, 'question')}?\nA:", " " + answers[0], answers)]


_READERS = {  # name -> (records of the file, one record -> examples)
    "gsm8k": (_jsonl, _gsm8k),
    "squad": (lambda p: _json_items(p, "data"), _squad),
    "coqa": (lambda p: _json_items(p, "data"), _coqa),
    "commonsenseqa": (_jsonl, _commonsenseqa),
    "piqa": (_piqa_records, _piqa),
    "hellaswag": (_jsonl, _hellaswag),
    "lambada": (_jsonl, _lambada),
    "webquestions": (lambda p: _json_items(p, None), _webquestions),
    "nq_open": (_jsonl, _nq_open),
}


def load_task(name: str, path: str) -> list[Example]:
    """Examples of task `name` from one official file (PIQA: its .jsonl, labels found beside it
    or given as "x.jsonl:x-labels.lst"). A malformed record is a UserError naming file and place."""
    get_spec(name)
    first = path.rsplit(":", 1)[0] if ":" in path and not os.path.exists(path) else path
    if not os.path.exists(first):
        raise UserError(f"task file {first} does not exist; `python tasks.py download --task={name}` fetches the "
                        f"official files into data/tasks/{name}/")
    read, convert = _READERS[name]
    out = []
    for where, record in read(path):
        try:
            out.extend(convert(record))
        except KeyError as e:
            raise UserError(f"{path}, {where}: missing field {e} (is this the {name} file?)") from None
        except (TypeError, ValueError, IndexError, AttributeError) as e:
            raise UserError(f"{path}, {where}: malformed {name} record ({e})") from None
    if not out:
        raise UserError(f"{path} holds no {name} examples")
    return out


def download_task(name: str, out_dir: str, splits: tuple[str, ...] | None = None,
                  base_url: str = "") -> dict[str, str]:
    """Fetch the official files of `splits` (default: all) into out_dir, PIQA's label files along, each checked
    against SHA256 (or GIT_BLOB); from base_url/NAME/<file name> if given. Returns split -> local path of the file
    load_task reads."""
    spec = get_spec(name)
    splits = splits or tuple(k for k in spec.files if not k.endswith("_labels"))
    unknown = [s for s in splits if s not in spec.files]
    if unknown:
        have = ", ".join(k for k in spec.files if not k.endswith("_labels"))
        raise UserError(f"task {name} has no split {unknown[0]!r}; it has {have}")
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split in splits:
        for key in (split, split + "_labels"):
            if key in spec.files:
                url = spec.files[key]
                filename = url.rsplit("/", 1)[1]
                if base_url:
                    url = f"{base_url.rstrip('/')}/{name}/{filename}"
                dest = os.path.join(out_dir, filename)
                download_file(url, dest, sha256=SHA256.get(f"{name}/{filename}"), desc=f"{name} {filename}",
                              git_blob=GIT_BLOB.get(f"{name}/{filename}"))
                paths.setdefault(split, dest)
    return paths


# ------------------------------------------------------------------------------------- download command

@dataclass
class DownloadTasksConfig:
    """Fetch tasks' official files (resumable, each checked against its pinned digest) into OUT_DIR/TASK/."""
    task: list[str] = opt(list(TASKS), "tasks to fetch (default: all nine)", choices=tuple(TASKS))
    out_dir: str = opt(os.path.join("data", "tasks"), "files go to OUT_DIR/TASK/<official name>")
    splits: list[str] = opt(["train", "eval"], "splits to fetch", choices=("train", "eval"))
    base_url: str = opt("", "a mirror holding TASK/<official name>, as OUT_DIR does (default: the official URLs)")


def download(cfg: DownloadTasksConfig) -> None:
    for name in cfg.task:
        splits = tuple(s for s in cfg.splits if s in get_spec(name).files)  # LAMBADA has no train split
        for split, path in download_task(name, os.path.join(cfg.out_dir, name), splits, cfg.base_url).items():
            print(f"{name} {split}: {path}")


def main(argv: list[str]) -> None:
    run_commands("tasks.py", __doc__, {"download": (DownloadTasksConfig, download)}, argv)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
