#!/usr/bin/env python3
"""Writes kernels/testdata/llamacpp_reference.json: llama.cpp's next-token distributions and greedy continuations on
the same GGUF files, the reference for the quantized-block weights (kernels/tests/quantized.rs).

llama.cpp runs through llama-cpp-python (PyPI, built by `tools/setup.sh llamacpp` into the bench venv) with
`logits_all=True`, on the prompts (token ids) of the transformers fixtures, so both references score the same
tokens:

    tools/setup.sh llamacpp && ~/.cache/radixserve/bench-venv/bin/python tools/llamacpp_fixtures.py   # make fixtures

Per prompt: every position's top-40 log-probabilities (log-softmax over the whole vocabulary, so the rest of the
mass is 1 - their sum) and a 32-token greedy continuation. SmolLM2 always; Qwen2.5-Coder-0.5B when
`make model-qwen` has fetched it.
"""
import json
import os

import numpy as np
from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTDATA = os.path.join(ROOT, "kernels", "testdata")
MODELS = [
    ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2_reference.json"),
    ("qwen2", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2_reference.json"),
]
TOP = 40
GREEDY = 32


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def run(path, prompts, texts):
    """Scores `prompts` (fixture cases with ids) and `texts` (name, text: tokenized here, no special tokens)."""
    llm = Llama(model_path=path, logits_all=True, n_ctx=1024, n_threads=os.cpu_count(), n_batch=512, verbose=False)
    prompts = list(prompts) + [
        {"name": name, "ids": llm.tokenize(text.encode(), add_bos=False, special=False)} for name, text in texts
    ]
    cases = []
    for p in prompts:
        ids = p["ids"]
        llm.reset()
        llm.eval(ids)
        lp = log_softmax(np.array(llm.scores[: len(ids)]))
        top_ids = np.argsort(-lp, axis=-1)[:, :TOP]
        top_lp = np.take_along_axis(lp, top_ids, axis=-1)
        greedy = []
        nxt = int(np.argmax(llm.scores[len(ids) - 1]))
        for _ in range(GREEDY):
            greedy.append(nxt)
            llm.eval([nxt])
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        cases.append({
            "name": p["name"],
            "ids": ids,
            "top_ids": top_ids.tolist(),
            "top_logprobs": np.round(top_lp, 6).tolist(),
            "greedy": greedy,
        })
    return cases


def main():
    with open(os.path.join(TESTDATA, "smollm2_reference.json")) as f:
        smol = json.load(f)["prompts"]
    out = {"generated_by": "tools/llamacpp_fixtures.py", "llama_cpp_python": __import__("llama_cpp").__version__}
    for key, gguf, reference in MODELS:
        path = os.path.join(ROOT, "models", gguf)
        if not os.path.exists(path):
            print(f"llamacpp_fixtures: {gguf} not present, skipped")
            continue
        with open(os.path.join(TESTDATA, reference)) as f:
            prompts = json.load(f)["prompts"]
        # Five prompts each: Qwen's fixture has two chat prompts, so it also scores SmolLM2's three plain texts.
        texts = [] if len(prompts) >= 5 else [(p["name"], p["text"]) for p in smol if not p["chat"]][: 5 - len(prompts)]
        out[key] = {"model": gguf, "prompts": run(path, prompts, texts)}
        print(f"llamacpp_fixtures: {key}: {len(out[key]['prompts'])} prompts")
    with open(os.path.join(TESTDATA, "llamacpp_reference.json"), "w") as f:
        json.dump(out, f, separators=(",", ":"))


if __name__ == "__main__":
    main()
