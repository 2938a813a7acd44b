"""NaN/Inf losses: skipped with a warning up to a patience, then a clear error."""

import pytest
import torch

from liser_core import hookimpl, load_plugins
from liser_core.training import NonFiniteLossError


class SometimesNaN(torch.nn.Module):
    """A loss that is NaN on its first ``bad`` calls, then cross-entropy on labeled clips."""

    needs_teacher = False
    calls = 0
    bad = 0

    def bind(self, student_dim, teacher_dims):
        pass

    def forward(self, student, batch, targets):
        if not self.training:  # the preflight probe (eval mode) gets a finite value
            return torch.nn.functional.cross_entropy(student.logits, batch.labels.clamp_min(0))
        SometimesNaN.calls += 1
        if SometimesNaN.calls <= SometimesNaN.bad:
            return student.logits.sum() * float("nan")
        return torch.nn.functional.cross_entropy(student.logits, batch.labels.clamp_min(0))


class Plugin:
    @hookimpl
    def liser_register_losses(self, registry):
        registry.register("sometimes_nan", SometimesNaN)


def host():
    h = load_plugins()
    h.add("nan", Plugin())
    return h


def test_a_few_nan_steps_are_skipped_and_the_run_completes(run_tiny, caplog):
    SometimesNaN.calls, SometimesNaN.bad = 0, 2
    ctx = run_tiny(host=host(), overrides=["distil.losses=[{name: sometimes_nan}]", "distil.epochs=2", "distil.batch_size=4"])
    assert "student" in ctx.results()
    assert caplog.text.count("non-finite loss") == 2 and "step skipped" in caplog.text
    for p in ctx.student.parameters():
        assert torch.isfinite(p).all()  # skipped steps never touched the weights


def test_past_the_patience_the_run_stops_naming_step_and_terms(run_tiny):
    SometimesNaN.calls, SometimesNaN.bad = 0, 1000
    with pytest.raises(NonFiniteLossError) as e:
        run_tiny(host=host(), overrides=["distil.losses=[{name: sometimes_nan}]", "distil.nonfinite_patience=3", "distil.batch_size=4"])
    msg = str(e.value)
    assert "epoch 1, step 4" in msg and "sometimes_nan=nan" in msg and "patience 3" in msg
    assert "learning rate" in msg  # how to debug


def test_a_teacher_with_non_finite_outputs_is_one_error_naming_it_and_a_clip(run_tiny):
    """A teacher whose logits turn NaN (broken weights) while labeling: a ComponentError naming
    the teacher and a clip, nothing distilled from it (was: a store ValueError's traceback)."""
    from liser_common.errors import ComponentError
    from liser_core import ModelOutput
    from liser_plugins.cnn_teachers import AudioCNNTeacher

    class Broken(AudioCNNTeacher):
        calls = 0

        def forward(self, batch):
            out = super().forward(batch)
            Broken.calls += 1
            if Broken.calls > 2:  # after the preflight probe
                return ModelOutput(out.logits * float("nan"), out.embedding)
            return out

    class BrokenPlugin:
        @hookimpl
        def liser_register_teachers(self, registry):
            registry.register("broken_cnn", Broken)

    h = load_plugins()
    h.add("broken", BrokenPlugin())
    with pytest.raises(ComponentError, match=r"teacher broken_cnn: its logits are not finite \(NaN or inf\) on clip \S+"):
        run_tiny(host=h, overrides=["teachers=[{name: broken_cnn, fit: {epochs: 1, batch_size: 16}, "
                                    "options: {channels: [4, 8], hidden: 16}}]"])
