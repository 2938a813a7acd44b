import pytest
import torch

from liser_core.labels import (
    AFFECTNET8,
    CREMAD6,
    FER2013_7,
    RAVDESS8,
    LabelMap,
    LabelSpace,
    label_space,
)


def test_standard_spaces():
    assert len(RAVDESS8) == 8 and RAVDESS8.index("neutral") == 0 and RAVDESS8.index("surprised") == 7
    assert len(CREMAD6) == 6 and "calm" not in CREMAD6.classes
    assert label_space("cremad6") is CREMAD6
    with pytest.raises(ValueError, match="not a canonical emotion"):
        LabelSpace("bad", ("happy", "joyful"))


def test_identity_map_is_a_no_op():
    p = torch.softmax(torch.randn(3, 8), -1)
    assert torch.equal(LabelMap(RAVDESS8, RAVDESS8).project(p), p)


def test_reordering_follows_names_not_indices():
    # FER2013 order: angry, disgust, fearful, happy, sad, surprised, neutral
    p = torch.tensor([[0.5, 0.1, 0.1, 0.2, 0.0, 0.05, 0.05]])
    out = LabelMap(FER2013_7, RAVDESS8).project(p)
    # RAVDESS order: neutral calm happy sad angry fearful disgust surprised
    expected = torch.tensor([[0.05, 0.0, 0.2, 0.0, 0.5, 0.1, 0.1, 0.05]])
    assert torch.allclose(out, expected)
    assert LabelMap(FER2013_7, RAVDESS8).unreached == ("calm",)


def test_drop_renormalises_by_hand():
    # RAVDESS -> CREMA-D dropping calm and surprised
    p = torch.tensor([[0.1, 0.3, 0.2, 0.0, 0.1, 0.0, 0.1, 0.2]])
    out = LabelMap(RAVDESS8, CREMAD6, drop=("calm", "surprised")).project(p)
    # kept mass 0.5: neutral .1 happy .2 sad 0 angry .1 fearful 0 disgust .1 -> / 0.5
    assert torch.allclose(out, torch.tensor([[0.2, 0.4, 0.0, 0.2, 0.0, 0.2]]))


def test_merge_adds_mass():
    p = torch.tensor([[0.1, 0.3, 0.2, 0.0, 0.1, 0.0, 0.1, 0.2]])
    out = LabelMap(RAVDESS8, CREMAD6, merge={"calm": "neutral"}, drop=("surprised",)).project(p)
    assert torch.allclose(out, torch.tensor([[0.4, 0.2, 0.0, 0.1, 0.0, 0.1]]) / 0.8)
    assert torch.allclose(out.sum(-1), torch.ones(1))


def test_unmapped_classes_must_be_explicit():
    with pytest.raises(ValueError, match=r"leaves \['contempt'\] unmapped"):
        LabelMap(AFFECTNET8, RAVDESS8)
    with pytest.raises(ValueError, match="lacks"):
        LabelMap(RAVDESS8, CREMAD6, merge={"calm": "calm"}, drop=("surprised",))
    LabelMap(AFFECTNET8, RAVDESS8, drop=("contempt",))  # explicit: fine
    # merged and dropped: the drop won silently (a teacher 90 % calm gave 100 % of another class)
    with pytest.raises(ValueError, match=r"both merges and drops \['calm'\]"):
        LabelMap(RAVDESS8, CREMAD6, merge={"calm": "neutral"}, drop=("calm", "surprised"))


def test_matrix_shape_and_rows():
    m = LabelMap(AFFECTNET8, CREMAD6, drop=("contempt", "surprised")).matrix
    assert m.shape == (8, 6)
    assert m.sum().item() == 6  # every CREMA-D class reached once


def test_emotion_names_are_read_by_name_in_one_table():
    """Checkpoints (id2label) and corpora (EmoBox's label maps) read emotion names through one
    table: EmoBox's own names, and the spellings other metadata uses, mean the same class; a
    name that is no emotion LiSER knows is None, never a guess."""
    from liser_core.labels import EMOTION_ALIASES, canonical_emotion
    from liser_plugins.corpora.emobox import CLASS_NAMES

    assert all(canonical_emotion(name) == canonical for name, canonical in CLASS_NAMES.items())
    for written, meant in (("Anger", "angry"), ("surprised", "surprised"), ("HAPPINESS", "happy"),
                           ("Fear ", "fearful"), ("dis-gusted", "disgust")):
        assert canonical_emotion(written) == meant, written
    assert canonical_emotion("Boredom") is None and canonical_emotion("excited") is None
    assert canonical_emotion("excited", {"excited": "happy"}) == "happy"  # a choice made explicitly
    with pytest.raises(TypeError):
        CLASS_NAMES["Surprise"] = "happy"  # read-only: a plugin cannot remap a corpus's classes
    with pytest.raises(TypeError):
        EMOTION_ALIASES["sur"] = "happy"
