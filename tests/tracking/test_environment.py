"""Environment discovery: the code version, command, hardware and packages a run used."""

from __future__ import annotations

import json
import re
import subprocess
from importlib import metadata

import torch

from llmtrain.tracking import environment
from llmtrain.tracking.environment import ENVIRONMENT_FILE, collect_environment, write_environment


def test_environment_names_this_checkout_commit_command_and_world_size():
    env = collect_environment(world_size=4, argv=["launch/train.py", "optim.lr=1e-3"])
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=environment.SOURCE_ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", env["git"]["commit"]) and env["git"]["commit"] == head
    assert isinstance(env["git"]["dirty"], bool)
    assert env["command"] == "launch/train.py optim.lr=1e-3"
    assert env["world_size"] == 4


def test_environment_records_hardware_and_installed_package_versions():
    env = collect_environment(world_size=1, argv=[])
    assert env["cpu_count"] >= 1
    assert env["gpus"] == [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    assert env["packages"]["torch"] == torch.__version__
    assert env["packages"]["wandb"] == metadata.version("wandb")
    assert env["packages"]["llmtrain"] == metadata.version("llmtrain")
    assert set(environment.PACKAGES) <= set(env["packages"])


def test_git_info_outside_a_checkout_is_null_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(environment, "SOURCE_ROOT", tmp_path)
    assert environment.git_info() == {"commit": None, "dirty": None, "branch": None}


def test_environment_file_round_trips(tmp_path):
    env = collect_environment(world_size=2, argv=["x"])
    write_environment(tmp_path, env)
    assert json.loads((tmp_path / ENVIRONMENT_FILE).read_text()) == env
