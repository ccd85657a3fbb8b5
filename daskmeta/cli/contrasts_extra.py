"""Commands over results and seeds: ``conjunction``, ``scale``, ``macm``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from daskmeta.cli._common import (
    _bad,
    _check_out,
    _log,
)
from daskmeta.exceptions import DaskmetaError


def add_parsers(sub) -> None:
    """The parsers of this module's commands, each with its ``handler``."""
    c = sub.add_parser(
        "conjunction", help="minimum-statistic conjunction of result maps",
        description="The voxel-wise minimum (maximum for p maps) of one map of two or more "
                    "result folders written by the analysis commands (Nichols et al., 2005). "
                    "The maps must share a mask: their grids, and the mask hashes in the "
                    "folders' provenance, are checked.")
    c.add_argument("inputs", nargs="+", metavar="DIR",
                   help="result folders (or NIfTI files of the map)")
    c.add_argument("--map", default="z", metavar="NAME",
                   help="the map to combine (default z), e.g. "
                        "z_desc-size_level-cluster_corr-FWE_method-montecarlo")
    c.add_argument("--threshold", type=float, default=None,
                   help="also zero the conjunction where it does not pass this value")
    c.add_argument("--out", required=True, metavar="DIR", help="output folder")
    c.add_argument("--prefix", default=None, help="prefix of every output file name")
    c.set_defaults(handler=_run_conjunction)


# -- conjunction --------------------------------------------------------------------------------
def _map_file(source: Path, name: str) -> tuple[Path, Path | None]:
    """The NIfTI file of map ``name`` in a result folder (``NAME.nii.gz`` or
    ``PREFIX_NAME.nii.gz``), or ``source`` itself if it is a file; with the folder's
    provenance file when there is one."""
    if source.is_file():
        return source, None
    if not source.is_dir():
        raise DaskmetaError(f"{source} is neither a result folder nor a NIfTI file")
    exact = source / f"{name}.nii.gz"
    if exact.is_file():
        prov = source / "provenance.json"
        return exact, prov if prov.is_file() else None
    found = sorted(p for p in source.glob(f"*_{name}.nii.gz") if p.is_file()
                   and not p.name.startswith("."))
    if len(found) != 1:
        what = ("no file" if not found
                else f"{len(found)} files ({', '.join(p.name for p in found[:3])})")
        raise DaskmetaError(f"{source} holds {what} named {name}.nii.gz or "
                            f"PREFIX_{name}.nii.gz; give --map the name of a map it holds, "
                            "or the file itself")
    prefix = found[0].name[: -len(f"_{name}.nii.gz")]
    prov = source / f"{prefix}_provenance.json"
    return found[0], prov if prov.is_file() else None


def _mask_hash(prov: Path | None):
    if prov is None:
        return None
    try:
        return json.loads(prov.read_text(encoding="utf-8")).get("mask_hash")
    except (ValueError, OSError, AttributeError) as exc:
        raise DaskmetaError(f"cannot read provenance {prov}: {exc}") from exc


def _run_conjunction(args) -> None:
    import math

    from daskmeta.conjunction import conjunction_images, conjunction_name
    from daskmeta.results import atomic_write, output_path
    from daskmeta.workflows import check_prefix, input_provenance

    t0 = time.perf_counter()
    if len(args.inputs) < 2:
        raise DaskmetaError(f"conjunction needs two or more result folders; got "
                            f"{len(args.inputs)}")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise _bad("--threshold", args.threshold, "a finite number")
    if args.prefix is not None:
        check_prefix(args.prefix, "--prefix")
    check_prefix(args.map, "--map")
    _check_out(args.out)
    files, hashes = [], []
    for src in args.inputs:
        path, prov = _map_file(Path(src), args.map)
        files.append(path)
        hashes.append(_mask_hash(prov))
    known = {h for h in hashes if h is not None}
    if len(known) > 1:
        first = next(i for i, h in enumerate(hashes) if h is not None)
        other = next(i for i, h in enumerate(hashes) if h is not None and h != hashes[first])
        raise DaskmetaError(f"{args.inputs[other]} was fitted on another mask (hash "
                            f"{hashes[other][:12]}) than {args.inputs[first]} (hash "
                            f"{hashes[first][:12]}); conjunctions need maps of one mask")
    img = conjunction_images(files, args.map, args.threshold, names=[str(f) for f in files])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = args.prefix or ""
    name = conjunction_name(args.map)
    target = output_path(out, f"{prefix}_{name}.nii.gz" if prefix else f"{name}.nii.gz")
    atomic_write(target, lambda tmp: img.to_filename(str(tmp)))
    prov = {
        "estimator": "conjunction",
        "conjunction_map": args.map,
        "conjunction_rule": "maximum" if args.map.split("_")[0] == "p" else "minimum",
        "conjunction_threshold": args.threshold,
        "conjunction_inputs": [{**input_provenance(f), "mask_hash": h}
                               for f, h in zip(files, hashes, strict=True)],
        "command_line": args.command_line,
    }
    if known:
        prov["mask_hash"] = known.pop()
    text = json.dumps(prov, indent=1, sort_keys=True)
    prov_path = output_path(out, f"{prefix}_provenance.json" if prefix else "provenance.json")
    atomic_write(prov_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    _log(f"conjunction of {len(files)} maps ({args.map}) in {time.perf_counter() - t0:.1f} s; "
         f"2 files written to {out.resolve()}")
    print(out.resolve())
