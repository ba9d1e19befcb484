#!/usr/bin/env bash
# Provision the real Kubernetes binaries the tests and the demo run against:
# kube-apiserver and etcd built from Go modules (no release downloads), and
# optionally helm. Idempotent: a second run with the same versions does nothing.
#
# Result: one directory (printed on the last line) holding `kube-apiserver`
# and `etcd`, following the KUBEBUILDER_ASSETS convention.
#
#   scripts/provision.sh            # kube-apiserver + etcd
#   scripts/provision.sh --helm     # also helm
#   scripts/provision.sh --print    # only print the assets directory
set -euo pipefail

KUBE_VERSION="${EIRINIX_KUBE_VERSION:-v1.34.4}"
ETCD_VERSION="${EIRINIX_ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${EIRINIX_HELM_VERSION:-v3.19.2}"
CACHE_ROOT="${EIRINIX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/eirinix}"
ASSETS="$CACHE_ROOT/assets/kube-$KUBE_VERSION-etcd-$ETCD_VERSION"

want_helm=0
for arg in "$@"; do
  case "$arg" in
    --print) echo "$ASSETS"; exit 0 ;;
    --helm) want_helm=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
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

build_kube_apiserver() {
  local out="$ASSETS/kube-apiserver"
  if [[ -x "$out" ]] && "$out" --version 2>/dev/null | grep -q "Kubernetes $KUBE_VERSION"; then
    log "kube-apiserver $KUBE_VERSION cached at $out"; return
  fi
  local minor="${KUBE_VERSION#v1.}"          # 34.4
  local staging="v0.$minor"                  # v0.34.4
  local work; work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  log "building kube-apiserver $KUBE_VERSION from Go modules (cold build: 10-25 minutes on 2 cores)"
  local gomod
  gomod="$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
  [[ -f "$gomod" ]] || { echo "provision: could not download k8s.io/kubernetes@$KUBE_VERSION go.mod" >&2; exit 1; }
  {
    echo "module eirinix.local/kubeapiserver"
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
  (cd "$work" && go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" >&2)
  local pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor%%.*} -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
  (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp" k8s.io/kubernetes/cmd/kube-apiserver >&2)
  mv "$out.tmp" "$out"
  log "kube-apiserver: $("$out" --version)"
}

build_etcd() {
  local out="$ASSETS/etcd"
  if [[ -x "$out" ]] && "$out" --version 2>/dev/null | grep -q "etcd Version: ${ETCD_VERSION#v}"; then
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
  log "etcd: $("$out" --version | head -1)"
}

build_helm() {
  local out="$ASSETS/helm"
  if [[ -x "$out" ]] && "$out" version --short 2>/dev/null | grep -q "$HELM_VERSION"; then
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
build_kube_apiserver
[[ $want_helm == 1 ]] && build_helm
echo "$ASSETS"
