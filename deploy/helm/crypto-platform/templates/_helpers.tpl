{{/* Names and labels ---------------------------------------------------------------------------- */}}
{{- define "crypto-platform.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "crypto-platform.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "crypto-platform.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "crypto-platform.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The selector labels of one component: (dict "root" $ "component" "api") */}}
{{- define "crypto-platform.selectorLabels" -}}
app.kubernetes.io/name: {{ include "crypto-platform.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "crypto-platform.labels" -}}
{{ include "crypto-platform.selectorLabels" . }}
app.kubernetes.io/part-of: crypto-platform
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "crypto-platform.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "crypto-platform.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "crypto-platform.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Where the platform finds MLflow: the chart's own server, or the external one. */}}
{{- define "crypto-platform.mlflowUri" -}}
{{- if .Values.mlflow.enabled -}}
{{- printf "http://%s-mlflow:%v" (include "crypto-platform.fullname" .) .Values.mlflow.port -}}
{{- else -}}
{{- required "mlflow.externalTrackingUri is required when mlflow.enabled is false" .Values.mlflow.externalTrackingUri -}}
{{- end -}}
{{- end -}}

{{/* Environment --------------------------------------------------------------------------------- */}}
{{/* Variables read from the existing Secret: (dict "root" $ "vars" (list (list "ENV_NAME" "SECRET_NAME") ...)).
     Kubernetes expands $(NAME) only for variables defined earlier in the list, so these come first. */}}
{{- define "crypto-platform.secretEnv" -}}
{{- $root := .root -}}
{{- range .vars }}
- name: {{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ required "existingSecret is required: the Secret holding the .env credentials" $root.Values.existingSecret }}
      key: {{ required (printf "secretKeys.%s is required" (index . 1)) (index $root.Values.secretKeys (index . 1)) }}
{{- end }}
{{- end -}}

{{/* The platform environment every process shares (x-platform-env): the ConfigMap and the S3 keys. */}}
{{- define "crypto-platform.platformEnvFrom" -}}
- configMapRef:
    name: {{ include "crypto-platform.fullname" . }}-env
{{- end -}}

{{- define "crypto-platform.platformSecretEnv" -}}
{{ include "crypto-platform.secretEnv" (dict "root" . "vars" (list (list "AWS_ACCESS_KEY_ID" "S3_ACCESS_KEY") (list "AWS_SECRET_ACCESS_KEY" "S3_SECRET_KEY"))) }}
{{- end -}}

{{/* The history DB in PostgreSQL (compose's &history-url): the serving faces and the prediction sink
write to it, the track record and the daily report read it. The credentials come first: $(X) expands only
from a variable defined earlier. */}}
{{- define "crypto-platform.historyEnv" -}}
{{ include "crypto-platform.secretEnv" (dict "root" . "vars" (list (list "POSTGRES_USER" "POSTGRES_USER") (list "POSTGRES_PASSWORD" "POSTGRES_PASSWORD"))) }}
- name: CRYPTO_API_HISTORY_URL
  value: {{ printf "postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@%s:%v/%s" .Values.postgres.host .Values.postgres.port .Values.postgres.servingDatabase | quote }}
{{- end -}}

{{/* The API and gRPC faces (x-serving-env in compose): request history in PostgreSQL, the API keys, and
every auth and limit setting, so both faces enforce the same rules. */}}
{{- define "crypto-platform.servingEnv" -}}
{{ include "crypto-platform.historyEnv" . }}
{{ include "crypto-platform.secretEnv" (dict "root" . "vars" (list (list "CRYPTO_ADMIN_API_KEY" "CRYPTO_ADMIN_API_KEY") (list "CRYPTO_READER_API_KEY" "CRYPTO_READER_API_KEY") (list "CRYPTO_API_KEY_PEPPER" "CRYPTO_API_KEY_PEPPER"))) }}
- name: CRYPTO_API_KEYS
  value: "admin:admin:$(CRYPTO_ADMIN_API_KEY),reader:reader:$(CRYPTO_READER_API_KEY)"
- name: CRYPTO_API_REQUIRE_KEY
  value: {{ .Values.api.requireKey | quote }}
- name: CRYPTO_API_RATE_LIMIT
  value: {{ .Values.api.rateLimit | quote }}
- name: CRYPTO_API_TRUSTED_PROXIES
  value: {{ .Values.api.trustedProxies | quote }}
- name: CRYPTO_API_MAX_STREAMS
  value: {{ .Values.api.maxStreams | quote }}
- name: CRYPTO_API_MAX_STREAMS_PER_CALLER
  value: {{ .Values.api.maxStreamsPerCaller | quote }}
- name: CRYPTO_API_MODEL_POLL_S
  value: {{ .Values.api.modelPollSeconds | quote }}
{{- end -}}

{{/* Pods ---------------------------------------------------------------------------------------- */}}
{{- define "crypto-platform.podSpecCommon" -}}
serviceAccountName: {{ include "crypto-platform.serviceAccountName" . }}
# No process of the platform talks to the Kubernetes API.
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{/* Image, security context and the writable /tmp of a platform container. */}}
{{- define "crypto-platform.containerCommon" -}}
image: {{ include "crypto-platform.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- end -}}

{{- define "crypto-platform.podAnnotations" -}}
{{- with .Values.podAnnotations }}
{{- toYaml . }}
{{- end }}
{{- end -}}

{{/* The producer's liveness: its process runs beside tini (PID 1). */}}
{{- define "crypto-platform.producerAliveCheck" -}}
- python
- -c
- |
  import os
  def argv(pid):
      try:
          with open(f"/proc/{pid}/cmdline", "rb") as f:
              return f.read().split(b"\0")
      except OSError:
          return []
  pids = [p for p in os.listdir("/proc") if p.isdigit() and p != "1"]
  if not any(b"produce" in argv(p)[1:3] for p in pids):
      raise SystemExit("producer process not running")
{{- end -}}
