"""Accuracy and latency harness: every backend against PyTorch FP32, benchmarked side by side.

- :mod:`~eca_deploy.harness.backends`: PyTorch, ONNX Runtime and TensorRT behind one interface.
- :mod:`~eca_deploy.harness.targets`: which backends run, the files they need, checked against the reference.
- :mod:`~eca_deploy.harness.data`: seeded random inputs (image folders: :mod:`eca_deploy.image_folders`).
- :mod:`~eca_deploy.harness.accuracy`: agreement metrics, tolerances, label accuracy, pass/fail.
- :mod:`~eca_deploy.harness.localize`: the first diverging layer of a failing ONNX model.
- :mod:`~eca_deploy.harness.latency`: percentiles, stages, batch sweeps, single-stream/offline.
- :mod:`~eca_deploy.harness.environment`: host, GPU, versions, CPU load, Jetson mode and power rails.
- :mod:`~eca_deploy.harness.report`: JSON (versioned schema), CSV, Markdown, PNG plots, compare.
"""
