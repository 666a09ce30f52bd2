#!/usr/bin/env bash
# Builds the Splunk app package: <out dir>/ringcentral_audit-<version>.tgz
#
#   splunk-app/package.sh [--stamp] [OUT_DIR]      (OUT_DIR defaults to target/splunk-app)
#
# The version comes from Cargo.toml ([package] version) and is written into default/app.conf
# ([launcher] version, [id] version) and app.manifest (info.id.version) of the packaged copy.
# --stamp also writes it into the committed files (do that when bumping the crate version; the
# test tests/splunk_app.rs fails while they disagree). The archive holds only the app directory:
# no dotfiles, no local/ or local.meta, directories 0755 and files 0644, owned by 0:0, sorted,
# with a fixed mtime, so the same tree always gives the same bytes. Prints the package path.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
app=ringcentral_audit
src="$repo/splunk-app/$app"

stamp_tree=false
if [[ "${1:-}" == "--stamp" ]]; then
  stamp_tree=true
  shift
fi
out_dir="${1:-$repo/target/splunk-app}"

version="$(awk '
  /^\[/ { in_package = ($0 == "[package]") }
  in_package && /^version[[:space:]]*=/ { gsub(/^version[[:space:]]*=[[:space:]]*"|"[[:space:]]*$/, ""); print; exit }
' "$repo/Cargo.toml")"
if [[ ! "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$ ]]; then
  echo "package.sh: cannot read [package] version from Cargo.toml (got '$version')" >&2
  exit 1
fi

# Writes $version into app.conf ([launcher] and [id] "version") and app.manifest under $1.
stamp() {
  local dir="$1" tmp
  tmp="$(mktemp)"
  awk -v v="$version" '
    /^\[/ { section = $0 }
    (section == "[launcher]" || section == "[id]") && /^version[[:space:]]*=/ { print "version = " v; next }
    { print }
  ' "$dir/default/app.conf" >"$tmp"
  cat "$tmp" >"$dir/default/app.conf"
  # The manifest has one "version" key (info.id.version); schemaVersion is a different key.
  sed -E 's/^([[:space:]]*"version"[[:space:]]*:[[:space:]]*")[^"]*(")/\1'"$version"'\2/' \
    "$dir/app.manifest" >"$tmp"
  cat "$tmp" >"$dir/app.manifest"
  rm -f "$tmp"
  local n_conf n_manifest
  n_conf="$(grep -c "^version = $version\$" "$dir/default/app.conf" || true)"
  n_manifest="$(grep -c "\"version\": \"$version\"" "$dir/app.manifest" || true)"
  if [[ "$n_conf" != 2 || "$n_manifest" != 1 ]]; then
    echo "package.sh: stamping $version into $dir failed (app.conf: $n_conf of 2, app.manifest: $n_manifest of 1)" >&2
    exit 1
  fi
}

if $stamp_tree; then
  stamp "$src"
  echo "stamped $version into $src/default/app.conf and $src/app.manifest" >&2
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/$app"
# Copy everything except dotfiles, local settings and editor/Python leftovers.
(cd "$src" && find . \
  \( -name '.*' -a ! -name '.' \) -prune -o \
  \( -path ./local -o -name local.meta -o -name '__pycache__' -o -name '*.pyc' -o -name '*~' \) -prune -o \
  -type f -print0) |
  (cd "$src" && xargs -0 -r cp --parents -t "$stage/$app")
stamp "$stage/$app"
find "$stage/$app" -type d -exec chmod 0755 {} +
find "$stage/$app" -type f -exec chmod 0644 {} +

mtime="${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}"
mkdir -p "$out_dir"
pkg="$out_dir/$app-$version.tgz"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
  -C "$stage" -cf - "$app" | gzip -9n >"$pkg"
echo "$pkg"
