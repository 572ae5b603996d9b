"""A checked GenerationRequest as JSON and back, so a worker on any host runs exactly what the web checked."""

from __future__ import annotations

import base64
import dataclasses
import json

from image_generation import GenerationRequest

VERSION = 1  # bumped when the shape changes, so an old worker refuses what it cannot read


def encode_request(request: GenerationRequest) -> bytes:
    """The request as JSON bytes: tuples as lists, input images as base64."""
    data = dataclasses.asdict(request)
    data["params"] = [[name, value] for name, value in request.params]
    data["inputs"] = [[name, base64.b64encode(png).decode()] for name, png in request.inputs]
    return json.dumps({"version": VERSION, "request": data}, ensure_ascii=False).encode()


def decode_request(raw: bytes) -> GenerationRequest:
    """The request encoded by encode_request; ValueError when it is not one."""
    document = json.loads(raw)
    if not isinstance(document, dict) or document.get("version") != VERSION:
        raise ValueError("not a job request of version 1")
    data = dict(document["request"])
    names = {f.name for f in dataclasses.fields(GenerationRequest)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown request fields {sorted(unknown)}")
    data["seed_range"] = tuple(data["seed_range"])
    data["candidates"] = tuple(data["candidates"])
    data["params"] = tuple((name, value) for name, value in data["params"])
    data["inputs"] = tuple((name, base64.b64decode(png, validate=True)) for name, png in data["inputs"])
    return GenerationRequest(**data)

