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
