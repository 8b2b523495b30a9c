"""tools/bench_narrow.py times one layer through the kernel op and through the reference layer."""
import importlib.util
import os

import pytest
from torch_utils.ops import narrow_conv

TOOL = os.path.join(os.path.dirname(__file__), '..', '..', 'tools', 'bench_narrow.py')


def load_tool():
    spec = importlib.util.spec_from_file_location('bench_narrow', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(narrow_conv.kernels() is None, reason='the kernels cannot be built here')
def test_time_layer_measures_both_paths(monkeypatch):
    tool = load_tool()
    calls = []
    original = narrow_conv.modulated_lrelu
    monkeypatch.setattr(narrow_conv, 'modulated_lrelu', lambda *a, **k: calls.append(1) or original(*a, **k))
    kernel_ms, reference_ms = tool.time_layer(4, narrow_conv.MAX_CHANNELS + 1, 32, 2, repeats=1)  # wide: still timed
    assert kernel_ms > 0 and reference_ms > 0
    assert len(calls) == 2  # warm-up and one timed call through the kernels


def test_shapes_cover_both_sides_of_the_channel_limit():
    tool = load_tool()
    out_channels = [shape[1] for shape in tool.SHAPES]
    assert min(out_channels) <= narrow_conv.MAX_CHANNELS < max(out_channels)
    assert {shape[3] for shape in tool.SHAPES} == {1, 2}
