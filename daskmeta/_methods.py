"""The methods paragraph of a result and the references it rests on, from its attributes.

Written from :attr:`daskmeta.MetaResult.attrs` alone (the estimator, its kernel parameters,
the data's size, the corrections' parameters), so a result read back from a folder of maps
and its ``provenance.json`` describes itself as the fitted result did. Citation keys are
NiMARE's (``nimare/resources/references.bib``), so the texts and BibTeX of both programs can
be merged.
"""

from __future__ import annotations

__all__ = ["REFERENCES", "describe", "reference_keys", "bibtex"]

#: BibTeX entries by key (those of NiMARE's references.bib that daskmeta's methods cite,
#: and daskmeta's own software references).
REFERENCES = {
    "turkeltaub2002meta": """@article{turkeltaub2002meta,
  title={Meta-analysis of the functional neuroanatomy of single-word reading: method and validation},
  author={Turkeltaub, Peter E and Eden, Guinevere F and Jones, Karen M and Zeffiro, Thomas A},
  journal={Neuroimage}, volume={16}, number={3}, pages={765--780}, year={2002},
  doi={10.1006/nimg.2002.1131}
}""",
    "turkeltaub2012minimizing": """@article{turkeltaub2012minimizing,
  title={Minimizing within-experiment and within-group effects in activation likelihood estimation meta-analyses},
  author={Turkeltaub, Peter E and Eickhoff, Simon B and Laird, Angela R and Fox, Mick and Wiener, Martin and Fox, Peter},
  journal={Human brain mapping}, volume={33}, number={1}, pages={1--13}, year={2012},
  doi={10.1002/hbm.21186}
}""",
    "eickhoff2012activation": """@article{eickhoff2012activation,
  title={Activation likelihood estimation meta-analysis revisited},
  author={Eickhoff, Simon B and Bzdok, Danilo and Laird, Angela R and Kurth, Florian and Fox, Peter T},
  journal={Neuroimage}, volume={59}, number={3}, pages={2349--2361}, year={2012},
  doi={10.1016/j.neuroimage.2011.09.017}
}""",
    "eickhoff2016behavior": """@article{eickhoff2016behavior,
  title={Behavior, sensitivity, and power of activation likelihood estimation characterized by massive empirical simulation},
  author={Eickhoff, Simon B and Nichols, Thomas E and Laird, Angela R and Hoffstaedter, Felix and Amunts, Katrin and Fox, Peter T and Bzdok, Danilo and Eickhoff, Claudia R},
  journal={Neuroimage}, volume={137}, pages={70--85}, year={2016},
  doi={10.1016/j.neuroimage.2016.04.072}
}""",
    "wager2007meta": """@article{wager2007meta,
  title={Meta-analysis of functional neuroimaging data: current and future directions},
  author={Wager, Tor D and Lindquist, Martin and Kaplan, Lauren},
  journal={Social cognitive and affective neuroscience}, volume={2}, number={2},
  pages={150--158}, year={2007}, doi={10.1093/scan/nsm015}
}""",
    "wager2003valence": """@article{wager2003valence,
  title={Valence, gender, and lateralization of functional brain anatomy in emotion: a meta-analysis of findings from neuroimaging},
  author={Wager, Tor D and Phan, K Luan and Liberzon, Israel and Taylor, Stephan F},
  journal={Neuroimage}, volume={19}, number={3}, pages={513--531}, year={2003},
  doi={10.1016/S1053-8119(03)00078-8}
}""",
    "wager2004neuroimaging": """@article{wager2004neuroimaging,
  title={Neuroimaging studies of shifting attention: a meta-analysis},
  author={Wager, Tor D and Jonides, John and Reading, Susan},
  journal={Neuroimage}, volume={22}, number={4}, pages={1679--1693}, year={2004},
  doi={10.1016/j.neuroimage.2004.03.052}
}""",
    "bonferroni1936teoria": """@article{bonferroni1936teoria,
  title={Teoria statistica delle classi e calcolo delle probabilita},
  author={Bonferroni, Carlo},
  journal={Pubblicazioni del R Istituto Superiore di Scienze Economiche e Commericiali di Firenze},
  volume={8}, pages={3--62}, year={1936}
}""",
    "lancaster2007bias": """@article{lancaster2007bias,
  title={Bias between MNI and Talairach coordinates analyzed using the ICBM-152 brain template},
  author={Lancaster, Jack L and Tordesillas-Guti{\\'e}rrez, Diana and Martinez, Michael and Salinas, Felipe and Evans, Alan and Zilles, Karl and Mazziotta, John C and Fox, Peter T},
  journal={Human brain mapping}, volume={28}, number={11}, pages={1194--1205}, year={2007},
  doi={10.1002/hbm.20345}
}""",
    "Salo2023": """@article{Salo2023,
  title={NiMARE: Neuroimaging Meta-Analysis Research Environment},
  author={Salo, Taylor and Yarkoni, Tal and Nichols, Thomas E. and Poline, Jean-Baptiste and Bilgel, Murat and Bottenhorn, Katherine L. and Jarecka, Dorota and Kent, James D. and Kimbler, Adam and Nielson, Dylan M. and Oudyk, Kendra M. and Peraza, Julio A. and P{\\'e}rez, Alexandre and Reeders, Puck C. and Yanes, Julio A. and Laird, Angela R.},
  journal={Aperture Neuro}, volume={3}, pages={1--32}, year={2023},
  doi={10.52294/001c.87681}
}""",
    "rocklin2015dask": """@inproceedings{rocklin2015dask,
  title={Dask: Parallel Computation with Blocked algorithms and Task Scheduling},
  author={Rocklin, Matthew},
  booktitle={Proceedings of the 14th Python in Science Conference}, pages={126--132},
  year={2015}, doi={10.25080/Majora-7b98e3ed-013}
}""",
}

_KERNEL_KEYS = {"ALE": ["turkeltaub2002meta", "turkeltaub2012minimizing",
                        "eickhoff2012activation"],
                "MKDADensity": ["wager2007meta"],
                "KDA": ["wager2003valence", "wager2004neuroimaging"]}


def _n(value) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


def _kernel_text(attrs: dict) -> str:
    est = attrs.get("estimator")
    if est == "ALE":
        if attrs.get("kernel__fwhm") is not None:
            width = f"a full width at half maximum of {float(attrs['kernel__fwhm']):g} mm"
        elif attrs.get("kernel__sample_size") is not None:
            width = ("a full width at half maximum corresponding to a sample size of "
                     f"{float(attrs['kernel__sample_size']):g} (Eickhoff et al., 2012)")
        else:
            width = ("full widths at half maximum set for each experiment from its sample "
                     "size (Eickhoff et al., 2012)")
        return ("Each experiment's foci were turned into a modeled activation (MA) map with "
                f"a Gaussian kernel of {width}, keeping at each voxel the largest value over "
                "the experiment's foci (Turkeltaub et al., 2012). The ALE statistic is "
                "1 - prod(1 - MA) over experiments (Turkeltaub et al., 2002; Eickhoff et al., "
                "2012).")
    r = attrs.get("kernel__r", 10)
    value = attrs.get("kernel__value", 1)
    if est == "MKDADensity":
        weighting = attrs.get("weighting")
        weights = (" weighted by the square root of each experiment's sample size"
                   if weighting == "sample_size" else "")
        return ("Each experiment's foci were turned into a binary modeled activation map: "
                f"spheres of radius {r} mm and value {value}, overlapping spheres keeping "
                "the maximum (the MKDA kernel; Wager et al., 2007). The MKDA density "
                f"statistic is the sum of these maps over experiments{weights}.")
    if est == "KDA":
        return ("Each experiment's foci were turned into a modeled activation map of "
                f"spheres of radius {r} mm and value {value}, summed within the experiment "
                "(the KDA kernel; Wager et al., 2003, 2004). The KDA statistic is the sum of "
                "these maps over experiments.")
    return f"The {est} estimator was fitted."


def _correction_text(attrs: dict) -> str:
    parts = []
    if "fwe_montecarlo_n_iters" in attrs:
        n_run = attrs.get("fwe_montecarlo_n_iters_run", attrs["fwe_montecarlo_n_iters"])
        thresh = attrs.get("fwe_montecarlo_voxel_thresh")
        voxel_only = bool(attrs.get("fwe_montecarlo_vfwe_only"))
        what = ("the maximum statistic" if voxel_only else
                "the maximum statistic, and the largest size and mass of clusters "
                f"formed at an uncorrected p < {thresh:g} with faces connectivity")
        parts.append(
            "Family-wise error was controlled with a Monte Carlo null distribution "
            f"(Eickhoff et al., 2012): {_n(n_run)} data sets of the same experiments with "
            "their foci drawn at random in the mask, each contributing " + what
            + f" (seed {attrs.get('fwe_montecarlo_seed')}; batches of "
            f"{attrs.get('fwe_montecarlo_batch_size')} iterations run as Dask tasks, so "
            "the null does not depend on the number of workers).")
    if "fwe_bonferroni_n_tests" in attrs:
        parts.append("Family-wise error was controlled with the Bonferroni correction over "
                     f"{_n(attrs['fwe_bonferroni_n_tests'])} voxels (Bonferroni, 1936).")
    return " ".join(parts)


def reference_keys(attrs: dict) -> list[str]:
    """The BibTeX keys (of :data:`REFERENCES`) that the description of ``attrs`` cites."""
    keys = list(_KERNEL_KEYS.get(attrs.get("estimator"), []))
    if "fwe_montecarlo_n_iters" in attrs and "eickhoff2012activation" not in keys:
        keys.append("eickhoff2012activation")
    if "fwe_bonferroni_n_tests" in attrs:
        keys.append("bonferroni1936teoria")
    if attrs.get("tal2mni"):
        keys.append("lancaster2007bias")
    keys += ["Salo2023", "rocklin2015dask"]
    return keys


def describe(attrs: dict) -> str:
    """A methods paragraph for a result with attributes ``attrs`` (plain text, citing the
    works of :func:`reference_keys` by author and year)."""
    est = attrs.get("estimator", "an unknown estimator")
    n_exp, n_foci = attrs.get("n_experiments"), attrs.get("n_foci")
    selection = attrs.get("selection")
    data = f"{_n(n_exp)} experiments with {_n(n_foci)} foci"
    if isinstance(selection, str) and selection not in ("", "all"):
        threshold = attrs.get("label_threshold")
        data += (f", selected by the label expression {selection!r}"
                 + (f" (label weight > {threshold:g})" if threshold is not None else ""))
    space = attrs.get("mask_source", "a brain mask")
    text = [
        f"A coordinate-based meta-analysis ({est}) of {data} was performed with daskmeta "
        f"{attrs.get('daskmeta_version', '')}".rstrip() + " (on Dask; Rocklin, 2015), "
        "which follows NiMARE's statistics (Salo et al., 2023).",
        f"Foci were analysed in MNI space on the mask {space} "
        f"({_n(attrs.get('mask_n_voxels'))} voxels); Talairach coordinates, if any, were "
        "converted to MNI with the icbm2tal transform of Lancaster et al. (2007).",
        _kernel_text(attrs),
    ]
    if attrs.get("null_method") == "approximate":
        text.append("Voxel-wise p-values were computed from the analytic (approximate) null "
                    "distribution of the statistic, assuming foci spread uniformly in the "
                    "mask (Eickhoff et al., 2012).")
    text.append(_correction_text(attrs))
    return " ".join(t for t in text if t)


def bibtex(attrs: dict) -> str:
    """The BibTeX entries of the works the description of ``attrs`` cites."""
    return "\n\n".join(REFERENCES[k] for k in reference_keys(attrs)) + "\n"
