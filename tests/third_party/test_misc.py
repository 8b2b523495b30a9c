"""torch_utils.misc utilities."""
import itertools
import warnings

import numpy as np
import pytest
import torch

from torch_utils import misc


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.block = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1), torch.nn.ReLU())
        self.register_buffer('scale', torch.full([2], 0.5))

    def forward(self, x):
        return self.block(self.conv(x)) * self.scale.reshape(1, -1, 1, 1)


def test_constant_is_cached_broadcast_and_typed():
    a = misc.constant(1.5, shape=[2, 3])
    assert a.shape == (2, 3) and a.dtype == torch.get_default_dtype() and a.device.type == 'cpu'
    assert torch.equal(a, torch.full([2, 3], 1.5))
    assert misc.constant(1.5, shape=[2, 3]) is a
    assert misc.constant(1.5, shape=(2, 3)) is a
    assert misc.constant(2.5, shape=[2, 3]) is not a
    assert misc.constant(1.5, shape=[2, 3], dtype=torch.float64).dtype == torch.float64
    row = misc.constant([1, 2, 3], shape=[2, 3], dtype=torch.int64)
    assert row.tolist() == [[1, 2, 3], [1, 2, 3]]
    cl = misc.constant(0.0, shape=[1, 3, 2, 2], memory_format=torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    assert misc.constant(np.float32(4), dtype=torch.float32).shape == ()


def test_assert_shape_messages_and_wildcards():
    x = torch.zeros([2, 3, 4])
    misc.assert_shape(x, [2, None, 4])
    misc.assert_shape(x, [None, None, None])
    with pytest.raises(AssertionError, match='Wrong number of dimensions: got 3, expected 2'):
        misc.assert_shape(x, [2, 3])
    with pytest.raises(AssertionError, match='Wrong size for dimension 1: got 3, expected 5'):
        misc.assert_shape(x, [2, 5, 4])


@pytest.mark.filterwarnings('ignore:`torch.jit.trace` is deprecated:FutureWarning')
def test_assert_shape_can_be_traced_without_warnings():
    def fn(x):
        misc.assert_shape(x, [None, 3])
        return x * 2

    with warnings.catch_warnings():
        warnings.simplefilter('error', category=torch.jit.TracerWarning)
        traced = torch.jit.trace(fn, torch.zeros([4, 3]))
    assert torch.equal(traced(torch.ones([2, 3])), torch.full([2, 3], 2.0))


def test_suppress_tracer_warnings_only_silences_tracer_warnings():
    with misc.suppress_tracer_warnings():
        warnings.warn('hidden', torch.jit.TracerWarning)  # would raise under -W error otherwise
    with pytest.warns(UserWarning):
        with misc.suppress_tracer_warnings():
            warnings.warn('visible', UserWarning)


def test_profiled_function_keeps_name_result_and_records_a_range():
    @misc.profiled_function
    def my_special_op(x, scale=1):
        return x * scale

    assert my_special_op.__name__ == 'my_special_op'
    with torch.autograd.profiler.profile() as prof:
        out = my_special_op(torch.ones(2), scale=3)
    assert out.tolist() == [3.0, 3.0]
    assert any(event.name == 'my_special_op' for event in prof.function_events)


def test_symbolic_assert_and_nan_to_num():
    misc.symbolic_assert(True, 'fine')
    with pytest.raises(AssertionError):
        misc.symbolic_assert(False, 'broken')
    assert misc.nan_to_num(torch.tensor([float('nan'), 1.0])).tolist() == [0.0, 1.0]


def _take(sampler, count):
    return list(itertools.islice(iter(sampler), count))


def test_infinite_sampler_covers_every_pass_and_is_deterministic():
    data = list(range(10))
    stream = _take(misc.InfiniteSampler(data, seed=3), 30)
    for start in range(0, 30, 10):
        assert sorted(stream[start:start + 10]) == data
    assert stream == _take(misc.InfiniteSampler(data, seed=3), 30)
    assert stream != _take(misc.InfiniteSampler(data, seed=4), 30)
    assert stream[:10] != stream[10:20]  # passes are reshuffled
    fixed = _take(misc.InfiniteSampler(data, seed=3, window_size=0), 20)
    assert fixed[:10] == fixed[10:]
    assert _take(misc.InfiniteSampler(data, shuffle=False), 12) == data + [0, 1]


def test_infinite_sampler_replicas_partition_the_stream():
    data = list(range(7))
    whole = _take(misc.InfiniteSampler(data, seed=1), 21)
    parts = [_take(misc.InfiniteSampler(data, rank=r, num_replicas=3, seed=1), 7) for r in range(3)]
    assert [item for triple in zip(*parts) for item in triple] == whole
    with pytest.raises(AssertionError):
        misc.InfiniteSampler(data, rank=3, num_replicas=3)


def test_params_and_buffers_order():
    net = _Net()
    tensors = misc.params_and_buffers(net)
    expected = list(net.parameters()) + list(net.buffers())
    assert len(tensors) == len(expected) and all(a is b for a, b in zip(tensors, expected))
    names = [name for name, _ in misc.named_params_and_buffers(net)]
    assert names == ['conv.weight', 'conv.bias', 'block.0.weight', 'block.0.bias', 'scale']


def test_copy_params_and_buffers():
    src, dst = _Net(), _Net()
    dst.requires_grad_(False)
    dst.conv.weight.requires_grad_(True)
    misc.copy_params_and_buffers(src, dst)
    for (name, a), (_, b) in zip(misc.named_params_and_buffers(src), misc.named_params_and_buffers(dst)):
        assert torch.equal(a, b), name
    assert dst.conv.weight.requires_grad and not dst.conv.bias.requires_grad

    partial = torch.nn.Module()
    partial.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    target = _Net()
    misc.copy_params_and_buffers(partial, target)
    assert torch.equal(target.conv.weight, partial.conv.weight)
    with pytest.raises(AssertionError, match='block.0.weight'):
        misc.copy_params_and_buffers(partial, _Net(), require_all=True)


def test_ddp_utilities_without_ddp(tmp_path):
    net = _Net()
    with misc.ddp_sync(net, sync=False):
        pass
    misc.check_ddp_consistency(net)  # no process group: nothing to compare

    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip('torch.distributed is not available')
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        with misc.ddp_sync(ddp, sync=False):
            ddp(torch.randn([1, 3, 4, 4])).sum().backward()
        misc.check_ddp_consistency(net, ignore_regex=r'.*\.scale')
    finally:
        dist.destroy_process_group()


def test_print_module_summary(capsys):
    net = _Net()
    x = torch.randn([2, 3, 5, 5])
    out = misc.print_module_summary(net, [x])
    assert torch.equal(out, net(x))
    text = capsys.readouterr().out
    assert 'conv' in text and 'block.0' in text and '[2, 4, 5, 5]' in text and '[2, 2, 5, 5]' in text
    total_params = sum(p.numel() for p in net.parameters())
    total_line = [line for line in text.splitlines() if line.startswith('Total')][0]
    assert total_line.split()[1:3] == [str(total_params), '2']
    # Hooks are removed afterwards.
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_training_stats_collector_reports_interval_moments():
    from torch_utils import training_stats
    training_stats.report('Test/early', 100.0)  # before the collector exists: not part of its first interval
    collector = training_stats.Collector(regex='Test/.*')
    training_stats.report('Test/a', torch.tensor([1.0, 2.0, 3.0]))
    training_stats.report('Test/a', 4.0)
    training_stats.report('Test/a', float('nan'))  # ignored
    assert training_stats.report0('Test/b', np.array([10.0])) is not None
    training_stats.report('Other/x', 5.0)
    collector.update()
    assert collector.names() == ['Test/a', 'Test/b', 'Test/early']
    assert collector.num('Test/a') == 4 and collector.mean('Test/a') == pytest.approx(2.5)
    assert collector.std('Test/a') == pytest.approx(np.std([1, 2, 3, 4]))
    assert collector['Test/b'] == pytest.approx(10.0)
    assert collector.num('Test/early') == 0 and np.isnan(collector.mean('Test/early'))
    assert collector.num('Other/x') == 0
    stats = collector.as_dict()
    assert stats['Test/a'].num == 4 and stats['Test/a'].mean == pytest.approx(2.5)
    assert set(stats) == {'Test/a', 'Test/b'}

    training_stats.report('Test/a', 7.0)
    collector.update()
    assert collector.num('Test/a') == 1 and collector.mean('Test/a') == 7.0
    assert collector.mean('Test/b') == pytest.approx(10.0)  # keep_previous: last interval's value stays
    fresh = training_stats.Collector(regex='Test/.*', keep_previous=False)
    fresh.update()
    assert fresh.num('Test/a') == 0
