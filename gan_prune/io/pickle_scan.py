"""A pass over a pickle's opcode stream, before anything is unpickled, that bounds what unpickling may cost.

The scan simulates the unpickler's stack with one small node per object (its nesting depth and the number of
objects it expands to when read as a tree) and refuses, with one line, a stream that

- nests objects deeper than `ScanLimits.max_depth` (a 200,000-deep tuple would crash later code that walks it),
- opens more than `max_depth` MARKs at once,
- reuses memo entries so that an object expands to more than `max_expanded` objects ("billion laughs": a few
  kilobytes that describe 10**9 references make any later walk spin),
- declares a string, bytes or buffer longer than what is left of the file (so nothing is allocated for it).

Mutating an object after it was placed inside another one (through the memo) is not traced back to its
containers; `check_loaded_value` walks the loaded result with the same bounds and catches what the scan missed.
"""
from __future__ import annotations

import dataclasses
import io
import os
import pickle
import pickletools
import re
from typing import Any, BinaryIO

from gan_prune.errors import GanPruneError


@dataclasses.dataclass(frozen=True)
class ScanLimits:
    """Bounds for one pickle; the defaults leave ample room for every StyleGAN2-ADA network pickle."""

    max_depth: int = 100
    max_expanded: int = 2_000_000


DEFAULT_LIMITS = ScanLimits()


class PickleScanError(GanPruneError):
    """The opcode stream is refused before unpickling (too deep, too expansive, or a forged length)."""


class _Node:
    """One simulated object: how deeply it nests, and how many objects it expands to as a tree."""

    __slots__ = ('depth', 'size')

    def __init__(self, depth: int = 0, size: int = 1):
        self.depth = depth
        self.size = size


_MUTATING = {'APPEND', 'APPENDS', 'SETITEM', 'SETITEMS', 'ADDITEMS', 'BUILD'}
_MEMO_PUT = {'PUT', 'BINPUT', 'LONG_BINPUT'}
_MEMO_GET = {'GET', 'BINGET', 'LONG_BINGET'}
_IGNORED = {'PROTO', 'FRAME'}
# pickletools' message for a length that runs past the end of the data.
_SHORT_READ = re.compile(r'expected (\d+) bytes in a (\w+), but only (\d+) remain')


@dataclasses.dataclass
class ScanReport:
    """What the scan saw: opcode count, the deepest nesting and the largest tree expansion."""

    opcodes: int = 0
    max_depth: int = 0
    max_expanded: int = 0


class BoundedReader(io.RawIOBase):
    """A read-only view of `f` that never asks it for more bytes than the file has left.

    Python's buffered readers allocate the full requested size before reading, so a forged length in a
    32-byte file could otherwise ask for gigabytes.
    """

    def __init__(self, f: BinaryIO):
        super().__init__()
        self._f = f
        self._start = f.tell()
        self._end = f.seek(0, os.SEEK_END)
        f.seek(self._start)

    @property
    def size(self) -> int:
        return self._end - self._start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._f.tell() - self._start

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            offset += self._start
        elif whence == os.SEEK_END:
            offset, whence = self._end + offset, os.SEEK_SET
        return self._f.seek(offset, whence) - self._start

    def remaining(self) -> int:
        return max(self._end - self._f.tell(), 0)

    def read(self, size: int = -1) -> bytes:
        left = self.remaining()
        return self._f.read(left if size is None or size < 0 else min(size, left))

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast('B')
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        left = self.remaining()
        return self._f.readline(left if size is None or size < 0 else min(size, left))


def scan_pickle(f: BinaryIO, limits: ScanLimits = DEFAULT_LIMITS) -> ScanReport:
    """Check the pickle stream at f's position (up to its STOP) against `limits`; f is left where it was.

    Raises PickleScanError for a stream that is refused, pickle.UnpicklingError or EOFError for one that is
    simply damaged or truncated (the loader turns those into its own one-line messages).
    """
    start = f.tell()
    # An in-memory stream never hands out more than it holds; a file gets a reader that asks for no more.
    reader = f if isinstance(f, (BoundedReader, io.BytesIO)) else BoundedReader(f)
    try:
        return _simulate(reader, limits)
    finally:
        f.seek(start)


def _simulate(reader: Any, limits: ScanLimits) -> ScanReport:
    # reader: any object with read()/readline() (a BytesIO or the bounded file reader)
    report = ScanReport()
    stack: list[_Node] = []
    marks: list[int] = []
    memo: dict[Any, _Node] = {}
    position = 0
    ops = pickletools.genops(reader)
    while True:
        try:
            opcode, arg, at = next(ops)
            position = at if at is not None else position
        except StopIteration:
            raise EOFError('the pickle ends early (no STOP opcode)') from None
        except ValueError as e:
            raise _describe_stream_error(e, position) from None
        report.opcodes += 1
        name = opcode.name
        if name == 'STOP':
            return report
        if name in _IGNORED:
            continue
        if name == 'MARK':
            marks.append(len(stack))
            if len(marks) > limits.max_depth:
                raise PickleScanError(f'the pickle opens more than {limits.max_depth} nested MARKs (at byte '
                                      f'{position}); it is forged or corrupt, not a network pickle')
            continue
        if name in _MEMO_PUT or name == 'MEMOIZE':
            if not stack:
                raise pickle.UnpicklingError(f'memo store on an empty stack at byte {position}')
            memo[len(memo) if name == 'MEMOIZE' else arg] = stack[-1]
            continue
        if name in _MEMO_GET:
            if arg not in memo:
                raise pickle.UnpicklingError(f'memo key {arg!r} read before it was stored (byte {position})')
            stack.append(memo[arg])
            continue
        if name == 'DUP':
            _require(stack, 1, position)
            stack.append(stack[-1])
            continue
        if name == 'POP':
            if marks and marks[-1] == len(stack):
                marks.pop()
            else:
                _require(stack, 1, position)
                stack.pop()
            continue
        pushed = _apply(name, opcode, stack, marks, position)
        for node in pushed:
            _check_node(node, limits, position, report)
            stack.append(node)


def _apply(name: str, opcode: pickletools.OpcodeInfo, stack: list[_Node], marks: list[int],
           position: int) -> list[_Node]:
    """Pop what `opcode` consumes and return the nodes it pushes."""
    before = opcode.stack_before
    items: list[_Node] = []
    if pickletools.markobject in before:
        if not marks:
            raise pickle.UnpicklingError(f'{name} without a MARK at byte {position}')
        mark = marks.pop()
        if mark > len(stack):
            raise pickle.UnpicklingError(f'{name} finds a damaged stack at byte {position}')
        items = stack[mark:]
        del stack[mark:]
        below = before.index(pickletools.markobject)
    else:
        below = len(before)
    _require(stack, below, position)
    consumed = stack[len(stack) - below:] if below else []
    if below:
        del stack[len(stack) - below:]
    consumed = consumed + items
    if not opcode.stack_after:
        return []
    if name in _MUTATING:
        container, added = consumed[0], consumed[1:]
        for child in added:
            container.depth = max(container.depth, child.depth + 1)
            container.size += child.size
        return [container]
    node = _Node()
    for child in consumed:
        node.depth = max(node.depth, child.depth + 1)
        node.size += child.size
    return [node] + [_Node() for _ in opcode.stack_after[1:]]


def _check_node(node: _Node, limits: ScanLimits, position: int, report: ScanReport) -> None:
    report.max_depth = max(report.max_depth, node.depth)
    report.max_expanded = max(report.max_expanded, node.size)
    if node.depth > limits.max_depth:
        raise PickleScanError(f'the pickle nests objects more than {limits.max_depth} levels deep (at byte '
                              f'{position}); it is forged or corrupt, not a network pickle')
    if node.size > limits.max_expanded:
        raise PickleScanError(f'the pickle reuses stored objects so that one expands to more than '
                              f'{limits.max_expanded:,} objects (at byte {position}); it is forged or corrupt, '
                              f'not a network pickle')


def _require(stack: list[_Node], count: int, position: int) -> None:
    if len(stack) < count:
        raise pickle.UnpicklingError(f'the stack runs empty at byte {position}')


def _describe_stream_error(error: ValueError, position: int) -> Exception:
    text = str(error)
    short = _SHORT_READ.search(text)
    if short:
        declared, kind, left = int(short.group(1)), short.group(2), int(short.group(3))
        if declared > left + 1024:
            return PickleScanError(f'the pickle declares a {declared:,}-byte {kind} after byte {position}, but '
                                   f'only {left:,} bytes follow; it is truncated or forged (nothing was allocated '
                                   f'for it)')
        return EOFError(f'the pickle ends early (truncated) after byte {position}')
    if 'exhausted' in text or 'no newline' in text:
        return EOFError(f'the pickle ends early (truncated) after byte {position}')
    return pickle.UnpicklingError(f'{text} (after byte {position})')


# ------------------------------------------------------------------------------------------------------------
# After loading


def check_loaded_value(value: Any, limits: ScanLimits = DEFAULT_LIMITS) -> None:
    """Walk a freshly unpickled value without recursion and refuse one nested deeper than `limits.max_depth`
    or expanding (as a tree) to more than `limits.max_expanded` objects.

    Containers, object __dict__s and torch Module registries are followed; a reference back to an object on
    the current path (a cycle) is not expanded again. Tensors and arrays are leaves.
    """
    visited = 0
    on_path: set[int] = set()
    # (object, depth, is_exit): an exit entry removes the object from the path once its children are done.
    pending: list[tuple[Any, int, bool]] = [(value, 0, False)]
    while pending:
        obj, depth, is_exit = pending.pop()
        if is_exit:
            on_path.discard(id(obj))
            continue
        visited += 1
        if visited > limits.max_expanded:
            raise PickleScanError(f'the loaded pickle expands to more than {limits.max_expanded:,} objects '
                                  f'(stored objects are reused over and over); it is forged or corrupt')
        if depth > limits.max_depth:
            raise PickleScanError(f'the loaded pickle nests objects more than {limits.max_depth} levels deep; '
                                  f'it is forged or corrupt')
        children = _children(obj)
        if children is None or id(obj) in on_path:
            continue
        on_path.add(id(obj))
        pending.append((obj, depth, True))
        pending.extend((child, depth + 1, False) for child in children)


def _children(obj: Any) -> list[Any] | None:
    if isinstance(obj, (str, bytes, bytearray, int, float, complex, bool, type(None))):
        return None
    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
        if type(obj) is not dict:  # EasyDict, stubs: their attributes too
            children.extend(getattr(obj, '__dict__', {}).values())
        return children
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if type(obj).__module__.startswith(('torch', 'numpy')) and not hasattr(obj, '_modules'):
        return None  # tensors, arrays, dtypes, devices: leaves
    state = getattr(obj, '__dict__', None)
    return list(state.values()) if isinstance(state, dict) else None
