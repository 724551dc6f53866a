"""Routing and ensembling at inference: routers weigh a run's experts for each text, and the
ensemble mixes the chosen experts (one compiled call over their stacked parameters).

``XELM.from_run(DIR)`` is the entry point; see routing/api.py.
"""

from routing.api import ROUTERS, XELM
from routing.routes import Routing
from routing.scoring import score_model

__all__ = ["ROUTERS", "XELM", "Routing", "score_model"]
