"""The slice-attention network of paper 002 (2.4.2) and its fastai cross-validation on tiny seeded data."""
import numpy as np
import pytest
import torch

from kneelib.models.slice_attention import SliceAttentionNet, masked_softmax
from kneelib.train.slice_attention import AttentionTrainConfig, cross_validate_attention, train_attention_model
from kneelib.train.splits import stratified_kfold


def test_masked_softmax_zero_on_padding_and_sums_to_one():
    scores = torch.tensor([[1.0, 2.0, 3.0], [5.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    weights = masked_softmax(scores, mask)
    assert weights[0, 2] == 0 and weights[1, 1:].abs().sum() == 0
    torch.testing.assert_close(weights.sum(1), torch.ones(2))
    with pytest.raises(ValueError, match="no slice"):
        masked_softmax(scores, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError):
        masked_softmax(scores, mask[:, :2])


def test_network_shapes_attention_and_padding_invariance():
    torch.manual_seed(0)
    net = SliceAttentionNet(n_features=12, n_clinical=2, conv_channels=8, gru_hidden=4, mlp_hidden=8).eval()
    x = torch.randn(3, 5, 12)
    mask = torch.ones(3, 5, dtype=torch.bool)
    clinical = torch.randn(3, 2)
    logits = net(x, mask, clinical)
    assert logits.shape == (3, 2) and net.last_attention.shape == (3, 5)
    # padding: garbage in masked slices changes nothing
    mask[0, 3:] = False
    y = x.clone()
    y[0, 3:] = 100.0
    torch.testing.assert_close(net(x, mask, clinical)[0], net(y, mask, clinical)[0])
    assert float(net.last_attention[0, 3:].abs().sum()) == 0.0
    with pytest.raises(ValueError):
        net(x[:, :, :5], mask, clinical)
    with pytest.raises(ValueError):
        net(x, mask, clinical[:, :1])
    with pytest.raises(ValueError):
        SliceAttentionNet(n_features=12, kernel_size=2)


def _bags(seed=0, n=120, slices=6, features=8):
    """Positive knees carry a signal on one slice only: attention must find it."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, slices, features)).astype(np.float32)
    y = (np.arange(n) % 3 == 0).astype(int)
    hot = rng.integers(0, slices, n)
    x[y == 1, hot[y == 1], 0] += 5.0
    return x, np.ones((n, slices), bool), rng.normal(size=(n, 1)), y, hot


def test_cross_validation_learns_a_planted_slice_signal_and_attends_to_it():
    torch.set_num_threads(1)
    x, mask, clinical, y, hot = _bags()
    groups = np.repeat(np.arange(len(y) // 2), 2)
    fold = stratified_kfold(y, 3, groups=groups, seed=0)
    config = AttentionTrainConfig(epochs=25, lr=3e-3, batch_size=16, conv_channels=8, gru_hidden=8, mlp_hidden=16,
                                  dropout=0.0)
    cv = cross_validate_attention("toy", x, mask, clinical, y, fold, config)
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(y, cv.probability) > 0.8
    positives = np.flatnonzero(y == 1)
    on_hot = cv.attention[positives, hot[positives]].mean()
    assert on_hot > 1.5 / x.shape[1]  # clearly more than uniform attention
    assert np.isfinite(cv.probability).all() and len(cv.models) == 3


def test_training_typed_errors():
    x, mask, clinical, y, _ = _bags(n=20)
    with pytest.raises(ValueError, match="both classes"):
        train_attention_model(x, mask, clinical, np.zeros(20, int), np.arange(20))
    bad = clinical.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="missing"):
        train_attention_model(x, mask, bad, y, np.arange(20))
    empty = mask.copy()
    empty[3] = False
    with pytest.raises(ValueError, match="no slice"):
        train_attention_model(x, empty, clinical, y, np.arange(20))


def test_fold_standardisation_principal_axes_come_from_training_knees_only():
    from kneelib.train.slice_attention import FoldStandardisation

    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5, 12)) @ rng.normal(size=(12, 12))  # correlated features
    mask = np.ones((40, 5), bool)
    mask[3, 4] = False
    clinical = rng.normal(size=(40, 2))
    train = np.arange(30)
    standard = FoldStandardisation.fit(x, mask, clinical, train, n_components=4)
    assert standard.components.shape == (4, 12) and standard.n_inputs == 4
    scaled, clin = standard.apply(x, mask, clinical)
    assert scaled.shape == (40, 5, 4) and float(np.abs(scaled[3, 4]).max()) == 0.0
    present = scaled[train][mask[train]]
    np.testing.assert_allclose(present.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(present.std(0, ddof=1), 1, rtol=1e-3)  # whitened on the training slices
    # the held-out knees do not enter the fit
    other = x.copy()
    other[30:] += 100.0
    np.testing.assert_allclose(FoldStandardisation.fit(other, mask, clinical, train, 4).components, standard.components)
    # the differentiable transform (Grad-CAM path) is the same map
    torch_scaled = standard.transform_torch(torch.as_tensor(x[0], dtype=torch.float32)).numpy()
    np.testing.assert_allclose(torch_scaled, scaled[0], rtol=1e-4, atol=1e-4)
    assert FoldStandardisation.fit(x, mask, clinical, train).components is None
    with pytest.raises(ValueError, match="n_components"):
        FoldStandardisation.fit(x, mask, clinical, train, n_components=13)
    with pytest.raises(ValueError, match="n_components"):
        AttentionTrainConfig(n_components=0)


def test_cross_validation_on_principal_axes_still_finds_the_planted_slice_signal():
    """All 8 axes: the whitened rotation keeps the planted direction (with fewer, whether the
    planted feature survives depends on the noise's spectrum, not on the code)."""
    torch.set_num_threads(1)
    x, mask, clinical, y, _ = _bags(seed=2)
    groups = np.repeat(np.arange(len(y) // 2), 2)
    fold = stratified_kfold(y, 3, groups=groups, seed=0)
    config = AttentionTrainConfig(epochs=25, lr=3e-3, batch_size=16, conv_channels=8, gru_hidden=8, mlp_hidden=16,
                                  dropout=0.0, n_components=8)
    cv = cross_validate_attention("toy", x, mask, clinical, y, fold, config)
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(y, cv.probability) > 0.8
    assert cv.models[0].n_features == 8 and cv.standardisations[0].components.shape == (8, x.shape[2])


def test_folds_on_two_workers_give_the_sequential_result():
    """Every fold seeds itself: spreading folds over processes changes no number (paper 002, 2.2.3)."""
    torch.set_num_threads(1)
    x, mask, clinical, y, _ = _bags()
    fold = stratified_kfold(y, 3, groups=np.repeat(np.arange(len(y) // 2), 2), seed=0)
    config = AttentionTrainConfig(epochs=3, lr=3e-3, batch_size=16, conv_channels=4, gru_hidden=4, mlp_hidden=8)
    one = cross_validate_attention("toy", x, mask, clinical, y, fold, config, n_jobs=1)
    two = cross_validate_attention("toy", x, mask, clinical, y, fold, config, n_jobs=2)
    np.testing.assert_array_equal(one.probability, two.probability)
    np.testing.assert_array_equal(one.attention, two.attention)
    assert len(two.models) == 3
