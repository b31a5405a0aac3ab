"""Unknown names in a body are refused in Gemini's words; every known spelling passes."""

from __future__ import annotations

from typing import Any

import pytest

from overnight.api.gemini.bodies import (
    BATCH_CREATE,
    BATCH_EMBED_CONTENTS,
    COUNT_TOKENS,
    UPLOAD_START,
    WEBHOOK,
)
from overnight.domain.batches import BatchKind
from overnight.domain.fields import MAX_REPORTED, Shape, check_known, unknown_fields
from overnight.errors import InvalidArgument

GENERATE = BATCH_CREATE[BatchKind.GENERATE]


def refused(body: Any, shape: Shape) -> str:
    with pytest.raises(InvalidArgument) as info:
        check_known(body, shape)
    return info.value.message


def test_top_level_typo_in_googles_words() -> None:
    body = {"batch": {"dispalyName": "x", "inputConfig": {"fileName": "files/a"}}}
    assert refused(body, GENERATE) == (
        "Invalid JSON payload received. Unknown name \"dispalyName\" at 'batch': Cannot find field."
    )
    assert refused({"batchh": {}}, GENERATE) == (
        'Invalid JSON payload received. Unknown name "batchh": Cannot find field.'
    )


def test_nested_names_carry_their_path() -> None:
    body = {
        "batch": {
            "inputConfig": {
                "requests": {
                    "requests": [
                        {"request": {"contents": [{"parts": [{"text": "a"}]}]}},
                        {
                            "request": {
                                "contents": [{"parts": [{"txt": "b"}]}],
                                "generationConfig": {"temprature": 1},
                            },
                            "metdata": {"k": "v"},
                        },
                    ]
                }
            }
        }
    }
    found = unknown_fields(body, GENERATE)
    item = "batch.inputConfig.requests.requests[1]"
    assert found == [
        ("txt", f"{item}.request.contents[0].parts[0]"),
        ("temprature", f"{item}.request.generationConfig"),
        ("metdata", item),
    ]


def test_what_the_sdk_sends_is_known() -> None:
    # Spec §4.2: the observed inline body, snake_case pieces and webhookConfig included.
    body = {
        "batch": {
            "displayName": "inlined-requests-job-1",
            "inputConfig": {
                "requests": {
                    "requests": [
                        {
                            "request": {
                                "model": "models/gemini-other",
                                "contents": [
                                    {
                                        "parts": [
                                            {"text": "x"},
                                            {"inlineData": {"data": "AA==", "mime_type": "a/b"}},
                                            {"fileData": {"file_uri": "u", "mime_type": "a/b"}},
                                        ],
                                        "role": "user",
                                    }
                                ],
                                "systemInstruction": {"parts": [{"text": "s"}], "role": "user"},
                                "safetySettings": [
                                    {"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "OFF"}
                                ],
                                "tools": [{"googleSearch": {}}],
                                "generationConfig": {
                                    "temperature": 0.2,
                                    "topK": 40.0,
                                    "responseModalities": ["TEXT"],
                                    "responseSchema": {"type": "ARRAY", "property_ordering": []},
                                    "thinkingConfig": {"thinking_budget": 0},
                                },
                                "labels": {"a": "b"},
                                "serviceTier": "standard",
                                "store": False,
                            },
                            "metadata": {"key": "req-0"},
                        }
                    ]
                }
            },
            "webhookConfig": {"uris": ["https://example.com/h"], "user_metadata": {"job": 1}},
        }
    }
    check_known(body, GENERATE)
    rest = {"batch": {"display_name": "d", "input_config": {"file_name": "files/x"}}}
    check_known(rest, GENERATE)
    embeddings = {
        "batch": {
            "inputConfig": {
                "file_name": "files/a",
                "requests": {
                    "requests": [
                        {
                            "request": {
                                "content": {"parts": [{"text": "t"}], "role": "user"},
                                "taskType": "RETRIEVAL_DOCUMENT",
                                "title": "doc",
                                "outputDimensionality": 3,
                            }
                        }
                    ]
                },
            }
        }
    }
    check_known(embeddings, BATCH_CREATE[BatchKind.EMBED])
    upload = {
        "file": {"name": "files/x", "display_name": "d", "mime_type": "jsonl", "size_bytes": 3}
    }
    check_known(upload, UPLOAD_START)
    check_known(
        {"requests": [{"model": "models/m", "content": {"parts": []}}]}, BATCH_EMBED_CONTENTS
    )
    check_known({"contents": [{"parts": [{"text": "x"}]}]}, COUNT_TOKENS)
    check_known({"generateContentRequest": {"contents": []}}, COUNT_TOKENS)
    check_known({"uri": "u", "subscribed_events": [], "name": "n", "state": "enabled"}, WEBHOOK)


def test_an_embedding_request_in_a_generate_batch_is_unknown() -> None:
    body = {"batch": {"inputConfig": {"requests": {"requests": [{"request": {"content": {}}}]}}}}
    assert '"content"' in refused(body, GENERATE)


def test_free_form_values_are_not_walked() -> None:
    check_known(
        {
            "batch": {
                "inputConfig": {
                    "requests": {
                        "requests": [
                            {
                                "request": {"contents": [], "tools": [{"anything": {"goes": 1}}]},
                                "metadata": {"x": {"y": 1}},
                            }
                        ]
                    }
                }
            }
        },
        GENERATE,
    )


def test_many_unknown_names_are_capped() -> None:
    body = {f"n{i}": 1 for i in range(MAX_REPORTED + 5)}
    message = refused(body, GENERATE)
    assert message.count("Unknown name") == MAX_REPORTED
    assert message.endswith("There are more unknown names.")
