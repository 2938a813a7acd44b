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


def test_uar_and_macro_f1_average_the_classes_the_test_split_holds():
    """A class with no test clip that the model predicts is not a class of recall 0: UAR and
    macro-F1 are the means over the classes present (scikit-learn with labels=present), as the
    per-speaker UAR, the chance level 1/present and the flag test_classes_missing say."""
    import torch
    from sklearn.metrics import f1_score, recall_score

    from liser_common.metrics import classification_metrics

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 6, (60,), generator=g)  # classes 6, 7 absent
    preds = torch.randint(0, 8, (60,), generator=g)  # ... and predicted
    assert (preds >= 6).any()
    m, _ = classification_metrics(preds, target, 8)
    present = sorted(set(target.tolist()))
    assert m["uar"] == pytest.approx(recall_score(target, preds, labels=present, average="macro"), abs=1e-6)
    assert m["macro_f1"] == pytest.approx(f1_score(target, preds, labels=present, average="macro"), abs=1e-6)
    full = torch.cat([target, torch.tensor([6, 7])]), torch.cat([preds, torch.tensor([6, 0])])  # every class there
    m, _ = classification_metrics(full[1], full[0], 8)
    assert m["uar"] == pytest.approx(recall_score(full[0], full[1], average="macro"), abs=1e-6)
