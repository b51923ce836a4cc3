"""Police PPN records (JSON and CSV) into referrals and Operation Encompass notices; malformed
records refused whole with the field named; end to end through a real broker."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.police import Unmappable, map_csv, map_json, recipients
from broker.catalogue import Catalogue
from broker.registry import Registry
from broker.service import Broker
from tests.conftest import ClientFactory
from tests.helpers import drain, sharing

PPN: dict[str, Any] = {
    "incidentReference": "MPS/2026/7781", "occurredAt": "2026-11-23T23:40:00Z", "location": "Family home",
    "summary": "Domestic abuse incident; two children in the household", "details": "Officers attended.",
    "categories": ["domestic-abuse"], "riskLevel": "high", "parentsInformed": False,
    "reasonNotInformed": "Informing the parents would increase the risk", "advice": "Be alert to tiredness",
    "officer": {"given": "Sam", "family": "Officer", "collarNumber": "PC1234"},
    "children": [
        {"given": "Ada", "family": "Okafor-Demo", "dateOfBirth": "2017-03-14", "nhsNumber": "9990001235",
         "present": True, "whereChildWas": "Upstairs", "schoolAgencyId": "school-hillside"},
        {"given": "Ben", "family": "Okafor-Demo", "dateOfBirth": "2024-09-02", "present": False},
    ],
    "adults": [{"given": "Kay", "family": "Demo", "role": "alleged-perpetrator", "relationship": "Step-parent"}],
}
CSV = (Path(__file__).parent / "data" / "ppn-export.csv").read_text()  # as an RMS exports it


def kwargs(registry: Registry, catalogue: Catalogue) -> dict[str, Any]:
    return {"local_authority": "la-camden", "registry": registry, "catalogue": catalogue}


def test_one_incident_makes_a_referral_per_child_and_a_notice_per_school_child(registry: Registry,
                                                                              catalogue: Catalogue) -> None:
    messages = map_json(orjson.dumps(PPN), **kwargs(registry, catalogue))
    assert recipients(messages) == {"referral": 2, "encompass-notification": 1}
    referrals = [m for m in messages if m.typ == "referral"]
    assert [m.payload["child"]["name"]["given"] for m in referrals] == ["Ada", "Ben"]
    assert all(m.to == ("la-camden",) and m.payload["policeReference"] == "MPS/2026/7781" for m in referrals)
    assert referrals[0].payload["risk"] == {"ragRating": "red"}
    assert referrals[0].payload["household"][0]["role"] == "alleged-perpetrator"
    (notice,) = [m for m in messages if m.typ == "encompass-notification"]
    assert notice.to == ("school-hillside",) and notice.payload["childPresent"] is True
    assert notice.payload["child"]["nhsNumber"] == "9990001235"


def test_csv_export_maps_the_same_as_json(registry: Registry, catalogue: Catalogue) -> None:
    from_csv = map_csv(CSV, **kwargs(registry, catalogue))
    from_json = map_json(orjson.dumps(PPN), **kwargs(registry, catalogue))
    assert [(m.typ, m.to, m.payload) for m in from_csv] == [(m.typ, m.to, m.payload) for m in from_json]


@pytest.mark.parametrize(("change", "field"), [
    (lambda r: r.pop("summary"), "/"),
    (lambda r: r["children"][1].update(present="maybe"), "/children/1/present"),
    (lambda r: r["children"][0].update(schoolAgencyId="police-met"), "/children/0/schoolAgencyId"),
    (lambda r: r["children"][0].update(nhsNumber="12345"), "/children/0/nhsNumber"),
    (lambda r: r.update(categories=["gossip"]), "/categories/0"),
])
def test_an_unmappable_record_is_refused_whole_naming_the_field(change: Any, field: str, registry: Registry,
                                                                catalogue: Catalogue) -> None:
    record = copy.deepcopy(PPN)
    change(record)
    with pytest.raises(Unmappable) as caught:
        map_json(orjson.dumps([PPN, record]), **kwargs(registry, catalogue))  # the good one is not sent either
    assert caught.value.field == f"/1{field}"
    assert "Okafor" not in str(caught.value) and "9990001235" not in str(caught.value)  # no values echoed


def test_bad_csv_cells_are_named_by_row_and_column(registry: Registry, catalogue: Catalogue) -> None:
    bad = CSV.replace(",no,,,Kay", ",perhaps,,,Kay")
    with pytest.raises(Unmappable) as caught:
        map_csv(bad, **kwargs(registry, catalogue))
    assert caught.value.field == "row 3/childPresent"
    with pytest.raises(Unmappable, match="not JSON"):
        map_json(b"{", **kwargs(registry, catalogue))


async def test_mapped_messages_go_through_the_broker(broker: Broker, agency: ClientFactory, registry: Registry,
                                                     catalogue: Catalogue) -> None:
    police, la, school = await agency("police-met"), await agency("la-camden"), await agency("school-hillside")
    shares = {"referral": sharing(), "encompass-notification": sharing("encompass-notification")}
    for m in map_json(orjson.dumps(PPN), **kwargs(registry, catalogue)):
        jti = await police.send(typ=m.typ, to=list(m.to), payload=m.payload, sharing=shares[m.typ])
        assert (await police.wait_outcome(jti, timeout=10)).payload["status"] == "routed"
    assert sorted(d.payload["child"]["name"]["given"] for d in await drain(la, want=2)) == ["Ada", "Ben"]
    (notice,) = await drain(school, want=1)
    assert notice.type == "encompass-notification" and "keyAdultAdvice" in notice.payload
    assert "incidentLocation" not in notice.payload  # mapped, then withheld from the school by the rulebook
