"""``fewstep serve``: an OpenAI-compatible HTTP server with request batching and a live playground.

- :mod:`~fewstep.serve.schemas`: request bodies (pydantic) and OpenAI-style error objects;
- :mod:`~fewstep.serve.requests`: a request's decode configuration (the CLI's ``--set`` path) and
  prompt token ids;
- :mod:`~fewstep.serve.batcher`: the engine thread: queued requests grouped by configuration,
  decoded together through :func:`fewstep.decoding.loop.decode`, each row reported on its own;
- :mod:`~fewstep.serve.stream`: append-only text deltas from the canvas (settled prefix, stop strings);
- :mod:`~fewstep.serve.metrics`: Prometheus metrics;
- :mod:`~fewstep.serve.state`: the application's state (model, configuration, engine, metrics);
- :mod:`~fewstep.serve.routes`: the endpoints, as module-level routes;
- :mod:`~fewstep.serve.replies`: answers in OpenAI's format (JSON, server-sent event chunks);
- :mod:`~fewstep.serve.app`: the FastAPI application factory (:func:`create_app`);
- :mod:`~fewstep.serve.server`: uvicorn with graceful shutdown (``fewstep serve``).

Needs the ``serve`` extra (``pip install 'fewstep[serve]'``); importing this package loads none of it.
"""
