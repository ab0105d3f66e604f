"""Shared fixtures: run folders, a throw-away PostgreSQL server, storage specs, the local SLURM cluster.

Nothing here is autouse: test files that do not ask for these fixtures are not affected.

* ``postgres_url`` starts a real PostgreSQL (``initdb`` + ``pg_ctl``, as the ``postgres`` user when run
  as root) on a free port of 127.0.0.1 for the whole session and skips when the server binaries are
  missing (``bash .ci/slurm_up.sh`` installs them); ``postgres_fresh_url`` adds an empty database per test.
* ``storage_spec`` runs a test over 'sqlite', 'journal' and PostgreSQL, each storage private to the test.
* ``slurm_cluster`` skips unless ``sinfo`` and ``sacct`` answer (``bash .ci/slurm_up.sh`` starts the
  one-node cluster).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

PG_DB = "arborseg_test"


@pytest.fixture
def tmp_run_dir(tmp_path: Path) -> Path:
    """A fresh campaign run folder (local filesystem: also readable by the local SLURM node)."""
    d = tmp_path / "run"
    d.mkdir()
    return d


# ------------------------------------------------------------------------------------ PostgreSQL
def _pg_bindir() -> Path | None:
    for name in ("initdb", "pg_ctl"):
        exe = shutil.which(name)
        if exe and Path(os.path.realpath(exe)).with_name("pg_ctl").exists():
            return Path(os.path.realpath(exe)).parent
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return Path(cands[-1]).parent if cands else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """SQLAlchemy URL of a fresh database on a private PostgreSQL server (stopped at session end)."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found under PATH or "
                    "/usr/lib/postgresql/*/bin: install them with `bash .ci/slurm_up.sh` (apt postgresql)")
    try:
        import psycopg2
    except ImportError:
        pytest.skip("psycopg2 not installed (pip install psycopg2-binary)")
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL server")
        runuser = shutil.which("runuser") or shutil.which("setpriv")
        if runuser is None:
            pytest.skip("running as root and neither runuser nor setpriv is available to drop to 'postgres'")
        prefix = [runuser, "-u", "postgres", "--"] if runuser.endswith("runuser") else \
            [runuser, "--reuid=postgres", "--regid=postgres", "--init-groups"]
    base = Path(tempfile.mkdtemp(prefix="arborseg-pg-"))
    data = base / "data"
    if prefix:
        shutil.chown(base, "postgres", "postgres")
    os.chmod(base, 0o700)

    def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120, check=check)

    started = False
    try:
        try:
            run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync",
                "-E", "UTF8", "--locale=C")
        except subprocess.CalledProcessError as e:
            pytest.skip(f"initdb failed: {e.stderr.strip()[-500:]}")
        port = _free_port()
        opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {base} -c fsync=off -c max_connections=200"
        res = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "60",
                  "-o", opts, "start", check=False)
        if res.returncode != 0:
            log = (base / "server.log").read_text()[-1000:] if (base / "server.log").exists() else ""
            pytest.fail(f"pg_ctl start failed: {res.stderr.strip()} {log}")
        started = True
        con = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute(f"CREATE DATABASE {PG_DB}")
        con.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{PG_DB}"
    finally:
        if started:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_fresh_url(postgres_url):
    """URL of a new, empty database on the session's PostgreSQL server (dropped after the test).

    Like the per-test SQLite/journal files: a test that lists every study of its storage sees only its own.
    """
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    name = f"t_{uuid.uuid4().hex[:16]}"
    con = psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname="postgres")
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        yield url.set(database=name).render_as_string(hide_password=False)
        with con.cursor() as cur:  # FORCE (PostgreSQL >= 13): pools of the test may still be open
            try:
                cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            except psycopg2.Error:
                pass
    finally:
        con.close()


@pytest.fixture(params=["sqlite", "journal", "postgres"])
def storage_spec(request) -> str:
    """A storage spec for ``make_storage``: 'sqlite', 'journal' or the URL of a fresh PostgreSQL database
    (skips without PostgreSQL). Every test gets a storage of its own."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_fresh_url")
    return request.param


@pytest.fixture
def study_name() -> str:
    """A unique study name (the PostgreSQL database is shared by the whole session)."""
    return f"test-{uuid.uuid4().hex[:12]}"


# ------------------------------------------------------------------------------------------ SLURM
def _answers(*cmd: str) -> tuple[bool, str]:
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return False, str(e)
    return res.returncode == 0, (res.stderr or res.stdout).strip()


@pytest.fixture(scope="session")
def slurm_cluster() -> dict:
    """The running SLURM cluster (sinfo + sacct must answer), else skip."""
    if shutil.which("sinfo") is None:
        pytest.skip("SLURM not running: start it with bash .ci/slurm_up.sh (sinfo not found)")
    ok, msg = _answers("sinfo", "-h", "-o", "%P %a %D %t")
    if not ok:
        pytest.skip(f"SLURM not running: start it with bash .ci/slurm_up.sh ({msg[:200]})")
    ok_acct, msg_acct = _answers("sacct", "-n", "-X", "-o", "JobID", "-S", "now-1minutes")
    if not ok_acct:
        pytest.skip(f"SLURM accounting (sacct) not working: start the cluster with bash .ci/slurm_up.sh ({msg_acct[:200]})")
    parts = subprocess.run(["sinfo", "-h", "-o", "%P|%c|%t"], capture_output=True, text=True).stdout.split()
    partitions = {p.split("|")[0].rstrip("*"): int(p.split("|")[1]) for p in parts if p.count("|") == 2}
    t0 = time.time()
    while time.time() - t0 < 30:  # wait for the node to take jobs (e.g. right after slurm_up)
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.split()
        if any(s.rstrip("*") in ("idle", "mix", "alloc", "comp") for s in states):
            break
        time.sleep(1)
    return {"partitions": partitions, "cpus": max(partitions.values(), default=1)}
