#!/bin/sh
# Creates the Secrets the dev overlay (plain StatefulSets) reads, with random values, in
# namespace ${NAMESPACE:-serviceloop}; run it once before `kubectl apply -k
# deploy/k8s/overlays/dev`. Nothing is kept on disk (the values pass through kubectl's
# arguments: fine for dev, not for production). Existing Secrets are left alone, so running
# it again never changes a password a database was initialised with.
set -eu
ns=${NAMESPACE:-serviceloop}
host=${GATEWAY_HOST:-partners.serviceloop.test}
random() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }  # hex: safe inside a URL
create() {  # name, then key=value pairs
    name=$1; shift
    if kubectl -n "$ns" get secret "$name" >/dev/null 2>&1; then
        echo "secret/$name exists: kept"; return
    fi
    set -- $(for pair in "$@"; do printf -- '--from-literal=%s ' "$pair"; done)
    kubectl -n "$ns" create secret generic "$name" "$@" >/dev/null
    echo "secret/$name created"
}
kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns"
create serviceloop-rabbitmq-default-user username=serviceloop "password=$(random)"
for service in orders dispatch callback settlement; do
    password=$(random)
    create "$service-db-app" "username=$service" "password=$password" "dbname=$service" \
        "uri=postgresql://$service:$password@$service-db-rw.$ns.svc:5432/$service"
done
create serviceloop-provider "token=$(random)"
if ! kubectl -n "$ns" get secret serviceloop-gateway-tls >/dev/null 2>&1; then
    dir=$(mktemp -d)
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=$host" \
        -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null
    kubectl -n "$ns" create secret tls serviceloop-gateway-tls \
        --cert="$dir/tls.crt" --key="$dir/tls.key" >/dev/null
    rm -rf "$dir"
    echo "secret/serviceloop-gateway-tls created (self-signed for $host)"
fi
