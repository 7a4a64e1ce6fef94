"""One settings object for the runtime, read from ``RADSENTRY_*`` environment variables.

Defaults are embedded (a PostgreSQL server of RadSentry's own with its cluster under ``data_dir``,
started by ``monitor.service.embedded_pg``; the bundled Kafka-protocol broker) so a fresh clone
runs with nothing installed; production sets ``RADSENTRY_DATABASE__URL`` to PostgreSQL
and ``RADSENTRY_KAFKA__BOOTSTRAP_SERVERS`` to the site's Kafka cluster. Nothing here opens a
connection: engines, producers and consumers are built by factories from these values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from monitor.drift.alarms import AlarmConfig
from monitor.drift.config import EngineConfig
from monitor.performance.config import EstimateConfig, PerformanceConfig, RulesConfig
from monitor.performance.health import HealthConfig
from retrain.config import JobConfig, MlflowConfig
from retrain.policy import RetrainPolicy

ROLE_NAME = r"^[a-z_][a-z0-9_]{0,62}$"
"""A plain PostgreSQL role name: never quoted differently, never longer than PostgreSQL keeps."""

MIN_SECRET_BYTES = 32
"""The least a configured secret may hold (UTF-8 bytes, leading and trailing whitespace not
counted): 256 bits, the size of the HS256 and HMAC-SHA256 keys that RadSentry creates itself."""

HIDDEN_INPUT = ConfigDict(hide_input_in_errors=True)
"""For groups that hold a secret or a URL with a password: a validation error never quotes
the value it refused (pydantic's ``input_value=``), only where and why."""


def _strong_secret(secret: SecretStr) -> SecretStr:
    """Refuse a blank, whitespace or short secret (the value is never part of the error)."""
    if len(secret.get_secret_value().strip().encode()) < MIN_SECRET_BYTES:
        raise ValueError(
            f"a secret needs at least {MIN_SECRET_BYTES} bytes besides leading and trailing "
            "whitespace; make one with `openssl rand -hex 32`"
        )
    return secret


Secret = Annotated[SecretStr, AfterValidator(_strong_secret)]
"""A configured secret: shown as ``**********``, refused when blank, whitespace or short."""


class DatabaseSettings(BaseModel):
    """Where the services connect, and as whom (docs/deploy.md, "Database roles")."""

    model_config = HIDDEN_INPUT

    url: str | None = Field(
        None,
        description="SQLAlchemy URL the services connect with, e.g. "
        "postgresql+psycopg://radsentry_app@db/radsentry. Unset: the embedded PostgreSQL "
        "server, its cluster in data_dir/pg (started when a command needs it).",
    )
    migration_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the role that owns the schema, used by `radsentry "
        "migrate` only. Unset: the same as url (one role for everything, and the embedded "
        "default).",
    )
    runtime_role: str | None = Field(
        None,
        pattern=ROLE_NAME,
        description="PostgreSQL role of the API and the scheduler: `radsentry migrate` grants "
        "it what they need and makes sure it owns nothing. Unset: no grants (one role).",
    )
    consumer_role: str | None = Field(
        None,
        pattern=ROLE_NAME,
        description="PostgreSQL role of `radsentry consume`: only the tables ingestion writes; "
        "nothing on candidates, the change log, retraining or the scheduler's jobs.",
    )
    echo: bool = False

    @model_validator(mode="after")
    def _roles_differ(self) -> DatabaseSettings:
        if self.consumer_role is not None and self.consumer_role == self.runtime_role:
            raise ValueError(
                "database.consumer_role must differ from database.runtime_role (unset it and "
                "the consumer connects as the runtime role)"
            )
        return self


class KafkaSettings(BaseModel):
    bootstrap_servers: list[str] = Field(
        default_factory=list,
        description="Kafka cluster. Empty: use (and if needed start) the bundled broker.",
    )
    inference_topic: str = "radsentry.inference"
    labels_topic: str = "radsentry.labels"
    alerts_topic: str = "radsentry.alerts"
    dlq_suffix: str = ".dlq"
    group_id: str = "radsentry-ingest"
    client_id: str = "radsentry"
    # With kafka-python's 45 s default the first group join with the bundled broker stalled for
    # about 45 s; with these two values the first record arrives in about 3 s.
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    max_poll_records: int = 5_000
    poll_timeout_ms: int = 500
    request_timeout_ms: int = 30_000
    enable_idempotence: bool = Field(
        True,
        description="Idempotent producers (dead letters, alerts): a retried send is never "
        "written twice. Turn off only for a broker whose idempotent-producer support loses "
        "records (Tansu 0.6 did across a restart: docs/operations.md); dead letters and "
        "alerts may then repeat on their topics, which readers dedupe by key.",
    )
    outbox_check_s: float = Field(
        30.0,
        gt=0,
        description="How often the consumer publishes alerts it did not raise itself "
        "(performance alerts written by the scheduler's jobs, or left by a crash).",
    )

    def dlq_topic(self, topic: str) -> str:
        return topic + self.dlq_suffix


class EdgeSettings(BaseModel):
    """Settings of the DICOM extractor that runs beside the inference service at a site."""

    model_config = HIDDEN_INPUT

    site_id: str = "site-01"
    hmac_key: Secret | None = Field(
        None,
        description="Per-site secret for study_key = HMAC-SHA256(key, StudyInstanceUID), at "
        "least 32 bytes. Unset: a random key is created once in data_dir (demo only).",
    )


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="A request body larger than this is refused with 413 before it is read "
        "(monitor/service/limits.py); the Helm chart's Ingress sets the same limit.",
    )
    max_upload_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="The limit of the one upload route, a stream's reference events "
        "(POST /sites/{site_id}/reference).",
    )
    max_header_bytes: int = Field(
        32 * 1024,
        ge=4096,
        description="Request headers larger than this in all are refused with 431; the server "
        "itself reads at most four times as much, then answers 400 and closes.",
    )


DEFAULT_SUBGROUP_FIELDS: Final = ("PatientSex", "PatientAgeBand", "Manufacturer", "Modality")


class PerformanceSettings(BaseModel):
    """Performance tracking on labels (docs/performance.md)."""

    rolling_window: int = Field(500, ge=10, description="Latest labelled predictions per window.")
    refresh_s: float = Field(300.0, gt=0, description="Seconds between recomputations.")
    label_horizon_days: float = Field(
        30.0, gt=0, description="A label without prediction this long after its event expires."
    )
    subgroup_fields: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SUBGROUP_FIELDS),
        description="Metadata fields whose values get their own metrics. Counted as labels "
        "join: a field added later has statistics from then on (`radsentry performance "
        "rebuild` counts past cases too).",
    )
    metrics: PerformanceConfig = PerformanceConfig()
    estimate_reference: int = Field(
        500,
        ge=50,
        description="Earliest labelled predictions the label-free estimate is fitted on.",
    )
    estimate: EstimateConfig = EstimateConfig()
    rules: RulesConfig = RulesConfig()
    alarms: AlarmConfig = AlarmConfig(open_after=1, close_after=3, cooldown_checks=2)
    """Hysteresis and cooldown of performance alerts. One breach opens an episode: each rule
    already decides on a one-sided 2.5% bound, and checks are ``min_new_labels`` apart."""
    min_new_labels: int = Field(
        100, ge=1, description="New labelled predictions before the window rules check again."
    )
    health: HealthConfig = HealthConfig()
    """The per-stream health score (GET /sites/{site_id}/health, radsentry_health_score)."""

    @model_validator(mode="after")
    def _delong_only(self) -> PerformanceSettings:
        if self.metrics.auroc_ci != "delong":
            raise ValueError(
                "performance.metrics.auroc_ci must be 'delong': the tracker computes its "
                "windows from sufficient statistics, and a bootstrap needs each case"
            )
        return self


class RetrainSettings(BaseModel):
    """When alerts start retraining (retrain/policy.py) and how often alerts are looked at."""

    policy: RetrainPolicy = RetrainPolicy()
    scan_s: float = Field(300.0, gt=0, description="Seconds between scans of active alerts.")
    job: JobConfig = JobConfig()
    jobs_s: float = Field(60.0, gt=0, description="Seconds between looks for pending requests.")
    lease_s: float = Field(
        1800.0,
        gt=0,
        description="A running request whose job has not reported for this long is taken over "
        "(the job died); longer than the slowest epoch.",
    )


class AuditSettings(BaseModel):
    """The change log's signatures and checkpoints (monitor/service/audit/keys.py,
    signing.py, anchors.py)."""

    signing_key_file: Path | None = Field(
        None,
        description="PEM Ed25519 private key that signs every change-log entry and checkpoint "
        "(mounted secret in production); None: a key created once under data_dir (embedded "
        "default).",
    )
    trusted_public_keys: list[Path] = Field(
        default_factory=list,
        description="PEM public keys of earlier signing keys, kept after a rotation so that "
        "the entries and checkpoints they signed still verify.",
    )
    checkpoint_hour: int = Field(1, ge=0, le=23, description="UTC hour of the daily checkpoint.")
    anchor_dir: Path | None = Field(
        None,
        description="Where every checkpoint is also written, one file each, outside the "
        "database (production: a WORM volume or object-storage mount); None: "
        "<data_dir>/audit-anchors (embedded default).",
    )
    max_checkpoint_age_h: float = Field(
        48.0,
        gt=0,
        description="`radsentry audit verify` fails when the newest checkpoint is older.",
    )
    verify_s: float = Field(
        900.0,
        gt=0,
        description="Seconds between verifications of the chain and checkpoints by the "
        "scheduler (metric radsentry_audit_chain_ok).",
    )


# Asymmetric JWS algorithms only: an OIDC provider signs with a private key we never hold, and
# a symmetric one (HS*) would let anyone who has the verification key mint tokens.
OIDC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class AuthSettings(BaseModel):
    """Bearer tokens of the HTTP API (docs/security.md). ``local``: HS256 tokens signed with a
    secret of this deployment (``radsentry token``), for the embedded defaults and the demo;
    ``oidc``: JWTs of an identity provider, verified with its JWKS or a configured public key."""

    model_config = HIDDEN_INPUT

    mode: Literal["local", "oidc"] = "local"
    issuer: str | None = Field(None, description="oidc: the provider's `iss` (required).")
    audience: str = Field("radsentry", min_length=1, description="The tokens' `aud`.")
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "ES256"],
        min_length=1,
        description="oidc: accepted signature algorithms (asymmetric only).",
    )
    jwks_url: str | None = Field(
        None, pattern=r"^https?://", description="oidc: the provider's JWKS endpoint."
    )
    public_key_file: Path | None = Field(
        None, description="oidc: PEM public key instead of a JWKS endpoint."
    )
    roles_claim: str = Field(
        "roles", min_length=1, description="oidc: claim with the roles; dots nest (realm.roles)."
    )
    sites_claim: str = Field("sites", min_length=1, description="oidc: claim with site ids.")
    name_claim: str = Field(
        "name",
        min_length=1,
        description="oidc: claim with the person's printed name, shown with each electronic "
        "signature (21 CFR 11.50); dots nest.",
    )
    signing_max_age_s: float = Field(
        300.0,
        gt=0,
        description="An approval or rejection needs a login at most this old (the token's "
        "`auth_time`, else `iat`); older: 401 re-authenticate to sign.",
    )
    leeway_s: float = Field(30.0, ge=0, le=300, description="Clock skew allowed on exp/iat/nbf.")
    jwks_cache_s: float = Field(300.0, gt=0, description="oidc: how long a fetched JWKS is used.")
    jwks_refresh_cooldown_s: float = Field(
        30.0,
        ge=0,
        description="oidc: least time between refetches for an unknown key id (a token naming "
        "a new kid after a key rotation; bounds what random kids can make us fetch).",
    )
    local_secret: Secret | None = Field(
        None,
        description="local: the HS256 secret, at least 32 bytes. Unset: a random one created "
        "once in data_dir.",
    )
    link_secret: Secret | None = Field(
        None,
        description="The key of the signed links to pages a browser opens (POST /links), at "
        "least 32 bytes, the same on every API replica. Unset: derived (HKDF) from the audit "
        "signing key, which every replica holds.",
    )
    link_ttl_s: int = Field(
        600, gt=0, le=3600, description="How long a signed link to a page stays valid."
    )

    @model_validator(mode="after")
    def _oidc_is_complete(self) -> AuthSettings:
        if self.mode != "oidc":
            return self
        if not self.issuer:
            raise ValueError("auth.issuer is required in oidc mode")
        if (self.jwks_url is None) == (self.public_key_file is None):
            raise ValueError("oidc mode needs exactly one of auth.jwks_url, auth.public_key_file")
        refused = sorted(set(self.algorithms) - OIDC_ALGORITHMS)
        if refused:
            raise ValueError(
                f"auth.algorithms {refused} refused in oidc mode: only asymmetric algorithms "
                f"({', '.join(sorted(OIDC_ALGORITHMS))})"
            )
        return self


class PccpSettings(BaseModel):
    """Change control (docs/pccp.md): where the plans and the locked test cases are."""

    plans_dir: Path | None = Field(
        None,
        description="Folder of PCCP plan YAML files (a ConfigMap in production); None: the "
        "plans shipped in the package (pccp/plans).",
    )
    locked_cases_dir: Path | None = Field(
        None,
        description="Folder with <plan_id>.jsonl, the locked test set's cases; None: "
        "data_dir/locked-test (written by `radsentry train-initial` for its own test cohort).",
    )
    gate_s: float = Field(
        120.0, gt=0, description="Seconds between looks for candidates the gate has not seen."
    )
    image_workers: int = Field(4, ge=1, description="Threads reading locked-test images.")


class ReportSettings(BaseModel):
    """The nightly drift reports (the scheduler's ``nightly-drift-reports`` job)."""

    evidently_appendix: bool = Field(
        False,
        description="Also write each stream's Evidently report beside its site drift page "
        "(<model>-<version>.evidently.html, linked from the page): about 5 MB and seconds per "
        "stream. The API serves it on demand either way (GET /sites/{site_id}/report).",
    )


class HealthSettings(BaseModel):
    """The worker processes' probes (``monitor/service/health.py``)."""

    stale_after_s: float = Field(
        120.0,
        gt=0,
        description="A worker whose loop has not gone round for this long fails /healthz "
        "(Kubernetes restarts it). Above the longest legitimate round: a batch, or a 30 s "
        "retry backoff.",
    )


class LoggingSettings(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_output: bool = Field(False, description="JSON lines (production) instead of console.")


class Settings(BaseSettings):
    """Every setting; ``monitor.service.environment`` refuses a ``RADSENTRY_`` variable that
    names none of them before this is read (``extra="ignore"`` would pass it over silently)."""

    model_config = SettingsConfigDict(
        env_prefix="RADSENTRY_",
        env_nested_delimiter="__",
        extra="ignore",
        hide_input_in_errors=True,  # as HIDDEN_INPUT, for every group validated through here
    )

    data_dir: Path = Path(".radsentry")
    database: DatabaseSettings = DatabaseSettings()
    kafka: KafkaSettings = KafkaSettings()
    edge: EdgeSettings = EdgeSettings()
    api: ApiSettings = ApiSettings()
    logging: LoggingSettings = LoggingSettings()
    health: HealthSettings = HealthSettings()
    drift: EngineConfig = EngineConfig()
    performance: PerformanceSettings = PerformanceSettings()
    retrain: RetrainSettings = RetrainSettings()
    mlflow: MlflowConfig = MlflowConfig()
    audit: AuditSettings = AuditSettings()
    auth: AuthSettings = AuthSettings()
    pccp: PccpSettings = PccpSettings()
    reports: ReportSettings = ReportSettings()

    @property
    def mlflow_tracking_uri(self) -> str:
        """The configured MLflow server, or the embedded SQLite store under ``data_dir``."""
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifact_location(self) -> Path | None:
        """Where the embedded store keeps artifacts; a server decides for itself (None)."""
        return None if self.mlflow.tracking_uri else (self.data_dir / "mlartifacts").resolve()

    @property
    def audit_signing_key_path(self) -> Path:
        """The configured signing key, or the embedded default's under ``data_dir``."""
        return self.audit.signing_key_file or (self.data_dir / "audit-signing.key").resolve()

    @property
    def audit_anchor_dir(self) -> Path:
        """Where checkpoints are anchored: the configured folder, or one under ``data_dir``."""
        return self.audit.anchor_dir or (self.data_dir / "audit-anchors").resolve()

    @property
    def plans_dir(self) -> Path:
        from pccp.catalog import SHIPPED_PLANS

        return self.pccp.plans_dir or SHIPPED_PLANS

    @property
    def locked_cases_dir(self) -> Path:
        return self.pccp.locked_cases_dir or (self.data_dir / "locked-test").resolve()

    @property
    def uses_embedded_broker(self) -> bool:
        return not self.kafka.bootstrap_servers
