#!/usr/bin/env bash
# One-time (and idempotent) set-up behind `make serve` and `make test`.
#
#   scripts/setup.sh [--dry-run] [STEP...]     STEP: apt, venv, model (default: all three)
#
# apt    installs the Debian packages below that are missing (root only; otherwise it
#        prints the one command to run and fails).
# venv   creates .venv and installs the project with its test extra. Skipped when the
#        stamp in .venv matches the hash of pyproject.toml + this script.
# model  joins and verifies the embedded Whisper base under $DATA_DIR so the first
#        `make serve` doesn't wait for it (a no-op when already verified).
#
# Environment: PYTHON (default python3, >= 3.11), DATA_DIR (default ./data),
# VENV (default .venv).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian packages, one a line: "package" or "package:command". When the command is
# on PATH the package counts as present (ffmpeg may come from elsewhere); without a
# command, dpkg decides.
APT_PACKAGES=(
    "ffmpeg:ffmpeg"          # probe, audio extraction, export
    "espeak-ng:espeak-ng"    # tests synthesise speech with known text
    "fonts-dejavu-core"      # libass needs a font to burn subtitles in
    "systemd:systemd-analyze"  # tests/test_systemd_unit.py verifies deploy/altyazi.service
    "chromium"               # tests/test_web.py drives the web page in it (Playwright, /usr/bin/chromium)
    "postgresql"             # the cluster tests start a real server (tests/cluster_servers.py); not for the single box
)

PYTHON="${PYTHON:-python3}"
DATA_DIR="${DATA_DIR:-./data}"
VENV="${VENV:-.venv}"
STAMP="$VENV/.altyazi-setup"
DRY_RUN=0

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
run() {
    if [[ $DRY_RUN == 1 ]]; then
        printf 'setup: would run: %s\n' "$*" >&2
    else
        "$@"
    fi
}

package_present() {
    local pkg="${1%%:*}" cmd=""
    [[ $1 == *:* ]] && cmd="${1#*:}"
    if [[ -n $cmd ]] && command -v "$cmd" >/dev/null 2>&1; then
        return 0
    fi
    [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" == "install ok installed" ]]
}

step_apt() {
    local entry missing=()
    for entry in "${APT_PACKAGES[@]}"; do
        package_present "$entry" || missing+=("${entry%%:*}")
    done
    [[ ${#missing[@]} == 0 ]] && return 0

    if [[ "$(id -u)" != 0 ]]; then
        die "missing Debian packages; install them with: sudo apt-get install -y --no-install-recommends ${missing[*]}"
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "missing packages ${missing[*]} and no apt-get here; install them with your package manager"
    say "installing Debian packages: ${missing[*]}"
    # One update per run: a fresh machine has empty or stale lists.
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

setup_hash() {
    cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1
}

step_venv() {
    local want
    want="$(setup_hash)"
    if [[ -f $STAMP && "$(cat "$STAMP")" == "$want" ]] && "$VENV/bin/python" -c '' 2>/dev/null; then
        return 0
    fi

    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python 3.11 or newer (apt-get install python3 python3-venv)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is $("$PYTHON" -c 'import platform; print(platform.python_version())'); altyazi needs Python 3.11 or newer (set PYTHON=...)"

    # A .venv copied from another machine (or whose Python went away) can't be mended.
    if [[ -d $VENV ]] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
        say "$VENV is broken; recreating it"
        run rm -rf "$VENV"
    fi
    if [[ ! -x $VENV/bin/python ]]; then
        say "creating $VENV with $PYTHON"
        run "$PYTHON" -m venv "$VENV" \
            || die "could not create $VENV; on Debian install python3-venv"
    fi
    say "installing altyazi and its test tools into $VENV"
    run "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -e '.[test,bench]' \
        || die "pip could not install the project (its error is above)"
    [[ $DRY_RUN == 1 ]] || printf '%s\n' "$want" >"$STAMP"
}

step_model() {
    [[ $DRY_RUN == 1 && ! -x $VENV/bin/python ]] && { say "would prepare model base in $DATA_DIR"; return 0; }
    local path
    # Fast when already verified: the resolver compares sizes against its marker.
    path="$(run "$VENV/bin/python" -m app.model_files prepare base --data-dir "$DATA_DIR")" \
        || die "the default model could not be prepared (see the line above)"
    [[ -n $path ]] && say "model base ready in $path"
    return 0
}

steps=()
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        apt | venv | model) steps+=("$arg") ;;
        -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg'; use --dry-run and/or the steps apt, venv, model" ;;
    esac
done
[[ ${#steps[@]} == 0 ]] && steps=(apt venv model)

for step in "${steps[@]}"; do
    "step_$step"
done
