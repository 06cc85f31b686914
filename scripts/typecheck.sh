#!/usr/bin/env bash
# mypy --strict over the whole package as it is installed: radstream/ plus producers/, consumers/
# and stream-apps/ at the import paths pyproject's package-dir maps them to (radstream.producers,
# radstream.consumers, radstream.stream_apps). mypy cannot follow package-dir itself, so this
# builds that layout from symbolic links under .cache/typecheck and checks it there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tree="$root/.cache/typecheck"
rm -rf "$tree"
mkdir -p "$tree/radstream"
for entry in "$root"/radstream/*; do
  name="$(basename "$entry")"
  [ "$name" = "__pycache__" ] || ln -s "$entry" "$tree/radstream/$name"
done
ln -s "$root/producers" "$tree/radstream/producers"
ln -s "$root/consumers" "$tree/radstream/consumers"
ln -s "$root/stream-apps" "$tree/radstream/stream_apps"
cd "$tree"
exec "$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" --cache-dir "$root/.mypy_cache" radstream "$@"
