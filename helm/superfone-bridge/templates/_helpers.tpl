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

{{- /*
  The recording copier's own pods (recordings.copier.enabled). Their name
  differs from the serve pods': the serve workload's selector (immutable)
  and its Services, HPA and budget select name + instance, and must not
  take the copier's pods in.
*/ -}}
{{- define "superfone-bridge.copierSelectorLabels" -}}
app.kubernetes.io/name: {{ include "superfone-bridge.name" . }}-recordings
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "superfone-bridge.copierName" -}}
{{- printf "%s-recordings" (include "superfone-bridge.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- /* The copier's admin Service, whose name is its metrics' job label. */ -}}
{{- define "superfone-bridge.copierAdminService" -}}
{{- printf "%s-recordings-admin" (include "superfone-bridge.fullname" .) | trunc 63 | trimSuffix "-" -}}
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

{{- /*
  Where the recordings volume is mounted: the directory of a file:// store
  when recordings.persistence is on, else "". The pods that copy mount it:
  the copier's own with recordings.copier.enabled, else the serve pods.
  Refuses a volume for an object store, a file:// store left on the pod's
  read-only root filesystem (no volume, and no extraVolumeMounts entry
  holding it), and one created ReadWriteOnce claim for several pods.
*/ -}}
{{- define "superfone-bridge.recordingsDir" -}}
{{- $r := .Values.recordings -}}
{{- if $r.enabled -}}
{{- $dir := "" -}}
{{- if hasPrefix "file://" $r.storeUrl -}}
{{- $dir = trimSuffix "/" (trimPrefix "file://" $r.storeUrl) -}}
{{- end -}}
{{- if $r.persistence.enabled -}}
{{- if not $dir -}}
{{- fail "recordings.persistence is for a file:// store; an object store (s3://, gs://, az://) needs no volume" -}}
{{- end -}}
{{- $rwo := and (not $r.persistence.existingClaim) (not (has "ReadWriteMany" $r.persistence.accessModes)) -}}
{{- if $r.copier.enabled -}}
{{- if and $rwo (gt (int $r.copier.replicas) 1) -}}
{{- fail "recordings.persistence with recordings.copier.replicas > 1 needs accessModes [ReadWriteMany]: every copier pod mounts the same claim" -}}
{{- end -}}
{{- else if and $rwo (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) -}}
{{- fail "recordings.persistence with more than one pod needs accessModes [ReadWriteMany]: every pod mounts the same claim (or run the copier alone: recordings.copier.enabled, one replica)" -}}
{{- end -}}
{{- $dir -}}
{{- else if $dir -}}
{{- $held := false -}}
{{- range $.Values.extraVolumeMounts -}}
{{- if hasPrefix (printf "%s/" (trimSuffix "/" .mountPath)) (printf "%s/" $dir) -}}
{{- $held = true -}}
{{- end -}}
{{- end -}}
{{- if not $held -}}
{{- fail "a file:// recordings.storeUrl needs recordings.persistence.enabled (or an extraVolumeMounts entry holding it): the root filesystem is read-only, and copies must outlive the pod" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /*
  Environment the serve and the copier containers both get: Kafka's
  options, OpenTelemetry, the schema registry's password.
*/ -}}
{{- define "superfone-bridge.clientEnv" -}}
{{- if .Values.kafka.optionsSecret }}
- name: SUPERFONE_BRIDGE_KAFKA__OPTIONS_DIR
  value: /var/run/secrets/superfone-kafka
{{- end }}
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .Values.otel.protocol | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: {{ .Values.otel.serviceName | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .Values.otel.sampler | quote }}
{{- if .Values.registryPassword.existingSecret }}
- name: SUPERFONE_REGISTRY_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.registryPassword.existingSecret }}
      key: {{ .Values.registryPassword.key }}
{{- end }}
{{- end -}}

{{- /* The [recordings] keys of the pods that copy. */ -}}
{{- define "superfone-bridge.recordingsEnv" -}}
{{- $r := .Values.recordings -}}
- name: SUPERFONE_BRIDGE_RECORDINGS__ENABLED
  value: "true"
- name: SUPERFONE_BRIDGE_RECORDINGS__STORE_URL
  value: {{ $r.storeUrl | quote }}
- name: SUPERFONE_BRIDGE_RECORDINGS__ALLOWED_HOSTS
  value: {{ join "," $r.allowedHosts | quote }}
- name: SUPERFONE_BRIDGE_RECORDINGS__MAX_BYTES
  value: {{ $r.maxBytes | int64 | quote }}
- name: SUPERFONE_BRIDGE_RECORDINGS__CONCURRENCY
  value: {{ $r.concurrency | int | quote }}
{{- end -}}

{{- /* The bridge's TOML: the chart's ConfigMap or existingConfigSecret. */ -}}
{{- define "superfone-bridge.configVolume" -}}
- name: config
  {{- if .Values.existingConfigSecret }}
  secret:
    secretName: {{ .Values.existingConfigSecret }}
    items:
      - key: superfone-bridge.toml
        path: superfone-bridge.toml
  {{- else }}
  configMap:
    name: {{ include "superfone-bridge.fullname" . }}
  {{- end }}
{{- end -}}
