"""Multi-task grading network of paper 004, offline ImageNet weights, loss and schedules."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kneelib.models.multitask import (KL_ONLY, TASK_CLASSES, MultiTaskNet, build_multitask_model,
                                      load_checkpoint, save_checkpoint)
from kneelib.models.pretrained import (PretrainedWeightsUnavailable, imagenet_classifier,
                                       imagenet_state_dict)
from kneelib.train.multitask import (MultiTaskLoss, Phase, RadiographDataset, SelectBestEpoch,
                                     build_learner, fit_phases, make_dataloaders, predict_probabilities,
                                     scratch_phases, transfer_phases)

torch.set_num_threads(1)


def test_seven_heads_with_dropout_and_split_logits():
    model = MultiTaskNet("resnet18").eval()
    assert model.tasks == tuple(TASK_CLASSES)
    for head in model.heads.values():
        assert isinstance(head[0], torch.nn.Dropout) and head[0].p == 0.5
        assert isinstance(head[1], torch.nn.Linear)
    logits = model(torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, sum(TASK_CLASSES.values()))
    parts = model.split_logits(logits)
    assert {k: v.shape[1] for k, v in parts.items()} == dict(TASK_CLASSES)
    assert torch.equal(torch.cat(list(parts.values()), dim=1), logits)


def test_head_subset_and_bad_arguments():
    model = MultiTaskNet("resnet18", tasks=KL_ONLY).eval()
    assert model.tasks == ("kl",)
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 5)
    with pytest.raises(ValueError, match="unknown task"):
        MultiTaskNet("resnet18", tasks=("kl", "sclerosis"))
    with pytest.raises(ValueError, match="not supported"):
        MultiTaskNet("vgg16")


def test_paper_backbones_build():
    for name in ("resnet34", "seresnet50", "seresnext50_32x4d"):
        model = MultiTaskNet(name, tasks=KL_ONLY).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 1, 64, 64)).shape == (1, 5)


def test_offline_imagenet_weights_classify_a_cat():
    from skimage import data, transform

    model = imagenet_classifier("efficientnet_lite0")
    image = transform.resize(data.chelsea(), (224, 224), anti_aliasing=True).astype(np.float32)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = ((torch.from_numpy(image).permute(2, 0, 1) - mean) / std)[None]
    with torch.no_grad():
        top5 = model(x).softmax(1)[0].topk(5).indices.tolist()
    cat_classes = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top5[0] in cat_classes


@pytest.mark.parametrize("arch", ["efficientnet_lite1", "efficientnet_lite2"])
def test_other_lite_checkpoints_match_timm_shapes(arch):
    import timm

    target = timm.create_model(arch, pretrained=False, num_classes=0)
    state = imagenet_state_dict(arch, target)  # raises on any shape mismatch
    assert list(state) == list(target.state_dict())


def test_pretrained_backbone_differs_from_random_and_unavailable_raises():
    torch.manual_seed(0)
    random_model = build_multitask_model("efficientnet_lite0", KL_ONLY, imagenet=False)
    pretrained = build_multitask_model("efficientnet_lite0", KL_ONLY, imagenet=True)
    w_random = random_model.backbone.conv_stem.weight
    w_pretrained = pretrained.backbone.conv_stem.weight
    assert not torch.allclose(w_random, w_pretrained)
    with pytest.raises(PretrainedWeightsUnavailable, match="seresnet50"):
        build_multitask_model("seresnet50", KL_ONLY, imagenet=True)


def test_checkpoint_round_trip(tmp_path):
    model = MultiTaskNet("resnet18", tasks=("kl", "jsn_medial")).eval()
    path = save_checkpoint(model, tmp_path / "m.pt", {"image_size": 32})
    loaded, meta = load_checkpoint(path)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x))
    assert meta == {"image_size": 32} and loaded.tasks == ("kl", "jsn_medial")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt")


def test_multitask_loss_sums_heads_and_ignores_missing():
    loss_fn = MultiTaskLoss({"kl": 5, "jsn_medial": 4})
    torch.manual_seed(0)
    logits = torch.randn(4, 9)
    targets = torch.tensor([[0, 1], [4, -1], [2, 3], [1, -1]])
    expected = F.cross_entropy(logits[:, :5], targets[:, 0]) + \
        F.cross_entropy(logits[[0, 2], 5:], targets[[0, 2], 1])
    assert torch.isclose(loss_fn(logits, targets), expected)
    all_missing = torch.tensor([[0, -1]] * 4)
    assert torch.isclose(loss_fn(logits, all_missing), F.cross_entropy(logits[:, :5], all_missing[:, 0]))
    probabilities = loss_fn.activation(logits)
    assert torch.allclose(probabilities[:, :5].sum(1), torch.ones(4))
    assert loss_fn.decodes(probabilities).shape == (4, 2)


def test_paper_schedules():
    phases = transfer_phases(20)
    assert [(p.n_epochs, p.lr, p.train_backbone) for p in phases] == \
        [(2, 1e-2, False), (1, 1e-3, True), (17, 1e-4, True)]
    assert [p.n_epochs for p in transfer_phases(1)] == [1]


def test_transfer_schedule_decays_at_the_given_share_of_the_epochs():
    phases = transfer_phases(8, head_epochs=1, lrs=(1e-2, 3e-3, 3e-4), decay_at=0.75)
    assert [(p.n_epochs, p.lr, p.train_backbone) for p in phases] == \
        [(1, 1e-2, False), (5, 3e-3, True), (2, 3e-4, True)]
    assert sum(p.n_epochs for p in transfer_phases(3, head_epochs=1, decay_at=0.75)) == 3
    assert [p.n_epochs for p in transfer_phases(4, head_epochs=0, decay_at=1.0)] == [4]
    # decay_at=None is the paper's split, whatever the epoch count
    assert [p.n_epochs for p in transfer_phases(8)] == [2, 1, 5]
    for bad in (dict(decay_at=0.0), dict(decay_at=1.5), dict(head_epochs=-1), dict(lrs=(1e-2, 1e-3))):
        with pytest.raises(ValueError):
            transfer_phases(8, **bad)
    scratch = scratch_phases(20)
    assert [p.n_epochs for p in scratch] == [10, 5, 5]
    assert np.allclose([p.lr for p in scratch], [1e-4, 1e-5, 1e-6])
    assert sum(p.n_epochs for p in scratch_phases(3)) == 3


def _tiny_data():
    rng = np.random.default_rng(0)
    grades = rng.integers(0, 5, size=(24, 1))
    images = (rng.random((24, 36, 36)) * 120).astype(np.uint8)
    for i, g in enumerate(grades[:, 0]):
        images[i, 8:8 + 4 * (g + 1), 10:26] = 250  # brighter area grows with the grade
    return images, grades


def _tiny_run(seed=0, phases=None):
    from fastai.torch_core import set_seed

    set_seed(seed, reproducible=True)
    images, grades = _tiny_data()
    model = build_multitask_model("resnet18", KL_ONLY)
    dls = make_dataloaders(RadiographDataset(images[:16], grades[:16], 32, augment=True),
                           RadiographDataset(images[16:], grades[16:], 32, augment=False), batch_size=8)
    learn = build_learner(model, dls)
    with learn.no_logging(), learn.no_mbar():
        history = fit_phases(learn, transfer_phases(3) if phases is None else phases)
    return history, predict_probabilities(model, images[16:], 32)["kl"], learn


def test_training_is_deterministic_and_selects_best_epoch():
    history_a, probs_a, learn = _tiny_run()
    history_b, probs_b, _ = _tiny_run()
    assert list(history_a["phase"]) == ["heads only", "heads only", "all layers"]
    assert np.allclose(history_a["lr"], [1e-2, 1e-2, 1e-3])
    assert history_a.drop(columns="phase").equals(history_b.drop(columns="phase"))
    assert np.array_equal(probs_a, probs_b)
    best = learn.select_best
    assert best.best_value == pytest.approx(np.nanmax(history_a["kl_kappa"]))
    assert all(p.requires_grad for p in learn.model.parameters())  # unfrozen after training


#: Paper 004's transfer schedule, then one epoch at a learning rate that wrecks the model, so
#: that the best epoch is not the last one and restoring its weights changes the model.
WRECKED_LAST_EPOCH = [*transfer_phases(3), Phase("wrecked", 1, 1.0, True)]


def _check_restored_weights_score_the_best_epoch(history, probabilities, learn):
    """Recompute the validation metrics with the model as it ends and compare with the best row."""
    from kneelib.stats.agreement import balanced_accuracy, quadratic_kappa

    _, grades = _tiny_data()
    reference, predicted = grades[16:, 0], probabilities.argmax(axis=1)
    best_row = history.set_index("epoch").loc[learn.select_best.best_epoch]
    assert best_row["kl_kappa"] == history["kl_kappa"].max()
    # the last epoch scored worse: keeping its weights would not reproduce the best row
    assert history["kl_kappa"].iloc[-1] < best_row["kl_kappa"] - 0.05
    assert quadratic_kappa(reference, predicted, grades=range(5)) == pytest.approx(best_row["kl_kappa"])
    assert balanced_accuracy(reference, predicted) == pytest.approx(best_row["kl_bacc"])


def test_restored_weights_give_the_best_epochs_validation_scores():
    history, probabilities, learn = _tiny_run(phases=WRECKED_LAST_EPOCH)
    assert list(history["phase"])[-1] == "wrecked"
    _check_restored_weights_score_the_best_epoch(history, probabilities, learn)


def test_the_restoration_check_fails_when_the_best_weights_are_not_restored(monkeypatch):
    monkeypatch.setattr(SelectBestEpoch, "restore_best", lambda self: None)
    history, probabilities, learn = _tiny_run(phases=WRECKED_LAST_EPOCH)
    with pytest.raises(AssertionError):
        _check_restored_weights_score_the_best_epoch(history, probabilities, learn)


def test_dataset_crops_and_normalises():
    images = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (3, 40, 1))
    ds = RadiographDataset(images, np.zeros(3, int), 32, augment=False)
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and y.shape == (1,)
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std(unbiased=False)) - 1) < 1e-3
    with pytest.raises(ValueError, match="crop_size"):
        RadiographDataset(images, np.zeros(3, int), 48, augment=False)


def test_random_rotate_zoom_is_identity_when_off_and_moves_content_when_on():
    from kneelib.train.multitask import AugmentationSettings, random_rotate_zoom

    image = torch.zeros(41, 41)
    image[20, 30] = 1.0  # a bright point 10 px right of the centre
    torch.manual_seed(0)
    assert torch.allclose(random_rotate_zoom(image, 0.0, (1.0, 1.0)), image, atol=1e-5)
    # a 90 degree range draws angles whose rotation moves the point off its row; a 2x zoom pushes it outward
    torch.manual_seed(1)
    rotated = random_rotate_zoom(image, 90.0, (1.0, 1.0))
    row, col = np.unravel_index(int(rotated.argmax()), rotated.shape)
    assert abs(np.hypot(row - 20, col - 20) - 10) < 1.5 and (row, col) != (20, 30)
    zoomed = random_rotate_zoom(image, 0.0, (2.0, 2.0))
    row, col = np.unravel_index(int(zoomed.argmax()), zoomed.shape)
    assert row == 20 and abs(col - 40) <= 1
    with pytest.raises(ValueError, match="scale_range"):
        random_rotate_zoom(image, 0.0, (1.2, 1.1))
    assert not AugmentationSettings().geometric and AugmentationSettings(rotation_deg=5).geometric


def test_geometric_augmentation_is_seeded_and_only_in_training():
    from kneelib.train.multitask import AugmentationSettings

    images = np.random.default_rng(0).integers(0, 255, (2, 40, 40), dtype=np.uint8)
    settings = AugmentationSettings(rotation_deg=10, scale_range=(0.9, 1.1))
    train = RadiographDataset(images, np.zeros(2, int), 36, augment=True, augmentation=settings)
    plain = RadiographDataset(images, np.zeros(2, int), 36, augment=True,
                              augmentation=AugmentationSettings(noise_std=0.03))
    torch.manual_seed(3)
    first = train.image_tensor(0)
    torch.manual_seed(3)
    assert torch.equal(first, train.image_tensor(0))
    torch.manual_seed(3)
    assert not torch.allclose(first, plain.image_tensor(0), atol=1e-3)
    evaluation = RadiographDataset(images, np.zeros(2, int), 36, augment=False, augmentation=settings)
    assert torch.equal(evaluation.image_tensor(1), RadiographDataset(images, np.zeros(2, int), 36,
                                                                     augment=False).image_tensor(1))
