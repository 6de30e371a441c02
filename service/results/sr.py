"""TID 1500 Measurement Report in a Comprehensive 3D SR (PS3.16 TID 1500/1410/1501; IHE AI Results).

Coding choices: findings use SNOMED CT where we know the concept (glioma, intracranial
meningioma, "None" for no tumour); pituitary tumour and the per-class probability
measurement names use the private scheme ``99SIGHTLINE`` because no verified standard
code was at hand. The research notice is a TEXT "Comment" (DCM 121106) in the measurement
group: TID 1500 has no free-text row at its root, and the notice belongs next to the
numbers it qualifies.
"""

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

from service.results.findings import (
    MANUFACTURER,
    StudyFindings,
    bbox_polyline,
    frame_geometry,
    header_view,
    key_frame_number,
)
from service.results.uids import new_uid, replace_foreign_uids, uids_in

PRIVATE_SCHEME = "99SIGHTLINE"
FINDING_CODES: dict[str, hd.sr.CodedConcept] = {
    "glioma": hd.sr.CodedConcept("393564001", "SCT", "Glioma"),
    "meningioma": hd.sr.CodedConcept("302820008", "SCT", "Intracranial meningioma"),
    "pituitary": hd.sr.CodedConcept("PITUITARY_TUMOR", PRIVATE_SCHEME, "Pituitary tumor"),
    "notumor": hd.sr.CodedConcept("260413007", "SCT", "None"),
}
UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
TUMOUR_SCORE = hd.sr.CodedConcept("TUMOR_SCORE", PRIVATE_SCHEME, "Calibrated probability of any tumor")
STUDY_SCORE = hd.sr.CodedConcept("STUDY_SCORE", PRIVATE_SCHEME, "Study tumor score")


def finding_code(label: str) -> hd.sr.CodedConcept:
    """The label's standard code where there is one; another model's labels get a private code."""
    return FINDING_CODES.get(label) or hd.sr.CodedConcept(label.upper()[:16], PRIVATE_SCHEME, label)


def probability_code(label: str) -> hd.sr.CodedConcept:
    """Measurement name for one class probability of the key slice (a Code Value is at most 16 characters)."""
    return hd.sr.CodedConcept(f"PROB_{label.upper()}"[:16], PRIVATE_SCHEME, f"Probability of {label}")


def algorithm_identification(findings: StudyFindings) -> hd.sr.AlgorithmIdentification:
    """TID 4019: which model (and which file, by sha256) produced the result."""
    return hd.sr.AlgorithmIdentification(
        name=findings.model_name,
        version=findings.model_version,
        parameters=[
            f"model_sha256={findings.model_sha256}",
            f"cam_method={findings.cam_method}",
            f"cam_target={findings.target_label}",
            f"cam_strength={findings.cam_strength:.4f}",
        ],
        manufacturer=MANUFACTURER,
    )


def _measurements(findings: StudyFindings) -> list[hd.sr.Measurement]:
    algorithm = algorithm_identification(findings)
    named = [(probability_code(label), p) for label, p in sorted(findings.probabilities.items())]
    named += [(TUMOUR_SCORE, findings.tumour_score), (STUDY_SCORE, findings.series_score)]
    return [hd.sr.Measurement(name=n, value=float(v), unit=UNITLESS, algorithm_id=algorithm) for n, v in named]


def _measurement_group(
    source: Dataset, findings: StudyFindings, frame: int | None, uid_root: str | None
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations:
    frames = None if frame is None else [frame]
    common = {
        "tracking_identifier": hd.sr.TrackingIdentifier(uid=new_uid(uid_root), identifier="Sightline finding"),
        "finding_type": codes.SCT.Neoplasm,
        "algorithm_id": algorithm_identification(findings),
        "measurements": _measurements(findings),
        "qualitative_evaluations": [hd.sr.QualitativeEvaluation(codes.DCM.Finding, finding_code(findings.label))],
    }
    if findings.bbox is None:
        source_image = hd.sr.SourceImageForMeasurementGroup.from_source_image(source, referenced_frame_numbers=frames)
        return hd.sr.MeasurementsAndQualitativeEvaluations(source_images=[source_image], **common)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array(bbox_polyline(findings.bbox)),
        source_image=hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID, frames),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_region=region, **common)


def library_view(source: Dataset, frame_index: int) -> Dataset:
    """What highdicom's TID 1602 entry needs, with the key frame's geometry lifted to the top level.

    highdicom reads PixelSpacing, SliceThickness and the plane from the top level only; an
    enhanced multi-frame image keeps them in functional groups. Without the full geometry the
    view says Modality "OT" so only the generic descriptors (modality from the SOP class,
    rows, columns) are written: better than inventing a slice thickness.
    """
    view = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "Rows", "Columns", "FrameOfReferenceUID", "Modality"):
        if keyword in source:
            setattr(view, keyword, source[keyword].value)
    geometry = frame_geometry(source, frame_index)
    spacing, thickness = geometry.pixel_spacing, geometry.slice_thickness
    orientation, position = geometry.orientation, geometry.position
    if spacing is None or thickness is None or orientation is None or position is None:
        view.Modality = "OT"
    else:
        view.PixelSpacing, view.SliceThickness = list(spacing), thickness
        view.ImageOrientationPatient, view.ImagePositionPatient = list(orientation), list(position)
    return view


def build_sr(
    source: Dataset,
    findings: StudyFindings,
    *,
    series_uid: str,
    instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    uid_root: str | None = None,
) -> Dataset:
    """Comprehensive 3D SR with one TID 1500 report on the key image; patient/study copied from ``source``."""
    frame = key_frame_number(source, findings)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=new_uid(uid_root), name="Sightline", manufacturer_name=MANUFACTURER, model_name=findings.model_name
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(codes.DCM.Device, observer_identifying_attributes=device)
    )
    group = _measurement_group(source, findings, frame, uid_root)
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(codes.DCM.Comment, findings.research_notice, "HAS PROPERTIES")
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.LN.BrainMRI,
        imaging_measurements=[group],
        referenced_images=[library_view(source, findings.key_frame)],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[header_view(source)],
        content=report,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
    )
    sr.SeriesDescription = "Sightline AI results (research use)"
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "Sightline local codes"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [scheme]  # PS3.3 C.12.1.1.4: declare the private scheme
    replace_foreign_uids(sr, uid_root, keep=uids_in(header_view(source)))
    return sr
