"""ALESubtraction's ``FWECorrector(method="montecarlo", target=...)`` (NiMARE 0.22.1's
``correct_fwe_montecarlo(target=)``): ``"main-effects"`` corrects each group's one-sample
ALE maps with the one-sample ALE Monte Carlo (foci relocated uniformly in the mask, the
group's own experiments, kernels and approximate null), ``"all"`` that and the difference
map (``"pairwise"``).

Each group's correction is that of an :class:`~daskmeta.estimators.ALE` fit of the group
(from the fit's Dataset, or its Collection's rows), whose ``stat`` / ``p`` / ``z`` maps are
the subtraction's ``{stat,p,z}_desc-group{1,2}``; its maps are renamed as NiMARE's
``_prefix_ale_group_maps`` does: ``z_level-voxel`` -> ``z_desc-group1_level-voxel``,
``z_desc-size_level-cluster`` -> ``z_desc-group1Size_level-cluster``, ... (then suffixed
``_corr-FWE_method-montecarlo``).
"""

from __future__ import annotations

import copy

import numpy as np

__all__ = ["correct_targets"]

_SUFFIX = "_corr-FWE_method-montecarlo"


def _group_name(name: str, label: str) -> str | None:
    """NiMARE's name of a one-sample ALE corrected map inside a pairwise result."""
    base = name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else None
    if base is None:
        return None
    kind, _, rest = base.partition("_")
    if rest == "level-voxel":
        return f"{kind}_desc-{label}_level-voxel{_SUFFIX}"
    for word in ("size", "mass"):
        if rest == f"desc-{word}_level-cluster":
            return f"{kind}_desc-{label}{word.capitalize()}_level-cluster{_SUFFIX}"
    return None


def _group_null_name(name: str, label: str) -> str:
    """``values_level-voxel_...`` -> ``values_desc-group1_level-voxel_...``,
    ``values_desc-size_level-cluster_...`` -> ``values_desc-group1size_level-cluster_...``
    (MKDAChi2's pattern for its per-test nulls)."""
    if name.startswith("values_level-"):
        return name.replace("values_", f"values_desc-{label}_", 1)
    return name.replace("values_desc-", f"values_desc-{label}", 1)


def _group_seeds(seed) -> tuple[int, int, int]:
    """``(root, seed1, seed2)``: the two groups' Monte Carlo seeds, spawned from ``seed``
    (drawn from OS entropy when None, and recorded)."""
    root = seed if seed is not None else int(
        np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
    children = np.random.SeedSequence(int(root)).spawn(2)
    return (int(root),) + tuple(int(c.generate_state(1, np.uint64)[0] >> np.uint64(1))
                                for c in children)


def group_fit(est, group: int):
    """An ALE fit of group ``group`` (0 or 1) of the fitted ALESubtraction snapshot ``est``:
    from its Dataset, or from the rows of its Collection."""
    from daskmeta.estimators.ale import ALE

    ids = list(np.asarray(est.dataset_.ids)[est.groups_[group]])
    ale = ALE(kernel_transformer=est.kernel_, mask=est.mask, mask_margin=est.mask_margin,
              chunk_size=est.chunk_size)
    source = est.dataset_ if est.collection_ is None else est.collection_
    return ale.fit(source, select=ids)


def correct_targets(est, result, corrector, target: str):
    """``result`` with the maps of ``target`` (``"main-effects"`` or ``"all"``) added."""
    out = result
    if target == "all":
        pairwise = copy.copy(corrector)
        pairwise.target = "pairwise"
        out = est._correct_fwe_montecarlo(result, pairwise)
    root, *seeds = _group_seeds(corrector.seed)
    maps, nulls, attrs = {}, {}, {"fwe_montecarlo_target": target,
                                  "fwe_montecarlo_main_effects_seed": root}
    for group, seed in enumerate(seeds):
        label = f"group{group + 1}"
        one = copy.copy(corrector)
        one.target, one.seed = None, seed
        fitted = one.transform(group_fit(est, group))
        for name in fitted.map_names:
            new = _group_name(name, label)
            if new is not None and name not in result.maps:
                maps[new] = fitted.get_map(name, "array")
        nulls.update({_group_null_name(k, label): v
                      for k, v in fitted.null_distributions.items()})
        attrs[f"fwe_montecarlo_{label}_seed"] = seed
        if "fwe_montecarlo_cluster_threshold" in fitted.attrs:
            attrs[f"fwe_montecarlo_{label}_cluster_threshold"] = float(
                fitted.attrs["fwe_montecarlo_cluster_threshold"])
    for key in ("fwe_montecarlo_n_iters", "fwe_montecarlo_voxel_thresh",
                "fwe_montecarlo_vfwe_only"):
        attrs.setdefault(key, fitted.attrs[key])
    out = out.copy()
    out.add_maps(maps, attrs=attrs, nulls=nulls)
    return out
