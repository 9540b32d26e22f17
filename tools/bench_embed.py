#!/usr/bin/env python3
"""Embedding throughput and latency: radixserve's /v1/embeddings against sentence-transformers, side by side.

    make bench-embed      # = .venv/bin/python tools/bench_embed.py --bin bin/radixserve

Both run all-MiniLM-L6-v2 (models/all-MiniLM-L6-v2) on the same 128-token passages with the same torch threads
(--threads, default 2): sentence-transformers' `encode` in this process, radixserve over HTTP (tokenization, JSON and
the engine's queue included, so the comparison is conservative for radixserve). Rounds alternate between the two. At
batch B, one call embeds B passages; throughput is passages per second over the round, latency the median call.

Then peak memory (VmHWM) of one server holding SmolLM2 and MiniLM, against two servers holding one each.
Writes bench-out/embed/results.json and prints a table.
"""
import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, models, threads, extra=()):
    port = free_port()
    args = [binary, "serve", "--port", str(port), "--threads", str(threads), *extra]
    for m in models:
        args += ["--model", m]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(base + "/health") as r:
                if r.status == 200:
                    return proc, base
        except Exception:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server {models} did not become ready")


def post(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def passages(tok, n, length, seed=7):
    """`n` texts that tokenize to exactly `length` tokens ([CLS] and [SEP] included)."""
    words = [w for w in tok.get_vocab() if w.isalpha() and w.isascii() and len(w) > 2]
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        text = " ".join(rng.choice(words) for _ in range(length - 2))
        if len(tok(text)["input_ids"]) == length:
            out.append(text)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "bin/radixserve"))
    ap.add_argument("--embed", default=os.path.join(ROOT, "models/all-MiniLM-L6-v2"))
    ap.add_argument("--chat", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--inputs", type=int, default=64, help="passages per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-out/embed"))
    a = ap.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(a.threads)
    st = SentenceTransformer(a.embed, device="cpu")
    texts = passages(st.tokenizer, a.inputs, 128)
    proc, base = start(a.bin, [f"minilm={a.embed}"], a.threads)
    results = []
    try:
        # Warm both up.
        st.encode(texts[:8], batch_size=8)
        post(base, "/v1/embeddings", {"model": "minilm", "input": texts[:8]})
        for b in [int(x) for x in a.batches.split(",")]:
            for r in range(a.rounds):
                for system in ("sentence-transformers", "radixserve"):
                    lat = []
                    t0 = time.perf_counter()
                    for i in range(0, a.inputs, b):
                        chunk = texts[i:i + b]
                        t = time.perf_counter()
                        if system == "radixserve":
                            v = post(base, "/v1/embeddings", {"model": "minilm", "input": chunk})
                            assert len(v["data"]) == len(chunk)
                        else:
                            st.encode(chunk, batch_size=b)
                        lat.append(time.perf_counter() - t)
                    wall = time.perf_counter() - t0
                    row = {"system": system, "batch": b, "round": r, "inputs_per_s": a.inputs / wall,
                           "median_call_ms": statistics.median(lat) * 1e3}
                    results.append(row)
                    print(json.dumps(row), file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait()

    # Peak memory: one server with both models against two servers.
    def served_peak(models):
        p, base = start(a.bin, models, a.threads, ["--kv-cache-mb", "512"])
        try:
            for m in models:
                mid = m.split("=")[0]
                if mid == "minilm":
                    post(base, "/v1/embeddings", {"model": "minilm", "input": texts[:32]})
                else:
                    post(base, "/v1/chat/completions", {"model": mid, "max_tokens": 16,
                                                       "messages": [{"role": "user", "content": "Hi"}]})
            return peak_rss_mb(p.pid)
        finally:
            p.terminate()
            p.wait()

    both = served_peak([f"chat={a.chat}", f"minilm={a.embed}"])
    chat_only = served_peak([f"chat={a.chat}"])
    embed_only = served_peak([f"minilm={a.embed}"])
    memory = {"one_server_both_mb": both, "chat_server_mb": chat_only, "embed_server_mb": embed_only,
              "two_servers_mb": chat_only + embed_only}

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"threads": a.threads, "inputs": a.inputs, "throughput": results, "memory": memory}, f, indent=1)
    print(f"\n{'batch':>5} {'system':>22} {'inputs/s (rounds)':>28} {'median call ms':>16}")
    for b in sorted({r['batch'] for r in results}):
        for system in ("sentence-transformers", "radixserve"):
            rows = [r for r in results if r["batch"] == b and r["system"] == system]
            ips = " ".join(f"{r['inputs_per_s']:.1f}" for r in rows)
            ms = statistics.median(r["median_call_ms"] for r in rows)
            print(f"{b:>5} {system:>22} {ips:>28} {ms:>16.1f}")
        ours = statistics.median(r["inputs_per_s"] for r in results if r["batch"] == b and r["system"] == "radixserve")
        theirs = statistics.median(r["inputs_per_s"] for r in results
                                   if r["batch"] == b and r["system"] == "sentence-transformers")
        print(f"{b:>5} {'ratio (median)':>22} {ours / theirs:>28.2f}x")
    print(f"\npeak RSS: one server with both models {both:.0f} MB; two servers {chat_only:.0f} + {embed_only:.0f} = "
          f"{chat_only + embed_only:.0f} MB")


if __name__ == "__main__":
    main()
