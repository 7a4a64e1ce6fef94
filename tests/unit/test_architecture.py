"""The dependency rule of docs/architecture.md, checked on every import in the tree (those inside
functions and under ``TYPE_CHECKING`` too): the pure packages never import the service layer; in
the service layer the platform imports no domain, and the domains form a one-way chain."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import typer
from fastapi import APIRouter

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "monitor.service"
PURE_PACKAGES = (
    "monitor/dicom",
    "monitor/drift",
    "monitor/performance",
    "monitor/simulate",
    "retrain",
    "pccp",
    "dashboards",
)
DOMAINS = (
    "audit",
    "drift",
    "performance",
    "ingest",
    "pccp",
    "retrain",
    "backtest",
    "grafana",
    "demo",
)
"""The chain, lowest first: a domain may import the ones before it, never one after it."""
ASSEMBLY = ("api", "cli", "jobs", "scheduler")
"""Platform modules that put the domains together (the app, the root CLI, the scheduler's jobs)."""
WHOLE_PRODUCT = {"demo": ("api", "jobs")}
"""The demo runs the whole product in one process, as ``serve`` does: the app and the jobs."""


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, with ``from package import module`` counted as the module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def service_part(module: str) -> str | None:
    """``"drift"`` for ``monitor.service.drift.alerts``, ``"db"`` for ``monitor.service.db``."""
    if not module.startswith(SERVICE + "."):
        return None
    return module.removeprefix(SERVICE + ".").split(".")[0]


def service_modules() -> list[Path]:
    return [p for p in (ROOT / "monitor" / "service").rglob("*.py") if "migrations" not in p.parts]


@pytest.mark.parametrize("package", PURE_PACKAGES)
def test_a_pure_package_never_imports_the_service_layer(package: str) -> None:
    offenders = {
        module_name(path): sorted(m for m in imports(path) if m.startswith(SERVICE))
        for path in (ROOT / package).rglob("*.py")
    }
    assert {module: found for module, found in offenders.items() if found} == {}


def test_the_platform_imports_no_domain() -> None:
    offenders: dict[str, list[str]] = {}
    for path in service_modules():
        if service_part(module_name(path)) in (*DOMAINS, *ASSEMBLY):
            continue
        found = sorted(m for m in imports(path) if service_part(m) in (*DOMAINS, *ASSEMBLY))
        if found:
            offenders[module_name(path)] = found
    assert offenders == {}


def test_the_domains_form_a_one_way_chain_below_the_assembly() -> None:
    offenders: dict[str, list[str]] = {}
    for path in service_modules():
        domain = service_part(module_name(path))
        if domain not in DOMAINS:
            continue
        allowed = (*DOMAINS[: DOMAINS.index(domain) + 1], *WHOLE_PRODUCT.get(domain, ()))
        found = sorted(
            m
            for m in imports(path)
            if (part := service_part(m)) in (*ASSEMBLY, *DOMAINS) and part not in allowed
        )
        if found:
            offenders[module_name(path)] = found
    assert offenders == {}


def test_every_service_folder_is_a_known_domain() -> None:
    folders = {
        p.name
        for p in (ROOT / "monitor" / "service").iterdir()
        if p.is_dir() and (p / "__init__.py").exists() and p.name != "migrations"
    }
    assert folders == set(DOMAINS)


@pytest.mark.parametrize("domain", DOMAINS)
def test_each_domain_names_its_router_and_commands_alike(domain: str) -> None:
    import importlib

    folder = ROOT / "monitor" / "service" / domain
    if (folder / "api.py").exists():
        router = importlib.import_module(f"{SERVICE}.{domain}.api").router
        assert isinstance(router, APIRouter)
        from monitor.service.api import ROUTERS

        assert router in ROUTERS
    if (folder / "cli.py").exists():
        assert isinstance(importlib.import_module(f"{SERVICE}.{domain}.cli").app, typer.Typer)
