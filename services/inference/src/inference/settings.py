"""Inference worker settings (environment variables; see `.env.example`)."""

from pathlib import Path

from shared.settings import CommonSettings

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "b12-cbc-v1"


class InferenceSettings(CommonSettings):
    model_dir: Path = DEFAULT_MODEL_DIR
    batch_size: int = 256
    port: int = 8004
