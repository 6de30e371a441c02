"""pytorch-grad-cam and onnx2torch, imported with the torchvision stand-in in place."""

from reference.torchvision_absent import install

install()

import onnx2torch  # noqa: E402
import pytorch_grad_cam  # noqa: E402

__all__ = ["onnx2torch", "pytorch_grad_cam"]
