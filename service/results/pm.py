"""Parametric Map of the key slice's Grad-CAM relevance over the original image (PS3.3 A.75).

Unlike the Secondary Capture it carries the map's values, not a picture: a viewer can fuse
it over the original, threshold it or read a value under the cursor. One frame, on the
key frame's plane (for multi-frame sources its Plane Position/Orientation and a
reference to that frame; for single-frame images the image's own geometry).

Pixels are 16-bit unsigned integers with a Real World Value Mapping (relevance =
stored / ``LEVELS``) rather than Float Pixel Data: few viewers and archive previews
render float pixel data, while every one shows 16-bit MONOCHROME2 and the mapping gives
the value under the cursor. ``LEVELS`` (4095, a 12-bit range) keeps a step of 0.00024,
16 times finer than the overlay's 8-bit colours. No Palette Color LUT: highdicom 0.28
writes one (Pixel Presentation COLOR_RANGE) without the ICC profile and Stored Value
Color Range that the IOD then requires, and dciodvfy rejects it; viewers colour a fused
PM with their own map anyway.
"""

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from service.results.findings import MANUFACTURER, StudyFindings, frame_geometry, header_view, key_frame_number
from service.results.uids import new_uid, replace_foreign_uids, uids_in

SERIES_DESCRIPTION = "Sightline AI heatmap (research use)"
CONTENT_LABEL = "GRADCAM"
LUT_LABEL = "GRADCAM"
LEVELS = 4095  # stored value of relevance 1.0
_UNITLESS = Code("1", "UCUM", "no units")
_DERIVATION = codes.DCM.UnspecifiedMethodOfCalculation  # no code for Grad-CAM: DerivationDescription says it
_FULL_RANGE = hd.VOILUTTransformation(window_center=(LEVELS + 1) / 2, window_width=LEVELS + 1)  # all of 0..1


def _check_cam(source: Dataset, cam: np.ndarray) -> None:
    if cam.dtype != np.float32 or cam.shape != (source.Rows, source.Columns):
        raise ValueError(f"cam must be float32 {source.Rows}x{source.Columns}, got {cam.dtype} {cam.shape}")
    if not np.isfinite(cam).all() or cam.min() < 0.0 or cam.max() > 1.0:
        raise ValueError("cam values must be finite and within 0..1 (normalised as in the overlay)")


def _stored(cam: np.ndarray) -> np.ndarray:
    return np.round(cam * LEVELS).astype(np.uint16)


def _mapping() -> hd.pm.RealWorldValueMapping:
    return hd.pm.RealWorldValueMapping(
        lut_label=LUT_LABEL,
        lut_explanation="Grad-CAM relevance, 1 = key frame maximum",
        unit=_UNITLESS,
        value_range=(0, LEVELS),
        slope=1.0 / LEVELS,
        intercept=0.0,
    )


def _geometry(
    source: Dataset, key_frame: int
) -> tuple[hd.PixelMeasuresSequence | None, hd.PlaneOrientationSequence | None, list[hd.PlanePositionSequence] | None]:
    """The key frame's plane, given explicitly (highdicom would otherwise expect one map frame per source frame)."""
    geometry = frame_geometry(source, key_frame)
    if geometry.pixel_spacing is None or geometry.orientation is None or geometry.position is None:
        # A map needs a plane to lie on; highdicom cannot build one from a source without it.
        raise ValueError("the key image lacks pixel spacing, orientation or position: no parametric map")
    patient = hd.CoordinateSystemNames.PATIENT
    return (
        hd.PixelMeasuresSequence(geometry.pixel_spacing, geometry.slice_thickness),
        hd.PlaneOrientationSequence(patient, geometry.orientation),
        [hd.PlanePositionSequence(patient, geometry.position)],
    )


def _derivation(findings: StudyFindings) -> str:
    return (
        f"{findings.cam_method} relevance for '{findings.target_label}' by {findings.model_name} "
        f"{findings.model_version} (sha256 {findings.model_sha256}), normalised to the key frame's maximum "
        f"(raw strength {findings.cam_strength:.4g}). {findings.research_notice}"
    )


def build_parametric_map(
    source: Dataset,
    cam: np.ndarray,
    findings: StudyFindings,
    *,
    series_uid: str,
    instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    uid_root: str | None = None,
) -> Dataset:
    """PM of ``cam`` (float32 Rows x Columns, 0..1 as in the overlay) over the key image and frame."""
    frame = key_frame_number(source, findings)
    _check_cam(source, cam)
    reference = header_view(source)
    if "NumberOfFrames" not in reference and "SliceThickness" not in reference:
        reference.SliceThickness = None  # Type 2 in the MR image module; highdicom reads it unconditionally
    if not reference.get("FrameOfReferenceUID"):
        # The PM IOD requires one; a source without one (not conformant MR, or a synthetic
        # file) gets the map a frame of its own, which claims no registration with the source.
        reference.FrameOfReferenceUID = new_uid(uid_root)
    pixel_measures, orientation, positions = _geometry(source, findings.key_frame)
    pm = hd.pm.ParametricMap(
        source_images=[reference],
        pixel_array=_stored(cam),
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=findings.model_name,
        software_versions=findings.model_version,
        device_serial_number=findings.model_sha256[:16],
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[_mapping()],
        content_label=CONTENT_LABEL,
        content_description=f"{findings.cam_method} map of {findings.model_name} {findings.model_version}"[:64],
        content_creator_name=f"{MANUFACTURER}^{findings.model_name}"[:64],
        pixel_measures=pixel_measures,
        plane_orientation=orientation,
        plane_positions=positions,
        voi_lut_transformations=[_FULL_RANGE],
        derivation=_DERIVATION,
    )
    pm.Laterality = source.get("Laterality", "")  # Type 2C in General Series; empty = not a paired organ
    pm.SeriesDescription = SERIES_DESCRIPTION
    pm.DerivationDescription = _derivation(findings)
    _reference_key_frame(pm, source, frame)
    replace_foreign_uids(pm, uid_root, keep=uids_in(reference))
    return pm


def _reference_key_frame(pm: Dataset, source: Dataset, frame: int | None) -> None:
    """The map's frame derives from the key frame: say so in its Derivation Image Sequence.

    highdicom finds it by matching plane positions; a source whose frames share a position
    would leave it empty, so it is written here either way.
    """
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame is not None:
        reference.ReferencedFrameNumber = frame
    reference.SpatialLocationsPreserved = "YES"
    reference.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    ]
    derivation = Dataset()
    derivation.DerivationCodeSequence = [hd.sr.CodedConcept.from_code(_DERIVATION)]
    derivation.SourceImageSequence = [reference]
    pm.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence = [derivation]
