# shellcheck shell=bash
# Sourced by scripts/check-deploy (after `refused` is defined): the chart's
# scale-in guards (the spool drain Job, the HPA's behavior, the emptyDir
# guard, the termination grace period derived from the stop's timeouts,
# spool.maxBytes against the volume) and the keys real installs need
# (Service annotations and traffic policy, name overrides, priority class,
# image digest, update strategy, init containers, probe overrides,
# NetworkPolicy, TLS on 443, kubeVersion, worker threads from the CPU
# request). Each is rendered into $OUT (the files listed in CHART_CASES are
# validated by kubernetes-validate with the others), asserted, and each
# wrong value or combination refused with its path or reason named.

CHART_CASES=()
chart_case() {
  local name=$1; shift
  "$HELM" template ci "$CHART" --set 'auth.secrets={first-secret-0123456}' "$@" >"$OUT/$name.yaml"
  CHART_CASES+=("$OUT/$name.yaml")
}

echo "== helm chart: scale-in and the keys real installs need"
# Scale-in: two claims left by scaled-in pods drained by Jobs, with the
# serve pods' config, Kafka options, registry password and extra volumes;
# the HPA scaling down slowly; a 30 s shutdown drain and a 5 s request drain
# in the config, so a grace of 5 + 5 + 10 + 4 + 30 + 10 + 5 = 69 s.
chart_case scale-in --set autoscaling.enabled=true --set spool.shutdownDrainSeconds=30 \
  --set spoolDrain.enabled=true --set 'spoolDrain.claimNames={spool-ci-superfone-bridge-3,spool-ci-superfone-bridge-4}' \
  --set kafka.optionsSecret=kafka-credentials --set registryPassword.existingSecret=registry \
  --set 'extraVolumes[0].name=kafka-ca' --set 'extraVolumes[0].secret.secretName=kafka-ca' \
  --set 'extraVolumeMounts[0].name=kafka-ca' --set 'extraVolumeMounts[0].mountPath=/etc/kafka-ca' \
  --set autoscaling.behavior.scaleUp.stabilizationWindowSeconds=0 \
  --set priorityClassName=webhooks --set-string 'podLabels.team=calls' \
  --set-string config="$(printf '[kafka]\nbrokers = "kafka:9092"\n\n[server]\ndrain_timeout_ms = 5_000\n')"
# Every real-cluster key at once: a LoadBalancer in TLS mode, overridden
# names, an image digest, a StatefulSet partition, an init container, probe
# overrides, a NetworkPolicy with egress, 1.5 CPUs requested.
chart_case real-cluster --set tls.secretName=bridge-tls --set service.type=LoadBalancer \
  --set-string 'service.annotations.service\.beta\.kubernetes\.io/aws-load-balancer-type=nlb' \
  --set 'service.loadBalancerSourceRanges={203.0.113.0/24,198.51.100.7/32}' --set service.externalTrafficPolicy=Local \
  --set nameOverride=hooks --set fullnameOverride=superfone-hooks --set priorityClassName=webhooks \
  --set image.repository=registry.example.com/superfone-bridge \
  --set image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef \
  --set updateStrategy.rollingUpdate.partition=1 \
  --set 'initContainers[0].name=wait-for-kafka' --set 'initContainers[0].image=busybox:1.36' \
  --set 'initContainers[0].command={sh,-c,until nc -z kafka 9092; do sleep 1; done}' \
  --set readinessProbe.periodSeconds=3 --set readinessProbe.timeoutSeconds=2 --set readinessProbe.successThreshold=2 \
  --set livenessProbe.failureThreshold=6 --set livenessProbe.initialDelaySeconds=5 --set startupProbe.timeoutSeconds=3 \
  --set networkPolicy.enabled=true --set 'networkPolicy.webhookFrom[0].ipBlock.cidr=203.0.113.0/24' \
  --set networkPolicy.egress.enabled=true --set 'networkPolicy.egress.rules[0].ports[0].port=9092' \
  --set recordings.enabled=true --set recordings.storeUrl=s3://calls --set recordings.copier.enabled=true \
  --set spoolDrain.enabled=true --set 'spoolDrain.claimNames={spool-superfone-hooks-5}' \
  --set resources.requests.cpu=1.5 --set resources.requests.memory=96Mi
# A Deployment (emptyDir) rolled with a surge, 2000m requested, HTTP.
chart_case deployment-keys --set spool.persistence.enabled=false --set updateStrategy.type=RollingUpdate \
  --set updateStrategy.rollingUpdate.maxSurge=1 --set updateStrategy.rollingUpdate.maxUnavailable=0 \
  --set resources.requests.cpu=2000m --set networkPolicy.enabled=true
# No CPU request, one in the config, or one set in extraEnv: the chart sets no worker threads.
chart_case no-cpu --set resources=null
chart_case worker-threads-set --set-string config="$(printf '[server]\nworker_threads = 3\n')"
chart_case worker-threads-env --set 'extraEnv[0].name=SUPERFONE_BRIDGE_SERVER__WORKER_THREADS' \
  --set-string 'extraEnv[0].value=2'
chart_case limits-cpu --set resources.requests=null --set resources.limits.cpu=100m --set resources.limits.memory=256Mi
chart_case recordings-serve --set recordings.enabled=true --set recordings.storeUrl=s3://calls
chart_case long-drain --set spool.shutdownDrainSeconds=300
"$VENV/bin/python" - "$OUT" <<'PY'
import sys, yaml

out = sys.argv[1]


def load(name):
    docs = [doc for doc in yaml.safe_load_all(open(f"{out}/{name}.yaml")) if doc]
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def check(name, fact, ok):
    if not ok:
        sys.exit(f"{name}: {fact}")


def serve(by, name="ci-superfone-bridge"):
    return by.get(("StatefulSet", name)) or by[("Deployment", name)]


def env_of(container):
    return {var["name"]: var.get("value") for var in container.get("env", [])}


# The grace period the chart derives: preStop 5 + request drain
# (server.drain_timeout_ms, 20 s) + the copies' stop (10, serve pods that
# copy) + the replay's window (10) + Kafka check and topic creation (2 + 2)
# + spool.shutdownDrainSeconds (15) + producer flush (10) + margin (5).
for name, grace in (("defaults", 69), ("scale-in", 69), ("recordings-serve", 79), ("long-drain", 354)):
    pod = serve(load(name))["spec"]["template"]["spec"]
    check(name, f"terminationGracePeriodSeconds {grace}", pod["terminationGracePeriodSeconds"] == grace)

by = load("scale-in")
jobs = [doc for key, doc in by.items() if key[0] == "Job"]
check("scale-in", "one drain Job per claim", sorted(job["metadata"]["name"] for job in jobs)
      == ["ci-superfone-bridge-drain-spool-ci-superfone-bridge-3", "ci-superfone-bridge-drain-spool-ci-superfone-bridge-4"])
sts = serve(by)
serve_pod = sts["spec"]["template"]
for job in jobs:
    pod = job["spec"]["template"]
    c = pod["spec"]["containers"][0]
    env = env_of(c)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    claim = job["metadata"]["name"].removeprefix("ci-superfone-bridge-drain-")
    check("scale-in", "the Job runs spool drain on its claim's spool",
          c["args"] == ["--config", "/etc/superfone-bridge/superfone-bridge.toml", "spool", "drain",
                        "--dir", "/var/lib/superfone-bridge/spool", "--timeout-secs", "300"]
          and mounts["spool"] == "/var/lib/superfone-bridge/spool"
          and volumes["spool"]["persistentVolumeClaim"]["claimName"] == claim)
    check("scale-in", "the serve pods' config, Kafka options, registry password, extra volumes and spool cap",
          mounts["config"] == "/etc/superfone-bridge" and mounts["kafka-options"] == "/var/run/secrets/superfone-kafka"
          and mounts["kafka-ca"] == "/etc/kafka-ca" and "SUPERFONE_REGISTRY_PASSWORD" in env
          and env["SUPERFONE_BRIDGE_SPOOL__MAX_BYTES"] == "1073741824"
          and volumes["config"] == {v["name"]: v for v in serve_pod["spec"]["volumes"]}["config"])
    check("scale-in", "no webhook secret: the drain needs none", "auth" not in mounts)
    check("scale-in", "the serve pods' account, security contexts, image and priority class",
          pod["spec"]["serviceAccountName"] == serve_pod["spec"]["serviceAccountName"]
          and pod["spec"]["securityContext"] == serve_pod["spec"]["securityContext"]
          and c["securityContext"] == serve_pod["spec"]["containers"][0]["securityContext"]
          and c["image"] == serve_pod["spec"]["containers"][0]["image"]
          and pod["spec"]["priorityClassName"] == "webhooks" and pod["metadata"]["labels"]["team"] == "calls")
    check("scale-in", "Services and the workload must not select the Job's pod",
          not sts["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items())
    check("scale-in", "a failed drain is kept for its logs, tried again twice",
          pod["spec"]["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 2)
hpa = by[("HorizontalPodAutoscaler", "ci-superfone-bridge")]["spec"]
check("scale-in", "the HPA scales down slowly: one pod per 5 min after 10 min stable; scaleUp as set",
      hpa["behavior"]["scaleDown"] == {"stabilizationWindowSeconds": 600,
                                       "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]}
      and hpa["behavior"]["scaleUp"] == {"stabilizationWindowSeconds": 0})
check("scale-in", "priorityClassName on the serve pods", serve_pod["spec"]["priorityClassName"] == "webhooks")

by = load("real-cluster")
sts = serve(by, "superfone-hooks")
pod = sts["spec"]["template"]
c = pod["spec"]["containers"][0]
svc = by[("Service", "superfone-hooks")]
check("real-cluster", "TLS: Service port 443 named https, appProtocol https, to the container's https port",
      svc["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "https", "appProtocol": "https"}]
      and {"name": "https", "containerPort": 8080} in c["ports"])
check("real-cluster", "service annotations, source ranges, traffic policy",
      svc["metadata"]["annotations"] == {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}
      and svc["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24", "198.51.100.7/32"]
      and svc["spec"]["externalTrafficPolicy"] == "Local")
check("real-cluster", "fullnameOverride names everything; nameOverride the name label",
      pod["metadata"]["labels"]["app.kubernetes.io/name"] == "hooks"
      and ("Service", "superfone-hooks-admin") in by and ("Deployment", "superfone-hooks-recordings") in by
      and ("Job", "superfone-hooks-drain-spool-superfone-hooks-5") in by
      and sts["spec"]["serviceName"] == "superfone-hooks-headless")
check("real-cluster", "image by digest",
      c["image"] == "registry.example.com/superfone-bridge@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
      and by[("Deployment", "superfone-hooks-recordings")]["spec"]["template"]["spec"]["containers"][0]["image"] == c["image"])
check("real-cluster", "StatefulSet updateStrategy", sts["spec"]["updateStrategy"] == {"rollingUpdate": {"partition": 1}})
check("real-cluster", "initContainers", pod["spec"]["initContainers"][0]["name"] == "wait-for-kafka")
check("real-cluster", "probe overrides",
      c["readinessProbe"] == {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 3,
                              "failureThreshold": 2, "timeoutSeconds": 2, "successThreshold": 2}
      and c["livenessProbe"]["failureThreshold"] == 6 and c["livenessProbe"]["initialDelaySeconds"] == 5
      and c["livenessProbe"]["periodSeconds"] == 10 and c["startupProbe"]["timeoutSeconds"] == 3)
check("real-cluster", "1.5 CPUs requested: 2 worker threads",
      env_of(c)["SUPERFONE_BRIDGE_SERVER__WORKER_THREADS"] == "2")
policy = by[("NetworkPolicy", "superfone-hooks")]["spec"]
check("real-cluster", "NetworkPolicy: the webhook port from the peers given, the admin port from monitoring",
      policy["policyTypes"] == ["Ingress", "Egress"]
      and policy["ingress"][0] == {"ports": [{"port": 8080, "protocol": "TCP"}],
                                   "from": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}
      and policy["ingress"][1] == {"ports": [{"port": 9090, "protocol": "TCP"}],
                                   "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]})
check("real-cluster", "NetworkPolicy egress: DNS, then the rules given",
      policy["egress"][0]["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
      and policy["egress"][1] == {"ports": [{"port": 9092}]})
check("real-cluster", "NetworkPolicy covers the serve, copier and drain pods",
      {e["key"]: e.get("values") for e in policy["podSelector"]["matchExpressions"]}["app.kubernetes.io/name"]
      == ["hooks", "hooks-recordings", "hooks-spool-drain"])

by = load("deployment-keys")
deploy = serve(by)
c = deploy["spec"]["template"]["spec"]["containers"][0]
check("deployment-keys", "Deployment strategy from updateStrategy",
      deploy["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
check("deployment-keys", "HTTP stays port 80 named http, no appProtocol",
      by[("Service", "ci-superfone-bridge")]["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}])
check("deployment-keys", "2000m: 2 worker threads", env_of(c)["SUPERFONE_BRIDGE_SERVER__WORKER_THREADS"] == "2")
policy = by[("NetworkPolicy", "ci-superfone-bridge")]["spec"]
check("deployment-keys", "no egress rules unless asked; the webhook port open to any source",
      policy["policyTypes"] == ["Ingress"] and "from" not in policy["ingress"][0])
check("defaults", "100m: 1 worker thread",
      env_of(serve(load("defaults"))["spec"]["template"]["spec"]["containers"][0])["SUPERFONE_BRIDGE_SERVER__WORKER_THREADS"] == "1")
check("limits-cpu", "a CPU limit alone: 1 worker thread",
      env_of(serve(load("limits-cpu"))["spec"]["template"]["spec"]["containers"][0])["SUPERFONE_BRIDGE_SERVER__WORKER_THREADS"] == "1")
for name in ("no-cpu", "worker-threads-set", "worker-threads-env"):
    names = [var["name"] for var in serve(load(name))["spec"]["template"]["spec"]["containers"][0]["env"]]
    check(name, "worker threads not derived (no CPU, or set by the user), never twice",
          names.count("SUPERFONE_BRIDGE_SERVER__WORKER_THREADS") == (1 if name == "worker-threads-env" else 0))
print("scale-in: drain Jobs, HPA behavior, derived grace; real-cluster keys, TLS on 443, NetworkPolicy, worker threads")
PY
grep -q 'URL:    https://<the address of service superfone-hooks>:443/superfone/events' \
  <("$HELM" install ci "$CHART" --dry-run=client --set 'auth.secrets={first-secret-0123456}' \
    --set tls.secretName=bridge-tls --set fullnameOverride=superfone-hooks) \
  || { echo "NOTES in TLS mode print https://…:443" >&2; exit 1; }
"$HELM" template ci "$CHART" --kube-version 1.27.0 --set 'auth.secrets={first-secret-0123456}' >/dev/null
if "$HELM" template ci "$CHART" --kube-version 1.26.9 --set 'auth.secrets={first-secret-0123456}' >/dev/null 2>&1; then
  echo "Chart.yaml kubeVersion: Kubernetes 1.26 must be refused" >&2
  exit 1
fi

# values.schema.json: the new keys' wrong values, each refused naming its path.
refused "/service/annotations/team" --set service.annotations.team=1
refused "/service/loadBalancerSourceRanges/0" --set 'service.loadBalancerSourceRanges={10.0.0.0}'
refused "/service/externalTrafficPolicy" --set service.externalTrafficPolicy=Global
refused "/service/httpsPort" --set service.httpsPort=0
refused "/nameOverride" --set nameOverride=Hooks_1
refused "/fullnameOverride" --set fullnameOverride=-hooks
refused "/priorityClassName" --set priorityClassName=High
refused "/image/digest" --set image.digest=0123abcd
refused "/updateStrategy/type" --set updateStrategy.type=Rolling
refused "/updateStrategy/rollingUpdate/partition" --set updateStrategy.rollingUpdate.partition=-1
refused "/initContainers/0" --set 'initContainers[0].name=wait'
refused "/readinessProbe/timeoutSeconds" --set readinessProbe.timeoutSeconds=0
refused "'successThreshold' not allowed" --set livenessProbe.successThreshold=2
refused "/startupProbe/failureThreshold" --set startupProbe.failureThreshold=0
refused "/networkPolicy/webhookFrom/0" --set 'networkPolicy.webhookFrom[0]=everyone'
refused "/networkPolicy/egress/rules" --set networkPolicy.egress.rules=kafka
refused "/autoscaling/behavior/scaleDown/stabilizationWindowSeconds" \
  --set autoscaling.behavior.scaleDown.stabilizationWindowSeconds=7200
refused "/autoscaling/behavior/scaleDown/policies/0/type" --set 'autoscaling.behavior.scaleDown.policies[0].type=Pod'
refused "/spoolDrain/claimNames" --set spoolDrain.enabled=true
refused "/spoolDrain/claimNames/0" --set 'spoolDrain.claimNames={Spool_3}'
refused "/spoolDrain/timeoutSeconds" --set spoolDrain.timeoutSeconds=0
refused "/terminationGracePeriodSeconds" --set terminationGracePeriodSeconds=0
refused "/resources/requests/cpu" --set resources.requests.cpu=1.5cores
echo "values.schema.json refuses 23 wrong values of the new keys"

# What only the templates can tell.
refused "autoscaling with spool.persistence.enabled=false (an emptyDir) needs spool.shutdownDrainSeconds > 0: every scale-in would delete the events its pod acknowledged (202) and had not sent to Kafka" \
  --set autoscaling.enabled=true --set spool.persistence.enabled=false --set spool.shutdownDrainSeconds=0
refused "terminationGracePeriodSeconds (60) is shorter than the bridge's worst-case stop, 69 s: preStop 5 + request drain 20 + replay window 10 + Kafka check 4 + spool drain 15 + producer flush 10 + margin 5" \
  --set terminationGracePeriodSeconds=60
refused "terminationGracePeriodSeconds (60) is shorter than the bridge's worst-case stop, 354 s" \
  --set spool.shutdownDrainSeconds=300 --set terminationGracePeriodSeconds=60
"$HELM" template ci "$CHART" --set 'auth.secrets={first-secret-0123456}' --set terminationGracePeriodSeconds=69 >/dev/null
refused "spool.maxBytes (1073741824) does not fit spool.persistence.size 1Gi (1073741824 bytes) with its headroom of 107374182 bytes (a tenth of the volume, at least 64Mi" \
  --set spool.persistence.size=1Gi
refused "spool.maxBytes (1073741824) does not fit spool.persistence.size 1100Mi" --set spool.persistence.size=1100Mi
refused "spool.maxBytes (1073741824) does not fit spool.persistence.size 1G" --set spool.persistence.size=1G
refused "spool.maxBytes (1073741824) does not fit spool.persistence.size 1Gi" --set spool.persistence.size=1Gi \
  --set spool.persistence.enabled=false
for size in 1200Mi 1.5Gi 2G 1258291200 2097152Ki 1Ti; do
  "$HELM" template ci "$CHART" --set 'auth.secrets={first-secret-0123456}' --set-string spool.persistence.size=$size >/dev/null
done
refused "spoolDrain.claimNames: spool-ci-superfone-bridge-1 is the spool of pod ci-superfone-bridge-1, which runs (replicaCount 2): it replays its own spool" \
  --set spoolDrain.enabled=true --set 'spoolDrain.claimNames={spool-ci-superfone-bridge-1}'
refused "is the spool of pod ci-superfone-bridge-2, which runs (autoscaling.minReplicas 3)" --set autoscaling.enabled=true \
  --set autoscaling.minReplicas=3 --set spoolDrain.enabled=true --set 'spoolDrain.claimNames={spool-ci-superfone-bridge-2}'
refused "updateStrategy.type Recreate is for a Deployment (spool.persistence.enabled=false); a StatefulSet takes RollingUpdate or OnDelete" \
  --set updateStrategy.type=Recreate
refused "updateStrategy.type OnDelete is for a StatefulSet (spool.persistence.enabled=true); a Deployment takes RollingUpdate or Recreate" \
  --set spool.persistence.enabled=false --set updateStrategy.type=OnDelete
refused "updateStrategy.rollingUpdate.partition is for a StatefulSet" --set spool.persistence.enabled=false \
  --set updateStrategy.rollingUpdate.partition=1
refused "updateStrategy.rollingUpdate.maxSurge is for a Deployment" --set updateStrategy.rollingUpdate.maxSurge=1
refused "service.loadBalancerSourceRanges needs service.type LoadBalancer" --set 'service.loadBalancerSourceRanges={10.0.0.0/8}'
refused "service.externalTrafficPolicy needs service.type LoadBalancer or NodePort" --set service.externalTrafficPolicy=Local
echo "the templates refuse 15 combinations: emptyDir autoscaling without drain, short grace, spool cap over its volume, draining a running pod's spool, update strategies of the other kind, Service fields of another type"

# After the bridge is built: the worker threads the chart sets are taken by check-config.
check_chart_worker_threads() {
  local threads
  threads=$(env SUPERFONE_AUTH_SECRETS=check-deploy-secret-0123 SUPERFONE_BRIDGE_SERVER__WORKER_THREADS=2 \
    "$BRIDGE" --config "$OUT/config.toml" check-config </dev/null | grep -A12 '^\[server\]' | grep '^worker_threads')
  [[ "$threads" == "worker_threads = 2" ]] \
    || { echo "check-config must take the chart's SUPERFONE_BRIDGE_SERVER__WORKER_THREADS: $threads" >&2; exit 1; }
}
