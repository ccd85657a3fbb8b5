"""Readers and writers: Sleuth, NiMARE JSON, foci tables, Neurosynth and NeuroQuery,
NIMADS, NeuroStore parquet studysets and NeuroVault collections; checksummed downloads of
the database release files (:func:`fetch`) and NeuroStore releases
(:func:`fetch_neurostore`).

Every reader returns a :class:`daskmeta.Dataset` (coordinates in MNI mm, each experiment's
reported space kept) and raises :class:`daskmeta.exceptions.ParseError`, naming the file and
where possible the line, for malformed input. :func:`read` guesses the format among those in
:data:`FORMATS`; :func:`register_format` adds a format (see ``docs/extending.md``).
"""

from daskmeta.io._neurostore_fetch import fetch_neurostore, neurostore_releases
from daskmeta.io._registry import FORMATS, read, register_format, unregister_format
from daskmeta.io.download import fetch
from daskmeta.io.neurostore import read_neurostore, write_neurostore
from daskmeta.io.neurosynth import read_neuroquery, read_neurosynth
from daskmeta.io.neurovault import read_neurovault
from daskmeta.io.nimads import read_nimads, write_nimads
from daskmeta.io.nimare_json import read_nimare_json
from daskmeta.io.sleuth import read_sleuth, write_sleuth
from daskmeta.io.table import read_table

__all__ = [
    "read",
    "register_format",
    "unregister_format",
    "FORMATS",
    "read_sleuth",
    "write_sleuth",
    "read_nimare_json",
    "read_table",
    "read_neurosynth",
    "read_neuroquery",
    "fetch",
    "read_nimads",
    "write_nimads",
    "read_neurostore",
    "write_neurostore",
    "fetch_neurostore",
    "neurostore_releases",
    "read_neurovault",
]
