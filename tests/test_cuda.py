"""CUDA paths, run where a GPU is (skipped elsewhere; CI has none). Each compares a GPU run with a run of the same
command: the memory file an --append continues on the GPU, and a seeded sample on the GPU against the CPU's.

Both were broken before an H100 check (session 13): a memory file was loaded on the CPU and fed to a model on the
GPU (--append failed), and sampling drew from a CPU generator on GPU probabilities (--temperature failed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TEXT = "Mary moved to the bathroom. The old man saw a red boat near the river. Daniel went to the kitchen. "


def rmt(args, cwd, gpu=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run([sys.executable, "-m", "rmt_cli.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_append_on_the_gpu_equals_one_pass(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT * 80)
    (tmp_path / "b.txt").write_text(TEXT[::-1] * 80)
    (tmp_path / "ab.txt").write_text(TEXT * 80 + TEXT[::-1] * 80)
    assert rmt(["ingest", "a.txt", "-o", "m.st", "-q"], tmp_path).returncode == 0
    appended = rmt(["ingest", "--append", "m.st", "b.txt", "-q"], tmp_path)
    assert appended.returncode == 0, appended.stderr[-2000:]
    assert rmt(["ingest", "ab.txt", "-o", "one.st", "-q"], tmp_path).returncode == 0
    assert torch.equal(load_file(tmp_path / "m.st")["memory"], load_file(tmp_path / "one.st")["memory"])


def test_a_seeded_sample_is_the_cpus(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT * 40)
    assert rmt(["ingest", "a.txt", "-o", "m.st", "-q"], tmp_path).returncode == 0
    args = ["ask", "m.st", "Where is Mary?", "--temperature", "1", "--seed", "3", "--json"]
    on_gpu, on_cpu = rmt(args, tmp_path), rmt(args, tmp_path, gpu=False)
    assert on_gpu.returncode == 0, on_gpu.stderr[-2000:]
    assert json.loads(on_gpu.stdout)["answer"] == json.loads(on_cpu.stdout)["answer"]
