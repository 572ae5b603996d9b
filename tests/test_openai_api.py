"""The official `openai` Python package against this service's /v1 routes: offline and on the AWS stand-ins."""

from __future__ import annotations

import base64
import io

import openai
import pytest
import requests
from PIL import Image

from admin.api_keys import add_key
from tests.live_stack import start_live_stack
from tests.servers import free_port, start_gunicorn, stop

pytestmark = pytest.mark.live

CORE = "stability.stable-image-core-v1:1"


def png_bytes(size=(512, 512), colour=(200, 40, 40), alpha=None) -> bytes:
    image = Image.new("RGBA" if alpha is not None else "RGB", size, colour if alpha is None else (*colour, 255))
    if alpha is not None:
        # OpenAI's mask convention: fully transparent where the model should paint.
        image.paste((0, 0, 0, 0), alpha)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def decoded(item) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item.b64_json)))


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """gunicorn offline with API keys on and a small rate limit; yields (client, base URL, key file, data dir)."""
    tmp = tmp_path_factory.mktemp("openai-offline")
    keys_file, data = tmp / "keys.json", tmp / "images"
    data.mkdir()
    key = add_key(str(keys_file), "sdk-tests")
    port = free_port()
    proc = start_gunicorn({"AIG_DATA_DIR": str(data), "AIG_API_KEYS_FILE": str(keys_file), "AIG_WORKERS": "1",
                           "AIG_RATE_LIMIT": "40/minute"}, port, tmp / "gunicorn.log")
    base = f"http://127.0.0.1:{port}"
    yield openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0), base, keys_file, data
    stop(proc)


def test_generations_as_b64_json_and_as_a_url_that_downloads_the_png(offline):
    client, _, _, data = offline
    as_b64 = client.images.generate(model="dall-e-3", prompt="a red porsche", response_format="b64_json")
    assert len(as_b64.data) == 1 and decoded(as_b64.data[0]).size == (1024, 1024)
    assert as_b64.size == "1024x1024" and as_b64.output_format == "png"
    as_url = client.images.generate(model="gpt-image-1", prompt="a red porsche", size="512x512")
    url = as_url.data[0].url
    downloaded = requests.get(url, timeout=10)  # no key header: the URL is signed
    assert downloaded.status_code == 200 and downloaded.headers["Content-Type"] == "image/png"
    key = url.split("/images/", 1)[1].split("?")[0]
    assert downloaded.content == (data / key).read_bytes()
    assert key.startswith("openai/sdk-tests/") and Image.open(io.BytesIO(downloaded.content)).size == (512, 512)


def test_n_beyond_one_model_calls_limit_is_more_calls(offline):
    client = offline[0]
    result = client.images.generate(prompt="six cars", n=6, size="256x256", response_format="b64_json")
    assert len(result.data) == 6 and {decoded(d).size for d in result.data} == {(512, 512)}


def test_output_format_is_converted_after_screening(offline):
    client = offline[0]
    result = client.images.generate(prompt="a car", output_format="jpeg", response_format="b64_json")
    assert decoded(result.data[0]).format == "JPEG" and result.output_format == "jpeg"
    as_url = client.images.generate(prompt="a car", output_format="webp")
    assert requests.get(as_url.data[0].url, timeout=10).headers["Content-Type"] == "image/webp"


def test_edits_with_a_mask_and_variations(offline):
    client = offline[0]
    edited = client.images.edit(image=("car.png", png_bytes()), mask=("mask.png", png_bytes(alpha=(0, 0, 256, 256))),
                                prompt="a blue sky", n=2, response_format="b64_json")
    assert len(edited.data) == 2 and decoded(edited.data[0]).size == (512, 512)
    varied = client.images.create_variation(image=("car.png", png_bytes()), n=2, response_format="b64_json")
    assert len(varied.data) == 2


def test_models_lists_the_offered_ones(offline):
    assert [m.id for m in offline[0].models.list()] == ["placeholder"]


def test_errors_surface_as_the_sdks_own_exceptions(offline):
    client, base, _, _ = offline
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(prompt="a car", size="wide")
    assert bad.value.code == "invalid_request" and bad.value.param == "size"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.images.generate(prompt="a car", n=11)
    assert too_many.value.param == "n"
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).images.generate(prompt="a car")
    assert unauthorized.value.code == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as streaming:
        client.images.generate(prompt="a car", stream=True)
    assert streaming.value.param == "stream"


def test_the_rate_limit_is_the_sdks_rate_limit_error(tmp_path):
    port = free_port()
    proc = start_gunicorn({"AIG_DATA_DIR": str(tmp_path), "AIG_WORKERS": "1", "AIG_RATE_LIMIT": "1/minute"}, port,
                          tmp_path / "gunicorn.log")
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        client.images.generate(prompt="a car", response_format="b64_json")
        with pytest.raises(openai.RateLimitError) as limited:
            client.images.generate(prompt="a car")
        assert limited.value.code == "rate_limit_exceeded"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    """The AWS stack (stand-in, moto, gunicorn) with Stable Image Core as the default model."""
    stack = start_live_stack(tmp_path_factory.mktemp("openai-aws"), AIG_BEDROCK_MODEL_ID=CORE,
                             AIG_BEDROCK_FALLBACK_MODEL_IDS="")
    yield openai.OpenAI(base_url=f"{stack.base}/v1", api_key="none", max_retries=0), stack
    stack.stop()


def test_on_the_stand_ins_generations_edits_and_variations(aws):
    client, stack = aws
    made = client.images.generate(prompt="a red porsche", n=2, size="1792x1024", response_format="b64_json")
    assert len(made.data) == 2 and decoded(made.data[0]).size == (1536, 864)  # Core's 16:9, read from the PNG
    linked = client.images.generate(prompt="a red porsche")
    assert requests.get(linked.data[0].url, timeout=10).content[:8] == b"\x89PNG\r\n\x1a\n"  # presigned S3 GET
    edited = client.images.edit(image=("car.png", png_bytes()), mask=("mask.png", png_bytes(alpha=(0, 0, 256, 256))),
                                prompt="a blue sky", response_format="b64_json")
    assert decoded(edited.data[0]).size == (512, 512)
    varied = client.images.create_variation(image=("car.png", png_bytes()), n=2, response_format="b64_json")
    assert len(varied.data) == 2
    calls = stack.standin_stats()["invoke_calls_by_model"]
    assert calls[CORE] == 3 and calls["us.stability.stable-image-inpaint-v1:0"] == 1
    assert calls["stability.sd3-5-large-v1:0"] == 2


def test_on_the_stand_ins_a_content_filter_is_content_policy_violation_and_no_retry(aws):
    client, stack = aws
    with pytest.raises(openai.BadRequestError) as blocked:
        client.images.generate(prompt="a beach [[blocked]]")
    assert blocked.value.code == "content_policy_violation"
    assert blocked.value.response.headers["x-should-retry"] == "false"


def test_an_idempotency_key_covers_the_uploaded_image_and_a_mask_needs_transparency(offline):
    client = offline[0]
    key = {"Idempotency-Key": "upload-1"}
    first = client.images.create_variation(image=("a.png", png_bytes(colour=(255, 0, 0))), response_format="b64_json",
                                           extra_headers=key)
    # Another image under the same key is another request: refused as such, never the first answer again.
    with pytest.raises(openai.UnprocessableEntityError):
        client.images.create_variation(image=("b.png", png_bytes(colour=(0, 0, 255))), extra_headers=key)
    again = client.images.create_variation(image=("a.png", png_bytes(colour=(255, 0, 0))), response_format="b64_json",
                                           extra_headers=key)
    assert again.data[0].b64_json == first.data[0].b64_json
    with pytest.raises(openai.BadRequestError) as opaque:
        client.images.edit(image=("a.png", png_bytes()), mask=("m.png", png_bytes()), prompt="sky")
    assert opaque.value.param == "mask"
