"""`make k8s-validate`: render every kustomize overlay and check what serviceloop relies on.

For each overlay in deploy/k8s/overlays, and each choice of broker and databases it could
make (every combination of the components/rabbitmq-* and components/postgres-*), this
renders the manifests with `kubectl kustomize` (offline) and checks:

- every core object against the Kubernetes OpenAPI schemas shipped by `kubernetes-validate`
  (strict: unknown fields fail);
- the operators' custom resources (RabbitmqCluster, CloudNativePG Cluster) for the fields
  serviceloop relies on; any other custom resource fails;
- policy: probes on /health/live and /health/ready, requests and limits, runAsNonRoot, a
  grace period of at least 30 s, a PodDisruptionBudget per Deployment, no credentials in
  ConfigMaps, env values or Secrets in the manifests, each service's migration Job and
  schema wait, and NetworkPolicies that let only the gateway in from outside and each
  database be reached only from its own service;
- in a production overlay (`prod`): at least two replicas of every service and relay
  Deployment (for the gateway, the HorizontalPodAutoscaler's minimum), and an HPA on the
  gateway that can scale it.

Prints one line per rendering and every problem found; exits 1 on any.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serviceloop.config import SERVICES  # noqa: E402
from serviceloop.services import SERVICE_CLASSES  # noqa: E402

KUBERNETES_VERSION = "1.32.0"  # as kubectl here; kubernetes-validate ships its schemas
PRODUCTION_OVERLAYS = ("prod",)  # checked for replicas and the gateway's autoscaler
MIN_PRODUCTION_REPLICAS = 2  # a rollout or a lost node never stops a service
CHOICES = ("rabbitmq", "postgres")  # components/<choice>-<kind>: one of each per overlay
GATEWAY = {"dispatch": "/api/v1/", "callback": "/callback/v1/replies"}  # reachable from outside
# namespaces allowed to reach in, and which pods: the ingress controller only the gateway
OUTSIDE = {
    "ingress-nginx": lambda pod: pod.component == "service" and pod.name in GATEWAY,
    "monitoring": lambda pod: True,
    "cnpg-system": lambda pod: pod.database is not None,
    "rabbitmq-system": lambda pod: pod.broker,
}
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|PRIVATE|API_KEY", re.I)
URL_PASSWORD = re.compile(r"://[^/\s:@]*:([^@\s]+)@")
ENV_REFERENCE = re.compile(r"\$\([A-Z0-9_]+\)")
RABBITMQ_FIELDS = {"replicas", "image", "imagePullSecrets", "service", "persistence",
                   "resources", "affinity", "tolerations", "rabbitmq", "tls", "override",
                   "terminationGracePeriodSeconds", "skipPostDeploySteps", "delayStartSeconds",
                   "secretBackend", "autoEnableAllFeatureFlags"}
CNPG_FIELDS = {"instances", "imageName", "imageCatalogRef", "postgresql", "bootstrap",
               "storage", "walStorage", "resources", "inheritedMetadata",
               "enableSuperuserAccess", "superuserSecret", "affinity", "backup", "monitoring",
               "primaryUpdateStrategy", "primaryUpdateMethod", "description", "minSyncReplicas",
               "maxSyncReplicas", "managed", "externalClusters", "replica", "certificates",
               "logLevel", "startDelay", "stopDelay", "switchoverDelay", "failoverDelay",
               "env", "envFrom", "topologySpreadConstraints", "priorityClassName",
               "imagePullPolicy", "imagePullSecrets", "projectedVolumeTemplate",
               "ephemeralVolumeSource", "ephemeralVolumesSizeLimit", "seccompProfile",
               "tablespaces", "enablePDB", "plugins", "probes", "podSecurityContext",
               "securityContext", "serviceAccountTemplate", "smartShutdownTimeout",
               "livenessProbeTimeout", "postgresGID", "postgresUID", "schedulerName"}


class Pod:
    """The pods one workload (or operator-managed cluster) runs, as NetworkPolicies see them."""

    def __init__(self, kind: str, workload: str, labels: dict) -> None:
        self.kind, self.workload, self.labels = kind, workload, labels
        self.name = labels.get("app.kubernetes.io/name")
        self.component = labels.get("app.kubernetes.io/component")
        self.database = labels.get("serviceloop.io/database")
        self.broker = False

    def __str__(self) -> str:
        return f"{self.kind}/{self.workload}"


# -- rendering ----------------------------------------------------------------------------


def variants(root: Path, workdir: Path) -> list[tuple[str, Path]]:
    """(label, directory) for each overlay as shipped and with every other component choice."""
    shutil.copytree(root, workdir / "k8s")
    copy = workdir / "k8s"
    available = {choice: sorted(p.name for p in (copy / "components").glob(f"{choice}-*"))
                 for choice in CHOICES}
    found = []
    for overlay in sorted((copy / "overlays").glob("*/kustomization.yaml")):
        spec = yaml.safe_load(overlay.read_text())
        shipped = [Path(c).name for c in spec.get("components", [])]
        found.append((f"{overlay.parent.name} (as shipped: {', '.join(shipped)})",
                      overlay.parent))
        for picked in itertools.product(*available.values()):
            if sorted(picked) == sorted(c for c in shipped if c.split("-")[0] in CHOICES):
                continue
            variant = copy / "variants" / f"{overlay.parent.name}-{'-'.join(picked)}"
            shutil.copytree(overlay.parent, variant)
            others = [c for c in spec.get("components", []) if Path(c).name.split("-")[0]
                      not in CHOICES]
            spec_variant = {**spec, "components": others + [f"../../components/{name}"
                                                            for name in picked]}
            (variant / "kustomization.yaml").write_text(yaml.safe_dump(spec_variant))
            found.append((f"{overlay.parent.name} with {', '.join(picked)}", variant))
    return found


def render(directory: Path) -> list[dict]:
    done = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True,
                          text=True, timeout=60)
    if done.returncode:
        raise RuntimeError(done.stderr.strip() or f"kubectl kustomize exited {done.returncode}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


# -- checks -------------------------------------------------------------------------------


def check(objects: list[dict], production: bool = False) -> list[str]:
    """Every problem in one rendering, each as `Kind/name: what`; `production` adds the
    replica and autoscaler checks of a production overlay."""
    problems: list[str] = []
    for obj in objects:
        problems += [f"{ident(obj)}: {p}" for p in check_object(obj)]
    config = merged_config(objects)
    problems += check_services(objects)
    problems += check_backing_services(objects, config)
    problems += check_disruption_budgets(objects)
    problems += check_network_policies(objects)
    problems += check_ingress(objects)
    if production:
        problems += check_replicas(objects)
    return problems


def ident(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def check_object(obj: dict) -> list[str]:
    kind = obj.get("kind")
    if kind == "RabbitmqCluster":
        return check_rabbitmq_cluster(obj)
    if kind == "Cluster" and obj.get("apiVersion", "").startswith("postgresql.cnpg.io/"):
        return check_cnpg_cluster(obj)
    problems = schema_problems(obj)
    if kind == "ConfigMap":
        problems += [f"{key} looks like a credential: it belongs in a Secret"
                     for key, value in (obj.get("data") or {}).items()
                     if looks_like_credential(key, value)]
    if kind == "Secret" and (obj.get("data") or obj.get("stringData")):
        problems.append("a Secret with values in the manifests: create it outside (README)")
    if pod_spec(obj) is not None:
        problems += check_pod(obj)
    return problems


_SCHEMA_ANSWERS: dict[str, list[str]] = {}  # most objects are the same in every rendering


def schema_problems(obj: dict) -> list[str]:
    key = json.dumps(obj, sort_keys=True)
    if key not in _SCHEMA_ANSWERS:
        _SCHEMA_ANSWERS[key] = _schema_problems(obj)
    return _SCHEMA_ANSWERS[key]


def _schema_problems(obj: dict) -> list[str]:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {obj.get('apiVersion')} {obj.get('kind')} in Kubernetes "
                f"{KUBERNETES_VERSION}, and not a custom resource this check knows"]
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.path) or "(top)"
        return [f"schema: {where}: {error.message}"]
    return []


def looks_like_credential(name: str, value: object) -> bool:
    """A ConfigMap entry that is, or could carry, a credential (the URLs always can)."""
    return name.startswith(("DATABASE_URL", "AMQP_URI")) or in_clear(name, value)


def in_clear(name: str, value: object) -> bool:
    """A secret-sounding name with a literal value, or a URL with a literal password
    (`$(RABBITMQ_PASSWORD)`, filled in from a secretKeyRef by Kubernetes, is not one)."""
    password = URL_PASSWORD.search(str(value or ""))
    return bool(SECRET_NAME.search(name)) or bool(
        password and not ENV_REFERENCE.fullmatch(password.group(1)))


def pod_spec(obj: dict) -> dict | None:
    if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return obj["spec"]["template"]["spec"]
    return None


def pod_labels(obj: dict) -> dict:
    return obj["spec"]["template"].get("metadata", {}).get("labels", {})


def check_pod(obj: dict) -> list[str]:
    spec, problems = pod_spec(obj), []
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if obj["kind"] != "Job" and grace < 30:
        problems.append(f"terminationGracePeriodSeconds {grace} < 30: in-flight work is cut")
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    pod_non_root = spec.get("securityContext", {}).get("runAsNonRoot") is True
    for container in containers:
        name = f"container {container['name']}"
        if not (pod_non_root or container.get("securityContext", {}).get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not set")
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(bound) or {})
            if missing:
                problems.append(f"{name}: no {bound} for {', '.join(sorted(missing))}")
        for env in container.get("env", []):
            if "value" in env and in_clear(env["name"], env["value"]):
                problems.append(f"{name}: env {env['name']} carries a credential in clear: "
                                "use a secretKeyRef")
    return problems


def check_services(objects: list[dict]) -> list[str]:
    """Each service: its Deployment and relay with real probes, its Job, its schema wait."""
    problems = []
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    for service in SERVICES:
        expected = {
            ("Deployment", service): ["nameko", "run", "--config", "/app/config.yaml",
                                      SERVICE_CLASSES[service]],
            ("Deployment", f"{service}-relay"): ["serviceloop", "relay", service],
            ("Job", f"{service}-migrate"): ["serviceloop", "migrate", "--services", service],
        }
        for (kind, name), command in expected.items():
            obj = by_name.get((kind, name))
            if obj is None:
                problems.append(f"{kind}/{name}: missing")
                continue
            spec = pod_spec(obj)
            main = spec["containers"][0]
            if main.get("command") != command:
                problems.append(f"{kind}/{name}: command {main.get('command')} is not {command}")
            problems += [f"{kind}/{name}: {p}" for p in database_access(spec, service)]
            if kind == "Deployment":
                problems += [f"{kind}/{name}: {p}" for p in probes(main)]
                if not any(f"wait_for_schema.py {service}" in " ".join(c.get("command", []))
                           for c in spec.get("initContainers", [])):
                    problems.append(f"{kind}/{name}: no initContainer waiting for the schema "
                                    "(it could run before its migration)")
    return problems


def database_access(spec: dict, service: str) -> list[str]:
    """DATABASE_URL_<SERVICE> from a Secret, and no other service's database."""
    problems = []
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        for env in container.get("env", []):
            if not env["name"].startswith("DATABASE_URL_"):
                continue
            if env["name"] != f"DATABASE_URL_{service.upper()}":
                problems.append(f"container {container['name']} gets {env['name']}: "
                                "another service's database")
            elif "secretKeyRef" not in env.get("valueFrom", {}):
                problems.append(f"container {container['name']}: {env['name']} not from a "
                                "Secret")
    return problems


def probes(container: dict) -> list[str]:
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    problems = []
    for probe, path in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")):
        get = container.get(probe, {}).get("httpGet")
        if not get or get.get("path") != path:
            problems.append(f"{probe} does not GET {path}")
        elif get.get("port") not in ports and get.get("port") not in ports.values():
            problems.append(f"{probe} port {get.get('port')} is not a port the container opens")
    return problems


def merged_config(objects: list[dict]) -> dict:
    return {key: value for o in objects if o["kind"] == "ConfigMap"
            and o["metadata"]["name"].startswith("serviceloop-config")
            for key, value in (o.get("data") or {}).items()}


def check_rabbitmq_cluster(obj: dict) -> list[str]:
    spec, problems = obj.get("spec") or {}, []
    if obj.get("apiVersion") != "rabbitmq.com/v1beta1":
        problems.append(f"apiVersion {obj.get('apiVersion')} is not rabbitmq.com/v1beta1")
    problems += [f"spec.{field}: not a RabbitmqCluster field" for field in
                 sorted(set(spec) - RABBITMQ_FIELDS)]
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 3 or replicas % 2 == 0:
        problems.append(f"spec.replicas {replicas}: quorum queues need an odd number >= 3")
    problems += resource_problems(spec.get("resources") or {}, "spec.resources")
    if not (spec.get("persistence") or {}).get("storage"):
        problems.append("spec.persistence.storage is not set")
    return problems


def check_cnpg_cluster(obj: dict) -> list[str]:
    spec, name, problems = obj.get("spec") or {}, obj["metadata"]["name"], []
    if obj.get("apiVersion") != "postgresql.cnpg.io/v1":
        problems.append(f"apiVersion {obj.get('apiVersion')} is not postgresql.cnpg.io/v1")
    problems += [f"spec.{field}: not a CloudNativePG Cluster field" for field in
                 sorted(set(spec) - CNPG_FIELDS)]
    service = name.removesuffix("-db")
    if service not in SERVICES or not name.endswith("-db"):
        problems.append("not named <service>-db: the services read the Secret <service>-db-app")
    initdb = (spec.get("bootstrap") or {}).get("initdb") or {}
    if initdb.get("database") != service or initdb.get("owner") != service:
        problems.append(f"spec.bootstrap.initdb must create database and owner {service!r}")
    instances = spec.get("instances")
    if not isinstance(instances, int) or instances < 1:
        problems.append(f"spec.instances {instances!r} is not a positive number")
    if not (spec.get("storage") or {}).get("size"):
        problems.append("spec.storage.size is not set")
    problems += resource_problems(spec.get("resources") or {}, "spec.resources")
    labels = (spec.get("inheritedMetadata") or {}).get("labels") or {}
    if labels.get("serviceloop.io/database") != service:
        problems.append("spec.inheritedMetadata.labels lacks serviceloop.io/database: "
                        f"{service} (its NetworkPolicy selects on it)")
    return problems


def resource_problems(resources: dict, where: str) -> list[str]:
    return [f"{where}.{bound} lacks {', '.join(sorted({'cpu', 'memory'} - set(values)))}"
            for bound in ("requests", "limits")
            if {"cpu", "memory"} - set(values := resources.get(bound) or {})]


def check_backing_services(objects: list[dict], config: dict) -> list[str]:
    """The broker the services' AMQP_URI names and a database per service exist."""
    problems = []
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    broker = config.get("RABBITMQ_HOST", "")
    if ("RabbitmqCluster", broker) in kinds:
        if config.get("QUEUE_TYPE") != "quorum":
            problems.append("RabbitmqCluster: QUEUE_TYPE in serviceloop-config is not quorum")
    elif not {("StatefulSet", broker), ("Service", broker)} <= kinds:
        problems.append(f"no broker named {broker!r} (RABBITMQ_HOST): neither a "
                        "RabbitmqCluster nor a StatefulSet with its Service")
    for service in SERVICES:
        name = f"{service}-db"
        if ("Cluster", name) not in kinds and \
                not {("StatefulSet", name), ("Service", f"{name}-rw")} <= kinds:
            problems.append(f"no database {name} for {service}: neither a CloudNativePG "
                            f"Cluster nor a StatefulSet with Service {name}-rw")
    return problems


def check_disruption_budgets(objects: list[dict]) -> list[str]:
    selectors = [o["spec"].get("selector", {}) for o in objects
                 if o["kind"] == "PodDisruptionBudget"]
    return [f"{ident(o)}: no PodDisruptionBudget selects its pods" for o in objects
            if o["kind"] == "Deployment"
            and not any(selects(s, pod_labels(o)) for s in selectors)]


def check_replicas(objects: list[dict]) -> list[str]:
    """Several pods of each service and relay; the gateway's count owned by a working HPA."""
    autoscalers = {o["spec"]["scaleTargetRef"].get("name"): o for o in objects
                   if o["kind"] == "HorizontalPodAutoscaler"
                   and o["spec"].get("scaleTargetRef", {}).get("kind") == "Deployment"}
    problems = []
    gateway = autoscalers.get("dispatch")
    if gateway is None:
        problems.append("no HorizontalPodAutoscaler scales Deployment/dispatch (the gateway)")
    elif gateway["spec"].get("maxReplicas", 0) <= gateway["spec"].get("minReplicas", 1):
        problems.append(f"{ident(gateway)}: maxReplicas {gateway['spec'].get('maxReplicas')} "
                        f"leaves nothing to scale above minReplicas "
                        f"{gateway['spec'].get('minReplicas', 1)}")
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    for service in SERVICES:
        for name in (service, f"{service}-relay"):
            deployment = deployments.get(name)
            if deployment is None:
                continue  # check_services reports a missing Deployment
            if name in autoscalers:
                count, how = autoscalers[name]["spec"].get("minReplicas", 1), "HPA minReplicas"
            else:
                count, how = deployment["spec"].get("replicas", 1), "replicas"
            if count < MIN_PRODUCTION_REPLICAS:
                problems.append(f"{ident(deployment)}: {how} {count} in production: run at "
                                f"least {MIN_PRODUCTION_REPLICAS}")
    return problems


# -- network ------------------------------------------------------------------------------


def pods(objects: list[dict]) -> list[Pod]:
    found = [Pod(o["kind"], o["metadata"]["name"], pod_labels(o)) for o in objects
             if pod_spec(o) is not None]
    for o in objects:
        name = o["metadata"]["name"]
        if o["kind"] == "Cluster" and o["apiVersion"].startswith("postgresql.cnpg.io/"):
            labels = ((o.get("spec") or {}).get("inheritedMetadata") or {}).get("labels") or {}
            found.append(Pod("Cluster", name, {**labels, "cnpg.io/cluster": name}))
        elif o["kind"] == "RabbitmqCluster":
            found.append(Pod("RabbitmqCluster", name, {"app.kubernetes.io/name": name}))
    for pod in found:
        pod.broker = pod.kind == "RabbitmqCluster" or pod.workload == "serviceloop-rabbitmq"
    return found


def selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], \
            expression.get("values") or []
        present = key in labels
        if (operator == "In" and labels.get(key) not in values) or \
                (operator == "NotIn" and labels.get(key) in values) or \
                (operator == "Exists" and not present) or \
                (operator == "DoesNotExist" and present):
            return False
    return True


def check_network_policies(objects: list[dict]) -> list[str]:
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    everyone = pods(objects)
    problems = []
    if not any(p["spec"].get("podSelector") == {} and not p["spec"].get("ingress")
               and "Ingress" in p["spec"].get("policyTypes", []) for p in policies):
        problems.append("NetworkPolicy: no default deny of ingress for the namespace")
    for policy in policies:
        targets = [pod for pod in everyone if selects(policy["spec"].get("podSelector", {}),
                                                      pod.labels)]
        for rule in policy["spec"].get("ingress") or []:
            for peer in rule.get("from") or [{}]:
                problems += [f"{ident(policy)}: {p}" for p in peer_problems(peer, targets,
                                                                             everyone)]
    for pod in everyone:
        if (pod.database or pod.broker) and not any(
                selects(p["spec"].get("podSelector", {}), pod.labels) for p in policies):
            problems.append(f"{pod}: no NetworkPolicy selects it")
    # and not so tight that a service, its relay or its migration cannot do its work
    clients = [pod for pod in everyone if pod.component in ("service", "relay", "migration")]
    for target in (pod for pod in everyone if pod.database or pod.broker):
        problems += [f"{source} cannot reach {target}: no NetworkPolicy lets it in"
                     for source in clients if (target.broker or source.name == target.database)
                     and not admitted(source, target, policies)]
    return problems


def admitted(source: Pod, target: Pod, policies: list[dict]) -> bool:
    return any(selects(peer.get("podSelector", {}), source.labels)
               for policy in policies if selects(policy["spec"].get("podSelector", {}),
                                                 target.labels)
               for rule in policy["spec"].get("ingress") or []
               for peer in rule.get("from") or [] if "namespaceSelector" not in peer)


def peer_problems(peer: dict, targets: list[Pod], everyone: list[Pod]) -> list[str]:
    """What is wrong with letting `peer` reach `targets`."""
    if not peer or "ipBlock" in peer:
        return [f"lets anyone in (a rule without a peer, or an ipBlock) to "
                f"{', '.join(map(str, targets))}"]
    if "namespaceSelector" in peer:
        namespace = (peer["namespaceSelector"].get("matchLabels") or {}).get(
            "kubernetes.io/metadata.name")
        allowed = OUTSIDE.get(namespace)
        if allowed is None:
            return [f"lets namespace {namespace or 'any'} in: only "
                    f"{', '.join(sorted(OUTSIDE))} may reach serviceloop"]
        return [f"lets namespace {namespace} reach {pod}" for pod in targets
                if not allowed(pod)]
    sources = [pod for pod in everyone if selects(peer.get("podSelector", {}), pod.labels)]
    problems = []
    for target in targets:
        if target.database is not None:
            problems += [f"lets {source} reach {target}, the {target.database} database"
                         for source in sources if source.database != target.database
                         and source.name != target.database]
        if target.broker:
            problems += [f"lets {source} reach the broker {target}" for source in sources
                         if not source.broker
                         and source.labels.get("app.kubernetes.io/part-of") != "serviceloop"]
    return problems


def check_ingress(objects: list[dict]) -> list[str]:
    problems = []
    for ingress in (o for o in objects if o["kind"] == "Ingress"):
        spec = ingress["spec"]
        if not spec.get("tls"):
            problems.append(f"{ident(ingress)}: no TLS")
        for rule in spec.get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                backend = path["backend"].get("service", {}).get("name")
                if GATEWAY.get(backend) != path["path"]:
                    problems.append(f"{ident(ingress)}: {path['path']} -> {backend}: only "
                                    + ", ".join(f"{p} -> {s}" for s, p in GATEWAY.items())
                                    + " may be reachable from outside")
    return problems


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT / "deploy" / "k8s",
                        help="the kustomize tree (base, components, overlays)")
    args = parser.parse_args(argv)
    if shutil.which("kubectl") is None:
        print("k8s-validate: kubectl is not on PATH (it renders the overlays)", file=sys.stderr)
        return 1
    started, failures = time.monotonic(), 0
    with tempfile.TemporaryDirectory(prefix="k8s-validate-") as workdir:
        found = variants(args.root.resolve(), Path(workdir))
        if not found:
            print(f"no overlays under {args.root}/overlays", file=sys.stderr)
            return 1
        for label, directory in found:
            try:
                objects = render(directory)
            except RuntimeError as error:
                problems, objects = [f"kubectl kustomize failed: {error}"], []
            else:
                problems = check(objects, production=label.split()[0] in PRODUCTION_OVERLAYS)
            failures += bool(problems)
            print(f"{'FAIL' if problems else 'ok  '} {label}: {len(objects)} objects")
            for problem in problems:
                print(f"       {problem}")
    print(f"{len(found) - failures} of {len(found)} renderings pass "
          f"(Kubernetes {KUBERNETES_VERSION} schemas, strict; {time.monotonic() - started:.1f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
