"""The review web app (``radstream web``): worklists, results with priors and overlays, feedback, QC."""

from radstream.web.app import create_app

__all__ = ["create_app"]
