"""A cluster plan built from a corpus: the texts TF-IDF, balancing and fallbacks need come from
its train split, and the ``model`` method embeds held-out text with a run's base encoder."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

from clustering import uriel
from clustering.planning import PlanResult, make_plan
from xelm.data import columns, load_corpus, texts_by_lang
from xelm.embed import language_embeddings
from xelm.errors import XelmError
from xelm.rundir import RunDir


def build_plan(languages: list[str], corpus: str, method: str, k: int, balanced: bool = False, seed: int = 0,
               run_dir=None, needs_texts: bool = True, features: str | None = None,
               by_script: bool = False, progress: bool = False) -> PlanResult:
    """The plan for ``languages`` of ``corpus``: texts for TF-IDF, balancing and fallbacks come
    from the train split; the model method embeds held-out (validation) text (under a progress
    bar when ``progress``); ``by_script`` keeps the corpus's main scripts apart."""
    split = corpus_split(corpus, languages, "train") if needs_texts else {}
    scripts = main_scripts(corpus, languages) if by_script else None
    sizes = None
    if balanced and split and all(split.get(lang) for lang in languages):
        sizes = {lang: sum(len(t) for t in split[lang]) for lang in languages}
    embeddings = None
    if method == "model":
        held = corpus_split(corpus, languages, "validation")
        train = split or corpus_split(corpus, languages, "train")
        held.update({lang: train[lang] for lang in languages if lang not in held and lang in train})
        embeddings = encoder_embeddings(run_dir, held, progress)
    result = make_plan(languages, method, k, texts_by_lang=split, sizes=sizes, embeddings=embeddings,
                       balanced=balanced, seed=seed, features=features, scripts=scripts)
    result.plan["corpus"] = corpus
    if sizes is not None:
        result.plan["sizes"] = "characters of the train split"
    return result


def needs_texts(method: str, balanced: bool, languages: list[str] | None) -> bool:
    """TF-IDF, balancing and fallbacks need text; a plain typology plan of known codes does not."""
    return (method != "typology" or balanced or not languages
            or any(not uriel.has_uriel(c) for c in languages))


def corpus_split(corpus: str, languages: list[str], split: str) -> dict[str, list[str]]:
    """Texts per language of one split (languages the corpus lacks are simply absent)."""
    wanted = set(languages)
    return {lang: texts for lang, texts in texts_by_lang(cached_corpus(corpus)[split]).items() if lang in wanted}


def main_scripts(corpus: str, languages: list[str]) -> dict[str, str]:
    """Each language's most frequent script over its train rows (as the corpus records it)."""
    wanted, counts = set(languages), {}
    data = cached_corpus(corpus)["train"]
    for lang, script, text in zip(*columns(data, "lang", "script", "text")):
        if lang in wanted:
            per = counts.setdefault(lang, Counter())
            per[script] += len(text)
    return {lang: per.most_common(1)[0][0] for lang, per in counts.items()}


@lru_cache(maxsize=2)
def cached_corpus(spec: str):
    return load_corpus(spec)


def encoder_embeddings(run_dir, texts_by_lang: dict[str, list[str]], progress: bool = False) -> dict:
    """Per-language mean-pooled embeddings from the run's base encoder (held-out text)."""
    run = RunDir(run_dir) if run_dir is not None else None
    if run is None or not run.has_base():
        where = f"{run_dir}/base" if run_dir else "a run directory's base/ (give --run-dir DIR)"
        raise XelmError(f"--method model needs the finished base encoder in {where}: train it with "
                        "`xelm pretrain --run-dir DIR` or import one with `xelm import-hf PATH --run-dir DIR`")
    return language_embeddings(run.base(), run.tokenizer(), texts_by_lang, progress=progress,
                               desc="embedding held-out text with the base encoder")
