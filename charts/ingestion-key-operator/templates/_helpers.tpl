{{/* Name of the chart, overridable. */}}
{{- define "iko.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects; also the name of its cluster-scoped RBAC objects. */}}
{{- define "iko.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "iko.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "iko.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iko.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "iko.labels" -}}
helm.sh/chart: {{ include "iko.chart" . }}
{{ include "iko.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: ingestion-key-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "iko.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "iko.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "iko.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* IBM Cloud endpoints: explicit URLs win over the public/private choice. */}}
{{- define "iko.iamEndpoint" -}}
{{- if .Values.ibmCloud.iamEndpoint }}
{{- .Values.ibmCloud.iamEndpoint }}
{{- else if eq .Values.ibmCloud.endpoints "public" }}
{{- "https://iam.cloud.ibm.com" }}
{{- else if eq .Values.ibmCloud.endpoints "private" }}
{{- "https://private.iam.cloud.ibm.com" }}
{{- else }}
{{- fail (printf "ibmCloud.endpoints must be public or private, not %q" .Values.ibmCloud.endpoints) }}
{{- end }}
{{- end }}

{{- define "iko.resourceControllerEndpoint" -}}
{{- if .Values.ibmCloud.resourceControllerEndpoint }}
{{- .Values.ibmCloud.resourceControllerEndpoint }}
{{- else if eq .Values.ibmCloud.endpoints "public" }}
{{- "https://resource-controller.cloud.ibm.com" }}
{{- else if eq .Values.ibmCloud.endpoints "private" }}
{{- "https://private.resource-controller.cloud.ibm.com" }}
{{- else }}
{{- fail (printf "ibmCloud.endpoints must be public or private, not %q" .Values.ibmCloud.endpoints) }}
{{- end }}
{{- end }}

{{/*
The rules of the operator, and nothing more:
- IngestionKeyRequests: read and watch them, patch finalizers (JSON patch; no update).
- their status subresource: read it, write conditions (merge patch; no update).
- Secrets: read the API key Secret and the managed Secret (get), watch the managed Secrets (list,
  watch: by label, and as metadata to notice API key Secrets appearing), write the managed Secret
  (create, patch), delete the request's old Secret after spec.secret.name changed (delete: only a
  Secret it owns, with a uid precondition). No update: owner references remove managed Secrets.
- events.k8s.io Events: report what happened (create, patch for series).
- With rbac.restartTargets: DaemonSets, Deployments, StatefulSets named in spec.restartTargets:
  read their roll-out (get), annotate their pod template with the credential's fingerprint
  (patch). No list, watch, create or delete.
*/}}
{{- define "iko.rules" -}}
- apiGroups: ["keysync.dev"]
  resources: ["ingestionkeyrequests"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["keysync.dev"]
  resources: ["ingestionkeyrequests/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.rbac.restartTargets }}
- apiGroups: ["apps"]
  resources: ["daemonsets", "deployments", "statefulsets"]
  verbs: ["get", "patch"]
{{- end }}
{{- end }}
