"""Which plan governs a model: the plans folder, read and checked as a whole.

Every ``*.yaml`` in the folder must be a valid plan (a broken plan file is an error, never
skipped), and at most one plan may name a model. The gate records the plan it used in the
change log (``plan.loaded`` the first time a plan is seen, ``plan.changed`` when its content
differs from the last one recorded; ``monitor.service.pccp.jobs.note_plan``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pccp.plan import Plan, PlanError, load_plan

SHIPPED_PLANS: Final = Path(__file__).parent / "plans"


@dataclass(frozen=True, slots=True)
class PlanFile:
    plan: Plan
    path: Path


def load_plans(directory: Path) -> list[PlanFile]:
    """Every plan in ``directory``, sorted by file name; :class:`PlanError` on any bad one."""
    if not directory.is_dir():
        raise PlanError(f"{directory}: the plans folder does not exist")
    plans = [PlanFile(load_plan(path), path) for path in sorted(directory.glob("*.yaml"))]
    named: dict[str, Path] = {}
    for found in plans:
        model = found.plan.description.model_name
        if model in named:
            raise PlanError(f"{found.path} and {named[model]} both govern model {model!r}")
        named[model] = found.path
    return plans


def plan_for(directory: Path, model_name: str) -> PlanFile | None:
    """The plan governing ``model_name``, or None when no plan names it."""
    for found in load_plans(directory):
        if found.plan.description.model_name == model_name:
            return found
    return None
