#!/usr/bin/env bash
# Runs a pytest suite: scripts/pytest.sh PYTHON TESTS_DIR [pytest args...]
# pytest exits with 5 when it collects no test: that is a broken suite here, so it fails, saying so.
set -uo pipefail
python="$1"
shift
"$python" -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [[ $rc == 5 ]]; then
  echo "pytest: no tests were collected from $*" >&2
  exit 1
fi
exit $rc
