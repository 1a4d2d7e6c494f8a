"""An independent S3 client for the tests of sykli_testkit::s3_server: boto3/botocore sign
every request (nothing here computes a signature). Prints one JSON object.

Endpoint and credentials come from the environment the AWS SDKs read: AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION.

  raw METHOD PATH [--body-file F] [--send-body-file F] [--payload signed|unsigned]
      [--secret S] [--access-key K] [--region R] [--token T] [--header K:V]... [--unsigned]
      One request signed with botocore's S3SigV4Auth (headers), sent with urllib.
      --send-body-file sends other bytes than the signed ones.
  presign METHOD PATH --expires N [--age SECONDS] [--secret S]
      A presigned URL (botocore's S3SigV4QueryAuth) whose X-Amz-Date is SECONDS ago.
  fetch URL [--method M] [--header K:V]...   One unsigned request (for presigned URLs).
  create-bucket BUCKET                  boto3 create_bucket.
  put BUCKET KEY FILE [--meta K=V]...   boto3 put_object.
  head BUCKET KEY                       boto3 head_object.
  multipart BUCKET KEY FILE --part-size N [--meta K=V]...
      boto3 create_multipart_upload, upload_part for each part, complete_multipart_upload.

A response prints as {"status", "headers" (lower-cased names), "body_hex", "code",
"message"} (code and message of an S3 XML error); a request as well as "sent_headers".
A boto3 call the server refuses prints {"status", "code"}.
"""

import argparse
import datetime
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from unittest import mock

import boto3
import botocore.auth
import botocore.exceptions
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

ENDPOINT = os.environ["AWS_ENDPOINT_URL"]
ACCESS_KEY = os.environ["AWS_ACCESS_KEY_ID"]
SECRET_KEY = os.environ["AWS_SECRET_ACCESS_KEY"]
REGION = os.environ["AWS_REGION"]


def headers_arg(pairs):
    return dict(p.split(":", 1) for p in pairs or [])


def send(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, hdrs, data = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, data = e.code, e.headers, e.read()
    out = {
        "status": status,
        "headers": {k.lower(): v for k, v in hdrs.items()},
        "body_hex": data.hex(),
    }
    for field in ("Code", "Message"):
        m = re.search(rf"<{field}>(.*?)</{field}>".encode(), data)
        out[field.lower()] = m.group(1).decode() if m else None
    return out


def raw(a):
    body = open(a.body_file, "rb").read() if a.body_file else b""
    sent = open(a.send_body_file, "rb").read() if a.send_body_file else body
    headers = headers_arg(a.header)
    if a.method == "PUT":
        headers.setdefault("Content-Type", "application/octet-stream")
    req = AWSRequest(method=a.method, url=ENDPOINT + a.path, data=body, headers=headers)
    # S3SigV4Auth signs the payload's SHA-256 unless the client config disables it.
    req.context["client_config"] = Config(s3={"payload_signing_enabled": a.payload == "signed"})
    if not a.unsigned:
        creds = Credentials(a.access_key or ACCESS_KEY, a.secret or SECRET_KEY, a.token)
        S3SigV4Auth(creds, "s3", a.region or REGION).add_auth(req)
    prepared = req.prepare()
    headers = dict(prepared.headers)
    out = send(a.method, prepared.url, sent if a.method in ("PUT", "POST") else None, headers)
    out["sent_headers"] = {k.lower(): v if isinstance(v, str) else v.decode() for k, v in headers.items()}
    return out


def presign(a):
    signed_at = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=a.age)
    req = AWSRequest(method=a.method, url=ENDPOINT + a.path)
    auth = S3SigV4QueryAuth(Credentials(ACCESS_KEY, a.secret or SECRET_KEY), "s3", REGION, expires=a.expires)
    # botocore takes the signing time from this function: sign as of `signed_at`.
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=signed_at):
        auth.add_auth(req)
    return {"url": req.url}


def fetch(a):
    return send(a.method, a.url, None, headers_arg(a.header))


def client():
    config = Config(s3={"addressing_style": "path"}, signature_version="s3v4", retries={"max_attempts": 1})
    return boto3.client("s3", config=config)


def meta_arg(pairs):
    return dict(p.split("=", 1) for p in pairs or [])


def response_meta(resp):
    return {"status": resp["ResponseMetadata"]["HTTPStatusCode"], "headers": resp["ResponseMetadata"]["HTTPHeaders"]}


def create_bucket(a):
    return response_meta(client().create_bucket(Bucket=a.bucket))


def put(a):
    body = open(a.file, "rb").read()
    return response_meta(client().put_object(Bucket=a.bucket, Key=a.key, Body=body, Metadata=meta_arg(a.meta)))


def head(a):
    resp = client().head_object(Bucket=a.bucket, Key=a.key)
    return {**response_meta(resp), "metadata": resp["Metadata"], "etag": resp["ETag"]}


def multipart(a):
    s3 = client()
    data = open(a.file, "rb").read()
    upload = s3.create_multipart_upload(Bucket=a.bucket, Key=a.key, Metadata=meta_arg(a.meta))
    parts = []
    for n, at in enumerate(range(0, len(data), a.part_size), start=1):
        part = s3.upload_part(
            Bucket=a.bucket, Key=a.key, UploadId=upload["UploadId"], PartNumber=n, Body=data[at : at + a.part_size]
        )
        parts.append({"PartNumber": n, "ETag": part["ETag"]})
    done = s3.complete_multipart_upload(
        Bucket=a.bucket, Key=a.key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    return {**response_meta(done), "parts": len(parts), "etag": done["ETag"]}


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("raw")
    r.add_argument("method")
    r.add_argument("path")
    r.add_argument("--body-file")
    r.add_argument("--send-body-file")
    r.add_argument("--payload", choices=["signed", "unsigned"], default="signed")
    r.add_argument("--secret")
    r.add_argument("--access-key")
    r.add_argument("--region")
    r.add_argument("--token")
    r.add_argument("--header", action="append")
    r.add_argument("--unsigned", action="store_true")
    r.set_defaults(run=raw)
    ps = sub.add_parser("presign")
    ps.add_argument("method")
    ps.add_argument("path")
    ps.add_argument("--expires", type=int, required=True)
    ps.add_argument("--age", type=int, default=0)
    ps.add_argument("--secret")
    ps.set_defaults(run=presign)
    f = sub.add_parser("fetch")
    f.add_argument("url")
    f.add_argument("--method", default="GET")
    f.add_argument("--header", action="append")
    f.set_defaults(run=fetch)
    c = sub.add_parser("create-bucket")
    c.add_argument("bucket")
    c.set_defaults(run=create_bucket)
    for name, run in (("put", put), ("multipart", multipart)):
        u = sub.add_parser(name)
        u.add_argument("bucket")
        u.add_argument("key")
        u.add_argument("file")
        u.add_argument("--meta", action="append")
        if name == "multipart":
            u.add_argument("--part-size", type=int, required=True)
        u.set_defaults(run=run)
    h = sub.add_parser("head")
    h.add_argument("bucket")
    h.add_argument("key")
    h.set_defaults(run=head)
    a = p.parse_args()
    try:
        out = a.run(a)
    except botocore.exceptions.ClientError as e:
        out = {"status": e.response["ResponseMetadata"]["HTTPStatusCode"], "code": e.response["Error"]["Code"]}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
