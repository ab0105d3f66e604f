#!/usr/bin/env bash
# .ci/slurm_up.sh - bring up what the arborseg infrastructure tests need (run as root, from anywhere).
#
#   1. PostgreSQL server binaries (initdb, pg_ctl): installed with apt-get if `initdb` is not found on PATH
#      nor under /usr/lib/postgresql/*/bin. The tests start their own throw-away server (tests/conftest.py).
#   2. Headless Chromium (Debian package `chromium`) for the HTML report test.
#   3. A real one-node SLURM cluster (with sacct) via ../shared/tools/slurm_local.sh start (relative to the
#      repository root). If that script is missing, this step is skipped with a message (slurm tests skip).
#
# Idempotent: a second run finds everything in place and only reports it. The cluster is left running;
# stop it with `bash ../shared/tools/slurm_local.sh stop`.
# Knobs: ARBORSEG_CI_SKIP_POSTGRES=1, ARBORSEG_CI_SKIP_SLURM=1; SLURM_LOCAL_* are passed on to slurm_local.sh.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SLURM_LOCAL=$REPO/../shared/tools/slurm_local.sh
say() { printf 'slurm_up: %s\n' "$*" >&2; }
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

find_initdb() {
    command -v initdb 2>/dev/null && return 0
    local f
    for f in /usr/lib/postgresql/*/bin/initdb; do [ -x "$f" ] && { echo "$f"; return 0; }; done
    return 1
}

# ---------------------------------------------------------------- PostgreSQL binaries
if [ "${ARBORSEG_CI_SKIP_POSTGRES:-0}" = 1 ]; then
    say "PostgreSQL: skipped (ARBORSEG_CI_SKIP_POSTGRES=1)"
elif f=$(find_initdb); then
    say "PostgreSQL: already installed ($f, $("$f" --version 2>/dev/null || echo '?'))"
else
    [ "$(id -u)" = 0 ] || { say "PostgreSQL: initdb not found and not root: cannot apt-get install; postgres tests will skip"; f=""; }
    if [ "$(id -u)" = 0 ]; then
        say "PostgreSQL: initdb not found: apt-get update && apt-get install postgresql"
        export DEBIAN_FRONTEND=noninteractive
        added_policy=""
        # keep the package scripts from starting a system-wide server (the tests start their own)
        if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; added_policy=1; fi
        rc=0
        { apt-get update -q && apt-get install -y -q --no-install-recommends postgresql; } >/tmp/slurm_up_apt.log 2>&1 || rc=$?
        [ -n "$added_policy" ] && rm -f /usr/sbin/policy-rc.d
        if [ $rc != 0 ]; then tail -n 20 /tmp/slurm_up_apt.log >&2; say "PostgreSQL: apt-get failed (rc $rc); postgres tests will skip"
        elif f=$(find_initdb); then say "PostgreSQL: installed ($f)"
        else say "PostgreSQL: installed but initdb still not found; postgres tests will skip"; fi
    fi
fi

# ---------------------------------------------------------------- headless Chromium (report rendering test)
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    say "Chromium: already installed"
elif [ "$(id -u)" = 0 ]; then
    say "Chromium: apt-get install chromium (the HTML report test renders the report in it)"
    { apt-get install -y -q --no-install-recommends chromium || { apt-get update -q && apt-get install -y -q --no-install-recommends chromium; }; } \
        >/tmp/slurm_up_chromium.log 2>&1 || { tail -n 5 /tmp/slurm_up_chromium.log >&2; say "Chromium: install failed; browser tests will skip"; }
else
    say "Chromium: not installed and not root; browser tests will skip"
fi

# ---------------------------------------------------------------- SLURM
if [ "${ARBORSEG_CI_SKIP_SLURM:-0}" = 1 ]; then
    say "SLURM: skipped (ARBORSEG_CI_SKIP_SLURM=1); slurm tests will skip"
elif [ ! -f "$SLURM_LOCAL" ]; then
    say "SLURM: $SLURM_LOCAL not found: not starting a cluster; slurm tests will skip"
else
    say "SLURM: bash $SLURM_LOCAL start (idempotent: daemons already running are kept)"
    bash "$SLURM_LOCAL" start
    sinfo >/dev/null && say "SLURM: sinfo works"
    sacct -n -X -o JobID -S now-5minutes >/dev/null && say "SLURM: sacct works"
    say "SLURM: cluster left running; stop it with: bash $SLURM_LOCAL stop"
fi
say "done"
