#!/usr/bin/env python3
"""Send OpenStack notifications with the real oslo.messaging Notifier.

Each notification is rebuilt from a captured one (a fixture): its event type, priority,
publisher id, payload and request context are taken from the fixture and sent again with
``oslo_messaging.Notifier(transport, publisher_id=..., driver=..., topics=[...])``, so that
what reaches the broker is exactly what a Nova or Heat service would send (envelope,
message_id, timestamp, ``_unique_id``, ``_context_*`` keys).

A fixture file may be
  * an exact AMQP body (``{"oslo.version": "2.0", "oslo.message": "..."}``),
  * a bare notification (``{"event_type": ..., "payload": ...}``, the upstream samples),
  * a list of captured records with a ``body`` (Heat's captures): pick one with --index.

Overrides (the fixture's own values otherwise):
  --event-type, --priority (info, error, warn...), --publisher-id,
  --uuid     instance uuid (versioned ``nova_object.data.uuid``, legacy ``instance_id``)
             or Heat ``stack_identity``,
  --state, --host, --name (``display_name`` / ``stack_name``),
  --timestamp  the notification's timestamp, naive UTC (``2026-11-25 08:37:41.358157``),
  --message-id the notification's message_id.

--compression METHOD sets oslo.messaging's ``[oslo_messaging_rabbit] kombu_compression``
(``gzip``, ``bz2``, ... as kombu names them) in the publisher's configuration file: kombu
then compresses each body and names the method in the message header ``compression``.

One notification per call, or many with --jsonl FILE (``-`` for stdin): one JSON object
per line with the keys fixture, index, exchange, topics, driver, event_type, priority,
publisher_id, uuid, state, host, name, timestamp, message_id, compression (all but fixture optional,
defaulting to the command line's). All are sent over one connection per exchange.

Exit status 0 when every notification was handed to the broker, 1 otherwise (oslo's
Notifier only logs its failures: they are counted here).

Example:
  publish.py --url amqp://guest:guest@127.0.0.1:5672/ --exchange nova \\
      --topic versioned_notifications --fixture instance.create.end.raw.json \\
      --uuid 1b0c...-... --state active --timestamp "2026-11-25 08:37:41.358157"
"""

import warnings

warnings.filterwarnings("ignore", message=".*[Ee]ventlet.*")

import argparse
import datetime
import json
import logging
import os
import sys
import tempfile
import uuid as uuid_mod

import oslo_messaging
from oslo_config import cfg
from oslo_messaging.notify import notifier as notifier_mod


class _Failures(logging.Handler):
    """Counts the errors oslo.messaging logs instead of raising."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.count = 0
        self.last = None

    def emit(self, record):
        self.count += 1
        self.last = record.getMessage()


class _Overrides:
    """What the next notification's message_id and timestamp should be."""

    message_id = None
    timestamp = None


class _UuidShim:
    @staticmethod
    def uuid4():
        if _Overrides.message_id is not None:
            return _Overrides.message_id
        return uuid_mod.uuid4()


class _TimeShim:
    @staticmethod
    def utcnow():
        if _Overrides.timestamp is not None:
            return _Overrides.timestamp
        return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


# The Notifier builds message_id and timestamp itself: let them be set per message.
notifier_mod.uuid = _UuidShim
notifier_mod.timeutils = _TimeShim


def load_notification(path, index):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, list):
        data = data[index]
        if "body" in data:
            body = data["body"]
            data = json.loads(body) if isinstance(body, str) else body
    if "oslo.message" in data:
        data = json.loads(data["oslo.message"])
    return data


def apply_overrides(n, spec):
    payload = n["payload"]
    data = payload.get("nova_object.data") if isinstance(payload, dict) else None
    heat = isinstance(payload, dict) and "stack_identity" in payload
    target = data if data is not None else payload

    def put(key_versioned, key_legacy, key_heat, value):
        if value is None:
            return
        if heat:
            if key_heat:
                payload[key_heat] = value
        elif data is not None:
            data[key_versioned] = value
        else:
            payload[key_legacy] = value

    put("uuid", "instance_id", "stack_identity", spec.get("uuid"))
    put("state", "state", "state", spec.get("state"))
    put("host", "host", None, spec.get("host"))
    put("display_name", "display_name", "stack_name", spec.get("name"))
    if spec.get("payload_set"):
        for key, value in spec["payload_set"].items():
            target[key] = value
    if spec.get("event_type"):
        n["event_type"] = spec["event_type"]
    if spec.get("priority"):
        n["priority"] = spec["priority"]
    if spec.get("publisher_id"):
        n["publisher_id"] = spec["publisher_id"]
    return n


def context_of(n):
    prefix = "_context_"
    return {k[len(prefix):]: v for k, v in n.items() if k.startswith(prefix)}


class Publisher:
    def __init__(self, url):
        self.url = url
        self.transports = {}
        self.notifiers = {}

    def notifier(self, exchange, topics, driver, publisher_id, compression=None):
        key = (exchange, tuple(topics), driver, compression)
        transport_key = (exchange, compression)
        if key not in self.notifiers:
            if transport_key not in self.transports:
                args = []
                if compression:
                    # As an operator would: the option in the service's config file.
                    fd, path = tempfile.mkstemp(suffix=".conf")
                    with os.fdopen(fd, "w") as f:
                        f.write("[oslo_messaging_rabbit]\n"
                                f"kombu_compression = {compression}\n")
                    args = ["--config-file", path]
                conf = cfg.ConfigOpts()
                conf(args, project="synchronizer-publish")
                oslo_messaging.set_transport_defaults(control_exchange=exchange)
                self.transports[transport_key] = oslo_messaging.get_notification_transport(
                    conf, url=self.url)
                if compression:
                    os.unlink(path)
            self.notifiers[key] = oslo_messaging.Notifier(
                self.transports[transport_key], publisher_id=publisher_id, driver=driver,
                topics=list(topics))
        return self.notifiers[key].prepare(publisher_id=publisher_id)

    def send(self, spec):
        n = apply_overrides(load_notification(spec["fixture"], spec.get("index", 0)), spec)
        priority = n.get("priority", "INFO").lower()
        notifier = self.notifier(spec["exchange"], spec["topics"], spec["driver"],
                                 n.get("publisher_id") or "synchronizer-test",
                                 spec.get("compression"))
        _Overrides.message_id = spec.get("message_id")
        ts = spec.get("timestamp")
        _Overrides.timestamp = datetime.datetime.fromisoformat(ts) if ts else None
        try:
            method = getattr(notifier, priority)
        except AttributeError:
            raise SystemExit(f"unknown priority {priority!r}")
        method(context_of(n), n["event_type"], n["payload"])

    def close(self):
        for t in self.transports.values():
            t.cleanup()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="rabbit://guest:guest@127.0.0.1:5672/",
                   help="transport URL (rabbit:// or amqp://)")
    p.add_argument("--exchange", default="nova", help="control_exchange of the service")
    p.add_argument("--topic", action="append", dest="topics",
                   help="notification topic (repeatable); default versioned_notifications")
    p.add_argument("--driver", default="messagingv2", choices=["messagingv2", "messaging"])
    p.add_argument("--fixture")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--event-type")
    p.add_argument("--priority")
    p.add_argument("--publisher-id")
    p.add_argument("--uuid")
    p.add_argument("--state")
    p.add_argument("--host")
    p.add_argument("--name")
    p.add_argument("--timestamp")
    p.add_argument("--message-id")
    p.add_argument("--compression", help="kombu_compression of the publisher (gzip, bz2...)")
    p.add_argument("--jsonl", help="file of one JSON spec per line, - for stdin")
    a = p.parse_args()
    url = a.url.replace("amqp://", "rabbit://", 1)
    defaults = {
        "exchange": a.exchange,
        "topics": a.topics or ["versioned_notifications"],
        "driver": a.driver,
        "index": a.index,
    }
    if a.jsonl:
        stream = sys.stdin if a.jsonl == "-" else open(a.jsonl, encoding="utf-8")
        specs = [dict(defaults, **json.loads(line)) for line in stream if line.strip()]
    else:
        if not a.fixture:
            p.error("--fixture or --jsonl is required")
        spec = dict(defaults, fixture=a.fixture)
        for key in ("event_type", "priority", "publisher_id", "uuid", "state", "host",
                    "name", "timestamp", "message_id", "compression"):
            value = getattr(a, key)
            if value is not None:
                spec[key] = value
        specs = [spec]

    failures = _Failures()
    logging.getLogger("oslo_messaging").addHandler(failures)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    publisher = Publisher(url)
    try:
        for spec in specs:
            publisher.send(spec)
    finally:
        publisher.close()
    if failures.count:
        print(f"{failures.count} notification(s) failed: {failures.last}", file=sys.stderr)
        return 1
    print(f"sent {len(specs)} notification(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
