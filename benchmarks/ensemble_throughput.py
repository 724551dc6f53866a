"""Ensemble throughput, side by side: one dense model; the top-1 routed ensemble (routing
included); all experts through the stacked compiled call vs a Python loop over them.

    python benchmarks/ensemble_throughput.py --run-dir runs/demo [--texts 512] [--batch-tokens 32]

Texts are a fixed sample of the run corpus's text in the experts' languages; every timing is
the best of ``--repeats`` runs after a warm-up run (compilation excluded). Goals: top-1
routed >= 0.9x dense; stacked >= 1.5x the loop. The stacked call is timed both ways it can
run (vmap; experts one by one inside the call, what big CPU batches use) and for single-text
queries, where per-call overhead matters most.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: compiles, loads and caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, required=True, help="a run with experts (and ideally a baseline)")
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--router", default="tfidf")
    p.add_argument("--routed-only", action="store_true", help="time only the dense model and the routed ensemble")
    args = p.parse_args()

    import jax
    from flax import nnx

    from experts.training import load_base
    from routing import XELM
    from routing.ensemble import label_logprobs, mixture_logprobs, sequential, stack_states
    from routing.masking import batches
    from routing.runfiles import corpus_split
    from routing.scoring import mixture_nll, prepare, score_model
    from xelm.weights import load_weights

    xelm = XELM.from_run(args.run_dir, batch_tokens=args.batch_tokens)
    langs = sorted({lang for c in xelm.cards for lang in c["languages"]})
    texts = [t for split in ("train", "validation", "test") for t in corpus_split(args.run_dir, split, langs)["text"]]
    texts = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))[:args.texts]]
    tok = xelm.tokenizer
    n_tokens = sum(len(s) for s in prepare(tok, texts, xelm.max_len)[0])
    baseline = args.run_dir / "baseline" / "model"
    dense = load_weights(baseline) if (baseline / "model.json").exists() else load_base(args.run_dir)
    dense_name = "dense baseline" if (baseline / "model.json").exists() else "base encoder"
    e = len(xelm.names)
    print(f"{jax.default_backend()} ({jax.device_count()} device(s)); {len(texts)} texts, {n_tokens:,} tokens; "
          f"{e} experts; {args.batch_tokens} tokens a batch; masked-LM scoring, best of {args.repeats}")

    rows = []

    def report(label: str, seconds: float, reference: float | None = None, goal: str = ""):
        ratio = f"{reference / seconds:5.2f}x" if reference else ""
        rows.append(f"{label:<46}{len(texts) / seconds:>10.1f}{n_tokens / seconds:>12.0f}  {ratio:>7}  {goal}")

    t_dense = best_time(lambda: score_model(dense, tok, texts, args.batch_tokens, xelm.max_len), args.repeats)
    report(f"one dense model ({dense_name})", t_dense)
    t_top1 = best_time(lambda: xelm.score(texts, router=args.router, top_k=1), args.repeats)
    report(f"top-1 routed ensemble ({args.router} routing incl.)", t_top1, t_dense, "vs dense (goal >= 0.90x)")
    t_route = best_time(lambda: xelm.route(texts, router=args.router, top_k=1), args.repeats)
    report(f"  of which routing alone ({args.router})", t_route)

    if args.routed_only:
        return print_rows(rows)

    # All experts on every text: one vmapped call per batch vs one call per expert per batch.
    seqs, masks = prepare(tok, texts, xelm.max_len)
    graphdef, stacked = xelm.pool.stacked(tuple(xelm.names))
    singles = [stack_states([nnx.split(xelm.pool.get(n))[1]]) for n in xelm.names]
    uniform = np.full((len(texts), e), 1.0 / e)
    all_batches = list(batches(seqs, masks, tok.mask_token_id, tok.pad_token_id, args.batch_tokens, xelm.max_len))

    def run(states_list, one_by_one):
        total = np.zeros(len(texts))
        for b in all_batches:
            how = sequential(b.ids) if one_by_one is None else one_by_one
            lp_ExBxK = np.concatenate([np.asarray(label_logprobs(graphdef, how, s, *b.arrays()[:5]))
                                       for s in states_list])
            mix_BxK = np.asarray(mixture_logprobs(lp_ExBxK, np.log(uniform[:len(b.ids)])))
            total[b.rows] = -(mix_BxK * b.mask_weights).sum(1)[:len(b.rows)]
        return total

    reference = mixture_nll(graphdef, stacked, uniform, seqs, masks, tok, args.batch_tokens, xelm.max_len)[0]
    assert np.allclose(reference, run(singles, False), rtol=1e-4, atol=1e-3), "stacked and loop disagree"
    t_loop = best_time(lambda: run(singles, False), args.repeats)
    report(f"all {e} experts, Python loop over experts", t_loop)
    report(f"all {e} experts, stacked: vmap", best_time(lambda: run([stacked], False), args.repeats), t_loop,
           "vs loop (goal >= 1.50x)")
    report(f"all {e} experts, stacked: one by one in the call", best_time(lambda: run([stacked], True), args.repeats),
           t_loop, "vs loop")
    report(f"all {e} experts, stacked: as XELM runs it", best_time(lambda: run([stacked], None), args.repeats),
           t_loop, "vs loop")

    # Interactive queries: one text at a time, where per-call overhead dominates.
    def run_one(gd, states_list, text):
        s, m = prepare(tok, [text], xelm.max_len)
        b = next(batches(s, m, tok.mask_token_id, tok.pad_token_id, 1, xelm.max_len))
        return [np.asarray(label_logprobs(gd, False, st, *b.arrays()[:5])) for st in states_list]

    few = texts[:16]
    t_loop1 = best_time(lambda: [run_one(graphdef, singles, t) for t in few], args.repeats)
    t_stack1 = best_time(lambda: [run_one(graphdef, [stacked], t) for t in few], args.repeats)
    rows.append(f"{'all experts, one text per call: loop':<46}{len(few) / t_loop1:>10.1f}")
    rows.append(f"{'all experts, one text per call: stacked vmap':<46}{len(few) / t_stack1:>10.1f}{'':>12}  "
                f"{t_loop1 / t_stack1:5.2f}x  vs loop")

    print_rows(rows)


def print_rows(rows: list[str]) -> None:
    print(f"{'':<46}{'texts/s':>10}{'tokens/s':>12}  {'ratio':>7}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
