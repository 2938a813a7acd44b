"""Sharing and serving a student: model cards, the Hub (through a local stand-in and an offline
cache), `liser serve` (endpoints, limits, a load on loopback, the page in a real browser)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from liser_core import Student
from liser_tools.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A student from a small synth_kd run (its reports, splits and model card included)."""
    from liser_core import run

    out = tmp_path_factory.mktemp("share") / "run"
    ctx = run("recipes/synth_kd.yaml", [
        f"run_dir={out}", "data.options={teacher_speakers: 2, labeled_speakers: 2, unlabeled_speakers: 2, test_speakers: 2,"
        " teacher_clips: 2, labeled_clips: 2, unlabeled_clips: 2, test_clips: 2, seconds: 1.0, frames: 4}",
        "distil.epochs=1", "finetune.epochs=0", "baseline.enabled=false", "threads=1",
        "teachers.0.fit.epochs=1", "teachers.1.fit.epochs=1", "loggers={run_dir: {confusion_png: false}}",
    ])
    return ctx.run_dir


def wav_bytes(seconds=1.5, rate=16000, freq=220.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype("float32"), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# -- model cards ---------------------------------------------------------------------------------
def test_every_saved_student_gets_a_model_card_from_its_run(run_dir):
    from huggingface_hub import ModelCard

    card = ModelCard.load(run_dir / "student" / "README.md")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    got = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert got["accuracy"] == pytest.approx(metrics["student"]["accuracy"], abs=1e-4)
    assert got["recall"] == pytest.approx(metrics["student"]["uar"], abs=1e-4)  # UAR = macro recall
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}
    assert card.data.library_name == "liser" and "speech-emotion-recognition" in card.data.tags
    for label in metrics["label_space"]:
        assert f"`{label}`" in card.text
    for teacher in metrics["teachers"]:
        assert f"| {teacher} |" in card.text  # each teacher with its card
    assert "speaker-independent" in card.text and "Student.from_pretrained" in card.text
    seed = yaml.safe_load((run_dir / "config.yaml").read_text())["seed"]
    assert {r.dataset_config for r in card.data.eval_results} == {f"seed={seed}"}  # synth_av: no protocol keys
    assert f"from one run (seed {seed}, one split)" in card.text


def test_a_card_names_every_corpus_of_a_cross_corpus_run_and_where_a_teacher_came_from():
    """The protocol of a corpus assembled from parts names each part (it said "the corpus's
    default splits"); a teacher loaded from another run says so, with the speakers it was
    fitted on (it read as this run's teacher split)."""
    from liser_core.card import _fitted_on, _protocol

    config = {"seed": 2, "data": {"name": "cross_corpus", "options": {"classes": "emobox4", "parts": {
        "teacher": {"name": "savee", "options": {"root": "/d/savee"}},
        "unlabeled": {"name": "emobox", "split": "train", "options": {"corpus": "meld", "label_fraction": 1.0}},
        "test": {"name": "iemocap", "options": {"fold": 1}}}}}}
    assert _protocol(config) == ("teacher: savee, unlabeled: emobox (corpus=meld, label_fraction=1.0, split=train), "
                                 "test: iemocap (fold=1), seed=2")
    card = {"fit_sets": [{"corpus": "ravdess", "split": "teacher", "clips": 8, "speakers": ["09"]}],
            "source": "fitted in run runs/fold2"}
    assert _fitted_on(card) == "ravdess[teacher], 8 clips of 1 speakers (09); fitted in run runs/fold2"
    assert _fitted_on({"trained_on": ["AffectNet"], "source": "hub: org/face"}) == "AffectNet; hub: org/face"


def test_a_card_is_never_made_from_a_recipe_edited_since_the_run(run_dir, tmp_path):
    """config.yaml edited after the run (a protocol option): the card would describe a recipe the
    run did not run. Made again from the files it is refused naming the key; nothing is written."""
    from liser_core.card import model_card, write_model_card
    from liser_core.errors import UsageError

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert model_card(run) == (run / "student" / "README.md").read_text()  # the run's card: the same from its files
    before = (run / "student" / "README.md").read_bytes()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["options"]["test_speakers"] = 4
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UsageError, match=r"config.yaml differs from the recipe the run recorded .* data.options.test_speakers"):
        model_card(run)
    with pytest.raises(UsageError, match="data.options.test_speakers"):
        write_model_card(run)
    assert (run / "student" / "README.md").read_bytes() == before and not (run / "student" / "README.liser-new.md").exists()


# -- the Hub -------------------------------------------------------------------------------------
class LocalHub:
    """A stand-in for the Hub's upload API: an upload lands as a new revision in a local
    huggingface_hub cache, exactly where a download would have put it."""

    def __init__(self, cache: Path):
        self.cache, self.repos, self.uploads = cache, {}, []

    def create_repo(self, repo_id, *, repo_type="model", private=False, exist_ok=False):
        assert exist_ok or repo_id not in self.repos
        self.repos[repo_id] = {"private": private}

    def upload_folder(self, *, repo_id, repo_type, folder_path, allow_patterns=None, commit_message=""):
        assert repo_id in self.repos and repo_type == "model"
        files = sorted(p for p in Path(folder_path).iterdir() if p.name in (allow_patterns or [p.name]))
        sha = hashlib.sha1(b"".join(p.read_bytes() for p in files)).hexdigest()
        repo = self.cache / f"models--{repo_id.replace('/', '--')}"
        snap = repo / "snapshots" / sha
        snap.mkdir(parents=True)
        for p in files:
            shutil.copy2(p, snap / p.name)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(sha)
        self.uploads.append((repo_id, [p.name for p in files], commit_message))
        return f"local://{repo_id}/commit/{sha}"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A Hub id resolves from a local huggingface_hub cache only: offline mode on, the cache in
    a temporary folder, and any connection off this machine refused, so a test that would reach
    the real Hub fails here instead of downloading (or hanging in CI)."""
    import huggingface_hub.constants as hc

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    connect = socket.socket.connect

    def loopback_only(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") and sock.family != socket.AF_UNIX:
            raise OSError(f"test attempted a network connection to {address!r}: the Hub must come from the local cache")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    return LocalHub(cache)


def test_push_then_load_by_id_gives_the_same_probabilities(run_dir, offline_hub, tmp_path, capsys):
    from liser_tools.hub import push

    url = push(run_dir / "student", "lab/liser-synth", api=offline_hub)
    assert url.startswith("local://lab/liser-synth")
    (repo_id, files, _), = offline_hub.uploads
    assert set(files) == {"config.json", "model.safetensors", "README.md", "recipe.yaml", "student.onnx",
                          "student.onnx.json"}
    assert not (run_dir / "student" / "student.onnx").exists()  # staged elsewhere: the run's folder untouched
    local = Student.from_pretrained(run_dir / "student")
    # no Hub is reached: offline mode, sockets off this machine refused, and the id resolves into
    # the temporary huggingface_hub cache that the stand-in's upload filled
    from liser_common.weights import resolve_source

    assert resolve_source("lab/liser-synth").is_relative_to(offline_hub.cache)
    # the pushed export carries the run's record, read where the folder lies (not the staged copy's)
    prov = json.loads((resolve_source("lab/liser-synth") / "student.onnx.json").read_text())["provenance"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert prov["recipe_fingerprint"] == metrics["recipe_fingerprint"] and prov["flags"] == metrics["flags"]
    assert prov["source"] == str(run_dir.resolve() / "metrics.json")
    hub = Student.from_pretrained("lab/liser-synth")
    for (k, a), (_, b) in zip(local.state_dict().items(), hub.state_dict().items()):
        assert torch.equal(a, b), k
    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav_bytes(2.0))
    rows = []
    for source in (str(run_dir / "student"), "lab/liser-synth"):
        assert main(["predict", source, str(clip), "--jsonl"]) == 0
        rows.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert rows[0]["probs"] == rows[1]["probs"] and rows[0]["label"] == rows[1]["label"]
    # not in the cache, offline: a clear usage error, exit 2
    assert main(["predict", "lab/not-there", str(clip)]) == 2
    assert "not in the Hugging Face cache" in capsys.readouterr().err


def test_push_refuses_what_is_not_a_student(run_dir, offline_hub, tmp_path):
    from liser_core.errors import UsageError
    from liser_tools.hub import push

    with pytest.raises(UsageError, match="not a saved student"):
        push(tmp_path, "lab/x", api=offline_hub)
    with pytest.raises(UsageError, match="not a Hub repository id"):
        push(run_dir / "student", "no-slash", api=offline_hub)
    assert offline_hub.uploads == []


def test_a_pushed_card_states_the_pushed_models_scores(run_dir, offline_hub, tmp_path, capsys, caplog):
    """A card edited since LiSER wrote it (its scores changed) is refused unless --edited-card
    says it is meant; Student.push_to_hub(run_dir=...) refuses a run whose student has other
    weights (it uploaded that run's card beside these weights) and pushes the run's own folder
    (card and recipe) for the same weights; the recipe goes up as recipe.yaml."""
    from liser_core.errors import UsageError
    from liser_tools.hub import push

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    card = run / "student" / "README.md"
    uar = json.loads((run / "metrics.json").read_text())["student"]["uar"]
    card.write_text(card.read_text().replace(f"value: {round(uar, 4)}", "value: 0.925", 1))
    with pytest.raises(UsageError, match=r"README.md was changed since LiSER wrote it .* --edited-card"):
        push(run / "student", "lab/edited", api=offline_hub, onnx=False)
    assert main(["push", str(run / "student"), "lab/edited", "--no-onnx"]) == 2
    assert "--edited-card" in capsys.readouterr().err and offline_hub.uploads == []
    push(run / "student", "lab/edited", api=offline_hub, onnx=False, edited_card=True)  # meant: pushed as it is
    assert offline_hub.uploads[-1][1] == ["README.md", "config.json", "model.safetensors", "recipe.yaml"]

    student = Student.from_pretrained(run_dir / "student")
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    from safetensors.torch import load_file, save_file

    w = load_file(str(other / "student" / "model.safetensors"))
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in w.items()}, str(other / "student" / "model.safetensors"))
    with pytest.raises(UsageError, match="its student has other weights than this one"):
        student.push_to_hub("lab/mix", run_dir=other, api=offline_hub, onnx=False)
    assert offline_hub.uploads[-1][0] == "lab/edited"  # nothing more went up
    student.push_to_hub("lab/same", run_dir=run_dir, api=offline_hub, onnx=False)
    repo_id, files, _ = offline_hub.uploads[-1]
    assert repo_id == "lab/same" and "README.md" in files and "recipe.yaml" in files
    snap = next((offline_hub.cache / "models--lab--same" / "snapshots").iterdir())
    assert (snap / "README.md").read_bytes() == (run_dir / "student" / "README.md").read_bytes()
    assert (snap / "recipe.yaml").read_bytes() == (run_dir / "config.yaml").read_bytes()
    student.push_to_hub("lab/bare", api=offline_hub, onnx=False)  # no run: no card, said once it is up
    assert offline_hub.uploads[-1][1] == ["config.json", "model.safetensors"]
    assert "has no model card (README.md)" in caplog.text and "lab/bare's page says nothing" in caplog.text


# -- liser serve ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def service(run_dir):
    from liser_tools.serve import Service

    return Service(run_dir / "student", max_mb=1.0, max_seconds=10.0, backend="torch")


@pytest.fixture(scope="module")
def client(service):
    from starlette.testclient import TestClient

    from liser_tools.serve import make_app

    return TestClient(make_app(service))


def test_predict_health_and_clear_errors(client, service):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["labels"] == service.predictor.classes and health["backend"] == "torch"
    r = client.post("/predict", content=wav_bytes(2.5))
    assert r.status_code == 200, r.text
    out = r.json()
    assert sum(out["probs"].values()) == pytest.approx(1.0, abs=1e-4)
    assert len(out["windows"]) > 1 and all(len(w["probs"]) == len(out["labels"]) for w in out["windows"])
    overall = np.mean([w["probs"] for w in out["windows"]], 0)
    np.testing.assert_allclose(list(out["probs"].values()), overall, atol=1e-5)  # overall = mean over windows
    assert out["label"] == out["labels"][int(np.argmax(overall))]
    for body, status, words in [
        (b"", 400, "empty"),
        (b"this is not audio at all" * 10, 415, "not an audio or video file"),
        (wav_bytes(0.05), 400, "too short"),  # under 0.1 s: what predict refuses too (torch backend)
        (wav_bytes(12.0), 413, "over the limit"),  # 12 s > max_seconds 10 (and < 1 MiB)
        (b"\0" * (2**20 + 10), 413, "over the limit"),  # > max_mb 1
    ]:
        r = client.post("/predict", content=body)
        assert r.status_code == status and words in r.json()["error"], (status, r.text)
        assert r.json()["status"] == status  # every error: {"error": ..., "status": ...}
    assert client.get("/").status_code == 200 and "<svg id=\"plot\"" in client.get("/").text


def test_the_onnx_backend_serves_the_same_probabilities(run_dir, tmp_path):
    from liser_tools.deploy import export
    from liser_tools.serve import Service

    student = tmp_path / "student"
    shutil.copytree(run_dir / "student", student)
    export(student, student / "student.onnx")
    data = wav_bytes(2.0)
    onnx, torch_ = Service(student, backend="auto"), Service(student, backend="torch")
    assert onnx.predictor.backend == "onnx"
    np.testing.assert_allclose(list(onnx.predict(data)["probs"].values()), list(torch_.predict(data)["probs"].values()),
                               atol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(service):
    from liser_tools.serve import make_server

    srv, sock = make_server(service, host="127.0.0.1", port=0, concurrency=2)  # as liser serve starts it
    port = sock.getsockname()[1]
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_a_load_on_loopback_gets_no_errors(server):
    """40 requests, 8 at a time, on a real socket: every one answered 200 (bounded in time)."""
    import httpx

    data = wav_bytes(2.0)

    async def go():
        async with httpx.AsyncClient(base_url=server, timeout=60) as c:
            gate = asyncio.Semaphore(8)

            async def one():
                async with gate:
                    return (await c.post("/predict", content=data)).status_code

            return await asyncio.gather(*[one() for _ in range(40)])

    t0 = time.perf_counter()
    codes = asyncio.run(go())
    assert codes == [200] * 40
    assert time.perf_counter() - t0 < 120


def _chromium() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs Debian's chromium (.ci/run): it is missing")
        pytest.skip("no Chromium here (apt-get install chromium); CI installs it")
    return chromium


HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_the_page_scores_a_clip_and_plots_it_in_a_headless_browser(server, service, tmp_path):
    chromium = _chromium()
    clip = "data:audio/wav;base64," + base64.b64encode(wav_bytes(2.0, rate=8000)).decode()
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=20000", f"--user-data-dir={tmp_path / 'chrome'}", "--dump-dom",
         f"{server}/?clip={quote(clip, safe='')}"],
        capture_output=True, text=True, timeout=120,
    ).stdout
    windows = int(dom.split('data-windows="')[1].split('"')[0])
    assert windows >= 1, dom[:1000]
    svg = dom.split('<svg id="plot"')[1].split("</svg>")[0]
    assert svg.count('<polyline class="series"') == len(service.predictor.classes)  # one line per class
    assert 'id="overall" data-label="' in dom and "window(s)" in dom


def test_the_pages_live_mode_streams_a_microphone_in_a_headless_browser(server, service, tmp_path):
    """The page's Live mode in a real browser: Chromium's fake microphone (a tone) at the
    model's rate, float32 PCM over the WebSocket /stream, a hop every 250 ms drawn, then the
    server's summary when the page stops (``?live=3``: Live, then Stop live after 3 s). Driven
    and read through the DevTools protocol, in real time."""
    import httpx
    import websockets

    chromium = _chromium()
    port = _free_port()
    browser = subprocess.Popen(
        [chromium, *HEADLESS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
         "--autoplay-policy=no-user-gesture-required", f"--remote-debugging-port={port}",
         f"--user-data-dir={tmp_path / 'chrome'}", f"{server}/?live=3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    async def watch() -> dict:
        deadline = time.time() + 30
        while True:  # the DevTools endpoint, once the browser is up
            try:
                pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json", timeout=2).json() if t["type"] == "page"]
                if pages:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "Chromium's DevTools endpoint did not come up"
            await asyncio.sleep(0.2)
        async with websockets.connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as ws:
            state: dict = {}
            for i in range(400):  # up to about 80 s on a busy machine
                await ws.send(json.dumps({"id": i, "method": "Runtime.evaluate",
                                          "params": {"expression": "JSON.stringify(document.body.dataset)"}}))
                while True:
                    reply = json.loads(await ws.recv())
                    if reply.get("id") == i:
                        break
                state = json.loads(reply["result"]["result"].get("value") or "{}")
                if state.get("live") in ("done", "error"):
                    return state
                await asyncio.sleep(0.2)
            return state

    try:
        state = asyncio.run(watch())
    finally:
        browser.kill()
        browser.wait(10)
    assert state.get("live") == "done", state
    hops = int(state["hops"])
    assert hops >= 4  # 3 s of microphone: a first 1 s window, then a hop every 250 ms
    assert int(state["doneHops"]) >= hops  # the server's count includes the end-aligned last window
    assert state["hopLabel"] in service.predictor.classes
