"""An aligned model as an OpenAI-compatible API: `alignstudio serve-model` (llama.cpp's server)
answers /v1/models and /v1/chat/completions with a plain HTTP client, and refuses what it cannot serve."""

import json
import subprocess
import time
import urllib.request

import pytest

from studio.runner import free_port

from helpers import ALIGNSTUDIO, cli


def call(url: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


@pytest.mark.slow
def test_serve_model_answers_openai_style_requests_with_the_models_name(tmp_path, models_dir):
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([ALIGNSTUDIO, "serve-model", "default", "--port", str(port), "--workspace",
                             str(tmp_path / "ws"), "--models-dir", str(models_dir)], stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            try:
                models = call(f"{base}/models")
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.time() < deadline, "the server did not come up"
                time.sleep(0.5)
        assert [m["id"] for m in models["data"]] == ["default"]
        reply = call(f"{base}/chat/completions", {"model": "default", "max_tokens": 12, "temperature": 0,
                                                  "messages": [{"role": "user", "content": "Say hello."}]})
        assert reply["model"] == "default" and reply["choices"][0]["message"]["role"] == "assistant"
        assert reply["choices"][0]["message"]["content"].strip()
        # The port in use now: a second server is refused in a sentence.
        again = cli("serve-model", "default", "--port", str(port), workspace=tmp_path / "ws", check=False)
        assert again.returncode != 0 and f"cannot serve on 127.0.0.1:{port}" in again.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "serving default" in (tmp_path / "serve.log").read_text()


def test_serve_model_refuses_what_it_cannot_serve(tmp_path):
    unknown = cli("serve-model", "nothing-here", workspace=tmp_path / "ws", check=False)
    assert unknown.returncode != 0 and "no GGUF model named 'nothing-here'" in unknown.stderr
    exposed = cli("serve-model", "default", "--host", "0.0.0.0", workspace=tmp_path / "ws", check=False)
    assert exposed.returncode != 0 and "without --api-key KEY" in exposed.stderr
