"""Creates the jobs' AWS resources: an SQS queue with its dead-letter queue, and the DynamoDB table with TTL."""

from __future__ import annotations

import json

from backends.aws_jobs import TTL_ATTRIBUTE

# The dead-letter queue keeps a failed message as long as SQS allows, for an operator to look at.
DEAD_LETTER_RETENTION_SECONDS = 14 * 86400
# A long poll of 20 s (SQS's most) is the cheapest way to wait for work.
RECEIVE_WAIT_SECONDS = 20


def create_job_resources(sqs, dynamodb, queue_name: str, table_name: str, *, max_receives: int,
                         visibility_seconds: int, queue_seconds: int) -> dict:
    """Create (or find, when they exist with the same settings) the queue, its dead-letter queue and the table.

    Returns the queue's URL, the dead-letter queue's URL and the table's name.
    """
    dead_letter_url = sqs.create_queue(QueueName=f"{queue_name}-dead-letter", Attributes={
        "MessageRetentionPeriod": str(DEAD_LETTER_RETENTION_SECONDS), "SqsManagedSseEnabled": "true"})["QueueUrl"]
    dead_letter_arn = sqs.get_queue_attributes(QueueUrl=dead_letter_url,
                                               AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(QueueName=queue_name, Attributes={
        "VisibilityTimeout": str(visibility_seconds),
        # At least SQS's default 4 days (a webhook retry waits in the queue up to a day) and longer than
        # a job may wait to start; at most SQS's 14 days.
        "MessageRetentionPeriod": str(min(14 * 86400, max(4 * 86400, queue_seconds + 86400))),
        "ReceiveMessageWaitTimeSeconds": str(RECEIVE_WAIT_SECONDS),
        "SqsManagedSseEnabled": "true",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": str(max_receives)}),
    })["QueueUrl"]
    try:
        dynamodb.create_table(TableName=table_name, BillingMode="PAY_PER_REQUEST",
                              KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
                              AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}])
        dynamodb.get_waiter("table_exists").wait(TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    except dynamodb.exceptions.ResourceInUseException:
        pass  # made before: keep it
    ttl = dynamodb.describe_time_to_live(TableName=table_name)["TimeToLiveDescription"]
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        dynamodb.update_time_to_live(TableName=table_name, TimeToLiveSpecification={
            "Enabled": True, "AttributeName": TTL_ATTRIBUTE})
    return {"queue_url": queue_url, "dead_letter_queue_url": dead_letter_url, "table": table_name}
