#!/usr/bin/env bash
# Build the docs site and screenshot pages into docs/img/site/ with headless Chromium
# (Debian: apt-get install chromium). Usage: bash scripts/site_screenshots.sh [page ...]
set -euo pipefail
cd "$(dirname "$0")/.."
pages=("${@:-index rl api}")
site=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict --quiet --site-dir "$site"
port=8799
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$site" > /dev/null 2>&1 &
server=$!
trap 'kill $server; rm -rf "$site"' EXIT
sleep 1
mkdir -p docs/img/site
for page in ${pages[@]}; do
  path=$([ "$page" = index ] && echo index.html || echo "$page/index.html")
  name=$([ "$page" = index ] && echo home || echo "$page")
  profile=$(mktemp -d)
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars --window-size=1280,1400 \
    --screenshot="docs/img/site/$name.png" "http://127.0.0.1:$port/$path" 2> /dev/null
  rm -rf "$profile"
  echo "docs/img/site/$name.png"
done
