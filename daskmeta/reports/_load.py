"""A MetaResult read back from a folder written by an analysis (``daskmeta ale ... --out``)."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np

from daskmeta.exceptions import DaskmetaError
from daskmeta.results import MetaResult, output_path
from daskmeta.space import resolve_space

__all__ = ["load_result", "find_prefix", "NULLS_FILE"]

#: The null distributions of a result, next to its maps (``{prefix}_nulls.npz``).
NULLS_FILE = "nulls.npz"
_PROVENANCE = "provenance.json"


def find_prefix(folder, prefix: str | None = None) -> str:
    """The file-name prefix of the run in ``folder``: ``prefix`` if given, else the one of the
    folder's single ``*provenance.json``."""
    folder = Path(folder)
    if prefix is not None:
        return prefix
    found = sorted(p.name for p in folder.glob(f"*{_PROVENANCE}"))
    if not found:
        raise DaskmetaError(f"{folder} holds no provenance.json: not the output folder of a "
                            "daskmeta analysis (daskmeta ale/mkda/kda --out DIR)")
    if len(found) > 1:
        raise DaskmetaError(f"{folder} holds the results of several runs ({', '.join(found)}); "
                            "give the prefix of one (--prefix)")
    name = found[0][: -len(_PROVENANCE)]
    return name[:-1] if name.endswith("_") else name


def _space(attrs: dict, mask, folder: Path):
    want = attrs.get("mask_hash")
    if mask is not None:
        space = resolve_space(mask)
    else:
        source = attrs.get("mask_source")
        if source is None:
            raise DaskmetaError(f"{folder}: the provenance names no mask; give it (--mask)")
        if str(source).startswith("nilearn:"):
            space = resolve_space(None)
        elif Path(str(source)).is_file():
            space = resolve_space(str(source))
        else:
            raise DaskmetaError(f"the mask the results in {folder} were computed on "
                                f"({source}) is not there; give it (--mask)")
    if want is not None and space.mask_hash != want:
        raise DaskmetaError(f"the mask {space.source} is not the one the results in {folder} "
                            f"were computed on (its hash differs from {want[:12]}...)")
    return space


def load_result(folder, prefix: str | None = None, mask=None) -> MetaResult:
    """The result an analysis wrote into ``folder``: its maps (``{prefix}_{map}.nii.gz``),
    attributes (``provenance.json``) and null distributions (``nulls.npz``, when written).

    Parameters
    ----------
    folder : path-like
    prefix : str, optional
        The run's file-name prefix; by default found from the folder's one
        ``*provenance.json``.
    mask : path-like, optional
        The mask of the run; by default the one its provenance names (nilearn's MNI152
        mask, or the file it was read from), checked against the recorded hash.

    Raises
    ------
    DaskmetaError
        If the folder holds no (or several) runs, the mask is missing or differs, or a map
        does not fit the mask.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DaskmetaError(f"{folder} is not a folder")
    prefix = find_prefix(folder, prefix)
    lead = f"{prefix}_" if prefix else ""
    prov = output_path(folder, f"{lead}{_PROVENANCE}")  # a plain name: stays in folder
    try:
        attrs = json.loads(prov.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DaskmetaError(f"{prov} does not exist") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DaskmetaError(f"{prov} is not JSON ({exc})") from None
    if not isinstance(attrs, dict):
        raise DaskmetaError(f"{prov} must hold a JSON object")
    space = _space(attrs, mask, folder)
    # The run's summary names its maps and whether it wrote nulls: files an earlier run left
    # in the folder are not read as this run's.
    summary = {}
    summary_path = folder / f"{lead}summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DaskmetaError(f"{summary_path} is not JSON ({exc})") from None
        summary = summary if isinstance(summary, dict) else {}
    names = summary.get("maps")
    if isinstance(names, list):
        paths = [output_path(folder, f"{lead}{n}.nii.gz") for n in names]
    else:
        paths = sorted(folder.glob(f"{glob.escape(lead)}*.nii.gz"))
    maps = {}
    for path in paths:
        name = path.name[len(lead):-len(".nii.gz")]
        if not name or name.startswith("."):
            continue
        if not path.is_file():
            raise DaskmetaError(f"{path} (a map of the run, by its summary.json) is missing")
        maps[name] = space.from_img(path, name=str(path))
    if "z" not in maps:
        raise DaskmetaError(f"{folder} holds no {lead}z.nii.gz map")
    nulls = {}
    nulls_path = folder / f"{lead}{NULLS_FILE}"
    if nulls_path.is_file() and summary.get("nulls", True):
        try:
            with np.load(nulls_path, allow_pickle=False) as npz:
                nulls = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise DaskmetaError(f"{nulls_path} is not a readable .npz file ({exc})") from None
    return MetaResult(maps, space, attrs, null_distributions=nulls)
