"""tools/bench_prune.py spreads its latency calls over rounds that visit every network, per image of a batch."""
import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'tools'))
import bench_prune  # noqa: E402


def test_latency_calls_are_interleaved_over_rounds(monkeypatch):
    calls = []

    def fake_timed_calls(run, z_dim, repeats, batch):
        calls.append((run, repeats))
        return [run * 0.01] * repeats, [run * 0.001] * repeats

    monkeypatch.setattr(bench_prune, 'timed_calls', fake_timed_calls)
    out = bench_prune.latencies({'teacher': 20, 0.5: 2, 0.8: 1}, 8, repeats=7, threads=1, batch=2, rounds=3)
    # Every round visits the teacher and both students; 7 student calls split 3 + 2 + 2, the teacher's 3 as 1 + 1 + 1.
    assert calls == [(20, 1), (2, 3), (1, 3), (20, 1), (2, 2), (1, 2), (20, 1), (2, 2), (1, 2)]
    assert out == {'teacher': (0.1, 0.01), 0.5: (0.01, 0.001), 0.8: (0.005, 0.0005)}  # per image of the batch


def test_block_times_cover_every_block_and_leave_nothing_behind():
    import torch
    from training import networks
    torch.manual_seed(0)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=128, channel_max=16)).eval().requires_grad_(False)
    times = bench_prune.block_times(G, repeats=3)
    assert list(times) == ['mapping', 'b4', 'b8', 'b16'] and all(t > 0 for t in times.values())
    assert 'forward' not in G.mapping.__dict__ and 'forward' not in G.synthesis.b8.__dict__


@pytest.mark.slow
def test_onnxruntime_runner_renders_what_eager_renders_and_depends_on_z(tmp_path):
    import torch
    from training import networks
    torch.manual_seed(0)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=128, channel_max=16)).eval().requires_grad_(False)
    runner = bench_prune.OnnxRuntimeRunner(G, str(tmp_path / 'g.onnx'))
    assert runner.max_error < 1e-4
    z = torch.randn([3, 8])
    with torch.no_grad():
        expected = G(z, None, noise_mode='const', force_fp32=True)
    assert float((runner(z) - expected).abs().max()) < 1e-4
    assert float((runner(z) - runner(torch.randn([3, 8]))).abs().max()) > 1e-2


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec('openvino') is None, reason='openvino is not installed')
def test_openvino_runner_reuses_the_onnx_export_and_renders_what_eager_renders(tmp_path, monkeypatch):
    import torch
    from training import networks
    torch.manual_seed(0)
    G = networks.Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=128, channel_max=16)).eval().requires_grad_(False)
    ort_runner, ort_note = bench_prune.build_runner('onnxruntime', G, str(tmp_path), 'teacher')

    def no_second_export(*args, **kwargs):
        raise AssertionError('the network was exported twice')

    monkeypatch.setattr(torch.onnx, 'export', no_second_export)
    runner, note = bench_prune.build_runner('openvino', G, str(tmp_path), 'teacher')
    assert runner.max_error < 1e-4 and note.startswith('max |OpenVINO - eager| ')
    assert ort_note.startswith('max |ONNX Runtime - eager| ')
    z = torch.randn([3, 8])
    with torch.no_grad():
        expected = G(z, None, noise_mode='const', force_fp32=True)
    assert float((runner(z) - expected).abs().max()) < 1e-4
    assert float((runner(z) - runner(torch.randn([3, 8]))).abs().max()) > 1e-2
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):  # one compiled model per thread count, with that many threads
            torch.set_num_threads(threads)
            assert float((runner(z) - expected).abs().max()) < 1e-4
            assert runner.sessions[threads].compiled.get_property('INFERENCE_NUM_THREADS') == threads
    finally:
        torch.set_num_threads(previous)


def test_decision_lines_compare_the_kernels_with_the_best_standard_backend():
    results = {'eager': {(1, 4): {'teacher': (9, 0.8), 0.8: (9, 0.040)}},
               'onnxruntime': {(1, 4): {'teacher': (9, 0.6), 0.8: (9, 0.030)}},
               'cpu-kernels': {(1, 4): {'teacher': (9, 0.4), 0.8: (9, 0.015)}}}
    lines = bench_prune.decision_lines(results)
    assert lines[1] == ('- r = 0.8, 1 thread(s), batch 4: cpu-kernels 2.00x faster than the best standard backend '
                        'here (onnxruntime); teacher / student on cpu-kernels 26.7x.')
    assert bench_prune.decision_lines({'eager': results['eager']}) == []


def test_openvino_counts_as_a_standard_backend_in_the_decision_lines():
    results = {'eager': {(1, 4): {'teacher': (9, 0.8), 0.8: (9, 0.040)}},
               'onnxruntime': {(1, 4): {'teacher': (9, 0.6), 0.8: (9, 0.030)}},
               'openvino': {(1, 4): {'teacher': (9, 0.5), 0.8: (9, 0.020)}},
               'cpu-kernels': {(1, 4): {'teacher': (9, 0.4), 0.8: (9, 0.015)}}}
    assert bench_prune.decision_lines(results)[1].startswith(
        '- r = 0.8, 1 thread(s), batch 4: cpu-kernels 1.33x faster than the best standard backend here (openvino)')


def test_a_missing_openvino_stops_the_benchmark_in_one_line_before_anything_runs(monkeypatch):
    monkeypatch.setitem(sys.modules, 'openvino', None)
    monkeypatch.setattr(bench_prune, 'run_prune', lambda *a: pytest.fail('ran before checking the backends'))
    monkeypatch.setattr(sys, 'argv', ['bench_prune.py', '--backend', 'eager,openvino', '--no-write'])
    with pytest.raises(SystemExit, match='^the openvino backend needs the openvino package: pip install openvino$'):
        bench_prune.main()
