"""Running work as submitit jobs: executors (debug, local, slurm), the checkpointable job base, the scheduler."""
