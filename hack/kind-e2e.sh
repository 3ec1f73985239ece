#!/usr/bin/env bash
# The whole path on a real cluster, where Docker exists (not on kubetune's CI machines,
# which have no Docker engine; tests/unit/test_kind_walkthrough.py checks this script's
# manifests and values instead):
#   kind cluster -> CPU images -> helm install -> data into a PVC -> the sentiment job
#   -> Succeeded -> its status -> the cluster deleted.
# Needs: docker, kind, kubectl, helm, and the kubetune CLI (pip install -e .).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${KUBETUNE_KIND_CLUSTER:-kubetune}"
TIMEOUT="${KUBETUNE_E2E_TIMEOUT:-30m}"
KEEP="${KUBETUNE_KEEP_CLUSTER:-}"

cleanup() {
    if [ -z "${KEEP}" ]; then
        kind delete cluster --name "${CLUSTER}"
    fi
}

kind create cluster --name "${CLUSTER}" --wait 120s
trap cleanup EXIT

docker build --target operator -t kubetune-operator:dev .
docker build --target trainer -t kubetune-trainer:dev-cpu \
    --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
    --build-arg TRAINER_EXTRAS=trainer,example .
kind load docker-image --name "${CLUSTER}" kubetune-operator:dev kubetune-trainer:dev-cpu

helm install kubetune charts/kubetune --namespace kubetune-system --create-namespace \
    --values hack/kind/values.yaml --wait

kubectl apply -f hack/kind/storage.yaml
kubectl wait --for=condition=Ready pod/kubetune-data-loader --timeout=180s
kubectl exec kubetune-data-loader -- mkdir -p /data/sentiment
kubectl cp examples/sentiment/data/train.csv kubetune-data-loader:/data/sentiment/train.csv
kubectl cp examples/sentiment/data/validation.csv \
    kubetune-data-loader:/data/sentiment/validation.csv
# A ReadWriteOnce claim on kind's single node may be shared; free it anyway.
kubectl delete pod kubetune-data-loader --wait

kubetune submit examples/gitops/job.yaml --namespace default
kubectl wait --for=condition=Succeeded ftj/sentiment --timeout="${TIMEOUT}" || {
    kubetune status sentiment --namespace default
    kubectl logs -l kubetune.dev/job-name=sentiment -c trainer --prefix --tail=50
    exit 1
}
kubetune status sentiment --namespace default
kubectl get ftj sentiment
