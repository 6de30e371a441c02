"""Routing rules: each DICOM attribute, globs and regular expressions, and bad rules refused."""

from __future__ import annotations

import pytest

from service.registry.routing import InvalidRoutingRule, RoutedAttributes, matches, parse_rules, validate_rules

MR_BRAIN_T1 = RoutedAttributes("MR", "BRAIN", "AX T1 POST", "1.2.840.10008.5.1.4.1.1.4")
CT_HEAD = RoutedAttributes("CT", "HEAD", "Axial 5mm", "1.2.840.10008.5.1.4.1.1.2")


def test_an_empty_rule_set_matches_everything() -> None:
    assert matches({}, MR_BRAIN_T1) and matches({}, CT_HEAD)
    assert matches({}, RoutedAttributes(None, None, None, None))


@pytest.mark.parametrize(
    ("route", "mr", "ct"),
    [
        ("modality=MR", True, False),
        ("modality=mr", True, False),  # case-insensitive
        ("body_part=BRAIN", True, False),
        ("body_part=head", False, True),
        ("series_description=*T1*", True, False),
        ("series_description=*t1*", True, False),
        ("series_description=T1", False, False),  # a glob matches the whole value
        ("series_description=re:\\bt1\\b", True, False),  # a regex is searched in the value
        ("series_description=re:^axial \\d+mm$", False, True),
        ("sop_class_uid=1.2.840.10008.5.1.4.1.1.4", True, False),
        ("sop_class_uid=1.2.840.10008.5.1.4.1.1.*", True, True),
    ],
)
def test_each_attribute_is_matched(route: str, mr: bool, ct: bool) -> None:
    rules = parse_rules([route])
    assert (matches(rules, MR_BRAIN_T1), matches(rules, CT_HEAD)) == (mr, ct)


def test_patterns_of_one_attribute_are_alternatives_and_attributes_all_apply() -> None:
    either = parse_rules(["modality=MR", "modality=CT"])
    assert either == {"modality": ["MR", "CT"]}
    assert matches(either, MR_BRAIN_T1) and matches(either, CT_HEAD)
    both = parse_rules(["modality=MR", "series_description=*T2*"])
    assert not matches(both, MR_BRAIN_T1)  # MR, but not T2


def test_an_absent_attribute_does_not_match_a_rule_on_it() -> None:
    no_description = RoutedAttributes("MR", "BRAIN", None, None)
    assert not matches({"series_description": ["*"]}, no_description)
    assert matches({"modality": ["MR"]}, no_description)


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        (["laterality=L"], "unknown routing attribute 'laterality'"),
        (["modality"], "is not ATTRIBUTE=PATTERN"),
        (["modality="], "must be 1 to 200 characters"),
        (["series_description=re:(T1"], "is not a valid regex"),
        (["body_part=" + "X" * 201], "must be 1 to 200 characters"),
    ],
)
def test_bad_rules_are_refused(routes: list[str], message: str) -> None:
    with pytest.raises(InvalidRoutingRule, match=message):
        parse_rules(routes)


def test_a_rule_with_no_pattern_is_refused() -> None:
    with pytest.raises(InvalidRoutingRule, match="'modality' has no pattern"):
        validate_rules({"modality": []})
