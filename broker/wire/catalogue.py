"""The message-type catalogue: every JSON Schema in ``schemas/``, compiled once.

Validation errors are turned into a JSON pointer and the failing keyword only: the
validator's own message quotes the offending value, which may be personal data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson

from broker.errors import ConfigError, SchemaInvalid

_PAYLOAD_FILE = re.compile(r"^(?P<type>[a-z][a-z0-9-]*)\.v(?P<ver>[0-9]+)\.json$")
_NOT_PAYLOADS = frozenset({"envelope", "sharing", "common", "registry", "vocabulary", "rulebook"})


@dataclass(frozen=True, slots=True)
class SchemaIssue:
    """Where a document failed: a JSON pointer into it and the schema keyword that failed."""

    pointer: str
    keyword: str


@dataclass(frozen=True, slots=True)
class MessageType:
    name: str
    version: int
    personal_data: bool
    special_category: bool
    validator: jsonschema_rs.Validator
    record_only: bool = False  # recorded and audited, delivered to no one


def _pointer(path: Iterable[str | int]) -> str:
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in path]
    return "/" + "/".join(parts) if parts else ""


def _no_fetch(uri: str) -> Any:
    raise ConfigError(f"schema reference {uri!r} is not in schemas/; nothing is fetched over the network")


class Catalogue:
    """Compiled validators for the envelope, the sharing block, the registry and each message type."""

    def __init__(self, schema_dir: Path | None = None) -> None:
        directory = schema_dir or Path(str(resources.files("schemas")))
        docs: dict[str, Any] = {}
        for path in sorted(directory.glob("*.json")):
            doc = orjson.loads(path.read_bytes())
            if isinstance(doc, dict) and "$schema" in doc:
                docs[path.name] = doc
        if "envelope.v1.json" not in docs:
            raise ConfigError(f"no envelope schema in {directory}")
        registry = jsonschema_rs.Registry([(d["$id"], d) for d in docs.values()], retriever=_no_fetch)
        self._validators = {
            name: jsonschema_rs.validator_for(
                doc, validate_formats=True, registry=registry, retriever=_no_fetch
            )
            for name, doc in docs.items()
        }
        self.documents = docs
        self.types: dict[tuple[str, int], MessageType] = {}
        for name, doc in docs.items():
            m = _PAYLOAD_FILE.match(name)
            if not m or m["type"] in _NOT_PAYLOADS:
                continue
            meta = doc.get("x-sgb", {})
            key = (m["type"], int(m["ver"]))
            self.types[key] = MessageType(
                name=key[0], version=key[1],
                personal_data=bool(meta.get("personalData", True)),
                special_category=bool(meta.get("specialCategory", False)),
                validator=self._validators[name], record_only=bool(meta.get("recordOnly", False)),
            )

    def validator(self, file_name: str) -> jsonschema_rs.Validator:
        return self._validators[file_name]

    def message_type(self, name: str, version: int) -> MessageType | None:
        return self.types.get((name, version))

    @staticmethod
    def first_issue(validator: jsonschema_rs.Validator, instance: Any) -> SchemaIssue | None:
        for err in validator.iter_errors(instance):
            return SchemaIssue(pointer=_pointer(err.instance_path), keyword=err.kind.name)
        return None

    def check_payload(self, mtype: MessageType, payload: Any) -> None:
        try:
            issue = self.first_issue(mtype.validator, payload)
        except ValueError as exc:  # e.g. the validator's recursion limit: the payload's fault, not ours
            raise SchemaInvalid(f"payload cannot be validated as {mtype.name} v{mtype.version}", field="/",
                                rule=f"{mtype.name}.v{mtype.version}.json") from exc
        if issue is not None:
            raise SchemaInvalid(
                f"payload does not match {mtype.name} v{mtype.version}: '{issue.keyword}' failed",
                field=issue.pointer or "/", rule=f"{mtype.name}.v{mtype.version}.json",
            )
