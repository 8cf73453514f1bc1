"""The experiments' worker pool (`run_pool`): every stage of a plan in a process of its own, `jobs` at a time.
A stage's process ends with the pool's, kill -9 included (it watches its parent), so no orphan writes on; a stage
that fails or dies stops the pool with one line naming it. The stages are resumable runs, so the same command
again reuses every finished one. Torch-free here, so that a pool of trivial stages starts in a moment (tests).
"""
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import sys
import threading
import time
import traceback

from tqdm import tqdm

from config import UserError


def _watch_parent(parent: int) -> None:
    """End this process once the pool's process is gone (its parent changes when it dies, even by kill -9)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _stage(run, key: tuple, log: str, parent: int, threads: int, reply) -> None:
    """A stage's process: run(*key) with its output (and its traceback, if it fails) in `log`."""
    _watch_parent(parent)
    if "torch" in sys.modules:  # loaded with run's module: cores/jobs threads a stage
        sys.modules["torch"].set_num_threads(threads)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            run(*key)
        except BaseException as e:
            traceback.print_exc()
            reply.send(repr(e)[:2000])  # short: it fits the pipe, so this never waits for the parent to read
            sys.exit(1)


def _label(key: tuple) -> str:
    return f"seed {key[0]} {key[1]}"


def run_pool(plan: list[tuple[tuple, list[tuple]]], run, log_of, jobs: int, desc: str) -> None:
    """Each key (seed, name) of `plan` [(key, keys it waits for)] as run(*key) in a process of its own (spawned), at
    most `jobs` at a time, each on cores/jobs threads, in plan order as soon as its waits are finished; each one's
    output goes to log_of(key). One overall bar with its ETA. A stage that fails or dies stops the pool with one
    line; the others running are stopped (SIGTERM): their runs resume from their last checkpoint when run again."""
    pending, running, done = list(plan), {}, set()
    threads, spawn = max(1, (os.cpu_count() or 1) // jobs), multiprocessing.get_context("spawn")
    bar = tqdm(total=len(pending), desc=desc, dynamic_ncols=True, unit="run")
    try:
        while pending or running:
            for key, before in [t for t in pending if all(b in done for b in t[1])][: jobs - len(running)]:
                pending.remove((key, before))
                reply, send = spawn.Pipe(duplex=False)
                proc = spawn.Process(target=_stage, args=(run, key, log_of(key), os.getpid(), threads, send))
                proc.start()
                send.close()  # the stage holds its own copy
                running[proc.sentinel] = (key, proc, reply, time.time())
            if not running:
                raise RuntimeError(f"nothing can start: {pending}")  # plans wait only on earlier keys
            for sentinel in multiprocessing.connection.wait(list(running)):
                key, proc, reply, start = running.pop(sentinel)
                proc.join()
                error = None
                with reply, contextlib.suppress(EOFError):  # EOF: it sent nothing (finished, or died)
                    error = reply.recv()
                if proc.exitcode:
                    bar.close()  # first: the error line must not be glued to the bar
                    why = f"failed ({error})" if error else \
                        f"worker died (signal {-proc.exitcode})" if proc.exitcode < 0 else \
                        f"worker died (exit status {proc.exitcode})"
                    raise UserError(f"{_label(key)}: {why}; its output is in {log_of(key)}; the same command again "
                                    "reuses every finished run")
                done.add(key)
                bar.update()
                bar.write(f"{_label(key)}: {(time.time() - start) / 60:.1f} min")
    finally:
        for _, proc, _, _ in running.values():
            proc.terminate()
            proc.join()
        bar.close()
