"""Ensemble throughput, side by side: one dense model; the top-1 routed ensemble (routing
included); all experts through the stacked compiled call vs a Python loop over them.

    python benchmarks/ensemble_throughput.py --run-dir runs/demo [--texts 512] [--rounds 3]

Texts are a fixed sample of the run corpus's text in the experts' languages, scored as
masked-LM (``XELM.score``). Each case runs once to warm up (compilation, loading), then the
cases take turns for ``--rounds`` rounds and each keeps its best time, so a machine whose
load changes meanwhile treats them alike. Goals: top-1 routed >= 0.9x dense; stacked >= 1.5x
the loop. The stacked call is timed both ways it can run (vmap over experts; experts one by
one inside the same call, what big CPU batches use) and for one text per call, where
per-call overhead matters most.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def time_cases(cases: dict, rounds: int) -> dict[str, float]:
    for fn in cases.values():
        fn()  # warm-up: compiles, loads and caches
    best = {name: float("inf") for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, required=True, help="a run with experts (and ideally a baseline)")
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per compiled call")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--router", default="tfidf")
    p.add_argument("--routed-only", action="store_true", help="time only the dense model and the routed ensemble")
    args = p.parse_args()

    import jax
    from flax import nnx

    from routing import XELM
    from routing.ensemble import label_logprobs, mixture_logprobs, sequential, stack_states
    from routing.runfiles import corpus_split
    from routing.scoring import mixture_nll, prepare, score_model
    from xelm.batches import length_bucketed
    from xelm.rundir import RunDir

    xelm = XELM.from_run(args.run_dir, batch_tokens=args.batch_tokens)
    tok, e = xelm.tokenizer, len(xelm.names)
    langs = sorted({lang for c in xelm.cards for lang in c["languages"]})
    texts = [t for split in ("train", "validation", "test") for t in corpus_split(args.run_dir, split, langs)["text"]]
    texts = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))[:args.texts]]
    seqs, masks = prepare(tok, texts, xelm.max_len)
    n_tokens = sum(len(s) for s in seqs)
    run = RunDir(args.run_dir)
    has_baseline = run.has_dense()
    dense = run.dense() if has_baseline else run.base()
    print(f"{jax.default_backend()} ({jax.device_count()} device(s)); {len(texts)} texts, {n_tokens:,} tokens; "
          f"{e} experts; {args.batch_tokens} padded tokens per call; best of {args.rounds} interleaved rounds")

    dense_name = f"one dense model ({'dense baseline' if has_baseline else 'base encoder'})"
    routed_name = f"top-1 routed ensemble ({args.router}, routing incl.)"
    routing_name = f"  of which routing alone ({args.router})"
    cases = {dense_name: lambda: score_model(dense, tok, texts, args.batch_tokens, xelm.max_len),
             routed_name: lambda: xelm.score(texts, router=args.router, top_k=1),
             routing_name: lambda: xelm.route(texts, router=args.router, top_k=1)}
    ratios = {routed_name: (dense_name, "vs dense (goal >= 0.90x)")}

    if not args.routed_only:
        # All experts on every text: one compiled call per batch vs one call per expert per batch.
        graphdef, stacked = xelm.pool.stacked(tuple(xelm.names))
        singles = [stack_states([nnx.split(xelm.pool.get(n))[1]]) for n in xelm.names]
        uniform = np.full((len(texts), e), 1.0 / e)
        all_batches = list(length_bucketed(seqs, masks, mask_id=tok.mask_token_id, pad_id=tok.pad_token_id,
                                           batch_tokens=args.batch_tokens, max_len=xelm.max_len))

        def run(states_list, one_by_one):
            total = np.zeros(len(texts))
            for rows, b in all_batches:
                how = sequential(b) if one_by_one is None else one_by_one
                lp_ExBxK = np.concatenate([np.asarray(label_logprobs(graphdef, how, s, b))
                                           for s in states_list])
                mix_BxK = np.asarray(mixture_logprobs(lp_ExBxK, np.log(uniform[:len(b.input_ids_BxS)])))
                total[rows] = -(mix_BxK * b.mask_weights_BxK).sum(1)[:len(rows)]
            return total

        reference = mixture_nll(graphdef, stacked, uniform, seqs, masks, tok, args.batch_tokens, xelm.max_len)[0]
        assert np.allclose(reference, run(singles, False), rtol=1e-4, atol=1e-3), "stacked and loop disagree"

        def one_text_each(states_list):
            for s, m in zip(seqs[:16], masks[:16]):
                _, b = next(length_bucketed([s], [m], mask_id=tok.mask_token_id, pad_id=tok.pad_token_id,
                                            batch_tokens=1, max_len=xelm.max_len))
                [np.asarray(label_logprobs(graphdef, False, st, b)) for st in states_list]

        loop, loop1 = f"all {e} experts: Python loop over experts", "one text per call (16): loop over experts"
        stacked_cases = {f"all {e} experts: stacked, vmap": lambda: run([stacked], False),
                         f"all {e} experts: stacked, one by one in the call": lambda: run([stacked], True),
                         f"all {e} experts: stacked, as XELM runs it": lambda: run([stacked], None)}
        cases |= {loop: lambda: run(singles, False), **stacked_cases,
                  loop1: lambda: one_text_each(singles),
                  "one text per call (16): stacked, vmap": lambda: one_text_each([stacked])}
        ratios |= {name: (loop, "vs loop (goal >= 1.50x)") for name in stacked_cases}
        ratios["one text per call (16): stacked, vmap"] = (loop1, "vs loop")

    best = time_cases(cases, args.rounds)
    print(f"{'':<50}{'texts/s':>9}{'tokens/s':>10}  {'ratio':>6}")
    for name, t in best.items():
        n = 16 if name.startswith("one text") else len(texts)
        tokens = f"{n_tokens / t:>10.0f}" if n == len(texts) else f"{'':>10}"
        ratio = f"{best[ratios[name][0]] / t:5.2f}x  {ratios[name][1]}" if name in ratios else ""
        print(f"{name:<50}{n / t:>9.1f}{tokens}  {ratio}")


if __name__ == "__main__":
    main()
