"""The reference roles: what one reference image contributes to the output.

Declared once here. The config's literals, the wire schemas, reference compilation and the
scorers all take the list from this module (docs/architecture.md, Conventions).
"""
from __future__ import annotations

from typing import Literal, get_args

__all__ = ["Role", "ROLES"]

Role = Literal["subject", "style", "background", "lighting", "pose"]
ROLES: tuple[Role, ...] = get_args(Role)
