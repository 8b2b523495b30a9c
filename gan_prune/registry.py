"""One registry idiom for every kind of plug-in: criteria, mask providers, KD terms, DiME estimators, feature
networks, metrics, inference backends.

A plug-in is a class (or factory) registered under a name, with the facts its caller needs declared next to it
(``needs_mask=True``, ``trainable=True``, ...) instead of special cases in the caller::

    CRITERIA = Registry('criterion')

    @CRITERIA.register('l1-out', needs_samples=False)
    class L1Out: ...

    CRITERIA.names()                 # ['l1-out', ...]  (CLI choices come from here)
    CRITERIA.info('l1-out')          # {'needs_samples': False}
    CRITERIA.build('l1-out', **kw)   # L1Out(**kw)

Specs such as ``'clip:RN50=15'`` are parsed by the caller; the registry only maps a name to a factory.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Generic, Iterator, TypeVar

from gan_prune.errors import GanPruneError

T = TypeVar('T')


class Registry(Generic[T]):
    """Names to factories, with declared facts; unknown names give one line listing the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._info: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **info: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register a class or factory under ``name``; ``info`` holds what the caller may ask."""
        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f'{self.kind} {name!r} is registered twice')
            self._factories[name] = factory
            self._info[name] = dict(info)
            return factory
        return decorate

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a plug-in registered for a while, e.g. by a test); unknown names are ignored."""
        self._factories.pop(name, None)
        self._info.pop(name, None)

    def names(self) -> list[str]:
        return list(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``; one clear line (with a suggestion) when there is none."""
        try:
            return self._factories[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._factories, n=1)
            hint = f'; did you mean {close[0]!r}?' if close else ''
            raise GanPruneError(f'unknown {self.kind} {name!r}{hint} (known: {", ".join(self._factories)})') from None

    def info(self, name: str) -> dict[str, Any]:
        """The facts declared when ``name`` was registered (a copy)."""
        self.get(name)
        return dict(self._info[name])

    def build(self, name: str, *args: Any, **kwargs: Any) -> T:
        return self.get(name)(*args, **kwargs)
