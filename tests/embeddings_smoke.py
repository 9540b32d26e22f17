"""Smoke test of radixserve's /v1/embeddings and two models on one port, with the official openai SDK and
LangChain's OpenAIEmbeddings: float and base64 vectors, then a RAG round trip (embed three passages, pick the
nearest to a question, ask the chat model about it), as the README shows.

Usage: python tests/embeddings_smoke.py BASE_URL API_KEY   (run by `cargo test -p radixserve-tests --test openai_sdk`)
"""

import math
import sys

import openai
from langchain_openai import OpenAIEmbeddings

PASSAGES = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889.",
    "Photosynthesis turns light, water and carbon dioxide into glucose and oxygen in plants.",
    "The Rust borrow checker enforces that references never outlive the data they point to.",
]
QUESTION = "How do plants make sugar from sunlight?"


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def main(base_url: str, api_key: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key)
    models = client.models.list().data
    chat_model = next(m.id for m in models if getattr(m, "kind", None) == "chat")
    embed_model = next(m.id for m in models if getattr(m, "kind", None) == "embedding")

    # The SDK asks for base64 by default and decodes it; float is the JSON list.
    b64 = client.embeddings.create(model=embed_model, input=PASSAGES)
    flt = client.embeddings.create(model=embed_model, input=PASSAGES, encoding_format="float")
    assert len(b64.data) == 3 and len(flt.data) == 3, (b64, flt)
    for x, y in zip(b64.data, flt.data):
        assert len(x.embedding) == 384
        # The same f32s: exact in base64, their shortest decimal in JSON.
        assert max(abs(p - q) for p, q in zip(x.embedding, y.embedding)) < 1e-7, "base64 and float differ"
        assert abs(math.sqrt(sum(v * v for v in x.embedding)) - 1.0) < 1e-5
    assert b64.usage.prompt_tokens == b64.usage.total_tokens > 0
    short = client.embeddings.create(model=embed_model, input="hello", dimensions=128)
    assert len(short.data[0].embedding) == 128
    try:
        client.embeddings.create(model=embed_model, input="")
        raise AssertionError("an empty input was accepted")
    except openai.BadRequestError as e:
        assert "input" in str(e), e

    # LangChain, as vLLM documents it (no client-side tiktoken splitting).
    lc = OpenAIEmbeddings(model=embed_model, base_url=f"{base_url}/v1", api_key=api_key,
                          check_embedding_ctx_length=False)
    docs = lc.embed_documents(PASSAGES)
    query = lc.embed_query(QUESTION)
    assert len(docs) == 3 and len(query) == 384
    assert max(abs(p - q) for p, q in zip(docs[1], flt.data[1].embedding)) < 1e-6

    # RAG: the nearest passage, then the chat model answers from it.
    q = client.embeddings.create(model=embed_model, input=QUESTION).data[0].embedding
    scores = [cosine(q, d.embedding) for d in flt.data]
    best = max(range(3), key=lambda i: scores[i])
    assert best == 1, scores
    answer = client.chat.completions.create(
        model=chat_model,
        messages=[{"role": "system", "content": f"Answer from this passage: {PASSAGES[best]}"},
                  {"role": "user", "content": QUESTION}],
        max_tokens=40, temperature=0)
    text = answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length") and text, answer
    print("rag answer:", text)
    print("all passed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
