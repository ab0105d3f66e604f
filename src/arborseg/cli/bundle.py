"""`arborseg export` and `arborseg predict`: ensemble folder -> bundle -> segmentations of new volumes."""

from __future__ import annotations

import argparse

from arborseg.errors import ArborsegError


def _block(text: str) -> tuple[int, int, int]:
    parts = text.replace("x", ",").split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--block {text!r}: write Z,Y,X, e.g. 32,512,512")
    return values  # type: ignore[return-value]


def _export(args: argparse.Namespace) -> int:
    from arborseg.bundle import export_bundle

    manifest = export_bundle(args.ensemble_dir, args.out, onnx=not args.no_onnx, bioimageio=not args.no_bioimageio,
                             make_zip=not args.no_zip, overwrite=args.overwrite, progress=not args.quiet)
    for m in manifest["members"]:
        ts = "torchscript" if m.get("torchscript") else f"no torchscript ({m.get('torchscript_error')})"
        onnx = "onnx" if m["onnx"] else f"no onnx ({m['onnx_error']})"
        print(f"{m['key']:32s} window={tuple(m['window'])} weight={m['weight']:g}  {ts}, {onnx}")
    bio = manifest["bioimageio"]
    print(f"bioimage.io: {bio.get('status')}" + (f" ({bio['reason']})" if bio.get("reason") else ""))
    print(f"bundle: {args.out}" + (f"  zip: {manifest['zip']}" if manifest.get("zip") else ""))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from arborseg.bundle import predict_bundle

    if args.memory_mb is not None and args.memory_mb <= 0:
        raise ArborsegError(f"--memory-mb {args.memory_mb:g}: give a positive number of megabytes")
    if args.batch_size < 1:
        raise ArborsegError(f"--batch-size {args.batch_size}: give at least 1")
    if not 0 <= args.overlap < 1:
        raise ArborsegError(f"--overlap {args.overlap:g}: give a fraction in [0, 1)")
    result = predict_bundle(args.bundle, args.volume, args.out, probs=args.probs, uncertainty=args.uncertainty,
                            memory_mb=args.memory_mb, device=args.device, batch_size=args.batch_size,
                            overlap=args.overlap, block=args.block, overwrite=args.overwrite,
                            progress=not args.quiet)
    for name in ("labels", "probs", "uncertainty"):
        if result.get(name):
            print(f"{name:12s}{result[name]}")
    stats = result["stats"]
    print(f"{stats['tiles']} tiles in {stats['blocks']} blocks of {tuple(result['block'])}, {stats['total_s']:.1f} s")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `export` and `predict` to the `arborseg` parser."""
    p = sub.add_parser(
        "export", help="export an ensemble folder as a self-contained bundle (TorchScript, ONNX, bioimage.io)",
        description="ENSEMBLE_DIR is a folder written by `arborseg ensemble` (ensemble.json + members). Writes the "
                    "bundle folder OUT and OUT.zip: TorchScript per member (traced at its window and checked "
                    "against the network), ONNX where the exporter handles it, the trees, manifest.json (classes, "
                    "windows, normalisation, fusion, weights, voxel size, scores, provenance, package versions) "
                    "and a bioimage.io model description validated with bioimageio.spec.")
    p.add_argument("ensemble_dir", metavar="ENSEMBLE_DIR")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to write (a zip goes next to it)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX exports")
    p.add_argument("--no-bioimageio", action="store_true", help="skip the bioimage.io description")
    p.add_argument("--no-zip", action="store_true", help="write only the folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.set_defaults(handler=_export)

    p = sub.add_parser(
        "predict", help="segment a TIFF/HDF5/Zarr volume with a bundle, block by block with bounded memory",
        description="Segments VOLUME (raw.tif, data.h5:key, raw.zarr[:key], raw.npy) with the bundle (folder or "
                    "zip from `arborseg export`). Bounded memory: the input is read block by block and the "
                    "outputs are written chunk by chunk; --memory-mb bounds the prediction's working memory "
                    "(blocks, accumulators, partial sums; not the models and libraries already loaded) and "
                    "chooses the block, so volumes larger than memory work. Any shape works, also sizes not "
                    "divisible by the windows. OUT ending in .zarr gets arrays labels, probs (C,Z,Y,X), "
                    "uncertainty; .tif gets OUT.tif (labels), OUT_probs.tif, OUT_uncertainty.tif; .h5 gets "
                    "datasets labels, probs, uncertainty. TIFF and HDF5 outputs are copied from a temporary "
                    "Zarr result z-slab by z-slab (bounded too; needs that much free disk).")
    p.add_argument("bundle", metavar="BUNDLE", help="a bundle folder or its .zip")
    p.add_argument("volume", metavar="VOLUME", help="raw.tif, data.h5:key, raw.zarr[:key] or raw.npy (z, y, x)")
    p.add_argument("--out", required=True, metavar="OUT", help="OUT.zarr, OUT.tif or OUT.h5")
    p.add_argument("--probs", action="store_true", help="also write the fused class probabilities")
    p.add_argument("--uncertainty", choices=("entropy", "disagreement"),
                   help="also write an uncertainty map: entropy of the fused probabilities, or the fraction of "
                        "members disagreeing with the fused label")
    p.add_argument("--memory-mb", type=float, metavar="MB",
                   help="memory budget of the prediction (chooses the block; default: blocks of 32x512x512)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass (default 4)")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction (default 0.25)")
    p.add_argument("--block", type=_block, metavar="Z,Y,X", help="processing block (overrides --memory-mb's choice)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(handler=_predict)
