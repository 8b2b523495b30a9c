"""Inference for deployment: backends that run a generator (chosen by the caller, never inferred inside a
module's forward) and exporters that write it for other runtimes."""

# Importing the package registers every backend: the registry lives in backends.py, and each module that adds
# backends imports it (so backends.py never imports them back).
from gan_prune.runtime.backends import BACKENDS, Backend  # noqa: E402
from gan_prune.runtime import exported  # noqa: E402,F401  registers onnxruntime, openvino and torchscript

__all__ = ['BACKENDS', 'Backend']
