"""The GPU smoke script runs green on the CPU path (the stages that take under a minute here; the
others are each covered by their own tests)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_smoke.py"


@pytest.mark.slow  # every pipeline on the default model: a minute
def test_the_smoke_script_runs_green_on_the_cpu(tmp_path, models_dir):
    result = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--only", "perplexity,rm,dpo,evaluate",
                             "--workspace", str(tmp_path / "ws"), "--models-dir", str(models_dir)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    table = result.stdout.splitlines()
    assert table[0].split()[:4] == ["stage", "seconds", "peak", "GPU"]
    assert [line.split()[0] for line in table[1:]] == ["perplexity", "rm", "dpo", "evaluate"]
    assert all(line.rstrip().endswith("ok") for line in table[1:])
