"""Which ``RADSENTRY_`` environment variables name a setting, and settings errors in one line.

pydantic-settings reads the variables that name a field and ignores every other one, so a typo
(``RADSENTRY_AUTH_MODE=oidc``, one underscore) used to leave the service in its default local
mode without a word. :func:`environment_problems` is checked before the settings are read
(``runtime.load_settings``): every variable whose name starts with ``RADSENTRY_`` (any case, as
pydantic-settings matches) must be

- a setting: a field of :class:`~monitor.service.settings.Settings`, a group (``RADSENTRY_DRIFT``
  as JSON) or a field nested in one, with ``__`` between the levels; below a mapping field
  (``drift.alarm_overrides``) any key is a setting;
- one of :data:`NOT_SETTINGS`, ours but read by something else, each with the reason; or
- a Kubernetes service link (:func:`is_service_link`): a Service named ``radsentry-...`` in the
  pod's namespace gives every pod ``RADSENTRY_..._SERVICE_HOST`` and friends.

Anything else is refused with the closest setting's name (``difflib``). A list or group given as
text that is not JSON is refused here too, by its variable's name, instead of pydantic-settings'
traceback that names only the group. Nothing here reads ``os.environ`` itself, nor ever puts a
variable's value in a message.
"""

from __future__ import annotations

import difflib
import json
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from monitor.service.settings import Settings

PREFIX = "RADSENTRY_"
NESTED = "__"

NOT_SETTINGS: Mapping[str, str] = {
    "RADSENTRY_TEST_PG_URL": "the test suite's PostgreSQL server (tests/conftest.py)",
    "RADSENTRY_XRV_WHEEL": "the simulator's torchxrayvision wheel (monitor/simulate/xrv)",
    "RADSENTRY_XRV_CACHE": "the simulator's download cache (monitor/simulate/xrv)",
    "RADSENTRY_PROMETHEUS_URL": "Grafana's provisioning (dashboards/provisioning)",
    "RADSENTRY_GRAFANA_DB_HOST": "Grafana's provisioning (dashboards/provisioning)",
    "RADSENTRY_GRAFANA_DB_NAME": "Grafana's provisioning (dashboards/provisioning)",
    "RADSENTRY_GRAFANA_DB_PASSWORD": "Grafana's provisioning (dashboards/provisioning)",
}
"""``RADSENTRY_`` variables that are no setting but legitimately ours, and who reads them. A
deployment that gives Grafana and RadSentry one environment (a compose file) keeps working."""

_SERVICE_LINKS = (
    re.compile(r"^RADSENTRY(_[A-Z0-9_]+)?_SERVICE_(HOST|PORT(_[A-Z0-9_]+)?)$"),
    re.compile(r"^RADSENTRY(_[A-Z0-9_]+)?_PORT_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?$"),
)
_BARE_PORT_LINK = re.compile(r"^RADSENTRY(_[A-Z0-9_]+)?_PORT$")
_LINK_ADDRESS = re.compile(r"^(tcp|udp|sctp)://")


@dataclass(frozen=True, slots=True)
class Problem:
    """One variable that stops the process: its name and what is wrong, never its value."""

    variable: str
    reason: str

    def __str__(self) -> str:
        return f"{self.variable}: {self.reason}"


@dataclass(frozen=True, slots=True)
class SettingNames:
    """Every variable name that is a setting: ``exact`` (name: whether its value is JSON) and
    ``open`` prefixes (mapping fields: any name below them)."""

    exact: Mapping[str, bool]
    open: tuple[str, ...]

    def known(self, name: str) -> bool:
        return name in self.exact or name.startswith(self.open)

    def closest(self, name: str) -> str | None:
        """The setting most like ``name`` (compared without the common prefix), if any is."""
        short = {candidate[len(PREFIX) :]: candidate for candidate in self.exact}
        match = difflib.get_close_matches(name[len(PREFIX) :], list(short), n=1, cutoff=0.6)
        return short[match[0]] if match else None


def setting_names(model: type[BaseModel] = Settings) -> SettingNames:
    """The variable names of ``model``'s fields, at every level of nesting."""
    exact: dict[str, bool] = {}
    open_prefixes: list[str] = []
    _walk(model, PREFIX, exact, open_prefixes)
    return SettingNames(exact, tuple(open_prefixes))


def _walk(model: type[BaseModel], prefix: str, exact: dict[str, bool], open_: list[str]) -> None:
    for field_name, field in model.model_fields.items():
        name = prefix + field_name.upper()
        members = _members(field.annotation)
        exact[name] = bool(members) and all(_is_structured(member) for member in members)
        for member in members:
            if isinstance(member, type) and issubclass(member, BaseModel):
                _walk(member, name + NESTED, exact, open_)
            elif get_origin(member) in (dict, Mapping):
                open_.append(name + NESTED)


def _members(annotation: Any) -> list[Any]:
    """The types a field may hold, without None (``X | None`` gives ``[X]``)."""
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return [member for arg in get_args(annotation) for member in _members(arg)]
    return [] if annotation is type(None) else [annotation]


def _is_structured(annotation: Any) -> bool:
    """Given as JSON in the environment: a group, a list or a mapping."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    origin = get_origin(annotation) or annotation
    return origin in (list, tuple, set, frozenset, dict, Sequence, Mapping)


def is_service_link(name: str, value: str) -> bool:
    """A variable Kubernetes gives every pod for a Service named ``radsentry[-...]`` (with
    ``enableServiceLinks``, its default): ``..._SERVICE_HOST``, ``..._PORT_8000_TCP_ADDR``...
    A bare ``..._PORT`` counts only with the ``tcp://`` address Kubernetes puts there, so that
    ``RADSENTRY_API_PORT=8001`` (meant: ``RADSENTRY_API__PORT``) is still refused."""
    if any(link.match(name) for link in _SERVICE_LINKS):
        return True
    return bool(_BARE_PORT_LINK.match(name) and _LINK_ADDRESS.match(value))


def environment_problems(
    environ: Mapping[str, str], names: SettingNames | None = None
) -> list[Problem]:
    """The ``RADSENTRY_`` variables of ``environ`` that stop the process: unknown ones, and
    lists or groups whose value is not JSON."""
    names = names or setting_names()
    problems = []
    for variable, value in sorted(environ.items()):
        name = variable.upper()
        if not name.startswith(PREFIX) or name in NOT_SETTINGS or is_service_link(name, value):
            continue
        if not names.known(name):
            closest = names.closest(name)
            hint = f"did you mean {closest}?" if closest else "see the README's settings table"
            problems.append(Problem(variable, f"no such setting; {hint}"))
        elif names.exact.get(name) and not _is_json(value):
            problems.append(
                Problem(
                    variable,
                    "not valid JSON; lists and groups are given as JSON, "
                    'e.g. ["kafka-1:9092"] or {"size": 250}',
                )
            )
    return problems


def _is_json(value: str) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def validation_problems(error: ValidationError, names: SettingNames | None = None) -> list[Problem]:
    """Each error of ``error`` by the variable that sets the value (the deepest setting its
    location names; ``RADSENTRY_*`` for the whole), without the value."""
    names = names or setting_names()
    problems = []
    for item in error.errors(include_input=False, include_url=False, include_context=False):
        parts = [str(part).upper() for part in item["loc"]]
        settings = (PREFIX + NESTED.join(parts[:depth]) for depth in range(len(parts), 0, -1))
        variable = next((name for name in settings if names.known(name)), PREFIX + "*")
        reason = str(item["msg"]).removeprefix("Value error, ")
        problems.append(Problem(variable, reason))
    return problems
