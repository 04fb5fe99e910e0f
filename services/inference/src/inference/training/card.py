"""The model card: JSON for machines, Markdown for people, ROC / PR / calibration plots as small PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from inference import domain
from inference.training.data import ABNORMAL_BELOW, DEFICIENT_BELOW
from shared.events.screening import FEATURE_ORDER

STATUS = "Synthetic, not clinically validated; retrain on your lab's data with `clinomic-model train ...`."
ROC_PNG = "roc.png"
PR_PNG = "pr.png"
CALIBRATION_PNG = "calibration.png"
MIN_PLOTTED_BIN = 20

#: What published work measured; our figures sit beside these so nobody mistakes synthetic for real.
PUBLISHED_ANCHORS: list[dict[str, str]] = [
    {
        "source": "Henry Ford Hospital laboratory records, Hospital Medicine 2009 (abstract 19)",
        "population": "50,405 US adults with serum B12 and a CBC; 2.7 % below 200 pg/mL",
        "predictors": "single CBC markers: Hb, MCV, RDW",
        "auroc": "0.61, 0.54, 0.57 (range 0.54–0.61)",
    },
    {
        "source": "Tamune et al., Frontiers in Psychiatry 2020",
        "population": "497 psychiatric emergency inpatients (16 % B12-deficient), temporal validation",
        "predictors": "age, sex and 29 routine blood tests (machine learning)",
        "auroc": "0.599",
    },
    {
        "source": "Demirci et al., Diagnostics 2026",
        "population": "51,630 adults; temporal validation on 34,744",
        "predictors": "CatBoost on routine laboratory analytes (more than the CBC)",
        "auroc": "0.88 (test), 0.90 (temporal validation)",
    },
]

LIMITATIONS = [
    "Trained and evaluated on a synthetic cohort: the figures describe the generator, not patients.",
    (
        "Probabilities are calibrated to the training cohort's prevalence; a lab whose prevalence differs must "
        "recalibrate (retrain) before trusting them."
    ),
    (
        "Serum B12 is itself an imperfect marker (the label); methylmalonic acid, homocysteine or "
        "holotranscobalamin are needed to confirm deficiency, particularly at 200–300 pg/mL."
    ),
    "A CBC cannot tell B12 from folate deficiency, nor from other causes of macrocytosis.",
    "Most B12-deficient adults have a normal CBC: a low-risk result does not exclude deficiency.",
    "Adults only (18 and over); not for pregnancy, children, or patients already on B12 treatment.",
]


def build_card(
    config: Any,
    metrics: dict[str, Any],
    training: dict[str, Any],
    thresholds: domain.RiskThresholds,
    threshold_notes: dict[str, Any],
    calibration: dict[str, Any],
) -> dict[str, Any]:
    return {
        "model": {
            "name": "Clinomic B12 CBC screen (two-stage CatBoost)",
            "version": config.version,
            "stages": {
                "stage1": f"P(abnormal) = P(serum B12 < {ABNORMAL_BELOW:g} pg/mL)",
                "stage2": f"P(deficient | abnormal) = P(B12 < {DEFICIENT_BELOW:g} | B12 < {ABNORMAL_BELOW:g})",
                "combined": "P(normal) = 1 − p1, P(borderline) = p1·(1 − p2), P(deficient) = p1·p2",
            },
            "features": list(FEATURE_ORDER),
        },
        "status": STATUS,
        "intended_use": (
            "Flag adults whose routine CBC suggests checking serum B12; a screening aid for "
            "laboratories, never a diagnosis."
        ),
        "data": training["data"],
        "splits": training["splits"],
        "stages": training["stages"],
        "libraries": training["libraries"],
        "calibration": calibration,
        "thresholds": {
            "intermediate": thresholds.intermediate,
            "high": thresholds.high,
            "operating_point": threshold_notes,
        },
        "metrics": metrics,
        "published_anchors": PUBLISHED_ANCHORS,
        "limitations": LIMITATIONS,
        "retrain": (
            "clinomic-model train your_lab.csv --out models/<version> --version <version>  "
            "(CSV columns: hb, rbc, hct, mcv, mch, mchc, rdw, wbc, platelets, neutrophils_pct, "
            "lymphocytes_pct, age, sex, b12, b12_unit)"
        ),
    }


def _ci(entry: dict[str, Any]) -> str:
    ci = entry.get("ci95")
    if not ci or ci[0] is None:
        return f"{entry['estimate']:.3f}"
    return f"{entry['estimate']:.3f} ({ci[0]:.3f}–{ci[1]:.3f})"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def honesty_note(auroc: float) -> str:
    """Where the measured AUROC sits against the published anchors, in words."""
    if auroc > 0.85:
        return (
            "This is at the level of models that also use biochemistry: for a CBC-only model it is too good "
            "to be true, so check the data (or the generator) for leakage or an easy cohort."
        )
    if auroc >= 0.62:
        return (
            "This lies between single CBC markers (0.54–0.61) and models that add biochemistry (0.88–0.90), "
            "which is what a CBC-only model can honestly be expected to do."
        )
    return "This is in the range of single CBC markers (0.54–0.61): the CBC carries little signal here."


def render_markdown(card: dict[str, Any], *, plots: bool = True) -> str:
    m = card["metrics"]
    d, a, s = m["deficient"], m["abnormal"], m["deficient_given_abnormal"]
    data, stages, op = card["data"], card["model"]["stages"], card["thresholds"]["operating_point"]
    lines = [
        f"# Model card: {card['model']['name']} — `{card['model']['version']}`",
        "",
        f"> **{card['status']}**",
        "",
        f"**Intended use.** {card['intended_use']}",
        "",
        "## Model",
        "",
        f"- Stage 1: {stages['stage1']}; stage 2: {stages['stage2']}.",
        f"- Combined: {stages['combined']}.",
        f"- Features (contract order): {', '.join(card['model']['features'])}.",
        (
            f"- Calibration: Platt scaling of each stage's log-odds, fitted on the calibration split "
            f"(stage 1 slope {card['calibration']['stage1']['slope']:.3f}, "
            f"stage 2 slope {card['calibration']['stage2']['slope']:.3f})."
        ),
        (
            f"- Risk class from calibrated P(deficient): class 3 if ≥ {card['thresholds']['high']:.4f}, "
            f"class 2 if ≥ {card['thresholds']['intermediate']:.4f}, else class 1. "
            "Label: the most probable of normal / borderline / deficient."
        ),
        (
            f"- Operating point, chosen on the {op['selected_on']}: class ≥ 2 aims at {op['intermediate']['goal']}; "
            f"class 3 aims at {op['high']['goal']}."
        ),
        "",
        "## Data",
        "",
        f"- File `{data['file']}`, sha256 `{data['sha256']}`.",
        (
            f"- Rows read {data['rows_read']}, excluded by contract validation {data['rows_excluded']}, "
            f"used {data['rows_used']}."
        ),
        (
            f"- Prevalence: deficient (B12 < 200 pg/mL) {_pct(data['deficient_prevalence'])}, "
            f"abnormal (< 300 pg/mL) {_pct(data['abnormal_prevalence'])}."
        ),
        "- Splits: " + ", ".join(f"{k} {v}" for k, v in card["splits"].items()) + ".",
    ]
    if data.get("cohort"):
        cohort = data["cohort"]
        lines.append(
            f"- Synthetic cohort: `{cohort['generator']}`, {cohort['rows']} rows, seed {cohort['seed']}, "
            f"population: {_cohort_line(cohort['population'])}."
        )
    lines += [
        "",
        f"## Measured on the held-out split ({m['rows']} rows, `holdout.csv`)",
        "",
        (
            f"95 % intervals: percentile bootstrap, {m['bootstrap']['resamples']} resamples, "
            f"seed {m['bootstrap']['seed']}."
        ),
        "",
        "| target | score | prevalence | AUROC (95 % CI) | AUPRC (95 % CI) | Brier |",
        "|---|---|---|---|---|---|",
    ]
    for entry in (d, a, s):
        if "auroc" in entry:
            lines.append(
                f"| {entry['definition']} | {_cell(entry['score'])} | {_pct(entry['prevalence'])} | "
                f"{_ci(entry['auroc'])} | {_ci(entry['auprc'])} | {entry['brier']:.4f} |"
            )
    lines += [
        "",
        "| operating point | threshold on P(deficient) | target | sensitivity | specificity | PPV | NPV | flagged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, entry, target in (
        ("at_intermediate", d, "deficient"),
        ("at_high", d, "deficient"),
        ("at_intermediate", a, "abnormal"),
    ):
        point = entry[key]
        threshold = point.get("threshold", card["thresholds"]["intermediate"])
        lines.append(
            f"| {point['rule']} | {threshold:.4f} | {target} | {_pct(point['sensitivity'])} | "
            f"{_pct(point['specificity'])} | {_pct(point['ppv'])} | {_pct(point['npv'])} | "
            f"{_pct(point['flagged_fraction'])} |"
        )
    lines += ["", "| risk class | rows | share | B12 < 200 | B12 < 300 |", "|---|---|---|---|---|"]
    for cls, row in m["risk_classes"].items():
        lines.append(
            f"| {cls} | {row['rows']} | {_pct(row['fraction'])} | {_pct(row['deficient_rate'])} | "
            f"{_pct(row['abnormal_rate'])} |"
        )
    lines += [
        "",
        "Label (most probable category) against the truth:",
        "",
        "| truth \\ label | normal | borderline | deficient |",
        "|---|---|---|---|",
    ]
    for truth in ("normal", "borderline", "deficient"):
        row = m["labels"]["confusion"][truth]
        lines.append(f"| {truth} | {row['normal']} | {row['borderline']} | {row['deficient']} |")
    lines += [
        "",
        f"Label accuracy {_pct(m['labels']['accuracy'])}.",
        "",
        "### Calibration (held-out)",
        "",
        (
            "| P bin | P(deficient): rows | mean predicted | observed "
            "| P(abnormal): rows | mean predicted | observed |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    by_bin_d = {tuple(r["bin"]): r for r in d["calibration"]}
    by_bin_a = {tuple(r["bin"]): r for r in a["calibration"]}
    for key in sorted(set(by_bin_d) | set(by_bin_a)):
        cells = []
        for r in (by_bin_d.get(key), by_bin_a.get(key)):
            cells += (
                [str(r["rows"]), f"{r['mean_predicted']:.3f}", f"{r['observed_rate']:.3f}"]
                if r
                else ["0", "–", "–"]
            )
        lines.append(f"| {key[0]:.1f}–{key[1]:.1f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Published anchors",
        "",
        "| source | population | predictors | AUROC |",
        "|---|---|---|---|",
    ]
    for anchor in card["published_anchors"]:
        lines.append(
            f"| {anchor['source']} | {anchor['population']} | {anchor['predictors']} | {anchor['auroc']} |"
        )
    lines += [
        "",
        f"Our AUROC for B12 < 200 pg/mL is {d['auroc']['estimate']:.3f}. {honesty_note(d['auroc']['estimate'])}",
    ]
    if plots:
        lines += [
            "",
            "## Plots",
            "",
            f"![ROC]({ROC_PNG}) ![Precision–recall]({PR_PNG}) ![Calibration]({CALIBRATION_PNG})",
        ]
    lines += ["", "## Limitations", ""] + [f"- {item}" for item in card["limitations"]]
    lines += [
        "",
        "## Retrain",
        "",
        f"`{card['retrain']}`",
        "",
        "Libraries: " + ", ".join(f"{k} {v}" for k, v in card["libraries"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Escape the pipe of P(a | b) inside a Markdown table cell."""
    return text.replace("|", "\\|")


def _op(card: dict[str, Any]) -> dict[str, Any]:
    return card["thresholds"]["operating_point"]


def _cohort_line(cohort: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in cohort.items())


def write_plots(
    out: Path,
    p_abnormal: np.ndarray,
    p_deficient_given_abnormal: np.ndarray,
    b12_pg_ml: np.ndarray,
    metrics: dict[str, Any],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    p_def = np.asarray(p_abnormal) * np.asarray(p_deficient_given_abnormal)
    targets = (
        ("B12 < 200 (P deficient)", b12_pg_ml < DEFICIENT_BELOW, p_def, metrics["deficient"]),
        ("B12 < 300 (P abnormal)", b12_pg_ml < ABNORMAL_BELOW, np.asarray(p_abnormal), metrics["abnormal"]),
    )
    save = {"dpi": 80, "metadata": {"Software": None}}

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for name, y, p, entry in targets:
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name}: AUROC {entry['auroc']['estimate']:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", title="ROC, held-out split (synthetic)")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / ROC_PNG, **save)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for name, y, p, entry in targets:
        precision, recall, _ = precision_recall_curve(y, p)
        line = ax.plot(recall, precision, label=f"{name}: AUPRC {entry['auprc']['estimate']:.3f}")
        ax.axhline(float(np.mean(y)), color=line[0].get_color(), linestyle=":", linewidth=1)
    ax.set(
        xlabel="recall (sensitivity)",
        ylabel="precision (PPV)",
        title="Precision–recall (dotted: prevalence)",
        ylim=(0, 1.02),
    )
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / PR_PNG, **save)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for name, _, _, entry in targets:
        table = [r for r in entry["calibration"] if r["rows"] >= MIN_PLOTTED_BIN]
        ax.plot(
            [r["mean_predicted"] for r in table],
            [r["observed_rate"] for r in table],
            marker="o",
            markersize=3,
            label=name,
        )
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed rate",
        title=f"Calibration (held-out; bins of ≥ {MIN_PLOTTED_BIN} rows)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / CALIBRATION_PNG, **save)
    plt.close(fig)
