"""Campaign infrastructure: storages x executors conformance, failure classification, reattach, SLURM.

One conformance body runs over the three storages (SQLite, journal file, PostgreSQL) and the debug
and local executors (plus a SLURM variant): the driver asks trials, jobs in other processes attach to
them, report intermediate values and ask the MedianPruner, the driver tells COMPLETE/PRUNED/FAIL.
SLURM tests are marked ``slurm`` and skip unless the cluster runs (``bash .ci/slurm_up.sh``).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cloudpickle
import helpers_infra as H
import optuna
import pytest
from campaign_helpers import release_requeued

from arborseg.campaign import worker_trial
from arborseg.campaign.storage import (
    create_trial,
    make_storage,
    open_storage,
    redact,
    set_user_attrs,
    storage_url,
)
from arborseg.campaign.worker_trial import OptunaReporter, attach_trial, trial_id
from arborseg.errors import CampaignError
from arborseg.jobs import _submitit
from arborseg.jobs.executors import DEFAULT_WORKERS, make_executor, valid_options, workers_of
from arborseg.jobs.outcome import (
    FINISHED_STATES,
    JobOutcome,
    cancel_job,
    job_outcome,
    job_state,
    reattach_job,
    wait_outcome,
)
from arborseg.train.result import NullReporter, Reporter

cloudpickle.register_pickle_by_value(H)  # jobs get the helpers by value: no need to import tests/
optuna.logging.set_verbosity(optuna.logging.WARNING)

TESTS = Path(__file__).parent
JOB_TIMEOUT_S = 120
TS = optuna.trial.TrialState


def wait_until(what: str, condition, timeout_s: float = 60, poll_s: float = 0.05):
    """Poll ``condition()`` until it is truthy (returned); a deadline only turns a hang into a failure."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


# ----------------------------------------------------------------------------- conformance
def _conformance(study_name: str, storage, url: str, ex, in_job_expected: bool) -> None:
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", pruner=pruner)

    def submit(trial, values, fail=False):  # what a campaign job gets: the storage URL, study, trial id, pruner
        return ex.submit(H.trial_job, url, study_name, trial_id(trial), study.pruner, values, fail)

    # round 1: two good trials, at the same time
    good = [study.ask() for _ in range(2)]
    for t in good:
        t.suggest_float("lr", 1e-4, 1e-1, log=True)
    curves = [[0.5, 0.7, 0.9], [0.4, 0.6, 0.8]]
    jobs = [submit(t, c) for t, c in zip(good, curves)]
    for t, job, curve in zip(good, jobs, curves):
        out = wait_outcome(job, JOB_TIMEOUT_S)
        assert out is not None and out.ok, out
        assert out.result == {"pruned": False, "value": curve[-1], "pid": out.result["pid"]}
        assert (out.result["pid"] != os.getpid()) == in_job_expected
        # the job's reports are already in the storage when the driver looks
        assert study._storage.get_trial(t._trial_id).intermediate_values == dict(enumerate(curve))
        study.tell(t, out.result["value"])

    # round 2: one bad curve (pruned by the median of the 2 completed trials) and one crashing job
    bad, crash = study.ask(), study.ask()
    j_bad, j_crash = submit(bad, [0.1, 0.2, 0.3]), submit(crash, [0.9, 0.95, 1.0], fail=True)
    out_bad, out_crash = wait_outcome(j_bad, JOB_TIMEOUT_S), wait_outcome(j_crash, JOB_TIMEOUT_S)
    assert out_bad.ok and out_bad.result["pruned"] and out_bad.result["step"] == 0, out_bad
    study.tell(bad, state=TS.PRUNED)
    assert not out_crash.ok and "RuntimeError: loss is NaN" in out_crash.reason, out_crash
    assert job_state(j_crash) == "FAILED"
    study.tell(crash, state=TS.FAIL)

    # read back through a fresh storage object, as a resumed driver or the run table would
    again = optuna.load_study(study_name=study_name, storage=open_storage(url))
    trials = sorted(again.get_trials(deepcopy=False), key=lambda t: t.number)
    assert [t.state for t in trials] == [TS.COMPLETE, TS.COMPLETE, TS.PRUNED, TS.FAIL]
    assert [t.value for t in trials[:2]] == [0.9, 0.8]
    assert again.best_trial.number == good[0].number
    assert trials[2].intermediate_values == {0: 0.1}
    assert trials[3].intermediate_values == {0: 0.9, 1: 0.95}
    assert all(t.user_attrs["in_job"] == in_job_expected for t in trials)
    assert "lr" in trials[0].params
    # a finished trial cannot be attached to any more
    with pytest.raises(CampaignError, match="not RUNNING"):
        attach_trial(url, study_name, trials[0].number)


@pytest.mark.parametrize("executor_kind", ["debug", "local"])
def test_trial_conformance(storage_spec, executor_kind, tmp_run_dir, study_name):
    storage = make_storage(storage_spec, tmp_run_dir)
    url = storage_url(storage_spec, tmp_run_dir)
    ex = make_executor(executor_kind, tmp_run_dir / "jobs", {"timeout_min": 5, "workers": 2})
    _conformance(study_name, storage, url, ex, in_job_expected=executor_kind != "debug")


def test_attach_errors_and_reporters(tmp_run_dir, study_name):
    url = storage_url("journal", tmp_run_dir)
    study = optuna.create_study(storage=make_storage("journal", tmp_run_dir), study_name=study_name)
    t = study.ask()
    with pytest.raises(CampaignError, match="not found"):
        attach_trial(url, "no-such-study", 0)
    with pytest.raises(CampaignError, match="not found"):
        attach_trial(url, study_name, 7)
    with pytest.raises(CampaignError, match="exactly one"):
        attach_trial(url, study_name)
    by_id = attach_trial(url, study_name, trial_id=trial_id(t))
    assert by_id.number == t.number
    rep = OptunaReporter(attach_trial(url, study_name, trial_id=trial_id(t), pruner=study.pruner))
    assert isinstance(rep, Reporter) and rep.report(0, 0.5) is False  # no completed trials: no pruning
    study.tell(t, 0.5)
    assert rep.report(1, 0.6) is True  # finished by the driver meanwhile: the job is told to stop
    null = NullReporter()
    assert isinstance(null, Reporter) and null.report(0, 1.0) is False and null.values == {0: 1.0}


# ---------------------------------------------------------------------------------- storages
def test_user_attrs_set_together(storage_spec, tmp_run_dir, study_name):
    """set_user_attrs (one upsert on SQLite/PostgreSQL) writes, overwrites and reads back like set_user_attr."""
    study = optuna.create_study(storage=make_storage(storage_spec, tmp_run_dir), study_name=study_name)
    trial = study.ask()
    trial.set_user_attr("kept", 1)
    set_user_attrs(trial, {"task": "random:0", "rung_values": {"30": 0.5}, "paused": False, "kept": [1, 2]})
    set_user_attrs(trial, {"paused": True, "job_id": "42"})
    expected = {"task": "random:0", "rung_values": {"30": 0.5}, "paused": True, "kept": [1, 2], "job_id": "42"}
    assert trial.user_attrs == expected
    fresh = optuna.load_study(study_name=study_name, storage=open_storage(storage_url(storage_spec, tmp_run_dir)))
    assert fresh.trials[0].user_attrs == expected
    study.tell(trial, 1.0)
    with pytest.raises(RuntimeError, match="finished"):
        set_user_attrs(trial, {"a": 1, "b": 2})  # as optuna refuses for one attribute


def test_trial_created_in_one_transaction(storage_spec, tmp_run_dir, study_name):
    """create_trial (one transaction on SQLite/PostgreSQL) stores what optuna's create_new_trial(template) stores,
    numbers trials in turn, and refuses a parameter whose distribution changed, as optuna's RDB storage does;
    set_user_attrs with report= writes the intermediate value beside the attributes."""
    import datetime

    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import FrozenTrial, TrialState

    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "depth": IntDistribution(2, 5),
             "block": CategoricalDistribution(["conv", "dilated"])}

    def template(params: dict, attrs: dict, distributions: dict = dists) -> FrozenTrial:
        return FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.datetime.now(),
                           datetime_complete=None, params=params, distributions=distributions, user_attrs=attrs,
                           system_attrs={}, intermediate_values={}, trial_id=-1)

    study = optuna.create_study(storage=make_storage(storage_spec, tmp_run_dir), study_name=study_name)
    reference = study._storage.create_new_trial(study._study_id, template_trial=template(
        {"lr": 0.01, "depth": 3, "block": "conv"}, {"task": "random:0"}))
    made = [create_trial(study, template({"lr": 0.002, "depth": 4, "block": "dilated"}, {"task": f"random:{i}",
                                                                                         "rung_values": {}}))
            for i in (1, 2)]
    trial = optuna.trial.Trial(study, made[0])
    set_user_attrs(trial, {"paused": True}, report=(24, 0.5))
    set_user_attrs(trial, {"paused": False}, report=(24, 0.9))  # a step reported before keeps its first value
    fresh = optuna.load_study(study_name=study_name, storage=open_storage(storage_url(storage_spec, tmp_run_dir)))
    by_id = {t._trial_id: t for t in fresh.trials}
    assert [by_id[i].number for i in [reference, *made]] == [0, 1, 2]
    for i in made:
        t = by_id[i]
        assert t.state == TrialState.RUNNING and t.distributions == dists
        assert t.params == {"lr": 0.002, "depth": 4, "block": "dilated"}
    assert by_id[made[0]].user_attrs == {"task": "random:1", "rung_values": {}, "paused": False}
    assert by_id[made[0]].intermediate_values == {24: 0.5} and trial._cached_frozen_trial.intermediate_values == {24: 0.5}
    assert by_id[made[1]].user_attrs == {"task": "random:2", "rung_values": {}}
    if storage_spec == "journal":
        return  # optuna's journal storage does not compare a template trial's distributions with earlier ones
    with pytest.raises(ValueError, match="[Cc]annot set different distribution kind"):
        create_trial(study, template({"depth": 3.0}, {}, {"depth": FloatDistribution(2.0, 5.0)}))


def test_storage_specs_round_trip(storage_spec, tmp_run_dir, study_name):
    url = storage_url(storage_spec, tmp_run_dir)
    assert url == storage_url(url, tmp_run_dir)  # a URL is its own spec
    optuna.create_study(storage=make_storage(storage_spec, tmp_run_dir), study_name=study_name)
    assert study_name in optuna.get_all_study_names(open_storage(url))
    if storage_spec == "sqlite":
        assert url.startswith(f"sqlite:///{tmp_run_dir}/optuna.sqlite3")
        con = sqlite3.connect(tmp_run_dir / "optuna.sqlite3")
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        con.close()
    if storage_spec == "journal":
        assert url == f"journal://{tmp_run_dir}/optuna.journal" and (tmp_run_dir / "optuna.journal").exists()


def test_storage_spec_forms(tmp_run_dir):
    assert storage_url(None, tmp_run_dir) == storage_url("sqlite", tmp_run_dir)
    assert storage_url("journal:/x/y.log", tmp_run_dir) == "journal:///x/y.log"
    assert storage_url("journal:j.log", tmp_run_dir) == f"journal://{tmp_run_dir}/j.log"
    assert storage_url("sqlite:///rel.db", tmp_run_dir).startswith(f"sqlite:///{tmp_run_dir}/rel.db?")
    pg = storage_url("postgresql+psycopg2://me:s3cret@db.example:5432/arbor", tmp_run_dir)
    assert redact(pg) == "postgresql+psycopg2://me:***@db.example:5432/arbor"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("bogus", "not understood"),
        ("sqlite:///:memory:", "in-memory"),
        ("postgresql+psycopg2://me:s3cret@127.0.0.1:1/arbor", "unreachable"),
        ("postgresql+psycopg2://me:s3cret@127.0.0.1:notaport/arbor", "malformed"),
        ("postgres://me:s3cret@127.0.0.1:1/arbor", "unknown database scheme"),
        ("journal:", "no journal file"),
    ],
)
def test_storage_errors_are_clear(spec, match, tmp_run_dir):
    with pytest.raises(CampaignError, match=match) as info:
        make_storage(spec, tmp_run_dir)
    msg = str(info.value)
    assert "s3cret" not in msg and "\n" not in msg
    if "127.0.0.1:1/" in spec:
        assert "me:***@127.0.0.1:1/arbor" in msg


def test_postgres_missing_database_is_clear(postgres_url, tmp_run_dir):
    url = postgres_url.rsplit("/", 1)[0] + "/no_such_db"
    with pytest.raises(CampaignError, match='database "no_such_db" does not exist'):
        make_storage(url, tmp_run_dir)


# --------------------------------------------------------------------------------- executors
def test_executor_options_are_validated(tmp_path):
    with pytest.raises(CampaignError, match=r"unknown option\(s\) partition; valid options are: env"):
        make_executor("local", tmp_path, {"partition": "gpu"})
    with pytest.raises(CampaignError, match="not one of debug, local, slurm"):
        make_executor("cloud", tmp_path, {})
    with pytest.raises(CampaignError, match="timeout_min must be a positive number"):
        make_executor("local", tmp_path, {"timeout_min": "1h"})
    with pytest.raises(CampaignError, match="workers must be an integer"):
        make_executor("local", tmp_path, {"workers": 0})
    with pytest.raises(CampaignError, match="must be shorter than timeout_min"):
        make_executor("local", tmp_path, {"timeout_min": 1, "signal_delay_s": 60})
    with pytest.raises(CampaignError, match=r"unknown option\(s\) slurm_nodes"):
        make_executor("slurm", tmp_path, {"slurm_nodes": 4})
    assert "partition" in valid_options("slurm") and "workers" in valid_options("local")
    ex = make_executor("local", tmp_path, {"local_timeout_min": 0.5, "workers": 1, "threads_per_job": 1})
    assert _submitit.inner_executor(ex).parameters["timeout_min"] == 0.5
    assert _submitit.inner_executor(ex).parameters["signal_delay_s"] == 7  # a quarter of a short limit, not 30 s
    assert ex.job_env["OMP_NUM_THREADS"] == "1" and ex.workers == 1
    debug = make_executor("debug", tmp_path, {"timeout_min": 5, "workers": 3})  # local options: accepted, ignored
    assert debug.workers == 1


def test_one_workers_default_everywhere(tmp_path):
    assert DEFAULT_WORKERS == {"debug": 1, "local": 2, "slurm": 4}  # as docs/campaigns.md says
    assert make_executor("local", tmp_path / "l", {}).workers == 2 == workers_of("local", {})
    assert workers_of("slurm", {}) == 4 and workers_of("slurm", {"workers": 8}) == 8
    assert "workers" in valid_options("slurm")
    assert workers_of("debug", {"workers": 8}) == 1
    ncpu = len(os.sched_getaffinity(0))
    assert make_executor("local", tmp_path / "t", {}).threads_per_job == max(1, ncpu // 2)
    with pytest.raises(CampaignError, match="workers must be an integer"):
        workers_of("slurm", {"workers": "many"})


def test_private_apis_we_rely_on_are_there():
    """submitit and Optuna internals used in one place each; a new release that drops them fails here."""
    missing = _submitit.missing_private_api()
    assert not missing, (f"submitit {submitit_version()} lacks {missing}: adapt arborseg/jobs/_submitit.py "
                         f"(verified range {_submitit.VERIFIED})")
    missing = worker_trial.missing_private_api()
    assert not missing, (f"optuna {optuna.__version__} lacks {missing}: adapt the end of "
                         "arborseg/campaign/worker_trial.py")


def submitit_version() -> str:
    import submitit

    return submitit.__version__


def test_local_outcomes_are_classified(tmp_path):
    ex = make_executor("local", tmp_path / "jobs", {"timeout_min": 2, "workers": 2})
    j_ok, j_boom, j_kill = ex.submit(H.add, 2, 3), ex.submit(H.boom), ex.submit(H.kill_self)
    ok, boom, killed = (wait_outcome(j, JOB_TIMEOUT_S) for j in (j_ok, j_boom, j_kill))
    assert ok.ok and ok.result == 5 and ok.as_tuple() == (True, 5) and job_state(j_ok) == "DONE"
    assert not boom.ok and boom.reason.startswith(f"raised ValueError: boom (job {j_boom.job_id}): see ")
    assert boom.log.exists() and "ValueError: boom" in boom.log.read_text() and boom.state == "FAILED"
    assert boom.as_tuple() == (False, boom.reason, boom.log)
    assert not killed.ok and killed.reason.startswith("killed") and str(killed.log) in killed.reason
    assert job_state(j_kill) == "FAILED"


def test_local_cancel_and_timeout(tmp_path):
    # a 15 s limit: the job is signalled at 10 s (time enough to start on a busy machine), not checkpointable
    ex = make_executor("local", tmp_path / "jobs", {"timeout_min": 0.25, "signal_delay_s": 5})
    slow_started = tmp_path / "slow.started"
    j_slow = ex.submit(H.sleep_return, 600, 42, str(slow_started))
    ex2 = make_executor("local", tmp_path / "jobs2", {"timeout_min": 5})
    started = tmp_path / "started"
    j_cancel = ex2.submit(H.sleep_return, 600, 42, str(started))
    wait_until("the job to start", started.exists)
    cancel_job(j_cancel)
    cancelled = wait_outcome(j_cancel, 60)
    assert cancelled is not None and not cancelled.ok and cancelled.state == "CANCELLED", cancelled
    assert cancelled.reason.startswith("cancelled (controller got SIGINT)"), cancelled
    timed_out = wait_outcome(j_slow, 120)
    assert slow_started.exists(), f"the job had not started when its time ran out: {timed_out}"
    assert not timed_out.ok and timed_out.state == "TIMEOUT" and "timed-out" in timed_out.reason, timed_out


_NOHUP_DRIVER = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    import helpers_infra as H
    from arborseg.jobs.executors import make_executor
    from arborseg.jobs.outcome import cancel_job, wait_outcome
    folder, marker_main, marker_thread = sys.argv[1:4]
    print(H.sigint_disposition(), flush=True)
    ex = make_executor("local", folder, {"timeout_min": 5})
    jobs = [ex.submit(H.sleep_return, 600, 42, marker_main)]  # from the main thread
    thread = threading.Thread(target=lambda: jobs.append(ex.submit(H.sleep_return, 600, 42, marker_thread)))
    thread.start()
    thread.join()
    print(" ".join(j.job_id for j in jobs), flush=True)
    sys.stdin.readline()  # the test says when both jobs have started
    for job in jobs:
        cancel_job(job)
    for job in jobs:
        out = wait_outcome(job, 120)
        print(out.state if out else "STILL RUNNING", "|", out.reason if out else "", flush=True)
    """
)


def test_cancel_works_when_the_driver_ignores_sigint(tmp_path):
    # `nohup arborseg search ... &` (or a script's `cmd &`) starts the driver with SIGINT ignored; submitit's
    # LocalJob.cancel() sends SIGINT: jobs submitted from the main thread get SIGINT back, the others are killed
    markers = [tmp_path / "main.started", tmp_path / "thread.started"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    driver = subprocess.Popen(
        ["nohup", sys.executable, "-c", _NOHUP_DRIVER, str(tmp_path / "jobs"), *map(str, markers)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert driver.stdout.readline().strip() == "ignored"  # as under `nohup ... &`
        job_ids = driver.stdout.readline().split()
        assert len(job_ids) == 2, driver.stderr.read()
        wait_until("both jobs to start", lambda: all(m.exists() for m in markers))
        task_pids = [int(m.read_text()) for m in markers]
        driver.stdin.write("go\n")
        driver.stdin.flush()
        (main_state, main_reason), (thread_state, thread_reason) = (
            [part.strip() for part in driver.stdout.readline().split("|")] for _ in job_ids)
        assert main_state == "CANCELLED" and "controller got SIGINT" in main_reason, main_reason
        assert thread_state == "CANCELLED" and "controller got SIGKILL" in thread_reason, thread_reason
        assert driver.wait(60) == 0, driver.stderr.read()
        for pid in task_pids:  # no job process is left behind
            wait_until(f"job process {pid} to end", lambda pid=pid: not _alive(pid))
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_local_threads_are_divided(tmp_path):
    ncpu = len(os.sched_getaffinity(0))
    ex = make_executor("local", tmp_path / "a", {"workers": 2, "env": {"ARBORSEG_TEST_EXTRA": "yes"}})
    expected = max(1, ncpu // 2)
    ex1 = make_executor("local", tmp_path / "b", {"threads_per_job": 1})
    ja, jb = ex.submit(H.thread_info), ex1.submit(H.thread_info)
    a, b = wait_outcome(ja, JOB_TIMEOUT_S), wait_outcome(jb, JOB_TIMEOUT_S)
    assert a.result == {"OMP_NUM_THREADS": str(expected), "ARBORSEG_NUM_THREADS": str(expected), "EXTRA": "yes",
                        "applied": expected, "torch": expected}, a
    assert b.result["torch"] == 1 and b.result["EXTRA"] is None
    assert "ARBORSEG_NUM_THREADS" not in os.environ  # the driver's environment is left as it was


def test_debug_failure_is_classified_without_pdb(tmp_path):
    ex = make_executor("debug", tmp_path, {})
    j = ex.submit(H.boom)
    assert job_state(j) == "PENDING"
    out = job_outcome(j)
    assert not out.ok and out.reason.startswith("raised ValueError: boom (debug job") and job_state(j) == "FAILED"
    assert job_outcome(j) is out  # classified once; the function is not re-run
    ok = wait_outcome(ex.submit(H.add, 1, 1))
    assert ok.ok and ok.result == 2
    with pytest.raises(CampaignError, match="cannot be reattached"):
        reattach_job(tmp_path, j.job_id, "debug")


def test_job_outcome_never_raises():
    out = job_outcome(object())
    assert isinstance(out, JobOutcome) and not out.ok and "could not read" in out.reason
    assert job_state(object()) == "UNKNOWN"


_DRIVER = textwrap.dedent(
    """
    import sys, time
    from arborseg.jobs.executors import make_executor
    import helpers_infra as H
    ex = make_executor("local", sys.argv[1], {"timeout_min": 5})
    job = ex.submit(H.sleep_return, float(sys.argv[2]), 42, sys.argv[3])
    print(job.job_id, flush=True)
    time.sleep(120)
    """
)


def _start_driver(folder: Path, seconds: float, marker: Path, new_session: bool) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, str(folder), str(seconds), str(marker)],
                            stdout=subprocess.PIPE, text=True, env=env, start_new_session=new_session)
    job_id = proc.stdout.readline().strip()
    assert job_id.isdigit()
    wait_until("the job to start", marker.exists)
    return proc, job_id


def test_local_job_survives_driver_kill9_and_is_reattached(tmp_path):
    folder = tmp_path / "jobs"
    driver, job_id = _start_driver(folder, 3.0, tmp_path / "started", new_session=False)
    driver.send_signal(signal.SIGKILL)  # kill -9 <driver pid>: the job's controller is re-parented
    driver.wait()
    job = reattach_job(folder, job_id, "local")
    assert job_state(job) == "RUNNING"
    assert job_outcome(job) is None
    out = wait_outcome(job, 30)
    assert out.ok and out.result == 42 and job_state(job) == "DONE"
    # a job id that never ran here (or whose pid was reused by something else) is not "running"
    ghost = reattach_job(folder, str(os.getpid()), "local")
    assert job_state(ghost) == "FAILED" and "without writing a result" in job_outcome(ghost).reason


def test_local_job_dies_with_driver_process_group(tmp_path):
    folder = tmp_path / "jobs"
    driver, job_id = _start_driver(folder, 30.0, tmp_path / "started", new_session=True)
    os.killpg(driver.pid, signal.SIGKILL)  # e.g. Ctrl-C / kill -- -PGID: the whole group goes
    driver.wait()
    job = reattach_job(folder, job_id, "local")
    out = wait_outcome(job, 60, poll_s=0.05)
    assert out is not None and not out.ok and out.state == "FAILED" and out.reason.startswith("killed"), out


# ------------------------------------------------------------------------------------- SLURM
def _slurm_ex(folder: Path, **options):
    opts = {"timeout_min": 2, "partition": "debug", "cpus_per_task": 1}
    opts.update(options)
    return make_executor("slurm", folder, opts)


def _wait_state(job, wanted: set[str], timeout_s: float = 30) -> str:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        state = job_state(job)
        if state in wanted:
            return state
        time.sleep(0.25)
    raise AssertionError(f"job {job.job_id} still {job_state(job)} after {timeout_s}s (wanted {wanted})")


@pytest.mark.slurm
def test_slurm_array_and_threads(slurm_cluster, tmp_path):
    ex = _slurm_ex(tmp_path / "jobs", array_parallelism=3, setup=["export ARBORSEG_TEST_EXTRA=from-setup"])
    assert _submitit.inner_executor(ex).parameters["signal_delay_s"] == 30  # 2-min limit: not the default 90 s
    jobs = ex.map_array(H.add, [1, 2, 3], [10, 20, 30])
    assert len({j.job_id.split("_")[0] for j in jobs}) == 1  # one array
    j_threads = ex.submit(H.thread_info)
    outs = [wait_outcome(j, 60) for j in jobs]
    assert [o.result for o in outs] == [11, 22, 33] and all(o.ok for o in outs), outs
    assert all(job_state(j) == "DONE" for j in jobs)
    info = wait_outcome(j_threads, 60).result
    assert info["OMP_NUM_THREADS"] == "1" and info["torch"] == 1 and info["EXTRA"] == "from-setup"


@pytest.mark.slurm
def test_slurm_cancel_and_kill_are_failures(slurm_cluster, tmp_path):
    ex = _slurm_ex(tmp_path / "jobs")
    j_sleep, j_kill, j_boom = ex.submit(H.sleep_return, 60), ex.submit(H.kill_self), ex.submit(H.boom)
    _wait_state(j_sleep, {"RUNNING"})
    subprocess.run(["scancel", j_sleep.job_id], check=True)
    cancelled = wait_outcome(j_sleep, 30)
    assert not cancelled.ok and cancelled.state == "CANCELLED", cancelled
    assert cancelled.reason == f"cancelled by scheduler (job {j_sleep.job_id}): see {cancelled.log}"
    killed, boom = wait_outcome(j_kill, 30), wait_outcome(j_boom, 30)
    assert not killed.ok and killed.reason.startswith("killed by signal 9 (SIGKILL)"), killed
    assert not boom.ok and boom.reason.startswith("raised ValueError: boom"), boom
    assert {job_state(j) for j in (j_sleep, j_kill, j_boom)} <= FINISHED_STATES
    again = reattach_job(tmp_path / "jobs", j_sleep.job_id, "slurm")
    assert job_state(again) == "CANCELLED"


@pytest.mark.slurm
def test_slurm_trial_conformance(slurm_cluster, tmp_run_dir, study_name):
    storage = make_storage("journal", tmp_run_dir)  # the storage for shared filesystems
    ex = _slurm_ex(tmp_run_dir / "jobs")
    _conformance(study_name, storage, storage_url("journal", tmp_run_dir), ex, in_job_expected=True)


@pytest.mark.slurm
def test_slurm_preempted_checkpointable_job_resumes(slurm_cluster, tmp_path):
    cpus = slurm_cluster["cpus"]
    counter = tmp_path / "counter"
    ex = _slurm_ex(tmp_path / "jobs", timeout_min=5, cpus_per_task=cpus)  # the whole node
    job = ex.submit(H.CounterJob(str(counter), n=40, dt=0.25))
    high = None
    try:
        wait_until(f"counter job {job.job_id} to count to 4",
                   lambda: counter.exists() and int(counter.read_text() or 0) >= 4)
        # a job in the 'high' partition needs the same CPUs: SLURM preempts ours (USR2 -> checkpoint -> requeue)
        res = subprocess.run(["sbatch", "--parsable", "-p", "high", "-c", str(cpus), "-t", "1",
                              "-o", str(tmp_path / "high.out"), "--wrap", "sleep 1"],
                             capture_output=True, text=True, check=True)
        high = res.stdout.strip().split(";")[0]
        # wait for the requeue (PENDING, BeginTime 120 s ahead) and release it
        wait_until(f"job {job.job_id} to be requeued", lambda: subprocess.run(
            ["squeue", "-h", "-j", job.job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip() == "PENDING")
        release_requeued(job.job_id)
        out = wait_outcome(job, 240)
        assert out is not None and out.ok, out
        assert out.result["count"] == 40
        assert out.result["starts"][0] == 0 and len(out.result["starts"]) == 2, out.result
        assert out.result["starts"][1] >= 4  # resumed from the on-disk counter, not from 0
        assert out.result["requeues"] == 1
        stderr = out.log.read_text()
        assert "Caught signal SIGUSR2" in stderr
    finally:
        for jid in (job.job_id, high):
            if jid:
                subprocess.run(["scancel", jid], capture_output=True)
