import pytest
import torch

from liser_common.metrics import classification_metrics, mean_std


def test_metrics_by_hand_on_an_imbalanced_example():
    # 3 classes; class 0 has 4 clips (3 right), class 1 has 2 (1 right), class 2 has 1 (1 right)
    target = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 0, 1, 1, 0, 2])
    m, cm = classification_metrics(preds, target, 3)
    assert m["accuracy"] == pytest.approx(5 / 7)  # WA
    assert m["uar"] == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)  # UA: mean per-class recall
    # per-class F1: c0 p=3/4 r=3/4 -> .75 ; c1 p=1/2 r=1/2 -> .5 ; c2 -> 1
    assert m["macro_f1"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert cm.tolist() == [[3, 1, 0], [1, 1, 0], [0, 0, 1]]


def test_scores_are_argmaxed():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    m, _ = classification_metrics(scores, torch.tensor([0, 1, 1]), 2)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["uar"] == pytest.approx((1 + 0.5) / 2)


def test_mean_std_is_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([0.5]) == (0.5, 0.0)
