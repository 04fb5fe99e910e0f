"""The inference worker refuses to start on a missing or corrupt model, saying why in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from inference.model import DEFAULT_MODEL_DIR


def start_worker(model_dir: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"MODEL_DIR": str(model_dir), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    return subprocess.run([sys.executable, "-c", "from inference.app import create_app; create_app()"],
                          env=env, capture_output=True, text=True, timeout=60)


def test_a_worker_given_a_corrupt_model_file_refuses_to_start(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    stage = next(model.glob("stage1_abnormal.*"))
    stage.write_bytes(stage.read_bytes()[:-16] + b"\0" * 16)
    result = start_worker(model)
    assert result.returncode != 0
    assert "refusing to start" in result.stderr and stage.name in result.stderr


def test_a_worker_given_a_missing_model_directory_refuses_to_start(tmp_path: Path) -> None:
    result = start_worker(tmp_path / "nowhere")
    assert result.returncode != 0 and "refusing to start" in result.stderr
