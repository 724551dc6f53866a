"""Which languages share an expert: URIEL typology, TF-IDF (c-BTM), or the model's own geometry.

``plan(languages, method="typology"|"tfidf"|"model", k=...)`` returns the cluster plan (see
clustering/planning.py). matplotlib loads only when plots are drawn.
"""

from clustering.planning import METHODS, PlanResult, make_plan, plan, write_plan
from clustering.tfidf import TfidfSpace
from clustering.typology import WEIGHTS, typology_distances

__all__ = ["METHODS", "PlanResult", "TfidfSpace", "WEIGHTS", "make_plan", "plan", "typology_distances",
           "write_plan"]
