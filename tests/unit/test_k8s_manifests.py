"""deploy/k8s passes `make k8s-validate`, and each of its checks fails on a broken manifest.

Needs `kubectl` (offline `kubectl kustomize`) and the kubernetes-validate package.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCRIPT = ROOT / "scripts" / "k8s_validate.py"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl")


def _validator():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("k8s_validate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validator = _validator()


def broken_copy(tmp_path: Path, file: str, old: str, new: str) -> Path:
    """deploy/k8s copied with the first `old` in `file` replaced by `new`."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    path = copy / file
    text = path.read_text()
    assert old in text, f"{file} no longer contains {old!r}: update this test"
    path.write_text(text.replace(old, new, 1))
    return copy


def run_validator(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_every_overlay_with_every_broker_and_database_choice_passes():
    done = run_validator()

    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout
    for overlay in ("dev (as shipped", "prod (as shipped", "dev with rabbitmq-operator, "
                    "postgres-cnpg", "prod with rabbitmq-statefulset, postgres-statefulset"):
        assert f"ok   {overlay}" in done.stdout


def test_a_probe_removed_fails_the_command(tmp_path):
    copy = broken_copy(tmp_path, "base/orders.yaml", "path: /health/ready",
                       "path: /health/live")

    done = run_validator("--root", str(copy))

    assert done.returncode == 1
    assert "Deployment/orders: readinessProbe does not GET /health/ready" in done.stdout
    assert "FAIL dev (as shipped" in done.stdout and "FAIL prod (as shipped" in done.stdout


BROKEN = [
    # (what breaks, file, old, new, overlay, the problem reported)
    ("a password in the ConfigMap", "base/serviceloop.env", "LOG_FORMAT=json",
     "DATABASE_PASSWORD=hunter2\nLOG_FORMAT=json", "dev",
     "DATABASE_PASSWORD looks like a credential: it belongs in a Secret"),
    ("a database URL in the ConfigMap", "base/serviceloop.env", "LOG_FORMAT=json",
     "DATABASE_URL_ORDERS=postgresql://orders@orders-db-rw/orders\nLOG_FORMAT=json", "dev",
     "DATABASE_URL_ORDERS looks like a credential"),
    ("a broker password in an env value", "base/orders.yaml",
     "amqp://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@", "amqp://serviceloop:hunter2@", "dev",
     "container orders: env AMQP_URI carries a credential in clear"),
    ("a Secret with values", "overlays/dev/kustomization.yaml", "patches:",
     "secretGenerator:\n  - name: orders-db-app\n    literals: [password=hunter2]\npatches:",
     "dev", "a Secret with values in the manifests"),
    ("a field Kubernetes does not know", "base/orders.yaml", "terminationGracePeriodSeconds: 60",
     "terminationGracePeriod: 60", "dev", "Deployment/orders: schema:"),
    ("a short grace period", "base/orders.yaml", "terminationGracePeriodSeconds: 60",
     "terminationGracePeriodSeconds: 10", "prod", "terminationGracePeriodSeconds 10 < 30"),
    ("no memory limit", "base/settlement.yaml", 'limits: {cpu: "1", memory: 512Mi}',
     'limits: {cpu: "1"}', "dev", "container settlement: no limits for memory"),
    ("running as root allowed", "base/callback.yaml", "runAsNonRoot: true",
     "runAsNonRoot: false", "dev", "Deployment/callback: container callback: runAsNonRoot"),
    ("no disruption budget", "base/orders.yaml",
     "  maxUnavailable: 1\n  selector:\n    matchLabels: {app.kubernetes.io/name: orders, "
     "app.kubernetes.io/component: service}",
     "  maxUnavailable: 1\n  selector:\n    matchLabels: {app.kubernetes.io/name: orders, "
     "app.kubernetes.io/component: other}",
     "dev", "Deployment/orders: no PodDisruptionBudget selects its pods"),
    ("the relay of another service", "base/orders.yaml", "[serviceloop, relay, orders]",
     "[serviceloop, relay, dispatch]", "dev", "Deployment/orders-relay: command"),
    ("no wait for the migration", "base/dispatch.yaml",
     "[python, /opt/serviceloop/wait_for_schema.py, dispatch]", "[python, -c, pass]", "dev",
     "Deployment/dispatch: no initContainer waiting for the schema"),
    ("a database open to every serviceloop pod", "components/postgres-statefulset/"
     "networkpolicies.yaml",
     "matchLabels: {app.kubernetes.io/part-of: serviceloop, app.kubernetes.io/name: orders}",
     "matchLabels: {app.kubernetes.io/part-of: serviceloop}", "dev",
     "lets Deployment/dispatch reach StatefulSet/orders-db, the orders database"),
    ("a CloudNativePG database open to another service", "components/postgres-cnpg/"
     "networkpolicies.yaml", "app.kubernetes.io/name: settlement}",
     "app.kubernetes.io/name: callback}", "prod",
     "lets Deployment/callback reach Cluster/settlement-db, the settlement database"),
    ("a database its own migration cannot reach", "components/postgres-statefulset/"
     "networkpolicies.yaml",
     "matchLabels: {app.kubernetes.io/part-of: serviceloop, app.kubernetes.io/name: orders}",
     "matchLabels: {app.kubernetes.io/name: orders, app.kubernetes.io/component: service}",
     "dev", "Job/orders-migrate cannot reach StatefulSet/orders-db"),
    ("orders reachable from the ingress controller", "base/networkpolicies.yaml",
     "values: [dispatch, callback]", "values: [dispatch, callback, orders]", "dev",
     "lets namespace ingress-nginx reach Deployment/orders"),
    ("no default deny", "base/networkpolicies.yaml",
     "  podSelector: {}\n  policyTypes: [Ingress]\n",
     "  podSelector: {}\n  policyTypes: [Ingress]\n  ingress: [{}]\n", "dev",
     "no default deny of ingress"),
    ("another path through the Ingress", "base/gateway.yaml",
     "service: {name: callback, port: {name: http}}",
     "service: {name: orders, port: {name: http}}", "dev",
     "/callback/v1/replies -> orders: only"),
    ("a RabbitmqCluster too small for quorum queues", "components/rabbitmq-operator/"
     "rabbitmqcluster.yaml", "replicas: 3", "replicas: 2", "prod",
     "spec.replicas 2: quorum queues need an odd number >= 3"),
    ("classic queues on the RabbitmqCluster", "components/rabbitmq-operator/kustomization.yaml",
     "literals: [QUEUE_TYPE=quorum]", "literals: [QUEUE_TYPE=classic]", "prod",
     "QUEUE_TYPE in serviceloop-config is not quorum"),
    ("a CloudNativePG Cluster its NetworkPolicy misses", "components/postgres-cnpg/"
     "clusters.yaml", "labels: {serviceloop.io/database: orders}", "labels: {}", "prod",
     "Cluster/orders-db: spec.inheritedMetadata.labels lacks serviceloop.io/database: orders"),
    ("a misspelt CloudNativePG field", "components/postgres-cnpg/clusters.yaml",
     "enableSuperuserAccess: false", "enableSuperUserAccess: false", "prod",
     "spec.enableSuperUserAccess: not a CloudNativePG Cluster field"),
    ("one replica of a service in production", "overlays/prod/kustomization.yaml",
     "{name: settlement, count: 3}", "{name: settlement, count: 1}", "prod",
     "Deployment/settlement: replicas 1 in production: run at least 2"),
    ("one relay in production", "overlays/prod/kustomization.yaml",
     "{name: orders-relay, count: 2}", "{name: orders-relay, count: 1}", "prod",
     "Deployment/orders-relay: replicas 1 in production: run at least 2"),
    ("a gateway autoscaler that keeps one pod", "overlays/prod/kustomization.yaml",
     "path: /spec/minReplicas\n        value: 3", "path: /spec/minReplicas\n        value: 1",
     "prod", "Deployment/dispatch: HPA minReplicas 1 in production: run at least 2"),
    ("a gateway autoscaler that cannot scale", "overlays/prod/kustomization.yaml",
     "path: /spec/maxReplicas\n        value: 12", "path: /spec/maxReplicas\n        value: 3",
     "prod", "HorizontalPodAutoscaler/dispatch: maxReplicas 3 leaves nothing to scale"),
    ("no autoscaler on the gateway", "base/gateway.yaml",
     "scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: dispatch}",
     "scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: orders}", "prod",
     "no HorizontalPodAutoscaler scales Deployment/dispatch (the gateway)"),
]


@pytest.mark.parametrize(("file", "old", "new", "overlay", "problem"),
                         [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN])
def test_each_check_fails_on_a_broken_manifest(tmp_path, file, old, new, overlay, problem):
    copy = broken_copy(tmp_path, file, old, new)

    problems = validator.check(validator.render(copy / "overlays" / overlay),
                               production=overlay in validator.PRODUCTION_OVERLAYS)

    assert any(problem in p for p in problems), "\n".join(problems) or "no problem found"


def test_the_shipped_overlays_have_no_problem():
    for overlay in ("dev", "prod"):
        assert validator.check(validator.render(K8S / "overlays" / overlay),
                               production=overlay in validator.PRODUCTION_OVERLAYS) == []


def test_the_dev_overlay_may_run_one_replica_of_each():
    objects = validator.render(K8S / "overlays" / "dev")
    assert validator.check_replicas(objects)  # one of each, as a laptop runs it
    assert validator.check(objects) == []
