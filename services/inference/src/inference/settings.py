"""Inference worker settings (environment variables; see `.env.example`)."""

from pathlib import Path

from pydantic import Field

from shared.settings import CommonSettings

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "b12-cbc-v2"


class InferenceSettings(CommonSettings):
    model_dir: Path = DEFAULT_MODEL_DIR
    batch_size: int = 256
    batch_chunks_per_call: int = Field(
        4, ge=1, description="Bulk screening: chunks scored together in one model call (rows = chunks × chunk size)")
    batch_thread_count: int = Field(1, ge=1, description="Bulk screening: CatBoost threads of a chunk's SHAP")
    port: int = 8004
