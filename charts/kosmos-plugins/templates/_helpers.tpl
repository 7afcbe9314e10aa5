{{/* Names and labels shared by every template. */}}

{{- define "kosmos-plugins.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object's name; short enough for "-operator"/"-webhook" suffixes. */}}
{{- define "kosmos-plugins.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kosmos-plugins.operator.name" -}}
{{ include "kosmos-plugins.fullname" . }}-operator
{{- end }}

{{- define "kosmos-plugins.webhook.name" -}}
{{ include "kosmos-plugins.fullname" . }}-webhook
{{- end }}

{{/* The MutatingWebhookConfiguration is cluster-scoped: its name carries the namespace. */}}
{{- define "kosmos-plugins.webhook.configuration" -}}
{{ include "kosmos-plugins.webhook.name" . }}-{{ .Release.Namespace }}
{{- end }}

{{- define "kosmos-plugins.webhook.bootstrapSecret" -}}
{{ include "kosmos-plugins.webhook.name" . }}-bootstrap
{{- end }}

{{/* The Secret with the key of the webhook's mark (made empty by the chart, filled by the webhook). */}}
{{- define "kosmos-plugins.webhook.markKeySecret" -}}
{{ include "kosmos-plugins.webhook.name" . }}-mark-key
{{- end }}

{{/* The Secret the webhook serves from (cert-manager's, or the admin's). */}}
{{- define "kosmos-plugins.webhook.tlsSecret" -}}
{{- if eq .Values.certificates.mode "secret" }}
{{- required "certificates.secret.name is required when certificates.mode is secret" .Values.certificates.secret.name }}
{{- else }}
{{- include "kosmos-plugins.webhook.name" . }}-tls
{{- end }}
{{- end }}

{{- define "kosmos-plugins.chart" -}}
{{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The standard labels; call with (dict "root" $ "component" "operator"). */}}
{{- define "kosmos-plugins.labels" -}}
helm.sh/chart: {{ include "kosmos-plugins.chart" .root }}
{{ include "kosmos-plugins.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: kosmos-plugins
{{- end }}

{{- define "kosmos-plugins.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kosmos-plugins.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* registry/repository:tag of a component; call with (dict "root" $ "repository" "x"). */}}
{{- define "kosmos-plugins.image" -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag }}
{{- if .root.Values.image.registry }}
{{- printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) .repository $tag }}
{{- else }}
{{- printf "%s:%s" .repository $tag }}
{{- end }}
{{- end }}

{{- define "kosmos-plugins.executorImage" -}}
{{- if .Values.executor.image.override }}
{{- .Values.executor.image.override }}
{{- else }}
{{- include "kosmos-plugins.image" (dict "root" . "repository" .Values.executor.image.repository) }}
{{- end }}
{{- end }}

{{/* The operator's identity as the apiserver names it: the webhook trusts only this user. */}}
{{- define "kosmos-plugins.operator.user" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "kosmos-plugins.operator.name" . }}
{{- end }}

{{/* Restricted pod security: non-root, no privilege escalation, no capabilities. */}}
{{- define "kosmos-plugins.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
{{- /* Secret volumes are written root-owned; fsGroup makes the kubelet give them our group, so
the 0440 certificate files are readable without opening them to every user. */}}
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "kosmos-plugins.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Where the components' watch rights go, as a JSON list: each of watchNamespaces (a Role there), or
"" alone when it is empty (a ClusterRole).
*/}}
{{- define "kosmos-plugins.watchScopes" -}}
{{- if .Values.watchNamespaces }}{{ toJson .Values.watchNamespaces }}{{ else }}[""]{{ end }}
{{- end }}
