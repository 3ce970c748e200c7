"""Greedy generation with vLLM, run by the vLLM environment's Python (``make vllm``).

vLLM pins torch and transformers, so it lives in its own environment and this file imports
nothing of fanlora: ``fanlora.serve.vllm_run`` runs it as a script with a request file::

    .venv-vllm/bin/python vllm_worker.py REQUEST.json OUT.json

REQUEST holds ``model``, ``llm_kwargs`` (``LLM(...)`` keyword arguments), ``prompts`` (token
ids), ``adapters`` (name -> PEFT folder; none: the base model), ``new_tokens`` and
``repeats``, and optionally ``batches`` (tenant counts) and ``tokens`` (false: skip the
per-adapter greedy pass). OUT gets, per adapter, the generated token ids of every prompt,
and per tenant count c the seconds of each timed batch of c requests, the i-th with the
i-th adapter (c distinct tenants; the base model when there are no adapters), after one
warm-up batch.
"""

from __future__ import annotations

import json
import sys
import time


def main(request_path: str, out_path: str) -> None:
    # vLLM is imported here, in the script's own process: it is absent from fanlora's
    # environment, and vLLM spawns engine processes that re-import this module
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    from vllm import LLM, SamplingParams

    with open(request_path, encoding="utf-8") as handle:
        request = json.load(handle)
    llm = LLM(model=request["model"], **request["llm_kwargs"])
    params = SamplingParams(temperature=0.0, max_tokens=request["new_tokens"], ignore_eos=True)
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in request["prompts"]]
    adapters = request["adapters"]
    loras = {name: LoRARequest(name, i, path) for i, (name, path) in enumerate(adapters.items(), 1)}
    out = {"tokens": {}, "seconds": {}}
    for name, lora in (loras or {"base": None}).items() if request.get("tokens", True) else ():
        results = llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
        out["tokens"][name] = [list(r.outputs[0].token_ids) for r in results]
    ordered = list(loras.values())
    for count in request.get("batches", []):
        batch = [prompts[i % len(prompts)] for i in range(count)]
        mixed = [ordered[i % len(ordered)] for i in range(count)] if ordered else None
        times = []
        for repeat in range(request.get("repeats", 1) + 1):  # the first one warms up
            started = time.perf_counter()
            llm.generate(batch, params, lora_request=mixed, use_tqdm=False)
            if repeat:
                times.append(time.perf_counter() - started)
        out["seconds"][str(count)] = times
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(out, handle)


if __name__ == "__main__":  # vLLM starts its engine with spawn: the guard is required
    main(sys.argv[1], sys.argv[2])
