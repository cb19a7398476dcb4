{{- define "superfone-bridge.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "superfone-bridge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "superfone-bridge.labels" -}}
app.kubernetes.io/name: {{ include "superfone-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "superfone-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "superfone-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "superfone-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "superfone-bridge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "superfone-bridge.authSecretName" -}}
{{- default (printf "%s-auth" (include "superfone-bridge.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "superfone-bridge.workloadKind" -}}
{{- if .Values.spool.persistence.enabled -}}StatefulSet{{- else -}}Deployment{{- end -}}
{{- end -}}
