"""Smoke test of radixserve with LangChain's ChatOpenAI: invoke, stream, bind_tools and with_structured_output
(json_schema and function_calling, both grammar-constrained on our side).

Usage: python tests/langchain_smoke.py BASE_URL API_KEY   (run by `cargo test -p radixserve-tests --test openai_sdk`)
"""

import sys

from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from pydantic_tools import ORDER_PROMPT, Order


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return "sunny"


class City(BaseModel):
    name: str
    country: str


def main(base_url: str, api_key: str) -> None:
    import openai

    model = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key).models.list().data[0].id
    llm = ChatOpenAI(base_url=f"{base_url}/v1", api_key=api_key, model=model, temperature=0, max_tokens=200, max_retries=0)
    r = llm.invoke("What is the capital of France? Answer in one sentence.")
    assert "Paris" in r.content, r
    chunks = list(llm.stream("Say hi."))
    assert len(chunks) > 1 and "".join(c.content for c in chunks).strip(), chunks

    r = llm.bind_tools([get_weather], tool_choice="required").invoke("What's the weather in Paris?")
    assert r.tool_calls and r.tool_calls[0]["name"] == "get_weather" and "city" in r.tool_calls[0]["args"], r

    for method in ["json_schema", "function_calling"]:
        out = llm.with_structured_output(City, method=method).invoke("Describe Paris: its name and its country.")
        assert isinstance(out, City), (method, out)

    # Nested Pydantic models ($defs/$ref in the schema) as a tool and as structured output through a function call.
    sampled = llm.bind(temperature=0.7, seed=1, max_tokens=300)
    r = sampled.bind_tools([Order], tool_choice="Order").invoke(ORDER_PROMPT)
    assert r.tool_calls and r.tool_calls[0]["name"] == "Order", r
    Order.model_validate(r.tool_calls[0]["args"])
    out = llm.with_structured_output(Order, method="function_calling").invoke(ORDER_PROMPT)
    assert isinstance(out, Order), out
    print("langchain smoke: all passed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
