"""Write one tool's section of docs/benchmarks.md, leaving the other sections untouched."""
from __future__ import annotations

import os
import platform
import re
import tempfile

import torch

BENCH_MD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs', 'benchmarks.md')
_HEADER = '# Benchmarks\n\nEach section is written by the tool named in it; rerun the command to refresh it.\n'


def machine_line() -> str:
    """One line describing where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        if names:
            cpu = names[0]
    except OSError:
        pass
    return (f'{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, '
            f'Python {platform.python_version()}')


def write_section(name: str, markdown: str, path: str = BENCH_MD) -> None:
    """Replace the block between `<!-- bench:name -->` and `<!-- /bench:name -->` (appended if absent)."""
    begin, end = f'<!-- bench:{name} -->', f'<!-- /bench:{name} -->'
    block = f'{begin}\n{markdown.rstrip()}\n{end}'
    text = open(path, encoding='utf-8').read() if os.path.exists(path) else _HEADER
    pattern = re.compile(re.escape(begin) + r'.*?' + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + '\n\n' + block + '\n'
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix='.tmp')
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
        f.write(text)
    os.replace(tmp, path)
