"""Statistical figures of the data chapter (seaborn): distributions by KL grade and by label.

- :func:`plot_kl_distribution`: share of knee time points per KL grade, for each cohort
  table next to the published OAI counts (paper 001);
- :func:`plot_label_prevalences`: label shares with their 95 % CIs
  (:func:`kneelib.data.summary.label_prevalences`) next to the published shares;
- :func:`plot_thickness_by_pain`: the DL-guided cartilage thickness of the released
  per-knee data of Morales et al. 2021 (Table 3) by chronic-pain outcome.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["plot_kl_distribution", "plot_label_prevalences", "plot_thickness_by_pain"]


def plot_kl_distribution(sources: dict[str, pd.DataFrame], published_counts: dict | None = None,
                         published_label: str = "published (paper 001)"):
    """Bars of the KL grade shares (% of knee time points) per source.

    Parameters
    ----------
    sources : dict
        Label -> per-knee table with ``kl_grade``.
    published_counts : dict, optional
        KL grade -> published count, drawn as one more source.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    rows = []
    for label, table in sources.items():
        kl = pd.to_numeric(table["kl_grade"], errors="coerce").dropna().astype(int)
        shares = kl.value_counts(normalize=True).reindex(range(5), fill_value=0.0)
        rows += [{"source": label, "KL grade": g, "percent": 100.0 * s} for g, s in shares.items()]
    if published_counts:
        total = float(sum(published_counts.values()))
        rows += [{"source": published_label, "KL grade": int(g), "percent": 100.0 * n / total}
                 for g, n in published_counts.items()]
    frame = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(8, 3.4))
    sns.barplot(data=frame, x="KL grade", y="percent", hue="source", ax=ax, palette="colorblind")
    ax.set_ylabel("% of knee time points")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("KL grade distribution")
    fig.tight_layout()
    return fig


def plot_label_prevalences(prevalences: dict[str, pd.DataFrame], published: dict[str, float] | None = None,
                           keys=None):
    """Label shares with their 95 % CIs per source, published shares as black bars.

    Parameters
    ----------
    prevalences : dict
        Source label -> :func:`kneelib.data.summary.label_prevalences` table.
    published : dict, optional
        Label key -> published percent.
    keys : sequence of str, optional
        Label keys to show (default: those of ``published``, else all).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    frame = pd.concat([table.assign(source=label) for label, table in prevalences.items()], ignore_index=True)
    keys = list(keys if keys is not None else (published or frame["key"].unique()))
    frame = frame[frame["key"].isin(keys)]
    names = dict(zip(frame["key"], frame["quantity"]))
    order = [names[k] for k in keys if k in names]
    sources = list(prevalences)
    colours = dict(zip(sources, sns.color_palette("colorblind", len(sources))))
    fig, ax = plt.subplots(figsize=(8, 0.65 * len(order) * max(1, len(sources)) + 1.2))
    offsets = np.linspace(-0.2, 0.2, len(sources)) if len(sources) > 1 else [0.0]
    for offset, source in zip(offsets, sources):
        part = frame[frame["source"] == source].set_index("quantity").reindex(order)
        y = np.arange(len(order)) + offset
        err = np.vstack([part["percent"] - part["ci_low"], part["ci_high"] - part["percent"]])
        ax.errorbar(part["percent"], y, xerr=err, fmt="o", color=colours[source], capsize=3, label=source)
    if published:
        for i, name in enumerate(order):
            key = next(k for k, v in names.items() if v == name)
            if key in published:
                ax.plot([published[key]] * 2, [i - 0.35, i + 0.35], color="black", lw=2,
                        label="published" if i == 0 else None)
    ax.set_yticks(range(len(order)), [o.replace(", ", ",\n", 1) for o in order], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("% (95 % CI)")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    sns.despine(ax=ax)
    fig.tight_layout()
    return fig


def plot_thickness_by_pain(tables: dict[str, pd.DataFrame]):
    """Distributions of the DL-guided thickness (DLROI) by chronic-pain outcome, per bone.

    Rows with a zero thickness (no measurement) are left out; each outcome's histogram
    is normalised on its own (``common_norm=False``).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, len(tables), figsize=(4 * len(tables), 3.2), squeeze=False)
    for i, (ax, (bone, table)) in enumerate(zip(axes[0], tables.items())):
        values = table[table["DLROI"] > 0].assign(
            outcome=lambda d: d["Outcome"].map({0: "no chronic pain", 1: "chronic pain"}))
        sns.histplot(data=values, x="DLROI", hue="outcome", hue_order=["no chronic pain", "chronic pain"],
                     stat="density", common_norm=False, bins=30, element="step", ax=ax, legend=i == 0)
        ax.set_title(bone)
        ax.set_xlabel("DL-guided cartilage thickness (mm)")
    fig.suptitle("Released per-knee data of Morales et al. 2021 (zero thickness rows left out)")
    fig.tight_layout()
    return fig
