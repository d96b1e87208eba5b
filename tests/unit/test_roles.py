"""The reference roles are declared once (common/roles.py); every other list of them is taken from it."""
from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from common.config import RewardComponent
from common.roles import ROLES
from common.schemas import GenerateReference, Reference

ROOT = Path(__file__).resolve().parents[2]
# docs/architecture.md: "N typed reference images (subjects, style, background, lighting, pose)"
KNOWN = {"subject", "style", "background", "lighting", "pose"}


def test_the_roles_are_the_five_of_the_paper():
    assert set(ROLES) == KNOWN and len(ROLES) == 5


def _spellings(path: Path) -> list[int]:
    """Lines where a tuple, list, set or subscript (a Literal) spells all five roles itself."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        elts = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else None
        if elts is None:
            continue
        words = {e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        if KNOWN <= words:
            out.append(node.lineno)
    return sorted(out)


def test_no_module_but_roles_spells_the_list():
    found = {}
    for top in ("common", "services", "dyref"):
        for path in (ROOT / top).rglob("*.py"):
            lines = _spellings(path)
            if lines:
                found[str(path.relative_to(ROOT))] = lines
    assert set(found) == {"common/roles.py"}, found


def test_the_check_above_sees_a_literal_and_a_tuple(tmp_path):
    p = tmp_path / "probe.py"
    p.write_text('from typing import Literal\nR = Literal["subject", "style", "background", "lighting", "pose", "none"]\n'
                 'x = 1\nT = ("pose", "lighting", "background", "style", "subject")\nS = ("subject", "style")\n')
    assert _spellings(p) == [2, 4]


@pytest.mark.parametrize("role", sorted(KNOWN))
def test_every_boundary_takes_each_role(role):
    assert Reference(role=role, image=b"x").role == role
    assert GenerateReference(role=role, image="eA==").role == role
    assert RewardComponent(name="r", scorer="references", against=role, roles=[role]).against == role


def test_every_boundary_refuses_an_unknown_role():
    with pytest.raises(ValidationError):
        Reference(role="colour", image=b"x")
    with pytest.raises(ValidationError, match="subject, style, background, lighting, pose"):
        GenerateReference(role="colour", image="eA==")
    with pytest.raises(ValidationError):
        RewardComponent(name="r", scorer="references", roles=["colour"])
    # against also takes "target" and "none", nothing else
    assert set(typing.get_args(RewardComponent.model_fields["against"].annotation)) == KNOWN | {"target", "none"}


def test_role_subsets_are_roles():
    from common.rewards.judge import SENT_ROLES
    from common.rewards.per_reference import SCORED_ROLES
    from common.synthetic.evaluation import SCORED_ROLES as EVAL_ROLES
    from common.synthetic.spec import CATEGORY_ROLES
    for subset in (SENT_ROLES, SCORED_ROLES, EVAL_ROLES, *CATEGORY_ROLES.values()):
        assert set(subset) <= KNOWN, subset
