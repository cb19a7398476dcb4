"""Talks to the tests' S3 endpoint (moto's server) with boto3, AWS's own
client: creates a bucket, lists its keys, and reads an object back as its
size and SHA-256. Driven by the Rust recording tests (tests/support/store.rs);
prints one JSON document.
"""
import argparse, hashlib, json

import boto3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("command", choices=["create-bucket", "keys", "object"])
    parser.add_argument("--key")
    args = parser.parse_args()
    s3 = boto3.client(
        "s3",
        endpoint_url=args.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    if args.command == "create-bucket":
        s3.create_bucket(Bucket=args.bucket)
        print(json.dumps({"bucket": args.bucket}))
    elif args.command == "keys":
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket)
        print(json.dumps([o["Key"] for page in pages for o in page.get("Contents", [])]))
    else:
        body = s3.get_object(Bucket=args.bucket, Key=args.key)["Body"]
        digest, size = hashlib.sha256(), 0
        for chunk in iter(lambda: body.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
        print(json.dumps({"bytes": size, "sha256": digest.hexdigest()}))


if __name__ == "__main__":
    main()
