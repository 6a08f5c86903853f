"""The reward service as a Ray Serve deployment: the reward file in N replicas on the Ray cluster, one HTTP route.

    pip install "ray[serve]" "protobuf<7"   (the serve extra: pip install ".[serve]" in a checkout)
    python -m gd2po_openrlhf.serve_rewards --ray-serve --replicas 4 --reward-file rewards.py --host 0.0.0.0 --port 5000

Same protocol, answers and bearer token (``--auth-token-file``) as the single-host server
(``gd2po_openrlhf.serve_rewards``), so the trainer's ``--reward.remote_url http://HOST:5000/get_reward`` does not
change. Connections, deadlines and body sizes are Ray Serve's proxy's to keep, not this module's. Ray Serve's
proxy takes the HTTP requests and routes each to a replica with free capacity; a replica that dies is replaced by
Ray Serve. Expensive rewards (sandboxed code, model judges) thus grow past one host: replicas land on any node of
the cluster with a free CPU.
The command joins the cluster of ``RAY_ADDRESS`` (or starts a local one), and removes the deployment on SIGTERM
or Ctrl-C. On a multi-node cluster the reward file must be at the same path on every node (or shipped with a
``runtime_env`` ``working_dir``).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Optional

from ..reward_check import load_reward_func
from .protocol import (
    HEALTH_WITHOUT_TOKEN,
    UNAUTHORIZED,
    ServerLimits,
    authorized,
    check_body,
    route_request,
    score_batch,
)

APP_NAME = "gd2po_rewards"


class RewardReplica:
    """One replica: the reward file imported once, requests answered as ``RewardServer.handle`` answers them."""

    def __init__(self, reward_file: str, limits: ServerLimits):
        self.reward_file, self.limits = reward_file, limits
        self.reward_func = load_reward_func(reward_file)
        self.served_requests = self.served_rollouts = 0

    async def __call__(self, request):
        from starlette.responses import JSONResponse, Response

        length = request.headers.get("content-length")
        length = int(length) if length is not None and length.isdigit() else None
        path_qs = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        verdict = route_request(request.method, request.url.path, path_qs, length, self.limits)
        if not authorized(request.headers.get("authorization"), self.limits.auth_token):
            if verdict == "health":
                return JSONResponse(HEALTH_WITHOUT_TOKEN)
            return JSONResponse(
                {"error": UNAUTHORIZED},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="gd2po reward server"'},
            )
        if verdict == "health":
            return JSONResponse(
                {
                    "status": "ok",
                    "reward_file": self.reward_file,
                    "reward_keys": list(self.limits.reward_keys) if self.limits.reward_keys else None,
                    "worker_pid": os.getpid(),
                    "served_requests": self.served_requests,
                    "served_rollouts": self.served_rollouts,
                }
            )
        if verdict != "score":
            status, answer = verdict
            headers = {"Allow": "GET, POST"} if status == 405 else None
            if request.method == "HEAD":
                return Response(status_code=status, headers=headers)
            return JSONResponse(answer, status_code=status, headers=headers)
        batch, refusal = check_body(await request.body(), self.limits)
        if refusal:
            return JSONResponse(refusal[1], status_code=refusal[0])
        status, answer = await score_batch(self.reward_func, batch, self.limits, self.reward_file)
        if status == 200:
            self.served_requests += 1
            self.served_rollouts += len(batch[0])
        return JSONResponse(answer, status_code=status)


def serve_on_ray(reward_file: str, limits: ServerLimits, host: str, port: int, replicas: int) -> Optional[str]:
    """Deploy ``replicas`` replicas behind ``http://host:port/get_reward`` and serve until SIGTERM or SIGINT.
    Returns a usage error (nothing deployed) or None after a clean stop."""
    try:
        import ray
        from ray import serve
    except ImportError as error:
        return f"--ray-serve needs Ray Serve: pip install 'ray[serve]' 'protobuf<7' ({error})"
    try:
        load_reward_func(reward_file)  # its mistakes are usage errors here, not a replica failing in a loop
    except Exception as error:
        return f"reward file {reward_file} failed to load: {type(error).__name__}: {error}"
    import logging

    logger = logging.getLogger("gd2po_openrlhf.serve_rewards")
    ray.init(address=os.environ.get("RAY_ADDRESS"), logging_level=logging.WARNING)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        deployment = serve.deployment(
            RewardReplica,
            name="RewardReplica",
            num_replicas=replicas,
            ray_actor_options={"num_cpus": 1},
            max_ongoing_requests=max(limits.max_concurrency, 1) * 4,
        )
        serve.run(deployment.bind(os.path.abspath(reward_file), limits), name=APP_NAME, route_prefix="/")
        logger.warning(
            "serving %s on http://%s:%d/get_reward with %d Ray Serve replicas (health: GET /health)",
            reward_file,
            host,
            port,
            replicas,
        )
        while not stopping.wait(0.5):
            pass
    finally:
        serve.delete(APP_NAME)
        serve.shutdown()
        ray.shutdown()
    return None
