"""Growing labels: bootstrapping a label set from one labeled slice, with active learning.

* :mod:`~arborseg.bootstrap.project`: the project folder behind ``arborseg bootstrap init|next|ingest|status``
* :mod:`~arborseg.bootstrap.strategies`: what to label next (random, adjacent, entropy, least confidence,
  BALD by MC dropout or ensemble, k-means and core-set on bottleneck embeddings)
* :mod:`~arborseg.bootstrap.pseudo`: pseudo-labels from a 2D network for a 3D network (weight lambda)
* :mod:`~arborseg.bootstrap.stats`: what a correction changed; the error map for error-weighted training
* :mod:`~arborseg.bootstrap.simulation`: the loop with the ground truth as the oracle (benchmarks)
"""

from arborseg.bootstrap.project import BootstrapProject, ProjectSettings
from arborseg.bootstrap.stats import correction_stats, error_codes, error_weights
from arborseg.bootstrap.strategies import STRATEGIES, SelectionContext, get_strategy
from arborseg.bootstrap.units import Unit, make_units

__all__ = ["BootstrapProject", "ProjectSettings", "STRATEGIES", "SelectionContext", "Unit", "correction_stats",
           "error_codes", "error_weights", "get_strategy", "make_units"]
