"""tools/bench_narrow.py times one layer through both paths and restores the network module's state."""
import importlib.util
import os

import pytest
import torch

from torch_utils.ops import narrow_conv
from training import networks

TOOL = os.path.join(os.path.dirname(__file__), '..', '..', 'tools', 'bench_narrow.py')


def load_tool():
    spec = importlib.util.spec_from_file_location('bench_narrow', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(narrow_conv.kernels() is None, reason='the kernels cannot be built here')
def test_time_layer_measures_both_paths_and_restores_the_kernels(monkeypatch):
    tool = load_tool()
    before = networks._narrow_kernels()
    calls = []
    original = narrow_conv.modulated_lrelu
    monkeypatch.setattr(narrow_conv, 'modulated_lrelu', lambda *a, **k: calls.append(1) or original(*a, **k))
    limit = narrow_conv.MAX_CHANNELS
    kernel_ms, onednn_ms = tool.time_layer(4, limit + 1, 32, 2, repeats=1)  # wider than the limit: still timed
    assert kernel_ms > 0 and onednn_ms > 0
    assert len(calls) == 2  # warm-up and one timed call through the kernels
    assert networks._narrow_kernels() is before and narrow_conv.MAX_CHANNELS == limit
    assert narrow_conv.applies(torch.randn([1, 4, 32, 32]), torch.randn([4, 4, 3, 3]), 1, None)  # switched back on


def test_shapes_cover_both_sides_of_the_channel_limit():
    tool = load_tool()
    out_channels = [shape[1] for shape in tool.SHAPES]
    assert min(out_channels) <= narrow_conv.MAX_CHANNELS < max(out_channels)
    assert {shape[3] for shape in tool.SHAPES} == {1, 2}
