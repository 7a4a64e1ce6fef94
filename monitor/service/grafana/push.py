"""Upsert the RadSentry dashboards into a Grafana that a site runs, through its HTTP API
(``grafana-client``): find the folder by title or create it, then save every dashboard into
it with ``overwrite: true``. Running it twice leaves Grafana as running it once did (the
dashboards' uids are stable; Grafana keeps the older versions in its history)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import niquests
from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException, GrafanaTimeoutError

from monitor.service.errors import ServiceError

JsonObject = dict[str, object]


class GrafanaPushError(ServiceError):
    """Pushing failed; the message says why, for the operator."""


class GrafanaUnreachable(GrafanaPushError):
    """No HTTP answer: wrong URL, Grafana down, network or TLS failure, timeout."""


class GrafanaTokenRefused(GrafanaPushError):
    """Grafana answered 401 (unknown or expired token) or 403 (the token lacks the rights)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


@dataclass(frozen=True)
class PushResult:
    folder_uid: str
    folder_created: bool
    dashboards: list[str]
    """Uids saved, in order."""


def push_dashboards(
    url: str,
    token: str,
    dashboards: Mapping[str, JsonObject],
    folder: str,
    timeout_s: float = 10.0,
) -> PushResult:
    """Save ``dashboards`` (uid -> JSON model) into the folder titled ``folder`` of the Grafana
    at ``url``, authenticating with the service-account token ``token``."""
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout_s)
    try:
        folder_uid, created = _ensure_folder(api, folder)
        for document in dashboards.values():
            api.dashboard.update_dashboard(
                {
                    # A JSON model from another Grafana may carry its database id; the uid
                    # identifies the dashboard here.
                    "dashboard": {**document, "id": None},
                    "folderUid": folder_uid,
                    "overwrite": True,
                    "message": "radsentry dashboards push",
                }
            )
    except GrafanaClientError as exc:
        if exc.status_code in (401, 403):
            raise GrafanaTokenRefused(exc.status_code) from exc
        raise GrafanaPushError(f"Grafana refused the request: {exc.message}") from exc
    except (GrafanaTimeoutError, niquests.exceptions.RequestException) as exc:
        raise GrafanaUnreachable(str(exc)) from exc
    except GrafanaException as exc:
        # grafana-client wraps transport errors with status 0; 5xx answers are the server's.
        if exc.status_code == 0:
            raise GrafanaUnreachable(str(exc.message)) from exc
        raise GrafanaPushError(f"Grafana failed: {exc.message}") from exc
    return PushResult(folder_uid, created, list(dashboards))


def _ensure_folder(api: GrafanaApi, title: str) -> tuple[str, bool]:
    """The uid of the folder titled ``title``, created when there is none."""
    # grafana-client ships py.typed but leaves these two methods unannotated.
    hits = api.search.search_dashboards(query=title, type_="dash-folder")  # type: ignore[no-untyped-call]
    for hit in hits if isinstance(hits, list) else []:
        if isinstance(hit, dict) and hit.get("title") == title and isinstance(hit.get("uid"), str):
            return str(hit["uid"]), False
    created = api.folder.create_folder(title)  # type: ignore[no-untyped-call]
    if not isinstance(created, dict) or not isinstance(created.get("uid"), str):
        raise GrafanaPushError(f"Grafana created folder {title!r} but returned no uid")
    return str(created["uid"]), True
