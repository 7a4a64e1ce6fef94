"""The whole RadSentry loop, stage by stage, for `radsentry demo`.

On one machine and embedded defaults, with the API, the consumer and the periodic jobs already
running (``demo.run_demo``), :class:`DemoLoop` drives what production spreads over days:

1. ``initial-model``: the champion: `train-initial`'s v1, trained now unless the registry has one.
2. ``stream``: simulated studies from several sites, scored by the champion, one site's scanner
   changing part-way; the consumer stores them and checks drift as they arrive.
3. ``drift-alert`` and ``performance-alert`` at the changed site.
4. ``retrain-request``: the retraining policy turns the alerts into one request.
5. ``candidate``: the retraining job trains on the labelled studies and registers a
   ``challenger`` in MLflow; it becomes a PCCP candidate.
6. ``gate``: the acceptance gate on the locked test set, with its evidence report (the stage
   is reached whatever the outcome: the gate ran).
7. ``decision``: what a person must decide now, and why. A candidate that passed waits for two
   ML-ops signatures: the loop prints the URLs and the exact commands for two demo identities
   to approve and promote. A candidate the gate failed (or found outside the plan) can never be
   promoted: the loop prints the criteria it failed and the regressions the evidence flags,
   naming the changed site, and the choices left to ML ops while the champion keeps serving
   there (acknowledge its alert with the decision, or ask for another retrain).

Every stage calls the same functions the scheduler and the API do; the loop only runs them now
instead of on their schedules, and waits for what the consumer thread does. A stage that does
not happen within its time raises :class:`StageFailed` with what was seen instead, and what to
do; a stop (Ctrl-C) raises :class:`StageStopped` instead, within a training batch even while
a model trains. A rerun on the same data dir resumes: the stages an earlier run finished
(``demo.state``) are shown, not done again, and the decision is looked at anew (approved or
promoted since?).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Final, TypeVar

import structlog
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine

from monitor.drift.config import EMBEDDING_DETECTOR
from monitor.service.demo import state as demo_state
from monitor.service.demo.simulation import ScoresChoice, publish_simulation
from monitor.service.demo.stages import STAGES, Stage
from monitor.service.demo.state import FRESH_HINT, DemoRecord
from monitor.service.drift import alerts as alerts_store
from monitor.service.errors import ServiceError
from monitor.service.ingest import store
from monitor.service.models import AlertRow, CandidateRow, RetrainRequestRow
from monitor.service.pccp import jobs as gate_job
from monitor.service.pccp import store as candidates_store
from monitor.service.pccp.jobs import gate_context
from monitor.service.performance.jobs import refresh_performance
from monitor.service.registry import registry_for
from monitor.service.retrain import store as retrain_store
from monitor.service.retrain.initial import record_initial, register_initial
from monitor.service.retrain.jobs import JobContext, serve_pending
from monitor.service.runtime import pasteable_cli
from monitor.service.settings import Settings
from monitor.simulate import SimulationConfig
from retrain.mlflow_names import CHAMPION
from retrain.train import TrainingStopped

if TYPE_CHECKING:
    import threading

    from monitor.service.ingest.consumer import ConsumerThread
    from retrain.initial import InitialConfig

log = structlog.get_logger(__name__)
T = TypeVar("T")


ALERT_WAIT_S: Final = 120.0
"""Longest wait for an alert once the stream is stored: the consumer checks drift as it
stores; performance is refreshed once when the wait starts and then by the scheduler's job
(every ``performance.refresh_s``, 15 s in the demo)."""


class StageFailed(ServiceError, RuntimeError):
    """A stage did not happen; the message says what was seen instead."""


class StageStopped(StageFailed):
    """The loop was asked to stop (Ctrl-C) during ``stage``: nothing failed, and the next run
    takes the stage up again (a model in training from its last finished epoch)."""

    def __init__(self, stage: Stage) -> None:
        super().__init__(f"stopped during the {stage} stage; the next run takes it up again")
        self.stage = stage


@dataclass
class LoopState:
    """What the loop reached, for the caller and the headless test."""

    reached: list[Stage] = field(default_factory=list)
    seconds: dict[Stage, float] = field(default_factory=dict)
    candidate_id: uuid.UUID | None = None
    model_version: str | None = None
    instructions: str | None = None
    """The last block of what a person does next (approval or decision), for a reprint."""


@dataclass
class DemoLoop:
    settings: Settings
    engine: Engine
    bootstrap: list[str]
    simulation: SimulationConfig
    consumer: ConsumerThread
    initial: InitialConfig
    api_url: str
    console: Console
    rate: float | None = None
    scores: ScoresChoice = "auto"
    """How the stream is scored when the loop stops at the stream (the champion otherwise)."""
    record: DemoRecord | None = None
    """What earlier runs on this data dir finished (``demo.state``): those stages are not done
    again; the record is saved after every stage. None: nothing is recorded (tests)."""
    state: LoopState = field(default_factory=LoopState)
    resumed: frozenset[Stage] = frozenset()
    """The stages an earlier run finished (set by :meth:`run` from the record)."""

    def run(self, until: Stage, stop: threading.Event) -> LoopState:
        """Run the stages in order up to ``until`` (inclusive); StageFailed if one fails."""
        steps: dict[Stage, Callable[[threading.Event], str]] = {
            Stage.INITIAL_MODEL: self._initial_model,
            Stage.STREAM: self._stream,
            Stage.DRIFT_ALERT: self._drift_alert,
            Stage.PERFORMANCE_ALERT: self._performance_alert,
            Stage.RETRAIN_REQUEST: self._retrain_request,
            Stage.CANDIDATE: self._candidate,
            Stage.GATE: self._gate,
            Stage.DECISION: self._decision,
        }
        started = time.monotonic()
        stages = STAGES[: STAGES.index(until) + 1]
        if until == Stage.STREAM and self.scores != "champion":
            stages = stages[1:]  # a stream alone needs no model (the score model stands in)
        previous = self._resume(scored_by="champion" if Stage.INITIAL_MODEL in stages else None)
        for stage in stages:
            if stop.is_set():
                break
            if stage in previous and stage != Stage.DECISION:  # a decision is looked at anew
                self.state.reached.append(stage)
                self.console.print(
                    f"[green]✓[/green] [bold]{stage}[/bold] (previous run): "
                    f"{escape(previous[stage])}",
                    soft_wrap=True,
                )
                continue
            began = time.monotonic()
            try:
                with self.console.status(f"[bold]{stage}[/bold]: working"):
                    summary = steps[stage](stop)
            except (StageFailed, TrainingStopped):
                if stop.is_set():  # whatever the step saw, it saw because it was stopped
                    raise StageStopped(stage) from None
                raise
            self.state.reached.append(stage)
            self.state.seconds[stage] = took = time.monotonic() - began
            self._record(stage, summary)
            self.console.print(
                f"[green]✓[/green] [bold]{stage}[/bold] ({duration(took)}; "
                f"{duration(time.monotonic() - started)} since the demo started): "
                f"{escape(summary)}",
                soft_wrap=True,
            )
        return self.state

    def _resume(self, *, scored_by: str | None) -> dict[Stage, str]:
        """The summaries of the stages an earlier run finished; their results restored.
        ``scored_by``: who must have scored a stored stream for this run to build on it."""
        if self.record is None:
            return {}
        if (
            scored_by is not None
            and Stage.STREAM in self.record.reached
            and self.record.stream_scores != scored_by
        ):
            raise StageFailed(
                f"the stored stream was scored by {self.record.stream_scores} (a stream-only "
                f"run), this run needs it scored by the {scored_by}: start over with {FRESH_HINT}"
            )
        self.state.candidate_id = self.record.candidate_id
        self.state.model_version = self.record.model_version
        self.resumed = frozenset(self.record.reached)
        previous_url, self.record.api_url = self.record.api_url, self.api_url
        if previous_url and previous_url != self.api_url:  # links that work now
            self.record.summaries = {
                stage: text.replace(previous_url, self.api_url)
                for stage, text in self.record.summaries.items()
            }
        return {stage: self.record.summaries.get(stage, "") for stage in self.record.reached}

    def _record(self, stage: Stage, summary: str) -> None:
        if self.record is None:
            return
        record = self.record
        if stage not in record.reached:
            record.reached.append(stage)
        record.summaries[stage] = summary
        record.candidate_id, record.model_version = (
            self.state.candidate_id,
            self.state.model_version,
        )
        demo_state.save(self.settings, record)

    # -- stages ------------------------------------------------------------------------------

    def _initial_model(self, stop: threading.Event) -> str:
        registry = registry_for(self.settings)
        model = self.simulation.model_name
        if (found := registry.version_by_alias(model, CHAMPION)) is not None:
            return f"{model} version {found.version} is the champion (already registered)"
        self.console.print(
            f"  training {model} v1 on a synthetic cohort of {self.initial.sites} academic "
            f"sites (takes a few minutes on a laptop CPU)"
        )
        registered = register_initial(
            self.settings, self.initial, progress=False, should_stop=stop.is_set
        )
        record_initial(self.engine, registered)
        test = registered.model.test
        held_out = f", held-out AUROC {test.auroc:.3f}" if test and test.auroc else ""
        return f"{model} version {registered.version.version} is the champion{held_out}"

    def _stream(self, stop: threading.Event) -> str:
        from monitor.service.demo.simulation import NoChampion, champion_embedder, champion_scorer

        config = self.simulation
        choice = "champion" if Stage.INITIAL_MODEL in self.state.reached else self.scores
        if self.record is not None:
            self.record.stream_scores = choice
        scorer = champion_scorer(self.settings, config.model_name, choice)
        # With the champion's model, its embedding too: inference-event/v2, so the embedding
        # detector watches what the images show (issue 23).
        embedder = None
        if scorer is not None:
            try:
                embedder = champion_embedder(self.settings, config.model_name)
            except NoChampion:  # a champion registered before projections: v1 events
                embedder = None
        self.console.print(
            f"  {config.sites} sites x {config.studies_per_site} studies; "
            f"{config.change_site} changes scanner at study {config.change_at_index}"
        )
        sent = publish_simulation(
            self.settings,
            config,
            self.bootstrap,
            rate=self.rate,
            stop=stop,
            scorer=scorer,
            embedder=embedder,
        )
        stats = self.consumer.stats
        self._wait(
            lambda: stats.stored + stats.duplicates >= sent or None,
            stop,
            timeout=180,
            what=f"the consumer to store {sent} events (stored {stats.stored})",
        )
        sites = ", ".join(
            f"{site.site_id} {site.inference.count}+{site.labels.count}"
            for site in store.list_sites(self.engine)
        )
        return (
            f"stream done: {sent} events published, {stats.stored} stored "
            f"(inference+label events: {sites})"
        )

    def _drift_alert(self, stop: threading.Event) -> str:
        alert = self._wait(
            lambda: self._alert(performance=False),
            stop,
            timeout=ALERT_WAIT_S,
            what=f"a drift alert at {self.simulation.change_site}",
        )
        found = f"[{alert.detector}] {alert.explanation}"
        if alert.detector != EMBEDDING_DETECTOR and (content := self._alert(EMBEDDING_DETECTOR)):
            # What the model's own view of the images says (the stream is stored by now).
            found += f"; in the model's embedding: [{content.detector}] {content.explanation}"
        return found

    def _performance_alert(self, stop: threading.Event) -> str:
        # Once now, on the whole stream; the scheduler's job refreshes again every refresh_s.
        refresh_performance(self.engine, self.settings.performance)
        alert = self._wait(
            lambda: self._alert(performance=True),
            stop,
            timeout=ALERT_WAIT_S,
            what=f"a performance alert at {self.simulation.change_site}",
        )
        return f"[{alert.detector}] {alert.explanation}; {self._health()}"

    def _health(self) -> str:
        """The changed site's health score per model version, with the route that explains it."""
        from monitor.service.performance.health import site_health

        site = self.simulation.change_site
        found = site_health(self.engine, site, self.settings.performance.health) if site else []
        scores = [
            f"{h.model_name} v{h.model_version} {h.score.health:.0f}/100 "
            f"(90% band {h.score.lower:.0f}-{h.score.upper:.0f}, {h.score.weights.source} weights)"
            for h in found
            if h.score.health is not None
            and h.score.lower is not None
            and h.score.upper is not None
        ]
        return (
            f"health score at {site}: {'; '.join(scores) or 'not computed yet'}; "
            f"components: {self.api_url}/sites/{site}/health"
        )

    def _retrain_request(self, _stop: threading.Event) -> str:
        review = retrain_store.review_alerts(self.engine, self.settings.retrain.policy)
        model = self.simulation.model_name
        pending = retrain_store.list_requests(self.engine, model_name=model, status="pending").items
        if pending:
            request = pending[0]
            return f"request {request.request_id} ({request.trigger}, {request.reason})"
        reasons = [f"{d.detector} alert at {d.site_id}: {d.reason}" for d in review.declined]
        earlier = retrain_store.list_requests(self.engine, model_name=model, limit=3).items
        reasons += [f"already requested: {_describe(r)}" for r in earlier]
        reasons = reasons or [f"no active alert of {model} to consider"]
        log.warning("no retrain request from the alerts", model_name=model, reasons=reasons)
        raise StageFailed(
            f"the retraining policy made no request from the alerts: {'; '.join(reasons)}. "
            f"To see the loop again, start over with {FRESH_HINT}; or relax the policy "
            "(RADSENTRY_RETRAIN__POLICY__MIN_NEW_LABELS, ..._MIN_NEW_LABELS_SITE, "
            "..._COOLDOWN_HOURS)"
        )

    def _candidate(self, stop: threading.Event) -> str:
        registry = registry_for(self.settings)
        context = JobContext(
            engine=self.engine,
            registry=registry,
            config=self.settings.retrain.job,
            work_dir=(self.settings.data_dir / "retrain").resolve(),
            lease=self._lease(),
            plans_dir=self.settings.plans_dir,
            should_stop=stop.is_set,
        )
        rehearsal = self.settings.retrain.job.rehearsal_cases
        self.console.print(
            "  training the candidate, warm-started from the champion"
            + (", on the new labels and v1's development cases" if rehearsal else "")
        )
        served = serve_pending(context, limit=1)
        if not served or served[0].status != "succeeded":
            error = served[0].error if served else "no request to serve"
            model = self.simulation.model_name
            requests = retrain_store.list_requests(self.engine, model_name=model, limit=3).items
            seen = "; ".join(_describe(r) for r in requests) or "none"
            raise StageFailed(
                f"the retraining job did not register a candidate: {error} (requests of "
                f"{model}: {seen}). Start over with {FRESH_HINT}"
            )
        row = candidates_store.find(
            self.engine, self.simulation.model_name, str(served[0].model_version)
        )
        self.state.candidate_id, self.state.model_version = row.candidate_id, row.model_version
        comparison = (served[0].progress or {}).get("comparison", {}).get("sites", {})
        changed = comparison.get(self.simulation.change_site or "", {})
        gain = (
            f"; at {self.simulation.change_site} AUROC {changed['champion_auroc']:.2f} -> "
            f"{changed['candidate_auroc']:.2f} on its validation studies"
            if changed.get("champion_auroc") is not None
            and changed.get("candidate_auroc") is not None
            else ""
        )
        return f"challenger {row.model_name} version {row.model_version} in MLflow{gain}"

    def _gate(self, _stop: threading.Event) -> str:
        assert self.state.candidate_id is not None
        row = candidates_store.get(self.engine, self.state.candidate_id)
        if row.status == "candidate":  # else an interrupted run's gate already decided
            context = gate_context(self.engine, self.settings, registry_for(self.settings))
            row = gate_job.evaluate(context, self.state.candidate_id)
        self.console.print(_criteria_table(row))
        failed = [c["id"] for c in (row.report or {}).get("criteria", []) if not c["passed"]]
        verdict = (
            f"passed every criterion of {row.plan_id} {row.plan_version}"
            if row.status == "passed"
            else f"{row.status}" + (f" ({', '.join(failed)})" if failed else "")
        )
        return f"{verdict}; evidence: {self.api_url}/candidates/{row.candidate_id}/evidence"

    def _decision(self, _stop: threading.Event) -> str:
        assert self.state.candidate_id is not None
        row = candidates_store.get(self.engine, self.state.candidate_id)
        if row.status in ("passed", "approved"):
            self._instruct(approval_instructions(self.api_url, row, self.simulation, self._cli()))
            return f"{row.model_name} version {row.model_version} waits for two approvals"
        if row.status in ("promoted", "rejected", "rolled_back"):
            self._instruct(None)
            return (
                f"{row.model_name} version {row.model_version} was {row.status.replace('_', ' ')}"
                f" after the previous run: this run's loop is complete; to see it again, "
                f"start over with {FRESH_HINT}"
            )
        alert = self._alert(performance=True) or self._alert(performance=False)
        self._instruct(
            decision_instructions(self.api_url, row, self.simulation, alert, self._cli())
        )
        return why_not_promotable(row, self.simulation.change_site)

    # -- helpers -----------------------------------------------------------------------------

    def _lease(self) -> timedelta:
        if Stage.RETRAIN_REQUEST in self.resumed:
            # The request is an earlier run's: one still "running" was left by a demo killed
            # mid-training (a Ctrl-C puts it back to pending; this process serves nothing
            # else), so take it over now (resuming from its checkpoints), not after the lease.
            return timedelta(0)
        return timedelta(seconds=self.settings.retrain.lease_s)

    def _instruct(self, block: str | None) -> None:
        """Print what a person does next, and keep it for a reprint (``demo.run``)."""
        self.state.instructions = block
        if block is not None:
            self.console.print(block, soft_wrap=True)

    def _cli(self) -> str:
        """`radsentry` as the printed commands spell it, to work pasted into a new shell."""
        return pasteable_cli(self.settings.data_dir)

    def _alert(self, detector: str | None = None, *, performance: bool = False) -> AlertRow | None:
        """The changed site's first alert of ``detector``, or of any drift (performance)
        detector."""
        for alert in alerts_store.list_alerts(
            self.engine, site_id=self.simulation.change_site, limit=100
        ).items:
            if detector is not None:
                if alert.detector == detector:
                    return alert
            elif alert.detector.startswith("performance.") == performance:
                return alert
        return None

    def _wait(
        self,
        found: Callable[[], T | None],
        stop: threading.Event,
        *,
        timeout: float,
        what: str,
    ) -> T:
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            if (result := found()) is not None:
                return result
            if time.monotonic() > deadline:
                raise StageFailed(f"timed out after {timeout:.0f} s waiting for {what}")
            stop.wait(1.0)
        raise StageFailed("stopped")  # run() makes it a StageStopped


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 04 s``: how long a stage took, as the console says it."""
    whole = round(seconds)
    return f"{whole} s" if whole < 60 else f"{whole // 60} min {whole % 60:02d} s"


def _describe(request: RetrainRequestRow) -> str:
    error = f", {request.error}" if request.error else ""
    return f"request {request.request_id} {request.status} ({request.reason}{error})"


def _criteria_table(row: CandidateRow) -> Table:
    table = Table(title=f"PCCP gate: {row.model_name} version {row.model_version}")
    for column in ("criterion", "result", "numbers"):
        table.add_column(column)
    for criterion in (row.report or {}).get("criteria", []):
        table.add_row(
            criterion["id"],
            "[green]pass[/green]" if criterion["passed"] else "[red]FAIL[/red]",
            escape(criterion.get("detail", "")),
        )
    return table


def approval_instructions(
    api_url: str, row: CandidateRow, simulation: SimulationConfig, cli: str
) -> str:
    """What to open and run next: the URLs, and the commands of two demo ML-ops identities
    (``cli``: how they call ``radsentry``, :func:`~monitor.service.runtime.pasteable_cli`)."""
    candidate = f"{api_url}/candidates/{row.candidate_id}"
    site = simulation.change_site or "site-01"
    post = "curl -s -X POST -H 'Content-Type: application/json'"
    return "\n".join(
        [
            "",
            "[bold]Waiting for approval.[/bold] Two demo ML-ops identities (paste into any shell):",
            f"  ALICE=$({cli} token --subject alice --role mlops)",
            f"  BOB=$({cli} token --subject bob --role mlops)",
            f"Open in a browser: the API docs at {api_url}/docs; the pages through signed links",
            "(each command answers a url to open, valid 10 minutes):",
            *_link_commands(api_url, f"/sites/{site}/drift-report", f"{candidate}/evidence"),
            "Both approve, then one promotes (four eyes):",
            f'  {post} -H "Authorization: Bearer $ALICE" '
            f'-d \'{{"reason": "evidence reviewed"}}\' {candidate}/approve',
            f'  {post} -H "Authorization: Bearer $BOB" '
            f'-d \'{{"reason": "agree"}}\' {candidate}/approve',
            f'  {post} -H "Authorization: Bearer $ALICE" '
            f'-d \'{{"reason": "{site} recovers"}}\' {candidate}/promote',
            "  # and to undo it (naming the champion it undoes):",
            f'  {post} -H "Authorization: Bearer $BOB" '
            f'-d \'{{"expected_version": "{row.model_version}", "reason": "drill"}}\' '
            f"{api_url}/models/{row.model_name}/rollback",
            "Ctrl-C stops everything.",
        ]
    )


def _link_commands(api_url: str, *pages: str) -> list[str]:
    """For each page (a path, or a URL under ``api_url``), the command that asks the API for a
    signed link to it (``POST /links``, as ALICE): a browser sends no bearer token."""
    post = "curl -s -X POST -H 'Content-Type: application/json'"
    return [
        f'    {post} -H "Authorization: Bearer $ALICE" '
        f'-d \'{{"path": "{page.removeprefix(api_url)}"}}\' {api_url}/links'
        for page in pages
    ]


def why_not_promotable(row: CandidateRow, site: str | None) -> str:
    """One sentence: the gate's outcome, the criteria it failed, and the first regression the
    evidence flags at ``site`` (else anywhere)."""
    report = row.report or {}
    failed = [c["id"] for c in report.get("criteria", []) if not c["passed"]]
    regressions = report.get("regressions", [])
    at_site = [r for r in regressions if r.get("field") == "site" and r.get("value") == site]
    first = (at_site or regressions or [None])[0]
    outcome = str(row.status).replace("_", " ")
    because = f" ({', '.join(failed)})" if failed else ""
    scope = report.get("scope_violations") or []
    outside = f"; outside the plan: {scope[0]}" if scope else ""
    flagged = f" {first['sentence']}" if first else ""
    return (
        f"{row.model_name} version {row.model_version} {outcome} the PCCP gate{because}{outside}."
        f"{flagged} It can never be promoted: a person decides what happens next"
    )


def decision_instructions(
    api_url: str,
    row: CandidateRow,
    simulation: SimulationConfig,
    alert: AlertRow | None,
    cli: str,
) -> str:
    """What a person must decide after a failed gate, and the commands for each choice
    (``cli`` as for :func:`approval_instructions`)."""
    candidate = f"{api_url}/candidates/{row.candidate_id}"
    site = simulation.change_site or "site-01"
    post = "curl -s -X POST -H 'Content-Type: application/json'"
    report = row.report or {}
    lines = [
        "",
        f"[bold]Not promotable.[/bold] The PCCP gate {str(row.status).replace('_', ' ')} "
        f"{row.model_name} version {row.model_version}; the champion keeps serving {site}.",
    ]
    for criterion in report.get("criteria", []):
        if not criterion["passed"]:
            lines.append(f"  {criterion['id']}: {escape(criterion.get('detail', ''))}")
    for violation in report.get("scope_violations", []):
        lines.append(f"  outside the plan: {escape(violation)}")
    # The changed site's first: that is what the site's manager will ask about.
    flagged = sorted(
        report.get("regressions", []),
        key=lambda r: not (r.get("field") == "site" and r.get("value") == site),
    )
    if flagged:
        lines.append(f"The evidence flags {len(flagged)} regression(s) beyond the noise, e.g.:")
        lines.extend(f"  {escape(r['sentence'])}" for r in flagged[:3])
    lines += [
        f"A person decides what {site} gets now (ML ops; a token: "
        f"ALICE=$({cli} token --subject alice --role mlops)):",
        "  the evidence in a browser (answers a url to open, valid 10 minutes):",
        *_link_commands(api_url, f"{candidate}/evidence"),
    ]
    auth = '-H "Authorization: Bearer $ALICE"'
    if alert is not None:
        note = f"champion kept at {site}; candidate {row.model_version} failed the gate"
        lines.append(
            f"  keep the champion, noted on its alert: {post} {auth} "
            f'-d \'{{"note": "{note}"}}\' {api_url}/alerts/{alert.alert_id}/acknowledge'
        )
    reason = f"more {site} labels after the failed gate"
    lines += [
        f"  or ask for another retrain once new labels have arrived (on the labels this "
        f"candidate trained on, the job trains nothing: seeded training would give the same "
        f"model; the demo prints what the job did): {post} {auth} "
        f'-d \'{{"reason": "{reason}"}}\' {api_url}/models/{row.model_name}/retrain',
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)
