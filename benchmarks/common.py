"""Helpers shared by the benchmark scripts: machine description and JSON result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

from effdl.train import Callback

RESULTS = Path(__file__).resolve().parents[1] / "bench_results"


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def git_commit() -> str:
    """HEAD's short hash; $EFFDL_COMMIT where the tree travelled without its .git (a lent machine)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=RESULTS.parent).stdout.strip()
    except OSError:
        commit = ""
    return commit or os.environ.get("EFFDL_COMMIT", "unknown")


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    payload = {"benchmark": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "commit": git_commit(), "machine": machine(), **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload, indent=2))
    return path


class EpochLog(Callback):
    """Prints one line per training epoch (benchmarks run without a progress bar)."""

    def on_epoch_end(self, trainer, epoch, metrics) -> None:
        print(f"epoch {epoch + 1}: test accuracy {metrics['eval_acc']:.4f}, {metrics['images_per_s']:.0f} images/s, "
              f"{metrics['train_time_s']:.1f} s", flush=True)
