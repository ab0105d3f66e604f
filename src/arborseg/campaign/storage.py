"""Optuna storages for campaigns: one spec string in the campaign YAML, one URL for the jobs.

A campaign names its storage with a short *spec*:

==========================================  ===================================================
spec                                        storage
==========================================  ===================================================
``None`` / ``"sqlite"`` (default)           ``sqlite:///<run_dir>/optuna.sqlite3`` (WAL journal,
                                            60 s busy timeout: several local worker processes)
``"journal"``                               ``JournalStorage(JournalFileBackend(<run_dir>/optuna.journal))``:
                                            an append-only file; suits a shared filesystem (SLURM)
``"journal:/abs/file.log"``                 a journal file elsewhere (relative paths: below ``run_dir``)
``"postgresql+psycopg2://u:p@host/db"``,    any SQLAlchemy URL (``RDBStorage``); PostgreSQL serves
``"sqlite:///file.db"``, ...                many workers. Relative SQLite paths are below ``run_dir``
==========================================  ===================================================

Storage objects are not picklable in general, so a job never receives one: the driver passes
:func:`storage_url` (a plain string) and the job calls :func:`open_storage` on it. Journal storages
get a scheme of their own, ``journal:///abs/path/file.log``.

SQLite in WAL mode needs a local filesystem (not NFS/Lustre): on a cluster use ``journal`` or
PostgreSQL.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arborseg.errors import CampaignError
from arborseg.log import get_logger

if TYPE_CHECKING:  # optuna and sqlalchemy are imported lazily: `import arborseg.campaign` stays light
    import optuna
    from optuna.storages import BaseStorage

log = get_logger(__name__)

SQLITE_FILE = "optuna.sqlite3"
JOURNAL_FILE = "optuna.journal"
JOURNAL_SCHEME = "journal://"
SQLITE_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 10

_HELP = (
    "storage must be 'sqlite' (default), 'journal', 'journal:/path/to/file.log' or an SQLAlchemy URL "
    "such as 'postgresql+psycopg2://user:password@host:5432/dbname' or 'sqlite:///path/to/file.db'"
)


def storage_url(spec: str | None, run_dir: Path | str) -> str:
    """Return a self-contained string that :func:`open_storage` turns back into the same storage.

    Paths are made absolute (relative ones are taken below ``run_dir``), SQLite URLs carry a busy
    timeout, journal files use the ``journal:///abs/path`` scheme. No I/O happens here.
    """
    run_dir = Path(run_dir).expanduser().absolute()
    if spec is None or str(spec).strip().lower() in ("", "sqlite"):
        return f"sqlite:///{run_dir / SQLITE_FILE}?timeout={SQLITE_TIMEOUT_S}"
    spec = str(spec).strip()
    if spec.lower() == "journal":
        return f"{JOURNAL_SCHEME}{run_dir / JOURNAL_FILE}"
    if spec.lower().startswith("journal:"):
        raw = spec[len("journal:"):]
        if raw.startswith("//"):  # journal:///abs/path (the form storage_url returns)
            raw = raw[2:]
        if not raw:
            raise CampaignError(f"storage {spec!r}: no journal file path given ({_HELP})")
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = run_dir / path
        return f"{JOURNAL_SCHEME}{path}"
    if "://" not in spec:
        raise CampaignError(f"storage {spec!r} is not understood: {_HELP}")
    url = _parse_url(spec)
    if url.get_backend_name() == "sqlite":
        db = url.database or ""
        if db in ("", ":memory:") or db.startswith("file::memory:"):
            raise CampaignError(
                f"storage {spec!r}: an in-memory SQLite database cannot be shared with job processes; "
                "use 'sqlite' (a file in the run folder) or 'sqlite:///path/to/file.db'"
            )
        if not Path(db).is_absolute():
            url = url.set(database=str(run_dir / db))
        if "timeout" not in url.query:
            url = url.update_query_dict({"timeout": str(SQLITE_TIMEOUT_S)})
    return url.render_as_string(hide_password=False)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    if url.startswith(JOURNAL_SCHEME) or "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        head, _, rest = url.partition("://")
        return f"{head}://***@{rest.rpartition('@')[2]}" if "@" in rest else url


def make_storage(spec: str | None, run_dir: Path | str) -> BaseStorage:
    """Open (creating if needed) the Optuna storage named by ``spec`` for a campaign in ``run_dir``.

    Raises :class:`CampaignError` with one clear line for a malformed spec/URL, a missing database
    driver or an unreachable database (the URL is named without its password).
    """
    run_dir = Path(run_dir).expanduser().absolute()
    url = storage_url(spec, run_dir)
    if spec is None or str(spec).strip().lower() in ("", "sqlite"):
        run_dir.mkdir(parents=True, exist_ok=True)
    return open_storage(url)


_cache: dict[tuple[int, str], Any] = {}
_cache_lock = threading.Lock()


def open_storage(url: str, *, cached: bool = False) -> BaseStorage:
    """Turn a :func:`storage_url` string back into an Optuna storage (used inside jobs).

    ``cached=True`` returns the same storage object for the same URL within one process (a job that
    attaches several times, or the in-process debug executor, then keeps one connection pool).
    """
    if cached:
        key = (os.getpid(), url)
        with _cache_lock:
            if key not in _cache:
                _cache[key] = open_storage(url)
            return _cache[key]
    if url.startswith(JOURNAL_SCHEME):
        return _open_journal(Path(url[len(JOURNAL_SCHEME):]))
    if "://" not in url:
        raise CampaignError(
            f"storage URL {url!r} is not understood: pass storage_url(spec, run_dir), i.e. "
            f"'{JOURNAL_SCHEME}/abs/path.log' or an SQLAlchemy URL"
        )
    return _open_rdb(url)


def _parse_url(spec: str):
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(spec)
    except (ArgumentError, ValueError) as e:
        raise CampaignError(f"storage URL {redact(spec)!r} is malformed ({e}); {_HELP}") from None
    if not url.drivername:
        raise CampaignError(f"storage URL {redact(spec)!r} has no database scheme; {_HELP}")
    return url


def _open_journal(path: Path) -> BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if not path.is_absolute():
        raise CampaignError(f"journal storage path {str(path)!r} must be absolute")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(path))
    except OSError as e:
        raise CampaignError(
            f"journal storage {path}: cannot create or open the file ({e.strerror or e}); "
            "check that the folder exists and is writable from the driver and every job"
        ) from None
    log.debug("journal storage %s", path)
    return JournalStorage(backend)


def _open_rdb(url_str: str) -> BaseStorage:
    import optuna
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

    url = _parse_url(url_str)
    shown = redact(url_str)
    backend = url.get_backend_name()
    engine_kwargs: dict[str, Any] = {}
    if backend == "sqlite":
        db = Path(url.database or "")
        if str(db) and not str(db).startswith(":"):
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
                _enable_wal(db, float(url.query.get("timeout", SQLITE_TIMEOUT_S)))
            except (OSError, sqlite3.Error) as e:
                raise CampaignError(
                    f"storage {shown}: cannot create or open the SQLite file {db} ({e}); check the path "
                    "and its permissions"
                ) from None
    else:
        engine_kwargs["pool_pre_ping"] = True
        if backend == "postgresql" and "connect_timeout" not in url.query:
            engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        storage = optuna.storages.RDBStorage(url_str, engine_kwargs=engine_kwargs)
    except NoSuchModuleError as e:
        raise CampaignError(
            f"storage {shown}: unknown database scheme {url.drivername!r} ({e}); write e.g. "
            "'postgresql+psycopg2://...', 'mysql+pymysql://...' or 'sqlite:///...'"
        ) from None
    except (ModuleNotFoundError, ImportError) as e:
        hint = " (pip install 'arborseg[postgres]' or psycopg2-binary)" if backend == "postgresql" else ""
        raise CampaignError(f"storage {shown}: database driver not available: {e}{hint}") from None
    except ArgumentError as e:
        raise CampaignError(f"storage URL {shown} is not valid ({e}); {_HELP}") from None
    except (DBAPIError, SQLAlchemyError) as e:
        reason = _first_line(getattr(e, "orig", None) or e)
        raise CampaignError(
            f"storage {shown} is unreachable: {reason}; check that the database server runs and accepts "
            "connections from this host, that the database exists (createdb) and the user/password are "
            "right, or use storage: sqlite / journal"
        ) from None
    if backend == "sqlite":
        from sqlalchemy import event

        event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # connections opened while optuna set up its tables get the pragma too
    log.debug("RDB storage %s", shown)
    return storage


def _rdb_backend(storage: Any) -> Any:
    """The :class:`optuna.storages.RDBStorage` behind ``storage`` (optuna wraps RDB storages in a
    ``_CachedStorage``), or None for other storages."""
    from optuna.storages import RDBStorage

    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


def create_trial(study: optuna.Study, template: optuna.trial.FrozenTrial) -> int:
    """A new RUNNING trial holding ``template``'s parameters (with their distributions) and user attributes; its id.

    Same result as ``study._storage.create_new_trial(study_id, template_trial=template)``, but on an RDB storage in
    one transaction of four statements: optuna's own runs three queries per parameter (a trial of the quickstart space
    has about ten), which was the largest part of the driver's CPU per trial on SQLite and PostgreSQL
    (benchmarks/bench_scale.py). Each parameter's distribution is checked against the study's earlier ones as optuna
    does (a ValueError when they differ); those are read once per parameter name and kept in the storage's cache."""
    import copy

    from optuna.distributions import check_distribution_compatibility, distribution_to_json, json_to_distribution
    from optuna.trial import TrialState

    storage: Any = study._storage  # a _CachedStorage around the RDB storage: its private cache is updated below
    study_id = study._study_id
    backend = _rdb_backend(storage)
    plain = (template.state == TrialState.RUNNING and template.values is None and not template.system_attrs
             and not template.intermediate_values)
    if backend is None or not plain:
        return storage.create_new_trial(study_id, template_trial=template)
    from optuna.storages._rdb import models  # private: verified with optuna 5.0 (tests/test_campaign_infra.py)
    from optuna.storages._rdb.storage import _create_scoped_session
    from sqlalchemy import insert

    cache = getattr(storage, "_studies", None)  # the _CachedStorage's per-study cache (param_distribution)
    if cache is not None:
        from optuna.storages._cached_storage import _StudyInfo

        with storage._lock:
            cache.setdefault(study_id, _StudyInfo())
    known = cache[study_id].param_distribution if cache is not None else {}
    with _create_scoped_session(backend.scoped_session) as session:
        models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)  # numbers are given in turn
        for name, dist in template.distributions.items():
            if name not in known:
                earlier = (session.query(models.TrialParamModel.distribution_json).join(models.TrialModel)
                           .filter(models.TrialModel.study_id == study_id)
                           .filter(models.TrialParamModel.param_name == name).first())
                if earlier is None:
                    continue
                known[name] = json_to_distribution(earlier[0])
            check_distribution_compatibility(known[name], dist)
        row = models.TrialModel(study_id=study_id, number=None, state=TrialState.RUNNING,
                                datetime_start=template.datetime_start)
        session.add(row)
        session.flush()
        trial_id = int(row.trial_id)
        if template.params:
            session.execute(insert(models.TrialParamModel), [
                {"trial_id": trial_id, "param_name": name,
                 "param_value": template.distributions[name].to_internal_repr(value),
                 "distribution_json": distribution_to_json(template.distributions[name])}
                for name, value in template.params.items()])
        if template.user_attrs:
            session.execute(insert(models.TrialUserAttributeModel), [
                {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                for key, value in template.user_attrs.items()])
        number = row.count_past_trials(session)
        row.number = number
    for name, dist in template.distributions.items():
        known.setdefault(name, dist)
    frozen = copy.deepcopy(template)
    frozen.number, frozen._trial_id = number, trial_id
    if cache is not None:
        with storage._lock:  # what _CachedStorage.create_new_trial does after its write
            storage._add_trials_to_cache(study_id, [frozen])
    return trial_id


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any], report: tuple[int, float] | None = None) -> None:
    """Set several user attributes of a running trial, and with ``report=(step, value)`` also its intermediate value
    at ``step`` (what ``trial.report(value, step)`` writes; a step reported before keeps its value, as there).

    In one transaction on an RDB storage, one write per key on others (a journal write is an append). Per-key
    transactions were most of the driver's CPU time per trial on SQLite (benchmarks/bench_scale.py)."""
    backend = _rdb_backend(trial.storage)
    if backend is None or len(attrs) + (report is not None) < 2:
        if report is not None:
            _report(trial, *report)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    from optuna.storages._rdb import models  # private: verified with optuna 5.0 (tests/test_campaign_infra.py)
    from optuna.storages._rdb.storage import _create_scoped_session

    table = models.TrialUserAttributeModel
    unreported = report if report is not None and report[0] not in trial._cached_frozen_trial.intermediate_values \
        else None  # a step reported before keeps its first value
    with _create_scoped_session(backend.scoped_session, True) as session:
        row = models.TrialModel.find_or_raise_by_id(trial._trial_id, session)
        backend.check_trial_is_updatable(trial._trial_id, row.state)  # type: ignore[arg-type]
        if unreported is not None:
            backend._set_trial_intermediate_value_without_commit(session, trial._trial_id, int(unreported[0]),
                                                                 float(unreported[1]))
        engine = backend.engine.name
        if engine in ("sqlite", "postgresql") and attrs:  # one upsert for all keys, as optuna does for one
            if engine == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:
                from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
            stmt = insert(table).values([{"trial_id": trial._trial_id, "key": k, "value_json": json.dumps(v)}
                                         for k, v in attrs.items()])
            session.execute(stmt.on_conflict_do_update(index_elements=[table.trial_id, table.key],
                                                       set_={"value_json": stmt.excluded.value_json}))
        else:
            for key, value in attrs.items():
                backend._set_trial_attr_without_commit(session, table, trial._trial_id, key, value)
    trial._cached_frozen_trial.user_attrs.update(attrs)  # what Trial.set_user_attr does after its write
    if unreported is not None:
        trial._cached_frozen_trial.intermediate_values[int(unreported[0])] = float(unreported[1])  # as Trial.report


def _report(trial: optuna.Trial, step: int, value: float) -> None:
    """``trial.report(value, step)`` without optuna's warning for a step reported before (a rung run again keeps
    its first value)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial.report(value, step)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Every SQLite connection: WAL's usual ``synchronous=NORMAL`` (a commit no longer waits for fsync; a killed
    process loses nothing committed, a power cut may lose the last commits, never the file's integrity)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _enable_wal(db: Path, timeout: float) -> None:
    """Switch a SQLite file to WAL (persistent, once per file) so readers never block the writer."""
    con = sqlite3.connect(str(db), timeout=timeout)
    try:
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("SQLite storage %s: journal_mode is %s, not WAL (filesystem without shared memory?)",
                        db, mode)
    finally:
        con.close()


def _first_line(e: object) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
