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

{{- define "radsentry.databaseEnv" -}}
- name: RADSENTRY_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.urlKey }}
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
