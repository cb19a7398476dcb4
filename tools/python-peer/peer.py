"""The Python peer of `scripts/bench` (issue 11): the webhook-to-Kafka bridge a
data engineer would write in an afternoon instead of using superfone-bridge,
measured side by side with it.

A raw ASGI handler on uvicorn (uvloop + httptools), orjson, and confluent-kafka
with Confluent's AvroSerializer against the same registry. Same producer
settings as the bridge (idempotent, acks=all, its linger.ms and compression),
bearer auth with hmac.compare_digest, key = contact_id, and 200 only after the
delivery report. No dedup, no spool, no tracing, no dead letters; unknown
fields are dropped. It writes the group id header the bench counts records by.

Run by the bench, one process per worker, all on one port (SO_REUSEPORT):
    peer.py --listen 127.0.0.1:PORT --brokers B --registry-url R \
            --topic-prefix P --schemas DIR --secret S [--linger-ms 1 ...]
"""

import argparse
import asyncio
import datetime
import hmac
import json
import pathlib
import socket
import threading

import orjson
import uvicorn
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

JSON = [(b"content-type", b"application/json")]


def timestamp_fields(schema):
    """Names of the fields whose type (or a union member) is timestamp-millis:
    the payloads carry ISO 8601 text there, fastavro wants datetimes."""
    names = []
    for field in schema["fields"]:
        types = field["type"] if isinstance(field["type"], list) else [field["type"]]
        if any(isinstance(t, dict) and t.get("logicalType") == "timestamp-millis" for t in types):
            names.append(field["name"])
    return names


def inline_named_types(schema, types, seen=None):
    """The event schema with the shared records of schemas/types written in
    where first used (later uses stay names), as the registry gets it."""
    seen = set() if seen is None else seen
    if isinstance(schema, str):
        if schema in types and schema not in seen:
            seen.add(schema)
            return inline_named_types(types[schema], types, seen)
        return schema
    if isinstance(schema, list):
        return [inline_named_types(member, types, seen) for member in schema]
    if isinstance(schema, dict):
        return {key: inline_named_types(value, types, seen) if key in ("type", "items", "values", "fields") else value
                for key, value in schema.items()}
    return schema


def named_types(directory):
    types = {}
    for path in directory.glob("*.avsc"):
        schema = json.loads(path.read_text())
        types[f"{schema.get('namespace', 'com.superfone.events')}.{schema['name']}"] = schema
    return types


def text_fields(schema):
    """Names of the string fields that may carry any JSON (a lead stage
    change's `updated_value` is an object): written as JSON text."""
    names = []
    for field in schema["fields"]:
        types = field["type"] if isinstance(field["type"], list) else [field["type"]]
        if "string" in types and field["name"].endswith("_value"):
            names.append(field["name"])
    return names


class Route:
    def __init__(self, schema_path, topic, registry, types):
        schema = inline_named_types(json.loads(schema_path.read_text()), types)
        text = json.dumps(schema)
        self.topic = topic
        self.timestamps = timestamp_fields(schema)
        self.texts = text_fields(schema)
        self.serializer = AvroSerializer(registry, text)
        self.context = SerializationContext(topic, MessageField.VALUE)

    def value(self, event):
        for name in self.timestamps:
            text = event.get(name)
            if isinstance(text, str):
                event[name] = datetime.datetime.fromisoformat(text)
        for name in self.texts:
            value = event.get(name)
            if value is not None and not isinstance(value, str):
                event[name] = orjson.dumps(value).decode()
        return self.serializer(event, self.context)


def key_of(event):
    for name in ("contact_id", "task_id", "cdr_phone", "cdr_uuid", "cdr_id"):
        value = event.get(name)
        if value is not None:
            return str(value).encode()
    return None


def make_app(args):
    registry = SchemaRegistryClient({"url": args.registry_url})
    schemas = pathlib.Path(args.schemas)
    types = named_types(schemas / "types")
    routes = {}
    for path in sorted(schemas.glob("*.avsc")):
        slug = path.stem
        routes[slug.upper()] = Route(path, args.topic_prefix + slug, registry, types)
    producer = Producer(
        {
            "bootstrap.servers": args.brokers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": args.linger_ms,
            "compression.type": args.compression,
        }
    )
    expected = b"Bearer " + args.secret.encode()

    def poll_forever():
        while True:
            producer.poll(0.1)

    threading.Thread(target=poll_forever, daemon=True).start()

    async def answer(send, status, body):
        await send({"type": "http.response.start", "status": status, "headers": JSON})
        await send({"type": "http.response.body", "body": orjson.dumps(body)})

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            producer.flush(10)
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = dict(scope["headers"])
        if not hmac.compare_digest(headers.get(b"authorization", b""), expected):
            return await answer(send, 401, {"status": "unauthorized"})
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            event = orjson.loads(body)
            route = routes[event["event"]]
            value = route.value(event)
        except Exception as error:  # what a webhook script would do: 400 and log
            return await answer(send, 400, {"status": "rejected", "reason": str(error)})
        group_id = headers.get(b"x-superfone-group-id") or str(event.get("group_id_ref", "")).encode()
        loop = asyncio.get_running_loop()
        delivered = loop.create_future()

        def on_delivery(error, message):
            loop.call_soon_threadsafe(settle, error, message)

        def settle(error, message):
            if not delivered.done():
                delivered.set_result((error, message))

        producer.produce(
            route.topic,
            value,
            key=key_of(event),
            headers=[("superfone-group-id", group_id)],
            on_delivery=on_delivery,
        )
        error, message = await delivered
        if error is not None:
            return await answer(send, 503, {"status": "failed", "reason": str(error)})
        await answer(
            send,
            200,
            {"status": "published", "topic": message.topic(), "partition": message.partition(), "offset": message.offset()},
        )

    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--registry-url", required=True)
    parser.add_argument("--topic-prefix", required=True)
    parser.add_argument("--schemas", default="schemas")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--linger-ms", type=int, default=1)
    parser.add_argument("--compression", default="lz4")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, int(port)))
    config = uvicorn.Config(
        make_app(args), loop="uvloop", http="httptools", lifespan="on",
        access_log=False, log_level="warning", backlog=4096,
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
