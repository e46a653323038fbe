#!/usr/bin/env bash
# The Debian packages of the lab of separate hosts (`presence-ha lab`, tests/integration/test_lab.py):
# iproute2 (namespaces, veth, bridge), nftables (network faults), etcd-server (Patroni's quorum on
# the witness), patroni, postgresql-15, haproxy and keepalived (the service address: a VRRP
# virtual IP over one HAProxy per node host). Installs what is missing when root with apt-get; otherwise
# says what to install (the lab tests then skip, except with CI=true where they fail).
set -u

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v patroni >/dev/null 2>&1 || need+=(patroni)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v keepalived >/dev/null 2>&1 || [ -x /usr/sbin/keepalived ] || need+=(keepalived)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "lab-packages: installing ${need[*]} (the lab tests' hosts and replicated database)" >&2
  # The packages' own services (patroni, etcd) must not start: the lab runs private instances
  # (Debian's keepalived.service needs an /etc/keepalived/keepalived.conf, which the lab never writes).
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") \
    >/dev/null 2>&1 || echo "lab-packages: could not install ${need[*]}" >&2
else
  echo "lab-packages: missing ${need[*]}: apt-get install ${need[*]} (as root); the lab tests will be skipped" >&2
fi
exit 0
