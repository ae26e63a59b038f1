"""Create the S3 result-storage block all workers share (compose's init step).

Reads S3_ENDPOINT_URL, S3_BUCKET, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY from the environment and saves the
block `s3-bucket/medtune-results`; workers point MEDTUNE_RESULT_STORAGE at it, so a task cached by a CPU worker
is a cache hit for a CUDA worker on another machine (with per-machine local storage it would be recomputed).
"""

import os

import boto3
from prefect_aws import AwsCredentials, S3Bucket
from prefect_aws.client_parameters import AwsClientParameters

bucket = os.environ.get("S3_BUCKET", "medtune-results")
s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["S3_ENDPOINT_URL"],
    aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
    aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
)
if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
    s3.create_bucket(Bucket=bucket)

credentials = AwsCredentials(
    aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
    aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    aws_client_parameters=AwsClientParameters(endpoint_url=os.environ["S3_ENDPOINT_URL"]),
)
S3Bucket(bucket_name=bucket, credentials=credentials).save("medtune-results", overwrite=True)
print("saved block s3-bucket/medtune-results")
