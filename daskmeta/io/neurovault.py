"""NeuroVault collections as image references: :func:`read_neurovault`.

NeuroVault's API lists a collection's images at
``{url}/api/collections/{id}/images/?format=json`` (pages of ``{"count", "next",
"results": [...]}``), each image with ``id``, ``name``, ``file`` (its URL), ``map_type``
(``"T map"``, ``"Z map"``, ...), ``analysis_level`` and ``number_of_subjects``.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections import Counter
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import numpy as np
import pandas as pd

from daskmeta.dataset import Dataset
from daskmeta.exceptions import DaskmetaError
from daskmeta.io._fetch import check_url, fetch_url, get_json
from daskmeta.io._studyset import atomic_write_bytes, image_type, short
from daskmeta.io.download import DEFAULT_TIMEOUT, _hash_file, _progress_reporter, default_data_dir

__all__ = ["NEUROVAULT_URL", "read_neurovault"]

#: NeuroVault's site.
NEUROVAULT_URL = "https://neurovault.org"
_MAX_PAGES = 10_000


def _listing(collection: int, base: str, timeout: float) -> list[dict]:
    url = f"{base.rstrip('/')}/api/collections/{collection}/images/?format=json"
    images, seen = [], set()
    for _ in range(_MAX_PAGES):
        page = get_json(url, f"the image listing of NeuroVault collection {collection}",
                        timeout)
        if not isinstance(page, dict) or not isinstance(page.get("results"), list):
            raise DaskmetaError(f"NeuroVault collection {collection}: {url} is not an image "
                                "listing (a JSON object with a 'results' list)")
        images += page["results"]
        nxt = page.get("next")
        if not nxt:
            return images
        url = check_url(urljoin(url, nxt), f"the next page of collection {collection}")
        if url in seen:
            raise DaskmetaError(f"NeuroVault collection {collection}: the listing's pages "
                                f"loop back to {url}")
        seen.add(url)
    raise DaskmetaError(f"NeuroVault collection {collection}: more than {_MAX_PAGES} pages")


def _check_gzip(path: Path) -> None:
    """A ``.gz`` image must decompress to its end with a good CRC (a corrupt or cut file
    does not)."""
    if not path.name.endswith(".gz"):
        return
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        path.unlink()
        raise DaskmetaError(f"{path.name} is not a valid gzip file ({exc}); it was deleted, "
                            "fetch again") from None


def read_neurovault(collection, data_dir=None, *, url: str | None = None, contrasts=None,
                    overwrite: bool = False, progress=None,
                    timeout: float = DEFAULT_TIMEOUT) -> Dataset:
    """Download a NeuroVault collection's group-level statistic maps as a Dataset of images.

    Parameters
    ----------
    collection : int or str
        The collection's number (``8836`` in ``https://neurovault.org/collections/8836/``).
    data_dir : str or path-like, optional
        Parent folder: images go to ``data_dir/neurovault/collection-<id>/`` (default:
        :func:`daskmeta.io.download.default_data_dir`).
    url : str, optional
        The NeuroVault site (default ``https://neurovault.org``).
    contrasts : dict of str to str, optional
        NiMARE's grouping (``convert_neurovault_to_dataset``): one experiment per name, of
        the images whose name matches its regular expression (``re.match``), sample size the
        most common ``number_of_subjects``. Default: one experiment per image.
    overwrite : bool
        Download every image again.
    progress, timeout
        As for :func:`daskmeta.io.fetch`.

    Returns
    -------
    daskmeta.Dataset
        Experiments without foci whose :attr:`Dataset.images` hold the downloaded files'
        absolute paths, one column per map type (NiMARE's names: ``t``, ``z``, ``beta``,
        ``varcope``, ``p``; other map types and non-group maps are left out, as NiMARE
        does); experiment ids ``f"{collection}-{image id}"`` (``f"{collection}-{name}"``
        with ``contrasts``), study id the collection; sample size from
        ``number_of_subjects``; image name, map type and URL in :attr:`Dataset.metadata`.

    Notes
    -----
    Downloads resume as :func:`daskmeta.io.fetch`'s do. NeuroVault publishes no checksums:
    a body shorter than its ``Content-Length`` is kept to resume, a gzipped image must pass
    its CRC, and the SHA-256 of each verified file is recorded in ``manifest.json`` so that a
    later run re-downloads a cached file that no longer matches.

    Raises
    ------
    DaskmetaError
        A collection that is not a positive integer, an unreachable or malformed listing,
        an image entry without ``id`` or ``file``, a failed download, or no usable images.
    """
    if isinstance(collection, bool) or not re.fullmatch(r"[1-9][0-9]{0,9}", str(collection)):
        raise DaskmetaError(f"collection must be a NeuroVault collection number (a positive "
                            f"integer); got {collection!r}")
    collection = int(collection)
    base = check_url(url or NEUROVAULT_URL, "the NeuroVault URL")
    if contrasts is not None:
        if not isinstance(contrasts, dict) or not contrasts:
            raise DaskmetaError("contrasts must be a dict of experiment name to regular "
                                f"expression; got {short(contrasts)}")
        try:
            patterns = {str(k): re.compile(v) for k, v in contrasts.items()}
        except (re.error, TypeError) as exc:
            raise DaskmetaError(f"contrasts: not a regular expression ({exc})") from None
    parent = default_data_dir() if data_dir is None else Path(data_dir).expanduser()
    folder = parent / "neurovault" / f"collection-{collection}"
    folder.mkdir(parents=True, exist_ok=True)
    listing = _listing(collection, base, timeout)
    atomic_write_bytes(folder / "images.json", json.dumps(listing, indent=1).encode())
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    except ValueError:
        manifest = {}
    report = _progress_reporter(progress)

    rows = []
    for k, img in enumerate(listing):
        if not isinstance(img, dict) or not isinstance(img.get("id"), int) \
                or not isinstance(img.get("file"), str):
            raise DaskmetaError(f"NeuroVault collection {collection}: image {k} has no integer "
                                "'id' and 'file' URL")
        kind = image_type(img.get("map_type"))
        if kind is None or img.get("analysis_level", "group") not in ("group", None):
            continue
        file_url = check_url(urljoin(base + "/", img["file"]), f"image {img['id']}'s file")
        basename = Path(urlsplit(file_url).path).name
        basename = re.sub(r"[^A-Za-z0-9._-]", "_", basename).lstrip(".") or "image.nii.gz"
        fname = f"collection-{collection}_id-{img['id']}_{basename}"
        final = folder / fname
        known = manifest.get(fname)
        size = img.get("file_size") if isinstance(img.get("file_size"), int) else None
        fetch_url(file_url, final, size=size, sha256=known, overwrite=overwrite, report=report,
                  timeout=timeout)
        if known is None:
            _check_gzip(final)
            manifest[fname] = _hash_file(final)[1]
            atomic_write_bytes(manifest_path, json.dumps(manifest, indent=1).encode())
        n = img.get("number_of_subjects")
        rows.append({"image_id": img["id"], "name": str(img.get("name") or ""), "kind": kind,
                     "path": str(final.resolve()), "n": n if isinstance(n, (int, float))
                     and not isinstance(n, bool) and n > 0 else None,
                     "map_type": img.get("map_type"), "url": file_url})
    if not rows:
        raise DaskmetaError(f"NeuroVault collection {collection} has no group-level T, Z, "
                            "beta, variance or p maps")

    groups: dict[str, list[dict]] = {}
    if contrasts is None:
        for r in rows:
            groups[f"{collection}-{r['image_id']}"] = [r]
    else:
        for name, pattern in patterns.items():
            hits = [r for r in rows if pattern.match(r["name"])]
            if not hits:
                raise DaskmetaError(f"no image of NeuroVault collection {collection} matches "
                                    f"contrast {name!r} ({pattern.pattern!r})")
            groups[f"{collection}-{name}"] = hits
    exp, images, meta = [], [], []
    for exp_id, members in groups.items():
        ns = [r["n"] for r in members if r["n"] is not None]
        exp.append({"id": exp_id, "study_id": str(collection),
                    "sample_size": Counter(ns).most_common(1)[0][0] if ns else np.nan,
                    "space": "MNI"})
        refs = {"id": exp_id}
        for r in members:
            refs.setdefault(r["kind"], r["path"])  # the first of each type, as NiMARE
        images.append(refs)
        meta.append({"id": exp_id, "image_name": "; ".join(r["name"] for r in members),
                     "map_type": "; ".join(str(r["map_type"]) for r in members),
                     "image_url": "; ".join(r["url"] for r in members)})
    foci = pd.DataFrame({"id": pd.Series([], dtype=object), "x": [], "y": [], "z": []})
    return Dataset(pd.DataFrame(exp), foci, metadata=pd.DataFrame(meta),
                   images=pd.DataFrame(images), name=f"NeuroVault collection {collection}")
