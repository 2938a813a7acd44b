"""Face detection and cropping (liser_plugins.faces): real images from scikit-image's data."""

import logging
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skimage import data

from liser_plugins.faces import (
    Box,
    FaceCropper,
    LBPFaceDetector,
    NoFaceError,
    clip_outputs,
    crop_faces,
    mean_of_probs,
    report_face_stats,
    sample_indices,
)


@pytest.fixture(scope="module")
def detector():
    return LBPFaceDetector()


def test_finds_the_astronauts_face(detector):
    boxes = detector(data.astronaut().mean(-1) / 255.0)
    assert boxes, "no face found in skimage.data.astronaut()"
    b = boxes[0]  # largest first; Eileen Collins' face spans about rows 60-165, columns 170-270
    assert 40 <= b.top <= 100 and 145 <= b.left <= 200, b
    assert 80 <= b.height <= 150 and 80 <= b.width <= 150, b
    assert b.top < 115 < b.top + b.height and b.left < 220 < b.left + b.width  # contains the nose
    assert all(b.area >= o.area for o in boxes)


def test_lfw_faces_found_and_non_faces_not(detector):
    images = data.lfw_subset()  # 200 grey 25x25 crops: 100 faces, then 100 non-faces
    faces = sum(bool(detector(im)) for im in images[:100])
    non_faces = sum(bool(detector(im)) for im in images[100:])
    # measured with the default parameters: 97 and 1
    assert faces >= 90, faces
    assert non_faces <= 5, non_faces


@pytest.mark.parametrize("shape", [(48, 48), (240, 320), (25, 25)])
@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_nothing_in_uniform_frames(detector, shape, value):
    assert detector(np.full(shape, value)) == []


def quadrants(t=4, h=40, w=60, rgb=False):
    """Frames whose four quadrants have distinct values, to see which region a crop took."""
    f = np.zeros((t, h, w), np.uint8)
    f[:, : h // 2, : w // 2], f[:, : h // 2, w // 2 :] = 40, 80
    f[:, h // 2 :, : w // 2], f[:, h // 2 :, w // 2 :] = 160, 240
    return np.repeat(f[..., None], 3, -1) if rgb else f


@pytest.mark.parametrize("rgb", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
def test_crop_shapes_channels_and_range(rgb, channels):
    out = crop_faces(quadrants(rgb=rgb), (32, 24), policy="center", channels=channels)
    assert out.images.shape == (4, channels, 32, 24)
    assert out.images.dtype == torch.float32
    assert 0.0 <= out.images.min() and out.images.max() <= 1.0
    if channels == 3:  # grey frames replicated, grey RGB stays grey
        assert torch.allclose(out.images[:, 0], out.images[:, 2], atol=1e-6)


def test_batch_rows_and_clips_give_the_same_crops():
    clip = quadrants(rgb=True)
    as_batch_row = torch.from_numpy(clip).float() / 255.0  # what Batch.frames holds
    a = crop_faces(clip, 16, policy="center").images
    b = crop_faces(as_batch_row, 16, policy="center").images
    assert torch.allclose(a, b, atol=1e-6)


def test_center_policy_crops_the_centre_square_and_is_reported():
    frames = np.zeros((2, 40, 80), np.uint8)
    frames[:, :, 20:60] = 255  # the centre 40x40 square is white, the sides black
    out = crop_faces(frames, 8, policy="center", detector=lambda g: [])
    assert out.status == "center"
    assert torch.all(out.images > 0.99)


def test_skip_policy_returns_no_images():
    out = crop_faces(np.zeros((3, 48, 48), np.uint8), 16, policy="skip")
    assert out.status == "skip" and out.images is None


def test_error_policy_names_the_clip():
    with pytest.raises(NoFaceError, match="clip 'speaker3/clip017'"):
        crop_faces(np.zeros((3, 48, 48), np.uint8), 16, policy="error", clip_id="speaker3/clip017")


def test_largest_face_is_taken_and_tracked_over_missed_frames():
    frames = np.zeros((4, 60, 60), np.uint8)
    frames[:, 10:30, 30:50] = 255  # a white "face" at rows 10-30, columns 30-50
    found = {1: [Box(0, 0, 8, 8), Box(10, 30, 20, 20)]}  # only frame 1 has detections
    calls = iter(range(4))

    def fake(_grey):
        return sorted(found.get(next(calls), []), key=lambda b: -b.area)

    out = crop_faces(frames, 10, margin=0.0, detector=fake)
    assert out.status == "face"
    assert out.boxes == [Box(10, 30, 20, 20)] * 4  # backfilled to frame 0, carried to 2 and 3
    assert torch.all(out.images > 0.99)  # every frame cropped exactly on the white square


def test_margin_widens_the_crop_and_edges_are_replicated():
    frames = np.zeros((1, 60, 60), np.uint8)
    frames[:, 0:20, 0:20] = 255  # face in the top-left corner: a wide crop reaches outside
    out = crop_faces(frames, 30, margin=0.5, detector=lambda g: [Box(0, 0, 20, 20)])
    assert out.images.shape == (1, 3, 30, 30)
    img = out.images[0, 0]
    # the square is 40 px centred on (10, 10): rows/cols -10..30 of which 0..20 are white;
    # the part outside the frame repeats the white edge, so 3/4 of each side is white
    assert img[:22, :22].min() > 0.99 and img[-3:, -3:].max() < 0.01


def test_detector_none_takes_frames_as_given():
    out = crop_faces(quadrants(), 16, detector="none")
    assert out.status == "given"


def test_sample_indices_are_evenly_spaced():
    assert sample_indices(8, 4) == [1, 3, 5, 7]
    assert sample_indices(3, 4) == [0, 1, 2]
    assert sample_indices(100, 1) == [50]


def test_cropper_counts_no_face_clips_and_caches_detections(caplog):
    astro = torch.from_numpy(data.astronaut()).float() / 255.0
    frames = torch.stack([astro[None].expand(4, -1, -1, -1), torch.full((4, 512, 512, 3), 0.5)])
    cropper = FaceCropper(owner="t", frames=2, size=(64, 64), channels=1, policy="center")
    calls = []
    real = cropper.detector
    cropper.detector = lambda g: calls.append(1) or real(g)
    with caplog.at_level(logging.WARNING, logger="liser.faces"):
        crops, kept, k = cropper(frames, ["astro", "blank"])
        cropper(frames, ["astro", "blank"])  # a second epoch: no new detection
    assert crops.shape == (4, 1, 64, 64) and kept == [0, 1] and k == 2
    assert len(calls) == 2  # 4 sampled frames, 2 distinct contents, detected once each
    assert cropper.stats.seen == {"astro", "blank"} and cropper.stats.no_face == {"blank"}
    assert cropper.stats.total_no_face == 2
    assert "no face found in 1 of 2 clips" in caplog.text

    run = SimpleNamespace(teachers={"face": SimpleNamespace(faces=cropper)}, diagnostics={})
    with caplog.at_level(logging.INFO, logger="liser.faces"):
        report_face_stats(run, "label", SimpleNamespace)
    counts = run.diagnostics["no_face_clips"]["face"]["label"]
    assert counts["clips"] == 2 and counts["no_face"] == 1 and counts["examples"] == ["blank"]
    assert "teacher face, stage label: no face found in 1 of 2 clips" in caplog.text
    assert cropper.stats.seen == set()  # counted afresh per stage


def test_skip_rows_are_uniform_with_zero_embeddings():
    cropper = FaceCropper(owner="t", frames=2, size=16, channels=3, policy="skip")
    astro = torch.from_numpy(data.astronaut()).float() / 255.0
    frames = torch.stack([torch.zeros(2, 512, 512, 3), astro[None].expand(2, -1, -1, -1)])
    crops, kept, k = cropper(frames, ["blank", "astro"])
    assert kept == [1] and crops.shape == (2, 3, 16, 16)
    logits = mean_of_probs(torch.randn(1, k, 5))
    out_l, out_e = clip_outputs(logits, torch.ones(1, 7), kept, 2, 5, 7)
    assert torch.allclose(torch.softmax(out_l[0], -1), torch.full((5,), 0.2))
    assert torch.equal(out_e[0], torch.zeros(7)) and torch.equal(out_e[1], torch.ones(7))
    assert torch.allclose(out_l[1], logits[0])


def test_all_skipped_batch_still_backpropagates():
    w = torch.nn.Parameter(torch.ones(3))
    logits, _ = clip_outputs(None, None, [], 2, 4, 3, anchor=w)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert torch.equal(w.grad, torch.zeros(3))


def test_mean_of_probs_is_the_log_of_the_mean_distribution():
    z = torch.randn(3, 4, 6)
    assert torch.allclose(torch.softmax(mean_of_probs(z), -1), torch.softmax(z, -1).mean(1), atol=1e-6)


def test_plugins_import_without_the_face_extra():
    """`liser list` stays fast: the plugin modules import none of timm, scikit-image, h5py."""
    import subprocess

    code = (
        "import sys, liser_plugins.timm_face, liser_plugins.fer_xception, liser_plugins.faces\n"
        "print(sorted(m for m in ('timm', 'skimage', 'h5py') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "missing, teacher, options",
    [("timm", "timm_face", {"model": "resnet18"}), ("skimage", "timm_face", {"model": "resnet18"}), ("h5py", "fer_xception", {"weights": "x.hdf5"})],
)
def test_building_without_the_face_extra_says_what_to_install(missing, teacher, options, monkeypatch, tmp_path):
    from liser_core import load_plugins
    from liser_core.errors import UsageError
    from liser_core.labels import RAVDESS8

    for name in [m for m in sys.modules if m == missing or m.startswith(missing + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import <missing>` fail
    if "weights" in options:  # a file must exist before h5py is needed
        (tmp_path / options["weights"]).write_bytes(b"")
        options = {"weights": str(tmp_path / options["weights"])}
    with pytest.raises(UsageError, match=r"pip install 'liser\[face\]'"):
        load_plugins().registries.teacher.build(teacher, label_space=RAVDESS8, **options)
