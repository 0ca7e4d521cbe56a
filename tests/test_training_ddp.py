"""DDP with torchrun: two CPU processes (gloo) train CLUDA and stay in sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

WORKER = """
import hashlib, json, os, sys
import torch
import training.loop as loop
from cluda_deploy.config import resolve_config

seen = {}
original = loop.ema_update
def spy(teacher, student, alpha):
    seen["teacher"], seen["student"] = teacher, student
    original(teacher, student, alpha)
loop.ema_update = spy

def digest(module):
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        if "running" not in name and "num_batches" not in name:  # BN statistics are per rank
            h.update(name.encode()); h.update(value.detach().cpu().numpy().tobytes())
    return h.hexdigest()

root, out = sys.argv[1], sys.argv[2]
cfg = resolve_config("demo", [f"data.root={root}", "train.method=cluda", "train.iters=2",
                              "train.eval_interval=2", "train.checkpoint_interval=2",
                              "data.batch_size=1", "data.crop_size=32x32", "train.device=cpu"])
result = loop.adapt(cfg, out, progress=False)
rank = os.environ["RANK"]
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"student": digest(seen["student"]), "teacher": digest(seen["teacher"]),
               "iterations": result.iterations}, f)
"""


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tiny_demo_root, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tiny_demo_root), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["iterations"] == ranks[1]["iterations"] == 2
    assert ranks[0]["student"] == ranks[1]["student"]  # DDP averaged the gradients
    assert ranks[0]["teacher"] == ranks[1]["teacher"]
    assert (out / "checkpoints" / "latest.pt").is_file()  # written by rank 0
    assert (out / "eval" / "iter_000002.json").is_file()
