"""Who may serve what: hosts (keys that may let a replica serve a name: the admins and the
keys listed here) and names (the keys that may serve each actor name).

A name is claimed by the first key that serves it under a valid hosting ticket; after
that only the keys bound to it may serve it, until an admin grants the name to another
key (a new actor key, a second key for a blue/green move) or revokes one. The policy
actor's own name and the supervisors' (``node.*``) are never claimed: those are served by
connections the server's config names.
"""

from __future__ import annotations

import logging

import anyio
import msgspec

from ...bus import BadRequest, Forbidden, LogThrottle, NotFound, RateLimited, Unavailable
from ...bus.delegation import check_job_id
from ...bus.jetstream import Bucket, delete_stream
from ...bus.pace import Pace
from ...bus.rights import GATEWAY, JOBS, NODE, ROLES
from ...bus.subjects import NODE_PREFIX, JobsNames, check_name, commune_bucket, nonce_stream
from ...bus.tickets import HostTicket, read_ticket
from ...bus.workqueue import open_queue
from ...host.pages import MAX_PAGE
from ...host.policy import HostGrant
from ...host.replay import ensure_nonces
from ..jobs.streams import jobs_streams
from .store import PolicyStore, check_address, encode

__all__ = ["Bindings"]

log = logging.getLogger("actorbus.policy")

_NAMES_AT_ONCE = 32
"""New names a host may claim at once (then :data:`_NAME_EVERY`)."""
_NAME_EVERY = 10.0
"""Seconds per further new name a host claims."""
_HOSTS_KEPT = 4096
"""Hosts whose pace of new names a replica remembers (the least recent forgotten)."""
_CLAIM_WAIT = 2.0
"""Seconds a claim may take (the server waits for the callout's answer a little longer)."""
_PROVIDE_WAIT = 2.0
"""Seconds making a jobs actor's or a gateway's streams may take (the server waits for the
callout's answer a little longer)."""
_MAX_ACK_WAIT = 3605.0
"""Seconds a job's queue waits for a slice's acknowledgement at most: a slice's longest
timeout (an hour) and the jobs actor's margin."""
_NONCES_WAIT = 0.5
"""Seconds making a name's nonce stream may take before its replica connects without it."""
_addresses = msgspec.json.Decoder(list[str])


class Bindings(PolicyStore):
    """Hosts and name bindings (changes: admins only)."""

    async def on_start(self) -> None:
        self._new_names = Pace(1 / _NAME_EVERY, _NAMES_AT_ONCE, _HOSTS_KEPT)
        """Per host: the pace of the new names it claims (:meth:`_pace_new_name`)."""
        self._streams_throttle = LogThrottle(log)
        await super().on_start()

    async def add_host(
        self, key: str, jobs: list[str] | None = None, gateway: list[str] | None = None
    ) -> list[str]:
        """Let ``key`` sign hosting tickets: replicas it starts may serve names (their own,
        or new ones) as plain actors, and as jobs actors and gateways the names in ``jobs``
        and ``gateway`` alone (adding a host again replaces those); returns the hosts."""
        jobs_names = sorted({self._check_claimable(n, JOBS) for n in jobs or ()})
        gateways = sorted({self._check_claimable(n, GATEWAY) for n in gateway or ()})
        grant = HostGrant(jobs=jobs_names, gateway=gateways)
        value = msgspec.json.encode(grant) if grant != HostGrant() else b"1"
        args = {"key": key, "jobs": jobs_names, "gateway": gateways}
        await self._change("add_host", "host." + check_address(key), value, **args)
        return sorted(self.state.hosts)

    async def rm_host(self, key: str) -> list[str]:
        self._require_admin()
        if key not in self.state.hosts:
            raise NotFound(f"{key} is not a host")
        await self._change("rm_host", "host." + key, None, key=key)
        return sorted(self.state.hosts)

    async def hosts(self, limit: int = MAX_PAGE, after: str = "") -> dict[str, HostGrant]:
        """The listed hosts and the jobs actors and gateways each may run (admins are
        hosts too, of anything; a page: at most ``limit``, after ``after``)."""
        self._require_admin()
        hosts = self.state.hosts
        return {key: hosts[key] for key in self._page("hosts", hosts, after, limit)}

    async def grant_name(self, name: str, key: str) -> dict[str, list[str]]:
        """Let ``key`` serve actor ``name`` too (beside the keys bound to it)."""
        check_address(key)
        bound = self.state.names.get(self._check_claimable(name), [])
        addresses = sorted({*bound, key})
        await self._change("grant_name", "name." + name, encode(addresses), name=name, key=key)
        return {name: addresses}

    async def revoke_name(self, name: str, key: str | None = None) -> dict[str, list[str]]:
        """Stop ``key`` (or, without one, every key: the next to serve claims it) from
        serving ``name``; replicas already connected serve on until they reconnect."""
        self._require_admin()
        bound = self.state.names.get(name)
        if bound is None or (key is not None and key not in bound):
            raise NotFound(f"{key or 'no key'} is bound to {name!r}")
        left = [a for a in bound if a != key] if key is not None else []
        await self._change(
            "revoke_name", "name." + name, encode(left) if left else None, name=name, key=key
        )
        if not left:
            await self._drop_streams(name)
        return {name: left}

    async def _drop_streams(self, name: str) -> None:
        """Delete what the replicas of ``name`` kept (the nonces of its window; a jobs
        actor's jobs, their work and results; the commune signatures a gateway took): the
        name is free now, and whoever claims it next must not read the last holder's."""
        kept = [nonce_stream(name)]
        if "." not in name:  # a jobs actor's or a gateway's name is one token
            jobs = JobsNames(name)
            kept += [jobs.work_stream, jobs.record_stream, f"KV_{jobs.bucket}"]
            kept.append(f"KV_{commune_bucket(name)}")
        for stream in kept:
            try:
                await delete_stream(self.nc, stream)
            except Unavailable as exc:
                raise Unavailable(f"{name!r} is revoked; {exc.message}") from None

    async def _provide(self, name: str, role: str) -> None:
        """Make the streams a replica named ``name`` works on (its nonces, if it can be
        done at once; a jobs actor's or a gateway's own), as this node's settings say, or
        find them made (a read or a few per replica's connection: an admin who frees the
        name deletes them, on any policy replica). Raises :class:`Unavailable` if
        JetStream cannot make a jobs actor's or a gateway's in time (the replica connects
        again)."""
        await self._provide_nonces(name)
        if role not in (JOBS, GATEWAY):
            return
        settings = self.settings
        try:
            with anyio.fail_after(_PROVIDE_WAIT):
                if role == JOBS:
                    await jobs_streams(self.nc, name, settings, adjust=True)
                else:
                    seen = await Bucket.open(
                        self.nc,
                        commune_bucket(name),
                        ttl=2 * settings.max_skew,
                        replicas=settings.js_replicas,
                    )
                    await seen.settle()
        except TimeoutError:
            raise Unavailable(f"the streams of {role} {name!r} took too long to make") from None

    async def _provide_nonces(self, name: str) -> None:
        """Make the nonce stream of ``name``, or find it made, within
        :data:`_NONCES_WAIT` seconds, else say so (throttled): a replica connecting while
        JetStream elects its leaders (a NATS node of a cluster lost) connects anyway, and
        starts without the window of nonces its name's earlier replicas accepted (it says
        so); the next connection makes it."""
        settings = self.settings
        try:
            with anyio.fail_after(_NONCES_WAIT):
                await ensure_nonces(self.nc, name, settings.max_skew, replicas=settings.js_replicas)
        except (TimeoutError, Unavailable) as exc:
            why = exc.message if isinstance(exc, Unavailable) else "JetStream took too long"
            self._streams_throttle.log(
                logging.WARNING, "nonces", "the nonce stream of %r is not made: %s", name, why
            )

    async def open_queue(self, ticket: str, job: str, ack_wait: float) -> None:
        """Make the queue of job ``job`` of the jobs actor the caller serves (its hosting
        ``ticket`` names it, and says a host may run it as one), its slices handed out
        again ``ack_wait`` seconds after they were taken if not acknowledged: a ticket
        grants no consumer's creation, since its config (how many pulls it holds waiting
        among it) would be the host's (issue 30: 300,000 waiting pulls, 451 MiB of the
        server's memory). On a NATS without this actor's auth callout, the jobs actor
        makes its own."""
        caller = self._caller()
        hosted = self._check_ticket(ticket, caller)
        if hosted.role != JOBS:
            raise Forbidden(f"{hosted.name!r} is hosted as {hosted.role}, not as a jobs actor")
        if caller not in self.state.names.get(hosted.name, []):
            raise Forbidden(f"{caller} is not bound to {hosted.name!r}")
        if not 0 < ack_wait <= _MAX_ACK_WAIT:
            raise BadRequest(f"ack_wait is more than 0 and at most {_MAX_ACK_WAIT:g} seconds")
        names = JobsNames(hosted.name)
        durable, subject = f"job_{check_job_id(job)}", names.work(job)
        await open_queue(self.nc, names.work_stream, durable, subject, ack_wait=ack_wait)

    async def claim(self, ticket: str) -> str:
        """Bind the caller's key to the name of its hosting ``ticket`` if the name is free
        (a replica on a NATS without this actor's auth callout asks so; with it, connecting
        claimed the name); returns the name's binding as its signed record (the replica
        shows it in its registry entry). The caller's key must be the one the ticket was
        signed for, by a host."""
        hosted = self._check_ticket(ticket, self._caller())
        await self._claim(hosted.name, hosted.role, self._caller(), hosted.host)
        await self._provide_nonces(hosted.name)  # a joined node's replica's too
        stored = await self._bucket.get("name." + hosted.name)
        if stored is None:
            raise Unavailable(f"the binding of {hosted.name!r} is not readable yet")
        return stored[0].decode()

    def _check_ticket(self, text: str, address: str) -> HostTicket:
        """The hosting ticket ``text`` of the key ``address``, if a host signed it."""
        ticket = read_ticket(text, address)
        host, role, name = ticket.host, ticket.role, ticket.name
        if host not in self.state.admins and host not in self.state.hosts:
            raise Forbidden(
                f"{host} may not host actors on this bus: an admin runs "
                f"`actor policy host add {host}`"
            )
        if role not in ROLES:
            raise BadRequest(f"no such hosting role {role!r}")
        # A jobs actor or a gateway takes streams and rights a plain actor does not: an
        # admin names the ones each host may run (admins run any).
        admin = host in self.state.admins
        if role in (JOBS, GATEWAY) and not admin and not self.state.hosts[host].allows(role, name):
            raise Forbidden(
                f"host {host} may not run {role} {name!r}: an admin runs "
                f"`actor policy host add {host} --{role} {name}`"
            )
        return ticket

    def _pace_new_name(self, host: str) -> None:
        """Count a new name claimed under ``host``'s ticket: a host claims
        :data:`_NAMES_AT_ONCE` at once, then one every :data:`_NAME_EVERY` seconds (on
        each policy replica), an admin any number. Raises :class:`RateLimited` past that:
        a plain host claimed 1,000 names in 2.9 s, each a record every replica's policy
        view reads at start (issue 30's second attacker)."""
        if host in self.state.admins:
            return
        wait = self._new_names.wait(host)
        if wait > 0:
            raise RateLimited(
                f"host {host} claims new names too fast: one every {_NAME_EVERY:g} s",
                retry_after=wait,
            )
        self._new_names.take(host)

    async def names(self, limit: int = MAX_PAGE, after: str = "") -> dict[str, list[str]]:
        """The bound names and the keys that may serve each (a page: at most ``limit``,
        the names after ``after``)."""
        self._require_admin()
        names = self.state.names
        return {name: names[name] for name in self._page("names", names, after, limit)}

    def _check_claimable(self, name: str, role: str = "") -> str:
        check_name(name)
        if name == self.name:
            raise BadRequest(f"{name!r} is served by the policy actor's own user alone")
        if name.startswith(NODE_PREFIX) != (role == NODE) and role:
            raise BadRequest(f"only supervisors serve names starting with {NODE_PREFIX!r}")
        if role == NODE and name.count(".") != 1:
            # A node's name is one token: node.<node>.0 would write as node <node>'s
            # supervisor (its logs' subjects, audit records read as its own).
            raise BadRequest(f"a supervisor serves {NODE_PREFIX}<node>, one token after it")
        if role in (JOBS, GATEWAY) and "." in name:
            # Their subjects and buckets are made of the name: jobs.work's would be inside
            # the jobs actor's (actorbus.jobs.jobs.work.<job>: its work queue).
            raise BadRequest(f"a {role} actor's name has no dots (its subjects would nest)")
        if role == JOBS and name != name.lower():
            # Its streams are named in capitals (ACTOR_JOBS_<NAME>): JOBS's would be jobs'.
            raise BadRequest("a jobs actor's name is lowercase (its streams' names are not)")
        return name

    async def _claim(self, name: str, role: str, address: str, host: str) -> None:
        """Make sure ``address`` may serve ``name`` as ``role``: it is bound to it, or
        nobody is and it claims it now (recorded as made by ``host``; a claim whose record
        cannot be stored is undone). Raises :class:`Forbidden` if the name is another key's,
        :class:`BadRequest` for a name no ticket may serve (the policy actor's; ``node.*``
        but for a supervisor), :class:`Unavailable` if the claim cannot be stored in time."""
        self._check_claimable(name, role)
        bound = self.state.names.get(name)
        if bound is None:
            self._pace_new_name(host)
            key, args = "name." + name, {"name": name, "key": address}
            try:
                with anyio.fail_after(_CLAIM_WAIT):
                    value = encode([address])
                    if await self._create(key, value, who=host, what="claim_name", args=args):
                        return
                    claimed = await self._value(key)  # claimed meanwhile
            except TimeoutError:
                raise Unavailable(f"the claim of {name!r} took too long") from None
            bound = _addresses.decode(claimed) if claimed else []
        if address not in bound and role == NODE and host in bound:
            # A host's supervisor claimed its node's name as the host's key; its control
            # actor serves that name as a key of its own, by a ticket of the same host.
            def joined(value: bytes | None) -> bytes:
                keys = _addresses.decode(value) if value else []
                return encode(keys if address in keys else [*keys, address])

            args = {"name": name, "key": address}
            with anyio.fail_after(_CLAIM_WAIT):
                await self._extend("name." + name, joined, who=host, args=args)
            return
        if address not in bound:
            raise Forbidden(
                f"actor name {name!r} is served by another key: an admin lets this one with "
                f"`actor policy name grant {name} {address}`"
            )
