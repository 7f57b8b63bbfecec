"""One harness for every suite and for bench: the real processes and services tests run.

- ``env``: where the project and the machine's PostgreSQL and Redis are; ``unavailable``.
- ``ports``, ``waiting``, ``http``: free ports, ``wait_until``, ``run_blocking``, ``http_json``.
- ``processes``, ``apps``: server subprocesses; ``AppProcess`` is ``python run.py``.
- ``databases``, ``redis``, ``nginx``: PostgreSQL databases made and dropped, Redis key
  cleanup and private redis-servers, nginx running the shipped ``deploy/nginx.conf``.
- ``faultproxy``: a TCP proxy that injects latency and partitions.
- ``clients``, ``lines``: the test password and signed-up clients; a command's stdout read
  line by line (``Lines``).

Imported as ``tests.support`` from the repository root (``python -m pytest``,
``python -m bench.run``); nothing here imports pytest at module level, so bench can use it.
"""
