"""RFC 4475 torture tests: our UAS verdict and response for each of the 49 messages.

The cases and the expected verdicts are read at run time from
../shared/conformance/rfc4475/cases.tsv (columns: file, section, title, verdict,
uas_expectation); the expected response code is the code that uas_expectation opens with
("400", "parse; 405 ..."), and None ("process", "discard") when it names none first.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from plugins.sip.message import SipMessage, SipRequest
from plugins.sip.validate import check_message, reject

RFC4475 = Path(__file__).parents[2] / "shared" / "conformance" / "rfc4475"


def _cases() -> list[dict[str, str]]:
    with open(RFC4475 / "cases.tsv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


CASES = _cases()


def expected_status(expectation: str) -> int | None:
    m = re.match(r"(?:parse; )?(\d{3})\b", expectation)
    return int(m.group(1)) if m else None


def test_all_49_cases_are_present():
    assert len(CASES) == 49
    assert all((RFC4475 / row["file"]).is_file() for row in CASES)


@pytest.mark.parametrize("row", CASES, ids=[f"{r['section']}-{r['file']}" for r in CASES])
def test_rfc4475_verdict_and_uas_response(row):
    verdict = check_message((RFC4475 / row["file"]).read_bytes())
    assert verdict.kind == row["verdict"], verdict.reason
    assert verdict.status == expected_status(row["uas_expectation"]), verdict.reason
    if verdict.status is not None:
        assert verdict.reason.startswith("SIP ")  # the subject comes first
    if verdict.kind == "parseable":
        assert verdict.notes  # a semantic oddity was named
    if verdict.kind in ("valid", "valid-response"):
        assert verdict.notes == ()


def check(name: str):
    return check_message((RFC4475 / name).read_bytes())


def test_expected_status_reading():
    assert expected_status("parse; 405 (unknown method)") == 405
    assert expected_status("400, or accept while ignoring Date") == 400
    assert expected_status("the target UAS processes it (OPTIONS: 200); only a proxy answers 483") \
        is None
    assert expected_status("discard") is None


def test_420_lists_both_unknown_option_tags_rfc4475_3_3_5():
    verdict = check("bext01.dat")
    response = reject(verdict, to_tag="t1")
    assert response is not None and response.status_code == 420
    assert response.headers.get("Unsupported") == "nothingSupportsThis, nothingSupportsThisEither"
    # Proxy-Require is for proxies; a UAS only looks at Require (RFC 3261 8.2.2.3)
    assert "noProxiesSupportThis" not in (response.headers.get("Unsupported") or "")
    assert response.to.tag == "t1" and response.cseq.seq == 8


def test_415_carries_accept_rfc4475_3_3_6():
    response = reject(check("invut.dat"))
    assert response is not None and response.status_code == 415
    assert "application/sdp" in (response.headers.get("Accept") or "").split(", ")


def test_405_carries_allow_rfc3261_8_2_1():
    response = reject(check("intmeth.dat"))
    assert response is not None and response.status_code == 405
    allow = (response.headers.get("Allow") or "").split(", ")
    assert "INVITE" in allow and "REGISTER" in allow
    assert response.cseq.method == "!interesting-Method0123456789_*+`.%indeed'~"


def test_400_for_missing_headers_is_still_routable_rfc4475_3_3_1():
    response = reject(check("insuf.dat"))
    assert response is not None and response.status_code == 400
    assert response.top_via.branch == "z9hG4bKkdj.insuf"
    assert SipMessage.parse(bytes(response)).status_code == 400


def test_505_for_unknown_version_rfc4475_3_1_2_16():
    verdict = check("badvers.dat")
    assert verdict.reason == "SIP version SIP/7.0 is not supported"
    assert reject(verdict).start_line == "SIP/2.0 505 Version Not Supported"


def test_valid_messages_are_not_rejected():
    assert reject(check("wsinv.dat")) is None
    assert reject(check("zeromf.dat")) is None  # a UAS, not a proxy: no 483


def test_extra_trailing_octets_rfc4475_3_1_1_8():
    msg = check("dblreq.dat").message
    assert isinstance(msg, SipRequest) and msg.method == "REGISTER" and msg.body == b""


def test_multipart_body_intact_rfc4475_3_1_1_11():
    msg = check("mpart01.dat").message
    assert msg is not None and len(msg.body) == 553
    assert msg.body.endswith(b"--7a9cbec02ceef655--\r\n")


def test_unknown_schemes_kept_opaque_rfc4475_3_3_4():
    msg = check("unksm2.dat").message
    assert msg is not None
    assert (msg.to.uri.scheme, msg.to.uri.opaque) == ("isbn", "2983792873")
    assert str(msg.from_.uri) == "http://www.example.com" and msg.from_.tag == "3234233"
    assert str(msg.contacts[0].uri) == "name:John_Smith"


def test_escaped_method_is_not_register_rfc4475_3_1_1_5():
    verdict = check("esc02.dat")
    assert verdict.message.method == "RE%47IST%45R"
    assert verdict.message.headers.count("Contact") == 2  # C%6Fntact is another header
    assert verdict.message.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_supported_extensions_are_accepted():
    data = (RFC4475 / "bext01.dat").read_bytes()
    verdict = check_message(
        data, extensions={"nothingSupportsThis", "nothingSupportsThisEither"}
    )
    assert verdict.kind == "valid" and verdict.status is None


def test_oversize_message_gets_513():
    data = (RFC4475 / "wsinv.dat").read_bytes()
    verdict = check_message(data, max_size=500)
    assert (verdict.kind, verdict.status) == ("invalid", 513)


def test_400_echoes_a_broken_to_untouched_rfc4475_3_1_2_6():
    response = reject(check("quotbal.dat"), to_tag="t9")
    assert response is not None and response.status_code == 400
    assert response.headers.get("To") == '"Mr. J. User <sip:j.user@example.com>'
