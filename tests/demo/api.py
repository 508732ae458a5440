"""The page's API as a script would use it: ``gradio_client`` against a page on 127.0.0.1.

The client is told not to send telemetry (its ``analytics_enabled`` defaults to on whatever the
environment says).
"""

from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def api_client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False)
