"""Jobs on AWS: the job table in DynamoDB (conditional writes, a TTL attribute) and the queue on SQS."""

from __future__ import annotations

import json
import time
from decimal import Decimal

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from generation.errors import JobsUnavailable, KeyExists
from jobs.states import Message, When

TTL_ATTRIBUTE = "expires_at"  # the table's time-to-live attribute: DynamoDB deletes the item after it
# SQS takes at most 10 messages a receive and a delay of at most 15 minutes.
MAX_BATCH, MAX_DELAY_SECONDS, MAX_WAIT_SECONDS = 10, 900, 20


class DynamoJobTable:
    """One item per job, keyed by `job_id`; every change an UpdateItem with a ConditionExpression."""

    def __init__(self, client, table: str):
        self.client = client
        self.table = table
        self._to_dynamo = TypeSerializer().serialize
        self._from_dynamo = TypeDeserializer().deserialize

    def create(self, job: dict) -> None:
        """PutItem unless the id exists (then KeyExists)."""
        try:
            self.client.put_item(TableName=self.table, Item=self._item(job),
                                 ConditionExpression="attribute_not_exists(job_id)")
        except ClientError as error:
            if _code(error) == "ConditionalCheckFailedException":
                raise KeyExists(job["job_id"]) from None
            raise _failed("PutItem", error) from error
        except BotoCoreError as error:
            raise _failed("PutItem", error) from error

    def get(self, job_id: str) -> dict | None:
        """A strongly consistent read (a state just written must be seen by the next GET)."""
        try:
            answer = self.client.get_item(TableName=self.table, Key={"job_id": {"S": job_id}}, ConsistentRead=True)
        except (ClientError, BotoCoreError) as error:
            raise _failed("GetItem", error) from error
        item = answer.get("Item")
        job = None if item is None else self._document(item)
        if job is not None and float(job.get(TTL_ATTRIBUTE) or 0) and job[TTL_ATTRIBUTE] <= time.time():
            return None  # past its retention: DynamoDB's TTL deletes it within a few days, not at once
        return job

    def update(self, job_id: str, changes: dict, when: tuple[When, ...], append: dict | None = None) -> dict | None:
        """UpdateItem under the OR of `when`; the new item, or None when no condition held."""
        names, values, sets = {}, {}, []
        for i, (field, value) in enumerate(changes.items()):
            names[f"#c{i}"] = field
            values[f":c{i}"] = self._value(value)
            sets.append(f"#c{i} = :c{i}")
        for i, (field, items) in enumerate((append or {}).items()):
            names[f"#a{i}"] = field
            values[f":a{i}"] = self._value(list(items))
            values[":empty"] = {"L": []}
            sets.append(f"#a{i} = list_append(if_not_exists(#a{i}, :empty), :a{i})")
        names["#state"] = "state"
        alternatives = []
        for i, condition in enumerate(when):
            states = []
            for j, state in enumerate(condition.states):
                values[f":w{i}s{j}"] = {"S": state}
                states.append(f":w{i}s{j}")
            parts = [f"#state IN ({', '.join(states)})"]
            if condition.worker is not None:
                values[f":w{i}worker"] = {"S": condition.worker}
                names["#worker"] = "worker"  # DynamoDB refuses a name the expressions do not use
                parts.append(f"#worker = :w{i}worker")
            for j, (field, value) in enumerate(condition.equals):
                names[f"#w{i}e{j}"] = field
                values[f":w{i}e{j}"] = self._value(value)
                if value is False:
                    # A missing attribute counts as False (an item written before the attribute existed).
                    parts.append(f"(attribute_not_exists(#w{i}e{j}) OR #w{i}e{j} = :w{i}e{j})")
                else:
                    parts.append(f"#w{i}e{j} = :w{i}e{j}")
            if condition.lease_ended_before is not None:
                values[f":w{i}lease"] = self._value(condition.lease_ended_before)
                parts.append(f"(attribute_not_exists(lease_until) OR lease_until < :w{i}lease)")
            alternatives.append("(" + " AND ".join(parts) + ")")
        try:
            answer = self.client.update_item(
                TableName=self.table, Key={"job_id": {"S": job_id}}, UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression=" OR ".join(alternatives), ExpressionAttributeNames=names,
                ExpressionAttributeValues=values, ReturnValues="ALL_NEW")
        except ClientError as error:
            if _code(error) == "ConditionalCheckFailedException":
                return None
            raise _failed("UpdateItem", error) from error
        except BotoCoreError as error:
            raise _failed("UpdateItem", error) from error
        return self._document(answer["Attributes"])

    def check(self) -> None:
        """DescribeTable: raise unless the table exists and answers."""
        try:
            self.client.describe_table(TableName=self.table)
        except (ClientError, BotoCoreError) as error:
            raise _failed("DescribeTable", error) from error

    def _item(self, job: dict) -> dict:
        return {field: self._value(value) for field, value in job.items()}

    def _value(self, value) -> dict:
        # DynamoDB numbers are decimals; boto3 refuses Python floats, so they go through JSON as Decimal.
        return self._to_dynamo(json.loads(json.dumps(value), parse_float=Decimal))

    def _document(self, item: dict) -> dict:
        return {field: _plain(self._from_dynamo(value)) for field, value in item.items()}


class SqsQueue:
    """An SQS standard queue whose redrive policy moves a message to the dead-letter queue after N receives."""

    def __init__(self, client, queue_url: str, max_receives: int):
        self.client = client
        self.queue_url = queue_url
        self.max_receives = max_receives

    def send(self, body: str, delay_seconds: int = 0) -> None:
        """SendMessage, hidden for up to 15 minutes."""
        try:
            self.client.send_message(QueueUrl=self.queue_url, MessageBody=body,
                                     DelaySeconds=max(0, min(MAX_DELAY_SECONDS, int(delay_seconds))))
        except (ClientError, BotoCoreError) as error:
            raise _failed("SendMessage", error) from error

    def receive(self, max_messages: int, wait_seconds: float, visibility_seconds: int) -> list[Message]:
        """ReceiveMessage with a long poll; each message with its ApproximateReceiveCount."""
        try:
            answer = self.client.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=max(1, min(MAX_BATCH, max_messages)),
                WaitTimeSeconds=max(0, min(MAX_WAIT_SECONDS, int(wait_seconds))), VisibilityTimeout=visibility_seconds,
                MessageSystemAttributeNames=["ApproximateReceiveCount"])
        except (ClientError, BotoCoreError) as error:
            raise _failed("ReceiveMessage", error) from error
        return [Message(m["Body"], m["ReceiptHandle"], int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)))
                for m in answer.get("Messages", [])]

    def delete(self, receipt: str) -> None:
        """DeleteMessage."""
        try:
            self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)
        except (ClientError, BotoCoreError) as error:
            raise _failed("DeleteMessage", error) from error

    def set_visibility(self, receipt: str, seconds: int) -> None:
        """ChangeMessageVisibility (the heartbeat, or a release)."""
        try:
            self.client.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=receipt,
                                                  VisibilityTimeout=max(0, min(43200, int(seconds))))
        except (ClientError, BotoCoreError) as error:
            raise _failed("ChangeMessageVisibility", error) from error

    def check(self) -> None:
        """GetQueueAttributes: raise unless the queue exists and answers."""
        try:
            self.client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])
        except (ClientError, BotoCoreError) as error:
            raise _failed("GetQueueAttributes", error) from error

    def redrive_max_receives(self) -> int | None:
        """The queue's own maxReceiveCount, if it has a redrive policy (to warn when the settings disagree)."""
        try:
            attributes = self.client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["RedrivePolicy"])
        except (ClientError, BotoCoreError) as error:
            raise _failed("GetQueueAttributes", error) from error
        policy = attributes.get("Attributes", {}).get("RedrivePolicy")
        return int(json.loads(policy)["maxReceiveCount"]) if policy else None


def _plain(value):
    """DynamoDB's Decimals back to ints and floats, through lists and maps."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _failed(operation: str, error: Exception) -> JobsUnavailable:
    reason = _code(error) if isinstance(error, ClientError) else type(error).__name__
    return JobsUnavailable(f"the job service could not {operation}: {reason}")
