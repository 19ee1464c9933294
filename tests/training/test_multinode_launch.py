"""A paper-style multi-node torchrun launch: 2 local processes stand in for 2 nodes (gloo,
``--nnodes 2 --node_rank r``, rendezvous on localhost); only rank 0 writes outputs."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_node_torchrun_launch(tmp_path, make_config):
    raw = make_config("pa_hier", epochs=1)
    raw["data"]["batch_size"] = 6  # per process: global 12 on 2 nodes
    raw["distributed"] = {"paper_world_size": 2}
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(raw))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    nodes = []
    for node_rank in range(2):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
            "--nproc_per_node", "1", "--node_rank", str(node_rank), "--rdzv_backend", "c10d",
            "--rdzv_endpoint", f"127.0.0.1:{port}", "-m", "pml_hyper.cli", "train", str(config),
            "--set", f"output.dir={tmp_path}/node{node_rank}",
        ]  # fmt: skip
        nodes.append(
            subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        )  # fmt: skip
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]
    results = json.loads((tmp_path / "node0" / "results.json").read_text())
    assert results["status"] == "finished"
    assert not (tmp_path / "node1" / "results.json").exists()  # rank 1 writes nothing
