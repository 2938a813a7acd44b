"""`liser push` when the network is not there: offline mode, no network at all, an endpoint that
refuses the connection, and one that accepts it and never answers. Each ends in one line naming
the endpoint and what to do, within the timeout, and leaves no staging folder behind."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from liser_core import load_plugins
from liser_core.labels import RAVDESS8
from liser_tools.cli import main


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """A small untrained student, saved."""
    host = load_plugins()
    torch.manual_seed(0)
    model = host.registries.student.build("logmel_cnn", label_space=RAVDESS8, channels=[4, 8])
    model.liser_spec = {"name": "logmel_cnn", "options": {"channels": [4, 8]}}
    out = tmp_path_factory.mktemp("push") / "student"
    model.save_pretrained(out, train_seconds=1.0)
    return out


@pytest.fixture
def staging(tmp_path, monkeypatch) -> Path:
    """The temporary folder the push stages its upload in (checked for leftovers)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")  # never sent anywhere real
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("LISER_HUB_TIMEOUT", raising=False)
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    return folder


def push_fails(args: list[str], capfd, staging: Path, code: int, words: str) -> str:
    """Run ``liser push ARGS``: exit ``code``, exactly one line on stderr (the error, with
    ``words``), nothing staged left over."""
    assert main(["push", *args]) == code
    out, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("liser: error: ") and words in lines[0], err[-3000:]
    assert not list(staging.glob("liser-push-*")), list(staging.iterdir())
    return lines[0]


def test_push_offline_is_one_line_before_anything_is_staged(student, staging, monkeypatch, capfd):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = push_fails([str(student), "lab/x"], capfd, staging, 2, "HF_HUB_OFFLINE is set")
    assert "unset HF_HUB_OFFLINE" in line and "huggingface.co" in line


def test_push_without_a_network_is_one_line(student, staging, monkeypatch, capfd):
    """No route and no name resolution off this machine, as on a laptop without Wi-Fi."""
    getaddrinfo = socket.getaddrinfo

    def no_dns(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    line = push_fails([str(student), "lab/x", "--no-onnx"], capfd, staging, 1, "cannot reach the Hugging Face Hub")
    assert "https://huggingface.co" in line and "name resolution" in line and "check the network" in line


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_push_to_an_endpoint_that_refuses_is_one_line(student, staging, monkeypatch, capfd):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    line = push_fails([str(student), "lab/x", "--no-onnx"], capfd, staging, 1, "cannot reach the Hugging Face Hub")
    assert line.startswith(f"liser: error: {endpoint}: ") and "refused" in line


def test_an_unreachable_hub_is_said_before_the_onnx_export(student, staging, monkeypatch, capfd):
    """With the ONNX export (the default) the Hub is asked first: seconds of export, then
    "cannot reach", would be the wrong order."""
    import liser_core.export

    exported = []
    monkeypatch.setattr(liser_core.export, "export", lambda *a, **k: exported.append(a))
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    line = push_fails([str(student), "lab/x"], capfd, staging, 1, "cannot reach the Hugging Face Hub")
    assert line.startswith(f"liser: error: {endpoint}: ") and exported == []


@pytest.fixture
def silent_endpoint():
    """A local TCP port that accepts connections (the kernel's backlog) and never answers. It
    closes after 20 s, so code that would wait forever fails the test instead of hanging it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    closer = threading.Timer(20.0, listener.close)
    closer.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    closer.cancel()
    listener.close()


@pytest.mark.parametrize("how", ["option", "env"])
def test_push_to_a_silent_endpoint_times_out_in_one_line(how, student, staging, silent_endpoint, monkeypatch, capfd):
    monkeypatch.setenv("HF_ENDPOINT", silent_endpoint)
    if how == "env":
        monkeypatch.setenv("LISER_HUB_TIMEOUT", "1")
    args = [str(student), "lab/x", "--no-onnx", *(["--timeout", "1"] if how == "option" else [])]
    t0 = time.perf_counter()
    line = push_fails(args, capfd, staging, 1, "did not answer within 1 s")
    assert time.perf_counter() - t0 < 10, "the timeout did not apply"
    assert line.startswith(f"liser: error: {silent_endpoint}: ") and "--timeout or LISER_HUB_TIMEOUT" in line


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_a_bad_timeout_is_a_usage_error(value, student, staging, monkeypatch, capfd):
    monkeypatch.setenv("LISER_HUB_TIMEOUT", value)
    push_fails([str(student), "lab/x", "--no-onnx"], capfd, staging, 2, "LISER_HUB_TIMEOUT")


def test_the_timeout_scope_restores_the_previous_client(staging):
    """Outside a push, huggingface_hub's client is the one it was (no timeout imposed)."""
    from huggingface_hub.utils import _http, get_session

    from liser_tools.hub import timeouts

    before = _http._GLOBAL_CLIENT_FACTORY
    with timeouts(1.5):
        assert get_session().timeout.read == 1.5 and get_session().timeout.connect == 1.5
    assert _http._GLOBAL_CLIENT_FACTORY is before and get_session().timeout.read != 1.5
