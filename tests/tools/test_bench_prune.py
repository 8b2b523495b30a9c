"""tools/bench_prune.py spreads its latency calls over rounds that visit every network."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'tools'))
import bench_prune  # noqa: E402


def test_latency_calls_are_interleaved_over_rounds(monkeypatch):
    calls = []

    def fake_timed_calls(G, repeats):
        calls.append((G, repeats))
        return [G * 0.01] * repeats, [G * 0.001] * repeats

    monkeypatch.setattr(bench_prune, 'timed_calls', fake_timed_calls)
    out = bench_prune.latencies(20, {0.5: 2, 0.8: 1}, repeats=7, threads=1, rounds=3)
    # Every round visits the teacher and both students; 7 student calls split 3 + 2 + 2, the teacher's 3 as 1 + 1 + 1.
    assert calls == [(20, 1), (2, 3), (1, 3), (20, 1), (2, 2), (1, 2), (20, 1), (2, 2), (1, 2)]
    assert out == {'teacher': (0.2, 0.02), 0.5: (0.02, 0.002), 0.8: (0.01, 0.001)}


def test_block_times_cover_every_block_without_changing_the_path_and_leave_nothing_behind(monkeypatch):
    import torch
    from torch_utils.ops import narrow_conv
    from training import networks
    torch.manual_seed(0)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=128, channel_max=16)).eval().requires_grad_(False)
    direct = networks._narrow_block_forward
    times = bench_prune.block_times(G, repeats=3)
    assert list(times) == ['mapping', 'b4', 'b8', 'b16'] and all(t > 0 for t in times.values())
    assert networks._narrow_block_forward is direct
    assert 'forward' not in G.mapping.__dict__ and 'forward' not in G.synthesis.b8.__dict__
    if narrow_conv.kernels() is not None:  # the blocks took the direct path while timed, as without timing
        calls = []
        monkeypatch.setattr(networks, '_narrow_block_forward', lambda b, *a: calls.append(b) or direct(b, *a))
        bench_prune.block_times(G, repeats=2)
        assert len(calls) == 3 * 3  # three blocks, warm-up plus two calls
