"""The causal model of the synthetic cohort drawn as a graph (:func:`plot_causal_dag`).

Matplotlib only (no graphviz). Edge labels are read from the effect sizes the cohort was
generated with (:class:`kneelib.synth.causal.EffectSizes`), so the figure never goes out
of date with the model.
"""
from __future__ import annotations

__all__ = ["NODE_KINDS", "dag_layout", "plot_causal_dag"]


#: Node styles of the DAG: (face colour, edge style, legend text).
NODE_KINDS = {
    "observed": ("#cfe2f3", "solid", "in the OAI tables (demographics, questionnaires)"),
    "latent": ("#eeeeee", "dashed", "latent (ground truth only)"),
    "structure": ("#fce5cd", "solid", "structure seen in the images (ground-truth lesion masks)"),
    "grade": ("#d9ead3", "solid", "radiographic readings (kXR tables)"),
    "outcome": ("#e6d4f0", "solid", "study labels"),
}


def dag_layout(effects) -> tuple[dict, list]:
    """Nodes ``name -> (x, y, text, kind)`` and edges ``(source, target, label, style[, rad, t])``.

    ``rad`` bends an edge (matplotlib ``arc3``), ``t`` places its label along it.
    """
    e = effects
    nodes = {
        "age": (0.0, 9.0, "age", "observed"), "sex": (0.0, 7.6, "sex", "observed"),
        "bmi": (0.0, 6.2, "BMI", "observed"), "race": (0.0, 4.8, "race", "observed"),
        "subject_oa": (2.7, 8.3, "subject OA\nliability", "latent"),
        "widespread": (2.7, 3.2, "widespread\npain", "observed"),
        "sensitivity": (2.7, 1.5, "pain\nsensitivity", "latent"),
        "knee_sev": (5.1, 8.3, "knee OA severity\n(R, L; r = 0.74)", "latent"),
        "compartment": (5.1, 6.5, "compartment\nseverity M / L / PF", "latent"),
        "jsw": (7.9, 9.6, "joint space width", "structure"),
        "osteophytes": (7.9, 8.7, "osteophytes", "structure"),
        "sclerosis": (7.9, 7.8, "sclerosis", "structure"),
        "cartilage": (7.9, 6.9, "cartilage thinning,\nfocal loss, T2", "structure"),
        "meniscus": (7.9, 5.9, "meniscal damage", "structure"),
        "effusion": (7.9, 5.0, "effusion-synovitis", "structure"),
        "hoffa": (7.9, 4.1, "Hoffa-synovitis", "structure"),
        "bml": (7.9, 3.2, "bone marrow lesions", "structure"),
        "jsn": (10.6, 9.6, "OARSI JSN 0-3", "grade"),
        "kl": (13.0, 9.1, "KL 0-4 (from JSN and\nOARSI osteophytes)", "grade"),
        "progression": (10.6, 6.9, "12-month medial\nJSW loss", "latent"),
        "pain": (10.6, 3.6, "knee pain\nliability", "latent"),
        "progressor": (13.3, 6.9, f"measured change (noise SD {e.jsw_measurement_sd_mm:g} mm)\n"
                                  "<= -0.5 mm: progressor", "outcome"),
        "womac": (13.3, 5.0, "WOMAC pain 0-20", "outcome"),
        "frequent": (13.3, 3.9, "frequent pain\n(unilateral: paper 000)", "outcome"),
        "chronic": (13.3, 2.5, "chronic pain > 6 of 12 months\n(paper 001)", "outcome"),
    }
    edges = [
        ("age", "subject_oa", f"{e.severity_per_decade:g}/decade", "solid"),
        ("sex", "subject_oa", "", "solid"), ("race", "subject_oa", "", "solid"),
        ("bmi", "subject_oa", f"{e.severity_per_5bmi:g}/5 kg/m²", "solid"),
        ("sex", "widespread", f"OR {e.widespread_pain_or_female:g}", "solid"),
        ("bmi", "widespread", "", "solid"),
        ("sex", "sensitivity", "", "solid"),
        ("widespread", "sensitivity", f"+{e.pain_widespread:g}", "solid"),
        ("subject_oa", "knee_sev", "", "solid"), ("knee_sev", "compartment", "", "solid"),
        ("compartment", "jsw", "", "solid"), ("compartment", "osteophytes", "", "solid"),
        ("compartment", "sclerosis", "", "solid"), ("compartment", "cartilage", "", "solid"),
        ("compartment", "meniscus", "", "solid"), ("compartment", "bml", "", "solid"),
        ("knee_sev", "effusion", "", "solid"), ("effusion", "hoffa", "", "solid"),
        ("jsw", "jsn", "", "solid"), ("jsn", "kl", "", "solid"), ("osteophytes", "kl", "", "solid"),
        ("effusion", "pain", f"{e.pain_effusion:g}/grade", "solid"),
        ("bml", "pain", f"{e.pain_bml:g}/grade", "solid"),
        ("hoffa", "pain", f"{e.pain_hoffa:g}", "solid"),
        ("cartilage", "pain", f"{e.pain_cartilage_loss:g}", "solid"),
        ("meniscus", "pain", f"{e.pain_meniscus:g}", "solid"),
        ("jsn", "pain", f"{e.pain_jsn:g}", "solid", 0.3, 0.75),
        ("sensitivity", "pain", f"SD {e.pain_subject_sd:g}", "solid"),
        ("pain", "womac", "", "solid"), ("pain", "frequent", "", "solid"), ("pain", "chronic", "", "solid"),
        ("widespread", "chronic", "excluded", "dashed"),
        ("compartment", "progression", f"{e.rapid_logit_severity:g} logit", "solid", 0.04, 0.72),
        ("meniscus", "progression", f"{e.rapid_logit_meniscus:g}", "solid"),
        ("effusion", "progression", f"{e.rapid_logit_effusion:g}", "solid"),
        ("progression", "progressor", "", "solid"),
    ]
    return nodes, edges


def plot_causal_dag(effects=None):
    """The causal model of :mod:`kneelib.synth.causal` as a DAG (matplotlib, no graphviz).

    Node colours say where a variable can be seen: in the OAI clinical tables, in the
    radiograph readings, in the images (and the ground-truth lesion masks), or only in
    the ground truth (latent). Edge labels give the main effect sizes, read from
    ``effects`` (default :data:`kneelib.synth.causal.DEFAULT_EFFECTS`), so the figure
    always shows the values the cohort was generated with.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from kneelib.synth.causal import DEFAULT_EFFECTS

    nodes, edges = dag_layout(effects or DEFAULT_EFFECTS)
    fig, ax = plt.subplots(figsize=(15, 8.2))
    boxes = {}
    for name, (x, y, text, kind) in nodes.items():
        face, style, _ = NODE_KINDS[kind]
        boxes[name] = ax.text(x, y, text, ha="center", va="center", fontsize=9, zorder=3,
                              bbox=dict(boxstyle="round,pad=0.35", facecolor=face, edgecolor="#555555",
                                        linestyle=style))
    fig.canvas.draw()  # sizes the boxes so that arrows stop at their edges
    for source, target, label, style, *bend in edges:
        rad, t = bend if bend else (0.04, 0.62)
        (x0, y0), (x1, y1) = nodes[source][:2], nodes[target][:2]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=2,
                    arrowprops=dict(arrowstyle="-|>", color="#444444", lw=0.9, linestyle=style,
                                    patchA=boxes[source].get_bbox_patch(), patchB=boxes[target].get_bbox_patch(),
                                    shrinkA=2, shrinkB=2, connectionstyle=f"arc3,rad={rad}"))
        if label:
            # point t of the quadratic Bezier curve of matplotlib's arc3 (control point: chord
            # midpoint + rad * (dy, -dx))
            bend_share = 2 * t * (1 - t)
            mid_x = x0 + t * (x1 - x0) + bend_share * rad * (y1 - y0)
            mid_y = y0 + t * (y1 - y0) - bend_share * rad * (x1 - x0)
            ax.text(mid_x, mid_y, label, fontsize=7, color="#1f4e79",
                    ha="center", va="center", zorder=4,
                    bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none", alpha=0.85))
    ax.text(7.9, 1.7, "every structure is rendered into the MRI series\nand the bilateral radiograph "
            "(kneelib.synth.anatomy, .mri, .radiograph)", ha="center", va="center", fontsize=8, style="italic")
    ax.set_xlim(-1.0, 14.9)
    ax.set_ylim(0.6, 10.3)
    ax.set_axis_off()
    ax.legend(handles=[Patch(facecolor=face, edgecolor="#555555", linestyle=style, label=text)
                       for face, style, text in NODE_KINDS.values()],
              loc="lower left", fontsize=8, frameon=False, ncol=2, bbox_to_anchor=(0.0, -0.06))
    ax.set_title("Causal model of the synthetic cohort (numbers: effect sizes on the liability scale)")
    fig.tight_layout()
    return fig
