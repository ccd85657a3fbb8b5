"""
ALE with Monte Carlo FWE correction on simulated data
=====================================================

Simulate a seeded dataset around known true sites, fit an ALE meta-analysis, correct it
with a Monte Carlo null (a few hundred iterations here; use 10,000 for real work), and look
at the clusters that survive.
"""

# %%
import matplotlib.pyplot as plt
from nilearn import plotting

from daskmeta import simulate
from daskmeta.correct import FWECorrector
from daskmeta.estimators import ALE

sim = simulate.coordinates(n_experiments=25, seed=0)
print(sim.dataset)
print("true sites (mm):", sim.true_sites)

# %%
# Fit, then correct. The null's batches are Dask tasks seeded from ``seed``: the result is
# the same on any number of workers.
res = ALE().fit(sim.dataset)
cres = FWECorrector(method="montecarlo", n_iters=200, seed=1, progress=False).transform(res)
print(cres)

# %%
# The clusters that survive cluster-level FWE correction (corrected p < 0.05), with their
# peaks in the uncorrected z map.
table = cres.get_table("z_desc-size_level-cluster_corr-FWE_method-montecarlo")
print(table.to_string(index=False))

# %%
# The uncorrected z map, cut at z > 3.09 (p < 0.001).
fig = plt.figure(figsize=(9, 3))
plotting.plot_glass_brain(cres.get_map("z"), threshold=3.09, plot_abs=False, colorbar=True,
                          display_mode="lyrz", figure=fig, cmap="inferno")
plt.show()

# %%
# The methods paragraph of the result, for a paper (its references are in ``cres.bibtex``).
print(cres.description)
