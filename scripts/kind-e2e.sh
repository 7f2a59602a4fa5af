#!/usr/bin/env bash
# End to end on a local Kubernetes: kind cluster -> Istio (with the audit's
# envoyHttpAls extension provider, istio/mesh/) -> MinIO with Object Lock -> the
# audit server (istio/overlays/enforce: EnvoyFilter + Telemetry) -> httpbin
# opted in -> traffic -> `extproc-audit verify` of what landed in the bucket.
#
# Needs: docker (a running engine), kind, kubectl, istioctl, on PATH.
# Not run by .ci/run (no Docker engine there); see docs/ISTIO.md.
#
#   scripts/kind-e2e.sh            # create, test, delete the cluster
#   KEEP=1 scripts/kind-e2e.sh     # leave the cluster running afterwards
#   OVERLAY=observe scripts/kind-e2e.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=${CLUSTER:-extproc-audit-e2e}
OVERLAY=${OVERLAY:-enforce}
IMAGE=${IMAGE:-extproc-audit:0.1.0}
REQUESTS=${REQUESTS:-50}
BUCKET=audit
MINIO_USER=minioadmin
MINIO_PASSWORD=minioadmin-e2e

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'kind-e2e: %s\n' "$*" >&2; exit 2; }

# The tools run from the image itself, so nothing is needed on the host.
toolbox() {
    kubectl -n extproc-audit run "tool-$RANDOM" --rm -i --restart=Never --quiet \
        --image="$IMAGE" --image-pull-policy=IfNotPresent \
        --annotations=sidecar.istio.io/inject=false \
        --env=AWS_ENDPOINT_URL=http://minio.minio.svc.cluster.local:9000 \
        --env=AWS_ACCESS_KEY_ID="$MINIO_USER" --env=AWS_SECRET_ACCESS_KEY="$MINIO_PASSWORD" \
        --env=AWS_REGION=us-east-1 --command -- "$@"
}

# A signing key made by keygen in the image: the key (secret) into file $1, the
# verifier key on stdout. The two files come back as tagged lines ("key ...",
# "vkey ..."): each ends with a newline, which $(cat) drops, so neither can shift
# the other (cat-ing them one after the other left an empty line in between).
make_keys() {
    local keys
    # shellcheck disable=SC2016  # expanded by the shell in the pod
    keys=$(toolbox sh -c 'd=$(mktemp -d) &&
        extproc-audit keygen --name e2e-audit --out "$d/k" --vkey-out "$d/v" >/dev/null 2>&1 &&
        printf "key %s\nvkey %s\n" "$(cat "$d/k")" "$(cat "$d/v")" && rm -rf "$d"')
    # Owner-only, as keygen writes it: serve refuses a key others can read.
    (umask 077 && printf '%s\n' "$keys" | sed -n 's/^key //p' >"$1")
    printf '%s\n' "$keys" | sed -n 's/^vkey //p'
}

main() {
    WORK=$(mktemp -d)
    cd "$ROOT"

    for tool in docker kind kubectl istioctl; do
        command -v "$tool" >/dev/null || die "$tool not found on PATH"
    done
    docker info >/dev/null 2>&1 || die "no Docker engine reachable"

    cleanup() {
        status=$?
        rm -rf "$WORK"
        if [ "${KEEP:-0}" = 1 ]; then
            log "KEEP=1: cluster $CLUSTER left running (kind delete cluster --name $CLUSTER)"
        else
            kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
        fi
        exit "$status"
    }
    trap cleanup EXIT

    log "kind cluster $CLUSTER"
    kind create cluster --name "$CLUSTER" --wait 120s
    kubectl config use-context "kind-$CLUSTER"

    log "Istio: the cluster's own IstioOperator, then the audit's mesh config and injection template"
    # The install sequence of docs/ISTIO.md ("Install"), run as written there
    # (tests/integration/test_istio_install.py checks they agree): the IstioOperator the cluster is
    # installed with first, then the audit's files, which set no profile and no
    # component, so every component stays as the first file has it. This new
    # cluster's own: the default profile (istiod and the ingress gateway).
    ISTIO_OPERATOR=${ISTIO_OPERATOR:-$WORK/istio-operator.yaml}
    [ -s "$ISTIO_OPERATOR" ] || printf '%s\n' 'apiVersion: install.istio.io/v1alpha1' \
        'kind: IstioOperator' 'spec:' '  profile: default' >"$ISTIO_OPERATOR"
    istioctl install -y -f "$ISTIO_OPERATOR" -f istio/mesh/istio-operator.yaml -f istio/injection/istio-operator-audit-template.yaml

    log "image $IMAGE"
    docker build -t "$IMAGE" "$ROOT"
    kind load docker-image "$IMAGE" --name "$CLUSTER"

    log "MinIO with a locked bucket (stands in for S3)"
    kubectl create namespace minio
    # Pin a release for repeatable runs: MINIO_IMAGE=quay.io/minio/minio:RELEASE....
    kubectl -n minio create deployment minio --image="${MINIO_IMAGE:-quay.io/minio/minio:latest}" --port=9000 \
        -- minio server /data
    kubectl -n minio set env deployment/minio \
        MINIO_ROOT_USER="$MINIO_USER" MINIO_ROOT_PASSWORD="$MINIO_PASSWORD"
    kubectl -n minio expose deployment minio --port=9000
    kubectl -n minio rollout status deployment/minio --timeout=180s

    # The overlays' Telemetry lives in the application namespace: create it first.
    # The cluster admin's part: the namespace may report (NetworkPolicy); its
    # accounts are already on the allow-lists (cluster.local/ns/demo/sa/* in
    # istio/base/authorizationpolicy.yaml and EXTPROC_AUDIT_ALLOW_REPORTER).
    kubectl create namespace demo
    kubectl label namespace demo istio-injection=enabled extproc-audit.io/reporter=true

    log "audit server ($OVERLAY overlay), with MinIO instead of AWS"
    kubectl kustomize "$ROOT/istio/overlays/$OVERLAY" >"$WORK/audit.yaml"
    kubectl apply -f "$WORK/audit.yaml" || kubectl apply -f "$WORK/audit.yaml"  # CRDs settle
    S3_ENV=(
        AWS_ENDPOINT_URL=http://minio.minio.svc.cluster.local:9000
        AWS_ACCESS_KEY_ID="$MINIO_USER"
        AWS_SECRET_ACCESS_KEY="$MINIO_PASSWORD"
        EXTPROC_AUDIT_STORE="s3://$BUCKET/mesh"
    )
    kubectl -n extproc-audit set env statefulset/extproc-audit "${S3_ENV[@]}"
    # MinIO is plain HTTP on 9000 inside the cluster: let the policy allow it.
    kubectl -n extproc-audit patch networkpolicy extproc-audit --type=json \
        -p '[{"op": "add", "path": "/spec/egress/-", "value": {"ports": [{"protocol": "TCP", "port": 9000}]}}]'
    # MinIO traffic bypasses the sidecar too, like S3's 443: the final publish on
    # SIGTERM must not depend on istio-proxy still running.
    kubectl -n extproc-audit patch statefulset extproc-audit -p '{"spec": {"template": {"metadata":
        {"annotations": {"traffic.sidecar.istio.io/excludeOutboundPorts": "443,9000"}}}}}'
    # One pod is enough here and keeps the scale-down from racing the test.
    kubectl -n extproc-audit patch hpa extproc-audit -p '{"spec": {"minReplicas": 1, "maxReplicas": 1}}'

    log "bucket with Object Lock, signing key"
    toolbox extproc-audit init-bucket "s3://$BUCKET" --retention-days 1 --mode COMPLIANCE
    VKEY=$(make_keys "$WORK/signing.key")
    [ -n "$VKEY" ] || die "keygen printed no verifier key"
    [ -s "$WORK/signing.key" ] || die "keygen wrote no signing key"
    kubectl -n extproc-audit create secret generic extproc-audit-signing-key \
        --from-file=signing.key="$WORK/signing.key"
    kubectl -n extproc-audit rollout status statefulset/extproc-audit --timeout=300s

    log "httpbin, opted in (label extproc-audit.io/audit=enabled)"
    kubectl -n demo create deployment httpbin --image=docker.io/mccutchen/go-httpbin:v2.15.0 --port=8080
    kubectl -n demo patch deployment httpbin \
        -p '{"spec": {"template": {"metadata": {"labels": {"extproc-audit.io/audit": "enabled"}}}}}'
    kubectl -n demo expose deployment httpbin --port=8000 --target-port=8080
    kubectl -n demo rollout status deployment/httpbin --timeout=180s

    log "$REQUESTS requests through the mesh"
    # No sidecar on the client (it would keep the pod running); httpbin's inbound
    # listener, where the EnvoyFilter sits, takes plaintext in PERMISSIVE mode.
    kubectl -n demo run client --rm -i --restart=Never --quiet --image=curlimages/curl:8.11.1 \
        --annotations=sidecar.istio.io/inject=false \
        --command -- sh -c "for i in \$(seq $REQUESTS); do
            curl -fsS -o /dev/null http://httpbin.demo:8000/get?i=\$i || exit 1; done"

    log "SIGTERM the audit server (scale to 0): final checkpoint"
    # At 0 replicas the HPA stands still, and no new writer appends while we verify.
    kubectl -n extproc-audit scale statefulset extproc-audit --replicas=0
    kubectl -n extproc-audit wait --for=delete pod/extproc-audit-0 --timeout=120s

    log "verify"
    toolbox extproc-audit verify "s3://$BUCKET/mesh" --vkey "$VKEY" | tee "$WORK/verify.txt"
    grep -q '^VALID' "$WORK/verify.txt" || die "verification failed"
    log "ok"
}

# Sourced (the tests call make_keys with their own toolbox): define, do not run.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
