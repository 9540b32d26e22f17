"""Smoke test of radixserve with instructor in TOOLS mode: the response model is sent as a function tool (its
Pydantic schema with `$defs`/`$ref`) and the call's arguments are validated into the model, with no retry allowed:
the grammar makes the first answer valid.

Usage: python tests/instructor_smoke.py BASE_URL API_KEY   (run by `cargo test -p radixserve-tests --test openai_sdk`)
"""

import sys

import instructor
import openai

from pydantic_tools import ORDER_PROMPT, TREE_PROMPT, Order, Tree


def main(base_url: str, api_key: str) -> None:
    raw = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=120)
    model = raw.models.list().data[0].id
    client = instructor.from_openai(raw, mode=instructor.Mode.TOOLS)
    for response_model, prompt in [(Order, ORDER_PROMPT), (Tree, TREE_PROMPT)]:
        out = client.chat.completions.create(
            model=model,
            response_model=response_model,
            messages=[{"role": "user", "content": prompt}],
            max_retries=1,
            max_tokens=300,
            temperature=0.7,
            seed=1,
        )
        assert isinstance(out, response_model), out
    print("instructor smoke: all passed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
