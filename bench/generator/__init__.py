"""The load generator's parts (``bench.loadgen`` describes the design and re-exports them):

- ``wire``: the WebSocket wire format as the generator speaks it (client frames, the HTTP
  upgrade, frame lengths, kernel receive timestamps, connection states);
- ``conn``: one raw client socket (``Conn``) and the ``Poller`` that reads it;
- ``group``: the sockets of one role in one worker and what they received;
- ``worker``: one generator process executing the controller's commands;
- ``conncmds``: the commands over ``Conn`` groups (open, close, wait for an event, churn...);
- ``controller``: ``LoadGen``, which starts the workers and talks to them over pipes;
- ``viewbase``, ``viewread``, ``viewretry``, ``viewcheck``: the page-like clients of
  ``bench.views`` (connecting and closing, reading frames at C speed, reconnecting like the
  page, checking the final view).
"""
