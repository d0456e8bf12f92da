"""Schemathesis reads the gateway's own OpenAPI document and throws generated requests at
it (through the real gateway, policy and example actor): every answer must be one the
document lists, with the body it documents; a handler's 500 or a 502 never happens."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from support import eventually

from actorbus import Client, Settings, serve
from actorbus.actors.gateway import Gateway
from actorbus.actors.policy import Policy
from examples.echo import Echo

POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def fuzz(url: str, document: dict[str, Any], path_regex: str, examples: int) -> list[int]:
    """Run ``examples`` generated cases (shrunk on failure); returns the statuses seen."""
    # Valid arguments must be answered, or run out of time (the actor's 408 or the
    # gateway's 504): with the actor open to the public and a high quota, nothing else.
    config = schemathesis.Config.from_dict(
        {
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "408", "504"]}},
        }
    )
    schema = schemathesis.openapi.from_dict(document, config=config)
    schema = schema.include(path_regex=path_regex)
    statuses: list[int] = []

    @hypothesis_settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=schema.as_strategy(POSITIVE) | schema.as_strategy(NEGATIVE))
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=url, timeout=10)
        statuses.append(response.status_code)
        # 504 (the deadline) and 503 are documented outcomes; the rest of the checks
        # (documented status, body and content type per status) apply to every answer.
        case.validate_response(response, excluded_checks=[not_a_server_error])
        assert response.status_code not in (500, 502), response.text

    check()
    return statuses


async def test_generated_requests_get_documented_answers(settings: Settings, name: str) -> None:
    here = msgspec.structs.replace(settings, gateway_port=0, gateway_timeout=0.5)
    gateway = Gateway()
    async with (
        serve(Policy(), name=here.policy, settings=here),
        serve(Echo(), name=name, settings=here),
        serve(gateway, settings=here),
        Client(settings=here) as admin,
    ):
        await admin.call(here.policy, "set_role", "public", [f"{name}/*"])
        await admin.call(here.policy, "set_config", floor=100_000)
        async with httpx.AsyncClient(base_url=gateway.url) as http:

            async def opened() -> None:  # the policy change has reached the actor
                assert (await http.get(f"/{name}/forward")).status_code == 200

            await eventually(opened, timeout=10)
            document = (await http.get("/openapi.json")).json()
        assert f"/{name}/sleep" in document["paths"]
        statuses = await anyio.to_thread.run_sync(fuzz, gateway.url, document, f"^/{name}/", 150)
        assert 200 in statuses and 400 in statuses, sorted(set(statuses))
