"""Reads every record of one topic and prints one JSON object per line.

Values are decoded by Confluent's own AvroDeserializer (schema fetched from the
registry by the id in the wire header), or printed raw with --raw (dead letters).
Driven by the Rust end-to-end tests; stops after --expect records plus --idle
seconds without more, or at --timeout.
"""
import argparse, base64, datetime, json, sys, time, uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def jsonable(value):
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(type(value))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--registry")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--idle", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--raw", action="store_true")
    parser.add_argument("--no-value", action="store_true")
    args = parser.parse_args()

    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": f"superfone-tests-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "fetch.wait.max.ms": 20,
    })
    metadata = consumer.list_topics(args.topic, timeout=10)
    partitions = metadata.topics[args.topic].partitions
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in partitions])
    deserializer = None if args.raw or args.no_value else AvroDeserializer(SchemaRegistryClient({"url": args.registry}))

    seen, deadline, last = 0, time.monotonic() + args.timeout, time.monotonic()
    while time.monotonic() < deadline:
        if seen >= args.expect and time.monotonic() - last >= args.idle:
            break
        message = consumer.poll(0.1)
        if message is None:
            continue
        if message.error():
            print(json.dumps({"error": str(message.error())}), file=sys.stderr)
            continue
        raw = message.value()
        record = {
            "partition": message.partition(),
            "offset": message.offset(),
            "key": message.key().decode() if message.key() is not None else None,
            "headers": {k: (v.decode() if v is not None else None) for k, v in (message.headers() or [])},
        }
        if args.no_value:
            record["value_bytes"] = len(raw)
        elif args.raw:
            record["value"] = raw.decode("utf-8", errors="replace")
        else:
            record["magic"] = raw[0]
            record["schema_id"] = int.from_bytes(raw[1:5], "big")
            context = SerializationContext(args.topic, MessageField.VALUE)
            record["value"] = deserializer(raw, context)
        print(json.dumps(record, default=jsonable), flush=True)
        seen += 1
        last = time.monotonic()
    consumer.close()


if __name__ == "__main__":
    main()
