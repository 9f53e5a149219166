"""Every script in benchmarks/ still runs: each for one step (or its smallest size), never
timed. A new script must be added to SMOKE, so none is skipped silently."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cifar_format import write_cifar10

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

# script -> the arguments of its smallest run ({tmp}: a folder of the test's own; {cifar}: a
# CIFAR-10 root of 12 training and 4 test images per class in the real format)
SMOKE: dict[str, list[str]] = {
    "backbones.py": ["--size", "32", "--batch", "2", "--steps", "1", "--repeats", "1", "--threads", "1",
                     "--models", "resnet32,timm/vit_tiny"],
    "ceiling.py": ["--smoke", "--steps", "1", "--warmup", "0"],
    "cifar_full.py": ["--root", "{cifar}", "--device", "cpu", "--budget", "0.005", "data.imbalance_ratio=2",
                      "train.batch_size=8", "train.eval_batch_size=16", "train.threads=1"],
    "demo_accuracy.py": ["--smoke", "--seeds", "1", "--out", "{tmp}"],
    "eval_fold.py": ["--batch", "4", "--passes", "1", "--rounds", "1"],
    "file_throughput.py": ["--images", "16", "--side", "32", "--workers", "0", "--batch", "4", "--epochs", "1",
                           "--device", "cpu"],
    "folder_decode.py": ["--images", "2", "--sides", "32", "--repeats", "1"],
    "kill_test.py": ["--smoke", "--kills", "1", "--terms", "0", "--seed", "0", "--out", "{tmp}"],
    "one_pass.py": ["--steps", "1", "--repeats", "1", "--batch", "4"],
    "profile_step.py": ["--steps", "1", "train.batch_size=8", "train.threads=1"],
    "resnet50_step.py": ["--batch", "2", "--size", "32", "--steps", "1", "--device", "cpu"],
    "throughput.py": ["--smoke", "--steps", "1", "--warmup", "0", "--threads", "1",
                      "--variants", "reference,ours", "--ceiling"],
}


def test_every_benchmark_script_has_a_smoke_run() -> None:
    assert sorted(p.name for p in BENCHMARKS.glob("*.py")) == sorted(SMOKE)


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_runs(script: str, tmp_path: Path) -> None:
    if "{cifar}" in SMOKE[script]:
        write_cifar10(tmp_path / "cifar", images_per_class_train=12, images_per_class_test=4)
    args = [a.replace("{tmp}", str(tmp_path / "out")).replace("{cifar}", str(tmp_path / "cifar"))
            for a in SMOKE[script]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.strip(), result.stderr[-2000:]  # printed its table or figure
    assert "failed" not in result.stdout, result.stdout[-2000:]
