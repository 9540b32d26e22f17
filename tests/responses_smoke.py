"""Smoke test of radixserve's Responses API with the official openai SDK and the OpenAI Agents SDK: create, stream
(events in order), parse with a Pydantic model, a function-tool round trip, previous_response_id over three turns
(the third turn's input mostly from the radix cache), and an agent with one function tool through its Responses
model, end to end.

Usage: python tests/responses_smoke.py BASE_URL API_KEY   (run by `cargo test -p radixserve-tests --test openai_sdk`)
"""

import asyncio
import json
import sys

import openai
from pydantic import BaseModel


class City(BaseModel):
    name: str
    country: str


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def main(base_url: str, api_key: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key)
    model = next(m.id for m in client.models.list().data if getattr(m, "kind", "chat") == "chat")

    r = client.responses.create(model=model, input="What is the capital of France?", max_output_tokens=24,
                                temperature=0)
    assert r.object == "response" and r.status in ("completed", "incomplete"), r
    assert r.output_text, r
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens

    # Streaming: the typed events in order, with sequence numbers; the text adds up.
    kinds, text = [], ""
    with client.responses.stream(model=model, input="Say hello.", max_output_tokens=12, temperature=0) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds
    assert kinds[-1] == "response.completed", kinds
    order = ["response.output_item.added", "response.content_part.added", "response.output_text.delta",
             "response.output_text.done", "response.content_part.done", "response.output_item.done"]
    positions = [kinds.index(k) for k in order]
    assert positions == sorted(positions), kinds
    assert final.output_text == text, (final.output_text, text)

    # parse with a Pydantic model: grammar-constrained, so it always validates.
    parsed = client.responses.parse(model=model, input="Paris is a city in France. Give its name and country.",
                                    text_format=City, temperature=0)
    assert isinstance(parsed.output_parsed, City), parsed

    # A function-tool round trip: the call, its output, the final answer.
    first = client.responses.create(model=model, input="What is the weather in Paris?", tools=[WEATHER],
                                    tool_choice="required", parallel_tool_calls=False, temperature=0)
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather", first.output
    args = json.loads(calls[0].arguments)
    assert isinstance(args["city"], str)
    answer = client.responses.create(
        model=model, previous_response_id=first.id, tools=[WEATHER], temperature=0, max_output_tokens=40,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 24 C"}])
    assert answer.output_text, answer

    # Three turns by previous_response_id: the third turn's input is mostly cached.
    t1 = client.responses.create(model=model, input="Name a fruit.", max_output_tokens=12, temperature=0)
    t2 = client.responses.create(model=model, input="Name another one.", previous_response_id=t1.id,
                                 max_output_tokens=12, temperature=0)
    t3 = client.responses.create(model=model, input="And a third.", previous_response_id=t2.id,
                                 max_output_tokens=12, temperature=0)
    cached = t3.usage.input_tokens_details.cached_tokens
    assert cached >= 0.9 * t2.usage.input_tokens, (cached, t2.usage.input_tokens)
    assert client.responses.retrieve(t3.id).id == t3.id
    assert [i.type for i in client.responses.input_items.list(t3.id).data] == ["message"]
    client.responses.delete(t3.id)
    try:
        client.responses.retrieve(t3.id)
        raise AssertionError("a deleted response was found")
    except openai.NotFoundError:
        pass
    try:
        client.responses.create(model=model, input="hi", tools=[{"type": "web_search"}])
        raise AssertionError("a built-in tool was accepted")
    except openai.BadRequestError as e:
        assert "web_search" in str(e), e

    agent_round_trip(base_url, api_key, model)
    print("responses smoke: all passed")


def agent_round_trip(base_url: str, api_key: str, model: str) -> None:
    """The Agents SDK, its Responses model against radixserve: the agent calls the tool and answers."""
    from agents import Agent, ModelSettings, OpenAIResponsesModel, RunConfig, Runner, function_tool
    from agents import set_tracing_disabled

    set_tracing_disabled(True)
    seen = []

    @function_tool
    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        seen.append(city)
        return f"The weather in {city} is sunny, 24 C."

    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=api_key)
    agent = Agent(
        name="weather",
        instructions="You answer weather questions. Call get_weather once, then answer in one sentence from its result.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model=model, openai_client=client),
        # The first turn must call the tool; the agent resets tool_choice after a call (its default), so the
        # second turn answers.
        model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=60, parallel_tool_calls=False),
    )
    result = asyncio.run(Runner.run(agent, "What is the weather in Paris?", max_turns=4,
                                    run_config=RunConfig(tracing_disabled=True)))
    assert seen, "the agent never ran its tool"
    assert isinstance(result.final_output, str) and result.final_output, result
    assert "sunny" in result.final_output.lower() or "24" in result.final_output, result.final_output
    print("agent:", seen, repr(result.final_output[:80]))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
