"""What no schema validator checks in the rendered manifests (deploy/kubernetes/test runs it).

    python check.py REPO_ROOT NAME=RENDERED.yaml...

Every container runs as a non-root user with a read-only root filesystem, no privilege escalation,
no capabilities and the runtime's seccomp profile; every Deployment's container has probes,
requests and limits; no ConfigMap holds anything that looks secret; every reference (ConfigMap,
Secret and its key, Service selector and port, Ingress backend, autoscaler target, disruption
budget) finds its object; and the Portcullis containers set only real settings (read from the
source), listen where their Service and probes look, log JSON and write only to volumes.
"""

import re
import sys
from pathlib import Path

import yaml

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
# The files that declare every setting of `portcullis::Config` (its own and the flattened ones).
SETTINGS_SOURCES = [
    "crates/cli/src/config.rs",
    "crates/gateway/src/lib.rs",
    "crates/control-plane/src/lib.rs",
]
LISTEN_SETTING = {
    "control-plane": "PORTCULLIS_CONTROL_PLANE_ADDR",
    "gateway": "PORTCULLIS_GATEWAY_ADDR",
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|_KEYS?$|^DATABASE_URL$|^REDIS_URL$")
SECRET_VALUE = [
    re.compile(r"://[^/\s:@]*:[^/\s@]+@"),  # a URL with a password in it
    re.compile(r"\b\d+:[A-Za-z0-9+/]{43}="),  # a key ring entry (portcullis keygen)
]


def real_settings(root):
    names = set()
    for source in SETTINGS_SOURCES:
        text = (root / source).read_text()
        found = re.findall(r'\benv\s*=\s*"([A-Z0-9_]+)"', text)
        if not found:
            raise SystemExit(f"check.py: no settings found in {source}: has Config moved?")
        names.update(found)
    return names


def is_portcullis(container):
    return re.search(r"(^|/)portcullis(:|@|$)", container.get("image", "")) is not None


def pod_spec(obj):
    return obj.get("spec", {}).get("template", {}).get("spec", {})


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check(overlay, objects, settings):
    problems = []
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    configmaps = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})

    def problem(obj, text):
        problems.append(f"{overlay}: {obj['kind']}/{obj['metadata']['name']}: {text}")

    # No secret in a ConfigMap.
    for cm in configmaps.values():
        for key, value in (cm.get("data") or {}).items():
            if SECRET_NAME.search(key):
                problem(cm, f"key {key} looks secret: put it in a Secret")
            elif any(p.search(str(value)) for p in SECRET_VALUE):
                problem(cm, f"the value of {key} looks secret: put it in a Secret")

    pods = []  # (workload, pod template labels, pod spec)
    for kind in WORKLOADS:
        for obj in by_kind.get(kind, {}).values():
            spec = pod_spec(obj)
            labels = obj["spec"]["template"].get("metadata", {}).get("labels", {})
            pods.append((obj, labels, spec))
            selector = obj["spec"].get("selector", {}).get("matchLabels")
            if kind != "Job" and not labels_match(selector, labels):
                problem(obj, "its selector does not match its pod template's labels")
            check_pod(obj, spec, problem, configmaps, secrets, settings, overlay)

    # Services select pods, and their target ports are ports of those pods.
    for svc in by_kind.get("Service", {}).values():
        selector = svc["spec"].get("selector", {})
        selected = [spec for _, labels, spec in pods if labels_match(selector, labels)]
        if not selected:
            problem(svc, f"its selector {selector} matches no pod template")
            continue
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for spec in selected:
                if not any(target in (p.get("name"), p["containerPort"])
                           for c in spec["containers"] for p in c.get("ports", [])):
                    problem(svc, f"targetPort {target} is not a port of the pods it selects")

    # Ingress backends are Services, on ports those have.
    for ing in by_kind.get("Ingress", {}).values():
        for rule in ing["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                backend = path["backend"]["service"]
                svc = by_kind.get("Service", {}).get(backend["name"])
                if svc is None:
                    problem(ing, f"backend {backend['name']} is not a Service")
                    continue
                port = backend["port"]
                if not any(port.get("name") == p.get("name") or port.get("number") == p["port"]
                           for p in svc["spec"]["ports"]):
                    problem(ing, f"backend port {port} is not a port of Service {backend['name']}")
        if overlay == "production" and not ing["spec"].get("tls"):
            problem(ing, "no TLS in production")

    # Autoscalers scale a Deployment that leaves them its replica count.
    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        target = hpa["spec"]["scaleTargetRef"]
        deployment = by_kind.get(target["kind"], {}).get(target["name"])
        if deployment is None:
            problem(hpa, f"scales {target['kind']}/{target['name']}, which is not rendered")
        elif "replicas" in deployment["spec"]:
            problem(deployment, "sets replicas, which every apply would reset under its autoscaler")
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            problem(hpa, "minReplicas above maxReplicas")

    # Disruption budgets cover a workload.
    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        selector = pdb["spec"].get("selector", {}).get("matchLabels")
        if not any(labels_match(selector, labels) for _, labels, _ in pods):
            problem(pdb, f"its selector {selector} matches no pod template")

    return problems


def check_pod(obj, spec, problem, configmaps, secrets, settings, overlay):
    pod_sc = spec.get("securityContext", {})
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    annotations = obj["spec"]["template"].get("metadata", {}).get("annotations", {})
    if spec.get("automountServiceAccountToken") is not False:
        problem(obj, "mounts a service account token it does not use")
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        name = f"container {c['name']}"
        sc = c.get("securityContext", {})

        def effective(key):
            return sc.get(key, pod_sc.get(key))

        if effective("runAsNonRoot") is not True:
            problem(obj, f"{name}: runAsNonRoot is not true")
        if effective("runAsUser") in (None, 0):
            problem(obj, f"{name}: runAsUser is unset or 0")
        if sc.get("readOnlyRootFilesystem") is not True:
            problem(obj, f"{name}: root filesystem is writable")
        if sc.get("allowPrivilegeEscalation") is not False:
            problem(obj, f"{name}: allowPrivilegeEscalation is not false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []) or sc.get("capabilities", {}).get("add"):
            problem(obj, f"{name}: capabilities are not exactly none (drop ALL, add nothing)")
        if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problem(obj, f"{name}: seccompProfile is not RuntimeDefault")
        resources = c.get("resources", {})
        for bound in ("requests", "limits"):
            for what in ("cpu", "memory"):
                if what not in resources.get(bound, {}):
                    problem(obj, f"{name}: no {what} in resources.{bound}")
        if obj["kind"] != "Job":
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    problem(obj, f"{name}: no {probe}")

        # Every reference finds its object.
        env = {}
        for source in c.get("envFrom", []):
            if "configMapRef" in source:
                cm = configmaps.get(source["configMapRef"]["name"])
                if cm is None:
                    problem(obj, f"{name}: ConfigMap {source['configMapRef']['name']} is not rendered")
                else:
                    env.update(cm.get("data") or {})
            if "secretRef" in source:
                secret = secrets.get(source["secretRef"]["name"])
                if secret is None:
                    problem(obj, f"{name}: Secret {source['secretRef']['name']} is not rendered")
                else:
                    env.update({k: "(secret)" for k in secret.get("data") or {}})
        for var in c.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                secret = secrets.get(ref["name"])
                if secret is None:
                    problem(obj, f"{name}: {var['name']} reads Secret {ref['name']}, which is not rendered")
                elif ref["key"] not in (secret.get("data") or {}) and not ref.get("optional"):
                    problem(obj, f"{name}: {var['name']} reads key {ref['key']}, which Secret {ref['name']} has not")
                env[var["name"]] = "(secret)"
            else:
                env[var["name"]] = var.get("value", "")

        if not is_portcullis(c):
            continue
        for var in sorted(env):
            if var not in settings:
                problem(obj, f"{name}: {var} is not a setting of portcullis (renamed? removed?)")
        if env.get("PORTCULLIS_LOG_FORMAT") != "json":
            problem(obj, f"{name}: PORTCULLIS_LOG_FORMAT is not json")
        # What the root filesystem being read-only leaves writable: only volumes.
        spill = env.get("PORTCULLIS_AUDIT_SPILL_DIR")
        role = (c.get("args") or [""])[0]
        if role == "gateway":
            mounts = [m for m in c.get("volumeMounts", [])
                      if spill and (spill + "/").startswith(m["mountPath"].rstrip("/") + "/")]
            if not mounts:
                problem(obj, f"{name}: PORTCULLIS_AUDIT_SPILL_DIR={spill} is not on a volume")
            elif "emptyDir" not in volumes.get(mounts[0]["name"], {}) and \
                    "persistentVolumeClaim" not in volumes.get(mounts[0]["name"], {}):
                problem(obj, f"{name}: the spill directory's volume is neither an emptyDir nor a claim")
        if role in LISTEN_SETTING:
            setting = LISTEN_SETTING[role]
            addr = env.get(setting, "")
            host, _, port = addr.rpartition(":")
            if host != "0.0.0.0":
                problem(obj, f"{name}: {setting}={addr!r}: a pod is reached on 0.0.0.0, not on its loopback")
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            if not port.isdigit() or int(port) not in ports.values():
                problem(obj, f"{name}: {setting}={addr!r} is not a container port ({ports})")
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                get = c.get(probe, {}).get("httpGet", {})
                probe_port = ports.get(get.get("port"), get.get("port"))
                if get.get("path") != path or str(probe_port) != port:
                    problem(obj, f"{name}: {probe} should GET {path} on port {port}, not {get}")
            if annotations.get("prometheus.io/scrape") != "true" \
                    or annotations.get("prometheus.io/port") != port \
                    or annotations.get("prometheus.io/path") != "/metrics":
                problem(obj, f"{name}: prometheus.io annotations should scrape /metrics on {port}")


def main():
    root = Path(sys.argv[1])
    settings = real_settings(root)
    problems = []
    for arg in sys.argv[2:]:
        overlay, _, path = arg.partition("=")
        objects = [o for o in yaml.safe_load_all(Path(path).read_text()) if o]
        if not objects:
            problems.append(f"{overlay}: renders nothing")
        problems.extend(check(overlay, objects, settings))
    for p in problems:
        print(f"  - {p}")
    if problems:
        print(f"check.py: {len(problems)} problem(s)")
        return 1
    print(f"check.py: {len(sys.argv) - 2} rendering(s) pass ({len(settings)} settings known)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
