"""Exercises a schema registry with Confluent's own Python SchemaRegistryClient
and Avro serde, and prints what it observed as JSON (the Rust test asserts).

Usage: registry_client_check.py REGISTRY_URL SUBJECT
"""
import json, sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

url, subject = sys.argv[1], sys.argv[2]
V1 = {"type": "record", "name": "Probe", "namespace": "test", "fields": [{"name": "a", "type": "string"}]}
V2 = dict(V1, fields=V1["fields"] + [{"name": "b", "type": ["null", "long"], "default": None}])
V3_INCOMPATIBLE = dict(V1, fields=V1["fields"] + [{"name": "c", "type": "long"}])

client = SchemaRegistryClient({"url": url})
seen = {}
id1 = client.register_schema(subject, Schema(json.dumps(V1), "AVRO"))
seen["id1"] = id1
seen["get_by_id_equal"] = json.loads(client.get_schema(id1).schema_str) == V1
seen["register_again_same_id"] = client.register_schema(subject, Schema(json.dumps(V1), "AVRO")) == id1
id2 = client.register_schema(subject, Schema(json.dumps(V2), "AVRO"))
seen["id2_differs"] = id2 != id1
latest = client.get_latest_version(subject)
seen["latest"] = {"version": latest.version, "id_is_id2": latest.schema_id == id2, "subject": latest.subject}
seen["versions"] = client.get_versions(subject)
seen["lookup_v1_version"] = client.lookup_schema(subject, Schema(json.dumps(V1), "AVRO")).version
seen["compatible_v3"] = client.test_compatibility(subject, Schema(json.dumps(V3_INCOMPATIBLE), "AVRO"))
try:
    client.register_schema(subject, Schema(json.dumps(V3_INCOMPATIBLE), "AVRO"))
    seen["incompatible"] = "accepted"
except SchemaRegistryError as error:
    seen["incompatible"] = {"http_status": error.http_status_code, "error_code": error.error_code}
try:
    client.get_schema(999999)
    seen["missing_id"] = "found"
except SchemaRegistryError as error:
    seen["missing_id"] = {"http_status": error.http_status_code, "error_code": error.error_code}
seen["subject_listed"] = subject in client.get_subjects()

serializer = AvroSerializer(client, json.dumps(V2), conf={"auto.register.schemas": False, "use.latest.version": True})
deserializer = AvroDeserializer(client)
context = SerializationContext(subject[: -len("-value")], MessageField.VALUE)
wire = serializer({"a": "x", "b": 7}, context)
seen["wire_header"] = [wire[0], int.from_bytes(wire[1:5], "big") == id2]
seen["round_trip"] = deserializer(wire, context)
print(json.dumps(seen))
