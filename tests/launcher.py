"""The one helper every multi-process test uses: run `launch/train.py` under a real launcher.

Launches are real processes (python, torchrun, deepspeed) talking over gloo on this machine;
tests read what the run wrote (metrics.jsonl, checkpoints) rather than poking at internals.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
from torch.distributed import TCPStore

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "launch" / "train.py"
FORKSERVER = Path(__file__).resolve().parent / "forkserver.py"
READY = "forkserver: ready"  # forkserver.READY (that module is run as a script, not imported)


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    # Two ranks on two cores: one intra-op thread each, or they fight over the cores.
    env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


@contextlib.contextmanager
def hosted_store() -> Iterator[TCPStore]:
    """A c10d store on a port the kernel chose when it bound it, alive until the block ends.

    Ranks and agents join it as clients (`TORCHELASTIC_USE_AGENT_STORE`, `is_host=false`), so no
    process binds a port that was picked earlier and released: nothing can take it in between.
    """
    store = TCPStore("127.0.0.1", 0, is_master=True, multi_tenant=True, wait_for_workers=False)
    try:
        yield store
    finally:
        del store


# Workers whose launcher gives them MASTER_PORT=store.port become clients of that store (torch's
# env:// rendezvous then makes no rank bind the port).
AGENT_STORE_ENV = {"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "0"}


def command(launcher: str, nproc: int, script: Path = TRAIN, args: list[str] | None = None,
            master_port: int | None = None) -> list[str]:  # fmt: skip
    args = list(args or [])
    if launcher == "python":
        return [sys.executable, str(script), *args]
    if launcher == "torchrun":
        # --standalone: the agent hosts the rendezvous on a port it binds itself (port 0).
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                str(script), *args]  # fmt: skip
    if launcher == "deepspeed":
        exe = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
        return [exe, "--num_gpus", str(nproc), "--master_port", str(master_port), str(script), *args]
    raise ValueError(f"unknown launcher {launcher!r}")


def launch(
    launcher: str,
    nproc: int,
    args: list[str],
    script: Path = TRAIN,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run `script args` as `nproc` ranks and wait for it; stdout and stderr are captured.

    launcher: "forked" (ranks forked from the session's pre-imported server: see forkserver.py,
    what it covers and what not), or the real "python" (one process), "torchrun" or "deepspeed",
    for tests whose subject is the launcher, the CLI process or its exit. A launch that runs past
    `timeout` is killed with every process it started.
    """
    if launcher == "forked":
        return _checked(launcher, nproc, _forked(nproc, script, args, _env(env), timeout), check)
    with contextlib.ExitStack() as stack:
        extra = dict(env or {})
        port = None
        if launcher == "deepspeed":
            store = stack.enter_context(hosted_store())
            port = store.port
            extra.update(AGENT_STORE_ENV)
        cmd = command(launcher, nproc, script, args, master_port=port)
        proc = _run(cmd, _env(extra), timeout)
    _checked(launcher, nproc, proc, check)
    if launcher == "deepspeed" and proc.returncode == 0:
        assert_no_shm_buffers_left(str(port))
    return proc


def _checked(
    launcher: str, nproc: int, proc: subprocess.CompletedProcess, check: bool
) -> subprocess.CompletedProcess:
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{launcher} x{nproc} failed ({proc.returncode}):\n--- stdout ---\n{proc.stdout[-6000:]}\n"
            f"--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, out, err) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every descendant: torch elastic starts its workers in sessions of their own,
    so killing the agent or its process group would leave them running (holding cores and ports)."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=30)


class _ForkServer:
    """The session's forkserver.py process, stopped at exit. Starting it returns at once (its imports
    and DeepSpeed's op take seconds, a minute on a new machine); `wait_ready` blocks until it serves."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="llmtrain-forkserver-"))
        self.socket = self.dir / "socket"
        self.log = self.dir / "server.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(FORKSERVER), str(self.socket)],
                cwd=REPO, env=_env(None), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        atexit.register(self.stop)
        self.ready = False

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready:
            self.ready = READY in self.log.read_text()
            if self.ready:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the fork server did not start:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


_server: _ForkServer | None = None


def start_forkserver() -> _ForkServer:
    """The session's fork server, started if it is not running (tests/conftest.py starts it as soon
    as slow tests are collected, so its imports overlap the one-thread in-process tests)."""
    global _server
    if _server is None or _server.proc.poll() is not None:
        _server = _ForkServer()
    return _server


def _forked(
    nproc: int, script: Path, args: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """Ranks forked by the session's server; its output and exit status as subprocess.run gives them."""
    server = start_forkserver()
    server.wait_ready()
    cmd = ["forked", str(nproc), str(script), *map(str, args)]
    with tempfile.TemporaryDirectory(dir=server.dir) as out:
        paths = {name: Path(out) / name for name in ("stdout", "stderr")}
        for path in paths.values():
            path.touch()
        request = {"script": str(script), "args": [str(a) for a in args], "env": env, "cwd": str(REPO),
                   "nproc": nproc, **{k: str(v) for k, v in paths.items()}}  # fmt: skip
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(server.socket))
            conn.sendall((json.dumps(request) + "\n").encode())
            conn.settimeout(timeout)
            answers = conn.makefile()
            job = json.loads(answers.readline())
            try:
                ended = json.loads(answers.readline())
            except TimeoutError:
                kill_tree(job["pid"])  # its process group would miss a rank's child in a session of its own
                out_text, err_text = (p.read_text() for p in paths.values())
                raise subprocess.TimeoutExpired(cmd, timeout, out_text, err_text) from None
        first = ended["first_failed"]
        out_text, err_text = (p.read_text() for p in paths.values())
    assert_no_shm_buffers_left(str(job["port"]))  # a DeepSpeed run's, unlinked by the strategy
    # As torchrun: the status of the rank that failed first, not of the ranks stopped after it.
    code = 0 if first is None else ended["returncodes"][first]
    return subprocess.CompletedProcess(cmd, code, out_text, err_text)


def assert_no_shm_buffers_left(master_port: str) -> None:
    """A finished DeepSpeed run on CPU leaves none of its shared-memory allreduce buffers in
    /dev/shm (DeepSpeed never unlinks them; the strategy does, or RAM fills run by run)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return
    left = sorted(p.name for p in shm.glob(f"deepspeed_allreduce_buffer_*_{master_port}_*"))
    assert not left, f"DeepSpeed run left shared-memory buffers in /dev/shm: {left}"


def launch_nodes(
    nnodes: int,
    args: list[str],
    script: Path = TRAIN,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    launcher: str = "torchrun",
) -> list[subprocess.CompletedProcess]:
    """Simulate `nnodes` nodes on this machine: one torchrun per node, one rank each, meeting
    through c10d rendezvous, as `srun torchrun --rdzv_backend c10d ...` does on a cluster.
    With launcher="deepspeed": one `deepspeed --no_ssh --node_rank K` per node reading a hostfile
    that names the nodes (DeepSpeed refuses several nodes without one), as under a scheduler.

    Returns each node's result in the order of the rank it ran, not the order nodes started: c10d
    rendezvous ignores `--node_rank` and ranks the agents by their own descriptors (on one host, by
    pid, which wraps), so the node started first can be rank 1. The agent's log names its group rank.

    Output goes to files, not pipes: a node blocked on a full pipe would stall the others' collectives.

    Every node meets at a store this process hosts from the start (`hosted_store`: a kernel-chosen
    port, held until every node has exited). The torchrun agents join it as clients (`is_host=false`):
    left to themselves, whichever agent binds first hosts it and takes it down when its node
    finishes first. DeepSpeed's workers join it through TORCHELASTIC_USE_AGENT_STORE, so no rank
    binds MASTER_PORT after the launchers have started. A timed-out launch kills every process of
    every node.
    """
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(hosted_store())
        endpoint = f"127.0.0.1:{store.port}"
        extra = {**(env or {}), "LOGLEVEL": "INFO"}  # the agent logs "group_rank=N" at INFO
        if launcher == "deepspeed":
            extra.update(AGENT_STORE_ENV)
        started = []
        hostfile = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".hostfile"))
        hostfile.write("".join(f"node{node} slots=1\n" for node in range(nnodes)))
        hostfile.flush()
        for node in range(nnodes):
            cmd = [
                sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node_rank", str(node),
                "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
                "--rdzv-id", f"test-{endpoint}", "--rdzv-conf", "is_host=false", str(script), *args,
            ]  # fmt: skip
            if launcher == "deepspeed":
                cmd = [
                    command("deepspeed", 1, master_port=store.port)[0], "--hostfile", hostfile.name, "--no_ssh",
                    "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", str(store.port),
                    str(script), *args,
                ]  # fmt: skip
            out = stack.enter_context(tempfile.TemporaryFile("w+"))
            err = stack.enter_context(tempfile.TemporaryFile("w+"))
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=_env(extra), stdout=out, stderr=err, text=True, start_new_session=True
            )
            stack.callback(kill_tree, proc.pid)
            started.append((node, cmd, proc, out, err))
        deadline = time.monotonic() + timeout
        results = {}
        for node, cmd, proc, out, err in started:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise subprocess.TimeoutExpired(cmd, timeout) from None
            out.seek(0), err.seek(0)
            done = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
            results[_group_rank(done, default=node)] = done
        return [results[rank] for rank in sorted(results)]


def _group_rank(proc: subprocess.CompletedProcess, default: int) -> int:
    """The rank a node's agent was given (torchrun logs it); DeepSpeed's runner keeps --node_rank."""
    found = re.search(r"group_rank=(\d+)", proc.stderr + proc.stdout)
    return int(found.group(1)) if found else default


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]


def step_losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}
