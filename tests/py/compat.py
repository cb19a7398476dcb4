"""Checks two Avro schemas against each other with Apache Avro's own
compatibility checker (avro.compatibility, the port of the Java
SchemaCompatibility that Confluent Schema Registry applies), and prints
{"backward": bool, "forward": bool} as JSON: backward, the new schema reads
what the old one wrote (Confluent's BACKWARD); forward, the other way.

Usage: compat.py OLD_SCHEMA_FILE NEW_SCHEMA_FILE
"""
import json, sys

from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.schema import parse

old, new = (parse(open(path).read()) for path in sys.argv[1:3])
checker = ReaderWriterCompatibilityChecker()


def reads(reader, writer):
    result = checker.get_compatibility(reader, writer)
    return result.compatibility is SchemaCompatibilityType.compatible


print(json.dumps({"backward": reads(new, old), "forward": reads(old, new)}))
