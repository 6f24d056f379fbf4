#!/usr/bin/env python3
"""Ask Gleaner for a collection through RabbitMQ, and wait for its answer.

    GLEANER_API_KEY=gk_... python3 collect.py aws-inventory --request-id nightly-2026-12-03

Publishes a request to the exchange `<prefix>.requests` with routing key `collect`, carrying
the API key in the `authorization` header, and reads the reply through RabbitMQ's direct
reply-to. Prints the reply's JSON: `{request_id, job_id, status, replayed}`, or the problem
that refused the request. Exits 0 when the collection was accepted, 1 when it was refused,
2 when no reply came in time.

Sending the same --request-id again (say, after a timeout) never starts a second collection:
the reply names the first one's job. Needs `pika` (pip install pika).
"""

import argparse
import json
import os
import sys
import time
import uuid

import pika

REPLY_TO = "amq.rabbitmq.reply-to"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("collector", help="the collector's name, or its id with --by-id")
    p.add_argument("--by-id", action="store_true", help="COLLECTOR is an id, not a name")
    p.add_argument(
        "--request-id",
        default=None,
        help="names this request; the same id twice gives the same job (default: a new UUID)",
    )
    p.add_argument("--start-month", help="billing collectors: first month (YYYY-MM)")
    p.add_argument("--end-month", help="billing collectors: last month (YYYY-MM)")
    p.add_argument(
        "--amqp-url",
        default=os.environ.get("GLEANER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
    )
    p.add_argument(
        "--prefix",
        default=os.environ.get("GLEANER_AMQP__PREFIX", "gleaner"),
        help="the installation's exchange prefix (GLEANER_AMQP__PREFIX)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the reply")
    return p.parse_args()


def request_body(args):
    body = {"request_id": args.request_id or str(uuid.uuid4())}
    body["collector_id" if args.by_id else "collector_name"] = args.collector
    window = {}
    if args.start_month:
        window["start_month"] = args.start_month
    if args.end_month:
        window["end_month"] = args.end_month
    if window:
        body["window"] = window
    return body


def main():
    args = parse_args()
    key = os.environ.get("GLEANER_API_KEY")
    if not key:
        print("GLEANER_API_KEY is not set", file=sys.stderr)
        return 2
    body = request_body(args)
    correlation_id = str(uuid.uuid4())
    replies = []

    connection = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
    try:
        channel = connection.channel()
        # Direct reply-to: the reply comes to this channel's consumer, no queue to declare.
        channel.basic_consume(
            queue=REPLY_TO,
            on_message_callback=lambda _ch, _m, props, data: replies.append((props, data)),
            auto_ack=True,
        )
        # Confirms and `mandatory`: a request no queue took raises instead of vanishing.
        channel.confirm_delivery()
        channel.basic_publish(
            exchange=f"{args.prefix}.requests",
            routing_key="collect",
            body=json.dumps(body).encode(),
            properties=pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                reply_to=REPLY_TO,
                correlation_id=correlation_id,
                headers={"authorization": f"Bearer {key}"},
            ),
            mandatory=True,
        )
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.2)
            for props, data in replies:
                if props.correlation_id != correlation_id:
                    continue
                answer = json.loads(data)
                print(json.dumps(answer))
                status = (props.headers or {}).get("status")
                return 0 if status == 202 else 1
        print(
            f"no reply within {args.timeout:g} s; send the same --request-id "
            f"{body['request_id']} again to find out",
            file=sys.stderr,
        )
        return 2
    finally:
        connection.close()


if __name__ == "__main__":
    sys.exit(main())
