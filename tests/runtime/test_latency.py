"""gan_prune.runtime.latency: timing of G(z, c) calls."""
import gan_prune
from gan_prune.runtime.latency import generator_latency, machine_description


def test_generator_latency_times_each_call_on_both_clocks():
    G = gan_prune.load_network_pkl('builtin:tiny32')['G_ema'].train()
    runs = generator_latency(G, batch=2, repeats=3, warmup=1)
    assert set(runs) == {'wall_ms', 'cpu_ms'}
    assert len(runs['wall_ms']) == len(runs['cpu_ms']) == 3
    assert all(t > 0 for t in runs['wall_ms'] + runs['cpu_ms'])
    assert G.training  # timed in eval mode, mode restored
    assert 'cores' in machine_description() and 'torch' in machine_description()
