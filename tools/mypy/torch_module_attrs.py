"""mypy plugin: attributes that torch.nn.Module finds through __getattr__ are typed Any.

torch declares ``Module.__getattr__`` as returning ``Tensor | Module``, so every attribute a network keeps in its
own ``__dict__`` (``G.z_dim``, ``G.synthesis``, ``block.conv1``) type-checks as a tensor-or-module: calling it or
reading an int from it is an error. The StyleGAN2-ADA classes are untyped, so Any is the honest type. Attributes
that Module itself declares (``training``, ``parameters``...) keep their types.
"""
from __future__ import annotations

from typing import Callable

from mypy.plugin import AttributeContext, Plugin
from mypy.types import AnyType, Type, TypeOfAny

_MODULE = 'torch.nn.modules.module.Module'


def _any_when_found_by_getattr(ctx: AttributeContext) -> Type:
    if ctx.is_lvalue:
        return ctx.default_attr_type
    return AnyType(TypeOfAny.special_form)


class TorchModuleAttributes(Plugin):
    def get_attribute_hook(self, fullname: str) -> Callable[[AttributeContext], Type] | None:
        cls, _, attr = fullname.rpartition('.')
        info = self.lookup_fully_qualified(cls)
        node = getattr(info, 'node', None)
        mro = getattr(node, 'mro', None)
        if not mro or not any(base.fullname == _MODULE for base in mro):
            return None
        if any(attr in base.names for base in mro):  # declared on the class or a base: keep its type
            return None
        return _any_when_found_by_getattr


def plugin(version: str) -> type[Plugin]:
    return TorchModuleAttributes
