"""``metabgm-edge serve`` and ``listen``: many players on one server, each player's music streamed.

- :mod:`.host`: one session per player (the same :class:`~metabgm_edge.scheduler.Session` as
  ``play``), the players' live source and their audio server; no Ray.
- :mod:`.stream`: the audio wire format, the per-player stream hub, the stream sink, the server.
- :mod:`.listen`: the player's client (``listen``), no Ray.
- :mod:`.app`: the Ray Serve deployments (Text, Audio, Players); :mod:`.remote`: their handles
  behind the text and audio interfaces; :mod:`.runner`: what ``serve`` does (Ray, the config).
- :mod:`.bench`: ``bench serve``; :mod:`.players`: simulated players that send states.
"""
