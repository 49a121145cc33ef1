"""python-counter: the template plugin's service, written in Python.

It answers the same routes as plugins/template, meters the same units with
the same evidence, keeps the same kv entries and answers the same
`echo-hash` challenge, so both plugins can be checked against each other.

| request           | answer                                   | meters                       |
|-------------------|------------------------------------------|------------------------------|
| GET /hello        | `<greeting>, <name>` (config, query)     | requests                     |
| POST /echo        | the request body                         | requests, bytes-echoed (+sha256) |
| POST /counter     | {"count": n}, incremented in kv          | requests                     |
| GET /ticks        | {"ticks": n}: how often `tick` ran       | requests                     |
| GET/PUT/DELETE /kv/<key>, GET /kv?prefix=p | as the template  | requests                     |

Challenge kind `echo-hash`: the proof is sha256(nonce || params).

Built with componentize-py against ../../wit (see docs/plugins/python.md).
"""

import hashlib
import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import config, kv, log, metering
from wit_world.imports.types import (
    Body_Bytes,
    Challenge,
    Datagram,
    HttpRequest,
    HttpResponse,
    PluginInfo,
    Proof,
    ResourceKind,
    UnitInfo,
    Usage,
)

VERSION = "0.1.0"
USER = "user/"


class WitWorld(wit_world.WitWorld):
    def describe(self) -> PluginInfo:
        return PluginInfo(
            name="python-counter",
            version=VERSION,
            kind=ResourceKind.OTHER,
            units=[
                UnitInfo("requests", "one HTTP request answered"),
                UnitInfo("bytes-echoed", "one byte of request body echoed back"),
            ],
        )

    def init(self, cfg: list[tuple[str, str]]) -> None:
        for key, value in cfg:
            if key == "greeting" and value == "":
                raise Err("config `greeting` must not be empty")
            if key != "greeting":
                raise Err(f"unknown config key `{key}` (known: greeting)")
        kv.set("meta/initialized", b"1")

    def handle_http(self, req: HttpRequest) -> HttpResponse:
        response = route(req)
        try:
            meter("requests", 1)
        except Err as e:
            log.log(log.Level.ERROR, f"cannot meter: {e.value}")
        return response

    def handle_datagram(self, d: Datagram) -> list[Datagram]:
        return []

    def handle_message(self, topic: str, payload: bytes) -> None:
        log.log(log.Level.DEBUG, f"ignoring a message on `{topic}`: this plugin handles no messages")

    def tick(self, now_ms: int) -> None:
        ticks = get_json("ticks", 0) + 1
        try:
            kv.set("ticks", json.dumps(ticks).encode())
        except Err as e:
            log.log(log.Level.WARN, f"cannot count the tick: {e.value}")
        log.log(log.Level.DEBUG, f"tick {ticks} at {now_ms}")

    def prove(self, c: Challenge) -> Proof:
        if c.kind != "echo-hash":
            raise Err(f"challenge kind `{c.kind}` is not supported (supported: echo-hash)")
        return Proof(challenge_id=c.id, payload=echo_hash(c))

    def verify(self, c: Challenge, p: Proof) -> bool:
        return c.kind == "echo-hash" and p.challenge_id == c.id and p.payload == echo_hash(c)


def echo_hash(c: Challenge) -> bytes:
    return hashlib.sha256(bytes(c.nonce) + bytes(c.params)).digest()


def meter(unit: str, quantity: int, evidence: bytes | None = None) -> None:
    metering.record_usage(Usage(unit=unit, quantity=quantity, subject=None, evidence=evidence))


def get_json(key: str, default):
    try:
        raw = kv.get(key)
    except Err:
        return default
    return default if raw is None else json.loads(raw)


def response(status: int, content_type: str, body: bytes) -> HttpResponse:
    return HttpResponse(status=status, headers=[("content-type", content_type)], body=Body_Bytes(body))


def text(status: int, body: str) -> HttpResponse:
    return response(status, "text/plain; charset=utf-8", body.encode())


def as_json(status: int, value) -> HttpResponse:
    # The same bytes as serde_json: no spaces.
    return response(status, "application/json", json.dumps(value, separators=(",", ":")).encode())


def query_param(query: str, name: str) -> str | None:
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            return value
    return None


def header(req: HttpRequest, name: str) -> str | None:
    for key, value in req.headers:
        if key.lower() == name:
            return value
    return None


def kv_error(e: Err) -> str:
    return str(e.value)


def route(req: HttpRequest) -> HttpResponse:
    method, path = req.method, req.path
    if (method, path) == ("GET", "/hello"):
        greeting = config.get("greeting") or "hello"
        name = query_param(req.query, "name") or "world"
        return text(200, f"{greeting}, {name}")
    if (method, path) == ("POST", "/echo"):
        body = bytes(req.body)
        try:
            meter("bytes-echoed", len(body), hashlib.sha256(body).digest())
        except Err as e:
            return text(500, str(e.value))
        return response(200, header(req, "content-type") or "application/octet-stream", body)
    if (method, path) == ("GET", "/ticks"):
        return as_json(200, {"ticks": get_json("ticks", 0)})
    if (method, path) == ("POST", "/counter"):
        try:
            raw = kv.get("counter")
            count = (0 if raw is None else json.loads(raw)) + 1
            kv.set("counter", json.dumps(count).encode())
        except Err as e:
            return text(500, kv_error(e))
        return as_json(200, {"count": count})
    if (method, path) == ("GET", "/kv"):
        prefix = query_param(req.query, "prefix") or ""
        try:
            keys = kv.list_keys(USER + prefix, 1000)
        except Err as e:
            return text(500, kv_error(e))
        return as_json(200, [k[len(USER):] for k in keys])
    if path.startswith("/kv/"):
        return kv_route(method, USER + path[4:], bytes(req.body))
    return text(404, f"no route for {req.method} {req.path}")


def kv_route(method: str, key: str, body: bytes) -> HttpResponse:
    try:
        if method == "GET":
            value = kv.get(key)
            if value is None:
                return text(404, "no such key")
            return response(200, "application/octet-stream", value)
        if method == "PUT":
            kv.set(key, body)
        elif method == "DELETE":
            kv.delete(key)
        else:
            return text(405, "use GET, PUT or DELETE")
    except Err as e:
        return text(400, kv_error(e))
    return response(204, "text/plain", b"")
