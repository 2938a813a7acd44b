import math

import pytest
import torch
import torch.nn.functional as F

from liser_core import Batch, BatchTargets, ModelOutput
from liser_core.labels import CREMAD6, RAVDESS8, LabelMap, LabelSpace
from liser_plugins.losses import CrossEntropy, FeatureMatching, KLDivergence

THREE = LabelSpace("three", ("neutral", "happy", "sad"))


def batch(labels):
    n = len(labels)
    return Batch(
        audio=torch.zeros(n, 10), lengths=torch.full((n,), 10), sample_rate=16000,
        labels=torch.tensor(labels), clip_ids=[str(i) for i in range(n)], index=torch.arange(n),
    )


def targets(logits: dict, weights: dict, maps=None, emb=None, combination="arithmetic"):
    maps = maps or {k: LabelMap(THREE, THREE) for k in logits}
    return BatchTargets(
        logits={k: torch.tensor(v) for k, v in logits.items()},
        embeddings=emb or {},
        label_maps=maps,
        weights=weights,
        combination=combination,
    )


def test_kl_matches_hand_computed_value():
    T = 2.0
    s = ModelOutput(torch.tensor([[0.0, 0.0, 0.0]]), torch.zeros(1, 2))
    tg = targets({"t": [[1.0, 0.0, 0.0]]}, {"t": 1.0})
    z = math.exp(0.5) + 2
    p = [math.exp(0.5) / z, 1 / z, 1 / z]
    expected = T * T * sum(pi * math.log(pi / (1 / 3)) for pi in p)
    got = KLDivergence(temperature=T)(s, batch([-1]), tg)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kl_is_zero_when_student_equals_teacher_and_scales_with_t_squared():
    logits = [[0.3, -1.0, 2.0], [1.0, 1.0, 0.0]]
    s = ModelOutput(torch.tensor(logits), torch.zeros(2, 2))
    tg = targets({"t": logits}, {"t": 1.0})
    assert KLDivergence(temperature=3.0)(s, batch([-1, -1]), tg).item() == pytest.approx(0, abs=1e-6)
    # T^2 scaling: the same distributions at T=1 and "pre-divided" logits at T=2
    s1 = ModelOutput(torch.tensor([[0.0, 1.0, 0.0]]), torch.zeros(1, 2))
    t1 = targets({"t": [[2.0, 0.0, 0.0]]}, {"t": 1.0})
    s2 = ModelOutput(torch.tensor([[0.0, 2.0, 0.0]]), torch.zeros(1, 2))
    t2 = targets({"t": [[4.0, 0.0, 0.0]]}, {"t": 1.0})
    a = KLDivergence(temperature=1.0)(s1, batch([-1]), t1)
    b = KLDivergence(temperature=2.0)(s2, batch([-1]), t2)
    assert b.item() == pytest.approx(4 * a.item(), rel=1e-5)


def test_kl_without_teacher_is_skipped():
    s = ModelOutput(torch.zeros(1, 3), torch.zeros(1, 2))
    assert KLDivergence()(s, batch([0]), None) is None


def test_weighted_combination_of_two_teachers_by_hand():
    tg = targets({"a": [[0.0, 0.0, 0.0]], "b": [[math.log(2), 0.0, 0.0]]}, {"a": 0.75, "b": 0.25})
    # a: (1/3, 1/3, 1/3); b: (1/2, 1/4, 1/4)
    expected = torch.tensor([[0.75 / 3 + 0.25 / 2, 0.75 / 3 + 0.25 / 4, 0.75 / 3 + 0.25 / 4]])
    assert torch.allclose(tg.probs(1.0), expected)
    geo = targets({"a": [[0.0, 0.0, 0.0]], "b": [[math.log(2), 0.0, 0.0]]}, {"a": 0.5, "b": 0.5}, combination="geometric")
    g = torch.tensor([(1 / 3 * 1 / 2) ** 0.5, (1 / 3 * 1 / 4) ** 0.5, (1 / 3 * 1 / 4) ** 0.5])
    assert torch.allclose(geo.probs(1.0), (g / g.sum())[None], atol=1e-6)


def test_combination_goes_through_label_maps():
    # teacher in RAVDESS space, student in CREMA-D space: calm merged into neutral, surprised dropped
    z = torch.log(torch.tensor([[0.1, 0.3, 0.2, 0.0 + 1e-12, 0.1, 1e-12, 0.1, 0.2]]))
    m = LabelMap(RAVDESS8, CREMAD6, merge={"calm": "neutral"}, drop=("surprised",))
    tg = BatchTargets({"t": z}, {}, {"t": m}, {"t": 1.0})
    assert torch.allclose(tg.probs(1.0), torch.tensor([[0.4, 0.2, 0.0, 0.1, 0.0, 0.1]]) / 0.8, atol=1e-6)


def test_ce_only_on_labeled_rows_by_hand():
    logits = torch.tensor([[5.0, -3.0, 0.0], [0.0, math.log(3), -100.0]])
    s = ModelOutput(logits, torch.zeros(2, 2))
    got = CrossEntropy()(s, batch([-1, 1]), None)
    assert got.item() == pytest.approx(-math.log(0.75), rel=1e-5)
    assert CrossEntropy()(s, batch([-1, -1]), None) is None


def test_feature_matching_mse_and_cosine_by_hand():
    fm = FeatureMatching(teacher="t", distance="mse", normalize=False)
    fm.bind(2, {"t": 2, "u": 5})
    with torch.no_grad():
        fm.proj.weight.copy_(torch.eye(2))
        fm.proj.bias.zero_()
    s = ModelOutput(torch.zeros(1, 3), torch.tensor([[1.0, 2.0]]))
    tg = targets({"t": [[0.0, 0.0, 0.0]]}, {"t": 1.0}, emb={"t": torch.tensor([[3.0, 5.0]])})
    assert fm(s, batch([-1]), tg).item() == pytest.approx((4 + 9) / 2)

    fc = FeatureMatching(teacher="t", distance="cosine", normalize=False)
    fc.bind(2, {"t": 2})
    with torch.no_grad():
        fc.proj.weight.copy_(torch.eye(2))
        fc.proj.bias.zero_()
    s = ModelOutput(torch.zeros(1, 3), torch.tensor([[1.0, 0.0]]))
    tg = targets({"t": [[0.0, 0.0, 0.0]]}, {"t": 1.0}, emb={"t": torch.tensor([[0.0, 2.0]])})
    assert fc(s, batch([-1]), tg).item() == pytest.approx(1.0)


def test_feature_matching_projection_shape_and_unknown_teacher():
    fm = FeatureMatching()
    fm.bind(7, {"face": 11})
    assert fm.teacher == "face" and tuple(fm.proj.weight.shape) == (11, 7)
    with pytest.raises(KeyError, match="not in this recipe"):
        FeatureMatching(teacher="nope").bind(7, {"face": 11})


@pytest.mark.parametrize("name", ["kl", "ce", "feature_matching"])
def test_every_registered_loss_gives_a_finite_differentiable_scalar(liser_host, name):
    loss = liser_host.registries.loss.build(name)
    loss.bind(4, {"t": 6})
    emb = torch.randn(3, 4, requires_grad=True)
    logits = torch.randn(3, 3, requires_grad=True)
    tg = targets({"t": torch.randn(3, 3).tolist()}, {"t": 1.0}, emb={"t": torch.randn(3, 6)})
    value = loss(ModelOutput(logits, emb), batch([0, -1, 2]), tg)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert (logits.grad is not None and logits.grad.abs().sum() > 0) or (emb.grad is not None and emb.grad.abs().sum() > 0)


# -- Decoupled KD (Zhao et al. 2022) and loss positions ------------------------------------------


def _dkd_reference(logits_student, logits_teacher, target, alpha, beta, temperature):
    """The authors' dkd_loss (mdistiller, megvii-research), transcribed: the -1000 mask trick."""
    gt_mask = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
    other_mask = ~gt_mask
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)

    def cat_mask(t):
        return torch.cat([(t * gt_mask).sum(1, keepdims=True), (t * other_mask).sum(1, keepdims=True)], dim=1)

    pred_student, pred_teacher = cat_mask(pred_student), cat_mask(pred_teacher)
    tckd = F.kl_div(torch.log(pred_student), pred_teacher, reduction="sum") * temperature**2 / target.shape[0]
    pt2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    ls2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(ls2, pt2, reduction="sum") * temperature**2 / target.shape[0]
    return alpha * tckd + beta * nckd


def test_dkd_matches_a_hand_computed_value_with_its_warm_up():
    from liser_core import Position
    from liser_plugins.losses import DecoupledKD

    zt, zs = [2.0, 1.0, 0.0], [0.5, 0.0, 1.0]
    p = [math.exp(v) / sum(map(math.exp, zt)) for v in zt]
    q = [math.exp(v) / sum(map(math.exp, zs)) for v in zs]
    # no label: the target class is the teacher's most likely, class 0
    tckd = p[0] * math.log(p[0] / q[0]) + (1 - p[0]) * math.log((1 - p[0]) / (1 - q[0]))
    ph, qh = [x / (1 - p[0]) for x in p[1:]], [x / (1 - q[0]) for x in q[1:]]
    nckd = sum(a * math.log(a / b) for a, b in zip(ph, qh))
    loss = DecoupledKD(alpha=1.0, beta=8.0, temperature=1.0, warmup=4)
    s = ModelOutput(torch.tensor([zs]), torch.zeros(1, 2))
    tg = targets({"t": [zt]}, {"t": 1.0})
    loss.position = Position(step=10, epoch=1, epochs=10, steps_per_epoch=8)  # 2nd epoch: weight 2/4
    assert loss(s, batch([-1]), tg).item() == pytest.approx(0.5 * (tckd + 8 * nckd), rel=1e-5)
    loss.position = Position(step=60, epoch=7, epochs=10, steps_per_epoch=8)  # past the warm-up
    assert loss(s, batch([-1]), tg).item() == pytest.approx(tckd + 8 * nckd, rel=1e-5)
    # a label wins over the teacher's argmax: target class 2
    tckd2 = p[2] * math.log(p[2] / q[2]) + (1 - p[2]) * math.log((1 - p[2]) / (1 - q[2]))
    ph2, qh2 = [x / (1 - p[2]) for x in p[:2]], [x / (1 - q[2]) for x in q[:2]]
    nckd2 = sum(a * math.log(a / b) for a, b in zip(ph2, qh2))
    assert loss(s, batch([2]), tg).item() == pytest.approx(tckd2 + 8 * nckd2, rel=1e-5)


def test_dkd_equals_the_authors_code_on_a_random_batch():
    from liser_plugins.losses import DecoupledKD

    g = torch.Generator().manual_seed(0)
    zt, zs = torch.randn(6, 3, generator=g) * 3, torch.randn(6, 3, generator=g)
    labels = [0, 2, 1, 1, 0, 2]
    got = DecoupledKD(alpha=1.5, beta=4.0, temperature=3.0, warmup=0)(
        ModelOutput(zs, torch.zeros(6, 2)), batch(labels), targets({"t": zt.tolist()}, {"t": 1.0})
    )
    ref = _dkd_reference(zs, zt, torch.tensor(labels), 1.5, 4.0, 3.0)
    assert got.item() == pytest.approx(ref.item(), rel=1e-4)


def test_losses_see_where_training_is_through_the_engine(run_tiny):
    """Every distil step: the position's step counts up from 0, epoch and progress follow."""
    from liser_core import Loss, load_plugins

    seen = []

    class Recorder(Loss):
        def forward(self, student, batch, targets):
            pos = self.position
            seen.append((pos.step, pos.epoch, pos.progress, pos.total_steps))
            return None

    host = load_plugins()
    host.registries.loss.register("recorder", Recorder)
    ctx = run_tiny(overrides=["distil.epochs=2", "distil.batch_size=2", "distil.losses=[{name: kl}, {name: recorder}]"],
                   host=host)
    assert ctx.results()["student"]
    per_epoch = seen[-1][3] // 2
    seen = seen[-2 * per_epoch:]  # before them: the preflight's one probe call
    assert [s for s, *_ in seen] == list(range(2 * per_epoch))
    assert [e for _, e, *_ in seen] == [0] * per_epoch + [1] * per_epoch
    assert seen[0][2] == 0.0 and seen[-1][2] == pytest.approx(1 - 1 / (2 * per_epoch))
