"""Bundles: an ensemble exported as a self-contained folder (and zip) that segments new volumes.

* :func:`export_bundle` (``arborseg export``): ensemble folder -> TorchScript per member (traced and
  checked), ONNX where the exporter handles the network, the trees, ``manifest.json`` and a validated
  bioimage.io description (:mod:`.export`, :mod:`.convert`, :mod:`.bioimageio`);
* :func:`load_bundle`: the members as TorchScript modules, windows, weights, fusion, classes, normaliser;
  needs nothing from the campaign (:mod:`.load`);
* :func:`predict_bundle` (``arborseg predict``): block-wise prediction with bounded memory into Zarr,
  TIFF or HDF5 (:mod:`.run`).
"""

from arborseg.bundle.export import BUNDLE_FORMAT, export_bundle
from arborseg.bundle.load import Bundle, BundleMember, load_bundle
from arborseg.bundle.run import predict_bundle

__all__ = ["export_bundle", "load_bundle", "predict_bundle", "Bundle", "BundleMember", "BUNDLE_FORMAT"]
