"""Language clustering: URIEL typology, TF-IDF, model geometry, plans, plots and the CLI.

Real lang2vec data and real UDHR text throughout; every test runs in seconds on CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clustering import TfidfSpace, make_plan, plan, uriel, write_plan
from clustering.geometry import compare_with_typology, embedding_distances, model_geometry
from clustering.methods import balanced_assignment, balanced_kmeans, purity
from clustering.naming import cluster_names, dominant_group
from clustering.typology import WEIGHTS, typology_distances
from xelm.app.cli import build_parser, dispatch
from xelm.data import load_corpus, texts_by_lang
from xelm.errors import XelmError

FAMILIES = {
    "romance": "spa fra ita por ron cat",
    "slavic": "rus pol ces ukr bul hrv",
    "indo-aryan": "hin ben mar guj pan urd",
    "bantu": "swh zul xho sna kin lin",
    "japanese/korean": "jpn kor",
}
FAMILY_OF = {lang: fam for fam, codes in FAMILIES.items() for lang in codes.split()}
MIXED = list(FAMILY_OF)


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    """UDHR train texts per language."""
    return texts_by_lang(load_corpus("udhr")["train"])


def _purity(result) -> float:
    return purity(result.labels, [FAMILY_OF[lang] for lang in result.languages])


# ------------------------------------------------------------------- URIEL data and lang2vec
def test_uriel_is_read_without_pkg_resources():
    """setuptools >= 81 has no pkg_resources: lang2vec's module then fails to import, we do not."""
    script = (
        "import sys; sys.modules['pkg_resources'] = None\n"  # what a setuptools >= 81 install looks like
        "try:\n    import lang2vec.lang2vec\n    raise SystemExit('lang2vec imported without pkg_resources?')\n"
        "except ImportError:\n    pass\n"
        "from clustering.typology import typology_distances\n"
        "d = typology_distances(['fra', 'spa', 'jpn'])\n"
        "assert d[0, 1] < d[0, 2], d\n"
        "assert 'lang2vec.lang2vec' not in sys.modules or sys.modules['lang2vec.lang2vec'] is None\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_vectors_equal_lang2vec_own_api(monkeypatch):
    """Cross-check our reader against lang2vec's own code, run with a stand-in pkg_resources
    (its one use there is ``resource_filename``), since setuptools >= 81 has none."""
    import importlib
    import types

    shim = types.ModuleType("pkg_resources")
    shim.resource_filename = lambda package, name: str(uriel.data_dir().parent / name)
    monkeypatch.setitem(sys.modules, "pkg_resources", shim)
    monkeypatch.delitem(sys.modules, "lang2vec.lang2vec", raising=False)
    l2v = importlib.import_module("lang2vec.lang2vec")
    monkeypatch.delitem(sys.modules, "lang2vec.lang2vec")
    langs = ["fra", "swh", "jpn"]
    for feature_set in ("syntax_knn", "phonology_knn", "inventory_knn"):
        theirs = l2v.get_features(langs, feature_set)
        np.testing.assert_array_equal(uriel.knn_vectors(langs, feature_set), np.array([theirs[x] for x in langs]))
    theirs = l2v.get_features(langs, "fam")
    np.testing.assert_array_equal(uriel.family_vectors(langs), np.array([theirs[x] for x in langs]) == 1)


def test_coordinates_recovered_from_geo_features():
    lat_lon = uriel.lat_lon(["fra", "jpn", "qvi"])
    np.testing.assert_allclose(lat_lon, [[48.0, 2.1], [35.0, 135.0], [0.3, -78.4]], atol=0.5)


def test_distances_are_symmetric_in_unit_range():
    d = typology_distances(MIXED)
    assert d.shape == (len(MIXED), len(MIXED))
    np.testing.assert_allclose(d, d.T, atol=1e-12)
    assert np.all(np.diag(d) == 0) and d.min() >= 0 and d.max() <= 1
    assert abs(sum(WEIGHTS.values()) - 1) < 1e-9
    i = {lang: n for n, lang in enumerate(MIXED)}
    assert d[i["spa"], i["por"]] < d[i["spa"], i["rus"]] < d[i["spa"], i["swh"]]


# ---------------------------------------------------------------------- typology clustering
def test_purity_on_known_families():
    """k=5 merges Romance with Slavic: URIEL puts Japanese and Korean (two families, Japonic and
    Koreanic) further apart than Romance from Slavic in every feature set except geography."""
    at5 = make_plan(MIXED, "typology", k=5)
    at6 = make_plan(MIXED, "typology", k=6)
    assert _purity(at5) == pytest.approx(20 / 26)  # measured: 0.769
    assert _purity(at6) == 1.0
    clusters = at6.plan["clusters"]
    for family in ("romance", "slavic", "indo-aryan"):
        (name,) = [n for n in clusters if n.startswith(family + "-")]
        assert sorted(clusters[name]) == sorted(FAMILIES[family].split())


def test_typology_recovers_udhr_families(texts):
    """Held-out check of the weights: UDHR languages of 12 families, k=12."""
    families = ["Romance", "Slavic", "Germanic", "Indo-Aryan", "Narrow Bantu", "Turkic", "Malayo-Polynesian",
                "Mayan", "Quechuan", "Uralic", "Semitic", "Sinitic"]
    truth = {}
    for lang in sorted(texts):
        path = uriel.family_path(lang)
        hits = [f for f in families if f in path]
        if hits:
            truth[lang] = hits[0]
    result = make_plan(sorted(truth), "typology", k=12)
    assert len(truth) > 200
    assert purity(result.labels, [truth[lang] for lang in result.languages]) >= 0.85  # measured: 0.867


def test_names_are_readable_and_stable():
    names = list(plan(MIXED, k=6)["clusters"])
    assert names == list(plan(MIXED, k=6)["clusters"])
    assert {n.rsplit("-", 1)[0] for n in names} == {"indo-aryan", "slavic", "romance", "bantu",
                                                    "japanese", "korean"}
    assert dominant_group(["spa", "fra", "ita", "eng"]) == ("Indo-European", 1.0)
    assert dominant_group(["spa", "fra", "ita", "por", "ron", "cat", "glg", "oci", "eus", "wln"]) == ("Romance", 0.9)
    assert cluster_names([["spa", "fra"], ["jpn"], ["spa", "swh", "zul", "jpn", "kor"]]) == [
        "romance-0", "japanese-1", "mixed-bantu-2"]


def test_balanced_sizes_give_comparable_shares():
    sizes = {lang: (20.0 if FAMILY_OF[lang] == "romance" else 1.0 + (i % 3)) for i, lang in enumerate(MIXED)}
    total, k = sum(sizes.values()), 4
    result = make_plan(MIXED, "typology", k=k, sizes=sizes, balanced=True)
    shares = np.array(list(result.plan["shares"].values()))
    assert len(shares) == k and shares.sum() == pytest.approx(1, abs=1e-3)
    # within 10% of 1/k, give or take one language (a Romance language alone is 16% of the total)
    slack = max(sizes.values()) / total
    assert np.all(shares <= 1.1 / k + slack) and np.all(shares >= 0.9 / k - slack)
    unbalanced = np.array(list(make_plan(MIXED, "typology", k=k, sizes=sizes).plan["shares"].values()))
    assert shares.max() - shares.min() < unbalanced.max() - unbalanced.min()


def test_balanced_equal_families_stay_pure():
    langs = [lang for lang in MIXED if FAMILY_OF[lang] != "japanese/korean"]
    result = make_plan(langs, "typology", k=4, balanced=True)
    assert sorted(len(v) for v in result.plan["clusters"].values()) == [6, 6, 6, 6]
    assert _purity(result) == 1.0


def test_balanced_assignment_and_kmeans_respect_the_cap():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 10, size=200).astype(float)
    labels = balanced_assignment(rng.random((200, 5)), sizes, tolerance=0.1)
    loads = np.bincount(labels, weights=sizes, minlength=5)
    target = sizes.sum() / 5
    assert loads.max() <= 1.1 * target + sizes.max() and loads.min() >= 0.9 * target - sizes.max()
    x = rng.normal(size=(120, 8))
    labels, centroids = balanced_kmeans(x, 6, seed=0)
    assert centroids.shape == (6, 8)
    assert all(18 <= n <= 22 for n in np.bincount(labels, minlength=6))  # 20 each, within 10%
    labels, _ = balanced_kmeans(x, 6, seed=0, tolerance=0.0)
    assert np.bincount(labels, minlength=6).tolist() == [20] * 6  # c-BTM's exactly equal clusters


# --------------------------------------------------------------------- fallbacks, bad input
def test_fallback_stand_in_for_a_code_uriel_lacks():
    assert not uriel.has_uriel("cnr")
    result = plan(["cnr", "srp", "fra", "spa", "jpn"], k=3)
    assert "cnr" in result["fallbacks"] and "srp" in result["fallbacks"]["cnr"]
    (together,) = [m for m in result["clusters"].values() if "cnr" in m]
    assert "srp" in together


def test_fallback_nearest_by_tfidf(texts):
    """Chakavian (ckm) is not in URIEL: given Croatian text, it is placed with Croatian."""
    assert not uriel.has_uriel("ckm")
    given = {lang: texts[lang] for lang in ["hrv", "fra", "spa", "swh", "hin", "rus"]}
    given["ckm"] = texts["hrv"][:5]
    result = plan(["ckm", "fra", "spa", "swh", "hin", "rus"], k=4, texts_by_lang=given)
    assert "hrv" in result["fallbacks"]["ckm"] and "TF-IDF" in result["fallbacks"]["ckm"]
    (together,) = [m for m in result["clusters"].values() if "ckm" in m]
    assert "rus" in together  # placed as Croatian: with the other Slavic language


def test_no_fallback_without_texts_is_a_clear_error():
    with pytest.raises(XelmError, match="ckm.*texts"):
        plan(["ckm", "fra", "spa"], k=2)


@pytest.mark.parametrize("languages, k, method, match", [
    (["fra", "qqq"], 1, "typology", "'qqq'"),
    (["fra", "spa"], 0, "typology", "k=0"),
    (["fra", "spa"], 3, "typology", "k=3.*2 languages"),
    (["fra", "fra"], 1, "typology", "'fra' appears twice"),
    ([], 1, "typology", "no languages"),
    (["fra", "spa"], 1, "kmeans", "'kmeans'"),
    (["fra", "spa"], 1, "tfidf", "needs texts"),
    (["fra", "spa"], 1, "model", "embeddings"),
])
def test_bad_input_is_one_line_naming_the_value(languages, k, method, match):
    with pytest.raises(XelmError, match=match) as err:
        plan(languages, method=method, k=k)
    assert "\n" not in str(err.value)


def test_tfidf_clusters_of_identical_texts_are_refused_not_merged(texts):
    """k-means cannot split identical documents: the plan would hold fewer clusters than its k."""
    same = {"eng": texts["eng"], "fra": texts["eng"], "deu": texts["deu"]}
    with pytest.raises(XelmError, match="found 2 distinct clusters for k=3"):
        plan(["eng", "fra", "deu"], method="tfidf", k=3, texts_by_lang=same)


def test_bad_sizes_are_named():
    with pytest.raises(XelmError, match="no size for spa"):
        plan(["fra", "spa"], k=1, sizes={"fra": 1.0}, balanced=True)
    with pytest.raises(XelmError, match="size of spa"):
        plan(["fra", "spa"], k=1, sizes={"fra": 1.0, "spa": -2.0}, balanced=True)


# -------------------------------------------------------------------------------- TF-IDF
def test_tfidf_space_round_trip_gives_identical_distances(texts, tmp_path):
    langs = ["fra", "spa", "ita", "rus", "ukr", "hin", "swh", "zul"]
    result = make_plan(langs, "tfidf", k=3, texts_by_lang={x: texts[x] for x in langs})
    space = result.tfidf
    assert space.names == list(result.plan["clusters"])
    queries = [texts["por"][0], texts["bel"][0], texts["xho"][0], "ok"]
    before = space.distances_to_centroids(queries)
    loaded = TfidfSpace.load(space.save(tmp_path / "space"))
    np.testing.assert_array_equal(loaded.distances_to_centroids(queries), before)
    assert loaded.names == space.names
    by_name = dict(zip(space.names, before[0]))  # Portuguese text is nearest the Romance centroid
    assert min(by_name, key=by_name.get) == next(n for n, m in result.plan["clusters"].items() if "spa" in m)


def test_tfidf_space_missing_or_damaged_is_named(tmp_path):
    with pytest.raises(XelmError, match="no TF-IDF space"):
        TfidfSpace.load(tmp_path)
    (tmp_path / "tfidf.json").write_text("{not json")
    (tmp_path / "tfidf.npz").write_bytes(b"junk")
    with pytest.raises(XelmError, match="TF-IDF space .*tfidf.json is damaged"):
        TfidfSpace.load(tmp_path)
    (tmp_path / "tfidf.json").write_text('{"format": 1}')
    with pytest.raises(XelmError, match="damaged TF-IDF space"):
        TfidfSpace.load(tmp_path)


def test_tfidf_balanced_plan(texts):
    langs = MIXED
    result = plan(langs, method="tfidf", k=4, texts_by_lang={x: texts[x] for x in langs}, balanced=True)
    assert all(6 <= len(m) <= 7 for m in result["clusters"].values())  # 26/4 = 6.5, within 10%
    assert sorted(sum(result["clusters"].values(), [])) == sorted(langs)


# ---------------------------------------------------------------------------- model geometry
def test_model_geometry_with_text_derived_embeddings(texts):
    """Stand-in embeddings from real text (TF-IDF vectors) until the encoder is wired in."""
    langs = MIXED
    _, x = TfidfSpace.fit(["\n".join(texts[lang]) for lang in langs])
    embeddings = dict(zip(langs, x))
    result = plan(langs, method="model", k=5, embeddings=embeddings)
    assert sorted(sum(result["clusters"].values(), [])) == sorted(langs)
    agreement = result["agreement_with_typology"]
    assert 0.3 < agreement["adjusted_rand_index"] <= 1
    for pair in agreement["close_in_model_not_typology"]:
        assert set(pair["languages"]) <= set(langs)
    pure = model_geometry(embeddings, 5, typology_distances(sorted(langs)))
    assert pure["languages"] == sorted(langs)
    assert pure["adjusted_rand_index"] == pytest.approx(agreement["adjusted_rand_index"])


def test_compare_with_typology_finds_pairs_the_model_puts_close():
    langs = ["a", "b", "c", "d", "e", "f"]
    typology = np.ones((6, 6)) - np.eye(6)
    typology[0, 1] = typology[1, 0] = 0.1  # typology: a~b; the model: a~f instead
    typology[2, 3] = typology[3, 2] = 0.1
    model = typology.copy()
    model[0, 1] = model[1, 0] = 0.9
    model[0, 5] = model[5, 0] = 0.05
    out = compare_with_typology(langs, model, [0, 1, 2, 2, 3, 0], typology, [0, 0, 1, 1, 2, 3])
    assert out["close_in_model_not_typology"][0]["languages"] == ["a", "f"]
    assert -1 <= out["adjusted_rand_index"] < 1


def test_embedding_distances_reject_bad_vectors():
    with pytest.raises(XelmError, match="one size"):
        embedding_distances({"fra": np.ones(3), "spa": np.ones(4)})
    with pytest.raises(XelmError, match="NaN or inf for spa"):
        embedding_distances({"fra": np.ones(3), "spa": np.array([1.0, np.nan, 0.0])})


# ------------------------------------------------------------------ the whole corpus, plots
def test_plan_of_every_corpus_language(texts, tmp_path):
    langs = sorted(texts)
    assert len(langs) == 445
    result = make_plan(langs, "typology", k=8, texts_by_lang=texts)
    members = sum(result.plan["clusters"].values(), [])
    assert sorted(members) == langs  # every language in exactly one cluster
    assert len(result.plan["clusters"]) == 8
    assert set(result.plan["fallbacks"]) == {"cnr"}
    written = write_plan(result, tmp_path / "clusters.json")
    for kind in ("dendrogram", "heatmap", "map"):
        assert written[kind].stat().st_size > 10_000
    assert json.loads((tmp_path / "clusters.json").read_text())["clusters"] == result.plan["clusters"]


# ------------------------------------------------------------------------------------ CLI
def _run(argv):
    return dispatch(build_parser().parse_args(argv))


def test_cli_languages_to_file(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert _run(["cluster", "--languages", ",".join(MIXED), "--k", "6", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["method"] == "typology" and printed["k"] == 6
    assert {p.name for p in tmp_path.iterdir()} == {"plan.json", "plan_dendrogram.png", "plan_heatmap.png",
                                                   "plan_map.png"}


def test_cli_run_dir_tfidf_writes_a_reloadable_space(tmp_path, capsys):
    langs = ["fra", "spa", "ita", "rus", "ukr", "pol", "hin", "ben"]
    (tmp_path / "config.yaml").write_text(json.dumps({"data": {"corpus": "udhr", "languages": langs}}))
    assert _run(["cluster", "--run-dir", str(tmp_path), "--method", "tfidf", "--k", "3", "--balanced"]) == 0
    assert "clusters.json" in capsys.readouterr().out
    saved = json.loads((tmp_path / "clusters.json").read_text())
    assert sorted(sum(saved["clusters"].values(), [])) == sorted(langs)
    assert saved["sizes"] == "characters of the train split"
    space = TfidfSpace.load(tmp_path / saved["tfidf_space"])
    assert space.names == list(saved["clusters"])
    for plot in saved["plots"].values():
        assert (tmp_path / plot).is_file()


@pytest.mark.parametrize("argv, match", [
    (["cluster", "--k", "3"], "which languages"),
    (["cluster", "--languages", "fra,spa", "--k", "0"], "k=0"),
    (["cluster", "--languages", "fra,xyz", "--k", "1"], "'xyz'"),
    (["cluster", "--languages", "fra,spa", "--method", "model", "--k", "1"], "base encoder"),
])
def test_cli_mistakes_raise_xelm_error(argv, match):
    with pytest.raises(XelmError, match=match):
        _run(argv)


def test_cli_model_method_needs_the_base_encoder(tmp_path):
    (tmp_path / "config.yaml").write_text(json.dumps({"data": {"languages": ["fra", "spa"]}}))
    with pytest.raises(XelmError, match=f"{tmp_path}/base"):
        _run(["cluster", "--run-dir", str(tmp_path), "--method", "model", "--k", "1"])


# ------------------------------------------------------------------ steering the clusters
def test_features_choose_the_typology_mix_and_the_plan_records_it():
    from clustering.typology import parse_features

    assert parse_features("syntax_knn,fam") == {"syntax_knn": 0.5, "fam": 0.5}
    assert parse_features("syntax_knn:3,geo:1") == {"syntax_knn": 0.75, "geo": 0.25}
    langs = ["eng", "deu", "nld", "fra", "spa", "ita", "rus", "pol"]
    fam_only = plan(langs, k=3, features="fam")
    assert fam_only["weights"] == {"fam": 1.0}
    geo_only = plan(langs, k=3, features="geo")
    assert geo_only["clusters"] != fam_only["clusters"]  # the mix really changes the plan
    for bad, what in (("syntax", "unknown typology feature set"), ("fam:x", "not a number"),
                      ("fam:-1", "non-negative"), ("fam:1,fam:0,geo:1", "'fam' is given twice"),
                      ({"fam": "1"}, "non-negative numbers")):
        with pytest.raises(XelmError, match=what):
            parse_features(bad)


def test_by_script_never_mixes_scripts_when_k_allows():
    from clustering.build import build_plan

    langs = ["eng", "fra", "deu", "rus", "ukr", "bel", "hin", "mar", "arb", "pes"]
    mixed = build_plan(langs, "udhr", "typology", 4).plan
    apart = build_plan(langs, "udhr", "typology", 4, by_script=True).plan
    assert apart["mixed_scripts"] == [] and all(len(s) == 1 for s in apart["scripts"].values())
    assert mixed["clusters"] != apart["clusters"]  # typology alone groups across scripts here
    forced = build_plan(langs, "udhr", "typology", 2, by_script=True).plan  # 4 scripts, 2 clusters
    assert forced["mixed_scripts"]
    with pytest.raises(XelmError, match="by-script"):
        build_plan(langs, "udhr", "tfidf", 4, by_script=True)


def test_cli_takes_families_and_two_letter_codes(capsys):
    assert _run(["cluster", "--languages", "fr,es,ru,uk", "--k", "2", "--json"]) == 0
    out = capsys.readouterr()
    plan_ = json.loads(out.out)
    assert sorted(sum(plan_["clusters"].values(), [])) == ["fra", "rus", "spa", "ukr"]
    assert "fr -> fra" in out.err
    assert _run(["cluster", "--family", "Slavic", "--k", "2", "--json"]) == 0
    out = capsys.readouterr()
    members = sum(json.loads(out.out)["clusters"].values(), [])
    assert {"rus", "pol", "ces"} <= set(members) and "fra" not in members
    assert "family Slavic" in out.err
    with pytest.raises(XelmError, match="nearest: Romance"):
        _run(["cluster", "--family", "Romanse", "--k", "2"])
