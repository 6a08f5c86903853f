"""The reward server behind ``python -m gd2po_openrlhf.serve_rewards`` (its command line is in that module):
``protocol.py`` the route's rules and the scoring of a batch, ``server.py`` one aiohttp worker, ``supervisor.py``
its worker processes, ``ray_serve.py`` the same route as a Ray Serve deployment (``--ray-serve``)."""
