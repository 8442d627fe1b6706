"""The one helper every multi-process test uses: run `launch/train.py` under a real launcher.

Launches are real processes (python, torchrun, deepspeed) talking over gloo on this machine;
tests read what the run wrote (metrics.jsonl, checkpoints) rather than poking at internals.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from torch.distributed import TCPStore

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "launch" / "train.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    # Two ranks on two cores: one intra-op thread each, or they fight over the cores.
    env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def command(launcher: str, nproc: int, script: Path = TRAIN, args: list[str] | None = None) -> list[str]:
    args = list(args or [])
    if launcher == "python":
        return [sys.executable, str(script), *args]
    if launcher == "torchrun":
        return [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), *args,
        ]  # fmt: skip
    if launcher == "deepspeed":
        exe = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
        return [exe, "--num_gpus", str(nproc), "--master_port", str(free_port()), str(script), *args]
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
    cmd = command(launcher, nproc, script, args)
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{launcher} x{nproc} failed ({proc.returncode}):\n--- stdout ---\n{proc.stdout[-6000:]}\n"
            f"--- stderr ---\n{proc.stderr[-6000:]}"
        )
    if launcher == "deepspeed" and proc.returncode == 0:
        assert_no_shm_buffers_left(cmd[cmd.index("--master_port") + 1])
    return proc


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

    Output goes to files, not pipes: a node blocked on a full pipe would stall the others' collectives.

    The torchrun nodes meet at a rendezvous store this process hosts (`is_host=false` on every
    node). Left to themselves, whichever agent binds 127.0.0.1 first hosts it, and when that node
    finishes first the other agent's next store call fails (RendezvousConnectionError) though its
    training succeeded.
    """
    endpoint = f"127.0.0.1:{free_port()}"
    with contextlib.ExitStack() as stack:
        if launcher == "torchrun":
            host, port = endpoint.split(":")
            # Serves until this function returns, after every node has exited.
            store = TCPStore(host, int(port), is_master=True, multi_tenant=True, wait_for_workers=False)  # noqa: F841
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
                host, port = endpoint.split(":")
                cmd = [
                    command("deepspeed", 1)[0], "--hostfile", hostfile.name, "--no_ssh", "--node_rank", str(node),
                    "--master_addr", host, "--master_port", port, str(script), *args,
                ]  # fmt: skip
            out = stack.enter_context(tempfile.TemporaryFile("w+"))
            err = stack.enter_context(tempfile.TemporaryFile("w+"))
            proc = subprocess.Popen(cmd, cwd=REPO, env=_env(env), stdout=out, stderr=err, text=True)
            stack.callback(_kill_if_running, proc)
            started.append((cmd, proc, out, err))
        results = []
        for cmd, proc, out, err in started:
            proc.wait(timeout=timeout)
            out.seek(0), err.seek(0)
            results.append(subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read()))
        return results


def _kill_if_running(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]


def step_losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}
