#!/usr/bin/env bash
# Dependency audit: pip-audit over the installed environment (or a requirements file), report to a file.
#
#   scripts/dep_audit.sh                      audit the active/.venv environment
#   scripts/dep_audit.sh requirements.txt     audit a requirements export instead
#   DYREF_AUDIT_OUT=runs/audit scripts/dep_audit.sh
#
# Needs the network (pip-audit queries the PyPI / OSV vulnerability database). Known, accepted
# findings are listed in SECURITY.md and passed here with --ignore-vuln so that the exit status
# only fails on new ones. Writes <out>/pip-audit.json and <out>/pip-audit.txt; exit 1 on findings.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${DYREF_AUDIT_OUT:-runs/audit}
mkdir -p "$OUT"
if ! "$PY" -m pip_audit --version >/dev/null 2>&1; then
  echo "pip-audit is not installed: $PY -m pip install 'pip-audit>=2.7' (or pip install -e '.[audit]')" >&2
  exit 2
fi
# accepted findings (see SECURITY.md "Known issues"): one --ignore-vuln ID per line in this file
IGNORES=()
if [ -f scripts/dep_audit.ignore ]; then
  while read -r id _; do [[ -n "$id" && "$id" != \#* ]] && IGNORES+=(--ignore-vuln "$id"); done < scripts/dep_audit.ignore
fi
if [ $# -ge 1 ]; then
  SRC=(-r "$1")
else
  SRC=()  # the environment pip-audit runs in
fi
# the project itself (editable, not on PyPI) cannot be looked up: skip it
set +e
"$PY" -m pip_audit "${SRC[@]}" --skip-editable --progress-spinner off --desc on -f json -o "$OUT/pip-audit.json" "${IGNORES[@]}"
rc=$?
"$PY" -m pip_audit "${SRC[@]}" --skip-editable --progress-spinner off --desc off "${IGNORES[@]}" > "$OUT/pip-audit.txt" 2>&1
# pip-audit reports "No known vulnerabilities" even when it could look nothing up (offline, or a
# mirror without the JSON API): count what was actually audited and fail loudly when it was nothing
"$PY" - "$OUT/pip-audit.json" <<'PYEOF'
import json, sys
deps = json.load(open(sys.argv[1])).get("dependencies", [])
skipped = [d for d in deps if d.get("skip_reason")]
audited = len(deps) - len(skipped)
vulns = sum(len(d.get("vulns", [])) for d in deps)
print(f"audited {audited} of {len(deps)} distributions, {vulns} known vulnerabilities")
if audited == 0 or len(skipped) > len(deps) // 2:
    print("could not reach the vulnerability database for most packages (no network?): this is NOT a clean audit",
          file=sys.stderr)
    sys.exit(3)
PYEOF
st=$?
set -e
echo "dependency audit: pip-audit exit $rc; report in $OUT/pip-audit.txt and $OUT/pip-audit.json"
[ $st -ne 0 ] && exit $st
exit $rc
