#!/bin/sh
# The control plane / host boundary (docs/architecture.md): nothing under src/api includes a header
# of the host side (agent/, vmm/, channel/, net/, host/, guest/) or of the moatd binary, and no
# library src/api defines links a host-side library. A failure names each offending line.
set -eu
root=${1:?usage: boundary_check.sh SOURCE_DIR}
status=0
hits=$(grep -rnE '^[[:space:]]*#[[:space:]]*include[[:space:]]+"(agent|vmm|channel|net|host|guest|moatd)/' \
  "$root/src/api" || true)
if [ -n "$hits" ]; then
  echo "control plane includes host-side headers:"
  echo "$hits"
  status=1
fi
links=$(grep -nE '\bmoat_(agent|vmm|channel|net|host|guest)\b' "$root/src/api/CMakeLists.txt" || true)
if [ -n "$links" ]; then
  echo "control-plane libraries link host-side libraries:"
  echo "$links"
  status=1
fi
[ "$status" -eq 0 ] && echo "boundary: src/api is free of host-side code"
exit "$status"
