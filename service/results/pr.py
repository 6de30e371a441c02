"""Grayscale Softcopy Presentation State: the box and verdict drawn over the original (PS3.3 A.33.1).

Unlike the Secondary Capture, the reader keeps the diagnostic pixels and can hide the layer.
"""

import highdicom as hd
import numpy as np
from pydicom import Dataset

from service.results.findings import MANUFACTURER, StudyFindings, bbox_polyline, header_view, key_frame_number
from service.results.uids import replace_foreign_uids, uids_in

CONTENT_LABEL = "SIGHTLINE_AI"
LAYER = "SIGHTLINE_AI"


def _text_objects(source: Dataset, findings: StudyFindings) -> list[hd.pr.TextObject]:
    """Verdict at the top and the research notice at the bottom, inside the image (pixel units)."""
    rows, cols = float(source.Rows), float(source.Columns)
    band = max(rows * 0.12, 2.0)
    lines = [(findings.score_text, (0.0, 0.0, cols, band)), (findings.research_notice, (0.0, rows - band, cols, rows))]
    return [
        hd.pr.TextObject(
            text_value=text,
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            bounding_box=box,
            text_justification=hd.pr.TextJustificationValues.LEFT,
        )
        for text, box in lines
    ]


def build_presentation_state(
    source: Dataset,
    findings: StudyFindings,
    *,
    series_uid: str,
    instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    uid_root: str | None = None,
) -> Dataset:
    """GSPS on the key image (and frame): box as a closed POLYLINE, verdict text, optional VOI window."""
    frame = key_frame_number(source, findings)
    reference = header_view(source)
    layer = hd.pr.GraphicLayer(layer_name=LAYER, order=1, description="Sightline AI result (research use)")
    graphics = []
    if findings.bbox is not None:
        graphics.append(
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=np.array(bbox_polyline(findings.bbox)),
                units=hd.pr.AnnotationUnitsValues.PIXEL,
            )
        )
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[reference],
        graphic_layer=layer,
        referenced_frame_number=frame,
        graphic_objects=graphics or None,
        text_objects=_text_objects(source, findings),
    )
    voi = None
    if findings.display_window is not None:
        center, width = findings.display_window
        voi = [hd.pr.SoftcopyVOILUTTransformation(window_center=center, window_width=width)]
    pr = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[reference],
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=findings.model_name,
        software_versions=findings.model_version,
        device_serial_number=findings.model_sha256[:16],
        content_label=CONTENT_LABEL,
        content_description=findings.research_notice[:64],
        graphic_annotations=[annotation],
        graphic_layers=[layer],
        voi_lut_transformations=voi,
    )
    pr.Laterality = source.get("Laterality", "")  # Type 2C in General Series; empty = not a paired organ
    pr.SeriesDescription = "Sightline AI annotation (research use)"
    replace_foreign_uids(pr, uid_root, keep=uids_in(header_view(source)))
    return pr
