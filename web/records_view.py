"""GET /records: the request records of a folder, newest first, paged (the picker page's history)."""

from __future__ import annotations

import json

from generation.errors import InvalidRequest
from generation.request_records import RECORD_FOLDER
from web.request_schema import FOLDER_PATTERN

PAGE_SIZE = 10


def records_page(store, folder: str | None, page: str | None, image_url, owner: str | None = None) -> dict:
    """One page of a folder's finished records, each with its prompt, status and images' URLs."""
    import re

    if not folder or not re.fullmatch(FOLDER_PATTERN, folder):
        raise InvalidRequest([{"field": "folder", "message": "must be an output folder, e.g. 000/111"}])
    try:
        number = int(page or 1)
    except ValueError:
        number = 0
    if number < 1:
        raise InvalidRequest([{"field": "page", "message": "must be a whole number from 1"}])
    finished = [(key, modified) for key, modified in store.listing(f"{folder}/{RECORD_FOLDER}")
                if key.endswith(".json") and not key.endswith(".started.json")]
    finished.sort(key=lambda item: item[1], reverse=True)
    start = (number - 1) * PAGE_SIZE
    entries = []
    for key, _ in finished[start:start + PAGE_SIZE]:
        data = store.get(key)
        if data is None:
            continue
        record = json.loads(data)
        parameters = record.get("parameters", {})
        if owner is not None and parameters.get("owner") != owner:
            continue  # another caller's request
        entries.append({
            "request_id": record.get("request_id"), "status": record.get("status"),
            "model_id": record.get("model_id"), "finished_at": record.get("finished_at"),
            "task": parameters.get("task", "text_to_image"), "prompt": parameters.get("prompt"),
            "source": parameters.get("source"),
            "images": [{"key": image["key"], "seed": image.get("seed"),
                        **store.address(image["key"], image_url)}
                       for image in record.get("images", []) if image.get("key")],
        })
    more = len(finished) > start + PAGE_SIZE
    return {"folder": folder, "page": number, "records": entries, "next_page": number + 1 if more else None}
