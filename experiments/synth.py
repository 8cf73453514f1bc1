"""A synthetic "largest gap" task for a CPU-sized demo of pause tokens, written in the real formats.

The question is n distinct integers from [lo, hi) in random order (n fixed, or drawn per question from a range:
with learned absolute positions a fixed n puts every answer at the same position, and an M_inf curve then
measures positions, not pauses); the answer is the largest difference
between consecutive values once sorted. Each number must be compared with many others and these
comparisons are independent of each other, so extra positions (pauses) before the answer are useful room.
Writes the task (train.jsonl / test.jsonl) and a pretraining corpus as C4 (c4-train.00000-of-00001.json.gz,
c4-validation.00000-of-00001.json.gz): documents of solved gap/min/max/sort problems in the task's layout.
Two layouts, each an official task format read by tasks.py:
  lambada: {"text": "gap 3 17 8 9"}, the answer is the last word; nothing stands between question and
           answer, so a model without pauses computes it in one position (that of the last number);
  gsm8k:   {"question": "gap 3 17 8", "answer": "#### 9"}, prompted "Question: …\\nAnswer:" and answered
           "#### 9", which gives a model without pauses three more positions ("\\n", "Answer:", "####").
Splits: train (finetuning), val (where choices belong) and test (reported only), each from its own
seed; no two questions share a set of numbers, and no val or test question's numbers appear in the corpus.

    python -m experiments.synth --out_dir=data/synth --n=12 --lo=0 --hi=64 --layout=lambada
"""
import datetime
import gzip
import json
import math
import os
import random
import time
from dataclasses import dataclass

from config import UserError, opt, parse_config, run_main
from runtime import atomic_open, ensure_writable_dir

KINDS = ("gap", "min", "max", "sort")
TASK_KINDS = ("gap", "second")  # a task's question: the largest gap, or (a second task) the second-largest number
LAYOUTS = ("lambada", "gsm8k")
TRAIN_CORPUS = "c4-train.00000-of-00001.json.gz"
VAL_CORPUS = "c4-validation.00000-of-00001.json.gz"


def largest_gap(values: list[int]) -> int:
    """The largest difference between consecutive values once sorted."""
    if len(values) < 2:
        raise ValueError("largest_gap needs at least two values")
    s = sorted(values)
    return max(b - a for a, b in zip(s, s[1:]))


def make_question(rng: random.Random, n: int, lo: int, hi: int) -> list[int]:
    """n distinct integers from [lo, hi), in random order."""
    return rng.sample(range(lo, hi), n)


def task_text(kind: str, values: list[int]) -> tuple[str, str]:
    """(question, answer) of one problem, e.g. task_text("gap", [1, 10, 4]) == ("gap 1 10 4", "#### 6")."""
    answers = {"gap": lambda: [largest_gap(values)], "min": lambda: [min(values)],
               "max": lambda: [max(values)], "sort": lambda: sorted(values), "second": lambda: [sorted(values)[-2]]}
    if kind not in answers:
        raise UserError(f"unknown problem kind {kind!r}; choose from {', '.join(KINDS + TASK_KINDS[1:])}")
    return f"{kind} {' '.join(map(str, values))}", f"#### {' '.join(map(str, answers[kind]()))}"


def problem_text(kind: str, values: list[int], layout: str = "lambada") -> str:
    """One solved problem as the task's prompt + target lay it out."""
    question, answer = task_text(kind, values)
    if layout == "gsm8k":
        return f"Question: {question}\nAnswer: {answer}"
    if layout == "lambada":
        return f"{question} {answer.removeprefix('#### ')}"
    raise UserError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")


def _draw(rng: random.Random, count: int, n_range: tuple[int, int], lo: int, hi: int, banned: set) -> list[list[int]]:
    """`count` questions of n_range[0]..n_range[1] numbers (uniform n), each on a set of numbers not in `banned`
    (which grows: no two questions share a set, so splits drawn in turn are disjoint as number sets too)."""
    out = []
    while len(out) < count:
        values = make_question(rng, rng.randint(*n_range), lo, hi)
        if frozenset(values) not in banned:
            banned.add(frozenset(values))
            out.append(values)
    return out


def _write_jsonl(path: str, values_list: list[list[int]], layout: str, kind: str = "gap") -> None:
    with atomic_open(path, "w") as f:
        for values in values_list:
            question, answer = task_text(kind, values)
            row = {"question": question, "answer": answer} if layout == "gsm8k" else \
                {"text": problem_text(kind, values, layout)}
            f.write(json.dumps(row) + "\n")


def n_range_of(n: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    """--n as (smallest, largest): 12 -> (12, 12); [8, 16] -> (8, 16)."""
    values = [n] if isinstance(n, int) else list(n)
    if len(values) not in (1, 2) or values[0] > values[-1]:
        raise UserError(f"--n is one number or a range lo,hi with lo <= hi, got {n}")
    return values[0], values[-1]


def write_task(out_dir: str, n: int | list[int] = 12, lo: int = 0, hi: int = 64, n_train: int = 20000,
               n_test: int = 2000, seed: int = 0, test_seed: int | None = None, layout: str = "lambada",
               n_val: int = 0, val_seed: int | None = None, kind: str = "gap") -> dict:
    """Write train.jsonl, val.jsonl (n_val > 0) and test.jsonl in a layout's format. Each split has its own
    seed; test is drawn first, then val, then train, and no two questions anywhere share a set of numbers."""
    problem_text("gap", [lo, lo + 1], layout)  # raises on an unknown layout
    n_lo, n_hi = n_range_of(n)
    if n_lo < 2 or hi - lo < n_hi:
        raise UserError(f"need 2 <= n <= hi - lo, got n={n}, lo={lo}, hi={hi}")
    if n_train + n_val + n_test > math.comb(hi - lo, n_lo) // 2:  # keep redraws rare
        raise UserError(f"{n_train + n_val + n_test} questions is too many for n={n} numbers from [{lo}, {hi}); "
                        "lower --n_train/--n_val/--n_test or widen the range")
    test_seed = seed + 1000 if test_seed is None else test_seed
    val_seed = seed + 2000 if val_seed is None else val_seed
    used: set = set()
    splits = {"test": _draw(random.Random(test_seed), n_test, (n_lo, n_hi), lo, hi, used)}
    if n_val:
        splits["val"] = _draw(random.Random(val_seed), n_val, (n_lo, n_hi), lo, hi, used)
    splits["train"] = _draw(random.Random(seed), n_train, (n_lo, n_hi), lo, hi, used)
    os.makedirs(out_dir, exist_ok=True)
    for name, values_list in splits.items():
        _write_jsonl(os.path.join(out_dir, f"{name}.jsonl"), values_list, layout, kind)
    held_out = splits["test"] + splits.get("val", [])
    return {"train": n_train, "val": n_val, "test": n_test, "seed": seed, "test_seed": test_seed,
            "val_seed": val_seed, "layout": layout, "n": (n_lo, n_hi),
            "held_out_questions": [task_text(kind, v)[0] for v in held_out]}


# Test splits drawn before the fresh one, as (n range, lo, hi, seed): write_task's default test seed with the
# variable-length task of the cpu preset and the fixed-length (n = 12) task; up to EARLIER_TEST_SIZE questions each.
EARLIER_TESTS = (((8, 16), 0, 64, 1000), ((12, 12), 0, 64, 1000))
EARLIER_TEST_SIZE = 2000
FRESH_TEST_SEED = 5000  # never used by any earlier split or corpus
FRESH_TEST = "fresh_test.jsonl"
FRESH_TEST_2_SEED = 7000  # the second fresh split: never used by any split, corpus or the first fresh split
FRESH_TEST_2 = "fresh_test_2.jsonl"


def problem_values(text: str, layout: str = "lambada") -> frozenset[int]:
    """The set of question numbers of one solved problem or task row ("gap 3 17 8 9" -> {3, 17, 8})."""
    if layout == "gsm8k":
        words = text.split("\n")[0].removeprefix("Question: ").split()[1:]
    else:
        kind, *words = text.split()
        words = words[: len(words) // 2] if kind == "sort" else words[:-1]
    return frozenset(map(int, words))


def split_values(path: str, layout: str = "lambada") -> list[frozenset[int]]:
    """The number sets of a task file's questions (either layout)."""
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    return [problem_values(r["question"], "gsm8k") if "question" in r else problem_values(r["text"], layout)
            for r in rows]


def corpus_values(path: str, layout: str = "lambada", end_word: str = ".") -> set[frozenset[int]]:
    """The number sets of every problem (of any kind) in a C4-format corpus written by write_corpus."""
    with gzip.open(path, "rt") as f:
        docs = [json.loads(line)["text"].removesuffix(f" {end_word}" if end_word else "") for line in f]
    return {problem_values(p, layout) for d in docs for p in d.split("\n\n")}


def write_fresh_test(task_dir: str, n_test: int, n: int | list[int], lo: int = 0, hi: int = 64,
                     layout: str = "lambada", seed: int = FRESH_TEST_SEED, name: str = FRESH_TEST,
                     kind: str = "gap") -> dict:
    """Write task_dir/NAME: n_test new questions from `seed`, none on the number set of a question of train, val,
    test or an earlier fresh split in task_dir, of a problem of the corpus (train and validation) or of an earlier
    test split (EARLIER_TESTS). The written file is read back and checked against all of them."""
    earlier = ("train", "val", "test") + tuple(f[:-len(".jsonl")] for f in (FRESH_TEST, FRESH_TEST_2) if f != name)
    sources = {s: split_values(os.path.join(task_dir, f"{s}.jsonl"), layout) for s in earlier
               if os.path.exists(os.path.join(task_dir, f"{s}.jsonl"))}
    sources |= {c: corpus_values(os.path.join(task_dir, c), layout) for c in (TRAIN_CORPUS, VAL_CORPUS)}
    for n_range, lo_, hi_, test_seed in EARLIER_TESTS:
        sources[f"test n={n_range} seed={test_seed}"] = _draw(random.Random(test_seed), EARLIER_TEST_SIZE, n_range,
                                                              lo_, hi_, set())
    used = {frozenset(v) for vs in sources.values() for v in vs}
    fresh = _draw(random.Random(seed), n_test, n_range_of(n), lo, hi, set(used))
    path = os.path.join(task_dir, name)
    _write_jsonl(path, fresh, layout, kind)
    written = split_values(path, layout)
    for name, vs in sources.items():
        overlap = set(written) & {frozenset(v) for v in vs}
        if overlap:
            raise RuntimeError(f"the fresh test split shares {len(overlap)} question(s) with {name}")
    if len(set(written)) != n_test:
        raise RuntimeError("the fresh test split repeats a question")
    return {"path": path, "n": n_test, "seed": seed, "checked_against": sorted(sources)}


def task_words(lo: int, hi: int, layout: str = "lambada", kind: str = "gap") -> set[str]:
    """Every word a task prompt or answer can contain: the kind, numbers lo..hi-1 and gaps 1..hi-lo-1."""
    layout_words = {"Question:", "Answer:", "####"} if layout == "gsm8k" else set()
    return layout_words | {kind} | {str(v) for v in range(lo, hi)} | \
        {str(g) for g in range(1, hi - lo)}


def write_corpus(out_path: str, n_docs: int, problems_per_doc: int, n_range: tuple[int, int] = (4, 12),
                 lo: int = 0, hi: int = 64, kinds: tuple[str, ...] = KINDS, seed: int = 1,
                 exclude: set[str] = frozenset(), layout: str = "lambada", end_word: str = ".",
                 task_kind: str = "gap") -> dict:
    """Write a C4-format .json.gz of `n_docs` documents of solved problems, none on an excluded question.
    Each document ends with `end_word` (a full stop), so the paper's filler "." is an ordinary pretrained word."""
    n_min, n_max = n_range
    if not 2 <= n_min <= n_max <= hi - lo:
        raise UserError(f"corpus n range {n_min}..{n_max} must lie within 2..hi-lo={hi - lo}")
    if n_docs < 1 or problems_per_doc < 1:
        raise UserError("the corpus needs at least one document of at least one problem")
    for kind in kinds:
        task_text(kind, [lo, lo + 1])  # raises on an unknown kind
    # Stricter than exact-string exclusion: no problem of any kind, in any order, on a test question's numbers.
    banned = {frozenset(map(int, q.split()[1:])) for q in exclude}
    rng, docs, misses = random.Random(seed), [], 0
    for _ in range(n_docs):
        doc = []
        while len(doc) < problems_per_doc:
            kind, values = rng.choice(kinds), make_question(rng, rng.randint(n_min, n_max), lo, hi)
            if frozenset(values) in banned:
                misses += 1
                if misses > 100_000:
                    raise UserError("almost every corpus problem is a test question; widen [lo, hi) or --corpus_n")
                continue
            doc.append(problem_text(kind, values, layout))
        docs.append(doc)
    # Rare answer words (a largest gap of 1, say) get one problem each, so the vocabulary covers every answer.
    words = {w for doc in docs for p in doc for w in p.split()}
    extra = [("gap", [lo + g, lo]) for g in range(1, hi - lo)] + [("sort", [v]) for v in range(lo, hi)]
    filled = 0
    for kind, values in extra:
        text = problem_text(kind, values, layout)
        if set(text.split()) - words and frozenset(values) not in banned:
            docs[-1].append(text)
            words.update(text.split())
            filled += 1
    start, lines, tokens = datetime.datetime(2019, 4, 1), [], 0
    for i, doc in enumerate(docs):
        text = "\n\n".join(doc) + (f" {end_word}" if end_word else "")
        tokens += len(text.split()) + text.count("\n")  # what WordTokenizer makes of it
        stamp = start + datetime.timedelta(seconds=rng.randrange(30 * 86400))
        lines.append(json.dumps({"text": text, "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                 "url": f"https://largest-gap.example/doc/{seed}-{i:06d}"}))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with atomic_open(out_path) as f:  # mtime=0: same seeds, same bytes
        f.write(gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=6, mtime=0))
    return {"path": out_path, "docs": len(docs), "problems": sum(map(len, docs)), "tokens": tokens,
            "filled": filled, "missing": sorted(task_words(lo, hi, layout, task_kind) - words)}


@dataclass
class SynthConfig:
    """Write the largest-gap task (train/val/test) and its pretraining corpus (C4 format)."""
    out_dir: str = opt("data/synth", "folder for train.jsonl, val.jsonl, test.jsonl and the c4-*.json.gz corpus")
    n: list[int] = opt([12], "numbers per task question: one value, or lo,hi for a uniform draw per question (8,16)",
                       ge=2)
    lo: int = opt(0, "smallest number", ge=0)
    hi: int = opt(64, "numbers are below hi", ge=1)
    n_train: int = opt(20000, "finetuning questions", ge=1)
    n_val: int = opt(1000, "validation questions: every choice (steps, lr, M_ft, layout) is made on these", ge=0)
    n_test: int = opt(2000, "test questions (reported only; never in train, val nor the corpus)", ge=1)
    seed: int = opt(0, "seed of the train split; the corpus uses seed+1 (train) and seed+2 (validation)", ge=0)
    val_seed: int | None = opt(None, "seed of the validation split (none: seed+2000)", ge=0)
    test_seed: int | None = opt(None, "seed of the test split (none: seed+1000)", ge=0)
    corpus_docs: int = opt(2000, "pretraining documents", ge=1)
    val_docs: int = opt(100, "validation documents", ge=1)
    problems_per_doc: int = opt(64, "solved problems per document", ge=1)
    corpus_n: list[int] = opt([4, 12], "smallest,largest n of corpus problems", ge=1)
    task_kind: str = opt("gap", "the task's question: gap (largest gap) or second (second-largest number)",
                         choices=TASK_KINDS)
    kinds: list[str] = opt(list(KINDS), "problem kinds in the corpus (the task's kind is added)",
                           choices=tuple(KINDS) + TASK_KINDS[1:])
    end_word: str = opt(".", "word that ends every corpus document, so it is in the vocabulary (the paper's filler)")
    layout: str = opt("lambada", "task format and problem layout: 'lambada' (gap 3 17 8 9) or 'gsm8k' "
                                 "(Question: gap 3 17 8\\nAnswer: #### 9)", choices=tuple(LAYOUTS))


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(SynthConfig, argv, prog="python -m experiments.synth")
    if len(cfg.corpus_n) != 2:
        raise UserError(f"--corpus_n expects two numbers, e.g. --corpus_n=4,12; got {cfg.corpus_n}")
    ensure_writable_dir(cfg.out_dir)
    if len(cfg.end_word.split()) > 1:
        raise UserError(f"--end_word must be one word, got {cfg.end_word!r}")
    t0 = time.time()
    task = write_task(cfg.out_dir, cfg.n, cfg.lo, cfg.hi, cfg.n_train, cfg.n_test, cfg.seed, cfg.test_seed,
                      cfg.layout, cfg.n_val, cfg.val_seed, cfg.task_kind)
    kinds = tuple(cfg.kinds) if cfg.task_kind in cfg.kinds else (cfg.task_kind,) + tuple(cfg.kinds)
    shared = dict(n_range=tuple(cfg.corpus_n), lo=cfg.lo, hi=cfg.hi, kinds=kinds, task_kind=cfg.task_kind,
                  exclude=set(task["held_out_questions"]), layout=cfg.layout, end_word=cfg.end_word)
    train = write_corpus(os.path.join(cfg.out_dir, TRAIN_CORPUS), cfg.corpus_docs, cfg.problems_per_doc,
                         seed=cfg.seed + 1, **shared)
    val = write_corpus(os.path.join(cfg.out_dir, VAL_CORPUS), cfg.val_docs, cfg.problems_per_doc,
                       seed=cfg.seed + 2, **shared)
    if train["missing"]:
        raise UserError(f"the corpus lacks task word(s) {train['missing'][:5]}; change --corpus_n or the range")
    n_lo, n_hi = task["n"]
    print(f"task ({cfg.layout} format): {task['train']} train / {task['val']} val / {task['test']} test questions "
          f"of n={n_lo}..{n_hi} from [{cfg.lo}, {cfg.hi}) (seeds {task['seed']} / {task['val_seed']} / "
          f"{task['test_seed']}) in {cfg.out_dir}")
    for name, c in (("train corpus", train), ("val corpus", val)):
        print(f"{name}: {c['docs']} docs, {c['problems']} problems, {c['tokens']:,} word tokens, "
              f"{c['filled']} coverage problems added -> {c['path']}")
    n_words = len(task_words(cfg.lo, cfg.hi, cfg.layout, cfg.task_kind))
    print(f"coverage: all {n_words} task words in the train corpus; {time.time() - t0:.1f}s")


if __name__ == "__main__":
    run_main(main)
