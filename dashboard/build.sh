#!/usr/bin/env bash
# Builds the dashboard into OUT_DIR (moatd serves it under /dashboard/): OUT_DIR/index.html and
# OUT_DIR/assets/{app.js,app.js.map,app.css,app.css.map}.
# Usage: dashboard/build.sh OUT_DIR
# Installs the locked npm packages (npm ci) only when node_modules is missing or
# package-lock.json changed since the last install (a stamp in node_modules), type-checks
# (tsc --noEmit, strict), and bundles with esbuild (minified, with source maps). Nothing is
# fetched at run time: the bundle has every byte the page needs.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
out=$1
case "$out" in /*) ;; *) out=$PWD/$out ;; esac
cd "$here"

command -v npm >/dev/null || { echo "dashboard: npm not found (scripts/setup-deps.sh installs nodejs)" >&2; exit 1; }

# One install at a time (two build directories may build the dashboard at once).
exec 9>"$here/node_modules.lock"
flock 9
stamp=node_modules/.moat-lock-sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "dashboard: npm ci" >&2
  if ! npm ci --offline --no-audit --no-fund --loglevel=error >/dev/null 2>&1; then
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
  fi
  echo "$want" >"$stamp"
fi
flock -u 9

node_modules/.bin/tsc --noEmit -p tsconfig.json

# Into a fresh directory beside OUT_DIR, then swapped in: a failed build leaves the old one.
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d "$(dirname "$out")/.dashboard.XXXXXX")
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
node_modules/.bin/esbuild src/main.tsx --bundle --minify --sourcemap --target=es2020 \
  --format=iife --jsx=automatic --jsx-import-source=preact --charset=utf8 \
  --legal-comments=linked --log-level=warning --outfile="$tmp/assets/app.js"
cp src/index.html "$tmp/index.html"
# Precompressed copies moatd serves to clients that accept gzip (-n: no name or time inside, so
# the same sources give the same bytes).
gzip -9 -n -k "$tmp/assets/app.js" "$tmp/assets/app.css"
[ -s "$tmp/assets/app.js" ] && [ -s "$tmp/assets/app.css" ] || { echo "dashboard: the bundle is incomplete" >&2; exit 1; }
rm -rf "$out.old"
[ ! -e "$out" ] || mv "$out" "$out.old"
mv "$tmp" "$out"
rm -rf "$out.old"
trap - EXIT
echo "dashboard: built $out" >&2
