"""What an operator does with boto3 around uplink-server's S3 store, for the e2e tests.

  s3_admin.py setup ENDPOINT BUCKET
      -> {"access_key_id": ..., "secret_access_key": ..., "role_arn": ...}
      (moto started with INITIAL_NO_AUTH_ACTION_COUNT=5: an IAM user allowed s3:* and to
      assume the role, a role allowed s3:* that a web identity or that user may assume, the user's access key, then the bucket
      made with that key; every later request must be signed, so a wrong signature is
      refused)
  s3_admin.py unsigned ENDPOINT N   -> lets the next N requests through unsigned (moto's
      reset-auth): STS's AssumeRoleWithWebIdentity is unsigned in AWS, and moto checks
      every request once the first ones are spent
  s3_admin.py sha ENDPOINT KEY SECRET BUCKET OBJECT   -> "<sha256 hex> <size>" or "missing"
  s3_admin.py shas ENDPOINT KEY SECRET BUCKET PREFIX  -> "<key> <sha256 hex> <size>" per object
  s3_admin.py list ENDPOINT KEY SECRET BUCKET PREFIX  -> the keys, one per line
  s3_admin.py uploads ENDPOINT KEY SECRET BUCKET      -> multipart uploads in progress, one per line
  s3_admin.py begin ENDPOINT KEY SECRET BUCKET OBJECT -> starts a multipart upload of OBJECT
      with one 5 MiB part and leaves it open (as a complete whose node died does)
  s3_admin.py put ENDPOINT KEY SECRET BUCKET OBJECT TEXT|@FILE [NAME=VALUE...]
      -> stores TEXT (or FILE's bytes) at OBJECT, with those user metadata entries
"""
import hashlib
import json
import os
import ssl
import sys
import urllib.request

import boto3
import botocore


def client(endpoint, key, secret):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    )


def ssl_context():
    ca = os.environ.get("AWS_CA_BUNDLE")
    return ssl.create_default_context(cafile=ca) if ca else None


def digest(body):
    h, n = hashlib.sha256(), 0
    for piece in iter(lambda: body.read(1 << 20), b""):
        h.update(piece)
        n += len(piece)
    return h.hexdigest(), n


def main(argv):
    cmd = argv[1]
    if cmd == "setup":
        endpoint, bucket = argv[2], argv[3]
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
            region_name="us-east-1",
        )
        iam.create_user(UserName="uplink")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        user_policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:*", "sts:AssumeRole"], "Resource": "*"}],
        }
        iam.put_user_policy(UserName="uplink", PolicyName="s3", PolicyDocument=json.dumps(user_policy))
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/cluster"},
                    "Action": "sts:AssumeRoleWithWebIdentity",
                },
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": "arn:aws:iam::123456789012:user/uplink"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        role = iam.create_role(RoleName="uplink-ingest", AssumeRolePolicyDocument=json.dumps(trust))
        iam.put_role_policy(RoleName="uplink-ingest", PolicyName="s3", PolicyDocument=json.dumps(policy))
        k = iam.create_access_key(UserName="uplink")["AccessKey"]
        client(endpoint, k["AccessKeyId"], k["SecretAccessKey"]).create_bucket(Bucket=bucket)
        print(
            json.dumps(
                {
                    "access_key_id": k["AccessKeyId"],
                    "secret_access_key": k["SecretAccessKey"],
                    "role_arn": role["Role"]["Arn"],
                }
            )
        )
        return 0
    if cmd == "unsigned":
        endpoint, n = argv[2], argv[3]
        # Not a form (werkzeug would consume the body): moto reads the number raw.
        req = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth",
            data=n.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(req, context=ssl_context()) as r:
            r.read()
        return 0
    endpoint, key, secret, bucket = argv[2:6]
    s3 = client(endpoint, key, secret)
    if cmd == "sha":
        try:
            body = s3.get_object(Bucket=bucket, Key=argv[6])["Body"]
        except botocore.exceptions.ClientError as e:
            if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
                print("missing")
                return 0
            raise
        print(*digest(body))
    elif cmd == "shas":
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=argv[6])
        for page in pages:
            for item in page.get("Contents", []):
                sha, n = digest(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"])
                print(item["Key"], sha, n)
    elif cmd == "list":
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=argv[6])
        for page in pages:
            for item in page.get("Contents", []):
                print(item["Key"])
    elif cmd == "put":
        meta = dict(kv.split("=", 1) for kv in argv[8:])
        body = argv[7]
        body = open(body[1:], "rb").read() if body.startswith("@") else body.encode()
        s3.put_object(Bucket=bucket, Key=argv[6], Body=body, Metadata=meta)
    elif cmd == "begin":
        key = argv[6]
        upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"p" * (5 << 20))
        print(upload)
    elif cmd == "uploads":
        for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            print(u["Key"], u["UploadId"])
    else:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
