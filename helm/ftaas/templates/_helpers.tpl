{{/* Names and labels. Selectors use only name, instance and component: never the chart version, so
upgrades keep matching the same pods. */}}
{{- define "ftaas.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ftaas.fullname" -}}
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

{{- define "ftaas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ftaas.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ftaas.labels" -}}
{{ include "ftaas.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: ftaas
{{- end -}}

{{- define "ftaas.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "ftaas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ftaas.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ftaas.secretName" -}}
{{- default (printf "%s-secrets" (include "ftaas.fullname" .)) .Values.existingSecret -}}
{{- end -}}

{{/* Environment of every ftaas container: settings from the ConfigMap, connection strings and keys
from the Secret (never inline). */}}
{{- define "ftaas.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "ftaas.fullname" . }}-config
  - secretRef:
      name: {{ include "ftaas.secretName" . }}
{{- end -}}

{{- define "ftaas.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "ftaas.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "ftaas.volumes" -}}
- name: data
  emptyDir:
    sizeLimit: {{ .Values.dataVolume.sizeLimit }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "ftaas.volumeMounts" -}}
- name: data
  mountPath: /var/lib/ftaas
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* A GPU-aware resources block: .resources plus nvidia.com/gpu = .gpus when > 0. */}}
{{- define "ftaas.resources" -}}
{{- $resources := deepCopy (.resources | default dict) -}}
{{- if gt (int .gpus) 0 -}}
{{- $limits := merge (dict "nvidia.com/gpu" (int .gpus)) ($resources.limits | default dict) -}}
{{- $requests := merge (dict "nvidia.com/gpu" (int .gpus)) ($resources.requests | default dict) -}}
{{- $_ := set $resources "limits" $limits -}}
{{- $_ := set $resources "requests" $requests -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}
