"""The data plane's parts: what a request asks, the sync and streamed modes, and jobs."""
