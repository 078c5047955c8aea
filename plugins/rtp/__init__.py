"""The `rtp` plugin family: sans-IO RTP, RTCP, RFC 4733 DTMF and a pcap writer.

Modules, one per concept (none of them opens a socket, sleeps or reads the clock):

- `packet`: `RtpPacket` (RFC 3550 5.1), RFC 8285 header extensions, sequence and timestamp
  arithmetic with wrap-around.
- `rtcp`: SR, RR, SDES, BYE, APP (RFC 3550 6.4-6.7), RTPFB/PSFB feedback with generic NACK
  and PLI (RFC 4585 6.1-6.3), compound packets.
- `stats`: receiver statistics (RFC 3550 A.1, A.3, A.8), sender counts, round-trip time from
  report blocks (6.4.1) and the RTCP report interval (A.7).
- `dtmf`: RFC 4733 telephone-event payload, a sender and a receiver state machine.
- `pcap`: a libpcap writer (and reader) of IPv4/UDP datagrams for Wireshark and tshark.
- `srtp`: SRTP and SRTCP (RFC 3711) crypto contexts, AES-CM with HMAC-SHA1 (the SDES suites
  of RFC 4568 and RFC 6188), with rollover counters and replay windows per SSRC.
- `payload`: RTP payload formats (what the `register_payload_formats` hook returns) and the
  built-in audio ones.
- `nodes`: the `rtp_session` node, which owns the UDP sockets and the asyncio glue.
"""

from pipeline.hookspecs import hookimpl


@hookimpl
def register_node_types():
    from .nodes import RtpSession

    return [RtpSession]


@hookimpl
def register_payload_formats():
    from .payload import AUDIO_FORMATS

    return list(AUDIO_FORMATS)
