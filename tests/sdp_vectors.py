"""SDP offers real peers send (captured, or written in their shape), shared by the SDP and
offer/answer tests."""


def crlf(text: str) -> str:
    return "".join(line + "\r\n" for line in text.strip("\n").split("\n"))


# Captured here from baresip 1.0.0 (modules g711, g722, opus) dialling a loopback socket.
BARESIP_OFFER = (
    "v=0\r\no=- 2844518567 454583342 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\na=tool:baresip 1.0.0\r\nm=audio 30070 RTP/AVP 0 8 9 96 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:9 G722/8000\r\n"
    "a=rtpmap:96 opus/48000/2\r\na=fmtp:96 stereo=1;sprop-stereo=1\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\na=label:1\r\n"
    "a=rtcp-rsize\r\na=ssrc:4120341245 cname:sip:alice@127.0.0.1\r\na=minptime:20\r\n"
    "a=ptime:20\r\n"
)

# Written in the shape pjsua 2.x sends: media-level c=, b=TIAS, a=rtcp with address (RFC 3605),
# telephone-event at 48000 and 8000.
PJSUA_OFFER = crlf("""
v=0
o=- 3905406830 3905406830 IN IP4 192.0.2.10
s=pjmedia
b=AS:117
t=0 0
a=X-nat:0
m=audio 4000 RTP/AVP 96 9 8 0 101 102
c=IN IP4 192.0.2.10
b=TIAS:96000
a=rtcp:4001 IN IP4 192.0.2.10
a=sendrecv
a=rtpmap:96 opus/48000/2
a=fmtp:96 useinbandfec=1
a=rtpmap:9 G722/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/48000
a=fmtp:101 0-16
a=rtpmap:102 telephone-event/8000
a=fmtp:102 0-16
a=ssrc:1429307125 cname:4d1f3c2a6b5e7f10
""")
