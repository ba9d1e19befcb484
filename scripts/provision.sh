#!/usr/bin/env bash
# Provision the real Kubernetes binaries the tests and the demo run against, built
# from Go modules (no release downloads): etcd, and from one k8s.io/kubernetes
# version kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy and kubectl; optionally helm. Idempotent: a second run with the same
# versions does nothing. The cache is keyed by version (EIRINIX_KUBE_VERSION).
#
# Result: one directory (printed on the last line) holding the binaries,
# following the KUBEBUILDER_ASSETS convention.
#
#   scripts/provision.sh                   # everything the real single-node cluster needs
#   scripts/provision.sh --control-plane   # only etcd + kube-apiserver
#   scripts/provision.sh --helm            # also helm and the CRDs the chart's options need
#   scripts/provision.sh --print           # only print the assets directory
set -euo pipefail

KUBE_VERSION="${EIRINIX_KUBE_VERSION:-v1.37.2}"
ETCD_VERSION="${EIRINIX_ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${EIRINIX_HELM_VERSION:-v3.19.2}"
# CRDs the chart's optional manifests need (validated against their real schemas in tests).
CERT_MANAGER_VERSION="${EIRINIX_CERT_MANAGER_VERSION:-v1.21.2}"
PROMETHEUS_OPERATOR_VERSION="${EIRINIX_PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
CACHE_ROOT="${EIRINIX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/eirinix}"
ASSETS="$CACHE_ROOT/assets/kube-$KUBE_VERSION-etcd-$ETCD_VERSION"

want_helm=0
kube_binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
for arg in "$@"; do
  case "$arg" in
    --print) echo "$ASSETS"; exit 0 ;;
    --helm) want_helm=1 ;;
    --control-plane) kube_binaries=(kube-apiserver) ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "provision: unknown argument $arg" >&2; exit 2 ;;
  esac
done

log() { printf '[provision %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

command -v go >/dev/null || { echo "provision: Go is required (https://go.dev); it builds kube-apiserver/etcd from modules" >&2; exit 1; }
mkdir -p "$ASSETS"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--mod=mod}" GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

# Serialise concurrent provisioners (tests in parallel, CI + a developer).
exec 9>"$ASSETS/.lock"
flock 9

# Prints "<binary> <version>" as the binary reports it, or nothing.
kube_binary_version() {
  local bin="$1" out="$ASSETS/$1"
  [[ -x "$out" ]] || return 0
  case "$bin" in
    kubectl) "$out" version --client 2>/dev/null | sed -n 's/^Client Version: //p' ;;
    *) "$out" --version 2>/dev/null | sed -n 's/^Kubernetes //p' ;;
  esac
}

build_kube() {
  local missing=() bin
  for bin in "${kube_binaries[@]}"; do
    if [[ "$(kube_binary_version "$bin")" == "$KUBE_VERSION" ]]; then
      log "$bin $KUBE_VERSION cached at $ASSETS/$bin"
    else
      missing+=("$bin")
    fi
  done
  ((${#missing[@]})) || return 0
  local minor="${KUBE_VERSION#v1.}"          # 37.2
  local staging="v0.$minor"                  # v0.37.2
  local work; work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  log "building ${missing[*]} $KUBE_VERSION from Go modules (cold build of kube-apiserver: 10-25 minutes on 2 cores; the others take a few minutes more)"
  local gomod
  gomod="$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
  [[ -f "$gomod" ]] || { echo "provision: could not download k8s.io/kubernetes@$KUBE_VERSION go.mod" >&2; exit 1; }
  {
    echo "module eirinix.local/kubernetes"
    echo
    grep -m1 '^go ' "$gomod"
    grep '^godebug' "$gomod" || true
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    # Every k8s.io/* staging module the kubernetes go.mod requires at v0.0.0
    # (it replaces them with ./staging paths we do not have) maps to its
    # published v0.<minor>.<patch>.
    grep -E '^[[:space:]]*k8s\.io/[^ ]+ v0\.0\.0$' "$gomod" | awk -v v="$staging" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
  } >"$work/go.mod"
  log "wrapper go.mod has $(grep -c '=>' "$work/go.mod") staging replaces"
  local pkgs=()
  for bin in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$bin"); done
  (cd "$work" && go get "${pkgs[@]/%/@$KUBE_VERSION}" >&2)
  local pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor%%.*} -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
  mkdir -p "$work/out"
  (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$work/out/" "${pkgs[@]}" >&2)
  for bin in "${missing[@]}"; do
    mv "$work/out/$bin" "$ASSETS/$bin"
    log "$bin: $(kube_binary_version "$bin")"
  done
}

build_etcd() {
  local out="$ASSETS/etcd"
  # The output is captured whole: with pipefail, `| grep -q` would fail the check whenever grep
  # exits before etcd has written its last line (SIGPIPE), and the cached etcd would be rebuilt.
  if [[ -x "$out" && "$("$out" --version 2>/dev/null)" == *"etcd Version: ${ETCD_VERSION#v}"* ]]; then
    log "etcd $ETCD_VERSION cached at $out"; return
  fi
  local work; work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  log "building etcd $ETCD_VERSION from Go modules"
  printf 'module eirinix.local/etcd\n\ngo 1.24\n' >"$work/go.mod"
  (cd "$work" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2)
  local ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=eirinix"
  (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp" go.etcd.io/etcd/server/v3 >&2)
  mv "$out.tmp" "$out"
  log "etcd: $("$out" --version | sed -n 1p)"
}

# The CustomResourceDefinitions of cert-manager (Certificate, Issuer) and prometheus-operator
# (ServiceMonitor), copied from their Go modules (plain YAML in the module's tree).
fetch_crds() {
  local out="$ASSETS/crds"
  local stamp="$out/.versions"
  local want="cert-manager $CERT_MANAGER_VERSION prometheus-operator $PROMETHEUS_OPERATOR_VERSION"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    log "CRDs ($want) cached at $out"; return
  fi
  local work; work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  printf 'module eirinix.local/crds\n\ngo 1.24\n' >"$work/go.mod"
  local dir
  mkdir -p "$out"
  dir="$(cd "$work" && go mod download -json "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')"
  cp "$dir/deploy/crds/cert-manager.io_certificates.yaml" "$dir/deploy/crds/cert-manager.io_issuers.yaml" "$out/"
  dir="$(cd "$work" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')"
  cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" "$out/"
  chmod 0644 "$out"/*.yaml
  echo "$want" >"$stamp"
  log "CRDs: $(ls "$out" | tr '\n' ' ')"
}

build_helm() {
  local out="$ASSETS/helm"
  if [[ -x "$out" && "$("$out" version --short 2>/dev/null)" == *"$HELM_VERSION"* ]]; then
    log "helm $HELM_VERSION cached at $out"; return
  fi
  local work; work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  log "building helm $HELM_VERSION from Go modules"
  printf 'module eirinix.local/helm\n\ngo 1.24\n' >"$work/go.mod"
  (cd "$work" && go get "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2)
  local minor="${KUBE_VERSION#v1.}"
  local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${minor%%.*}"
  ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${minor%%.*}"
  (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp" helm.sh/helm/v3/cmd/helm >&2)
  mv "$out.tmp" "$out"
  log "helm: $("$out" version --short)"
}

build_etcd
build_kube
if [[ $want_helm == 1 ]]; then build_helm; fetch_crds; fi
echo "$ASSETS"
