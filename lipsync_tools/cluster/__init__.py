"""Beyond one machine: the same API served by a Ray Serve application, avatars routed by their catalog id.

``lipsync serve --ray`` (:func:`lipsync_tools.cluster.serve.serve_on_ray`) runs an ingress deployment
(:mod:`.ingress`: the plain server's HTTP and WebSocket API) in front of a frame deployment (:mod:`.replica`:
each replica a real lipsync server holding up to N avatars through ``serve.multiplexed``).

Nothing is imported here: Ray is an optional extra (``pip install 'lipsync-tools[ray]'``), loaded only by
the modules that need it.
"""
