"""Write one tool's section of docs/benchmarks.md, leaving the other sections untouched."""
from __future__ import annotations

import os
import platform
import re

BENCH_MD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs', 'benchmarks.md')
_HEADER = '# Benchmarks\n\nEach section is written by the tool named in it; rerun the command to refresh it.\n'


def machine_line() -> str:
    """One line describing where the numbers were measured."""
    from gan_prune.metrics.latency import machine_description
    return f'{machine_description()}, Python {platform.python_version()}'


def write_section(name: str, markdown: str, path: str = BENCH_MD) -> None:
    """Replace the block between `<!-- bench:name -->` and `<!-- /bench:name -->` (appended if absent)."""
    begin, end = f'<!-- bench:{name} -->', f'<!-- /bench:{name} -->'
    block = f'{begin}\n{markdown.rstrip()}\n{end}'
    text = open(path, encoding='utf-8').read() if os.path.exists(path) else (_HEADER if path == BENCH_MD else '')
    pattern = re.compile(re.escape(begin) + r'.*?' + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + '\n\n' + block + '\n'
    from gan_prune.fileio import atomic_write
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: f.write(text), binary=False)
