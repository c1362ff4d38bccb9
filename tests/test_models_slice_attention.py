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
