#!/usr/bin/env bash
# Make sure what the tests talk to is there: the local PostgreSQL server, Debian's
# prosody (the reference server of the benchmark test), haproxy (`up`'s service
# address), the third-party clients (profanity in tmux, go-sendxmpp), headless Chromium
# with chromium-driver (the admin page's browser test), the lab's packages
# (lab-packages.sh) and promtool (the alerting rules' check). Installs or starts them when missing and possible; with
# CI=true a PostgreSQL that cannot be reached is an error.
set -u

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1; then
  ver=$(ls /etc/postgresql 2>/dev/null | head -n1)
  [ -n "$ver" ] && pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null
  for _ in $(seq 1 30); do pg_up && break; sleep 0.5; done
fi
if ! pg_up; then
  if [ "${CI:-}" = "true" ]; then
    echo "test-services: PostgreSQL is not reachable at 127.0.0.1:5432 (CI=true needs it)" >&2
    exit 1
  fi
  echo "test-services: PostgreSQL not reachable; its tests will be skipped" >&2
fi

# Debian's prosody is the reference server of the benchmark test (its package may start a
# system instance; our tests run private instances on free ports); haproxy is `up`'s
# service address; profanity (driven in tmux) and go-sendxmpp are the third-party clients
# of tests/integration/test_third_party_clients.py; chromium and its driver run the admin
# page's browser test (tests/integration/test_admin_browser.py); GNU SASL's gsasl is the
# independent SCRAM-SHA-256-PLUS (tls-exporter) client of tests/integration/test_tls_plus.py.
"$(dirname "$0")/ensure-debian.sh" prosody=prosody haproxy=haproxy profanity=profanity \
  go-sendxmpp=go-sendxmpp tmux=tmux chromium=chromium chromedriver=chromium-driver gsasl=gsasl
"$(dirname "$0")/lab-packages.sh"  # the lab of separate hosts: etcd, Patroni, nftables

# promtool checks deploy/prometheus/alerts.yml (tests/integration/test_ops_kit.py). Debian ships
# it only inside the `prometheus` package (no smaller one has it); without its recommends (the
# node exporter) and, as a package's daemon under policy-rc.d, not started.
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test-services: installing prometheus (for promtool)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
      >/dev/null 2>&1 || echo "test-services: could not install prometheus (promtool)" >&2
  else
    echo "test-services: promtool missing (apt-get install --no-install-recommends prometheus); its test is skipped" >&2
  fi
fi
exit 0
