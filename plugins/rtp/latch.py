"""When symmetric RTP moves a session to another source than the SDP's: RTP from a NAT or a
multi-homed peer arrives from an address its SDP did not name (docs/rtp.md, "Latching")."""

from __future__ import annotations


class LatchProbation:
    """Whether RTP from a source other than the SDP's moves a session there: `needed`
    consecutive valid packets of one SSRC from one source (pjmedia's NAT probation,
    PJMEDIA_RTP_NAT_PROBATION_CNT; Asterisk's strictrtp learns a source the same way). A
    packet in between from another source, of another SSRC, or of a payload type not agreed
    starts the count again, so interleaved strangers or a spoofed packet now and then never
    add up. Sans-IO: a source, an SSRC and a verdict on the payload type in, yes or no out."""

    __slots__ = ("needed", "_source", "_ssrc", "_count")

    def __init__(self, needed: int) -> None:
        self.needed = needed
        self._source: tuple[str, int] | None = None
        self._ssrc = -1
        self._count = 0

    def heard(self, source: tuple[str, int], ssrc: int, agreed: bool) -> bool:
        """Count one packet from `source` (not the SDP's); True when it completes the run."""
        if not agreed:
            self._count = 0
            return False
        if source != self._source or ssrc != self._ssrc:
            self._source, self._ssrc, self._count = source, ssrc, 0
        self._count += 1
        return self._count >= self.needed
