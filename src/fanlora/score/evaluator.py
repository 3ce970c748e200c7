"""S_val of a gated model, straightforwardly or reusing cached layer inputs.

Per sequence i the evaluators return (sum of token losses over the response, token count).
``S = -sum_i loss_i / sum_i n_i`` (metric ``loss``: the negative mean response-token
loss), or the share of examples whose right option has the highest log-likelihood (metric
``accuracy``, each option being one sequence).

Fast and exact: in M_without(m,l) the layers below l have every gate open, so the input of
layer l equals that of M_all; in M_only(m,l) they are all closed, as in M_null. Caching the
input of every layer for M_all and M_null, a module of layer l costs layers l..L-1 only,
and logits are computed only at response positions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from accelerate.utils import send_to_device

from fanlora.data.example import Example
from fanlora.data.formatting import IGNORE, PromptFrame, collate, encode_example, encode_options
from fanlora.errors import FanLoRAError
from fanlora.models.losses import sequence_losses
from fanlora.modules.architectures import FINAL_NORMS
from fanlora.modules.discovery import find_layer_list
from fanlora.score.gates import Gates
from fanlora.score.journal import Journal


@dataclass
class ValSet:
    """Validation sequences in fixed batches; ``owner[i]``/``option[i]``: for sequence i,
    its example and option index (accuracy); ``labels[e]``: the right option of example e."""

    batches: list[dict]
    owner: list[int]
    option: list[int]
    labels: list[int]

    @property
    def num_sequences(self) -> int:
        return len(self.owner)

    @property
    def num_tokens(self) -> int:
        """Token positions, padding included (what the layer-input cache holds)."""
        return sum(b["input_ids"].numel() for b in self.batches)

    def on(self, device: torch.device) -> ValSet:
        """The same set with its batches on ``device``."""
        return replace(self, batches=send_to_device(self.batches, device))


def build_valset(
    tokenizer, examples: list[Example], max_length: int, batch_size: int, metric: str
) -> ValSet:
    """Encode ``examples`` (every option of each, for accuracy) into fixed batches."""
    frame = PromptFrame.of(tokenizer)
    rows, owner, option, labels = [], [], [], []
    for e, example in enumerate(examples):
        if metric == "accuracy":  # every option, or an error naming the one that does not fit
            encoded = encode_options(tokenizer, frame, example, max_length)
            labels.append(example.label)
        else:  # a response too long for max_length leaves D_val, as in training
            row = encode_example(tokenizer, frame, example, max_length)
            fits = row is not None and any(t != IGNORE for t in row["labels"][1:])
            encoded = [row] if fits else []
        for j, row in enumerate(encoded):
            rows.append(row)
            owner.append(e)
            option.append(j)
    if not rows:
        raise FanLoRAError("the validation split has no response tokens within max length")
    pad = tokenizer.pad_token_id
    batches = [collate(rows[i : i + batch_size], pad) for i in range(0, len(rows), batch_size)]
    return ValSet(batches, owner, option, labels)


def score_of(stats: torch.Tensor, valset: ValSet, metric: str) -> float:
    """S_val from per-sequence (loss_sum, count) ``stats`` of shape [n_seq, 2]."""
    if metric == "loss":
        return float(-stats[:, 0].sum() / stats[:, 1].sum())
    best: dict[int, tuple[float, int]] = {}
    for i, (loss, _) in enumerate(stats.tolist()):
        e = valset.owner[i]
        if e not in best or -loss > best[e][0]:
            best[e] = (-loss, valset.option[i])
    return sum(best[e][1] == valset.labels[e] for e in best) / len(best)


@torch.no_grad()
def full_eval(model, valset: ValSet) -> torch.Tensor:
    """The straightforward evaluation: a full forward pass with logits everywhere."""
    out = []
    for batch in valset.batches:
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
        out.append(sequence_losses(logits, batch["labels"]))
    return torch.cat(out).cpu()


CACHE_ARGUMENTS = ("past_key_values", "past_key_value", "layer_past", "cache")


def layer_arguments(layer, args: tuple, kwargs: dict) -> tuple[torch.Tensor, dict]:
    """(hidden states, every other argument by name) of one decoder-layer call.

    Positional arguments are bound to their parameter names, since architectures pass
    different ones positionally (GPT-2 passes its cache and causal mask so; dropping them
    replays the layer with no mask). A KV cache is never replayed (each tail call would
    append to it): cache arguments become None and ``use_cache`` False.
    """
    signature = inspect.signature(layer.forward)
    bound = signature.bind(*args, **kwargs).arguments
    named: dict = {}
    for name, value in bound.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL and value:
            raise FanLoRAError(
                f"fast scoring cannot replay {type(layer).__name__}'s extra "
                "positional arguments; use --mode straightforward"
            )
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            named[name] = value
    hidden = named.pop(next(iter(signature.parameters)))
    for name in CACHE_ARGUMENTS:
        if name in named:
            named[name] = None
    if "use_cache" in signature.parameters or "use_cache" in named:
        named["use_cache"] = False
    return hidden, named


def moved(value, device: torch.device | None, memo: dict):
    """``value`` (tensors in tuples, lists and dicts) on ``device``, each tensor moved once.

    Written by hand because accelerate's ``send_to_device`` copies a tensor each time it
    meets it, and a layer's arguments share tensors across layers (the rotary embeddings,
    the mask): moved layer by layer, they would be copied once per layer.
    """
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:  # the source is kept too, so its id is never reused
            memo[id(value)] = (value, value.to(device))
        return memo[id(value)][1]
    if isinstance(value, tuple | list):
        return type(value)(moved(v, device, memo) for v in value)
    if isinstance(value, dict):
        return {k: moved(v, device, memo) for k, v in value.items()}
    return value


class PrefixCache:
    """Inputs of every decoder layer (and their call kwargs) for each validation batch,
    held on ``store`` (None: where they were computed; "cpu": offloaded, each batch brought
    back to the device when its tail runs)."""

    def __init__(self, model, valset: ValSet, store: torch.device | None = None):
        causal_lm = model.get_base_model()
        model_type = causal_lm.config.model_type
        if model_type not in FINAL_NORMS:
            raise FanLoRAError(
                f"fast scoring does not know {model_type!r}'s final norm; "
                "use --mode straightforward"
            )
        _, self.layers = find_layer_list(causal_lm)
        self.norm = causal_lm.get_submodule(FINAL_NORMS[model_type])
        self.head = causal_lm.get_output_embeddings()
        self.softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
        self.model, self.valset, self.store = model, valset, store

    @torch.no_grad()
    def capture(self) -> list[list[tuple[torch.Tensor, dict]]]:
        """For each batch, [(input hidden state, kwargs)] per layer, plus the final output."""
        captured: list[list[tuple[torch.Tensor, dict]]] = []
        memo: dict = {}  # one batch's tensors, each stored once

        def hook(module, args, kwargs):
            hidden, named = layer_arguments(module, args, kwargs)
            captured[-1].append((moved(hidden, self.store, {}), moved(named, self.store, memo)))

        handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in self.layers]
        try:
            for batch in self.valset.batches:
                captured.append([])
                memo.clear()
                self.model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    use_cache=False,
                )
        finally:
            for handle in handles:
                handle.remove()
        return captured

    @torch.no_grad()
    def tail(self, cache, start: int, batches: list[int] | None = None) -> torch.Tensor:
        """Per-sequence (loss_sum, count) running layers start..L-1 from ``cache``, for all
        batches or only ``batches`` (indices)."""
        out = []
        for index in range(len(cache)) if batches is None else batches:
            batch = self.valset.batches[index]
            back = batch["input_ids"].device if self.store is not None else None
            layer_inputs = moved(cache[index][start:], back, {})
            hidden = layer_inputs[0][0]
            for j in range(start, len(self.layers)):
                result = self.layers[j](hidden, **layer_inputs[j - start][1])
                hidden = result[0] if isinstance(result, tuple) else result
            out.append(self.response_losses(hidden, batch["labels"]))
        return torch.cat(out).cpu()

    def response_losses(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Norm + lm_head only where a next token carries loss."""
        targets = labels[:, 1:]
        rows, cols = (targets != IGNORE).nonzero(as_tuple=True)
        logits = self.head(self.norm(hidden[:, :-1][rows, cols]))
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        losses = F.cross_entropy(logits.float(), targets[rows, cols], reduction="none")
        stats = torch.zeros(labels.shape[0], 2, device=losses.device)
        stats[:, 0].index_add_(0, rows, losses)
        stats[:, 1].index_add_(0, rows, torch.ones_like(losses))
        return stats


# (open gates, layer, "on"/"off"[, batch indices]) -> per-sequence stats
Evaluate = Callable[..., torch.Tensor]


def straightforward(model, gates: Gates, valset: ValSet) -> Evaluate:
    def evaluate(open_keys: set, layer: int, base: str) -> torch.Tensor:
        gates.set_open(open_keys)
        return full_eval(model, valset)

    return evaluate


def fast(model, gates: Gates, valset: ValSet, store: torch.device | None = None) -> Evaluate:
    cache = PrefixCache(model, valset, store)
    gates.all_open()
    prefixes = {"on": cache.capture()}
    gates.set_open(())
    prefixes["off"] = cache.capture()

    def evaluate(open_keys: set, layer: int, base: str, batches=None) -> torch.Tensor:
        gates.set_open(open_keys)
        return cache.tail(prefixes[base], layer, batches)

    return evaluate


def journalled(journal: Journal, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    if key not in journal:
        journal.write(key, stats=compute().tolist())
    return torch.tensor(journal.get(key)["stats"])
