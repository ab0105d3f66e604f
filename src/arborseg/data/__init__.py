"""Data for arborseg: volumes (TIFF, HDF5, Zarr, NumPy), the data YAML and its regions, normalisation,
augmentation, patch sampling and a synthetic EM-like volume.

Typical use::

    cfg = load_data_config("examples/vnc_mito.yaml")
    raw, labels = cfg.load_region("train")            # float32 normalised, int64 classes
    sampler = PatchSampler(raw, labels, (5, 128, 128), rng=0, foreground_bias=0.5,
                           augmenter=Augmenter.from_dict({"flip": True, "rot90": True}))
    x, y, w = sampler.sample_batch(4)
"""

from arborseg.data.augment import Augmenter
from arborseg.data.config import DataConfig, load_data_config
from arborseg.data.labels import apply_label_map
from arborseg.data.preprocess import Normalizer, median_filter, normalize, unsharp_mask
from arborseg.data.regions import Region
from arborseg.data.sampling import PatchSampler, class_frequencies
from arborseg.data.synthetic import make_em_volume
from arborseg.data.volumes import Volume, open_volume, write_volume

__all__ = [
    "Augmenter", "DataConfig", "Normalizer", "PatchSampler", "Region", "Volume", "apply_label_map",
    "class_frequencies", "load_data_config", "make_em_volume", "median_filter", "normalize", "open_volume",
    "unsharp_mask", "write_volume",
]
