{{- define "superfone-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "superfone-bridge.fullname" -}}
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

{{- /* The image: repository@digest with image.digest, else repository:tag (the chart's appVersion by default). */ -}}
{{- define "superfone-bridge.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
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

{{- /* The webhook port's name: https when the bridge serves TLS (tls.secretName), else http. */ -}}
{{- define "superfone-bridge.portName" -}}
{{- if .Values.tls.secretName }}https{{ else }}http{{ end -}}
{{- end -}}

{{- /* The drain Jobs' pods (spoolDrain): not selected by the serve workload or its Services. */ -}}
{{- define "superfone-bridge.drainSelectorLabels" -}}
app.kubernetes.io/name: {{ include "superfone-bridge.name" . }}-spool-drain
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /*
  A Kubernetes storage quantity in bytes: plain bytes, Ki Mi Gi Ti Pi, or
  k M G T P (powers of 1000), with an optional decimal fraction ("1.5Gi").
  Anything else is refused. Called with (list "spool.persistence.size" value).
*/ -}}
{{- define "superfone-bridge.quantityBytes" -}}
{{- $key := index . 0 -}}
{{- $q := toString (index . 1) -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- $suffix := trimPrefix $num $q -}}
{{- $units := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "P" 1000000000000000 -}}
{{- if or (not $num) (not (hasKey $units $suffix)) -}}
{{- fail (printf "%s %q is not a quantity the chart can read: use bytes, or a number followed by Ki, Mi, Gi, Ti, Pi, k, M, G, T or P" $key $q) -}}
{{- end -}}
{{- mulf (float64 $num) (get $units $suffix) | floor | int64 -}}
{{- end -}}

{{- /*
  spool.maxBytes must fit the spool's volume (the claim, or the emptyDir's
  sizeLimit, past which the pod is evicted) with headroom: a tenth of the
  volume, at least 64Mi. The spool's cap counts its segments and parked
  records only; beside them live acks.log (12 bytes per acknowledged entry
  until the spool empties: about 2% of it at the average 580-byte entry),
  schema_ids.json and the filesystem's own metadata, and ext4 keeps 5% of
  its blocks for root while the bridge runs as user 10001.
*/ -}}
{{- define "superfone-bridge.checkSpoolFits" -}}
{{- $size := .Values.spool.persistence.size -}}
{{- $bytes := include "superfone-bridge.quantityBytes" (list "spool.persistence.size" $size) | int64 -}}
{{- $cap := .Values.spool.maxBytes | int64 -}}
{{- $headroom := max (div $bytes 10) 67108864 -}}
{{- if gt (add $cap $headroom) $bytes -}}
{{- $needMi := div (add (max (add $cap 67108864) (add (div (mul $cap 10) 9) 1)) 1048575) 1048576 -}}
{{- fail (printf "spool.maxBytes (%d) does not fit spool.persistence.size %s (%d bytes) with its headroom of %d bytes (a tenth of the volume, at least 64Mi: acks.log, schema_ids.json, filesystem metadata, and ext4's 5%% kept for root while the bridge runs as a user): set spool.maxBytes to at most %d, or spool.persistence.size to at least %dMi" $cap $size $bytes $headroom (sub $bytes $headroom) $needMi) -}}
{{- end -}}
{{- end -}}

{{- /*
  The guards of scale-in: the HPA with no shutdown drain (an emptyDir is
  deleted with its pod; a retained volume waits for a spoolDrain Job), and
  drain Jobs aimed at a running pod's claim.
*/ -}}
{{- define "superfone-bridge.checkScaleIn" -}}
{{- $fullname := include "superfone-bridge.fullname" . -}}
{{- $noDrain := not (gt (int .Values.spool.shutdownDrainSeconds) 0) -}}
{{- if and .Values.autoscaling.enabled $noDrain -}}
{{- if .Values.spool.persistence.enabled -}}
{{- fail "autoscaling with spool.persistence needs spool.shutdownDrainSeconds > 0: a pod scaled in would leave its spooled events on a volume nobody reads" -}}
{{- else -}}
{{- fail "autoscaling with spool.persistence.enabled=false (an emptyDir) needs spool.shutdownDrainSeconds > 0: every scale-in would delete the events its pod acknowledged (202) and had not sent to Kafka" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.spoolDrain.enabled .Values.spool.persistence.enabled -}}
{{- $running := int .Values.replicaCount -}}
{{- $from := printf "replicaCount %d" $running -}}
{{- if .Values.autoscaling.enabled -}}
{{- $running = int .Values.autoscaling.minReplicas -}}
{{- $from = printf "autoscaling.minReplicas %d" $running -}}
{{- end -}}
{{- range .Values.spoolDrain.claimNames -}}
{{- if regexMatch (printf "^spool-%s-[0-9]+$" (regexQuoteMeta $fullname)) . -}}
{{- $ordinal := regexFind "[0-9]+$" . | int -}}
{{- if lt $ordinal $running -}}
{{- fail (printf "spoolDrain.claimNames: %s is the spool of pod %s-%d, which runs (%s): it replays its own spool, and `spool drain` would be refused (the spool is locked); list only the claims of pods scaled in" . $fullname $ordinal $from) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /*
  The termination grace period: terminationGracePeriodSeconds, or when it
  is null the bridge's worst-case stop, which is derived here; a value
  below that stop is refused. The stop, step by step (src/app.rs
  run_until_stopped; each step bounded):
    preStopSleepSeconds                 (the preStop hook counts in the grace)
  + server.drain_timeout_ms             (in-flight requests; 20 s by default,
                                         read from `config` or extraEnv)
  + 10 s if the serve pods copy recordings (the copies' stop, FLUSH_TIMEOUT)
  + 10 s                                (the replay finishes its window, FLUSH_TIMEOUT)
  + 4 s                                 (Kafka reachable? 2 s, and the topics created, 2 s)
  + spool.shutdownDrainSeconds          (the spool sent to Kafka)
  + 10 s                                (the producer's flush, FLUSH_TIMEOUT)
  + 5 s margin                          (the spool's fsync, the log writer, exit)
  = 69 s with the defaults (62-64 s of stop, 5 s of margin).
*/ -}}
{{- define "superfone-bridge.terminationGrace" -}}
{{- $drainMs := 20000 -}}
{{- $set := regexFind "(?m)^[ \t]*(server\\.)?drain_timeout_ms[ \t]*=[ \t]*[0-9_]+" (toString .Values.config) -}}
{{- if and $set (not .Values.existingConfigSecret) -}}
{{- $drainMs = regexFind "[0-9_]+$" $set | replace "_" "" | int -}}
{{- end -}}
{{- range .Values.extraEnv -}}
{{- if and (eq .name "SUPERFONE_BRIDGE_SERVER__DRAIN_TIMEOUT_MS") .value -}}
{{- $drainMs = int .value -}}
{{- end -}}
{{- end -}}
{{- $requests := div (add $drainMs 999) 1000 -}}
{{- $preStop := int .Values.preStopSleepSeconds -}}
{{- $spool := int .Values.spool.shutdownDrainSeconds -}}
{{- $copies := 0 -}}
{{- if and .Values.recordings.enabled (not .Values.recordings.copier.enabled) -}}
{{- $copies = 10 -}}
{{- end -}}
{{- $stop := add $preStop $requests $copies 10 4 $spool 10 5 -}}
{{- $grace := .Values.terminationGracePeriodSeconds -}}
{{- if kindIs "invalid" $grace -}}
{{- $stop -}}
{{- else if lt (int $grace) (int $stop) -}}
{{- $steps := printf "preStop %d + request drain %d" $preStop $requests -}}
{{- if $copies }}{{ $steps = printf "%s + recordings stop 10" $steps }}{{ end -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) is shorter than the bridge's worst-case stop, %d s: %s + replay window 10 + Kafka check 4 + spool drain %d + producer flush 10 + margin 5; raise it, or leave it null for the chart to derive it" (int $grace) $stop $steps $spool) -}}
{{- else -}}
{{- $grace -}}
{{- end -}}
{{- end -}}

{{- /*
  SUPERFONE_BRIDGE_SERVER__WORKER_THREADS from the CPU request (else the
  CPU limit): max(1, ceil(cpu)), since server.worker_threads = 0 counts the
  node's cores, which a request does not bound (a 100m pod on a 64-core node
  would start 63 workers). Nothing when no CPU is set, or when the user set
  worker_threads in `config` or in extraEnv. Called with the resources map.
*/ -}}
{{- define "superfone-bridge.workerThreadsEnv" -}}
{{- $resources := .Values.resources | default dict -}}
{{- $cpu := dig "requests" "cpu" "" $resources | toString -}}
{{- if not $cpu -}}
{{- $cpu = dig "limits" "cpu" "" $resources | toString -}}
{{- end -}}
{{- $set := and (not .Values.existingConfigSecret) (regexMatch "(?m)^[ \t]*(server\\.)?worker_threads[ \t]*=" (toString .Values.config)) -}}
{{- range .Values.extraEnv -}}
{{- if eq .name "SUPERFONE_BRIDGE_SERVER__WORKER_THREADS" }}{{ $set = true }}{{ end -}}
{{- end -}}
{{- if and $cpu (not $set) -}}
{{- $millis := 0 -}}
{{- if hasSuffix "m" $cpu -}}
{{- $millis = trimSuffix "m" $cpu | int -}}
{{- else if regexMatch "^([0-9]+(\\.[0-9]*)?|\\.[0-9]+)$" $cpu -}}
{{- $millis = mulf (float64 $cpu) 1000 | ceil | int -}}
{{- else -}}
{{- fail (printf "resources cpu %q is not a CPU quantity the chart can read: use cores (1, 1.5) or millicores (100m)" $cpu) -}}
{{- end }}
- name: SUPERFONE_BRIDGE_SERVER__WORKER_THREADS
  # ceil(cpu {{ $cpu }}), at least 1: 0 would count the node's cores.
  value: {{ max 1 (div (add $millis 999) 1000) | quote }}
{{- end -}}
{{- end -}}
