"""Calls to MLflow under RadSentry's retry policy, failing as :class:`TrackingError`.

Every call is retried with exponential backoff (:class:`MlflowConfig`) while the failure is
transient (MLflow unreachable or timing out, or answering 5xx or 429), then raised as
:class:`TrackingError` naming the call. A client error (4xx) is not retried.

**Scope.** MLflow keeps its tracking URI and HTTP settings in process globals, and some of its
code reads them whatever client it is reached through (``log_model`` logs to the global URI;
the SQL registry resolves a ``models:/`` source through it). Each call therefore runs with
this store's URI in force and MLflow's own HTTP retries off (its default loop can take
minutes, and would multiply with ours), under a process-wide lock, and the previous values
are restored afterwards. Calls are serialised per process; the retraining job makes one at a
time anyway.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import requests
import structlog
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from retrain.config import MlflowConfig

log = structlog.get_logger(__name__)

_SCOPE_LOCK = threading.RLock()
T = TypeVar("T")


class TrackingError(Exception):
    """MLflow was unreachable after the retries, or the registry is in an inconsistent state."""


class MlflowCalls:
    """``calls(operation, function, *args)``: one MLflow call against one store, retried."""

    def __init__(self, tracking_uri: str, config: MlflowConfig) -> None:
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._config = config

    def __call__(
        self, operation: str, function: Callable[..., T], *args: object, **kwargs: object
    ) -> T:
        """``function(*args, **kwargs)``; :class:`TrackingError` once retries are spent."""
        config = self._config

        def warn(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "MLflow call failed, retrying",
                operation=operation,
                attempt=state.attempt_number,
                error=str(error),
            )

        retrying = Retrying(
            stop=stop_after_attempt(config.retry_attempts),
            wait=wait_exponential(multiplier=config.retry_initial_s, max=config.retry_max_s),
            retry=retry_if_exception(_transient),
            reraise=True,
            before_sleep=warn,
        )
        try:
            with self._scope():
                return retrying(function, *args, **kwargs)
        except (MlflowException, requests.RequestException, OSError) as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise TrackingError(
                f"MLflow call {operation!r} failed after {attempts} attempt(s): {exc}"
            ) from exc

    @contextmanager
    def _scope(self) -> Iterator[None]:
        """This store's URI and our HTTP settings in force (see the module docstring)."""
        timeout = max(1, math.ceil(self._config.request_timeout_s))  # MLflow reads an int
        settings = {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout),
        }
        with _SCOPE_LOCK:
            # MLflow also writes (and, leaving, unsets) MLFLOW_TRACKING_URI: restore it too.
            saved = {name: os.environ.get(name) for name in [*settings, "MLFLOW_TRACKING_URI"]}
            os.environ.update(settings)
            try:
                with _use_tracking_uri(self.uri):
                    yield
            finally:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value


def _transient(error: BaseException) -> bool:
    """Worth another try: MLflow unreachable or timing out, or answering 5xx or 429."""
    if isinstance(error, MlflowException):
        status = int(error.get_http_status_code())  # type: ignore[no-untyped-call]
        return status >= 500 or status == 429
    return isinstance(error, requests.RequestException | OSError)
