#!/usr/bin/env bash
# Runs the whole test suite inside a fresh, loopback-only network namespace, so that no test can
# reach the real network even if the proxy had a bug: the only interface is `lo`. Inside it the
# SSRF tests add the addresses they need (169.254.169.254, 10.1.2.3, ...) to `lo` and run fake
# servers there. As root this uses `unshare --net`; otherwise a user namespace (`unshare -rn`).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${MCP_EGRESS_IN_NETNS:-}" != "1" ]; then
  if [ "$(id -u)" = "0" ]; then ns=(unshare --net); else ns=(unshare --user --map-root-user --net); fi
  if ! "${ns[@]}" true 2>/dev/null; then
    echo "test-in-netns: cannot create a network namespace (${ns[*]}); refusing to run tests on the real network" >&2
    exit 1
  fi
  exec "${ns[@]}" env MCP_EGRESS_IN_NETNS=1 bash "$0" "$@"
fi

ip link set lo up
# Prove the namespace is loopback-only before anything runs.
if ip -o link show | grep -v ': lo:' | grep -q .; then
  echo "test-in-netns: unexpected interfaces in the test namespace" >&2
  exit 1
fi
# Addresses the SSRF and rebinding tests listen on: fake metadata and internal servers, and two
# "public-looking" upstreams. They exist only on this namespace's loopback interface.
for a in 169.254.169.254/32 10.1.2.3/32 100.100.100.200/32 93.184.216.34/32 93.184.216.35/32; do
  ip addr add "$a" dev lo
done
for a in fd00:ec2::254/128 2606:4700::1111/128; do
  ip -6 addr add "$a" dev lo nodad
done
# A blackhole: routed to lo but held by nobody, so a SYN to it is never answered (connect timeouts).
ip route add 203.0.113.9/32 dev lo
exec npx tap "$@"
