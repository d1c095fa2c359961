#!/usr/bin/env python3
"""Requests shaped like the prompt policy's, against a llama.cpp server on loopback.

  scripts/serve_llamacpp.sh 8798 2 [--cache true] &   # the server (extra arguments pass through)
  python3 scripts/bench_llamacpp_requests.py --port 8798            # completions: seconds
  scripts/serve_llamacpp.sh 8799 2 --embedding true &
  python3 scripts/bench_llamacpp_requests.py --port 8799 --embeddings   # cosines of seed queries

Completions: 32 text completions (8 queries x 4 rollouts, the rollouts of a query shown 2 of 12
exemplars drawn at random, Gemma's template, the example agent's system prompt and sampling),
4 in flight. Embeddings: the cosine of the mean-pooled vectors of seed-suite queries of the same
and of other families. Prints one JSON line. Standard library only.
"""
import argparse
import concurrent.futures as cf
import json
import math
import pathlib
import random
import re
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=600))


def system_prompt():
    text = (ROOT / "examples/agents/gemma-api.yaml").read_text()
    block = re.search(r"^system_prompt: \|\n((?:  .*\n|\n)+)", text, re.M).group(1)
    return "\n".join(line[2:] for line in block.splitlines()).strip()


def exemplar(query, code, out):
    call = json.dumps({"name": "python", "arguments": {"code": code}})
    return f"Task: {query}\n<tool_call>{call}</tool_call>\n<tool_response>\n{out}\n</tool_response>\n<answer>{out}</answer>"


def completions(port):
    bank = [exemplar(f"Sort the list [{i}, 3, 9, 1]", f"print(sorted([{i}, 3, 9, 1]))", "[1, 3, 9]") for i in range(6)]
    bank += [exemplar(f"Find the maximum value in [{i}, 12, 5]", f"print(max([{i}, 12, 5]))", "12") for i in range(6)]
    rng = random.Random(1)
    system = system_prompt()
    prompts = []
    for q in range(8):
        for _ in range(4):
            shown = "\n\n".join(rng.sample(bank, 2))
            prompts.append(f"<start_of_turn>user\n{system}\n\nMore solved tasks:\n\n{shown}\n\n"
                           f"Task: Reverse the list [{q}, 8, 2]<end_of_turn>\n<start_of_turn>model\n")
    body = {"max_tokens": 60, "temperature": 0.7, "top_p": 0.95, "top_k": 64,
            "stop": ["</tool_call>", "</answer>"], "seed": 1}
    start = time.time()
    with cf.ThreadPoolExecutor(4) as pool:
        usage = list(pool.map(lambda p: post(port, "completions", {**body, "prompt": p})["usage"], prompts))
    seconds = time.time() - start
    return {"requests": len(prompts), "seconds": round(seconds, 1),
            "prompt_tokens": sum(u["prompt_tokens"] for u in usage),
            "completion_tokens": sum(u["completion_tokens"] for u in usage)}


def embeddings(port):
    texts = ["Find the maximum value in [3, 17, 4, 6]", "Find the maximum value in [1, 9, 5]",
             "Sort the list [18, 1, 19]", "Sort the list [5, 0, 7]",
             "Reverse the list [2, 4, 6]", "Compute the sum of [4, 19, 18, 3]"]
    data = post(port, "embeddings", {"input": texts})["data"]
    vectors = []
    for d in sorted(data, key=lambda d: d["index"]):
        e = d["embedding"]
        if e and isinstance(e[0], list):  # one vector per token: their mean
            e = [sum(col) / len(e) for col in zip(*e)]
        vectors.append(e)

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    same = [cos(vectors[0], vectors[1]), cos(vectors[2], vectors[3])]
    other = [cos(vectors[i], vectors[j]) for i in (0, 2) for j in range(len(texts)) if j // 2 != i // 2]
    return {"width": len(vectors[0]), "same_family": [round(c, 3) for c in same],
            "other_families": [round(min(other), 3), round(max(other), 3)]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--embeddings", action="store_true")
    a = ap.parse_args()
    print(json.dumps(embeddings(a.port) if a.embeddings else completions(a.port)))


if __name__ == "__main__":
    main()
