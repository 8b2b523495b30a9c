"""Every code block marked `<!-- example -->` in docs/architecture.md runs as written, each in a fresh process
(an example registers a plug-in; the registries of this test process stay as they are)."""
import os
import re
import subprocess
import sys

import pytest

DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, 'docs', 'architecture.md')
EXAMPLE = re.compile(r'<!-- example -->\s*```python\n(.*?)```', re.S)


def examples() -> list[tuple[str, str]]:
    """(heading of the section, code) of each marked block."""
    text = open(DOC, encoding='utf-8').read()
    found = []
    for match in EXAMPLE.finditer(text):
        heading = re.findall(r'^### (.+)$', text[:match.start()], re.M)
        found.append((heading[-1] if heading else 'top', match.group(1)))
    return found


def test_the_doc_has_the_examples_it_promises():
    headings = [heading for heading, _code in examples()]
    for plug_in in ('criterion', 'KD term', 'embedder', 'metric'):
        assert any(plug_in in h for h in headings), f'docs/architecture.md has no example for adding a {plug_in}'
    for _heading, code in examples():
        assert len(code.strip().splitlines()) <= 30  # short enough to read at a glance
        assert 'assert' in code  # an example checks what it shows


@pytest.mark.parametrize('heading, code', examples(), ids=[h for h, _ in examples()])
def test_example_runs(heading, code, tmp_path):
    script = tmp_path / 'example.py'
    script.write_text(code)
    env = dict(os.environ, HF_HUB_OFFLINE='1')
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, f'the example of "{heading}" failed:\n{proc.stderr[-3000:]}'
