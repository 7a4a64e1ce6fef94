"""RadSentry's Grafana dashboards as code (grafana-foundation-sdk): one module per dashboard,
``common`` for what they share, ``build`` to render them, ``queries`` to list and run their
queries. Metric and view names follow the data tables of docs/dashboards.md, which also
explains the panels and how to install them."""

FOLDER = "RadSentry"
"""Grafana folder of every dashboard: the provisioning provider's folder and `dashboards push`'s
default (here, not in ``common``, so that the command line knows it without the Grafana SDK)."""
