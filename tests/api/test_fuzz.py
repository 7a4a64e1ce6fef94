"""Fuzzing the HTTP API against its own OpenAPI schema with schemathesis.

Every operation of the schema, as each caller: no token, mlops, auditor, service, a site manager
of site-01, and a token without a RadSentry role. Cases are schemathesis' positive and negative
ones, plus positive ones whose path, query and body name the seeded objects (one site's ids), so
that by-id reads and writes reach real rows and not only 404s. Every response must pass:

- schemathesis' checks: no 5xx, a documented status, a body and content type as documented,
  invalid input refused;
- the role matrix of docs/security.md (``ROUTES`` of test_roles.py, the one table): no token is
  401 everywhere but the probes and /metrics, a role the route refuses is 403, an allowed one is
  never 401 (nor 403 for a role that reads every site, but for a four-eyes refusal);
- no leak: a site manager's answers name no other site, and no answer carries a seeded study key
  (the pseudonym of a study) or event id, nor a DICOM attribute that identifies a patient.

The app runs in process (Starlette's TestClient) on a PostgreSQL database seeded as the role
matrix's, seeded afresh for each caller (an mlops fuzzer approves, rejects and promotes what it
finds); the registry is a fake, so no MLflow. Hypothesis is derandomized: a run is reproducible.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, BaseSchema, Case, CheckContext, CheckFunction, checks
from schemathesis import GenerationMode as Mode
from sqlalchemy import Engine, select

from monitor.service.api import create_app
from monitor.service.db import make_engine, upgrade
from monitor.service.models import InferenceEventRow, LabelEventRow
from monitor.service.pccp import store as candidates_store
from tests.api.test_candidates_api import FakeRegistry
from tests.api.test_roles import (
    FRAMEWORK_ROUTES,
    OPEN_ROUTES,
    OTHER,
    OWN,
    ROUTES,
    SETTINGS,
    SPARE,
    Caller,
    headers,
    seed,
)
from tests.conftest import empty_tables

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]

CALLERS = [
    Caller.ANONYMOUS,
    Caller.MLOPS,
    Caller.AUDITOR,
    Caller.SERVICE,
    Caller.MANAGER_OWN,
    Caller.NO_ROLE,
]
SITES = (OWN, OTHER, SPARE)
VERSIONS = ("1.0.0", "1", "5")
"""Versions a case may name: the seeded streams', and two the fake registry holds that are no
candidate yet."""
OPERATIONS = sorted(
    {(case.method, case.path) for case in ROUTES} | {("GET", p) for p in OPEN_ROUTES}
)
MATRIX = {(case.method, case.path): case.expected for case in ROUTES}
EXAMPLES = 20
"""Cases per operation and caller: the whole file takes about a minute on 2 cores."""
SLOW = {("GET", "/sites/{site_id}/report"): 8}
"""Operations that render a report per case (Evidently): fewer cases."""
FOUR_EYES = {
    ("POST", "/candidates/{candidate_id}/approve"),
    ("POST", "/candidates/{candidate_id}/reject"),
}
"""Where an mlops caller may be refused (403) by the four-eyes rule, not by its role."""
GATE_EVIDENCE = {
    ("GET", "/candidates/{candidate_id}"),
    ("GET", "/candidates/{candidate_id}/evidence"),
    ("GET", "/candidates/{candidate_id}/evidence.json"),
}
"""The gate's results name every site of the locked test set (the per-site rows and the lowest
site of a group-minimum criterion), also on a candidate retrained for the site manager's own
site: an open question (docs/security.md, Fuzzing). Their ``criteria`` and ``groups`` are left
out of the leak check, the rest of the answer is checked; the HTML page is not."""
IDENTIFYING_DICOM = re.compile(r"Patient(?:Name|ID|BirthDate)|OtherPatientIDs|StudyInstanceUID")
"""DICOM keywords of attributes that identify a patient or a study; none leaves the edge."""
HEX_RUN = re.compile(r"[0-9a-fA-F-]{32,}")

CONFIG = schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}})
"""The token is the caller's (``headers``), never one schemathesis makes up or leaves out."""
Operation = APIOperation[Any, Any, Any, Any]
FuzzCase = Case[Operation]
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


@dataclass(frozen=True)
class Seeded:
    """What one caller's fuzzing runs against: the seeded objects' ids per site, and the
    pseudonyms that no answer may carry (study keys, event ids as 32 hex digits)."""

    ids: Mapping[str, Mapping[str, str]]
    pseudonyms: frozenset[str]


@pytest.fixture(scope="module")
def engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    upgrade(engine)
    yield engine
    empty_tables(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def client(engine: Engine) -> Iterator[TestClient]:
    app = create_app(SETTINGS, engine=engine)
    with TestClient(app, raise_server_exceptions=False) as test_client:  # a 500 is an answer
        yield test_client


@pytest.fixture(scope="module")
def schema(client: TestClient) -> BaseSchema:
    return schemathesis.openapi.from_dict(client.app.openapi(), config=CONFIG)  # type: ignore[attr-defined]


@pytest.fixture(scope="module", params=CALLERS, ids=lambda caller: caller.name.lower())
def caller(request: pytest.FixtureRequest) -> Caller:
    caller: Caller = request.param
    return caller


@pytest.fixture(scope="module")
def seeded(caller: Caller, engine: Engine, client: TestClient) -> Seeded:
    """A database seeded afresh for each caller, and a registry of its own."""
    empty_tables(engine)
    ids = seed(engine)
    for signer in ("approver-1", "approver-2"):  # OTHER's candidate may be promoted, rolled back
        candidates_store.sign(
            engine,
            uuid.UUID(ids[OTHER]["candidate_id"]),
            signer=signer,
            decision="approve",
            reason="seeded",
        )
    registry = FakeRegistry()
    client.app.state.registry_factory = lambda: registry  # type: ignore[attr-defined]
    with engine.connect() as connection:
        rows = [
            *connection.execute(select(InferenceEventRow.study_key, InferenceEventRow.event_id)),
            *connection.execute(select(LabelEventRow.study_key, LabelEventRow.event_id)),
        ]
    assert rows, "the seed has events whose pseudonyms the fuzzer looks for"
    return Seeded(ids, frozenset(p for key, event in rows for p in (key, event.hex)))


def test_every_operation_is_fuzzed_and_guarded(schema: BaseSchema) -> None:
    """The fuzzed list is the schema's, and the schema asks for a token where the matrix does
    (and documents the answers to a missing or refused one)."""
    served = {
        (method.upper(), path)
        for path, operations in schema.raw_schema["paths"].items()
        for method in operations
    }
    assert served == set(OPERATIONS)
    for method, path in OPERATIONS:
        operation = schema.raw_schema["paths"][path][method.lower()]
        guarded = path not in OPEN_ROUTES
        assert bool(operation.get("security")) == guarded, f"{method} {path}"
        assert {"401", "403"} <= set(operation["responses"]) or not guarded, f"{method} {path}"


def test_the_framework_pages_need_no_token(client: TestClient) -> None:
    for path in FRAMEWORK_ROUTES - {"/docs/oauth2-redirect"}:
        assert client.get(path).status_code == 200, path


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz(
    caller: Caller,
    seeded: Seeded,
    client: TestClient,
    schema: BaseSchema,
    method: str,
    path: str,
) -> None:
    operation = schema[path][method]
    sent_headers = headers(caller)
    custom = [
        follows_the_role_matrix(caller, method, path),
        names_no_other_site(caller, method, path),
        carries_no_pseudonym_or_identifier(seeded.pseudonyms),
    ]

    @settings(
        max_examples=SLOW.get((method, path), EXAMPLES),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=cases(operation, seeded.ids))
    def fuzz(case: FuzzCase) -> None:
        response = send(client, case, sent_headers)
        builtin = [c for c in CHECKS if not excused(c, path, response)]
        case.validate_response(
            response, checks=builtin, additional_checks=custom, headers=sent_headers
        )

    fuzz()


def cases(
    operation: Operation, ids: Mapping[str, Mapping[str, str]]
) -> st.SearchStrategy[FuzzCase]:
    """Positive cases as generated and with seeded ids, and negative ones (an operation with
    no parameter and no body has none)."""
    strategies = [
        operation.as_strategy(generation_mode=Mode.POSITIVE),
        st.builds(
            naming_seeded_objects,
            operation.as_strategy(generation_mode=Mode.POSITIVE),
            st.sampled_from(SITES).map(lambda site: ids[site]),
            st.sampled_from(VERSIONS),
        ),
    ]
    if list(operation.iter_parameters()) or operation.body:
        strategies.append(operation.as_strategy(generation_mode=Mode.NEGATIVE))
    return st.one_of(strategies)


def naming_seeded_objects(case: FuzzCase, site_ids: Mapping[str, str], version: str) -> FuzzCase:
    """The case with the seeded objects of one site wherever it names a site, an alert, a
    request, a candidate, a model or its version (path, query and body)."""
    known = {**site_ids, "model_version": version}
    containers = [case.path_parameters or {}, case.query or {}]
    if isinstance(case.body, dict):
        containers.append(case.body)
    for container in containers:
        for name in container.keys() & known.keys():
            container[name] = known[name]
    return case


def send(client: TestClient, case: FuzzCase, sent_headers: dict[str, str]) -> httpx.Response:
    """The case as a request through the in-process client (schemathesis' own transport goes
    through urllib3, which urllib3-future, a dependency of grafana-client, replaces)."""
    request = case.as_transport_kwargs(base_url="http://testserver", headers=sent_headers)
    assert not request.get("cookies"), "the API reads no cookies"
    response: httpx.Response = client.request(
        request["method"],
        request["url"],
        headers=request["headers"],
        params=request["params"],
        json=request.get("json"),
        content=request.get("data"),
    )
    return response


def excused(check: CheckFunction, path: str, response: httpx.Response) -> bool:
    """Answers schemathesis would flag that are the framework's or by design: /readyz is 503
    without a broker (documented); a body that is not UTF-8 is refused 400 by FastAPI itself
    (as its 422s, on any route with a body; not declared per route)."""
    if check is checks.not_a_server_error:
        return path == "/readyz"
    if check is checks.status_code_conformance:
        return unreadable_body(response) and response.status_code == 400
    return False


def unreadable_body(response: httpx.Response | schemathesis.Response) -> bool:
    """FastAPI reads the body before any dependency runs: a body that is not JSON is refused
    (400 or 422 ``json_invalid``) before the token is looked at. It reveals nothing."""
    if response.status_code not in (400, 422):
        return False
    try:
        detail = json.loads(response.content)["detail"]
    except (ValueError, KeyError, TypeError):
        return False
    if response.status_code == 400:
        return bool(detail == "There was an error parsing the body")
    return isinstance(detail, list) and any(e.get("type") == "json_invalid" for e in detail)


def follows_the_role_matrix(caller: Caller, method: str, path: str) -> CheckFunction:
    expected = MATRIX.get((method, path))
    reads_everything = caller in (Caller.MLOPS, Caller.AUDITOR, Caller.SERVICE)

    def follows_the_role_matrix(
        _ctx: CheckContext, response: schemathesis.Response, _case: FuzzCase
    ) -> None:
        status = response.status_code
        if status == 401:
            challenge = {k.lower(): v for k, v in response.headers.items()}["www-authenticate"]
            assert challenge[0].startswith("Bearer")
        if expected is None:  # a probe or /metrics
            assert status not in (401, 403), f"{path} is open, got {status}"
        elif unreadable_body(response):
            return
        elif expected[caller] in (401, 403):
            assert status == expected[caller], f"{caller} must get {expected[caller]}"
        else:
            assert status != 401, f"{caller} may call this, got 401"
            if reads_everything and (method, path) not in FOUR_EYES:
                assert status != 403, f"{caller} may call this, got 403"

    return follows_the_role_matrix


def names_no_other_site(caller: Caller, method: str, path: str) -> CheckFunction:
    """A site manager of OWN sees nothing of OTHER and SPARE, but what it sent itself (a 404
    or 422 may echo the request). The open routes are not a site manager's view (and /metrics
    is labelled by site by design: docs/security.md)."""
    others = [OTHER, SPARE] if caller is Caller.MANAGER_OWN and path not in OPEN_ROUTES else []
    evidence = (method, path) in GATE_EVIDENCE

    def names_no_other_site(
        _ctx: CheckContext, response: schemathesis.Response, case: FuzzCase
    ) -> None:
        shown_text = without_gate_results(response) if evidence else response.text
        sent = sent_text(case)
        shown = [site for site in others if site in shown_text and site not in sent]
        assert shown == [], f"a site manager of {OWN} is shown {shown}"

    return names_no_other_site


def without_gate_results(response: schemathesis.Response) -> str:
    """The answer less the gate's per-group results (``GATE_EVIDENCE``); nothing of a page."""
    if not response.headers.get("content-type", [""])[0].startswith("application/json"):
        return ""
    body = response.json()
    if isinstance(body, dict):
        body = {key: value for key, value in body.items() if key not in ("criteria", "groups")}
    return json.dumps(body)


def carries_no_pseudonym_or_identifier(pseudonyms: frozenset[str]) -> CheckFunction:
    def carries_no_pseudonym_or_identifier(
        _ctx: CheckContext, response: schemathesis.Response, case: FuzzCase
    ) -> None:
        sent = sent_text(case)
        sent_hex = sent.replace("-", "").lower()
        runs = {run.replace("-", "").lower() for run in HEX_RUN.findall(response.text)}
        leaked = sorted(run for run in runs & pseudonyms if run not in sent_hex)
        assert leaked == [], f"study keys or event ids in the answer: {leaked[:3]}"
        identifying = set(IDENTIFYING_DICOM.findall(response.text)) - set(
            IDENTIFYING_DICOM.findall(sent)
        )
        assert identifying == set(), f"identifying DICOM attributes in the answer: {identifying}"

    return carries_no_pseudonym_or_identifier


def sent_text(case: FuzzCase) -> str:
    """Everything the request said, as text (what an error message may echo back)."""
    return json.dumps([case.path_parameters, case.query, case.body], default=str)


# --- the edges: headers and numbers no schema describes ----------------------------------------

HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)
"""What a header value can carry at all (HTTP clients refuse the rest before sending)."""

AUTHORIZATION = st.one_of(
    HEADER_TEXT,
    st.builds(lambda token: f"Bearer {token}", HEADER_TEXT),
    st.builds(
        lambda header, payload: (
            f"Bearer {base64url(json.dumps(header))}.{base64url(json.dumps(payload))}."
        ),
        st.dictionaries(
            st.sampled_from(["alg", "kid", "typ", "jku", "x5u", "crit"]),
            st.one_of(
                st.sampled_from(["none", "HS256", "RS256", "ES256", "EdDSA", "PS512", ""]),
                st.integers(),
                st.none(),
                st.lists(st.text(max_size=5), max_size=3),
            ),
        ),
        st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
    ),
    st.integers(1_000, 200_000).map(lambda size: "Bearer " + "a" * size),
)
"""Authorization headers: text, bearer text, unsigned tokens with any header (unknown,
mismatched or malformed algorithms), and oversized ones."""

NON_FINITE = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])


def base64url(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz_the_edges(client: TestClient, method: str, path: str) -> None:
    """Any Authorization header, and bodies with a non-finite number in any field: never a 5xx;
    a token that does not verify is 401 (or 413/431 when oversized), a non-finite number in a
    body 422 (403 first where the route refuses an mlops caller)."""
    url = path
    for name in re.findall(r"{(\w+)}", path):
        url = url.replace(f"{{{name}}}", PLACEHOLDERS.get(name, "1"))
    mlops = headers(Caller.MLOPS)

    @settings(max_examples=15, deadline=None, derandomize=True, database=None)
    @given(authorization=AUTHORIZATION, number=NON_FINITE, field=st.sampled_from(FIELDS))
    def fuzz(authorization: str, number: str, field: str) -> None:
        forged = client.request(method, url, headers={"Authorization": authorization})
        if path != "/readyz":  # 503 without a broker, by design (see ``excused``)
            assert forged.status_code < 500, (authorization[:80], forged.text[:200])
        if path not in OPEN_ROUTES and path not in FRAMEWORK_ROUTES:
            assert forged.status_code in (401, 413, 431), (authorization[:80], forged.text[:200])
        if method in ("POST", "PUT", "PATCH"):
            body = '{"' + field + '": ' + number + "}"
            answer = client.request(
                method, url, content=body, headers={**mlops, "Content-Type": "application/json"}
            )
            assert answer.status_code in (403, 422), (field, number, answer.text[:200])

    fuzz()


PLACEHOLDERS = {
    "candidate_id": "00000000-0000-0000-0000-000000000001",
    "alert_id": "00000000-0000-0000-0000-000000000002",
    "request_id": "00000000-0000-0000-0000-000000000003",
    "site_id": "site-01",
    "model_name": "cxr-lesion",
}
"""Well-formed path parameters, so that the token is what is judged."""

FIELDS = ("reason", "model_name", "model_version", "expected_version", "note", "events", "x")
"""Body fields to put a non-finite number in: every request body's, and an unknown one."""
