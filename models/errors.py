"""Errors the model library raises on purpose.

Callers map them to HTTP statuses by class (``ImageDecodeError`` -> 422,
``DecompressionBomb`` -> 413) and render ``code`` in the JSON error body. Messages name
the problem (the element, the byte count, the format) and never carry patient data.
"""


class ModelLibraryError(Exception):
    """Base of every error the model library raises on purpose."""

    code = "model_error"


class ImageDecodeError(ModelLibraryError):
    """The input cannot be turned into pixels (callers answer 422)."""

    code = "unreadable_image"


class UnreadableDicom(ImageDecodeError):
    """Not a DICOM Part 10 file or dataset pydicom can parse."""

    code = "unreadable_dicom"


class NoPixelData(ImageDecodeError):
    """A parseable DICOM dataset without (7FE0,0010) Pixel Data, e.g. an RT Plan."""

    code = "no_pixel_data"


class InconsistentPixelData(ImageDecodeError):
    """The Image Pixel module disagrees with the pixel data (dimensions lie, data truncated)."""

    code = "inconsistent_pixel_data"


class UnsupportedTransferSyntax(ImageDecodeError):
    """No installed decoder handles the dataset's transfer syntax."""

    code = "unsupported_transfer_syntax"


class UnreadableRaster(ImageDecodeError):
    """A PNG or JPEG that is corrupt, truncated or of an unknown kind."""

    code = "unreadable_image"


class DecompressionBomb(ImageDecodeError):
    """The declared image size is past the pixel budget (callers answer 413)."""

    code = "decompression_bomb"


class ImageTooLarge(DecompressionBomb):
    """Decoding would need more memory than the decode byte budget (callers answer 413).

    Estimated from the headers before anything is decoded: pixels x samples x the bytes the
    decoder's output and the float32/uint8 working copies take per sample.
    """

    code = "image_too_large"


class ModelContractError(ModelLibraryError):
    """A model file or manifest breaks the model contract (DESIGN.md, "The model contract")."""

    code = "model_contract"


class InvalidManifest(ModelContractError):
    """A manifest JSON file that is unreadable or fails validation; the message names the file."""

    code = "invalid_manifest"


class UnknownModel(ModelContractError):
    """No registered manifest carries the requested model name."""

    code = "unknown_model"


class ModelFileMismatch(ModelContractError):
    """The model file is missing or its sha256 differs from the one its manifest declares."""

    code = "model_sha256_mismatch"


class UnsupportedCamOp(ModelContractError):
    """The head between the CAM layer and the output holds an op we cannot differentiate."""

    code = "unsupported_cam_op"


class UnknownCamMethod(ModelContractError):
    """The requested CAM method is not in ``models.cam.METHODS``."""

    code = "unknown_cam_method"


class InvalidImageArray(ModelLibraryError):
    """A pixel array handed to preprocessing or rendering has the wrong dtype or shape."""

    code = "invalid_image_array"
