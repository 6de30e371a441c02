"""Training recipes for Sightline's seed classifiers (PyTorch, CPU build; the ``train`` extra).

``models/``, ``service/`` and ``worker/`` never import this package: it only produces ONNX
files that the model library then serves like any other registered classifier.
"""
