"""Every script: --help lists every option; a bad option or value is one line on stderr and exit status 2."""
import dataclasses
import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

from checkpoint import save_checkpoint
from config import parse_config, run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [("train", "TrainConfig"), ("finetune", "FinetuneConfig"), ("sample", "SampleConfig"),
           ("eval", "EvalConfig"), ("experiments.study", "StudyConfig"), ("bench", "BenchConfig"),
           ("experiments.synth", "SynthConfig"), ("experiments.compute_study", "ComputeStudyConfig"),
           ("experiments.separation", "ParityConfig"), ("experiments.curriculum", "CurriculumConfig"),
           ("experiments.equal_compute", "EqualComputeConfig"),
           ("tasks", "DownloadTasksConfig"), ("data", "PrepareConfig"), ("data", "DownloadConfig"),
           ("data", "InjectConfig"), ("data", "ShowConfig"), ("plots", "MinfPlotConfig"), ("plots", "VariantsPlotConfig")]
SCRIPTS = ["train.py", "finetune.py", "sample.py", "eval.py", "bench.py", "tasks.py download", "data.py prepare",
           "-m experiments.study", "-m experiments.synth", "-m experiments.compute_study", "-m experiments.curriculum",
           "-m experiments.equal_compute",
           "plots.py minf"]


@pytest.mark.parametrize("module,name", CONFIGS)
def test_help_lists_every_option_with_its_help(module, name, capsys):
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(SystemExit) as e:
        parse_config(cls, ["--help"], prog=module)
    assert e.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(cls):
        assert f"--{f.name}=" in out and f.metadata.get("help"), f.name


@pytest.fixture(scope="module")
def unknown() -> dict:
    return run_all("--no_such_option=1", SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_option_is_one_line_and_exit_2(script, unknown):
    code, _, stderr = unknown[script]
    assert code == 2
    assert stderr.strip().startswith("error: unknown option --no_such_option") and "\n" not in stderr.strip()


def test_help_shows_a_newline_default_escaped(capsys):
    import sample
    with pytest.raises(SystemExit):
        parse_config(sample.SampleConfig, ["--help"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("--prompt="))
    assert line.endswith("[\\n]")  # the default prompt, a newline, on the option's own line


def test_wrong_type_in_a_config_file_is_refused(tmp_path, capsys):
    import train
    (tmp_path / "bad.toml").write_text('n_layer = "six"\n')
    with pytest.raises(SystemExit) as e:
        run_main(lambda: parse_config(train.TrainConfig, [str(tmp_path / "bad.toml")]))
    assert e.value.code == 2 and "--n_layer expects int" in capsys.readouterr().err


def sample_error(args, capsys) -> str:
    import sample
    with pytest.raises(SystemExit) as e:
        run_main(lambda: sample.main(parse_config(sample.SampleConfig, ["--device=cpu", *args])))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_sample_bad_inputs(tmp_path, capsys):
    from model import GPT, GPTConfig
    from tokenizer import CharTokenizer
    tok = CharTokenizer.build(["abc \n"])
    conf = GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=1, n_embd=8, pause_id=tok.pause_id)
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, GPT(conf), None, {"model": dataclasses.asdict(conf), "tokenizer": tok.meta()})
    assert "does not exist" in sample_error([f"--ckpt={tmp_path}/none.pt"], capsys)
    assert f"{tmp_path} is a directory; give the file in it (e.g. {tmp_path}/ckpt.pt)" in \
        sample_error([f"--ckpt={tmp_path}"], capsys)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert "corrupt" in sample_error([f"--ckpt={tmp_path}/bad.pt"], capsys)
    assert "--m_inf must be an integer >= -1" in sample_error([f"--ckpt={path}", "--m_inf=-2", "--prompt=abc"], capsys)
    assert sample_error([f"--ckpt={path}", "--m_inf=10", "--prompt=abcabc"], capsys).endswith(
        "block size 16 leaves no room to answer; the largest M_inf that fits is 9")  # 6 + 9 = 15 leave 1 to answer
    assert "the prompt alone is 18 tokens" in sample_error([f"--ckpt={path}", "--m_inf=0", "--prompt=" + "abc" * 6], capsys)
    wrong = dataclasses.replace(conf, pause_id=3)  # a model whose pause slot is not its tokenizer's
    save_checkpoint(str(tmp_path / "other.pt"), GPT(wrong), None,
                    {"model": dataclasses.asdict(wrong), "tokenizer": tok.meta()})
    assert "does not fit its tokenizer" in sample_error([f"--ckpt={tmp_path}/other.pt"], capsys)
    assert os.path.getsize(path) > 0 and torch.load(path, weights_only=True)["meta"]["tokenizer"] == tok.meta()


def test_sample_uses_the_checkpoints_filler_and_prepend(tmp_path, capsys):
    import sample
    from model import GPT, GPTConfig
    from tokenizer import WordTokenizer
    tok = WordTokenizer.build(["gap 1 2 . Answer:"])
    conf = GPTConfig(block_size=32, vocab_size=64, n_layer=1, n_head=1, n_embd=8, pause_id=tok.pause_id)
    path = str(tmp_path / "ft.pt")
    meta = {"kind": "finetune", "model": dataclasses.asdict(conf), "tokenizer": tok.meta(), "m_ft": 3,
            "filler": ".", "prepend": True}  # finetuned with 3 "." before the prompt
    save_checkpoint(path, GPT(conf), None, meta)
    sample.main(parse_config(sample.SampleConfig, [f"--ckpt={path}", "--device=cpu", "--prompt=gap 1 2 Answer:",
                                                   "--max_new_tokens=2", "--stop_at_eot=false"]))
    assert capsys.readouterr().out.startswith(". . . gap 1 2 Answer:")


HELP = ["tokenizer.py", "tasks.py", "data.py", "train.py", "finetune.py", "sample.py", "eval.py", "bench.py",
        "bench_data.py", "plots.py"]
NO_COMMAND = ["prepare.py", "flops.py", "model.py", "metrics.py"]  # libraries: their docstring and what to run


# Scripts run as `python SCRIPT ... FLAG` (or `python -m MODULE ... FLAG`) would run them, as __main__, all in one
# process: one torch import, not one per script.
RUN_ALL = """
import contextlib, io, json, runpy, sys
flag, out = sys.argv[1], {}
for script in sys.argv[2:]:
    words, o, e = script.split(), io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            if words[0] == "-m":
                sys.argv = [words[1], *words[2:], flag]
                sys.modules.pop(words[1], None)  # imported by an earlier script: run it afresh, as python -m does
                runpy.run_module(words[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = [*words, flag]
                runpy.run_path(words[0], run_name="__main__")
            code = 0
        except SystemExit as x:
            code = x.code or 0
    out[script] = [code, o.getvalue(), e.getvalue()]
print(json.dumps(out))
"""


def run_all(flag: str, scripts: list[str]) -> dict:
    """script -> [exit status, stdout, stderr] of each script run with `flag`, in one process."""
    p = subprocess.run([sys.executable, "-c", RUN_ALL, flag, *scripts], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def helps() -> dict:
    return run_all("--help", HELP + NO_COMMAND)


@pytest.mark.parametrize("script", HELP + NO_COMMAND)
def test_every_script_help_exits_0_and_prints_its_options(script, helps):
    code, stdout, stderr = helps[script]
    assert code == 0 and stderr == "", stderr
    if script in NO_COMMAND:
        assert f"{script} has no command of its own: " in stdout and "python " in stdout.splitlines()[-1]
    else:
        assert stdout.startswith("usage:") and "\n  --" in stdout and "options (defaults in brackets" in stdout


def help_at_a_terminal(script: str, columns: int) -> str:
    """What `python SCRIPT --help` prints to a terminal `columns` wide (a pseudo-terminal)."""
    import fcntl
    import pty
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    p = subprocess.Popen([sys.executable, script, "--help"], cwd=ROOT, stdout=slave, stderr=slave,
                         env={**env, "OMP_NUM_THREADS": "1"})
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.wait() == 0
    return out.decode().replace("\r\n", "\n")


@pytest.mark.parametrize("script", ["train.py", "data.py", "model.py"])  # options, commands, a docstring
def test_help_at_a_terminal_fits_its_width(script, helps):
    text = help_at_a_terminal(script, 72)
    assert max(map(len, text.splitlines())) <= 72 and ("usage:" in text or "no command of its own" in text)
    piped = helps[script][1]  # --help printed to a pipe
    assert "".join(text.split()) == "".join(piped.split())  # the same text, only the line breaks differ


def test_the_python_it_needs_is_stated_and_an_older_one_is_one_line():
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["requires-python"] == ">=3.11"
    assert "Python ≥ 3.11" in open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    older = "import sys; sys.modules['tomllib'] = None; import train"  # as on Python 3.10, which has no tomllib
    p = subprocess.run([sys.executable, "-c", older], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("error: pausegpt needs Python >= 3.11, this is ")
    assert p.stderr.count("\n") == 1


def test_flags_win_over_config_files_wherever_they_stand(tmp_path):
    import train
    (tmp_path / "a.toml").write_text("n_layer = 3\nn_head = 4\n")
    for argv in (["--n_layer=2", f"--config={tmp_path / 'a.toml'}"], [f"{tmp_path / 'a.toml'}", "--n_layer=2"]):
        cfg = parse_config(train.TrainConfig, argv)
        assert (cfg.n_layer, cfg.n_head) == (2, 4)


def test_a_toml_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    import train
    (tmp_path / "bad.toml").write_bytes(b"n_layer = \xff\xfe\n")
    with pytest.raises(SystemExit) as e:
        run_main(lambda: parse_config(train.TrainConfig, [str(tmp_path / "bad.toml")]))
    assert e.value.code == 2 and "is not valid TOML" in capsys.readouterr().err


def test_an_empty_m_inf_list_is_refused(capsys):
    import eval as evaluation
    with pytest.raises(SystemExit) as e:
        run_main(lambda: parse_config(evaluation.EvalConfig, ["--m_inf="]))
    assert e.value.code == 2 and "--m_inf is empty" in capsys.readouterr().err
