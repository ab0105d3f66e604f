"""arborseg: declarative architecture search and ensembles for volume-EM segmentation."""

from arborseg.errors import ArborsegError

__version__ = "0.1.0"
__all__ = ["ArborsegError", "__version__"]
