# shellcheck shell=bash
# Sourced by scripts/check-deploy (after `refused` is defined): the chart's
# scale-in guards (the spool drain Job, the HPA's behavior, the emptyDir
# guard, the termination grace period derived from the stop's timeouts,
# spool.maxBytes against the volume). Each is rendered into $OUT (the files listed in CHART_CASES are
# validated by kubernetes-validate with the others), asserted, and each
# wrong value or combination refused with its path or reason named.

CHART_CASES=()
chart_case() {
  local name=$1; shift
  "$HELM" template ci "$CHART" --set 'auth.secrets={first-secret-0123456}' "$@" >"$OUT/$name.yaml"
  CHART_CASES+=("$OUT/$name.yaml")
}

echo "== helm chart: scale-in"
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
  --set-string 'podLabels.team=calls' \
  --set-string config="$(printf '[kafka]\nbrokers = "kafka:9092"\n\n[server]\ndrain_timeout_ms = 5_000\n')"
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
    check("scale-in", "the serve pods' account, security contexts, image and pod labels",
          pod["spec"]["serviceAccountName"] == serve_pod["spec"]["serviceAccountName"]
          and pod["spec"]["securityContext"] == serve_pod["spec"]["securityContext"]
          and c["securityContext"] == serve_pod["spec"]["containers"][0]["securityContext"]
          and c["image"] == serve_pod["spec"]["containers"][0]["image"]
          and pod["metadata"]["labels"]["team"] == "calls")
    check("scale-in", "Services and the workload must not select the Job's pod",
          not sts["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items())
    check("scale-in", "a failed drain is kept for its logs, tried again twice",
          pod["spec"]["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 2)
hpa = by[("HorizontalPodAutoscaler", "ci-superfone-bridge")]["spec"]
check("scale-in", "the HPA scales down slowly: one pod per 5 min after 10 min stable; scaleUp as set",
      hpa["behavior"]["scaleDown"] == {"stabilizationWindowSeconds": 600,
                                       "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]}
      and hpa["behavior"]["scaleUp"] == {"stabilizationWindowSeconds": 0})
print("scale-in: drain Jobs, HPA behavior, derived grace")
PY
# values.schema.json: the new keys' wrong values, each refused naming its path.
refused "/autoscaling/behavior/scaleDown/stabilizationWindowSeconds" \
  --set autoscaling.behavior.scaleDown.stabilizationWindowSeconds=7200
refused "/autoscaling/behavior/scaleDown/policies/0/type" --set 'autoscaling.behavior.scaleDown.policies[0].type=Pod'
refused "/spoolDrain/claimNames" --set spoolDrain.enabled=true
refused "/spoolDrain/claimNames/0" --set 'spoolDrain.claimNames={Spool_3}'
refused "/spoolDrain/timeoutSeconds" --set spoolDrain.timeoutSeconds=0
refused "/terminationGracePeriodSeconds" --set terminationGracePeriodSeconds=0
echo "values.schema.json refuses 6 wrong values of the new keys"

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
echo "the templates refuse 9 combinations: emptyDir autoscaling without drain, short grace, spool cap over its volume, draining a running pod's spool"

