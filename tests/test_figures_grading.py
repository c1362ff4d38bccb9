"""Training-curve figure of the grading chapters (kneelib.figures.grading)."""
import matplotlib

matplotlib.use("Agg")

import pandas as pd

from kneelib.figures.grading import plot_history


def _history(fold):
    return pd.DataFrame({"epoch": [1, 2, 3], "lr": [1e-2, 3e-3, 1e-5], "train_loss": [1.6, 1.2, 0.9],
                         "valid_loss": [1.5, 1.3, 1.2 + fold / 10], "kl_kappa": [0.3, 0.5, 0.6],
                         "kl_bacc": [0.25, 0.4, 0.5], "fold": fold})


def test_history_draws_every_fold_with_its_own_label_and_one_model_without_fold_suffix():
    import matplotlib.pyplot as plt

    fig = plot_history(pd.concat([_history(0), _history(1), _history(2)]), held_out_label="held-out loss")
    loss_ax, metric_ax = fig.axes
    labels = [line.get_label() for line in loss_ax.get_lines()]
    assert labels == [f"{kind}, fold {k}" for k in range(3) for kind in ("train loss", "held-out loss")]
    assert len(metric_ax.get_lines()) == 6
    assert list(loss_ax.get_lines()[5].get_ydata()) == [1.5, 1.3, 1.4]
    plt.close(fig)
    fig = plot_history(_history(0), best_epoch=2)
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["train loss", "internal-val loss"]
    assert "selected epoch 2" in [line.get_label() for line in fig.axes[1].get_lines()]
    plt.close(fig)
