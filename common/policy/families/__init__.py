"""Policy families by name: one module per family, one registration line each.

A family is a :class:`~common.policy.families.base.Family` subclass in its own module here; it
says everything DyRef needs to know about one diffusers pipeline family (see base.py). Adding a
family means writing its module and one ``register(...)`` line below; ``policy.family`` is checked
against this registry when the configuration loads, and no other library or service code branches
on the name.
"""
from __future__ import annotations

from common.policy.families.base import TINY_EXTRA_TARGETS, Cond, Family, PolicyLoadError, to_pil
from common.policy.families.flux2_klein import FluxFamily
from common.policy.families.qwen_image_edit_plus import QwenFamily

__all__ = ["Cond", "Family", "FluxFamily", "QwenFamily", "PolicyLoadError", "TINY_EXTRA_TARGETS", "UnknownFamilyError",
           "family_for", "get", "names", "register", "to_pil"]


class UnknownFamilyError(ValueError):
    """A family name that no module registered."""


_FAMILIES: dict[str, type[Family]] = {}


def register(family: type[Family]) -> type[Family]:
    """Make ``family`` known by its ``name`` (returns it, so it also works as a class decorator)."""
    if not (isinstance(family, type) and issubclass(family, Family)):
        raise TypeError(f"a policy family is a Family subclass, got {family!r}")
    if not family.name:
        raise ValueError(f"{family.__name__} has no name")
    if not family.pipeline_class:
        raise ValueError(f"policy family {family.name} names no diffusers pipeline_class")
    if not family.default_targets:
        # a family without its own targets would otherwise end up adapting some other family's modules
        raise ValueError(f"policy family {family.name} declares no default_targets (its released LoRA targets)")
    known = _FAMILIES.get(family.name)
    if known is not None and known is not family:
        raise ValueError(f"policy family {family.name} is already registered ({known.__module__}.{known.__qualname__})")
    _FAMILIES[family.name] = family
    return family


def get(name: str) -> type[Family]:
    """The family registered as ``name``; UnknownFamilyError (listing the known ones) otherwise."""
    try:
        return _FAMILIES[name]
    except (KeyError, TypeError):
        raise UnknownFamilyError(f"unknown policy family {name!r}; known families: {', '.join(_FAMILIES)}") from None


def names() -> tuple[str, ...]:
    """Every registered family name, in registration order."""
    return tuple(_FAMILIES)


def family_for(name: str, pipe, text_encoder_out_layers=None) -> Family:
    """The family ``name`` wrapped around a built pipeline."""
    return get(name)(pipe, text_encoder_out_layers)


register(FluxFamily)
register(QwenFamily)
