"""Police PPN records (JSON and CSV) into referrals and Operation Encompass notices; the case's
consent facts from each record into every message's sharing block; malformed records (and
records that do not say whether consent was given or the family told) refused whole with the
field named; end to end through a real broker."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.formats.consent import agency_wide
from adapters.formats.police import Unmappable, map_csv, map_json, recipients
from broker.pipeline.service import Broker
from broker.wire.catalogue import Catalogue
from broker.wire.registry import Registry
from tests.conftest import ClientFactory
from tests.helpers import drain, sharing
from tests.support.police import CSV, PPN

DOCUMENTED = Path(__file__).resolve().parent.parent / "docs" / "examples" / "ppn.json"  # docs/adapters.md


def kwargs(registry: Registry, catalogue: Catalogue) -> dict[str, Any]:
    return {"local_authority": "la-camden", "registry": registry, "catalogue": catalogue}


FACTS = {"consentStatus": "NOT_SOUGHT", "nonConsentReason": "WOULD_INCREASE_RISK_OF_HARM",
         "subjectInformed": "NOT_INFORMED_UNSAFE"}


def test_one_incident_makes_a_referral_per_child_and_a_notice_per_school_child(registry: Registry,
                                                                              catalogue: Catalogue) -> None:
    messages = map_json(orjson.dumps(PPN), **kwargs(registry, catalogue))
    assert recipients(messages) == {"referral": 2, "encompass-notification": 1}
    referrals = [m for m in messages if m.typ == "referral"]
    assert [m.payload["child"]["name"]["given"] for m in referrals] == ["Ada", "Ben"]
    assert all(m.to == ("la-camden",) and m.payload["policeReference"] == "MPS/2026/7781" for m in referrals)
    assert referrals[0].payload["risk"] == {"ragRating": "red"}
    assert referrals[0].payload["household"][0]["role"] == "alleged-perpetrator"
    # the case's consent facts, in the sharing block and in the referral's own consent block alike
    assert referrals[0].sharing == {"decidedBy": {"role": "Police officer", "staffRef": "PC1234"}} | FACTS
    assert referrals[0].payload["consent"] == {
        "consentObtained": "not-sought", "parentsInformed": False,
        "reasonNotInformed": "Informing the parents would increase the risk",
        "reasonNotSought": "Seeking consent would increase the risk of harm"}
    (notice,) = [m for m in messages if m.typ == "encompass-notification"]
    assert notice.to == ("school-hillside",) and notice.payload["childPresent"] is True
    assert notice.payload["child"]["nhsNumber"] == "9990001235"
    assert {k: notice.payload[k] for k in ("doNotContactParents", "circumstances", "voiceOfChild",
                                           "incidentLocation", "keyAdultAdvice")} == {
        "doNotContactParents": True, "circumstances": PPN["circumstances"],
        "voiceOfChild": "Said she hid under the bed", "incidentLocation": "Family home",
        "keyAdultAdvice": "Be alert to tiredness"}
    assert "Domestic abuse incident" not in str(notice.payload)  # the summary is for the local authority
    assert notice.sharing == {"decidedBy": {"role": "Police officer", "staffRef": "PC1234"}} | FACTS


@pytest.mark.parametrize(("facts", "sharing", "consent"), [
    ({"consent": "given", "familyInformed": "yes"},
     {"consentStatus": "GIVEN", "subjectInformed": "INFORMED"},
     {"consentObtained": "yes", "parentsInformed": True}),
    ({"consent": "refused-overridden", "withoutConsentReason": "would-prejudice-protection", "familyInformed": "later"},
     {"consentStatus": "REFUSED_OVERRIDDEN", "nonConsentReason": "WOULD_PREJUDICE_PROTECTION",
      "subjectInformed": "TO_BE_INFORMED_LATER"},
     {"consentObtained": "no", "parentsInformed": False}),
    ({"consent": "not-sought", "withoutConsentReason": "would-prejudice-investigation",
      "familyInformed": "no-investigation"},
     {"consentStatus": "NOT_SOUGHT", "nonConsentReason": "WOULD_PREJUDICE_INVESTIGATION",
      "subjectInformed": "NOT_INFORMED_PREJUDICE_INVESTIGATION"},
     {"consentObtained": "not-sought", "parentsInformed": False,
      "reasonNotSought": "Seeking consent would prejudice a criminal investigation"}),
])
def test_each_record_carries_its_own_consent_facts(facts: dict[str, str], sharing: dict[str, str],
                                                   consent: dict[str, Any], registry: Registry,
                                                   catalogue: Catalogue) -> None:
    record = {k: v for k, v in PPN.items() if k not in ("consent", "withoutConsentReason", "familyInformed",
                                                          "parentsInformed", "reasonNotInformed")} | facts
    for m in map_json(orjson.dumps(record), **kwargs(registry, catalogue)):
        assert m.sharing is not None and {k: m.sharing.get(k) for k in FACTS if k in m.sharing} == sharing
        if m.typ == "referral":
            assert m.payload["consent"] == consent


@pytest.mark.parametrize(("change", "field", "rule"), [
    (lambda r: r.pop("summary"), "/summary", "police-ppn.v1.json"),
    (lambda r: r["children"][1].update(present="maybe"), "/children/1/present", "police-ppn.v1.json"),
    (lambda r: r["children"][0].update(schoolAgencyId="police-met"), "/children/0/schoolAgencyId",
     "encompass.school-known"),
    (lambda r: r["children"][0].update(nhsNumber="12345"), "/children/0/nhsNumber", "police-ppn.v1.json"),
    (lambda r: r.update(categories=["gossip"]), "/categories/0", "police-ppn.v1.json"),
    # the case's consent facts: missing, reason-less, contradictory
    (lambda r: r.pop("consent"), "/consent", "consent.recorded"),
    (lambda r: r.update(consent="NOT_SOUGHT"), "/consent", "consent.recorded"),
    (lambda r: r.pop("withoutConsentReason"), "/withoutConsentReason", "consent.reason"),
    (lambda r: r.update(consent="refused-overridden", withoutConsentReason="she said no"), "/withoutConsentReason",
     "consent.reason"),
    (lambda r: r.update(consent="given"), "/withoutConsentReason", "consent.consistent"),
    (lambda r: r.pop("familyInformed"), "/familyInformed", "transparency.informed"),
    (lambda r: r.update(familyInformed="no"), "/familyInformed", "transparency.informed"),
    # a fact of the wrong JSON type is refused naming it (it crashed the mapper as internal once)
    (lambda r: r.update(consent=[]), "/consent", "consent.recorded"),
    (lambda r: r.update(withoutConsentReason={"why": 1}), "/withoutConsentReason", "consent.reason"),
    (lambda r: r.update(familyInformed={}), "/familyInformed", "transparency.informed"),
    (lambda r: r.update(familyInformed="later", parentsInformed=True), "/parentsInformed", "consent.consistent"),
    (lambda r: r.update(familyInformed="yes", parentsInformed=True), "/reasonNotInformed", "consent.consistent"),
    (lambda r: r.update(doNotContactParents="yes"), "/doNotContactParents", "police-ppn.v1.json"),
])
def test_an_unmappable_record_is_refused_whole_naming_the_field(change: Any, field: str, rule: str,
                                                                registry: Registry, catalogue: Catalogue) -> None:
    record = copy.deepcopy(PPN)
    change(record)
    with pytest.raises(Unmappable) as caught:
        map_json(orjson.dumps([PPN, record]), **kwargs(registry, catalogue))  # the good one is not sent either
    assert (caught.value.code, caught.value.field, caught.value.rule) == ("unmappable", f"/1{field}", rule)
    said = f"{caught.value} {caught.value.reason}"
    for value in ("Okafor", "9990001235", "she said no", "NOT_SOUGHT", "increase the risk"):
        assert value not in said  # no values echoed


UNSAID = ("consent", "withoutConsentReason", "familyInformed", "parentsInformed", "reasonNotInformed")


@pytest.mark.parametrize(("dropped", "facts", "block"), [
    (UNSAID, {"consentStatus": "NOT_APPLICABLE"}, None),  # nothing said: consent and the family unrecorded
    (("withoutConsentReason",), {"consentStatus": "NOT_SOUGHT", "subjectInformed": "NOT_INFORMED_UNSAFE"},
     {"consentObtained": "not-sought", "parentsInformed": False, "reasonNotInformed": PPN["reasonNotInformed"]}),
    (("familyInformed", "parentsInformed", "reasonNotInformed"),
     {"consentStatus": "NOT_SOUGHT", "nonConsentReason": "WOULD_INCREASE_RISK_OF_HARM"},
     {"consentObtained": "not-sought", "reasonNotSought": "Seeking consent would increase the risk of harm"}),
])
def test_an_emergency_is_mapped_without_the_consent_facts_it_lacks(dropped: tuple[str, ...], facts: dict[str, str],
                                                                  block: dict[str, Any] | None, registry: Registry,
                                                                  catalogue: Catalogue) -> None:
    """Urgent child-protection shares are never held back for want of consent: a PPN needing
    immediate protection goes without what it does not say (the broker shares and flags it)."""
    record = {k: v for k, v in PPN.items() if k not in dropped} | {"immediateProtectionNeeded": True}
    messages = map_json(orjson.dumps(record), **kwargs(registry, catalogue))
    assert recipients(messages) == {"referral": 2, "encompass-notification": 1}
    for m in messages:  # the notice is an emergency share too: the broker would refuse it without the facts
        assert m.sharing == {"decidedBy": {"role": "Police officer", "staffRef": "PC1234"}, "urgency": "EMERGENCY"
                             } | facts
    referral = next(m for m in messages if m.typ == "referral")
    assert referral.payload["concern"]["immediateProtectionNeeded"] is True
    assert referral.payload.get("consent") == block  # the referral's own block says only what the record does


def test_an_emergency_with_its_facts_keeps_the_notice_at_the_agreed_urgency(registry: Registry,
                                                                            catalogue: Catalogue) -> None:
    messages = map_json(orjson.dumps(PPN | {"immediateProtectionNeeded": True}), **kwargs(registry, catalogue))
    assert {m.typ: (m.sharing or {}).get("urgency") for m in messages} == {
        "referral": "EMERGENCY", "encompass-notification": None}  # the notice: the configured default


@pytest.mark.parametrize(("change", "field", "rule"), [
    (lambda r: r.update(consent="maybe"), "/consent", "consent.recorded"),  # a code the format lacks
    (lambda r: r.update(consent="given"), "/withoutConsentReason", "consent.consistent"),  # a contradiction
    (lambda r: r.update(familyInformed="no"), "/familyInformed", "transparency.informed"),
    # a fact of the wrong JSON type is refused naming it (it crashed the mapper as internal once)
    (lambda r: r.update(consent=[]), "/consent", "consent.recorded"),
    (lambda r: r.update(withoutConsentReason={"why": 1}), "/withoutConsentReason", "consent.reason"),
    (lambda r: r.update(familyInformed={}), "/familyInformed", "transparency.informed"),
    (lambda r: r.update(immediateProtectionNeeded="yes") or r.pop("consent"), "/consent", "consent.recorded"),
])
def test_an_emergency_is_still_refused_for_what_it_says_wrongly(change: Any, field: str, rule: str,
                                                                registry: Registry, catalogue: Catalogue) -> None:
    record = copy.deepcopy(PPN) | {"immediateProtectionNeeded": True}
    change(record)
    with pytest.raises(Unmappable) as caught:
        map_json(orjson.dumps(record), **kwargs(registry, catalogue))
    assert (caught.value.field, caught.value.rule) == (field, rule)


def test_a_csv_emergency_row_without_consent_facts_is_mapped(registry: Registry, catalogue: Catalogue) -> None:
    header, first, second = CSV.splitlines()
    blank = ",not-sought,would-increase-risk-of-harm,no-unsafe,no,Informing the parents would increase the risk,"
    assert blank in first and blank in second
    rows = [header + ",immediateProtectionNeeded"] + [r.replace(blank, ",,,,,,") + ",yes" for r in (first, second)]
    messages = map_csv("\n".join(rows) + "\n", **kwargs(registry, catalogue))
    assert {(m.typ, (m.sharing or {}).get("consentStatus"), (m.sharing or {}).get("urgency")) for m in messages} == {
        ("referral", "NOT_APPLICABLE", "EMERGENCY"), ("encompass-notification", "NOT_APPLICABLE", "EMERGENCY")}
    routine = [rows[0]] + [r.removesuffix(",yes") + ",no" for r in rows[1:]]
    with pytest.raises(Unmappable) as caught:  # the same rows, no emergency: refused naming the cell
        map_csv("\n".join(routine) + "\n", **kwargs(registry, catalogue))
    assert (caught.value.field, caught.value.rule) == ("row 2/consent", "consent.recorded")


def test_csv_schema_refusals_name_the_row_and_column_not_the_incident(registry: Registry,
                                                                      catalogue: Catalogue) -> None:
    """The incident reference is the police's own: a refusal never repeats it (nor any cell)."""
    header, first, second = CSV.splitlines()
    for old, new, field in ((",9990001235,", ",12345,", "row 2/childNhsNumber"),
                            (",PC1234,", ",,", "row 2/officerCollarNumber"),
                            (",2024-09-02,", ",2024-13-45,", "row 3/childDateOfBirth"),
                            (",domestic-abuse,", ",gossip,", "row 2/categories")):
        text = "\n".join((header, first.replace(old, new) if old in first else first,
                          second.replace(old, new) if old not in first else second)) + "\n"
        with pytest.raises(Unmappable) as caught:
            map_csv(text, **kwargs(registry, catalogue))
        assert caught.value.field == field, (old, caught.value.field)
        said = f"{caught.value} {caught.value.field}"
        assert "MPS/2026/7781" not in said and (not new.strip(",") or new.strip(",") not in said)


def test_the_documented_example_maps(registry: Registry, catalogue: Catalogue) -> None:
    messages = map_json(DOCUMENTED.read_bytes(), **kwargs(registry, catalogue))
    assert recipients(messages) == {"referral": 2, "encompass-notification": 1}
    assert all(m.sharing is not None and {k: m.sharing[k] for k in FACTS} == FACTS for m in messages)


def test_csv_export_maps_the_same_as_json(registry: Registry, catalogue: Catalogue) -> None:
    from_csv = map_csv(CSV, **kwargs(registry, catalogue))
    from_json = map_json(orjson.dumps(PPN), **kwargs(registry, catalogue))
    assert [(m.typ, m.to, m.payload, m.sharing) for m in from_csv] == [
        (m.typ, m.to, m.payload, m.sharing) for m in from_json]


@pytest.mark.parametrize(("old", "new", "field"), [
    (",no,,,,Kay", ",perhaps,,,,Kay", "row 3/childPresent"),
    (",not-sought,would-increase-risk-of-harm,no-unsafe,no,", ",,would-increase-risk-of-harm,no-unsafe,no,",
     "row 2/consent"),
    (",not-sought,would-increase-risk-of-harm,", ",not-sought,,", "row 2/withoutConsentReason"),
    (",no-unsafe,no,", ",yes,no,", "row 2/parentsInformed"),
    (",not-sought,would-increase-risk-of-harm,", ",given,would-increase-risk-of-harm,", "row 2/withoutConsentReason"),
    (",no-unsafe,no,", ",,no,", "row 2/familyInformed"),
    (",yes,Argument", ",sometimes,Argument", "row 2/doNotContactParents"),
])
def test_bad_csv_cells_are_named_by_row_and_column(old: str, new: str, field: str, registry: Registry,
                                                   catalogue: Catalogue) -> None:
    with pytest.raises(Unmappable) as caught:
        map_csv(CSV.replace(old, new), **kwargs(registry, catalogue))
    assert caught.value.field == field
    assert "sometimes" not in str(caught.value) and "perhaps" not in str(caught.value)
    with pytest.raises(Unmappable, match="not JSON"):
        map_json(b"{", **kwargs(registry, catalogue))


def test_a_later_row_of_an_incident_may_not_change_its_consent_facts(registry: Registry,
                                                                     catalogue: Catalogue) -> None:
    """The incident's columns repeat on each child's row; a row that says otherwise (consent for one
    child and not another) is refused rather than silently taking the first row's."""
    header, first, second = CSV.splitlines()
    changed = second.replace(",no-unsafe,no,", ",no-investigation,no,")
    with pytest.raises(Unmappable) as caught:
        map_csv("\n".join((header, first, changed)) + "\n", **kwargs(registry, catalogue))
    assert (caught.value.field, caught.value.rule) == ("row 3/familyInformed", "ppn-csv.incident-agrees")
    changed = second.replace(",yes,Argument", ",no,Argument")
    with pytest.raises(Unmappable) as caught:
        map_csv("\n".join((header, first, changed)) + "\n", **kwargs(registry, catalogue))
    assert caught.value.field == "row 3/doNotContactParents"


async def test_mapped_messages_go_through_the_broker(broker: Broker, agency: ClientFactory, registry: Registry,
                                                     catalogue: Catalogue) -> None:
    """With the agreement's agency-wide defaults and the record's own facts laid over them (as the
    adapter sends them), both the referrals and the notice pass the default rulebook; the school
    receives what Operation Encompass gives it, and not the adults' details."""
    police, la, school = await agency("police-met"), await agency("la-camden"), await agency("school-hillside")
    shares = {t: agency_wide(sharing(t)) for t in ("referral", "encompass-notification")}
    for m in map_json(orjson.dumps(PPN), **kwargs(registry, catalogue)):
        block = shares[m.typ] | dict(m.sharing or {})
        jti = await police.send(typ=m.typ, to=list(m.to), payload=m.payload, sharing=block)
        assert (await police.wait_outcome(jti, timeout=10)).payload["status"] == "routed"
    referrals = await drain(la, want=2)
    assert sorted(d.payload["child"]["name"]["given"] for d in referrals) == ["Ada", "Ben"]
    assert {d.claims["sharing"]["subjectInformed"] for d in referrals} == {"NOT_INFORMED_UNSAFE"}
    (notice,) = await drain(school, want=1)
    assert notice.type == "encompass-notification" and notice.payload["doNotContactParents"] is True
    assert set(notice.payload) == {"child", "policeReference", "incidentLocation", "incidentDateTime", "childPresent",
                                   "whereChildWas", "voiceOfChild", "circumstances", "keyAdultAdvice",
                                   "doNotContactParents"}
    assert notice.payload["child"] == {"name": {"given": "Ada", "family": "Okafor-Demo"},
                                       "dateOfBirth": "2017-03-14"}  # not the NHS number
