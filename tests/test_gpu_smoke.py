"""The GPU smoke script runs green on the CPU path (the stages that take under a minute here; the
others are each covered by their own tests)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_smoke.py"


@pytest.mark.slow  # every pipeline on the default model: a minute
def test_the_smoke_script_runs_green_on_the_cpu(tmp_path, models_dir):
    result = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--only", "perplexity,dpo,evaluate",
                             "--workspace", str(tmp_path / "ws"), "--models-dir", str(models_dir)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    table = result.stdout.splitlines()
    assert table[0].split()[:4] == ["stage", "seconds", "peak", "GPU"]
    assert [line.split()[0] for line in table[1:]] == ["perplexity", "dpo", "evaluate"]
    assert all(line.rstrip().endswith("ok") for line in table[1:])


def test_on_the_gpu_path_a_cpu_build_of_llama_cpp_and_no_cuda_are_failures_not_passes():
    """`make gpu-smoke` without the CUDA build of llama.cpp (or bitsandbytes) would run generation,
    export and Compare on the CPU and pass: each missing piece is a failed row of its own."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    rows = {row[0]: row[3] for row in smoke.gpu_readiness()}
    assert rows["cuda"].startswith("failed: torch sees no CUDA device")  # this machine has none
    assert rows["llama.cpp"].startswith("failed: cannot offload to the GPU")  # pip's CPU build
    assert rows["bitsandbytes"] == "ok"  # the test extra has it
