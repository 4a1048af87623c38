#!/usr/bin/env bash
# `ansible-test sanity` on the checkout, as a user who cloned it as a collection would run it,
# with the interpreter of the pinned virtualenv and no network but PyPI (and Debian's archive,
# once, for shellcheck). Every finding fails; tests/sanity/ignore-2.19.txt gives each exception
# with its reason.
#
#   scripts/sanity.sh                      all sanity tests
#   scripts/sanity.sh --test pylint -v     extra arguments go to ansible-test sanity
#
# How it works:
# * ansible-test must run from .../ansible_collections/<namespace>/<name>. The git-tracked and
#   untracked-but-not-ignored files of the checkout (what ansible-test itself would look at in a
#   clone) are copied into $(mktemp -d)/ansible_collections/headroom/pg and tested there; the copy
#   is removed at the end. collections/ansible_collections/headroom/pg, the link back to the
#   checkout, cannot serve: ansible-test reads the working directory with getcwd(), which
#   resolves the link to the checkout itself.
# * --local --python X.Y: ansible-test runs in the current environment (.venv: `make lint` puts
#   it first on PATH) and tests only that virtualenv's Python version X.Y (3.11). Each test
#   with requirements of its own
#   (pylint, pep8, import, ...) gets a virtualenv under ~/.ansible/test/venv/, created without
#   pip; ansible-test then bootstraps pip in it with a get-pip.py it downloads from
#   the Ansible project's CI file server and caches as ~/.ansible/test/cache/get_pip_<version>.py. That
#   host is not reachable from here, so when the cache has no script this writes one there: it
#   runs the pip wheel bundled with the interpreter's own ensurepip to install the pip version
#   ansible-test asks for. The pip release and the tests' pinned requirements (pylint, astroid,
#   pycodestyle, ...) come from PyPI the first time, and from the cached virtualenvs afterwards.
#   A real get-pip.py already in the cache is used as it is.
# * shellcheck, which ansible-test needs for its shellcheck test and otherwise skips, comes from
#   Debian (apt-get, as root) when it is missing.
# * No Docker, no delegation: nothing else is downloaded.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "headroom sanity: $*" >&2; exit 1; }

command -v ansible-test >/dev/null || die "ansible-test is not on PATH: run \`make lint\` (or put .venv/bin first on PATH)."
# The Python of the virtualenv ansible-test comes from (3.11 for the pinned .venv).
python=$(dirname "$(command -v ansible-test)")/python3
python_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1 || die "$repo is not a git checkout: the files to test are the ones git lists."

# The pip bootstrap script ansible-test looks for (see above).
pip_version=$("$python" -c '
import types
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(types.SimpleNamespace(version="'"$python_version"'"))["pip"])')
get_pip=~/.ansible/test/cache/get_pip_${pip_version//./_}.py
if [ ! -s "$get_pip" ]; then
  mkdir -p "$(dirname "$get_pip")"
  cat >"$get_pip.tmp" <<'EOF'
"""Stand-in for ansible-test's get-pip.py, written by headroom's scripts/sanity.sh.

ansible-test runs this as `python get_pip_X_Y.py [pip options] pip==X.Y --no-setuptools --no-wheel`
in a virtualenv created without pip. Instead of the copy of pip get-pip.py carries, this runs
the pip wheel bundled with the interpreter's ensurepip: `pip install --upgrade --force-reinstall
pip==X.Y`, from the configured index (PyPI).
"""
import glob
import os
import sys

import ensurepip

wheel_dirs = [os.path.join(os.path.dirname(ensurepip.__file__), '_bundled')]
if getattr(ensurepip, '_WHEEL_PKG_DIR', None):  # Debian and Fedora keep the wheels elsewhere
    wheel_dirs.insert(0, ensurepip._WHEEL_PKG_DIR)
wheels = sorted(w for d in wheel_dirs for w in glob.glob(os.path.join(d, 'pip-*.whl')))
if not wheels:
    sys.exit('pip bootstrap: %s has no bundled pip wheel in %s' % (sys.executable, ', '.join(wheel_dirs)))
sys.path.insert(0, wheels[-1])

from pip._internal.cli.main import main  # noqa: E402

args = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]
sys.exit(main(['install', '--upgrade', '--force-reinstall'] + args))
EOF
  mv "$get_pip.tmp" "$get_pip"
  echo "sanity: wrote the pip bootstrap script ansible-test expects: $get_pip (uses ensurepip's pip wheel)"
fi

# ansible-test skips its shellcheck test, with only a warning, where the program is missing:
# install it as bootstrap.sh installs Docker (as root, from Debian), or say that it is skipped.
if ! command -v shellcheck >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "sanity: installing shellcheck from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
  else
    echo "sanity: shellcheck is missing and this user cannot install it: the shellcheck test is skipped."
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tree=$work/ansible_collections/headroom/pg
mkdir -p "$tree"
# Deleted-but-tracked files are skipped; the link collections/ansible_collections/headroom/pg is
# copied as a link (ansible-test does not follow directory links).
(cd "$repo" && git ls-files -z --cached --others --exclude-standard) |
  while IFS= read -r -d '' f; do
    if [ -e "$repo/$f" ] || [ -L "$repo/$f" ]; then printf '%s\0' "$f"; fi
  done |
  (cd "$repo" && xargs -0 cp -a --parents -t "$tree")

cd "$tree"
ansible-test sanity --local --python "$python_version" --color no "$@"
