"""The model registry as the service uses it: an MLflow server, or the embedded SQLite store,
built from the settings (alias and tag names: ``retrain.mlflow_names``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from monitor.service.settings import Settings

if TYPE_CHECKING:
    from retrain.tracking import Registry


def registry_for(settings: Settings) -> Registry:
    """The configured registry (an MLflow server, or the embedded SQLite store)."""
    from retrain.tracking import Registry

    return Registry(
        settings.mlflow_tracking_uri, settings.mlflow, settings.mlflow_artifact_location
    )
