"""
MKDA density on NiMARE's pain studies
=====================================

Read NiMARE's 21 pain studies (its dataset JSON), fit an MKDA density meta-analysis on
NiMARE's mask, correct it with Bonferroni, and list the clusters.
"""

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import daskmeta
from daskmeta.correct import FWECorrector
from daskmeta.estimators import MKDADensity

# The shared test data sit next to the repository (``../shared/data``); NiMARE ships the
# same file in ``nimare/tests/data``.
root = Path(daskmeta.__file__).resolve().parents[1]
data = root.parent / "shared" / "data" / "nimare-testdata"
ds = daskmeta.io.read(data / "test_pain_dataset.json")
print(ds)

# %%
res = MKDADensity(mask=data / "MNI152_2x2x2_brainmask.nii.gz").fit(ds)
cres = FWECorrector(method="bonferroni").transform(res)
table = cres.get_table("z", threshold=3.09)
print(table.head(10).to_string(index=False))

# %%
# The distribution of the MKDA density statistic over the mask's voxels.
stat = cres.get_map("stat", return_type="array")
fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(stat[stat > 0], bins=40, color="#4c72b0")
ax.set_xlabel("MKDA density")
ax.set_ylabel("voxels")
ax.set_title(f"{np.count_nonzero(stat):,} voxels with a non-zero density")
fig.tight_layout()
plt.show()
