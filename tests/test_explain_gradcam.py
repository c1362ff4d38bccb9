"""Grad-CAM per head of the multi-task network."""
import numpy as np
import pytest
import torch
from torch import nn

from kneelib.explain.gradcam import grad_cam, plot_grad_cams, upsample_cams
from kneelib.explain.pointing import pointing_hit
from kneelib.models.multitask import MultiTaskNet

torch.set_num_threads(1)


class BrightSpotNet(nn.Module):
    """A two-head stand-in with a known answer: head "kl" scores brightness, "jsn_medial" darkness.

    Feature channel 0 is the image itself (pooled 4x), channel 1 its complement; the grade-1 logit
    of "kl" weights channel 0, the grade-1 logit of "jsn_medial" weights channel 1.
    """

    task_classes = {"kl": 2, "jsn_medial": 2}

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(4)
        self.heads = nn.Linear(2, 4, bias=False)
        with torch.no_grad():
            self.heads.weight.copy_(torch.tensor([[0., 0.], [1., 0.], [0., 0.], [0., 1.]]))

    def task_slices(self):
        return {"kl": slice(0, 2), "jsn_medial": slice(2, 4)}

    def forward_features(self, x):
        pooled = self.pool(x)
        return torch.cat([pooled, 1.0 - pooled], dim=1)

    def forward_heads(self, features):
        return self.heads(features.mean(dim=(2, 3)))


def _image_with_spot(row, col, size=64):
    image = torch.full((1, 1, size, size), 0.5)
    image[0, 0, row - 4:row + 4, col - 4:col + 4] = 1.0
    return image


def test_cam_points_at_the_evidence_of_each_head():
    model = BrightSpotNet()
    image = _image_with_spot(12, 48)
    cams, grades = grad_cam(model, image, "kl", target_grades=1)
    assert cams.shape == (1, 16, 16) and grades.tolist() == [1]
    assert cams.max() == pytest.approx(1.0) and cams.min() >= 0
    mask = np.zeros((64, 64), bool)
    mask[8:16, 44:52] = True
    assert pointing_hit(cams[0], mask)
    # the other head explains "darkness": its map is zero on the bright spot
    cams_jsn, _ = grad_cam(model, image, "jsn_medial", target_grades=1)
    up = upsample_cams(cams_jsn, (64, 64))[0]
    assert up[12, 48] < 0.1 * up.max()


def test_grad_cam_on_multitask_net_shapes_and_errors():
    torch.manual_seed(0)
    model = MultiTaskNet("resnet18", tasks=("kl", "osteophyte_fl"))
    for p in model.backbone.parameters():  # a frozen backbone must still give maps
        p.requires_grad_(False)
    x = torch.randn(3, 1, 64, 64)
    cams, grades = grad_cam(model, x, "osteophyte_fl")
    assert cams.shape == (3, 2, 2) and grades.shape == (3,)
    assert ((0 <= grades) & (grades < 4)).all()
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="no head"):
        grad_cam(model, x, "jsn_lateral")
    with pytest.raises(ValueError, match="target grades"):
        grad_cam(model, x, "kl", target_grades=7)


def test_plot_grad_cams_returns_figure():
    import matplotlib

    matplotlib.use("Agg")
    fig = plot_grad_cams(np.random.default_rng(0).random((3, 32, 32)), np.ones((3, 4, 4)),
                         titles=["a", "b", "c"], ncols=2)
    assert len(fig.axes) == 4
