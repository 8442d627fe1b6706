"""Simulated ranks without interpreter start-up: one server per test session imports torch,
transformers, DeepSpeed and llmtrain once, then forks every rank of every `launch("forked", ...)`.

Why: start-up was most of the suite's time. Each rank of each launch imported torch, transformers
and DeepSpeed (4-5 s on the 2-core CI machine), and each launcher added an interpreter of its own.
A forked rank starts in milliseconds.

What a forked rank is: a real process that runs the same script `torchrun` would (`launch/train.py`
or a test probe, as `__main__`, with its `sys.argv` and its folder first on `sys.path`), with the
environment torchrun gives its workers (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR/MASTER_PORT, TORCHELASTIC_USE_AGENT_STORE), talking to the other ranks over real gloo.
Every rank joins the job's c10d store, which the job process hosts on a port the kernel chose when
it bound it (no free-then-bind race); one rank exiting non-zero stops the others, as torchrun does.
A one-process launch gets no rank variables at all, as `python script.py` does.

What it does not cover: the launchers themselves (torchrun's agent, the deepspeed runner, srun) and
interpreter shutdown after the script (the rank ends with `os._exit` once non-daemon threads and
atexit handlers have run, so C++ static destructors do not run). Tests whose subject is the
launcher or the exit use the real one: `launch("torchrun"|"deepspeed"|"python", ...)`,
`launch_nodes`, tests/slurm.

Forking is safe here because the server forks before any torch operation has run: no thread
exists (checked at start-up), so no intra-op pool or lock is copied half-taken.

Protocol (one JSON line each way over a unix socket): the client sends {"script", "args", "env",
"cwd", "nproc", "stdout", "stderr"}; the job answers {"pid", "port"} once its store serves, then
{"returncodes": [...], "first_failed": rank or null} when every rank has ended. Killing the job's
process tree (its pid and every descendant) ends the whole launch.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import runpy
import signal
import socket
import sys
import threading
import time
import traceback

READY = "forkserver: ready"  # the line the client waits for in the server's log
GRACE_S = 10.0  # after one rank fails: how long the others get to exit on SIGTERM before SIGKILL


def _preimport() -> None:
    """What every rank would import first; transformers' lazy modules, imported for real."""
    import deepspeed  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: F401

    import llmtrain.checkpoint.export  # noqa: F401
    import llmtrain.cli  # noqa: F401
    import llmtrain.strategy.deepspeed  # noqa: F401
    import llmtrain.strategy.fsdp  # noqa: F401
    import llmtrain.train.loop  # noqa: F401
    from llmtrain.config import load_config

    load_config([])  # Hydra's config store and search path, as every launch/train.py composes
    # DeepSpeed's CPU allreduce op, which every DeepSpeed rank loads in `init_distributed`: built once
    # per machine (JIT, ~80 s, cached under ~/.cache/torch_extensions), then loaded here once
    # instead of once per rank (DeepSpeed keeps loaded ops in `OpBuilder._loaded_ops`).
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()


def _run_rank(req: dict, rank: int, port_read: int) -> None:
    """In the rank's process: become `python script args...` and never return."""
    code = 1
    try:
        port = os.read(port_read, 16).decode()
        os.close(port_read)
        env = dict(req["env"])
        if req["nproc"] > 1:
            n = req["nproc"]
            env.update(
                RANK=str(rank), LOCAL_RANK=str(rank), GROUP_RANK="0", ROLE_RANK=str(rank),
                WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n), ROLE_WORLD_SIZE=str(n),
                MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                TORCHELASTIC_USE_AGENT_STORE="True", TORCHELASTIC_RESTART_COUNT="0",
            )  # fmt: skip
        os.environ.clear()
        os.environ.update(env)
        os.chdir(req["cwd"])
        for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
            out = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(out, fd)
            os.close(out)
        script = req["script"]
        sys.argv = [script, *req["args"]]
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        # What interpreter shutdown does before it tears down: join threads, run atexit handlers.
        threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _wait_ranks(pids: list[int]) -> tuple[list[int], int | None]:
    """Each rank's exit status, and the rank that failed first (None if none did); the first failure
    stops the rest (SIGTERM, then SIGKILL), as torchrun does."""
    codes: dict[int, int] = {}
    first = None
    deadline = None
    while len(codes) < len(pids):
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            if deadline is not None and time.monotonic() > deadline:
                for p in pids:
                    if p not in codes:
                        _signal(p, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.02)
            continue
        if pid not in pids:
            continue
        codes[pid] = os.waitstatus_to_exitcode(status)
        if codes[pid] != 0 and deadline is None:
            first = pids.index(pid)
            for p in pids:
                if p not in codes:
                    _signal(p, signal.SIGTERM)
            deadline = time.monotonic() + GRACE_S
    return [codes[p] for p in pids], first


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _job(conn: socket.socket, req: dict) -> None:
    """In the job's process: fork the ranks, host their store, report, and exit."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server ignores it; we wait for our ranks
    os.setpgid(0, 0)
    pipes, pids = [], []
    for rank in range(req["nproc"]):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            conn.close()
            os.close(w)
            for _, other in pipes:
                os.close(other)
            _run_rank(req, rank, r)
        os.close(r)
        pipes.append((rank, w))
        pids.append(pid)
    # The store is made after the forks: its server threads must not be copied into a rank.
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    conn.sendall((json.dumps({"pid": os.getpid(), "port": store.port}) + "\n").encode())
    for _, w in pipes:
        os.write(w, str(store.port).encode())
        os.close(w)
    codes, first = _wait_ranks(pids)
    conn.sendall((json.dumps({"returncodes": codes, "first_failed": first}) + "\n").encode())
    conn.close()
    os._exit(0)


def serve(path: str) -> None:
    _preimport()
    threads = os.listdir("/proc/self/task")
    if len(threads) != 1:
        raise SystemExit(f"forkserver: {len(threads)} threads after the imports; forking would copy them")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # jobs are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    print(READY, flush=True)
    parent = os.getppid()
    server.settimeout(1.0)
    while os.getppid() == parent:  # the test session that started us is gone: so are we
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        conn.settimeout(None)
        req = json.loads(conn.makefile().readline())
        if os.fork() == 0:
            server.close()
            try:
                _job(conn, req)
            finally:
                os._exit(1)
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
