"""Validation chooses, test only reports: the routers' design choices measured on the
validation split (UDHR articles 25–27), never on the test split.

    python benchmarks/router_choices.py --run-dir runs/demo [--json]

Top-1 routing accuracy (the share of validation paragraphs routed to the expert trained on
their language, among the cluster experts) for each alternative:
- TF-IDF: an expert placed at its nearest language's centroid, or at one mean centroid (c-BTM);
- posterior: the share of tokens masked to read each expert's likelihood (0.15, 0.3, 0.5).
The README records what this chose ("Which split chose what").
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from experts.registry import run_registry
from routing import XELM
from routing.api import POSTERIOR_SEED
from xelm.app.transfer import paragraphs
from xelm.data import load_corpus
from xelm.rundir import RunDir

RATIOS = (0.15, 0.3, 0.5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--max-texts", type=int, default=0, help="a deterministic sample of this many paragraphs (0: all)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    run = RunDir(args.run_dir)
    cards = [c for c in run_registry(run).cards() if c.get("kind") == "cluster"]
    own = {lang: c["name"] for c in cards for lang in c["languages"]}
    val = load_corpus(run.config().data.corpus)["validation"]
    texts, langs = paragraphs(val["lang"], val["text"])
    rows = [i for i, lang in enumerate(langs) if lang in own]
    if args.max_texts and len(rows) > args.max_texts:
        rows = sorted(np.random.default_rng(0).choice(rows, args.max_texts, replace=False).tolist())
    texts, truth = [texts[i] for i in rows], [own[langs[i]] for i in rows]
    xelm = XELM.from_run(run.root, experts=[c["name"] for c in cards], max_len=128)
    out = {"split": "validation", "texts": len(texts), "languages": len({langs[i] for i in rows})}

    def accuracy(w_NxE) -> float:
        return float(np.mean([xelm.names[int(np.argmax(w))] == t for w, t in zip(w_NxE, truth)]))

    router = xelm.router("tfidf")
    out["tfidf_nearest_language"] = accuracy(router.route(texts).weights)
    x_NxD = router.space.transform(texts)
    mean_ExD = np.stack([router.space.centroids_KxD[cols].mean(0) for cols in router.columns.values()])
    mean_ExD /= np.maximum(np.linalg.norm(mean_ExD, axis=1, keepdims=True), 1e-12)
    out["tfidf_mean_centroid"] = accuracy(-(1.0 - x_NxD @ mean_ExD.T))
    for ratio in RATIOS:
        t = time.perf_counter()
        lp_ExNxK, w_NxK = xelm.label_logprobs(texts, POSTERIOR_SEED, ratio)
        out[f"posterior_mask_{ratio}"] = accuracy((lp_ExNxK * w_NxK[None]).sum(2).T)
        out[f"posterior_mask_{ratio}_seconds"] = round(time.perf_counter() - t, 1)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:<32}{v:.1%}" if isinstance(v, float) and "seconds" not in k else f"{k:<32}{v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
