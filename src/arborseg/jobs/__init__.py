"""Running work as submitit jobs, for campaigns, ensemble members and anything else that runs jobs.

:mod:`.options` (the ``executor:`` options, one ``workers`` default), :mod:`.executors` (debug, local,
slurm), :mod:`.checkpointable` (the base of jobs SLURM may preempt), :mod:`.outcome` (how a job ended,
reattaching, cancelling), :mod:`.scheduler` (the one scheduler), :mod:`.runtime` (what runs inside a
training job), :mod:`.types` (the Job/Executor protocols); submitit's private API only in :mod:`._submitit`.
"""
