"""tools/bench_table.py: resumable result rows, the table and the plot (on synthetic rows; the runs are slow)."""
import argparse
import json
import os
import sys

import PIL.Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'tools'))
import bench_table  # noqa: E402


def _row(rate, method, seed, fd, seconds=10.0):
    keys = ('fid', 'kid', 'precision', 'recall')
    vs = {f'{k}_effnet-lite0': v for k, v in zip(keys, (fd, fd / 1000, 0.5, 0.4))}
    return dict(rate=rate, method=method, seed=seed, kimg=2.0, seconds=seconds, vs_data=vs,
                vs_teacher={k: v for k, v in vs.items() if k.startswith(('fid', 'kid'))},
                params=1000, macs=2_000_000, latency_ms=3.0)


def test_rows_survive_a_torn_line_and_make_a_table(tmp_path):
    path = tmp_path / 'results.jsonl'
    rows = [_row(0.0, 'teacher', 0, 10.0, 0.0), _row(0.9, 'pruned', 0, 40.0, 0.0),
            _row(0.9, 'nickel-dime', 0, 20.0), _row(0.9, 'nickel-dime', 1, 22.0), _row(0.9, 'none', 0, 30.0)]
    for r in rows:
        bench_table.append_row(str(path), r)
    with open(path, 'a') as f:
        f.write(json.dumps(_row(0.9, 'cagan', 0, 1.0))[:40])  # interrupted while writing
    done = bench_table.load_done(str(path))
    assert set(done) == {(r['rate'], r['method'], r['seed']) for r in rows}
    args = argparse.Namespace(outdir='runs/table', rates='0.9', kimg=2.0, batch=16, seeds='0,1', num_gen=1300,
                              teacher='builtin:teacher', prune_samples=200, data_images=5000)
    md = bench_table.table_markdown(list(done.values()), args, [0.9], ['none', 'nickel-dime'], [0, 1], 60.0)
    lines = [line for line in md.splitlines() if line.startswith('| ')]
    assert len(lines) == 1 + 4  # header, teacher, pruned, two methods
    nd = next(line for line in lines if 'NICKEL & DiME' in line)
    assert '21.00 ± 1.00' in nd  # mean and spread over the two seeds
    assert '--seeds 0,1' in md
    bench_table.plot(list(done.values()), [0.9], ['none', 'nickel-dime'], str(tmp_path / 'plot.png'))
    assert PIL.Image.open(tmp_path / 'plot.png').size[0] > 400
