"""Writing an evaluation to disk: ``evaluation.json``, a readable ``evaluation.md`` and the
reliability diagram (``models.calibration.reliability_plot_png``)."""

import json
from pathlib import Path

from models.calibration import reliability_plot_png
from models.evaluation import EvaluationReport


def write_report(report: EvaluationReport, out_dir: Path) -> list[Path]:
    """Write evaluation.json, evaluation.md (tables for people) and reliability.png into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "evaluation.json", out_dir / "evaluation.md", out_dir / "reliability.png"]
    written[0].write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    written[1].write_text(report_markdown(report), encoding="utf-8")
    after_label = f"after calibration, T={report.temperature:g}"
    written[2].write_bytes(
        reliability_plot_png(report.reliability_before, report.reliability_after, after_label=after_label)
    )
    return written


def report_markdown(report: EvaluationReport) -> str:
    """The report as Markdown: a summary, per-class metrics, the confusion matrix, skipped files."""
    lines = [f"# Evaluation of {report.model or 'the classifier'}", "", "| Metric | Value |", "|---|---|"]
    lines += [
        f"| Images evaluated | {report.count} |",
        f"| Images skipped (unreadable) | {len(report.skipped)} |",
        f"| Accuracy | {_fmt(report.accuracy)} |",
        f"| Macro precision / recall / F1 | {_fmt(report.macro_precision)} / {_fmt(report.macro_recall)}"
        f" / {_fmt(report.macro_f1)} |",
        f"| Macro ROC-AUC (one-vs-rest) | {_fmt(report.macro_roc_auc)} |",
        f"| Temperature | {report.temperature:g} |",
        f"| NLL before / after calibration | {_fmt(report.nll_before)} / {_fmt(report.nll_after)} |",
        f"| ECE ({len(report.reliability_before)} bins) before / after | {_fmt(report.ece_before)}"
        f" / {_fmt(report.ece_after)} |",
        "",
        "## Per class",
        "",
        "| Label | Support | Precision | Recall | F1 | ROC-AUC |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {c.label} | {c.support} | {_fmt(c.precision)} | {_fmt(c.recall)} | {_fmt(c.f1)} | {_fmt(c.roc_auc)} |"
        for c in report.classes
    ]
    lines += ["", "## Confusion matrix (rows: truth, columns: predicted)", ""]
    lines += ["| truth \\ predicted | " + " | ".join(report.labels) + " |", "|---|" + "---:|" * len(report.labels)]
    lines += [
        f"| {name} | " + " | ".join(map(str, row)) + " |"
        for name, row in zip(report.labels, report.confusion, strict=True)
    ]
    lines += ["", "## Reliability", "", "![Reliability diagram](reliability.png)", ""]
    if report.skipped:
        lines += ["## Skipped files", ""] + [f"- {s.index}: `{s.path}`: {s.reason}" for s in report.skipped] + [""]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
