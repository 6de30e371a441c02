"""RGB Secondary Capture of the key slice's Grad-CAM overlay (PS3.3 A.8.1; IHE AI Results).

The overlay's box/contour are burned into the pixels, hence BurnedInAnnotation YES.
"""

import highdicom as hd
import numpy as np
from pydicom import Dataset

from service.results.findings import MANUFACTURER, StudyFindings, frame_geometry, header_view, key_frame_number
from service.results.uids import replace_foreign_uids, uids_in

SERIES_DESCRIPTION = "Sightline AI overlay (research use)"
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # +x, -x; +y, -y; +z, -z (LPS patient axes)


def orientation_letter(direction: tuple[float, ...]) -> str:
    """Dominant patient axis of a direction cosine as one letter (PS3.3 C.7.6.1.1.1)."""
    axis = int(np.argmax(np.abs(direction)))
    positive, negative = _AXIS_LETTERS[axis]
    return positive if direction[axis] > 0 else negative


def _check_overlay(overlay_rgb: np.ndarray) -> None:
    if overlay_rgb.dtype != np.uint8 or overlay_rgb.ndim != 3 or overlay_rgb.shape[2] != 3:
        raise ValueError(f"overlay_rgb must be uint8 HxWx3, got {overlay_rgb.dtype} {overlay_rgb.shape}")


def build_secondary_capture(
    source: Dataset,
    overlay_rgb: np.ndarray,
    findings: StudyFindings,
    *,
    series_uid: str,
    instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    uid_root: str | None = None,
) -> Dataset:
    """SC image of ``overlay_rgb`` in the source's patient and study, referencing the key image and frame."""
    _check_overlay(overlay_rgb)
    frame = key_frame_number(source, findings)
    geometry = frame_geometry(source, findings.key_frame)
    spacing = None
    if geometry.pixel_spacing is not None:
        # The overlay may be rendered at another size than the source: keep millimetres true.
        scale_rows = source.Rows / overlay_rgb.shape[0]
        scale_cols = source.Columns / overlay_rgb.shape[1]
        spacing = (geometry.pixel_spacing[0] * scale_rows, geometry.pixel_spacing[1] * scale_cols)
    orientation = ("L", "P")  # axial default when the source does not say
    if geometry.orientation is not None and len(geometry.orientation) == 6:
        orientation = (orientation_letter(geometry.orientation[:3]), orientation_letter(geometry.orientation[3:]))
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header_view(source),
        pixel_array=np.ascontiguousarray(overlay_rgb),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        pixel_spacing=spacing,
        patient_orientation=orientation,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.BurnedInAnnotation = "YES"
    sc.Laterality = source.get("Laterality", "")  # Type 2C in General Series; empty = not a paired organ
    sc.SeriesDescription = SERIES_DESCRIPTION
    sc.ImageComments = f"{findings.score_text}. {findings.research_notice}"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame is not None:
        reference.ReferencedFrameNumber = frame
    sc.SourceImageSequence = [reference]
    replace_foreign_uids(sc, uid_root, keep=uids_in(header_view(source)))
    return sc
