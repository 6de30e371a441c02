"""What the listener accepts: storage SOP classes × transfer syntaxes (PS3.4 B.5, PS3.5 Annex A).

Every transfer syntax that ``service.ingest`` can decode (pydicom with the pylibjpeg, pyjpegls
and RLE plugins) is accepted, so a PACS can send what it holds without transcoding.
"""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedMRImageStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    KeyObjectSelectionDocumentStorage,
    MRImageStorage,
    ParametricMapStorage,
    PseudoColorSoftcopyPresentationStateStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)

VERIFICATION = "1.2.840.10008.1.1"  # PS3.4 A.4, Verification SOP Class (C-ECHO)
STORAGE_SOP_CLASSES: tuple[str, ...] = (
    MRImageStorage,
    ParametricMapStorage,
    EnhancedMRImageStorage,
    CTImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    SecondaryCaptureImageStorage,
    BasicTextSRStorage,
    EnhancedSRStorage,
    ComprehensiveSRStorage,
    Comprehensive3DSRStorage,
    KeyObjectSelectionDocumentStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    PseudoColorSoftcopyPresentationStateStorage,
    ParametricMapStorage,  # what Sightline itself sends back: a PACS may forward it again
)

# Uncompressed first: an SCP that is offered several picks the first it supports.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
