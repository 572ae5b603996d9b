"""The stand-in's editing tasks: Titan/Nova task types and the Stability Image Services, over real boto3."""

from __future__ import annotations

import base64
import io
import json

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from PIL import Image, ImageDraw

from standins.aws_standin import BLOCKED_PROMPT_MESSAGE, NOVA_CANVAS, TITAN_V2, StandinServer
from tests.test_standin_stability import error_of  # noqa: E402 - one helper for all stand-in tests

pytestmark = pytest.mark.integration

NO_RETRY = Config(retries={"mode": "standard", "total_max_attempts": 1})
VIRGINIA = "us-east-1"
US_REGIONS = ("us-east-1", "us-east-2", "us-west-2")
INVALID_ID = "The provided model identifier is invalid."
EOL_INVOKE = (
    "This model version has reached the end of its life. Please refer to the AWS documentation for more details."
)
ALL_SERVICES = (
    "stable-conservative-upscale", "stable-creative-upscale", "stable-fast-upscale", "stable-image-inpaint",
    "stable-outpaint", "stable-image-search-recolor", "stable-image-search-replace", "stable-image-erase-object",
    "stable-image-remove-background", "stable-image-control-sketch", "stable-image-control-structure",
    "stable-image-style-guide", "stable-style-transfer",
)


def profile(name: str) -> str:
    """The US inference profile id of an Image Service."""
    return f"us.stability.{name}-v1:0"


def base(name: str) -> str:
    """The foundation-model id of an Image Service."""
    return f"stability.{name}-v1:0"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server():
    """One in-process stand-in for the module; flat pictures keep big outputs cheap."""
    standin = StandinServer("127.0.0.1", 0, png_kind="flat").start()
    yield standin
    standin.stop()


@pytest.fixture(autouse=True)
def fresh(server):
    """Zeroed stats and start-up knobs for every test."""
    server.reset()


@pytest.fixture
def aws_env(monkeypatch):
    """Dummy credentials; nothing may reach real AWS."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", VIRGINIA)
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def session():
    """One boto3 session for the module: it caches service models, so clients are cheap."""
    return boto3.session.Session()


@pytest.fixture
def runtime(aws_env, session, server):
    """Factory: a SigV4 bedrock-runtime client for a region, without retries."""

    def make(region=VIRGINIA):
        return session.client("bedrock-runtime", region_name=region, endpoint_url=server.url, config=NO_RETRY)

    return make


@pytest.fixture
def control(aws_env, session, server):
    """Factory: a `bedrock` control-plane client for a region."""

    def make(region=VIRGINIA):
        return session.client("bedrock", region_name=region, endpoint_url=server.url, config=NO_RETRY)

    return make


# ---------------------------------------------------------------- helpers


def encoded(width, height, fmt="PNG", mode="RGB", colour=(30, 90, 160), **options) -> str:
    """A real input image, base64-encoded."""
    out = io.BytesIO()
    Image.new(mode, (width, height), colour).save(out, fmt, **options)
    return base64.b64encode(out.getvalue()).decode()


def mask(width, height, grey=False) -> str:
    """A white mask with a black box (pure black/white unless ``grey``)."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(image).rectangle((width // 4, height // 4, width // 2, height // 2), fill=(0, 0, 0))
    if grey:
        image.putpixel((1, 1), (128, 128, 128))
    out = io.BytesIO()
    image.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def invoke(client, body, model_id) -> dict:
    """Call InvokeModel; return the parsed JSON body of a 200."""
    response = client.invoke_model(modelId=model_id, body=body if isinstance(body, str) else json.dumps(body))
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    return json.loads(response["body"].read())




def decoded(b64: str) -> Image.Image:
    """One answer image, fully decoded."""
    image = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    image.load()
    return image


def assert_transparent(image: Image.Image) -> None:
    """An alpha channel with fully transparent and fully opaque pixels."""
    assert image.mode == "RGBA"
    assert image.getchannel("A").getextrema() == (0, 255)


def assert_malformed(error: ClientError, expected: str) -> None:
    """A 400 ValidationException in Bedrock's schema-violation wording."""
    assert error.response["Error"]["Code"] == "ValidationException"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    message = error.response["Error"]["Message"]
    assert message.startswith("Malformed input request: " + expected), message
    assert message.endswith(", please reformat your input and try again.")


# ---------------------------------------------------------------- Titan v2 / Nova Canvas task types

PICTURE = encoded(512, 384)  # inside both models' input limits
OTHER_PICTURE = encoded(400, 400, "JPEG")


PARAMS_KEYS = {
    "TEXT_IMAGE": "textToImageParams", "INPAINTING": "inPaintingParams", "OUTPAINTING": "outPaintingParams",
    "IMAGE_VARIATION": "imageVariationParams", "COLOR_GUIDED_GENERATION": "colorGuidedGenerationParams",
    "BACKGROUND_REMOVAL": "backgroundRemovalParams", "VIRTUAL_TRY_ON": "virtualTryOnParams",
}


def amazon_body(task, params, **config) -> dict:
    """A Titan/Nova body; imageGenerationConfig only when given."""
    body = {"taskType": task, PARAMS_KEYS[task]: params}
    if config:
        body["imageGenerationConfig"] = config
    return body


VALID_AMAZON = [
    pytest.param(
        amazon_body("IMAGE_VARIATION", {"images": [PICTURE, OTHER_PICTURE], "similarityStrength": 0.5,
                                        "text": "in autumn", "negativeText": "snow"},
                    numberOfImages=2, width=768, height=768, seed=3),
        2, (768, 768), id="variation",
    ),
    pytest.param(
        amazon_body("INPAINTING", {"image": PICTURE, "maskImage": mask(512, 384), "text": "a red door"},
                    numberOfImages=3, quality="premium", cfgScale=7.5),
        3, (512, 384), id="inpainting-mask-image",
    ),
    pytest.param(
        amazon_body("INPAINTING", {"image": OTHER_PICTURE, "maskPrompt": "the cat"}),  # no text: remove it
        1, (400, 400), id="inpainting-mask-prompt-no-text",
    ),
    pytest.param(
        amazon_body("OUTPAINTING", {"image": PICTURE, "maskPrompt": "the house", "text": "a garden",
                                    "outPaintingMode": "PRECISE", "negativeText": "people"}, numberOfImages=2),
        2, (512, 384), id="outpainting",
    ),
    pytest.param(
        amazon_body("COLOR_GUIDED_GENERATION", {"colors": ["#FF0000", "#00ff7f"], "text": "a kite",
                                                "referenceImage": OTHER_PICTURE}, width=1152, height=768),
        1, (1152, 768), id="color-guided",
    ),
    pytest.param(
        amazon_body("TEXT_IMAGE", {"text": "a kite", "conditionImage": PICTURE, "controlMode": "SEGMENTATION"}),
        1, (1024, 1024), id="text-image-conditioned",
    ),
]


@pytest.mark.parametrize("model_id", [TITAN_V2, NOVA_CANVAS])
@pytest.mark.parametrize(("body", "count", "size"), VALID_AMAZON)
def test_amazon_task_returns_pngs_of_the_expected_size(runtime, server, model_id, body, count, size):
    payload = invoke(runtime(), body, model_id)
    assert payload["error"] is None and len(payload["images"]) == count
    for b64 in payload["images"]:
        image = decoded(b64)
        assert image.format == "PNG" and image.size == size and image.mode == "RGB"
    stats = server.stats()
    assert stats["invoke_calls_by_model"] == {model_id: 1}
    assert stats["images_by_model"] == {model_id: count}


@pytest.mark.parametrize("model_id", [TITAN_V2, NOVA_CANVAS])
def test_amazon_background_removal_is_one_transparent_png_of_the_input_size(runtime, server, model_id):
    payload = invoke(runtime(), amazon_body("BACKGROUND_REMOVAL", {"image": encoded(600, 420, "JPEG")}), model_id)
    assert len(payload["images"]) == 1
    image = decoded(payload["images"][0])
    assert image.format == "PNG" and image.size == (600, 420)
    assert_transparent(image)
    assert server.stats()["images_by_model"] == {model_id: 1}


def test_amazon_edits_differ_by_input_and_repeat_for_the_same_input(runtime):
    client = runtime()

    def inpaint(picture):
        body = amazon_body("INPAINTING", {"image": picture, "maskPrompt": "sky", "text": "stars"}, seed=9)
        return invoke(client, body, NOVA_CANVAS)["images"][0]

    first = inpaint(PICTURE)
    assert first == inpaint(PICTURE)
    assert first != inpaint(encoded(512, 384, colour=(200, 10, 10)))


def _nova(task, params, **config):
    return NOVA_CANVAS, amazon_body(task, params, **config)


def _titan(task, params, **config):
    return TITAN_V2, amazon_body(task, params, **config)


INVALID_AMAZON = [
    pytest.param(*_nova("INPAINTING", {"image": PICTURE, "maskImage": mask(384, 512)}),
                 "#/inPaintingParams/maskImage: maskImage must be the same size as image (512x384), got 384x512",
                 id="mask-wrong-size"),
    pytest.param(*_titan("OUTPAINTING", {"image": PICTURE, "maskImage": mask(512, 384, grey=True), "text": "x"}),
                 "#/outPaintingParams/maskImage: maskImage must contain only pure black", id="mask-grey"),
    pytest.param(*_nova("INPAINTING", {"image": PICTURE, "maskPrompt": "a", "maskImage": mask(512, 384)}),
                 "#/inPaintingParams: exactly one of [maskPrompt, maskImage] is required", id="two-masks"),
    pytest.param(*_titan("INPAINTING", {"image": PICTURE}),
                 "#/inPaintingParams: exactly one of [maskPrompt, maskImage] is required", id="no-mask"),
    pytest.param(*_nova("INPAINTING", {"maskPrompt": "a"}), "#/inPaintingParams: required key [image] not found",
                 id="no-image"),
    pytest.param(*_nova("INPAINTING", {"image": PICTURE, "maskPrompt": "a"}, width=512, height=512),
                 "#/imageGenerationConfig: extraneous key [width] is not permitted", id="inpainting-width"),
    pytest.param(*_titan("OUTPAINTING", {"image": PICTURE, "maskPrompt": "a", "text": "x"}, height=512),
                 "#/imageGenerationConfig: extraneous key [height] is not permitted", id="outpainting-height"),
    pytest.param(*_nova("INPAINTING", {"image": PICTURE, "maskPrompt": "a", "returnMask": True}),
                 "#/inPaintingParams: extraneous key [returnMask] is not permitted", id="return-mask"),
    pytest.param(*_nova("OUTPAINTING", {"image": PICTURE, "maskPrompt": "a", "outPaintingMode": "FAST"}),
                 "#/outPaintingParams/outPaintingMode: FAST is not a valid enum value", id="outpainting-mode"),
    pytest.param(*_titan("OUTPAINTING", {"image": PICTURE, "maskPrompt": "a"}),
                 "#/outPaintingParams: required key [text] not found", id="titan-outpainting-text"),
    pytest.param(*_nova("BACKGROUND_REMOVAL", {"image": PICTURE}, numberOfImages=1),
                 "#: extraneous key [imageGenerationConfig] is not permitted", id="background-config"),
    pytest.param(*_titan("BACKGROUND_REMOVAL", {"image": PICTURE, "text": "cat"}),
                 "#/backgroundRemovalParams: extraneous key [text] is not permitted", id="background-text"),
    pytest.param(*_nova("IMAGE_VARIATION", {"images": [PICTURE] * 6, "text": "x"}),
                 "#/imageVariationParams/images: expected maximum item count: 5, found: 6", id="six-images"),
    pytest.param(*_titan("IMAGE_VARIATION", {"images": []}),
                 "#/imageVariationParams/images: expected minimum item count: 1, found: 0", id="no-images"),
    pytest.param(*_titan("IMAGE_VARIATION", {"images": [PICTURE], "similarityStrength": 0.1}),
                 "#/imageVariationParams/similarityStrength: 0.1 is not greater or equal to 0.2",
                 id="similarity-range"),
    pytest.param(*_nova("IMAGE_VARIATION", {"images": [PICTURE]}),
                 "#/imageVariationParams: required key [text] not found", id="nova-variation-text"),
    pytest.param(*_nova("IMAGE_VARIATION", {"images": [PICTURE, "bm90IGFuIGltYWdl"], "text": "x"}),
                 "#/imageVariationParams/images/1: image must be a base64-encoded PNG or JPEG", id="not-an-image"),
    pytest.param(*_nova("COLOR_GUIDED_GENERATION", {"colors": ["#FF0000", "red"], "text": "x"}),
                 "#/colorGuidedGenerationParams/colors/1: string [red] does not match pattern ^#[0-9A-Fa-f]{6}$",
                 id="bad-colour"),
    pytest.param(*_titan("COLOR_GUIDED_GENERATION", {"colors": ["#FFF"], "text": "x"}),
                 "#/colorGuidedGenerationParams/colors/0: string [#FFF] does not match pattern", id="short-colour"),
    pytest.param(*_nova("COLOR_GUIDED_GENERATION", {"colors": ["#000000"] * 11, "text": "x"}),
                 "#/colorGuidedGenerationParams/colors: expected maximum item count: 10, found: 11",
                 id="eleven-colours"),
    pytest.param(*_titan("COLOR_GUIDED_GENERATION", {"colors": ["#000000"]}),
                 "#/colorGuidedGenerationParams: required key [text] not found", id="colour-text"),
    pytest.param(*_nova("BACKGROUND_REMOVAL", {"image": encoded(512, 384, "WEBP")}),
                 "#/backgroundRemovalParams/image: image must be a base64-encoded PNG or JPEG", id="webp"),
    pytest.param(*_nova("BACKGROUND_REMOVAL", {"image": encoded(512, 384, "GIF")}),
                 "#/backgroundRemovalParams/image: image must be a base64-encoded PNG or JPEG", id="gif"),
    pytest.param(*_nova("BACKGROUND_REMOVAL", {"image": encoded(300, 400)}),
                 "#/backgroundRemovalParams/image: every side must be between 320 and 4096 pixels, got 300x400",
                 id="nova-small"),
    pytest.param(*_nova("BACKGROUND_REMOVAL", {"image": encoded(2000, 400)}),
                 "#/backgroundRemovalParams/image: aspect ratio must be between 1:4 and 4:1", id="nova-aspect"),
    pytest.param(*_nova("BACKGROUND_REMOVAL", {"image": encoded(2048, 2048, "JPEG")}),
                 "#/backgroundRemovalParams/image: total pixel count must be at most 4194303, got 4194304",
                 id="nova-pixels"),
    pytest.param(*_nova("BACKGROUND_REMOVAL", {"image": encoded(512, 384, mode="RGBA", colour=(1, 2, 3, 128))}),
                 "#/backgroundRemovalParams/image: image must not contain transparent or translucent pixels",
                 id="nova-translucent"),
    pytest.param(*_titan("BACKGROUND_REMOVAL", {"image": encoded(1500, 600)}),
                 "#/backgroundRemovalParams/image: every side must be between 256 and 1408 pixels", id="titan-large"),
    pytest.param(*_titan("BACKGROUND_REMOVAL", {"image": encoded(63, 300)}),
                 "#/backgroundRemovalParams/image: every side must be between 256 and 1408 pixels", id="under-64"),
    pytest.param(*_nova("TEXT_IMAGE", {"text": "x", "conditionImage": encoded(100, 100)}),
                 "#/textToImageParams/conditionImage: every side must be between 320", id="condition-small"),
    pytest.param(*_nova("BACKGROUND_REMOVAL", {"image": PICTURE[: len(PICTURE) // 2 // 4 * 4]}),
                 "#/backgroundRemovalParams/image: image data is truncated or corrupt", id="truncated"),
    pytest.param(*_nova("VIRTUAL_TRY_ON", {}), "#/taskType: VIRTUAL_TRY_ON is not a valid enum value",
                 id="virtual-try-on"),
]


@pytest.mark.parametrize(("model_id", "body", "expected"), INVALID_AMAZON)
def test_amazon_invalid_bodies_are_validation_exceptions_and_make_no_image(runtime, server, model_id, body, expected):
    error = error_of(lambda: invoke(runtime(), body, model_id))
    assert_malformed(error, expected)
    stats = server.stats()
    assert stats["invoke_calls_by_model"] == {model_id: 1}
    assert stats["images_by_model"] == {} and stats["images_generated"] == 0


def test_amazon_optional_texts_per_model(runtime):
    client = runtime()
    variation = amazon_body("IMAGE_VARIATION", {"images": [PICTURE]})
    assert len(invoke(client, variation, TITAN_V2)["images"]) == 1  # Titan: text optional (variation)
    outpainting = amazon_body("OUTPAINTING", {"image": PICTURE, "maskPrompt": "the house"})
    assert len(invoke(client, outpainting, NOVA_CANVAS)["images"]) == 1  # Nova: text optional (outpainting)


def test_amazon_edit_markers_block_and_flag(session, runtime, server):
    client = runtime()
    blocked = amazon_body("INPAINTING", {"image": PICTURE, "maskPrompt": "a", "text": "cat [[blocked]]"})
    error = error_of(lambda: invoke(client, blocked, NOVA_CANVAS))
    assert error.response["Error"]["Code"] == "ValidationException"
    assert error.response["Error"]["Message"] == BLOCKED_PROMPT_MESSAGE
    output = amazon_body("IMAGE_VARIATION", {"images": [PICTURE], "text": "cat [[blocked-output]]"})
    payload = invoke(client, output, TITAN_V2)
    assert payload["images"] == [] and "AUP" in payload["error"]
    flagged = amazon_body("COLOR_GUIDED_GENERATION", {"colors": ["#123456"], "text": "a [[flag:Weapons]]"})
    data = base64.b64decode(invoke(client, flagged, NOVA_CANVAS)["images"][0])
    rekognition = session.client("rekognition", endpoint_url=server.url, config=NO_RETRY)
    labels = rekognition.detect_moderation_labels(Image={"Bytes": data})["ModerationLabels"]
    assert [label["Name"] for label in labels] == ["Weapons", "Violence"]
    assert server.stats()["images_by_model"] == {NOVA_CANVAS: 1}


# ---------------------------------------------------------------- Stability Image Services

IMAGE = encoded(300, 200)
SQUARE = encoded(128, 128, "WEBP", lossless=True)

VALID_SERVICES = [
    ("stable-conservative-upscale", {"prompt": "sharp", "image": IMAGE, "creativity": 0.35,
                                     "negative_prompt": "blur", "seed": 12}, (1200, 800)),
    ("stable-creative-upscale", {"prompt": "sharp", "image": encoded(256, 256, "JPEG"), "creativity": 0.1,
                                 "style_preset": "anime"}, (1024, 1024)),
    ("stable-fast-upscale", {"image": encoded(100, 50), "output_format": "png"}, (400, 200)),
    ("stable-image-inpaint", {"prompt": "a red door", "image": IMAGE, "mask": mask(150, 100), "grow_mask": 3,
                              "style_preset": "photographic"}, (300, 200)),
    ("stable-outpaint", {"image": IMAGE, "left": 10, "right": 20, "up": 5, "creativity": 1.0}, (330, 205)),
    ("stable-image-search-recolor", {"prompt": "blue", "image": IMAGE, "select_prompt": "the car",
                                     "grow_mask": 20}, (300, 200)),
    ("stable-image-search-replace", {"prompt": "a dog", "image": IMAGE, "search_prompt": "the cat"}, (300, 200)),
    ("stable-image-erase-object", {"image": IMAGE, "mask": mask(300, 200), "seed": 4294967294}, (300, 200)),
    ("stable-image-control-sketch", {"prompt": "a castle", "image": IMAGE, "control_strength": 0}, (300, 200)),
    ("stable-image-control-structure", {"prompt": "a castle", "image": SQUARE, "control_strength": 1}, (128, 128)),
    ("stable-image-style-guide", {"prompt": "a castle", "image": SQUARE, "aspect_ratio": "16:9",
                                  "fidelity": 0.8}, (1536, 864)),
    ("stable-image-style-guide", {"prompt": "a castle", "image": SQUARE}, (1536, 1536)),
    ("stable-style-transfer", {"init_image": IMAGE, "style_image": SQUARE, "prompt": "", "style_strength": 0.5,
                               "change_strength": 0.1, "composition_fidelity": 1}, (300, 200)),
]


@pytest.mark.parametrize(("name", "body", "size"), VALID_SERVICES)
def test_service_returns_one_image_of_the_expected_size(runtime, server, name, body, size):
    payload = invoke(runtime(), body, profile(name))
    assert set(payload) == {"seeds", "finish_reasons", "images"}
    assert payload["finish_reasons"] == [None] and len(payload["seeds"]) == 1
    seed = payload["seeds"][0]
    assert seed == body["seed"] if body.get("seed") else 1 <= seed <= 4294967294  # 0 or absent: random
    image = decoded(payload["images"][0])
    assert image.format == "PNG" and image.size == size and image.mode == "RGB"
    stats = server.stats()
    assert stats["invoke_calls_by_model"] == {profile(name): 1}
    assert stats["images_by_model"] == {profile(name): 1}


def test_every_service_is_covered():
    assert sorted({name for name, _, _ in VALID_SERVICES} | {"stable-image-remove-background"}) == sorted(
        ALL_SERVICES
    )


@pytest.mark.parametrize(
    ("fmt", "pillow_format", "alpha"), [(None, "PNG", True), ("png", "PNG", True), ("webp", "WEBP", True),
                                        ("jpeg", "JPEG", False)],
)
def test_remove_background_keeps_the_size_with_transparency_where_the_format_allows(runtime, fmt, pillow_format,
                                                                                    alpha):
    body = {"image": encoded(321, 150, "JPEG")} | ({"output_format": fmt} if fmt else {})
    image = decoded(invoke(runtime(), body, profile("stable-image-remove-background"))["images"][0])
    assert image.format == pillow_format and image.size == (321, 150)
    if alpha:
        assert_transparent(image)
    else:
        assert image.mode == "RGB"  # JPEG has no alpha channel


@pytest.mark.parametrize(("fmt", "pillow_format"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_service_output_format_is_honoured(runtime, fmt, pillow_format):
    body = {"prompt": "a castle", "image": IMAGE, "output_format": fmt}
    image = decoded(invoke(runtime(), body, profile("stable-image-control-sketch"))["images"][0])
    assert image.format == pillow_format and image.size == (300, 200)


@pytest.mark.parametrize(
    ("size", "expected"),
    [((2000, 1000), (4096, 2048)), ((1024, 1024), (4096, 4096)), ((4500, 2000), (4500, 2000))],
)
def test_conservative_upscale_caps_the_long_side_at_4096_but_never_shrinks(runtime, size, expected):
    body = {"prompt": "sharp", "image": encoded(*size, "JPEG")}
    assert decoded(invoke(runtime(), body, profile("stable-conservative-upscale"))["images"][0]).size == expected


def test_fast_upscale_accepts_its_own_limits(runtime):
    client = runtime()
    model_id = profile("stable-fast-upscale")
    assert decoded(invoke(client, {"image": encoded(32, 32), "output_format": "png"}, model_id)["images"][0]).size == (
        128, 128
    )
    assert decoded(invoke(client, {"image": encoded(1536, 600, "JPEG"), "output_format": "jpeg"}, model_id)[
        "images"][0]).size == (6144, 2400)


def test_service_seed_repeats_and_inputs_matter(runtime):
    client = runtime()
    model_id = profile("stable-image-inpaint")
    first = invoke(client, {"prompt": "door", "image": IMAGE, "seed": 5}, model_id)
    assert first == invoke(client, {"prompt": "door", "image": IMAGE, "seed": 5}, model_id)
    other = invoke(client, {"prompt": "door", "image": encoded(300, 200, colour=(1, 1, 1)), "seed": 5}, model_id)
    assert other["images"] != first["images"]


LONG = "p" * 10_001

INVALID_SERVICES = [
    ("stable-fast-upscale", {"image": encoded(1600, 100), "output_format": "png"},
     "#/image: every side must be between 32 and 1536 pixels, got 1600x100"),
    ("stable-fast-upscale", {"image": encoded(1100, 1000), "output_format": "png"},
     "#/image: total pixel count must be between 1024 and 1048576, got 1100000"),
    ("stable-fast-upscale", {"image": encoded(31, 64), "output_format": "png"},
     "#/image: every side must be between 32 and 1536 pixels"),
    ("stable-fast-upscale", {"image": encoded(100, 50)}, "#: required key [output_format] not found"),
    ("stable-fast-upscale", {"image": IMAGE, "output_format": "png", "prompt": "x"},
     "#: extraneous key [prompt] is not permitted"),
    ("stable-fast-upscale", {"image": IMAGE, "output_format": "png", "seed": 1},
     "#: extraneous key [seed] is not permitted"),
    ("stable-creative-upscale", {"prompt": "x", "image": encoded(1100, 1000, "JPEG")},
     "#/image: total pixel count must be between 4096 and 1048576, got 1100000"),
    ("stable-creative-upscale", {"prompt": "x", "image": encoded(63, 200)},
     "#/image: every side must be at least 64 pixels, got 63x200"),
    ("stable-conservative-upscale", {"prompt": "x", "image": IMAGE, "creativity": 0.6},
     "#/creativity: 0.6 is not less or equal to 0.5"),
    ("stable-conservative-upscale", {"prompt": "x", "image": IMAGE, "style_preset": "anime"},
     "#: extraneous key [style_preset] is not permitted"),
    ("stable-conservative-upscale", {"prompt": "x", "image": encoded(4000, 3000, "JPEG")},
     "#/image: total pixel count must be at most 9437184, got 12000000"),
    ("stable-image-inpaint", {"prompt": "x", "image": encoded(63, 200)},
     "#/image: every side must be at least 64 pixels, got 63x200"),
    ("stable-image-inpaint", {"prompt": "x", "image": IMAGE, "strength": 0.5},
     "#: extraneous key [strength] is not permitted"),
    ("stable-image-inpaint", {"image": IMAGE}, "#: required key [prompt] not found"),
    ("stable-image-inpaint", {"prompt": " ", "image": IMAGE}, "#/prompt: prompt must not be blank"),
    ("stable-image-inpaint", {"prompt": LONG, "image": IMAGE}, "#/prompt: expected maxLength: 10000, actual: 10001"),
    ("stable-image-inpaint", {"prompt": "x", "image": IMAGE, "grow_mask": 21},
     "#/grow_mask: 21 is not less or equal to 20"),
    ("stable-image-inpaint", {"prompt": "x", "image": IMAGE, "style_preset": "oil-paint"},
     "#/style_preset: oil-paint is not a valid enum value"),
    ("stable-image-inpaint", {"prompt": "x", "image": IMAGE, "mask": encoded(400, 100)},
     "#/mask: aspect ratio must be between 1:2.5 and 2.5:1"),
    ("stable-image-control-sketch", {"prompt": "x", "image": encoded(300, 100)},
     "#/image: aspect ratio must be between 1:2.5 and 2.5:1"),
    ("stable-image-control-sketch", {"prompt": "x", "image": IMAGE, "control_strength": 1.5},
     "#/control_strength: 1.5 is not less or equal to 1"),
    ("stable-image-control-structure", {"prompt": "x", "image": encoded(300, 200, "GIF")},
     "#/image: image must be a base64-encoded JPEG, PNG or WebP"),
    ("stable-outpaint", {"image": IMAGE}, "#: at least one outpaint direction [left, right, up, down] must be"),
    ("stable-outpaint", {"image": IMAGE, "left": 2001}, "#/left: 2001 is not less or equal to 2000"),
    ("stable-outpaint", {"image": IMAGE, "up": 1.5}, "#/up: expected type: Integer, found: BigDecimal"),
    ("stable-outpaint", {"image": IMAGE, "down": -1}, "#/down: -1 is not greater or equal to 0"),
    ("stable-outpaint", {"image": IMAGE, "left": 5, "negative_prompt": "x"},
     "#: extraneous key [negative_prompt] is not permitted"),
    ("stable-outpaint", {"image": IMAGE, "left": 5, "creativity": 0.05},
     "#/creativity: 0.05 is not greater or equal to 0.1"),
    ("stable-image-search-replace", {"prompt": "x", "image": IMAGE}, "#: required key [search_prompt] not found"),
    ("stable-image-search-recolor", {"prompt": "x", "image": IMAGE, "select_prompt": ""},
     "#/select_prompt: select_prompt must not be blank"),
    ("stable-image-erase-object", {"image": IMAGE, "prompt": "x"}, "#: extraneous key [prompt] is not permitted"),
    ("stable-image-erase-object", {"image": IMAGE, "mask": "bm90IGFuIGltYWdl"},
     "#/mask: image must be a base64-encoded JPEG, PNG or WebP"),
    ("stable-image-erase-object", {"image": IMAGE, "seed": 4294967295},
     "#/seed: 4294967295 is not less or equal to 4294967294"),
    ("stable-image-remove-background", {"image": IMAGE, "output_format": "gif"},
     "#/output_format: gif is not a valid enum value"),
    ("stable-image-remove-background", {}, "#: required key [image] not found"),
    ("stable-image-style-guide", {"prompt": "x", "image": IMAGE, "aspect_ratio": "7:3"},
     "#/aspect_ratio: 7:3 is not a valid enum value"),
    ("stable-image-style-guide", {"prompt": "x", "image": IMAGE, "fidelity": "high"},
     "#/fidelity: expected type: Number, found: String"),
    ("stable-style-transfer", {"init_image": IMAGE}, "#: required key [style_image] not found"),
    ("stable-style-transfer", {"init_image": IMAGE, "style_image": IMAGE, "change_strength": 0.05},
     "#/change_strength: 0.05 is not greater or equal to 0.1"),
    ("stable-style-transfer", {"init_image": IMAGE, "style_image": encoded(40, 40)},
     "#/style_image: every side must be at least 64 pixels"),
]


@pytest.mark.parametrize(("name", "body", "expected"), INVALID_SERVICES)
def test_service_invalid_bodies_are_validation_exceptions_and_make_no_image(runtime, server, name, body, expected):
    error = error_of(lambda: invoke(runtime(), body, profile(name)))
    assert_malformed(error, expected)
    stats = server.stats()
    assert stats["invoke_calls_by_model"] == {profile(name): 1}
    assert stats["images_by_model"] == {} and stats["images_generated"] == 0


@pytest.mark.parametrize(
    ("name", "body", "marker", "reason"),
    [
        ("stable-image-inpaint", {"image": IMAGE}, "[[blocked]]", "Filter reason: prompt"),
        ("stable-outpaint", {"image": IMAGE, "left": 8}, "[[inference-error]]", "Inference error"),
        ("stable-image-style-guide", {"image": SQUARE}, "[[blocked-output]]", "Filter reason: output image"),
    ],
)
def test_service_markers_give_a_finish_reason_and_no_image(runtime, server, name, body, marker, reason):
    payload = invoke(runtime(), {**body, "prompt": f"a cat {marker}"}, profile(name))
    assert payload == {"finish_reasons": [reason]}
    stats = server.stats()
    assert stats["finish_reasons"] == {reason: 1} and stats["images_by_model"] == {}


def test_service_flag_marker_reaches_rekognition(session, runtime, server):
    body = {"prompt": "a harbour [[flag:Weapons]]", "image": IMAGE, "search_prompt": "boat"}
    data = base64.b64decode(invoke(runtime(), body, profile("stable-image-search-replace"))["images"][0])
    rekognition = session.client("rekognition", endpoint_url=server.url, config=NO_RETRY)
    labels = rekognition.detect_moderation_labels(Image={"Bytes": data})["ModerationLabels"]
    assert [label["Name"] for label in labels] == ["Weapons", "Violence"]


# ---------------------------------------------------------------- regions and ids

FAST = {"image": encoded(64, 64), "output_format": "png"}


@pytest.mark.parametrize("region", US_REGIONS)
def test_services_work_from_each_us_source_region(runtime, region):
    assert len(invoke(runtime(region), FAST, profile("stable-fast-upscale"))["images"]) == 1


@pytest.mark.parametrize(
    ("model_id", "region"),
    [
        (profile("stable-fast-upscale"), "eu-west-1"),
        (profile("stable-style-transfer"), "ap-northeast-1"),
        (base("stable-fast-upscale"), "eu-west-1"),
    ],
)
def test_service_outside_the_us_regions_is_an_invalid_identifier(runtime, server, model_id, region):
    error = error_of(lambda: invoke(runtime(region), FAST, model_id))
    assert error.response["Error"]["Code"] == "ValidationException"
    assert error.response["Error"]["Message"] == INVALID_ID
    assert server.stats()["images_by_model"] == {}


@pytest.mark.parametrize("name", ALL_SERVICES)
def test_service_base_id_needs_an_inference_profile(runtime, server, name):
    error = error_of(lambda: invoke(runtime("us-west-2"), FAST, base(name)))
    assert error.response["Error"]["Code"] == "ValidationException"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error.response["Error"]["Message"] == (
        f"Invocation of model ID {base(name)} with on-demand throughput isn't supported. Retry your request with "
        "the ID or ARN of an inference profile that contains this model."
    )
    assert server.stats()["invoke_calls_by_model"] == {base(name): 1}


def test_service_by_inference_profile_arn(runtime, server):
    arn = f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{profile('stable-fast-upscale')}"
    assert len(invoke(runtime(), FAST, arn)["images"]) == 1
    assert server.stats()["images_by_model"] == {arn: 1}


def test_profile_prefix_on_a_text_to_image_model_is_unknown(runtime):
    error = error_of(lambda: invoke(runtime("us-west-2"), {"prompt": "cat"}, "us.stability.sd3-5-large-v1:0"))
    assert error.response["Error"]["Code"] == "ResourceNotFoundException"


# ---------------------------------------------------------------- lifecycle knobs and GetFoundationModel


@pytest.mark.parametrize("knob_id", [base("stable-image-inpaint"), profile("stable-image-inpaint")])
def test_retired_and_no_access_knobs_accept_base_or_profile_ids(runtime, server, knob_id):
    client = runtime()
    body = {"prompt": "x", "image": IMAGE}
    server.configure(retired_models=[knob_id])
    error = error_of(lambda: invoke(client, body, profile("stable-image-inpaint")))
    assert error.response["Error"]["Code"] == "ResourceNotFoundException"
    assert error.response["Error"]["Message"] == EOL_INVOKE
    server.configure(retired_models=[], no_access_models=[knob_id])
    error = error_of(lambda: invoke(client, body, profile("stable-image-inpaint")))
    assert error.response["Error"]["Code"] == "AccessDeniedException"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert len(invoke(client, FAST, profile("stable-fast-upscale"))["images"]) == 1
    assert server.stats()["images_by_model"] == {profile("stable-fast-upscale"): 1}


@pytest.mark.parametrize("region", US_REGIONS)
@pytest.mark.parametrize("name", ALL_SERVICES)
def test_get_foundation_model_describes_each_service_base_id(control, name, region):
    details = control(region).get_foundation_model(modelIdentifier=base(name))["modelDetails"]
    assert details["modelId"] == base(name)
    assert details["modelArn"] == f"arn:aws:bedrock:{region}::foundation-model/{base(name)}"
    assert details["providerName"] == "Stability AI"
    assert details["outputModalities"] == ["IMAGE"] and "IMAGE" in details["inputModalities"]
    assert details["inferenceTypesSupported"] == ["INFERENCE_PROFILE"]
    assert details["modelLifecycle"] == {"status": "ACTIVE"}


@pytest.mark.parametrize(
    ("identifier", "region"),
    [(base("stable-outpaint"), "eu-west-1"), (profile("stable-outpaint"), VIRGINIA)],
)
def test_get_foundation_model_refuses_other_regions_and_profile_ids(control, identifier, region):
    client = control(region)
    error = error_of(lambda: client.get_foundation_model(modelIdentifier=identifier))
    assert isinstance(error, client.exceptions.ResourceNotFoundException)


@pytest.mark.parametrize("knob_id", [base("stable-style-transfer"), profile("stable-style-transfer")])
def test_get_foundation_model_lifecycle_knobs_accept_base_or_profile_ids(control, runtime, server, knob_id):
    client = control()
    server.configure(legacy_models={knob_id: {"legacyTime": "2027-01-01", "endOfLifeTime": "2027-07-01"}})
    lifecycle = client.get_foundation_model(modelIdentifier=base("stable-style-transfer"))["modelDetails"][
        "modelLifecycle"]
    assert lifecycle["status"] == "LEGACY" and lifecycle["endOfLifeTime"].year == 2027
    body = {"init_image": IMAGE, "style_image": SQUARE}
    assert len(invoke(runtime(), body, profile("stable-style-transfer"))["images"]) == 1  # legacy still works
    server.configure(retired_models=[knob_id])
    error = error_of(lambda: client.get_foundation_model(modelIdentifier=base("stable-style-transfer")))
    assert isinstance(error, client.exceptions.ResourceNotFoundException)
    assert error.response["Error"]["Message"] == "This model version has reached the end of its life."


# ---------------------------------------------------------------- stats


def test_stats_prove_no_paid_image_for_bad_inputs(runtime, server):
    client = runtime()
    inpaint, nova = profile("stable-image-inpaint"), NOVA_CANVAS
    error_of(lambda: invoke(client, {"prompt": "x", "image": encoded(40, 40)}, inpaint))
    invoke(client, {"prompt": "x", "image": IMAGE}, inpaint)
    error_of(lambda: invoke(client, amazon_body("INPAINTING", {"image": PICTURE, "maskImage": mask(10, 10)}), nova))
    invoke(client, amazon_body("INPAINTING", {"image": PICTURE, "maskPrompt": "a"}, numberOfImages=2), nova)
    stats = server.stats()
    assert stats["invoke_calls_by_model"] == {inpaint: 2, nova: 2}
    assert stats["images_by_model"] == {inpaint: 1, nova: 2}
    assert stats["errors_returned"] == {"ValidationException": 2}
