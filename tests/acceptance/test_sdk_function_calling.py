"""Function calling through the unmodified google-genai SDK against a real ``overnight
serve`` on the bundled SmolLM2-135M-Instruct: ``response.function_calls`` from a
synchronous call and from an inline batch, a conversation carrying a function's
response, and a built-in tool refused by name."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from google import genai
from google.genai import errors, types
from tests.serving import running_server

pytestmark = pytest.mark.model

MODEL = "gemini-2.5-flash"  # the built-in alias of the bundled model
WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="Get the current weather in a city.",
    parameters=types.Schema(
        type=types.Type.OBJECT,
        properties={
            "city": types.Schema(type=types.Type.STRING, max_length=20),
            "unit": types.Schema(type=types.Type.STRING, enum=["celsius", "fahrenheit"]),
        },
        required=["city", "unit"],
    ),
)
ADD = types.FunctionDeclaration(
    name="add",
    description="Add two integers.",
    parameters_json_schema={
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
)
ARGS = {
    "get_weather": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "add": ADD.parameters_json_schema,
}


def config(mode: str, allowed: list[str] | None = None) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        max_output_tokens=64,
        tools=[types.Tool(function_declarations=[WEATHER, ADD])],
        tool_config=types.ToolConfig(
            function_calling_config=types.FunctionCallingConfig(
                mode=types.FunctionCallingConfigMode(mode), allowed_function_names=allowed
            )
        ),
    )


def assert_valid(call: types.FunctionCall, allowed: set[str]) -> None:
    assert call.name in allowed
    jsonschema.validate(call.args, ARGS[call.name])


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path
) -> Iterator[genai.Client]:
    env = {"OVERNIGHT_MODEL_CACHE_DIR": str(model_cache_dir)}
    workdir = tmp_path_factory.mktemp("sdk-tools")
    with running_server(workdir, config="", env=env, timeout=180) as base:
        yield genai.Client(api_key="x", http_options={"base_url": base})  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _no_vertex(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_GENAI_USE_VERTEXAI", raising=False)
    monkeypatch.delenv("GOOGLE_GENAI_USE_ENTERPRISE", raising=False)


def test_generate_content_answers_with_function_calls(client: genai.Client) -> None:
    response = client.models.generate_content(
        model=MODEL, contents="What is the weather in Paris?", config=config("ANY")
    )
    assert response.function_calls and len(response.function_calls) == 1
    assert_valid(response.function_calls[0], {"get_weather", "add"})
    assert response.candidates and response.candidates[0].finish_reason == types.FinishReason.STOP
    narrowed = client.models.generate_content(
        model=MODEL, contents="What is 2 plus 3?", config=config("ANY", ["add"])
    )
    assert narrowed.function_calls
    assert_valid(narrowed.function_calls[0], {"add"})


def test_a_function_response_is_carried_into_the_next_turn(client: genai.Client) -> None:
    contents = [
        types.Content(role="user", parts=[types.Part(text="What is the weather in Paris?")]),
        types.Content(
            role="model",
            parts=[
                types.Part(
                    function_call=types.FunctionCall(
                        name="get_weather", args={"city": "Paris", "unit": "celsius"}
                    )
                )
            ],
        ),
        types.Content(
            role="user",
            parts=[
                types.Part.from_function_response(name="get_weather", response={"temperature": 21})
            ],
        ),
    ]
    response = client.models.generate_content(model=MODEL, contents=contents, config=config("AUTO"))
    assert response.candidates and response.candidates[0].content
    if response.function_calls:
        assert_valid(response.function_calls[0], {"get_weather", "add"})
    else:
        assert response.text
    silent = client.models.generate_content(
        model=MODEL, contents="What is the weather in Paris?", config=config("NONE")
    )
    assert not silent.function_calls and silent.text


def test_an_inline_batch_returns_function_calls(client: genai.Client) -> None:
    requests = [
        types.InlinedRequest(contents=text, config=config("ANY"), metadata={"key": f"k{i}"})
        for i, text in enumerate(["Weather in Oslo?", "What is 4 plus 5?", "Weather in Rome?"])
    ]
    job = client.batches.create(model=MODEL, src=requests)
    deadline = time.monotonic() + 300
    while job.state is not None and job.state.name not in (
        "JOB_STATE_SUCCEEDED",
        "JOB_STATE_FAILED",
    ):
        assert time.monotonic() < deadline, job
        time.sleep(1)
        job = client.batches.get(name=job.name or "")
    assert job.state is not None and job.state.name == "JOB_STATE_SUCCEEDED"
    assert job.dest is not None and job.dest.inlined_responses
    for inlined in job.dest.inlined_responses:
        assert inlined.response is not None and inlined.response.function_calls
        assert_valid(inlined.response.function_calls[0], {"get_weather", "add"})


def test_built_in_tools_are_refused_by_name(client: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as refused:
        client.models.generate_content(
            model=MODEL,
            contents="Who won yesterday?",
            config=types.GenerateContentConfig(
                tools=[types.Tool(google_search=types.GoogleSearch())]
            ),
        )
    assert refused.value.code == 400
    assert "tools[0].googleSearch" in (refused.value.message or "")
    assert "functionDeclarations" in (refused.value.message or "")
