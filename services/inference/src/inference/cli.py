"""``clinomic-model``: generate a synthetic cohort, train and verify model directories, measure latency."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

app = typer.Typer(
    help="Clinomic B12 model: cohort generation, training, verification, benchmark.",
    no_args_is_help=True,
    add_completion=False,
)

DEFAULT_SEED = 20240617


@app.command("generate-cohort")
def generate_cohort_command(
    out: Annotated[Path, typer.Option("--out", help="CSV file to write (and <out>.json describing it)")],
    rows: Annotated[int, typer.Option(min=1, help="number of adults")] = 50_000,
    seed: Annotated[
        int, typer.Option(help="random seed: the same seed gives the same cohort")
    ] = DEFAULT_SEED,
    population: Annotated[
        str, typer.Option(help="india-lab or us-lab: prevalences of B12 deficiency and of confounders")
    ] = "india-lab",
    prevalence: Annotated[
        float | None,
        typer.Option(
            min=0.001, max=0.999, help="fraction with serum B12 < 200 pg/mL (overrides the population's)"
        ),
    ] = None,
    b12_unit: Annotated[str, typer.Option(help="unit of the b12 column: pg/mL or pmol/L")] = "pg/mL",
    latent: Annotated[
        bool, typer.Option(help="also write the generator's latent truth (train ignores it)")
    ] = True,
) -> None:
    """Write a seeded synthetic cohort of adult CBCs with serum B12 (see docs/model.md for its sources)."""
    from dataclasses import asdict

    from inference.model import sha256_file
    from inference.training.cohort import generate_cohort, write_cohort_csv
    from inference.training.cohort import population as make_population

    try:
        pop = make_population(population, prevalence)
        columns = generate_cohort(rows, seed, pop)
        write_cohort_csv(columns, out, b12_unit=b12_unit, latent=latent)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    sidecar = {
        "generator": "inference.training.cohort.generate_cohort",
        "rows": rows,
        "seed": seed,
        "population": asdict(pop),
        "b12_unit": b12_unit,
        "csv_sha256": sha256_file(out),
    }
    Path(str(out) + ".json").write_text(
        json.dumps(sidecar, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    deficient = float(np.mean(columns["b12"] < 200))
    marginal = float(np.mean((columns["b12"] >= 200) & (columns["b12"] < 300)))
    typer.echo(
        f"wrote {rows} rows to {out} ({pop.name}, seed {seed}): "
        f"{deficient:.1%} B12 < 200 pg/mL, {marginal:.1%} 200–299 pg/mL"
    )


@app.command("train")
def train_command(
    csv_path: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, help="labelled CSV: CBC columns, sex, b12, b12_unit"),
    ],
    out: Annotated[Path, typer.Option("--out", help="model directory to write, e.g. models/b12-cbc-v2")],
    version: Annotated[
        str, typer.Option(help="version recorded in the manifest and every result")
    ] = "b12-cbc-v1",
    seed: Annotated[int, typer.Option(help="seed for splits, CatBoost and bootstrap")] = DEFAULT_SEED,
    iterations: Annotated[int, typer.Option(min=10, help="maximum boosting iterations per stage")] = 1500,
    learning_rate: Annotated[float, typer.Option(min=0.001, max=1.0)] = 0.04,
    depth: Annotated[int, typer.Option(min=1, max=10)] = 4,
    threads: Annotated[int, typer.Option(min=1, help="CatBoost threads")] = 1,
    target_sensitivity: Annotated[
        float, typer.Option(help="sensitivity for B12 < 200 at risk class ≥ 2")
    ] = 0.90,
    high_specificity: Annotated[float, typer.Option(help="specificity for B12 < 200 at risk class 3")] = 0.95,
    bootstrap: Annotated[int, typer.Option(min=0, help="bootstrap resamples for the card's 95 % CIs")] = 1000,
    b12_unit: Annotated[str | None, typer.Option(help="B12 unit when the CSV has no b12_unit column")] = None,
    plots: Annotated[bool, typer.Option(help="write ROC, PR and calibration PNGs")] = True,
    force: Annotated[bool, typer.Option(help="replace an existing, non-empty model directory")] = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Train both stages, calibrate, choose thresholds and write a versioned, hashed model directory."""
    from inference.training.pipeline import TrainingConfig, TrainingError, train

    try:
        config = TrainingConfig(
            version=version,
            seed=seed,
            iterations=iterations,
            learning_rate=learning_rate,
            depth=depth,
            thread_count=threads,
            target_sensitivity=target_sensitivity,
            high_specificity=high_specificity,
            bootstrap_resamples=bootstrap,
            plots=plots,
        )
        result = train(csv_path, out, config, force=force, progress=progress, default_b12_unit=b12_unit)
    except (TrainingError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    d, a = result.metrics["deficient"], result.metrics["abnormal"]
    typer.echo(
        f"wrote {out} ({result.identity.version}, artifacts sha256 {result.identity.artifacts_sha256}) "
        f"in {result.seconds:.1f} s"
    )
    typer.echo(
        f"held-out: AUROC B12<200 {_ci(d['auroc'])}, B12<300 {_ci(a['auroc'])}; class ≥ 2 sensitivity "
        f"{d['at_intermediate']['sensitivity']:.3f}, specificity {d['at_intermediate']['specificity']:.3f}"
    )


def _ci(entry: dict) -> str:
    ci = entry.get("ci95")
    return f"{entry['estimate']:.3f}" + (f" (95 % CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else "")


@app.command("verify")
def verify_command(model: Annotated[Path, typer.Argument(help="model directory")]) -> None:
    """Check every artifact against the manifest and load the model."""
    from inference.model import B12Model, ModelArtifactError

    try:
        loaded = B12Model.load(model)
    except ModelArtifactError as exc:
        typer.echo(f"invalid model: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"{loaded.version}: artifacts sha256 {loaded.identity.artifacts_sha256}")


@app.command("evaluate")
def evaluate_command(
    model: Annotated[Path, typer.Argument(help="model directory")],
    csv_path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="labelled CSV")],
    bootstrap: Annotated[int, typer.Option(min=0, help="bootstrap resamples for 95 % CIs (0: none)")] = 0,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Measure a model on a labelled CSV (e.g. your lab's data) and print the metrics as JSON."""
    from inference.model import B12Model
    from inference.training.data import read_labelled_csv
    from inference.training.metrics import evaluate

    loaded = B12Model.load(model)
    data = read_labelled_csv(csv_path)
    p1, p2 = loaded.predict_proba(data.features)
    metrics = evaluate(p1, p2, data.b12_pg_ml, loaded.thresholds, resamples=bootstrap, seed=seed)
    typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))


@app.command("benchmark")
def benchmark_command(
    model: Annotated[Path | None, typer.Option(help="model directory (default: the shipped model)")] = None,
    single: Annotated[int, typer.Option(min=10, help="single-row calls to time")] = 500,
    batch: Annotated[int, typer.Option(min=1, help="rows in the batch call")] = 10_000,
    threads: Annotated[int, typer.Option(min=1, help="CatBoost threads used for prediction")] = 1,
    seed: Annotated[int, typer.Option()] = 7,
) -> None:
    """Single-row latency (p50/p99) and batch throughput of ``B12Model.assess``, SHAP included."""
    from inference.model import DEFAULT_MODEL_DIR, B12Model
    from inference.training.cohort import generate_cohort
    from shared.events.screening import FEATURE_ORDER

    loaded = B12Model.load(model or DEFAULT_MODEL_DIR, thread_count=threads)
    columns = generate_cohort(max(batch, single), seed)
    x = np.column_stack(
        [
            (columns["sex"] == "male").astype(np.float64)
            if name == "sex_male"
            else columns[name].astype(np.float64)
            for name in FEATURE_ORDER
        ]
    )
    for row in x[:20]:  # warm up
        loaded.assess(row[None, :])
    timings = []
    for row in x[:single]:
        started = time.perf_counter()
        loaded.assess(row[None, :])
        timings.append(time.perf_counter() - started)
    ms = np.array(timings) * 1000.0
    started = time.perf_counter()
    loaded.assess(x[:batch])
    elapsed = time.perf_counter() - started
    typer.echo(f"model {loaded.version} ({threads} thread{'s' if threads > 1 else ''})")
    typer.echo(
        f"single row: p50 {np.percentile(ms, 50):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms "
        f"over {single} calls"
    )
    typer.echo(f"batch of {batch}: {elapsed:.2f} s, {batch / elapsed:,.0f} rows/s")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
