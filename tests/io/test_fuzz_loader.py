"""Fuzz test of the safe loader: mutated network pickles never execute anything, never kill the process, and
always end in a loaded network or one GanPruneError line.

The run happens in a child process (tests/io/fuzz_loader.py), so a crash fails this test instead of ending the
test session, and leaves the input that caused it. GAN_PRUNE_FUZZ_EXAMPLES sets the number of inputs (default
300; CI uses more).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ_SCRIPT = Path(__file__).with_name('fuzz_loader.py')
DEFAULT_EXAMPLES = 300


def fuzz_examples() -> int:
    value = os.environ.get('GAN_PRUNE_FUZZ_EXAMPLES', str(DEFAULT_EXAMPLES))
    try:
        return max(int(value), 1)
    except ValueError:
        pytest.fail(f'GAN_PRUNE_FUZZ_EXAMPLES must be a whole number, got {value!r}')


@pytest.mark.slow
def test_mutated_network_pickles_load_or_are_refused_in_one_line(tmp_path):
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        if os.environ.get('CI'):
            pytest.fail("hypothesis is missing; install the test extras: pip install -e '.[test]'")
        pytest.skip("hypothesis is not installed (pip install -e '.[test]')")
    examples = fuzz_examples()
    report_path = tmp_path / 'report.json'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, str(FUZZ_SCRIPT), '--examples', str(examples), '--workdir',
                           str(tmp_path / 'work'), '--report', str(report_path)],
                          env=env, capture_output=True, text=True, timeout=60 + examples)
    crashed_on = tmp_path / 'work' / 'current.pkl'
    assert done.returncode >= 0, (f'the fuzz process died with signal {-done.returncode}; the input is '
                                  f'{crashed_on}\n{done.stderr[-3000:]}')
    assert report_path.is_file(), done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report['exec_calls'] == []
    assert report['failure_count'] == 0, json.dumps(report['failures'][:3], indent=1)
    assert report['examples'] == examples
    assert set(report['counts']) <= {'loaded', 'refused'}
    # The mutations must exercise both outcomes, or the test proves little.
    assert report['counts'].get('refused', 0) > 0 and report['counts'].get('loaded', 0) > 0
    assert done.returncode == 0


def test_the_fuzz_driver_detects_execution(tmp_path, monkeypatch):
    # The recorders this test relies on: an exec-like call inside a load is seen and refused.
    import importlib.util
    spec = importlib.util.spec_from_file_location('fuzz_loader', FUZZ_SCRIPT)
    fuzz_loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz_loader)
    calls = []
    with fuzz_loader.recording(calls):
        with pytest.raises(PermissionError):
            os.system('echo never')
        with pytest.raises(PermissionError):
            eval('1 + 1')  # noqa: S307
    assert len(calls) == 2 and calls[0].startswith('os.system') and calls[1].startswith('builtins.eval')
    assert os.system is not None and eval('1 + 1') == 2  # restored afterwards
