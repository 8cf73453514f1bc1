"""The README's commands: each takes the options it is given, and the quick start runs on the files it makes."""
import importlib
import os
import re
import shlex

import pytest

from config import parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"train.py": ("train", "TrainConfig"), "finetune.py": ("finetune", "FinetuneConfig"),
           "sample.py": ("sample", "SampleConfig"), "eval.py": ("eval", "EvalConfig"),
           "experiments.synth": ("experiments.synth", "SynthConfig"), "data.py prepare": ("data", "PrepareConfig"),
           "tasks.py download": ("tasks", "DownloadTasksConfig"), "plots.py minf": ("plots", "MinfPlotConfig"),
           "plots.py variants": ("plots", "VariantsPlotConfig")}


def commands(section: str) -> list[tuple[str, list[str]]]:
    """(script, arguments) of every `python ...` line in the bash blocks of a README section."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    text = text[text.index(section):]
    text = text[:text.index("\n## ")]
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "python":
                words = words[2:] if words[1] == "-m" else words[1:]
                two = " ".join(words[:2])
                script = two if two in CONFIGS else words[0]
                out.append((script, words[len(script.split()):]))
    return out


@pytest.mark.parametrize("section", ["## Quick start", "## Your own checkpoints"])
def test_every_command_of_the_readme_takes_its_options(section, monkeypatch):
    monkeypatch.chdir(ROOT)  # config/tiny.toml
    for script, args in commands(section):
        module, name = CONFIGS[script]
        options = [a for a in args if a.startswith("--") or a.endswith(".toml")]  # plots.py: not its results files
        parse_config(getattr(importlib.import_module(module), name), options)


def test_the_quick_start_finetunes_and_evaluates_on_the_task_it_generates():
    cmds = commands("## Quick start")
    opts = {script: dict(a[2:].split("=", 1) for a in args if a.startswith("--")) for script, args in cmds}
    task_dir = opts["experiments.synth"]["out_dir"]  # train.jsonl, val.jsonl, test.jsonl (SynthConfig)
    assert opts["sample.py"]["prompt"].startswith("Question: gap ")  # the generated task's question, in its layout
    ft, ev = opts["finetune.py"], opts["eval.py"]
    assert ft["task_file"] == f"{task_dir}/train.jsonl" and ev["task_file"] == f"{task_dir}/val.jsonl"
    assert ft["init_from"] == opts["sample.py"]["ckpt"] and ev["ckpt"] == f"{ft['out_dir']}/ckpt.pt"
    # what a model of config/tiny.toml learns with (with finetune.py's defaults it learns nothing)
    assert (ft["max_iters"], ft["batch_size"], float(ft["learning_rate"])) == ("2500", "64", 1e-3)
    assert [a for a in dict(cmds)["plots.py minf"] if not a.startswith("--")] == [ev["out"]]
