"""Five seed architectures from the brain-MRI tumour literature, small and readable.

Every model is a :class:`CamClassifier`: a convolutional trunk ``features`` whose output is
the CAM layer (the last convolutional feature map, N x C x H x W, as Grad-CAM prescribes:
Selvaraju et al. 2017, section 3) and a ``head`` from that map to the class logits. The
split is what the ONNX export relies on: the trunk's output gets the stable tensor name
``cam_features`` and Sightline differentiates the head from there (``models.cam_ready``).
"""

import dataclasses
from pathlib import Path

import onnx
import torch
from torch import nn

ARCHITECTURES = ("custom_cnn", "xception", "resnet", "cbam", "cnn_lstm")
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
CAM_FEATURES = "cam_features"


class CamClassifier(nn.Module):
    """Trunk + head; ``cam_layer`` names the submodule whose output is the CAM feature map."""

    cam_layer = "features"
    """Dotted submodule name (``get_submodule``); hook it for torch Grad-CAM (pytorch-grad-cam)."""

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def cam_module(self) -> nn.Module:
        """The module whose output is the CAM layer (the target layer for torch Grad-CAM)."""
        return self.get_submodule(self.cam_layer)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [N, K] and the CAM feature map [N, C, H, W] they were computed from."""
        cam_features = self.features(x)
        return self.head(cam_features), cam_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]


def conv_bn_relu(in_channels: int, out_channels: int, *, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, batch norm (Ioffe & Szegedy 2015), ReLU: the unit of every trunk here."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def custom_cnn(*, num_classes: int, in_channels: int, width: int, input_size: int) -> CamClassifier:
    """The plain CNN of many brain-tumour MRI papers (e.g. Badža & Barjaktarović 2020):
    conv-BN-ReLU-maxpool stacks, then flatten and dense layers; the CAM layer is the last
    stack's output, the last spatial map before the dense layers flatten it."""
    features = nn.Sequential(
        conv_bn_relu(in_channels, width),
        nn.MaxPool2d(2),
        conv_bn_relu(width, 2 * width),
        nn.MaxPool2d(2),
        conv_bn_relu(2 * width, 4 * width),
        nn.MaxPool2d(2),
    )
    side = input_size // 8
    head = nn.Sequential(
        nn.Flatten(),
        nn.Linear(4 * width * side * side, 4 * width),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(4 * width, num_classes),
    )
    return CamClassifier(features, head)


class SeparableConv2d(nn.Sequential):
    """Depthwise (groups = channels) then pointwise 1x1 convolution (Chollet 2017, Xception)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
        )


class XceptionBlock(nn.Module):
    """Entry-flow block: [ReLU] SepConv-BN-ReLU-SepConv-BN-MaxPool/2 plus a strided 1x1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int, *, relu_first: bool) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.ReLU() if relu_first else nn.Identity(),
            SeparableConv2d(in_channels, out_channels),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            SeparableConv2d(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False), nn.BatchNorm2d(out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged: torch.Tensor = self.main(x) + self.shortcut(x)
        return merged


def xception(*, num_classes: int, in_channels: int, width: int, input_size: int) -> CamClassifier:
    """A narrow Xception (Chollet 2017): stem, three entry-flow blocks, a final separable
    conv-BN-ReLU (the CAM layer, like Keras' ``block14_sepconv2_act``), GAP, FC."""
    features = nn.Sequential(
        conv_bn_relu(in_channels, width, stride=2),
        conv_bn_relu(width, 2 * width),
        XceptionBlock(2 * width, 4 * width, relu_first=False),
        XceptionBlock(4 * width, 8 * width, relu_first=True),
        SeparableConv2d(8 * width, 8 * width),
        nn.BatchNorm2d(8 * width),
        nn.ReLU(),
    )
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * width, num_classes))
    return CamClassifier(features, head)


class BasicBlock(nn.Module):
    """He et al. 2016: conv-BN-ReLU-conv-BN plus the identity, or a 1x1 projection when the
    shape changes (option B), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            conv_bn_relu(in_channels, out_channels, stride=stride),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        projects = stride != 1 or in_channels != out_channels
        self.shortcut: nn.Module = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
            if projects
            else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged: torch.Tensor = self.relu(self.main(x) + self.shortcut(x))
        return merged


def resnet(*, num_classes: int, in_channels: int, width: int, input_size: int) -> CamClassifier:
    """A small ResNet (He et al. 2016): stem, three stages of basic blocks, GAP, FC; the CAM
    layer is the last block's output (``layer4`` in torchvision's ResNets)."""
    features = nn.Sequential(
        conv_bn_relu(in_channels, width),
        BasicBlock(width, width, stride=1),
        BasicBlock(width, 2 * width, stride=2),
        BasicBlock(2 * width, 4 * width, stride=2),
    )
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))
    return CamClassifier(features, head)


class Cbam(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel attention
    sigmoid(MLP(avgpool) + MLP(maxpool)), then spatial attention
    sigmoid(BN(conv7x7([mean over C, max over C]))) as in the authors' code."""

    def __init__(self, channels: int, *, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))
        self.spatial = nn.Sequential(nn.Conv2d(2, 1, 7, padding=3, bias=False), nn.BatchNorm2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))
        x = x * channel[:, :, None, None]
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


def cbam(*, num_classes: int, in_channels: int, width: int, input_size: int) -> CamClassifier:
    """Conv stages each refined by CBAM (Woo et al. 2018), GAP, FC. The CAM layer is the last
    stage's refined output, where the CBAM paper itself applies Grad-CAM (section 4.3: the
    last convolutional outputs, attention included)."""
    features = nn.Sequential(
        conv_bn_relu(in_channels, width),
        Cbam(width),
        nn.MaxPool2d(2),
        conv_bn_relu(width, 2 * width),
        Cbam(2 * width),
        nn.MaxPool2d(2),
        conv_bn_relu(2 * width, 4 * width),
        Cbam(4 * width),
    )
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))
    return CamClassifier(features, head)


class RowLstmHead(nn.Module):
    """Reads the feature map's rows top to bottom as a sequence (each row = C x W features)
    into an LSTM (Hochreiter & Schmidhuber 1997); the last hidden state feeds the classifier.
    The row count and width are fixed at build time, so the exported Reshape is static and
    the sequence length is known to ONNX shape inference."""

    def __init__(self, channels: int, side: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.rows, self.row_features = side, channels * side
        self.lstm = nn.LSTM(self.row_features, hidden, batch_first=True)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, cam_features: torch.Tensor) -> torch.Tensor:
        rows = cam_features.permute(0, 2, 1, 3).reshape(-1, self.rows, self.row_features)  # N x H x (C * W)
        _, (last_hidden, _) = self.lstm(rows)
        logits: torch.Tensor = self.classifier(last_hidden[-1])
        return logits


def cnn_lstm(*, num_classes: int, in_channels: int, width: int, input_size: int) -> CamClassifier:
    """CNN-LSTM hybrid of the brain-tumour literature: a conv trunk (the CAM layer) whose rows
    form the sequence of an LSTM, last hidden state to a dense layer."""
    features = nn.Sequential(
        conv_bn_relu(in_channels, width),
        nn.MaxPool2d(2),
        conv_bn_relu(width, 2 * width),
        nn.MaxPool2d(2),
        conv_bn_relu(2 * width, 2 * width),
        nn.MaxPool2d(2),
    )
    side = input_size // 8
    return CamClassifier(features, RowLstmHead(2 * width, side, 4 * width, num_classes))


_BUILDERS = {
    "custom_cnn": custom_cnn,
    "xception": xception,
    "resnet": resnet,
    "cbam": cbam,
    "cnn_lstm": cnn_lstm,
}


def build(arch: str, *, num_classes: int, in_channels: int = 1, width: int = 16, input_size: int = 64) -> CamClassifier:
    """A freshly initialised ``arch`` (one of ``ARCHITECTURES``) for ``input_size`` square inputs."""
    if arch not in _BUILDERS:
        raise ValueError(f"arch {arch!r} is not one of {ARCHITECTURES}")
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if input_size < 16 or input_size % 16:
        raise ValueError(f"input_size must be a multiple of 16 and >= 16, got {input_size}")
    return _BUILDERS[arch](num_classes=num_classes, in_channels=in_channels, width=width, input_size=input_size)


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """An exported ONNX classifier: the names a Sightline manifest needs."""

    path: Path
    input_name: str
    output_name: str
    cam_layer: str


class _WithFeatures(nn.Module):
    """Export wrapper: the CAM map becomes a named output so it gets a stable tensor name."""

    def __init__(self, model: CamClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_features(x)


def export_onnx(
    model: CamClassifier,
    path: Path,
    *,
    input_size: int,
    in_channels: int,
    opset: int = 17,
    fold_batch_norm: bool = True,
) -> ExportedModel:
    """Export ``model`` in eval mode (it is left in eval mode) to ``path``: input ``image``
    [N, C, S, S], output ``logits`` [N, K] (not probabilities), and the internal tensor
    ``cam_features``, the CAM layer, named through a temporary graph output removed after export.

    ``fold_batch_norm`` False turns off constant folding, which keeps the BatchNormalization
    nodes that torch otherwise folds into the preceding Conv (to test a BatchNormalization
    backward rule, for instance)."""
    wrapper = _WithFeatures(model).eval()  # the exporter restores the wrapper's mode afterwards
    dummy = torch.zeros(1, in_channels, input_size, input_size)
    batch_axis = {0: "N"}
    torch.onnx.export(
        wrapper,
        (dummy,),
        str(path),
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME, CAM_FEATURES],
        dynamic_axes={INPUT_NAME: batch_axis, OUTPUT_NAME: batch_axis, CAM_FEATURES: batch_axis},
        opset_version=opset,
        do_constant_folding=fold_batch_norm,
    )
    exported = onnx.load(str(path))
    kept = [output for output in exported.graph.output if output.name != CAM_FEATURES]
    del exported.graph.output[:]
    exported.graph.output.extend(kept)
    onnx.save(exported, str(path))
    return ExportedModel(path=path, input_name=INPUT_NAME, output_name=OUTPUT_NAME, cam_layer=CAM_FEATURES)
