#!/bin/sh
# Makes the virtual environment the Cloudforet test plugins run in, beside this script
# (.venv), once: Python 3.10 with spaceone-core and spaceone-api from PyPI. spaceone-core pins
# protobuf 3, whose compiled implementation exists only up to Python 3.10; the pure-Python one
# takes about 20 s to serialise one nested message.
#
# Python 3.10 is $GLEANER_TEST_PYTHON310, else python3.10 on the PATH (not pyenv's shim), else
# the newest 3.10 pyenv has. Safe to run from several processes at once.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv"
requirements="spaceone-core==2.0.144 spaceone-api==2.0.435"
ready() { [ -f "$venv/.gleaner-requirements" ] && [ "$(cat "$venv/.gleaner-requirements")" = "$requirements" ]; }
ready && exit 0

lock="$here/.venv.lock"
waited=0
until mkdir "$lock" 2>/dev/null; do
  ready && exit 0
  # A lock older than any honest install was left by a run that died.
  if [ "$waited" -ge 600 ] || [ -n "$(find "$lock" -maxdepth 0 -mmin +10 2>/dev/null)" ]; then
    rm -rf "$lock"
    continue
  fi
  sleep 1
  waited=$((waited + 1))
done
trap 'rm -rf "$lock"' EXIT
ready && exit 0

python="${GLEANER_TEST_PYTHON310:-}"
if [ -z "$python" ]; then
  for dir in $(echo "$PATH" | tr ':' ' '); do
    case "$dir" in */shims) continue ;; esac
    if [ -x "$dir/python3.10" ]; then python="$dir/python3.10"; break; fi
  done
fi
if [ -z "$python" ]; then
  python=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10.*/bin/python3.10 2>/dev/null | sort -V | tail -n 1)
fi
if [ -z "$python" ]; then
  echo "Python 3.10 was not found: set GLEANER_TEST_PYTHON310, put python3.10 on the PATH, or install it with pyenv" >&2
  exit 1
fi
echo "making the Cloudforet test plugins' environment with $python (about a minute, once) ..." >&2
rm -rf "$venv"
"$python" -m venv "$venv"
# shellcheck disable=SC2086
"$venv/bin/pip" install --quiet --disable-pip-version-check $requirements
echo "$requirements" > "$venv/.gleaner-requirements"
