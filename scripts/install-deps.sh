#!/usr/bin/env bash
# Debian packages the tests and the demo run against: the real node's runtime (containerd, runc,
# the CNI plugins, iptables for kube-proxy, iproute2 and util-linux for its namespaces), the
# static busybox its pause and app images are made of, CA roots for the eirinix image, and the
# real servers and clients of the extension tests (rsyslog with TLS and RELP, OpenSSH's client).
# Idempotent: installs only what is missing. Nothing here is started as a system service: the
# tests run their own instances with their own config.
set -euo pipefail
packages=(
  containerd runc containernetworking-plugins iptables iproute2 util-linux busybox-static
  ca-certificates rsyslog rsyslog-gnutls rsyslog-relp openssh-client
)
missing=()
for p in "${packages[@]}"; do
  [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == *'install ok installed'* ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
