"""Routing rules: which deployed models score a series, decided by its DICOM attributes.

A rule set maps an attribute to one or more patterns. Patterns of one attribute are
alternatives (any may match); different attributes must all match. An empty rule set
matches everything (the model's manifest scope still decides applicability). Attributes:
(0008,0060) Modality, (0018,0015) Body Part Examined, (0008,103E) Series Description and
(0008,0016) SOP Class UID. A pattern is a case-insensitive glob over the whole value
(``*T1*``, ``MR``); written ``re:...`` it is a case-insensitive regular expression searched
in the value. An instance lacking an attribute a rule names does not match that rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from service.errors import SightlineError

ATTRIBUTES = ("modality", "body_part", "series_description", "sop_class_uid")
REGEX_PREFIX = "re:"
MAX_PATTERN = 200

RoutingRules = dict[str, list[str]]


class InvalidRoutingRule(SightlineError):
    status_code = 422
    code = "invalid_routing_rule"


@dataclass(frozen=True)
class RoutedAttributes:
    """The header values rules are judged on (``None``: absent)."""

    modality: str | None
    body_part: str | None
    series_description: str | None
    sop_class_uid: str | None


def parse_rules(items: Iterable[str]) -> RoutingRules:
    """``ATTRIBUTE=PATTERN`` strings (the CLI's ``--route``) as a validated rule set."""
    pairs: list[tuple[str, str]] = []
    for item in items:
        attribute, sep, pattern = item.partition("=")
        if not sep:
            raise InvalidRoutingRule(f"routing rule {item!r} is not ATTRIBUTE=PATTERN")
        pairs.append((attribute.strip(), pattern.strip()))
    rules: RoutingRules = {}
    for attribute, pattern in pairs:
        rules.setdefault(attribute, []).append(pattern)
    return validate_rules(rules)


def validate_rules(rules: Mapping[str, list[str]]) -> RoutingRules:
    """Refuse unknown attributes, empty or over-long patterns and regular expressions that do not compile."""
    for attribute, patterns in rules.items():
        if attribute not in ATTRIBUTES:
            raise InvalidRoutingRule(f"unknown routing attribute {attribute!r}; known: {', '.join(ATTRIBUTES)}")
        if not patterns:
            raise InvalidRoutingRule(f"routing attribute {attribute!r} has no pattern")
        for pattern in patterns:
            _check_pattern(attribute, pattern)
    return {attribute: list(patterns) for attribute, patterns in sorted(rules.items())}


def _check_pattern(attribute: str, pattern: str) -> None:
    if not pattern or len(pattern) > MAX_PATTERN:
        raise InvalidRoutingRule(f"routing pattern for {attribute!r} must be 1 to {MAX_PATTERN} characters")
    if pattern.startswith(REGEX_PREFIX):
        try:
            re.compile(pattern[len(REGEX_PREFIX) :], re.IGNORECASE)
        except re.error as exc:
            raise InvalidRoutingRule(f"routing pattern for {attribute!r} is not a valid regex: {exc}") from None


def matches(rules: Mapping[str, list[str]], attributes: RoutedAttributes) -> bool:
    """Whether every attribute named in ``rules`` has a value matching one of its patterns."""
    for attribute, patterns in rules.items():
        value = getattr(attributes, attribute)
        if value is None or not any(_pattern_matches(pattern, value) for pattern in patterns):
            return False
    return True


def _pattern_matches(pattern: str, value: str) -> bool:
    if pattern.startswith(REGEX_PREFIX):
        return re.search(pattern[len(REGEX_PREFIX) :], value, re.IGNORECASE) is not None
    return fnmatchcase(value.strip().upper(), pattern.upper())
