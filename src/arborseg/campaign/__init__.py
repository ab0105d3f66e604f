"""Campaigns: the ask/tell driver, its executors (debug, local, slurm) and Optuna storages.

Kept import-light on purpose: submodules (``storage``, ``executors``, ``worker_trial``) import
optuna/submitit/sqlalchemy only when they are used.
"""
