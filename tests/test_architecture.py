"""The import contract: packages of gan_prune depend one way, down the layers below, and never in a cycle.

Every import counts, also the ones inside functions (a lazy import is still a dependency). A failure names the
file, the line and the import. docs/architecture.md explains the layers; change both together.
"""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass

import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
PACKAGE_DIR = os.path.normpath(os.path.join(ROOT, 'gan_prune'))
API = '(package API)'  # gan_prune/__init__.py: load_network_pkl, save_network_pkl

# Bottom to top. A component may import itself and any component of a lower layer; components of one layer are
# independent of each other.
LAYERS: list[tuple[str, ...]] = [
    ('errors', 'defaults', 'assets'),
    ('fileio', 'registry', 'compat'),
    ('core',),
    ('io', 'weights'),
    (API,),
    ('data', 'features', 'generator'),
    ('prune', 'metrics'),
    ('distill',),
    ('runtime',),
    ('generate',),
    ('demo',),
    ('cli',),
    ('__main__',),
]
LAYER_OF = {component: index for index, layer in enumerate(LAYERS) for component in layer}


@dataclass(frozen=True)
class Import:
    source: str  # dotted module name of the importing file
    target: str  # dotted module name imported
    path: str
    line: int

    def where(self) -> str:
        return f'{os.path.relpath(self.path, ROOT)}:{self.line} imports {self.target}'


def module_name(path: str, package_dir: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(package_dir))[:-len('.py')].split(os.sep)
    return '.'.join(rel[:-1] if rel[-1] == '__init__' else rel)


def is_module(dotted: str, package_dir: str = PACKAGE_DIR) -> bool:
    base = os.path.join(os.path.dirname(package_dir), *dotted.split('.'))
    return os.path.isfile(base + '.py') or os.path.isfile(os.path.join(base, '__init__.py'))


def imports_of(path: str, package_dir: str) -> list[Import]:
    """Every gan_prune module that the file at `path` imports, anywhere in it."""
    source = module_name(path, package_dir)
    package = source if path.endswith('__init__.py') else source.rpartition('.')[0]
    found = []
    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read(), path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')[:len(package.split('.')) - (node.level - 1)]
                base = '.'.join(anchor + ([base] if base else []))
            # `from gan_prune.x import y` imports the module gan_prune.x.y when there is one.
            targets = [f'{base}.{alias.name}' if is_module(f'{base}.{alias.name}', package_dir) else base
                       for alias in node.names]
        else:
            continue
        found += [Import(source, t, path, node.lineno) for t in targets if t == 'gan_prune' or t.startswith('gan_prune.')]
    return found


def all_imports(package_dir: str = PACKAGE_DIR) -> list[Import]:
    result = []
    for folder, _dirs, files in os.walk(package_dir):
        result += [imp for name in sorted(files) if name.endswith('.py')
                   for imp in imports_of(os.path.join(folder, name), package_dir)]
    return result


def component(dotted: str) -> str:
    parts = dotted.split('.')
    return API if len(parts) == 1 else parts[1]


def layering_violations(imports: list[Import]) -> list[str]:
    problems = []
    for imp in imports:
        src, dst = component(imp.source), component(imp.target)
        if src == dst:
            continue
        for name in (src, dst):
            if name not in LAYER_OF:
                problems.append(f'{imp.where()}: {name!r} is in no layer; add it to LAYERS in tests/test_architecture.py '
                                f'and to docs/architecture.md')
                break
        else:
            if LAYER_OF[dst] > LAYER_OF[src]:
                problems.append(f'{imp.where()}: upward import, {src!r} sits below {dst!r}')
            elif LAYER_OF[dst] == LAYER_OF[src]:
                problems.append(f'{imp.where()}: {src!r} and {dst!r} share a layer and must not import each other')
    return problems


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph (as a closed path), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def module_edges(imports: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target != imp.source and not imp.source.startswith(imp.target + '.'):  # a module's own package
            edges.setdefault(imp.source, set()).add(imp.target)
    return edges


def test_packages_import_only_downwards():
    problems = layering_violations(all_imports())
    assert not problems, 'imports against the layers of docs/architecture.md:\n' + '\n'.join(problems)


def test_no_import_cycle_between_modules():
    cycle = find_cycle(module_edges(all_imports()))
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle or [])


def test_every_package_and_top_level_module_has_a_layer():
    entries = {name[:-3] if name.endswith('.py') else name for name in os.listdir(PACKAGE_DIR)
               if not name.startswith(('_', '.')) and (name.endswith('.py') or is_module(f'gan_prune.{name}'))}
    assert sorted(entries - set(LAYER_OF)) == []


# The checker itself: it must catch what it is there to catch.

def _write(tmp_path, rel, text):
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_checker_reports_an_upward_import_with_file_and_line(tmp_path):
    for rel, text in [('__init__.py', ''), ('demo/__init__.py', ''), ('io/__init__.py', ''),
                      ('io/pickles.py', 'def f():\n    from gan_prune.demo import x\n'), ('prune/__init__.py', ''),
                      ('prune/a.py', 'from . import b\nfrom gan_prune import metrics\n'),
                      ('prune/b.py', 'from gan_prune.prune import a\n'), ('metrics/__init__.py', '')]:
        _write(tmp_path, 'gan_prune/' + rel, text)
    imports = all_imports(str(tmp_path / 'gan_prune'))
    problems = layering_violations(imports)
    assert any('gan_prune/io/pickles.py:2 imports gan_prune.demo' in p and 'upward' in p for p in problems)
    assert any("'prune' and 'metrics' share a layer" in p for p in problems)
    assert find_cycle(module_edges(imports)) in (['gan_prune.prune.a', 'gan_prune.prune.b', 'gan_prune.prune.a'],
                                                  ['gan_prune.prune.b', 'gan_prune.prune.a', 'gan_prune.prune.b'])


@pytest.mark.parametrize('dotted, expected', [('gan_prune', API), ('gan_prune.io.pickles', 'io'), ('gan_prune.core', 'core')])
def test_component_names(dotted, expected):
    assert component(dotted) == expected
