"""Process-level doors: the experiments' worker pool when its main process or one of its workers is killed -9,
two experiments into one folder at once, and a DDP rank lost mid-run."""
import importlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import runtime
from config import UserError, parse_config, run_main
from experiments import lab, study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# A stage of a tiny pool, as the experiments' stages are: it reuses its own finished work (NAME.done), and it
# holds (sleeps) while the file `hold` exists, so that the test can kill it, or its pool, mid-stage.
STAGES = """
import os, time
def stage(folder, seed, name):
    done = os.path.join(folder, name + ".done")
    if os.path.exists(done):
        return
    with open(os.path.join(folder, name + ".pid"), "w") as f:
        f.write(str(os.getpid()))
    while name.startswith("hold") and os.path.exists(os.path.join(folder, "hold")):
        time.sleep(0.05)
    open(done, "w").close()
"""

POOL = """
import functools, os, sys
sys.path[:0] = [{root!r}, {folder!r}]
from config import run_main
from experiments.pool import run_pool
import stages
plan = [((0, name), []) for name in {names!r}]
run_main(run_pool, plan, functools.partial(stages.stage, {folder!r}),
         lambda key: os.path.join({folder!r}, key[1] + ".out"), 2, "pool")
"""


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (its state, after the name in /proc/PID/stat, is not Z)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def all_end(pids: list[int], seconds: float) -> bool:
    """Whether every process of `pids` ends within `seconds`; any left then is killed, not left behind."""
    deadline = time.time() + seconds
    while any(map(alive, pids)) and time.time() < deadline:
        time.sleep(0.05)
    left = list(filter(alive, pids))
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return not left


def start_pool(folder, names: list[str]) -> subprocess.Popen:
    (folder / "stages.py").write_text(STAGES)
    script = POOL.format(root=ROOT, folder=str(folder), names=names)
    return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(paths, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not all(p.exists() for p in paths) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert all(p.exists() for p in paths), f"the stages did not start: {proc.communicate()}"


def test_the_pools_workers_die_with_its_main_process_killed_9(tmp_path):
    (tmp_path / "hold").touch()
    proc = start_pool(tmp_path, ["hold_a", "hold_b"])
    wait_for([tmp_path / "hold_a.pid", tmp_path / "hold_b.pid"], proc)
    workers = [int((tmp_path / f"hold_{x}.pid").read_text()) for x in "ab"]
    proc.kill()  # SIGKILL to the main process only, not to its process group
    proc.communicate()
    assert all_end(workers, 5), "orphaned workers live on"


def test_a_worker_killed_9_stops_the_pool_with_one_line_naming_its_stage_and_a_rerun_finishes(tmp_path):
    (tmp_path / "hold").touch()
    names = ["quick", "hold_a", "hold_b"]  # two workers: hold_b starts once quick is finished
    proc = start_pool(tmp_path, names)
    wait_for([tmp_path / "quick.done", tmp_path / "hold_a.pid", tmp_path / "hold_b.pid"], proc)
    finished = os.path.getmtime(tmp_path / "quick.done")
    other = int((tmp_path / "hold_a.pid").read_text())
    os.kill(int((tmp_path / "hold_b.pid").read_text()), signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 2, err
    errors = [line for line in err.split("\n") if "error" in line]  # split("\n"): a line glued to the bar's \r fails
    assert len(errors) == 1 and errors[0].startswith("error: seed 0 hold_b: worker died (signal 9)"), err
    assert str(tmp_path / "hold_b.out") in errors[0] and all_end([other], 0)  # the other stage was stopped
    (tmp_path / "hold").unlink()
    proc = start_pool(tmp_path, names)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert all((tmp_path / f"{n}.done").exists() for n in names)
    assert os.path.getmtime(tmp_path / "quick.done") == finished  # reused, not run again


def refuse_work(monkeypatch, module) -> None:
    """Any work an experiment starts fails the test at once (no study runs when a lock fails to refuse it)."""
    def work(*args, **kwargs):
        raise AssertionError("work started in a seed folder that another experiment is writing")
    for owner, name in ((lab, "run_pool"), (module, "pretrainings_and_files"), (module, "run_seed"),
                        (module, "data_files")):
        if hasattr(owner, name):
            monkeypatch.setattr(owner, name, work)


@pytest.mark.parametrize("experiment, config", [("study", "StudyConfig"), ("equal_compute", "EqualComputeConfig"),
                                                ("separator", "SeparatorConfig")])
def test_a_second_experiment_into_a_seed_folder_in_use_is_refused_in_one_line(experiment, config, tmp_path, capsys,
                                                                               monkeypatch):
    module = importlib.import_module(f"experiments.{experiment}")
    argv = [f"--out_dir={tmp_path}"] + (["--preset=cpu"] if experiment == "study" else [])
    cfg = parse_config(getattr(module, config), argv)
    cfg = study.apply_preset(cfg, argv) if experiment == "study" else cfg
    refuse_work(monkeypatch, module)
    with lab.own_seeds(str(tmp_path), [0]), pytest.raises(SystemExit) as stop:  # a first one, alive, on seed 0
        run_main(module.main, cfg)
    assert stop.value.code == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'seed0'} is being written by another experiment (started "
                                       f"by pid {os.getpid()}); wait for it to end or kill it, then run again\n")
    assert os.listdir(tmp_path) == ["seed0"]  # refused before any work


def test_only_seed_runs_of_other_seeds_go_side_by_side_and_a_refusal_holds_nothing(tmp_path):
    with lab.own_seeds(str(tmp_path), [1]):  # e.g. --only_seed=1
        with lab.own_seeds(str(tmp_path), [0]):  # --only_seed=0 beside it
            pass
        with pytest.raises(UserError, match="seed1 is being written by another experiment"):
            with lab.own_seeds(str(tmp_path), [0, 1]):  # --seeds=2
                pass
        with lab.own_seeds(str(tmp_path), [0]):  # the refused run let seed 0 go
            pass
    with lab.own_seeds(str(tmp_path), [0, 1]):
        pass


# What rank 0 of `torchrun --nproc_per_node=2 train.py` (gloo) raised when rank 1 was killed -9 (docs/DOORS.md)
GLOO_LOST = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:56981: "
             "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application. "
             "Check the logs of the remote worker before reporting an error. GLHF!")


def test_a_lost_ddp_rank_is_one_line_naming_this_rank_and_resume_and_other_errors_are_not():
    rt = runtime.Runtime(torch.device("cpu"), torch.float32, rank=0, world_size=2)
    with pytest.raises(UserError) as lost, runtime.ddp_run(rt):
        raise RuntimeError(GLOO_LOST)
    assert str(lost.value) == ("rank 0: lost another rank of this run (Read error [127.0.0.1]:56981: Connection reset by "
                               "peer); run the same command with --resume to continue from the last checkpoint")
    with pytest.raises(RuntimeError, match="size mismatch"), runtime.ddp_run(rt):  # a bug keeps its traceback
        raise RuntimeError("size mismatch")
    assert runtime.GLOO_TIMEOUT.total_seconds() <= 60  # a rank that hangs ends the others within a minute
