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


#: Where the NHANES extract lies in a checkout of this workspace (it is never copied into the project).
DEFAULT_NHANES = Path("../shared/data/nhanes/nhanes_cbc_b12_1999_2012.csv")


@app.command("train")
def train_command(
    out: Annotated[Path, typer.Option("--out", help="model directory to write, e.g. models/b12-cbc-v3")],
    data: Annotated[
        Path | None,
        typer.Option("--data", "--nhanes", exists=True, dir_okay=False, envvar="NHANES_PATH",
                     help="labelled data: the NHANES extract (recognised by its columns) or a lab's CSV "
                          f"(CBC columns, sex, b12, b12_unit[, group, mma_umol_l]); default {DEFAULT_NHANES}"),
    ] = None,
    version: Annotated[str, typer.Option(help="version recorded in the manifest and every result")] = "b12-cbc-v2",
    seed: Annotated[int, typer.Option(help="seed for folds, CatBoost and bootstrap")] = DEFAULT_SEED,
    iterations: Annotated[int, typer.Option(min=10, help="CatBoost: most trees per stage (early stopping)")] = 3000,
    learning_rate: Annotated[float, typer.Option(min=0.001, max=1.0)] = 0.03,
    depth: Annotated[int, typer.Option(min=1, max=10)] = 3,
    family: Annotated[list[str] | None, typer.Option(help="candidate family (repeat): catboost, logistic")] = None,
    threads: Annotated[int, typer.Option(min=1, help="CatBoost threads")] = 1,
    bootstrap: Annotated[int, typer.Option(min=0, help="bootstrap resamples for the shipped model's CIs")] = 1000,
    bootstrap_other: Annotated[int, typer.Option(min=0, help="resamples for candidates, groups, subgroups")] = 200,
    b12_unit: Annotated[str | None, typer.Option(help="B12 unit when a CSV has no b12_unit column")] = None,
    plots: Annotated[bool, typer.Option(help="write ROC, reliability and decision-curve PNGs")] = True,
    force: Annotated[bool, typer.Option(help="replace an existing, non-empty model directory")] = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Validate (leave one group out), train the better family, calibrate, choose thresholds from the
    decision curve and write a versioned, hashed model directory with its card."""
    from inference.training.pipeline import TrainingConfig, TrainingError, train
    from inference.training.validation import FAMILIES, FitSettings

    source = data or DEFAULT_NHANES
    if not source.is_file():
        typer.echo(f"error: no data at {source}; pass --data PATH (or set NHANES_PATH)", err=True)
        raise typer.Exit(code=1)
    try:
        config = TrainingConfig(
            version=version,
            fit=FitSettings(seed=seed, iterations=iterations, learning_rate=learning_rate, depth=depth,
                            thread_count=threads),
            families=tuple(family or FAMILIES),
            bootstrap_resamples=bootstrap,
            resamples_other=bootstrap_other,
            plots=plots,
        )
        result = train(source, out, config, force=force, progress=progress, default_b12_unit=b12_unit)
    except (TrainingError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"wrote {out} ({result.identity.version}, artifacts sha256 {result.identity.artifacts_sha256}) "
               f"in {result.seconds:.1f} s")
    typer.echo(summary(result.card))


def summary(card: dict) -> str:
    """The figures a reviewer asks for first, one per line (printed by ``train`` and ``evaluate``)."""
    pooled = card["metrics"]["pooled"]
    lines = [f"{card['validation']}; shipped family: {card['model']['family']}"]
    for key, name in (("deficient", "B12 < 200"), ("metabolically_confirmed", "MMA-confirmed"),
                      ("abnormal", "B12 < 300")):
        r = pooled[key]
        if "note" in r:
            lines.append(f"  {name}: {r['note']}")
            continue
        lines.append(f"  {name}: AUROC {_ci(r.get('auroc'))}, calibration slope {_ci(r.get('calibration_slope'))}, "
                     f"intercept {_ci(r.get('calibration_intercept'))}, mean predicted {r['mean_predicted']:.4f} vs "
                     f"observed {r['prevalence']:.4f}")
    for family, r in card["metrics"]["candidates"].items():
        lines.append(f"  candidate {family}: AUROC B12 < 200 {_ci(r['deficient'].get('auroc'))}")
    for marker, r in card["metrics"]["baselines"].items():
        lines.append(f"  baseline {marker}: AUROC {_ci(r.get('auroc'))}")
    for group, r in card["metrics"]["per_group"].items():
        lines.append(f"  held out {group}: AUROC {_ci(r.get('auroc'))}, mean predicted {r['mean_predicted']:.4f} vs "
                     f"observed {r['prevalence']:.4f}")
    th = card["thresholds"]
    ge2 = card["metrics"]["classes"]["deficient"]["ge2"]
    ge3 = card["metrics"]["classes"]["deficient"]["ge3"]
    lines.append(f"  test advised (class ≥ 2) at P(deficient) ≥ {th['intermediate']}: sensitivity "
                 f"{_ci(ge2['sensitivity'])}, specificity {_ci(ge2['specificity'])}, flagged "
                 f"{_ci(ge2['flagged_fraction'])}")
    lines.append(f"  class 3 at ≥ {th['high']}: sensitivity {_ci(ge3['sensitivity'])}, PPV {_ci(ge3['ppv'])}, "
                 f"flagged {_ci(ge3['flagged_fraction'])}")
    for entry in card["aims"].values():
        lines.append(f"  aim {'met' if entry['met'] else 'NOT met'}: {entry['aim']}")
    return "\n".join(lines)


def _ci(entry: dict | None) -> str:
    if not entry or entry.get("estimate") is None:
        return "–"
    ci = entry.get("ci95")
    return f"{entry['estimate']:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci and ci[0] is not None else "")


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
    data: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                         help="labelled data: an NHANES extract (e.g. a held-back cycle) or a CSV")],
    bootstrap: Annotated[int, typer.Option(min=0, help="bootstrap resamples for 95 % CIs (0: none)")] = 1000,
    prevalence: Annotated[float | None, typer.Option(
        min=0.0001, max=0.9999, help="declared prevalence of B12 < 200 to correct to (default: the model's)")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Measure a shipped model on data it never saw (e.g. a later NHANES cycle) and print the metrics as JSON:
    discrimination, calibration, decision curve and what each risk class does."""
    from inference.model import B12Model, ModelArtifactError
    from inference.training import validation
    from inference.training.data import read_cohort

    try:
        loaded = B12Model.load(model)
    except ModelArtifactError as exc:
        typer.echo(f"invalid model: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    cohort = read_cohort(data)
    p1, p2 = loaded.predict_proba(cohort.features, [prevalence] * len(cohort))
    report = {
        "model": loaded.version,
        "data": {"file": cohort.file, "rows_read": cohort.rows_read, "rows_used": len(cohort),
                 "excluded_by_reason": dict(cohort.excluded)},
        "outcomes": validation.outcomes(cohort, p1, p2, resamples=bootstrap, seed=seed),
        "classes": validation.operating_characteristics(cohort, p1 * p2, loaded.thresholds, resamples=bootstrap,
                                                        seed=seed),
    }
    typer.echo(json.dumps(report, indent=2, ensure_ascii=False, default=lambda v: None))


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
