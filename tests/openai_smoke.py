"""Smoke test of radixserve with the official `openai` Python SDK: chat, streaming, json_schema (the SDK's own
`parse` helper with a pydantic model), tools with `required`, logprobs, completions, models and errors.

Usage: python tests/openai_smoke.py BASE_URL API_KEY   (run by `cargo test -p radixserve-tests --test openai_sdk`)
"""

import json
import sys

import openai
from pydantic import BaseModel

from pydantic_tools import ORDER_PROMPT, TREE_PROMPT, Order, Tree


def main(base_url: str, api_key: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    assert client.models.retrieve(model).id == model

    # A question SmolLM2 answers with a clear margin (its first token leads by > 1 nat): the bare "What is the
    # capital of France?" is a near-tie ("The" against "L"), which the quantized weights' int8 activations, as
    # llama.cpp's, can tip either way between a cold prompt and a cached one.
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        max_tokens=30,
        temperature=0,
    )
    assert "Paris" in r.choices[0].message.content, r
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    # Streaming with usage: deltas join to the same answer.
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        max_tokens=30,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == r.choices[0].message.content, (text, r.choices[0].message.content)
    assert finish == "stop" and usage.completion_tokens == r.usage.completion_tokens

    # Structured output through the SDK's pydantic helper.
    class City(BaseModel):
        name: str
        country: str
        population: int

    parsed = client.beta.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format=City,
        # Seeded: unseeded sampling from a 135M model sometimes runs a string to the length limit.
        seed=1,
        max_tokens=200,
    )
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City), parsed

    # Tools, required.
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                    "required": ["city", "unit"],
                    "additionalProperties": False,
                },
            },
        }
    ]
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=tools,
        tool_choice="required",
        max_tokens=300,
    )
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and calls, r
    args = json.loads(calls[0].function.arguments)
    assert calls[0].function.name == "get_weather" and set(args) == {"city", "unit"}, args

    # Pydantic models as strict function tools ($defs, enums, nested lists, Optional, recursion), parsed back by the SDK.
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    tools = [openai.pydantic_function_tool(Order), openai.pydantic_function_tool(Tree)]
    for model_cls, prompt in [(Order, ORDER_PROMPT), (Tree, TREE_PROMPT)]:
        r = parse(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            tools=tools,
            tool_choice={"type": "function", "function": {"name": model_cls.__name__}},
            max_tokens=300,
            temperature=0.7,
            seed=1,
        )
        calls = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls" and calls, r
        for call in calls:
            assert isinstance(call.function.parsed_arguments, model_cls), call

    # Logprobs.
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name a fruit."}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    lp = r.choices[0].logprobs.content
    assert len(lp) == r.usage.completion_tokens and all(len(t.top_logprobs) == 3 for t in lp)

    # Legacy completions.
    c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=5, temperature=0)
    # Prompt logprobs, as lm-evaluation-harness asks for them: echo, logprobs, max_tokens 0.
    scored = client.completions.create(model=model, prompt="The capital of France is Paris", echo=True, logprobs=2,
                                       max_tokens=0, temperature=0)
    lp = scored.choices[0].logprobs
    assert scored.choices[0].text == "The capital of France is Paris", scored
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, lp
    assert all(isinstance(x, float) and x <= 0 for x in lp.token_logprobs[1:]), lp
    assert all(len(t) == 2 for t in lp.top_logprobs[1:]), lp
    assert scored.usage.completion_tokens == 0
    assert "Paris" in c.choices[0].text, c

    # Errors arrive as the SDK's typed exceptions.
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], temperature=-1)
        raise AssertionError("temperature -1 was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and "temperature" in str(e)
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError:
        pass
    bad = openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0)
    try:
        bad.models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError:
        pass
    print("openai SDK smoke: all passed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
