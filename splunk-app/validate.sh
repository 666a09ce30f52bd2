#!/usr/bin/env bash
# Packages the Splunk app and validates it the way Splunk Cloud vetting does:
#   splunk-appinspect inspect <tgz> --mode precert --included-tags cloud   (no failures, no warnings)
#   slim validate splunk-app/ringcentral_audit                              (no warnings, no errors)
# Both tools run from the Python venv .venv-splunk at the repository root, created on first use
# (python3 -m venv) and reused afterwards. The tool versions are pinned so CI results do not change
# under us; bump them here on purpose (and fix what the new checks find).
# Used by .ci/run; run it by hand after changing anything in splunk-app/.
set -euo pipefail

APPINSPECT_VERSION=4.3.1
SLIM_VERSION=1.2.8

repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="$repo/.venv-splunk"
cd "$repo"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "creating $venv"
  python3 -m venv "$venv"
fi
# A no-op (no network) when the pinned versions are already installed.
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  "splunk-appinspect==$APPINSPECT_VERSION" "splunk-packaging-toolkit==$SLIM_VERSION"

pkg="$(splunk-app/package.sh)"
echo "package: ${pkg#"$repo/"}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "-- splunk-appinspect $APPINSPECT_VERSION (precert, cloud)"
set +e
"$venv/bin/splunk-appinspect" inspect "$pkg" --mode precert --included-tags cloud \
  --skip-trusted-libraries-update --ci --max-messages all \
  --data-format json --output-file "$work/appinspect.json" >"$work/appinspect.log" 2>&1
appinspect_rc=$?
# --ci exits 101 on failures, 104 on future failures, 103 on warnings; the report is checked too,
# so a change in exit codes cannot hide a warning.
"$venv/bin/python" - "$work/appinspect.json" "$appinspect_rc" <<'PY'
import json
import sys

path, rc = sys.argv[1], int(sys.argv[2])
try:
    with open(path) as f:
        report = json.load(f)
except (OSError, ValueError) as e:
    print(f"AppInspect wrote no readable report ({e}); exit code {rc}")
    sys.exit(2)
summary = report["summary"]
print("   " + ", ".join(f"{k}={v}" for k, v in summary.items()))
bad = {"failure", "error", "warning", "future_failure"}
for app in report["reports"]:
    for group in app["groups"]:
        for check in group["checks"]:
            if check["result"] in bad:
                print(f"   {check['result'].upper()}: {check['name']}")
                for m in check["messages"]:
                    print(f"      {m['message']}")
if rc != 0 or any(summary.get(k, 0) for k in bad):
    print(f"AppInspect is not clean (exit code {rc})")
    sys.exit(1)
PY
verdict=$?
set -e
if [[ $verdict -ne 0 ]]; then
  [[ $verdict -eq 2 ]] && tail -n 40 "$work/appinspect.log"
  exit 1
fi

echo "-- slim validate $SLIM_VERSION"
# slim exits 0 even when it reports undefined settings, so its output is checked as well.
set +e
"$venv/bin/slim" validate splunk-app/ringcentral_audit >"$work/slim.log" 2>&1
slim_rc=$?
set -e
sed 's/^/   /' "$work/slim.log"
if [[ $slim_rc -ne 0 ]] || grep -Eq '\[(WARNING|ERROR|CRITICAL)\]' "$work/slim.log"; then
  echo "slim validate is not clean (exit code $slim_rc)"
  exit 1
fi
echo "Splunk app valid: ${pkg#"$repo/"}"
