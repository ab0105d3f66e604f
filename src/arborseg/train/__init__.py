"""Training one trial: torch-free settings (:mod:`.settings`), the trainer (:mod:`.trainer`), losses (:mod:`.losses`).

Import from the submodules; this package itself imports nothing, so reading settings never loads torch.
"""
