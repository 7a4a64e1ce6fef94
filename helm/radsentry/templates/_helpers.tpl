{{/* Names and labels. */}}
{{- define "radsentry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "radsentry.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "radsentry.component" (dict "root" $ "component" "api"): a component's object name. */}}
{{- define "radsentry.componentName" -}}
{{- printf "%s-%s" (include "radsentry.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "radsentry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "radsentry.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "radsentry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "radsentry.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: radsentry
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* Labels of the release's objects that belong to no one component. */}}
{{- define "radsentry.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "radsentry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: radsentry
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "radsentry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "radsentry.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "radsentry.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Hardening of every pod: not root, the runtime's default seccomp profile, no service-account
token (no component talks to the Kubernetes API). Not values: a chart user who needs less has
to change the chart, in review.
*/}}
{{- define "radsentry.podSecurity" -}}
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "radsentry.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  privileged: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities:
    drop: ["ALL"]
{{- end -}}

{{/* Scheduling of a component: (dict "values" .Values.api). */}}
{{- define "radsentry.scheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Environment of the long-running processes: the settings and detector ConfigMaps, and
for those that reach MLflow (dict "root" $ "mlflow" true) its optional credentials Secret. */}}
{{- define "radsentry.envFrom" -}}
envFrom:
  - configMapRef:
      name: {{ include "radsentry.componentName" (dict "root" .root "component" "settings") }}
  - configMapRef:
      name: {{ include "radsentry.componentName" (dict "root" .root "component" "detectors") }}
  {{- if and .mlflow .root.Values.mlflow.credentialsSecret }}
  - secretRef:
      name: {{ .root.Values.mlflow.credentialsSecret }}
  {{- end }}
{{- end -}}

{{/* A setting from a Secret: (dict "name" "RADSENTRY_..." "secret" $name "key" $key). */}}
{{- define "radsentry.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end -}}

{{/* The database URL of the API and the scheduler: the runtime role's. */}}
{{- define "radsentry.databaseEnv" -}}
{{- include "radsentry.secretEnv" (dict "name" "RADSENTRY_DATABASE__URL" "secret" .Values.database.existingSecret "key" .Values.database.urlKey) -}}
{{- end -}}

{{/* The consumers' database URL: the consumer role's, else the runtime role's. */}}
{{- define "radsentry.consumerDatabaseEnv" -}}
{{- with .Values.database.consumer -}}
{{- if .existingSecret -}}
{{- include "radsentry.secretEnv" (dict "name" "RADSENTRY_DATABASE__URL" "secret" .existingSecret "key" .urlKey) -}}
{{- else -}}
{{- include "radsentry.databaseEnv" $ -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The migration Job's: the schema owner's URL, and the roles it grants. */}}
{{- define "radsentry.migrationDatabaseEnv" -}}
{{- $database := .Values.database -}}
{{- if $database.migration.existingSecret -}}
{{- include "radsentry.secretEnv" (dict "name" "RADSENTRY_DATABASE__MIGRATION_URL" "secret" $database.migration.existingSecret "key" $database.migration.urlKey) -}}
{{- else -}}
{{- include "radsentry.databaseEnv" . -}}
{{- end -}}
{{- with $database.runtimeRole }}
- name: RADSENTRY_DATABASE__RUNTIME_ROLE
  value: {{ . | quote }}
{{- end }}
{{- with $database.consumerRole }}
- name: RADSENTRY_DATABASE__CONSUMER_ROLE
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "radsentry.authEnv" -}}
{{- if eq .Values.auth.mode "local" }}
- name: RADSENTRY_AUTH__LOCAL_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.auth.localSecret.existingSecret }}
      key: {{ .Values.auth.localSecret.key }}
{{- end }}
{{- end -}}

{{/* The probes of a worker (consumer, scheduler), served on its metrics port
(monitor/service/health.py). /healthz: its loop has gone round within
RADSENTRY_HEALTH__STALE_AFTER_S (120 s); /readyz: also its last round went well (the consumer
stored its batch, the scheduler reached the database). The startup probe covers the slow
first import. */}}
{{- define "radsentry.workerProbes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 5
  failureThreshold: 36
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/* The audit key, in the processes that write the change log (API, scheduler): it signs every
entry and checkpoint. Earlier keys' public halves stay trusted after a rotation. */}}
{{- define "radsentry.auditKeyEnv" -}}
- name: RADSENTRY_AUDIT__SIGNING_KEY_FILE
  value: /etc/radsentry/audit/signing.key
{{- with .Values.audit.trustedPublicKeys.keys }}
- name: RADSENTRY_AUDIT__TRUSTED_PUBLIC_KEYS
  value: {{ include "radsentry.trustedKeyPaths" $ | quote }}
{{- end }}
{{- end -}}

{{- define "radsentry.trustedKeyPaths" -}}
{{- $paths := list -}}
{{- range .Values.audit.trustedPublicKeys.keys -}}
{{- $paths = append $paths (printf "/etc/radsentry/audit-trusted/%s" .) -}}
{{- end -}}
{{- toJson $paths -}}
{{- end -}}

{{- define "radsentry.auditKeyMounts" -}}
- name: audit-signing-key
  mountPath: /etc/radsentry/audit
  readOnly: true
{{- if .Values.audit.trustedPublicKeys.keys }}
- name: audit-trusted-keys
  mountPath: /etc/radsentry/audit-trusted
  readOnly: true
{{- end }}
{{- end -}}

{{- define "radsentry.auditKeyVolumes" -}}
- name: audit-signing-key
  secret:
    secretName: {{ .Values.audit.signingKey.existingSecret }}
    # Group-readable: the kubelet gives the file to fsGroup 10001, the process's group.
    defaultMode: 0440
    items:
      - key: {{ .Values.audit.signingKey.key }}
        path: signing.key
{{- if .Values.audit.trustedPublicKeys.keys }}
- name: audit-trusted-keys
  secret:
    secretName: {{ required "audit.trustedPublicKeys.existingSecret is required with audit.trustedPublicKeys.keys" .Values.audit.trustedPublicKeys.existingSecret }}
    defaultMode: 0444
{{- end }}
{{- end -}}

{{/* Writable places on a read-only root filesystem: data_dir and /tmp (HOME, caches). */}}
{{- define "radsentry.scratchMounts" -}}
- name: data
  mountPath: /var/lib/radsentry
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "radsentry.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- end -}}

{{- define "radsentry.checks" -}}
{{- $database := .Values.database -}}
{{- if and (not $database.runtimeRole) (not $database.migration.existingSecret) (not $database.allowSingleRole) -}}
{{- fail "database.runtimeRole is empty: every component would connect as the role that owns the schema, which can lift the change log's triggers. Name the runtime role and the owner's Secret (docs/deploy.md, Database roles), or set database.allowSingleRole: true for an evaluation cluster" -}}
{{- end -}}
{{- if and $database.runtimeRole (not $database.migration.existingSecret) -}}
{{- fail "database.runtimeRole is set but database.migration.existingSecret is empty: the migration Job must connect as the role that owns the schema, with its own Secret, never as the runtime role (docs/deploy.md, Database roles)" -}}
{{- end -}}
{{- if and $database.migration.existingSecret (not $database.runtimeRole) -}}
{{- fail "database.migration.existingSecret is set but database.runtimeRole is empty: name the role of database.existingSecret's URL, so that the migration Job grants it what the API and the scheduler need" -}}
{{- end -}}
{{- if ne (empty $database.consumerRole) (empty $database.consumer.existingSecret) -}}
{{- fail "database.consumerRole and database.consumer.existingSecret go together: the consumer role, and the Secret with the URL that logs in as it" -}}
{{- end -}}
{{- if and $database.consumerRole (eq $database.consumerRole $database.runtimeRole) -}}
{{- fail "database.consumerRole equals database.runtimeRole: the consumers need a role of their own (or leave consumerRole and consumer.existingSecret empty)" -}}
{{- end -}}
{{- if gt (int .Values.consumer.replicas) (int .Values.kafka.partitions) -}}
{{- fail (printf "consumer.replicas (%d) exceeds kafka.partitions (%d): a consumer group gives each partition to one consumer, so the extra replicas would idle. Lower consumer.replicas or add partitions to %s and raise kafka.partitions." (int .Values.consumer.replicas) (int .Values.kafka.partitions) .Values.kafka.inferenceTopic) -}}
{{- end -}}
{{- if and (eq .Values.auth.mode "local") (not .Values.auth.allowLocalInProduction) -}}
{{- fail "auth.mode is local: anyone with the shared secret could mint any identity, signers included. Use oidc (set auth.issuer and auth.jwksUrl), or set auth.allowLocalInProduction: true for an evaluation cluster" -}}
{{- end -}}
{{- if and (eq .Values.auth.mode "oidc") (not .Values.auth.issuer) -}}
{{- fail "auth.mode is oidc: set auth.issuer (the identity provider's iss)" -}}
{{- end -}}
{{- if and (eq .Values.auth.mode "oidc") (not .Values.auth.jwksUrl) -}}
{{- fail "auth.mode is oidc: set auth.jwksUrl (the identity provider's JWKS endpoint)" -}}
{{- end -}}
{{- if and .Values.pccp.lockedCases.existingConfigMap .Values.pccp.lockedCases.existingClaim -}}
{{- fail "pccp.lockedCases: set existingConfigMap or existingClaim, not both" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled .Values.metrics.serviceMonitor.enabled (not .Values.networkPolicy.metricsFrom) -}}
{{- fail "metrics.serviceMonitor is enabled but networkPolicy.metricsFrom is empty: the NetworkPolicies would keep Prometheus out. Name Prometheus's namespace or pods there." -}}
{{- end -}}
{{- end -}}
