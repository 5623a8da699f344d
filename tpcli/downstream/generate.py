"""Text generation from a `TpModel` with an `lm` target: greedy, sampling, beam search.

    config = GenerationConfig(max_new_tokens=20, num_beams=4, eos_token_id=2, pad_token_id=1)
    tokens = generate(model, input_ids, attention_mask, config)

Two shapes of model generate:

- decoder-only (GPT-2, LLaMA): `embedding -> causal transformer encoder -> lm`. The prompts are
  left-padded (B, T) with their attention mask; the result is prompt + continuation (B, T + N),
  as `transformers` returns it. Positions count real tokens only, cumsum(mask) - 1, so a
  left-padded prompt sees the positions it would see alone (they are passed as `position_ids`:
  rows of the `pos` table, whose offset must be 0).
- encoder-decoder (T5, BART): the encoder reads the source once; the decoder starts from
  `decoder_start_token_id`; the result is the decoder sequence, start token first (B, 1 + N).

Every step feeds only the new token and reads the keys/values of the earlier ones from a
`KVCache` (self-attention) and the projected memory (cross-attention). A row that has produced
an EOS gets `pad_token_id` afterwards; generation ends when every row has, or after
`max_new_tokens`. The decoding rules are those of `transformers`' `generate` (so a converted
model decodes what the HF one decodes): sampling filters apply temperature, then top-k, then
top-p, each keeping at least one token; beam search keeps `num_beams` running beams and
`num_beams` finished hypotheses per row, scored sum(log p) / generated_length ** length_penalty.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from tpcli.errors import TpError
from tpcli.layers.attention import KVCache

_NEG = -1.0e9  # the score of a beam that must not be picked (as in HF, finite: no inf - inf)


@dataclass
class GenerationConfig:
    """How to decode. Defaults follow `transformers.GenerationConfig` (top_k 50 when sampling)."""

    max_new_tokens: int = 50
    min_new_tokens: int = 0  # EOS is forbidden before this many new tokens
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = 50  # None or 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    num_beams: int = 1
    length_penalty: float = 1.0  # beam score = sum log p / generated_length ** length_penalty
    early_stopping: bool = False  # True: a row is done once it has num_beams finished hypotheses
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None  # None: the first EOS id (or 0)
    decoder_start_token_id: int | None = None  # encoder-decoder models only
    seed: int | None = None  # sampling: a private generator seeded with this (None: torch's)
    eos_ids: list[int] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        e = self.eos_token_id
        self.eos_ids = [] if e is None else [e] if isinstance(e, int) else list(e)
        self.check()

    def check(self) -> None:
        """User errors in the settings, as TpError with the fix."""
        bad = [(self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
               (self.min_new_tokens >= 0, "min_new_tokens must be >= 0"),
               (self.temperature > 0, "temperature must be > 0"),
               (self.top_k is None or self.top_k >= 0, "top_k must be >= 0"),
               (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
               (self.num_beams >= 1, "num_beams must be at least 1"),
               (not (self.do_sample and self.num_beams > 1),
                "sampling and beam search cannot be combined")]
        for ok, message in bad:
            if not ok:
                raise TpError(f"generation: {message}",
                              hint="fix the option (see `tp generate --help`)")

    @property
    def pad(self) -> int:
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_ids[0] if self.eos_ids else 0


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float = 1.0) -> torch.Tensor:
    """logits (B, V) scaled by 1/temperature, then all but the top_k largest and then all
    outside the smallest set whose probability reaches top_p set to -inf. Ties with the k-th
    logit stay; each filter keeps at least the most likely token."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ascending, order = logits.sort(dim=-1)  # (B, V) least likely first
        tail = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1.0 - top_p  # mass outside the top_p
        tail[..., -1] = False  # the most likely token always stays
        logits = logits.masked_fill(tail.scatter(-1, order, tail), float("-inf"))
    return logits


def _lm_target(model: nn.Module) -> nn.Module:
    targets = dict(getattr(model, "targets", None) or {})
    target = targets.get("lm")
    if target is None:
        names = ", ".join(targets) or "none"
        raise TpError(f"this model cannot generate text: it has no `lm` target (targets: {names})",
                      hint="generate with a GPT-style (embedding -> causal encoder -> lm) or a "
                      "seq2seq (encoder -> decoder -> lm) checkpoint; an MLM like BERT fills "
                      "masks but does not continue text")
    return target


def _takes_cache(module: nn.Module | None, what: str) -> nn.Module:
    if module is None or "cache" not in inspect.signature(module.forward).parameters:
        name = type(module).__name__ if module is not None else "none"
        raise TpError(f"this model cannot generate: its {what} ({name}) has no key/value cache",
                      hint="generation supports transformer encoders and decoders")
    return module


class _CausalLM:
    """Decoder-only stepping: embedding -> causal encoder (with a cache) -> lm logits."""

    def __init__(self, model: nn.Module, mask: torch.Tensor) -> None:
        self.lm = _lm_target(model)
        stack = getattr(model, "stack", None)  # None: a dual-stream model
        self.encoder = _takes_cache(getattr(stack, "encoder", None), "encoder")
        self.embedding = stack.embedding
        if not getattr(self.encoder, "causal", False):
            raise TpError("this model cannot generate: its encoder is not causal",
                          hint="only models with model.encoder.mask=causal continue a prompt")
        self.mask = mask  # (B, T) bool, grows by one column per step
        self.cache = KVCache()

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, t) new tokens -> logits (B, V) of the token after the last one."""
        t = ids.shape[1]
        if self.cache.length > 0:
            self.mask = torch.cat([self.mask, self.mask.new_ones(ids.shape)], dim=1)
        positions = (self.mask.long().cumsum(dim=1) - 1).clamp(min=0)[:, -t:]  # (B, t)
        h = self.embedding({"input_ids": ids, "position_ids": positions})  # (B, t, H)
        h = self.encoder(h, self.mask, position_ids=positions, cache=self.cache)
        return self.lm.logits(h[:, -1])  # (B, V)

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder(index)
        self.mask = self.mask.index_select(0, index)


class _Seq2Seq:
    """Encoder-decoder stepping: the memory once, then tgt_embedding -> decoder -> lm logits."""

    def __init__(self, model: nn.Module, inputs: dict[str, torch.Tensor], beams: int) -> None:
        self.lm = _lm_target(model)
        self.decoder = _takes_cache(model.decoder, "decoder")
        self.embedding = model.tgt_embedding
        enc = model.stack(inputs)  # input_ids, or any encoder inputs (speech features)
        mask = enc.mask if enc.mask is not None else torch.ones(
            enc.hidden.shape[:2], dtype=torch.bool, device=enc.hidden.device)
        self.memory = enc.hidden.repeat_interleave(beams, dim=0)  # (B*beams, S, H)
        self.memory_mask = mask.repeat_interleave(beams, dim=0)  # (B*beams, S)
        self.cache = KVCache()

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        past = self.cache.length
        y = self.embedding({"input_ids": ids, "past_length": past})  # (B, t, H)
        y = self.decoder(y, None, self.memory, self.memory_mask, cache=self.cache)
        return self.lm.logits(y[:, -1])  # (B, V)

    def reorder(self, index: torch.Tensor) -> None:
        # beams move only within their row, whose memory they share: the cross caches stay
        self.cache.reorder(index, cross=False)


def _check_positions(embedding: nn.Module, needed: int) -> None:
    """A learned position table (`pos`: an nn.Embedding with max_length rows from `offset`) long
    enough for the `needed` tokens fed (the last new token is never fed); a sinusoidal table
    grows by itself."""
    for name, part in getattr(embedding, "parts", {}).items():
        rows = getattr(getattr(part, "config", None), "max_length", None)
        table = getattr(part, "embedding", None)
        if rows is None or not isinstance(table, nn.Embedding):
            continue
        off = int(getattr(part.config, "offset", 0))
        if needed + off > rows:
            raise TpError(f"the prompt plus max_new_tokens needs {needed} positions, but the "
                          f"model's `{name}` table has {rows - off}",
                          hint="lower max_new_tokens (--max-new-tokens) or shorten the prompt")


def _inputs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise TpError(f"generation needs prompts of shape (batch, length >= 1), got "
                      f"{tuple(input_ids.shape)}", hint="give every prompt at least one token")
    device = next(model.parameters()).device
    mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
            else attention_mask.bool())
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise TpError(f"prompt {empty[0]} of the batch is empty (its attention mask is all 0)",
                      hint="give every prompt at least one token")
    return input_ids.to(device).long(), mask.to(device)


def generate(model: nn.Module, input_ids: torch.Tensor | None,
             attention_mask: torch.Tensor | None, config: GenerationConfig,
             inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Decode from `model` (a TpModel); input_ids (B, T) left-padded for a decoder-only model,
    attention_mask (B, T) 1 = real token (None: no padding); an encoder-decoder model may take
    its encoder's batch keys as `inputs` instead (speech: input_features, attention_mask).
    Returns a LongTensor: prompt + continuation (B, T + N) for a decoder-only model, start
    token + continuation (B, 1 + N) for an encoder-decoder one; rows that stopped early are
    padded with `config.pad`."""
    if inputs is not None:
        if getattr(model, "decoder", None) is None:
            raise TpError("only an encoder-decoder model decodes from encoder inputs",
                          hint="give a decoder-only model its prompt as input_ids")
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        batch = next(iter(inputs.values())).shape[0]
        ids = torch.zeros(batch, 1, dtype=torch.long, device=device)  # sizes the start tokens
    else:
        if input_ids is None:
            raise TpError("generation needs input_ids or encoder inputs",
                          hint="give the prompts as input_ids")
        ids, mask = _inputs(model, input_ids, attention_mask)
        inputs = {"input_ids": ids, "attention_mask": mask}
    k = config.num_beams
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if getattr(model, "decoder", None) is not None:
                if config.decoder_start_token_id is None:
                    raise TpError("an encoder-decoder model needs a decoder start token",
                                  hint="set decoder_start_token_id (T5: the pad id, BART: eos)")
                _check_positions(model.tgt_embedding, config.max_new_tokens)
                stepper: _CausalLM | _Seq2Seq = _Seq2Seq(model, inputs, k)
                start = torch.full((ids.shape[0] * k, 1), config.decoder_start_token_id,
                                   dtype=torch.long, device=ids.device)
            else:
                if not bool(mask[:, -1].all()):
                    raise TpError("a decoder-only model continues the last token of each "
                                  "prompt, but some prompts end in padding",
                                  hint="pad the prompts on the left (the CLI does)")
                _check_positions(model.stack.embedding, ids.shape[1] + config.max_new_tokens - 1)
                start = ids.repeat_interleave(k, dim=0)  # (B*beams, T)
                stepper = _CausalLM(model, mask.repeat_interleave(k, dim=0))
            if k > 1:
                return _beam_search(stepper, start, config)
            return _greedy_or_sample(stepper, start, config)
    finally:
        model.train(was_training)


def _no_eos_yet(scores: torch.Tensor, produced: int, config: GenerationConfig) -> torch.Tensor:
    """EOS forbidden (-inf) while fewer than min_new_tokens tokens are out."""
    if produced < config.min_new_tokens and config.eos_ids:
        scores = scores.clone()
        scores[:, config.eos_ids] = float("-inf")
    return scores


def _greedy_or_sample(stepper: _CausalLM | _Seq2Seq, seq: torch.Tensor,
                      config: GenerationConfig) -> torch.Tensor:
    """seq (B, T0) -> (B, T0 + N): argmax, or a draw from the filtered softmax, per step."""
    gen = None  # None: torch's default generator (reproducible under torch.manual_seed)
    if config.do_sample and config.seed is not None:
        gen = torch.Generator(device=seq.device)
        gen.manual_seed(config.seed)
    eos = torch.tensor(config.eos_ids, dtype=torch.long, device=seq.device)
    done = torch.zeros(seq.shape[0], dtype=torch.bool, device=seq.device)
    new = seq
    for produced in range(config.max_new_tokens):
        scores = _no_eos_yet(stepper.step(new).float(), produced, config)  # (B, V)
        if config.do_sample:
            scores = filter_logits(scores, config.temperature, config.top_k, config.top_p)
            nxt = torch.multinomial(scores.softmax(dim=-1), 1, generator=gen).squeeze(1)
        else:
            nxt = scores.argmax(dim=-1)  # (B,) the first maximum on ties, as HF
        nxt = nxt.masked_fill(done, config.pad)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        done |= torch.isin(nxt, eos)
        if bool(done.all()):
            break
        new = nxt[:, None]
    return seq


def _pick(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, ...) gathered along dim 1 by index (B, M) -> (B, M, ...)."""
    shape = index.shape + x.shape[2:]
    return x.gather(1, index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(shape))


@dataclass
class _Beams:
    """Per row: `k` running beams and the `k` best finished hypotheses (sequences (B, k, L))."""

    running: torch.Tensor  # (B, k, L) tokens, fill after the current length
    run_scores: torch.Tensor  # (B, k) sum of log p; -1e9 for the copies at the start
    finished: torch.Tensor  # (B, k, L)
    fin_scores: torch.Tensor  # (B, k) normalised score; -1e9 while empty
    fin_flag: torch.Tensor  # (B, k) bool: a real hypothesis
    fin_len: torch.Tensor  # (B, k) tokens it generated (with its EOS)
    improvable: torch.Tensor  # (B, 1) bool: a running beam may still beat a finished one


def _start_beams(seq: torch.Tensor, k: int, length: int, fill: int) -> _Beams:
    b = seq.shape[0] // k
    running = seq.new_full((b, k, length), fill)
    running[:, :, :seq.shape[1]] = seq.view(b, k, -1)
    run_scores = torch.zeros(b, k, device=seq.device)
    run_scores[:, 1:] = _NEG  # the k copies of a prompt: only the first may expand at step 1
    return _Beams(running, run_scores, running.clone(), torch.full_like(run_scores, _NEG),
                  torch.zeros_like(run_scores, dtype=torch.bool),
                  torch.zeros_like(run_scores, dtype=torch.long),
                  torch.ones(b, 1, dtype=torch.bool, device=seq.device))


def _beam_step(s: _Beams, logp: torch.Tensor, cur: int, t0: int, max_len: int,
               eos: torch.Tensor, config: GenerationConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of beam search on log p (B, k, V) for position `cur`: updates `s` in place;
    returns (the source beam of each new running beam (B, k), whether every candidate hit EOS
    or the length limit (B, keep))."""
    b, k, v = logp.shape
    keep = max(2, 1 + len(config.eos_ids)) * k  # enough that k candidates without EOS remain
    scores, index = (logp + s.run_scores[..., None]).view(b, k * v).topk(keep, dim=-1)
    source, token = index // v, index % v  # (B, keep)
    cand = _pick(s.running, source)  # (B, keep, L)
    cand[:, :, cur] = token
    stop = torch.isin(token, eos) | (cur + 1 >= max_len)  # (B, keep)
    # the k best candidates that go on
    alive = scores + stop.float() * _NEG
    best = alive.topk(k, dim=-1).indices  # (B, k)
    s.running, s.run_scores = _pick(cand, best), _pick(alive, best)
    # candidates among the first k that stopped join the finished hypotheses if good enough
    new = stop & (torch.arange(keep, device=stop.device) < k)
    norm = scores / float(cur + 1 - t0) ** config.length_penalty
    norm = norm + (s.fin_flag.all(-1, keepdim=True) & config.early_stopping).float() * _NEG
    norm = norm + (~s.improvable).float() * _NEG
    norm = norm + (~new).float() * _NEG
    merged = torch.cat([s.fin_scores, norm], dim=1)  # (B, k + keep)
    top = merged.topk(k, dim=-1).indices
    s.finished = _pick(torch.cat([s.finished, cand], dim=1), top)
    s.fin_scores = _pick(merged, top)
    s.fin_flag = _pick(torch.cat([s.fin_flag, new], dim=1), top)
    lens = torch.cat([s.fin_len, torch.full_like(scores, cur + 1 - t0, dtype=torch.long)], 1)
    s.fin_len = _pick(lens, top)
    return _pick(source, best), stop


def _still_improvable(s: _Beams, cur: int, t0: int, config: GenerationConfig) -> None:
    """Can the best running beam, at its current length, still beat the worst finished one?"""
    best_running = s.run_scores[:, :1] / float(cur - t0) ** config.length_penalty  # (B, 1)
    worst = torch.where(s.fin_flag, s.fin_scores.min(dim=1, keepdim=True).values, _NEG)
    s.improvable = s.improvable & (best_running > worst).any(dim=-1, keepdim=True)


def _beam_search(stepper: _CausalLM | _Seq2Seq, seq: torch.Tensor,
                 config: GenerationConfig) -> torch.Tensor:
    """seq (B*k, T0), k copies of each prompt -> (B, T0 + N): each row's best hypothesis."""
    k, t0 = config.num_beams, seq.shape[1]
    max_len = t0 + config.max_new_tokens
    s = _start_beams(seq, k, max_len, config.pad)
    b = s.running.shape[0]
    eos = torch.tensor(config.eos_ids, dtype=torch.long, device=seq.device)
    offsets = torch.arange(b, device=seq.device)[:, None] * k  # (B, 1) first beam of each row
    new, cur = seq, t0
    while True:
        logp = stepper.step(new).float().log_softmax(dim=-1)  # (B*k, V)
        logp = _no_eos_yet(logp, cur - t0, config).view(b, k, -1)
        source, stop = _beam_step(s, logp, cur, t0, max_len, eos, config)
        stepper.reorder((source + offsets).flatten())
        cur += 1
        _still_improvable(s, cur, t0, config)
        full = bool(s.fin_flag.all()) and config.early_stopping
        if not bool(s.improvable.any()) or full or bool(stop.all()):
            break
        new = s.running[:, :, cur - 1].reshape(b * k, 1)
    best = s.finished[:, 0]  # (B, L) the hypotheses come sorted by score
    best_len = t0 + int(s.fin_len[:, 0].max())
    return best[:, :best_len]
