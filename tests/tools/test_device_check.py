"""tools/device_check.sh / device_check.py: the step runner, the summary, and the whole plan as a CPU dry run."""
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, 'tools'))
import device_check  # noqa: E402


def _summary(out):
    with open(os.path.join(out, device_check.SUMMARY_FILE), encoding='utf-8') as f:
        return json.load(f)


def test_steps_record_ok_failed_timeout_and_skipped(tmp_path):
    checker = device_check.Checker(str(tmp_path), dict(device_check.DRY), dry_run=True, budget=30,
                                   configs=['plain'])
    python = sys.executable
    assert checker.run('good', [python, '-c', f'print("{device_check.RESULT_PREFIX}" + \'{{"x": 1}}\')'],
                       20)['result'] == {'x': 1}
    failed = checker.run('bad', [python, '-c', 'import sys; print("what went wrong"); sys.exit(3)'], 20)
    assert failed['status'] == 'failed' and failed['returncode'] == 3 and 'what went wrong' in failed['tail']
    assert checker.run('slow', [python, '-c', 'import time; time.sleep(60)'], 6)['status'] == 'timeout'
    checker.deadline = 0  # the budget is spent: later steps are not started
    assert checker.run('late', [python, '-c', 'pass'], 20)['status'] == 'skipped'
    saved = _summary(tmp_path)
    assert [saved['steps'][k]['status'] for k in ('good', 'bad', 'slow', 'late')] == \
        ['ok', 'failed', 'timeout', 'skipped']
    assert saved['environment']['torch'] == torch.__version__


def test_ratios_compare_our_ops_with_pytorch_and_full_with_plain():
    timings = [dict(config=c, requested_ops=o, sec_per_kimg=s) for c, o, s in
               [('full', 'triton', 12.0), ('full', 'torch', 18.0), ('plain', 'triton', 8.0), ('plain', 'torch', 10.0)]]
    ratios = device_check.ratios(timings)
    assert ratios['full: torch ops / our ops (sec/kimg)'] == 1.5
    assert ratios['plain: torch ops / our ops (sec/kimg)'] == 1.25
    assert ratios['full objective / plain training, triton ops'] == 1.5
    assert 'kd-none: torch ops / our ops (sec/kimg)' not in ratios  # not measured, not invented


def test_bad_configs_and_missing_gpu_are_one_line_errors(tmp_path, capsys):
    assert device_check.main([str(tmp_path / 'a'), '--configs', 'fast']) == 2
    assert 'unknown configuration' in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert device_check.main([str(tmp_path / 'b')]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and '--dry-run' in err
        assert _summary(tmp_path / 'b')['ok'] is False


@pytest.mark.slow
def test_dry_run_of_the_whole_plan_on_the_cpu(tmp_path):
    """The shell script end to end, tiny and on the CPU, for one configuration with both kinds of ops."""
    out = tmp_path / 'out'
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out))
    proc = subprocess.run(['bash', os.path.join(REPO, 'tools', 'device_check.sh'), '--dry-run', '--configs', 'plain'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    summary = _summary(out)
    assert proc.returncode == 0, proc.stdout + proc.stderr + json.dumps(summary['steps'], indent=1)
    assert summary['dry_run'] is True and summary['ok'] is True
    assert set(summary['steps']) == {'env', 'tests', 'prepare', 'time:plain:triton', 'time:plain:torch'}
    assert all(step['status'] == 'ok' for step in summary['steps'].values())
    assert 'test_cuda_steps_match_the_cpu_run_of_the_same_seed' in summary['steps']['tests']['tail'] or \
        'tests collected' in summary['steps']['tests']['tail']
    assert [t['requested_ops'] for t in summary['timings']] == ['triton', 'torch']
    for timing in summary['timings']:
        assert timing['sec_per_kimg'] > 0 and timing['images_per_s'] > 0 and timing['losses_finite']
        assert timing['ops'] == 'torch'  # CPU tensors never take the fused kernels by default
    assert 'plain: torch ops / our ops (sec/kimg)' in summary['ratios']
    assert 'configuration' in proc.stdout and 'sec/kimg' in proc.stdout
    assert (out / 'pip-install.log').read_text().startswith('dry run')
